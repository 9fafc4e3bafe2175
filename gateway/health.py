"""The unauthenticated probes a load balancer and an orchestrator ask.

    GET /healthz   the process is up and serving HTTP
    GET /readyz    etcd answers a linearizable read (a quorum is reachable), the node's
                   start-up steps are done (`gateway.availability`), and it is not draining
"""

from __future__ import annotations

from typing import Literal

from aiohttp import web

from .availability import AVAILABILITY, State
from .context import config_of, ipam_of
from .drain import drain_of
from .errors import ApiError
from .models.health import Draining, EtcdMember, Health, Readiness
from .wire import endpoint

routes = web.RouteTableDef()

READY_TIMEOUT = 2.0


@routes.get("/healthz")
@endpoint
async def healthz(request: web.Request) -> Health:
    """The process is up and serving HTTP."""
    return Health(region=config_of(request).region)


@routes.get("/readyz")
@endpoint(replies={503: Readiness | Draining})
async def readyz(request: web.Request) -> Readiness:
    """Ready when etcd answers a linearizable read (a quorum is reachable) and the node has
    started, until a drain."""
    if drain_of(request.app).active:  # a load balancer must stop sending here at once
        raise ApiError(503, Draining())
    quorum, members = await ipam_of(request).readiness(READY_TIMEOUT)
    availability = request.app[AVAILABILITY]
    status: Literal["ready", "starting", "unavailable"] = "ready"
    if availability.state is State.STARTING:
        status = "starting"
    elif not (quorum and availability.available):
        status = "unavailable"
    ready = Readiness(status=status,
                      etcd=[EtcdMember(endpoint=ep, answered=ok) for ep, ok in members])
    if status != "ready":
        raise ApiError(503, ready)
    return ready
