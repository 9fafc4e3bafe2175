"""The unauthenticated probes a load balancer and an orchestrator ask.

    GET /healthz   the process is up and serving HTTP
    GET /readyz    etcd answers a linearizable read (a quorum is reachable) and the
                   node is not draining
"""

from __future__ import annotations

from aiohttp import web

from .context import config_of, ipam_of
from .drain import drain_of

routes = web.RouteTableDef()

READY_TIMEOUT = 2.0


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """The process is up and serving HTTP."""
    return web.json_response({"status": "ok", "region": config_of(request).region})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Ready when etcd answers a linearizable read (a quorum is reachable), until a drain."""
    if drain_of(request.app).active:  # a load balancer must stop sending here at once
        return web.json_response({"status": "draining"}, status=503)
    quorum, members = await ipam_of(request).readiness(READY_TIMEOUT)
    body = {"status": "ready" if quorum else "unavailable",
            "etcd": [{"endpoint": ep, "answered": ok} for ep, ok in members]}
    return web.json_response(body, status=200 if quorum else 503)
