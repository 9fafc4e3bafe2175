"""VPC API v2 routes, the subset that defines where addresses come from.

VPCs (create, get, list, update, delete, enable routing), Private Networks (create
with optional subnets, get, list, update, delete, enable DHCP), their subnets (add,
delete) and the subnets list, as in the SDK's `scaleway/vpc/v2/api.py` (add and
delete subnets as earlier SDK releases had them: the installed 2.12 has them no
more). Every change is authorised as an update: a member of the object's project,
or an admin; an object the key cannot see answers 404. Lists are filtered by
visibility first, then ordered and cut into pages here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from allocator.contract import DEFAULT_PAGE_SIZE
from allocator.contract import VPC as DomainVPC
from allocator.contract import PrivateNetwork as DomainPrivateNetwork

from .auth import Principal, principal
from .context import ipam_of
from .errors import invalid_argument, not_found
from .models.fields import RegionPath
from .models.vpc import (
    VPC,
    AddSubnetsRequest,
    AddSubnetsResponse,
    CreatePrivateNetworkRequest,
    CreateVPCRequest,
    DeleteSubnetsRequest,
    DeleteSubnetsResponse,
    EnableDHCPRequest,
    EnableRoutingRequest,
    ListPrivateNetworksQuery,
    ListPrivateNetworksResponse,
    ListQuery,
    ListSubnetsQuery,
    ListSubnetsResponse,
    ListVPCsQuery,
    ListVPCsResponse,
    PrivateNetwork,
    PrivateNetworkPath,
    Subnet,
    UpdatePrivateNetworkRequest,
    UpdateVPCRequest,
    VPCPath,
)
from .wire import endpoint

routes = web.RouteTableDef()

_BASE = "/vpc/v2/regions/{region}"

T = TypeVar("T")


def _project_scope(who: Principal, asked: str | None) -> set[str] | None:
    """The projects a list may show: the one asked for, within what the key can see."""
    visible = who.visible_projects
    if asked is not None:
        return {asked} if visible is None or asked in visible else set()
    return None if visible is None else set(visible)


def _page(items: list[Any], query: ListQuery, order_by: str,
          render: Callable[[Any], T]) -> tuple[list[T], int]:
    """One page of `items` sorted by `order_by` (`name_asc`, `created_at_desc`, ...),
    and how many there are in all."""
    field, _, direction = order_by.rpartition("_")

    def key(obj: Any) -> tuple[str, str]:
        return (getattr(obj, field, None) or "", getattr(obj, "id", None) or "")

    ordered = sorted(items, key=key, reverse=direction == "desc")
    size = query.page_size or DEFAULT_PAGE_SIZE  # 0 is the SDK's unset
    start = (query.page - 1) * size
    return [render(i) for i in ordered[start:start + size]], len(ordered)


def _project_for_create(who: Principal, project_id: str | None) -> str:
    project_id = project_id or who.default_project()
    if project_id is None:
        raise invalid_argument("project_id", "this field is required", "required")
    return project_id


async def _visible_vpc(request: web.Request, who: Principal, vpc_id: str,
                       region: str) -> DomainVPC:
    vpc = await ipam_of(request).get_vpc(vpc_id)
    who.check_visible("vpc", vpc_id, vpc.project_id)
    if vpc.region != region:
        raise not_found("vpc", vpc_id)
    return vpc


async def _visible_pn(request: web.Request, who: Principal, pn_id: str,
                      region: str) -> DomainPrivateNetwork:
    pn = await ipam_of(request).get_private_network(pn_id)
    who.check_visible("private_network", pn_id, pn.project_id)
    if pn.region != region:
        raise not_found("private_network", pn_id)
    return pn


# -- VPCs ---------------------------------------------------------------------------------


@routes.post(_BASE + "/vpcs")
@endpoint
async def create_vpc(request: web.Request, path: RegionPath, body: CreateVPCRequest) -> VPC:
    """Create a VPC."""
    who = principal(request)
    project_id = _project_for_create(who, body.project_id)
    who.check_write("vpc", project_id)
    vpc = await ipam_of(request).create_vpc(
        path.region, project_id, who.organization_claim, body.name, body.tags or [],
        enable_routing=True if body.enable_routing is None else body.enable_routing,
        enable_transitivity=bool(body.enable_transitivity))
    return VPC.of(vpc)


@routes.get(_BASE + "/vpcs")
@endpoint
async def list_vpcs(request: web.Request, path: RegionPath, query: ListVPCsQuery
                    ) -> ListVPCsResponse:
    """List the VPCs the caller can see, one page at a time."""
    projects = _project_scope(principal(request), query.project_id)
    vpcs = await ipam_of(request).list_vpcs(
        path.region, projects, query.organization_id, query.name, query.tags,
        query.is_default, routing_enabled=query.routing_enabled,
        object_storage_private_access_enabled=query.object_storage_private_access_enabled)
    page, total = _page(vpcs, query, query.order_by, VPC.of)
    return ListVPCsResponse(vpcs=page, total_count=total)


@routes.get(_BASE + "/vpcs/{vpc_id}")
@endpoint
async def get_vpc(request: web.Request, path: VPCPath) -> VPC:
    """Get a VPC."""
    return VPC.of(await _visible_vpc(request, principal(request), path.vpc_id, path.region))


@routes.patch(_BASE + "/vpcs/{vpc_id}")
@endpoint(optional_body=True)
async def update_vpc(request: web.Request, path: VPCPath, body: UpdateVPCRequest) -> VPC:
    """Rename a VPC or change its tags."""
    who = principal(request)
    vpc = await _visible_vpc(request, who, path.vpc_id, path.region)
    who.check_write("vpc", vpc.project_id)
    updated = await ipam_of(request).update_vpc(path.vpc_id, name=body.name,
                                                         tags=body.tags)
    return VPC.of(updated)


@routes.post(_BASE + "/vpcs/{vpc_id}/enable-routing")
@endpoint(optional_body=True)
async def enable_routing(request: web.Request, path: VPCPath, body: EnableRoutingRequest
                         ) -> VPC:
    """Enable routing between a VPC's Private Networks (it cannot be disabled again)."""
    who = principal(request)
    vpc = await _visible_vpc(request, who, path.vpc_id, path.region)
    who.check_write("vpc", vpc.project_id)
    return VPC.of(await ipam_of(request).enable_routing(path.vpc_id))


