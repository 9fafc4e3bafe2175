"""What every route handler reaches through its request: the IPAM, the config, the region.

A node serves one region or several (`GatewayConfig.regions`), each on an etcd cluster;
regions given the same endpoints share one. Each cluster has its own IPAM, its copy of
the API keys, its authenticator and its availability gate (a `Cluster`). A request
with a `{region}` in its path is served by that region's cluster from authentication
on, so an outage of another region's cluster never touches it. A request without one
(API keys, projects' organizations and quotas) is served by the first region's
cluster, or, while its gate is closed, by the first cluster whose gate is open: every
cluster holds the same identity (`routes_admin` writes it to all of them).

Kept apart from `app` so route modules can import it without importing the factory.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from allocator.contract import IPAM, Compactor, Credentials, Expirer

from .auth import REQUEST_AUTHENTICATOR, Authenticator
from .availability import REQUEST_GATE, Availability
from .config import GatewayConfig
from .errors import invalid_argument, not_found
from .storage_guard import StorageGuard

IPAM_KEY = web.AppKey("ipam", IPAM)  # the first region's
CONFIG_KEY = web.AppKey("config", GatewayConfig)
CREDENTIALS_KEY = web.AppKey("credentials", Credentials)  # the first region's


@dataclass(frozen=True, eq=False)
class Cluster:
    """One etcd cluster of the node and what the node keeps over it, for `regions`."""

    regions: tuple[str, ...]
    ipam: IPAM
    credentials: Credentials
    authenticator: Authenticator
    availability: Availability
    # Its elected upkeep, if this node runs it (configuration), and its storage guard.
    compactor: Compactor | None = None
    expirer: Expirer | None = None
    guard: StorageGuard | None = None

    @property
    def name(self) -> str:
        """Its regions, as messages name it."""
        return ", ".join(self.regions)


class Clusters:
    """The clusters of a node, the first region's first."""

    def __init__(self, clusters: Sequence[Cluster]) -> None:
        self.all = tuple(clusters)
        self._by_region = {region: c for c in self.all for region in c.regions}

    def of_region(self, region: str) -> Cluster | None:
        """The cluster of a served `region` (None: not served here)."""
        return self._by_region.get(region)

    def serving(self) -> Cluster:
        """The cluster of requests that name no region: the first one whose gate is
        open, else the first one (which answers the 503)."""
        return next((c for c in self.all if c.availability.available), self.all[0])


CLUSTERS_KEY = web.AppKey("clusters", Clusters)
_CLUSTER = web.RequestKey("cluster", Cluster)


def cluster_of(request: web.Request) -> Cluster:
    """The cluster serving `request`: its region's, else `Clusters.serving` (also for a
    region not served, which the route answers 404). Chosen once per request, so that
    it is authenticated and served by the same cluster."""
    cluster = request.get(_CLUSTER)
    if cluster is None:
        cluster = request[_CLUSTER] = _choose(request)
    return cluster


def _choose(request: web.Request) -> Cluster:
    clusters = request.app[CLUSTERS_KEY]
    region = request.match_info.get("region")
    return (clusters.of_region(region) if region else None) or clusters.serving()


@web.middleware
async def cluster_middleware(request: web.Request,
                             handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                             ) -> web.StreamResponse:
    """Give the request its cluster's gate and authenticator, for the availability and
    authentication middlewares that follow (which know nothing of clusters)."""
    # Chosen here, first (`cluster_of` then finds it): a Request's `get` of a key it lacks
    # raises and catches a KeyError inside.
    cluster = request[_CLUSTER] = _choose(request)
    request[REQUEST_GATE] = cluster.availability
    request[REQUEST_AUTHENTICATOR] = cluster.authenticator
    return await handler(request)


def clusters_of(request: web.Request) -> Clusters:
    return request.app[CLUSTERS_KEY]


def ipam_of(request: web.Request) -> IPAM:
    """The IPAM of the request's region (see `cluster_of`)."""
    return cluster_of(request).ipam


def config_of(request: web.Request) -> GatewayConfig:
    return request.app[CONFIG_KEY]


def served_region(request: web.Request) -> str:
    """The `{region}` of the path, which must be a region this node serves (else 404)."""
    region = request.match_info["region"]
    served = request.app[CONFIG_KEY].regions
    if region not in served:
        raise not_found("region", region,
                        f"this node serves region{'s' if len(served) > 1 else ''} "
                        f"{', '.join(served)}, not {region!r}")
    return region


def served_zone(zone: str, argument: str, request: web.Request) -> str:
    """A zone of the path's region, or a 400 naming `argument`."""
    zones = request.app[CONFIG_KEY].zones_of(request.match_info["region"])
    if zone not in zones:
        raise invalid_argument(argument, f"must be one of the zones {', '.join(zones)}")
    return zone
