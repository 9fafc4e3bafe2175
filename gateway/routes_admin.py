"""Operator routes (admin keys only) and the unauthenticated probes.

    POST   /ipam/admin/v1/api-keys                          create a key; the secret is shown once
    GET    /ipam/admin/v1/api-keys                          list keys, without secrets
    GET    /ipam/admin/v1/api-keys/{access_key}             one key
    DELETE /ipam/admin/v1/api-keys/{access_key}             revoke, at once on every node
    PUT    /ipam/admin/v1/projects/{project_id}             {"organization_id"}, set once
    GET    /ipam/admin/v1/projects/{project_id}             the project's organization
    GET    /ipam/admin/v1/projects/{project_id}/quotas      the quotas in force, and which
                                                             its override sets
    PUT    /ipam/admin/v1/projects/{project_id}/quotas      {"vpcs", "private_networks",
                                                             "subnets_per_private_network",
                                                             "ips"}: each an integer, or null
                                                             (the default); at once on every
                                                             node
    DELETE /ipam/admin/v1/projects/{project_id}/quotas      back to the nodes' defaults
    POST   /ipam/admin/v1/regions/{region}/zonal-pools      {"zone", "subnet"}
    GET    /ipam/admin/v1/regions/{region}/zonal-pools      ?zone=
    DELETE /ipam/admin/v1/regions/{region}/zonal-pools/{id} only while it holds no IP
    GET    /ipam/admin/v1/regions/{region}/zonal-pools/{id}/usage  usable, held, free...
    GET    /ipam/admin/v1/regions/{region}/dhcp-declines    ?private_network_id=&mac_address=
    DELETE /ipam/admin/v1/regions/{region}/dhcp-declines    the same filters: offered again

Identity (API keys, projects' organizations, quota overrides) lives in etcd, and a node
serving several regions on their own clusters keeps it in every cluster, so that each
region authenticates and admits from its own cluster alone (`gateway.context`). Its
changes go to every cluster: refused at once (503 naming the regions, nothing written)
while one's gate is closed; a cluster failing midway answers 503 naming its regions,
and the same request again completes the change (each is idempotent), except a new API
key, taken back from the clusters that had it. A revocation goes to every cluster it
can reach, even while another's gate is closed, and names the ones it could not.
Reads come from the request's cluster.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from aiohttp import web

from allocator.contract import check_key_spec, errors

from .auth import principal
from .context import Cluster, cluster_of, clusters_of, ipam_of, served_zone
from .errors import ApiError, not_found
from .models.admin import (
    ApiKey,
    ApiKeyPath,
    ApiKeyWithSecret,
    CreateApiKeyRequest,
    CreateZonalPoolRequest,
    DhcpDecline,
    DhcpDeclinesQuery,
    ListApiKeysResponse,
    ListDhcpDeclinesResponse,
    ListZonalPoolsQuery,
    ListZonalPoolsResponse,
    ProjectOrganization,
    ProjectPath,
    ProjectQuotas,
    SetProjectOrganizationRequest,
    SetProjectQuotasRequest,
    ZonalPool,
    ZonalPoolPath,
    ZonalPoolUsage,
)
from .models.errors import ServiceUnavailable
from .models.fields import RegionPath
from .wire import endpoint

routes = web.RouteTableDef()
log = logging.getLogger("ipam")
T = TypeVar("T")


def _refused(failed: Iterable[tuple[Cluster, str]], done: str) -> ApiError:
    """The 503 of an identity change some clusters refused: each named with its reason,
    then what became of the change (`done`)."""
    named = "; ".join(f"the etcd cluster of {c.name} refused it: {why}" for c, why in failed)
    return ApiError(503, ServiceUnavailable(message=f"{named}; {done}"), {"Retry-After": "1"})


def _reason(err: Exception) -> str:
    return getattr(err, "message", None) or str(err) or type(err).__name__


async def _in_every_cluster(request: web.Request,
                            change: Callable[[Cluster], Awaitable[T]]) -> T:
    """Make an identity change in every cluster of the node, the request's first (its
    answer, and its refusal, are the request's); see the module docstring."""
    first = cluster_of(request)
    clusters = clusters_of(request).all
    closed = [(c, "its etcd is unavailable") for c in clusters if not c.availability.available]
    if closed:
        raise _refused(closed, "nothing was changed; retry later")
    answer = await change(first)
    failed = []
    for other in clusters:
        if other is not first:
            try:
                await change(other)
            except errors.IPAMError as err:
                failed.append((other, _reason(err)))
    if failed:
        raise _refused(failed, f"it was made in {first.name}: send the same request again "
                               "to complete it")
    return answer


def _admin_only(resource: str) -> Callable[[web.Request], None]:
    """A check refusing every key but an admin's, before the request is read."""
    def check(request: web.Request) -> None:
        principal(request).check_admin(resource)
    return check


