"""The aiohttp application factory: one stateless gateway node over an IPAM.

    app = create_app(ipam, GatewayConfig(region="fr-par"))
    app = create_app({"fr-par": ipam_par, "nl-ams": ipam_ams}, config)  # a cluster each

Middlewares run outermost first: the request id (`gateway.logs`), metrics (every
answer counted by route and status, `gateway.metrics`), drain (while the node drains,
every answer closes its connection), errors (every failure becomes a Scaleway error body),
cluster (the request's etcd cluster: its region's, `gateway.context`), availability
(503 at once while the etcd of the request's region is unreachable or the node is
starting, see `gateway.availability`), then authentication (every path but the probes and the
OpenAPI document).

The node answers HTTP as soon as it listens; `availability_of(app).wait_ready(t)` waits
until etcd answered and the start-up steps (loading the API keys) are done.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from allocator.contract import IPAM, RestoreInProgress, SchemaTooNew, SchemaUnreadable

from . import docs, health, openapi, routes_admin, routes_ipam, routes_vpc
from .auth import AUTHENTICATOR, Authenticator, auth_middleware
from .availability import AVAILABILITY, Availability, availability_middleware
from .config import MAX_HEADER_BYTES, GatewayConfig
from .context import (
    CLUSTERS_KEY,
    CONFIG_KEY,
    CREDENTIALS_KEY,
    IPAM_KEY,
    Cluster,
    Clusters,
    cluster_middleware,
)
from .drain import DRAIN_KEY, Drain, drain_middleware
from .errors import error_middleware
from .logs import request_id_middleware
from .metrics import (
    METRICS,
    GatewayMetrics,
    metrics_endpoint,
    metrics_middleware,
)
from .storage_guard import StorageGuard


def create_app(ipam: IPAM | Mapping[str, IPAM], config: GatewayConfig | None = None, *,
               close_ipam: bool = False) -> web.Application:
    """A gateway application serving `config.regions` on top of `ipam`: one IPAM for
    every region, or one per region (regions given the same IPAM share its cluster).

    With `close_ipam`, the IPAMs are closed when the application shuts down.
    `drain_of(app).begin()` starts draining it (see `gateway.drain`).
    """
    config = config or GatewayConfig()
    by_region = ipam if isinstance(ipam, Mapping) else dict.fromkeys(config.regions, ipam)
    missing = [r for r in config.regions if r not in by_region]
    if missing:
        raise ValueError(f"no IPAM for region {', '.join(missing)}")
    app = web.Application(
        client_max_size=config.max_body_bytes,
        middlewares=[request_id_middleware, metrics_middleware, drain_middleware,
                     error_middleware, cluster_middleware, availability_middleware,
                     auth_middleware],
        # aiohttp answers a request line or header over its limit before any middleware
        # runs, in text/plain: the limit is raised so that real requests never meet it.
        handler_args={"max_line_size": MAX_HEADER_BYTES, "max_field_size": MAX_HEADER_BYTES})
    app[CONFIG_KEY] = config
    app[DRAIN_KEY] = Drain()
    regions_of: dict[int, list[str]] = {}
    for region in config.regions:
        regions_of.setdefault(id(by_region[region]), []).append(region)
    several = len(regions_of) > 1  # then each gate names its regions
    clusters = [_cluster(app, by_region[regions[0]], tuple(regions), config,
                         named=several)
                for regions in regions_of.values()]
    app[CLUSTERS_KEY] = Clusters(clusters)
    first = clusters[0]
    # The first region's cluster under the keys of a one-cluster node (/metrics
    # describes every cluster, each series of one labelled with its regions).
    app[IPAM_KEY] = first.ipam
    app[CREDENTIALS_KEY] = first.credentials
    app[AUTHENTICATOR] = first.authenticator
    app[AVAILABILITY] = first.availability
    metrics = app[METRICS] = GatewayMetrics(first.ipam)
    metrics.app = app
    for other in clusters[1:]:
        other.ipam.observe_commits(metrics)
    app.add_routes(routes_ipam.routes)
    app.add_routes(routes_vpc.routes)
    app.add_routes(routes_admin.routes)
    app.add_routes(health.routes)
    app.router.add_get("/openapi.json", openapi.openapi_json)
    docs.add_docs_routes(app)
    app.router.add_get("/metrics", metrics_endpoint)
    app.on_response_prepare.append(_without_versions)
    app.on_startup.append(openapi.prepare)
    if close_ipam:
        async def close(_: web.Application) -> None:
            for cluster in clusters:
                await cluster.ipam.close()
        app.on_cleanup.append(close)
    return app


def _cluster(app: web.Application, ipam: IPAM, regions: tuple[str, ...],
             config: GatewayConfig, *, named: bool) -> Cluster:
    """What the node keeps over one etcd cluster (its keys, its gate, its elected
    upkeep, its storage guard), started and stopped with `app`. `named`: the node has
    several clusters, so its gate's messages name the regions."""
    credentials = ipam.credentials()
    if config.require_organizations:
        ipam.require_organizations()
    # Start-up steps that need etcd run once it answers, retried until then; data this
    # node must not touch (a newer schema, an unfinished restore) stops it instead.
    # The compactor and the expirer start after the schema check: their elected keys
    # would make an empty prefix look like data written before schema versions.
    compactor = None
    steps = [lambda: ipam.ensure_schema(), credentials.start]
    if config.compact_retain_revisions > 0:
        compactor = ipam.compactor(
            retain_revisions=config.compact_retain_revisions,
            interval=config.compact_interval, every_deletes=config.compact_every_deletes)
        steps.append(compactor.start)
    expirer = None
    if config.expiry_check_interval > 0:
        expirer = ipam.expirer(check_interval=config.expiry_check_interval)
        steps.append(expirer.start)
    availability = Availability(ipam, steps,
                                fatal=(SchemaTooNew, SchemaUnreadable, RestoreInProgress),
                                name=", ".join(regions) if named else None)

    async def start_availability(_: web.Application) -> None:
        availability.start()

    async def close_availability(_: web.Application) -> None:
        await availability.close()
        # Their leases revoked: another node takes over at its next look.
        if expirer is not None:
            await expirer.close()
        if compactor is not None:
            await compactor.close()
        await credentials.close()

    app.on_startup.append(start_availability)
    app.on_cleanup.append(close_availability)
    # Every node, not one elected: a read, logged by each node for itself
    # (gateway.storage_guard); it never touches readiness.
    guard = StorageGuard(ipam, config.etcd_quota_backend_bytes)

    async def start_storage_guard(_: web.Application) -> None:
        guard.start()

    async def close_storage_guard(_: web.Application) -> None:
        await guard.close()

    app.on_startup.append(start_storage_guard)
    app.on_cleanup.append(close_storage_guard)
    return Cluster(regions, ipam, credentials,
                   Authenticator(credentials, config.admin_secret_key), availability,
                   compactor, expirer, guard)


async def _without_versions(_: web.Request, response: web.StreamResponse) -> None:
    # aiohttp would send `Server: Python/3.11 aiohttp/3.x`: versions help only attackers.
    response.headers["Server"] = "ipam"


def availability_of(app: web.Application) -> Availability:
    """The gate of the first region's cluster (the node's, when it has one cluster)."""
    return app[AVAILABILITY]


def availabilities_of(app: web.Application) -> list[Availability]:
    """The gate of each etcd cluster of the node, the first region's first."""
    return [cluster.availability for cluster in app[CLUSTERS_KEY].all]