@routes.delete(_BASE + "/vpcs/{vpc_id}")
@endpoint
async def delete_vpc(request: web.Request, path: VPCPath) -> None:
    """Delete a VPC that holds no Private Network."""
    who = principal(request)
    vpc = await _visible_vpc(request, who, path.vpc_id, path.region)
    who.check_write("vpc", vpc.project_id)
    await ipam_of(request).delete_vpc(path.vpc_id)


# -- Private Networks ---------------------------------------------------------------------


@routes.post(_BASE + "/private-networks")
@endpoint
async def create_private_network(request: web.Request, path: RegionPath,
                                 body: CreatePrivateNetworkRequest) -> PrivateNetwork:
    """Create a Private Network, with its subnets or automatic ones."""
    who = principal(request)
    project_id = _project_for_create(who, body.project_id)
    if body.vpc_id is not None:
        await _visible_vpc(request, who, body.vpc_id, path.region)
    who.check_write("private_network", project_id)
    pn = await ipam_of(request).create_private_network(
        path.region, project_id, who.organization_claim, body.name, body.tags or [],
        body.vpc_id, body.subnets or None,
        default_route_propagation_enabled=bool(body.default_route_propagation_enabled))
    return PrivateNetwork.of(pn)


@routes.get(_BASE + "/private-networks")
@endpoint
async def list_private_networks(request: web.Request, path: RegionPath,
                                query: ListPrivateNetworksQuery) -> ListPrivateNetworksResponse:
    """List the Private Networks the caller can see, one page at a time."""
    projects = _project_scope(principal(request), query.project_id)
    pns = await ipam_of(request).list_private_networks(
        path.region, projects, query.organization_id, query.name, query.tags, query.vpc_id,
        query.private_network_ids, dhcp_enabled=query.dhcp_enabled,
        object_storage_private_access_enabled=query.object_storage_private_access_enabled)
    page, total = _page(pns, query, query.order_by, PrivateNetwork.of)
    return ListPrivateNetworksResponse(private_networks=page, total_count=total)


