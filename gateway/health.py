"""The unauthenticated probes a load balancer and an orchestrator ask.

    GET /healthz   the process is up and serving HTTP
    GET /readyz    the node's availability gate is open (`gateway.availability`: started,
                   and a quorum answered its probes lately) and it is not draining;
                   with several etcd clusters (one per region), while the gate of at
                   least one is open
    GET /readyz?region=R   the same for the cluster of region R alone

A node serving several regions on their own clusters is ready while one of its gates is
open: every node shares the clusters, so a region whose cluster is down is down on every
node, and a load balancer that took them all out for it would stop the other regions
too. A load balancer that routes by region checks `?region=R` for each region's pool.

Readiness is the gate's verdict, not a read of its own: a load balancer must stop
sending to a node exactly when that node would answer 503, and keep sending while it
serves. A probe of its own with a shorter deadline said "unavailable" through a slow
leader while the gate stayed open and the node kept booking (a 200 ms link makes a
linearizable read take over 1 s): haproxy would have drained every node of a working
cluster. Each member's own answer (1 s, asked now) is listed for the operator.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from aiohttp import web

from .availability import State
from .context import clusters_of, config_of
from .drain import drain_of
from .errors import ApiError, not_found
from .models.errors import NotFound
from .models.fields import Query, Region
from .models.health import Draining, EtcdMember, Health, Readiness
from .wire import endpoint

routes = web.RouteTableDef()


class ReadinessQuery(Query):
    """`region`: judge the etcd cluster of this region alone."""

    region: Region | None = None

@routes.get("/healthz")
@endpoint
async def healthz(request: web.Request) -> Health:
    """The process is up and serving HTTP."""
    return Health(region=config_of(request).region)


@routes.get("/readyz")
@endpoint(replies={503: Readiness | Draining, 404: NotFound})
async def readyz(request: web.Request, query: ReadinessQuery) -> Readiness:
    """Ready while the node's availability gate is open (it started, and a quorum answers
    its probes), until a drain; with one etcd cluster per region, while one of them is
    (`?region=R`: while R's is)."""
    if drain_of(request.app).active:  # a load balancer must stop sending here at once
        raise ApiError(503, Draining())
    clusters = clusters_of(request)
    judged = clusters.all
    region = query.region
    if region is not None:
        cluster = clusters.of_region(region)
        if cluster is None:
            raise not_found("region", region, f"this node does not serve region {region!r}")
        judged = (cluster,)
    answers = await asyncio.gather(*(c.ipam.member_status() for c in judged))
    status: Literal["ready", "starting", "unavailable"] = "ready"
    if not any(c.availability.available for c in judged):
        starting = any(c.availability.state is State.STARTING for c in judged)
        status = "starting" if starting else "unavailable"
    ready = Readiness(status=status, etcd=[EtcdMember(endpoint=ep, answered=ok)
                                           for members in answers for ep, ok in members])
    if status != "ready":
        raise ApiError(503, ready)
    return ready