_API_KEYS = _admin_only("api_key")
_PROJECTS = _admin_only("project")
_ZONAL_POOLS = _admin_only("zonal_pool")
_DHCP_DECLINES = _admin_only("dhcp_decline")


@routes.post("/ipam/admin/v1/api-keys")
@endpoint(before=_API_KEYS)
async def create_api_key(request: web.Request, body: CreateApiKeyRequest) -> ApiKeyWithSecret:
    """Create an API key; its secret is shown in this answer only."""
    spec = check_key_spec(role=body.role, organization_id=body.organization_id,
                          project_ids=body.project_ids, resource_types=body.resource_types,
                          description=body.description, expires_at=body.expires_at)
    first = cluster_of(request)
    clusters = clusters_of(request).all
    closed = [(c, "its etcd is unavailable") for c in clusters if not c.availability.available]
    if closed:
        raise _refused(closed, "no key was created; retry later")
    key, secret = await first.credentials.create(spec)
    copied, failed = [first], []
    for other in clusters:
        if other is not first:
            try:
                await first.credentials.copy_to(other.credentials, key.access_key)
                copied.append(other)
            except errors.IPAMError as err:
                failed.append((other, _reason(err)))
    if failed:  # a key that some regions refuse: none at all
        await _take_back(copied, key.access_key)
        raise _refused(failed, "no key was created; retry later")
    return ApiKeyWithSecret(**ApiKey.of(key).model_dump(), secret_key=secret)


async def _take_back(clusters: list[Cluster], access_key: str) -> None:
    """Revoke a key just created in `clusters` (another refused it); its secret was
    never shown, so a copy left behind (logged) authenticates nobody."""
    for cluster in clusters:
        try:
            await cluster.credentials.revoke(access_key)
        except errors.IPAMError as err:
            log.warning("API key %s, refused by another region, is left in the etcd of %s "
                        "(%s): its secret was never shown", access_key, cluster.name, err)


@routes.get("/ipam/admin/v1/api-keys")
@endpoint(before=_API_KEYS)
async def list_api_keys(request: web.Request) -> ListApiKeysResponse:
    """List the API keys, without their secrets."""
    keys = await cluster_of(request).credentials.list()
    return ListApiKeysResponse(api_keys=[ApiKey.of(k) for k in keys], total_count=len(keys))


@routes.get("/ipam/admin/v1/api-keys/{access_key}")
@endpoint(before=_API_KEYS)
async def get_api_key(request: web.Request, path: ApiKeyPath) -> ApiKey:
    """Get an API key, without its secret."""
    return ApiKey.of(await cluster_of(request).credentials.get(path.access_key))


@routes.delete("/ipam/admin/v1/api-keys/{access_key}")
@endpoint(before=_API_KEYS)
async def revoke_api_key(request: web.Request, path: ApiKeyPath) -> None:
    """Revoke an API key, at once on every node."""
    first = cluster_of(request)
    others = [c for c in clusters_of(request).all if c is not first]
    reached = [first, *(c for c in others if c.availability.available)]
    failed = [(c, "its etcd is unavailable") for c in others if c not in reached]
    outcomes = await asyncio.gather(*(c.credentials.revoke(path.access_key) for c in reached),
                                    return_exceptions=True)
    revoked = False
    for cluster, outcome in zip(reached, outcomes, strict=True):
        if outcome is None:
            revoked = True
        elif isinstance(outcome, errors.NotFound):
            continue  # revoked there by an earlier request, or never there
        elif isinstance(outcome, errors.IPAMError) and cluster is not first:
            failed.append((cluster, _reason(outcome)))
        else:
            raise outcome  # the request's own cluster's failure: its answer, as ever
    if failed:
        refused = [c for c, _ in failed]
        done = ", ".join(c.name for c in reached if c not in refused)
        raise _refused(failed, f"it was revoked in {done}: send the same request again "
                               "to complete it")
    if not revoked:
        raise errors.NotFound("api_key", path.access_key)


@routes.put("/ipam/admin/v1/projects/{project_id}")
@endpoint(before=_PROJECTS)
async def set_project_organization(request: web.Request, path: ProjectPath,
                                   body: SetProjectOrganizationRequest) -> ProjectOrganization:
    """Set the organization of a project, once; every object created in it carries it.

    The same organization again changes nothing; another one is refused (409
    already_exists): objects already carry the first. Until a project has one (set
    here, or by creating a project key naming it), every write into it answers 412
    precondition_failed `project_organization_unknown`."""
    organization = await _in_every_cluster(
        request, lambda c: c.ipam.set_project_organization(path.project_id,
                                                           body.organization_id))
    return ProjectOrganization(project_id=path.project_id, organization_id=organization)


@routes.get("/ipam/admin/v1/projects/{project_id}")
@endpoint(before=_PROJECTS)
async def get_project_organization(request: web.Request, path: ProjectPath
                                   ) -> ProjectOrganization:
    """Get the organization of a project (404 while nobody set it)."""
    organization = await ipam_of(request).organization_of(path.project_id)
    if organization is None:
        raise not_found("project", path.project_id,
                        f"project {path.project_id} has no known organization")
    return ProjectOrganization(project_id=path.project_id, organization_id=organization)