@routes.get(_BASE + "/private-networks/{private_network_id}")
@endpoint
async def get_private_network(request: web.Request, path: PrivateNetworkPath) -> PrivateNetwork:
    """Get a Private Network and its subnets."""
    pn = await _visible_pn(request, principal(request), path.private_network_id, path.region)
    return PrivateNetwork.of(pn)


@routes.patch(_BASE + "/private-networks/{private_network_id}")
@endpoint(optional_body=True)
async def update_private_network(request: web.Request, path: PrivateNetworkPath,
                                 body: UpdatePrivateNetworkRequest) -> PrivateNetwork:
    """Rename a Private Network, change its tags or its default route propagation."""
    who = principal(request)
    pn = await _visible_pn(request, who, path.private_network_id, path.region)
    who.check_write("private_network", pn.project_id)
    updated = await ipam_of(request).update_private_network(
        path.private_network_id, name=body.name, tags=body.tags,
        default_route_propagation_enabled=body.default_route_propagation_enabled)
    return PrivateNetwork.of(updated)


@routes.post(_BASE + "/private-networks/{private_network_id}/enable-dhcp")
@endpoint(optional_body=True)
async def enable_dhcp(request: web.Request, path: PrivateNetworkPath, body: EnableDHCPRequest
                      ) -> PrivateNetwork:
    """Enable managed DHCP on a Private Network (it cannot be disabled again)."""
    who = principal(request)
    pn = await _visible_pn(request, who, path.private_network_id, path.region)
    who.check_write("private_network", pn.project_id)
    return PrivateNetwork.of(await ipam_of(request).enable_dhcp(path.private_network_id))


@routes.delete(_BASE + "/private-networks/{private_network_id}")
@endpoint
async def delete_private_network(request: web.Request, path: PrivateNetworkPath) -> None:
    """Delete a Private Network that holds no IP."""
    who = principal(request)
    pn = await _visible_pn(request, who, path.private_network_id, path.region)
    who.check_write("private_network", pn.project_id)
    await ipam_of(request).delete_private_network(path.private_network_id)


# -- subnets ---------------------------------------------------------------------------------


@routes.post(_BASE + "/private-networks/{private_network_id}/subnets")
@endpoint
async def add_subnets(request: web.Request, path: PrivateNetworkPath, body: AddSubnetsRequest
                      ) -> AddSubnetsResponse:
    """Add subnets to a Private Network (409 naming the subnet of the VPC one overlaps)."""
    who = principal(request)
    pn = await _visible_pn(request, who, path.private_network_id, path.region)
    who.check_write("private_network", pn.project_id)
    _, added = await ipam_of(request).add_subnets(path.private_network_id, body.subnets)
    return AddSubnetsResponse(subnets=[s.subnet for s in added])


@routes.delete(_BASE + "/private-networks/{private_network_id}/subnets")
@endpoint
async def delete_subnets(request: web.Request, path: PrivateNetworkPath,
                         body: DeleteSubnetsRequest) -> DeleteSubnetsResponse:
    """Delete subnets from a Private Network (412 naming the first that still holds IPs)."""
    who = principal(request)
    pn = await _visible_pn(request, who, path.private_network_id, path.region)
    who.check_write("private_network", pn.project_id)
    _, gone = await ipam_of(request).delete_subnets(path.private_network_id, body.subnets)
    return DeleteSubnetsResponse(subnets=[s.subnet for s in gone])


@routes.get(_BASE + "/subnets")
@endpoint
async def list_subnets(request: web.Request, path: RegionPath, query: ListSubnetsQuery
                       ) -> ListSubnetsResponse:
    """List the subnets of the Private Networks the caller can see, one page at a time."""
    projects = _project_scope(principal(request), query.project_id)
    subnets = await ipam_of(request).list_subnets(
        path.region, projects, query.organization_id, query.vpc_id, query.private_network_id,
        query.subnet_ids)
    page, total = _page(subnets, query, query.order_by, Subnet.of)
    return ListSubnetsResponse(subnets=page, total_count=total)
