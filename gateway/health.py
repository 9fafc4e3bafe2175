"""The unauthenticated probes a load balancer and an orchestrator ask.

    GET /healthz   the process is up and serving HTTP
    GET /readyz    etcd answers a linearizable read (a quorum is reachable) and the
                   node is not draining
"""

from __future__ import annotations

from aiohttp import web

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
    """Ready when etcd answers a linearizable read (a quorum is reachable), until a drain."""
    if drain_of(request.app).active:  # a load balancer must stop sending here at once
        raise ApiError(503, Draining())
    quorum, members = await ipam_of(request).readiness(READY_TIMEOUT)
    ready = Readiness(status="ready" if quorum else "unavailable",
                      etcd=[EtcdMember(endpoint=ep, answered=ok) for ep, ok in members])
    if not quorum:
        raise ApiError(503, ready)
    return ready
