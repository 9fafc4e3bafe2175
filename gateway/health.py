"""The unauthenticated probes a load balancer and an orchestrator ask.

    GET /healthz   the process is up and serving HTTP
    GET /readyz    the node's availability gate is open (`gateway.availability`: started,
                   and a quorum answered its probes lately) and it is not draining

Readiness is the gate's verdict, not a read of its own: a load balancer must stop
sending to a node exactly when that node would answer 503, and keep sending while it
serves. A probe of its own with a shorter deadline said "unavailable" through a slow
leader while the gate stayed open and the node kept booking (a 200 ms link makes a
linearizable read take over 1 s): haproxy would have drained every node of a working
cluster. Each member's own answer (1 s, asked now) is listed for the operator.
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

@routes.get("/healthz")
@endpoint
async def healthz(request: web.Request) -> Health:
    """The process is up and serving HTTP."""
    return Health(region=config_of(request).region)


@routes.get("/readyz")
@endpoint(replies={503: Readiness | Draining})
async def readyz(request: web.Request) -> Readiness:
    """Ready while the node's availability gate is open (it started, and a quorum answers
    its probes), until a drain."""
    if drain_of(request.app).active:  # a load balancer must stop sending here at once
        raise ApiError(503, Draining())
    members = await ipam_of(request).member_status()
    availability = request.app[AVAILABILITY]
    status: Literal["ready", "starting", "unavailable"] = "ready"
    if availability.state is State.STARTING:
        status = "starting"
    elif not availability.available:
        status = "unavailable"
    ready = Readiness(status=status,
                      etcd=[EtcdMember(endpoint=ep, answered=ok) for ep, ok in members])
    if status != "ready":
        raise ApiError(503, ready)
    return ready