@routes.get("/ipam/admin/v1/projects/{project_id}/quotas")
@endpoint(before=_PROJECTS)
async def get_project_quotas(request: web.Request, path: ProjectPath) -> ProjectQuotas:
    """Get the quotas in force for a project: its override's, else the nodes' defaults."""
    return ProjectQuotas.of(await ipam_of(request).project_quotas(path.project_id))


@routes.put("/ipam/admin/v1/projects/{project_id}/quotas")
@endpoint(before=_PROJECTS)
async def set_project_quotas(request: web.Request, path: ProjectPath,
                             body: SetProjectQuotasRequest) -> ProjectQuotas:
    """Override some of a project's quotas; every node's next create counts under them.

    Each field named takes its value (null: back to the default); the others keep theirs.
    An unknown field or a bad value: 400 invalid_arguments naming it, nothing changed.
    A quota lowered below what the project holds deletes nothing: its creates answer 403
    quotas_exceeded until it holds less."""
    changes = body.changes()
    return ProjectQuotas.of(await _in_every_cluster(
        request, lambda c: c.ipam.set_project_quotas(path.project_id, changes)))


@routes.delete("/ipam/admin/v1/projects/{project_id}/quotas")
@endpoint(before=_PROJECTS)
async def reset_project_quotas(request: web.Request, path: ProjectPath) -> None:
    """Give a project the nodes' default quotas back (delete its override)."""
    await _in_every_cluster(request, lambda c: c.ipam.reset_project_quotas(path.project_id))


@routes.post("/ipam/admin/v1/regions/{region}/zonal-pools")
@endpoint(before=_ZONAL_POOLS)
async def create_zonal_pool(request: web.Request, path: RegionPath,
                            body: CreateZonalPoolRequest) -> ZonalPool:
    """Add a pool of public addresses to a zone."""
    served_zone(body.zone, "zone", request)
    pool = await ipam_of(request).create_zonal_pool(path.region, body.zone,
                                                             body.subnet)
    return ZonalPool.of(pool)


@routes.get("/ipam/admin/v1/regions/{region}/zonal-pools")
@endpoint(before=_ZONAL_POOLS)
async def list_zonal_pools(request: web.Request, path: RegionPath,
                           query: ListZonalPoolsQuery) -> ListZonalPoolsResponse:
    """List the zonal pools of the region, or of one zone."""
    if query.zone is not None:
        served_zone(query.zone, "zone", request)
    pools = await ipam_of(request).list_zonal_pools(path.region, query.zone)
    return ListZonalPoolsResponse(zonal_pools=[ZonalPool.of(p) for p in pools],
                                  total_count=len(pools))


@routes.delete("/ipam/admin/v1/regions/{region}/zonal-pools/{pool_id}")
@endpoint(before=_ZONAL_POOLS)
async def delete_zonal_pool(request: web.Request, path: ZonalPoolPath) -> None:
    """Delete a zonal pool that holds no IP."""
    await ipam_of(request).delete_zonal_pool(path.pool_id)


@routes.get("/ipam/admin/v1/regions/{region}/zonal-pools/{pool_id}/usage")
@endpoint(before=_ZONAL_POOLS)
async def zonal_pool_usage(request: web.Request, path: ZonalPoolPath) -> ZonalPoolUsage:
    """How full a zonal pool is, counted at one etcd revision."""
    return ZonalPoolUsage.of(await ipam_of(request).pool_usage(path.pool_id, path.region))


@routes.get("/ipam/admin/v1/regions/{region}/dhcp-declines")
@endpoint(before=_DHCP_DECLINES)
async def list_dhcp_declines(request: web.Request, path: RegionPath,
                             query: DhcpDeclinesQuery) -> ListDhcpDeclinesResponse:
    """List the addresses DHCP withholds from the MACs that declined them."""
    found = await ipam_of(request).list_declines(path.region, query.private_network_id,
                                                 query.mac_address)
    return ListDhcpDeclinesResponse(dhcp_declines=[DhcpDecline.of(d) for d in found],
                                    total_count=len(found))


@routes.delete("/ipam/admin/v1/regions/{region}/dhcp-declines")
@endpoint(before=_DHCP_DECLINES)
async def clear_dhcp_declines(request: web.Request, path: RegionPath,
                              query: DhcpDeclinesQuery) -> ListDhcpDeclinesResponse:
    """Clear declines (all, or a network's, a MAC's): DHCP offers those addresses again.

    Answers the declines cleared."""
    cleared = await ipam_of(request).clear_declines(path.region, query.private_network_id,
                                                    query.mac_address)
    return ListDhcpDeclinesResponse(dhcp_declines=[DhcpDecline.of(d) for d in cleared],
                                    total_count=len(cleared))
