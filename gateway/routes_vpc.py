"""VPC API v2 routes, the subset that defines where addresses come from.

VPCs (create, get, list, update, delete), Private Networks (create with optional
subnets, get, list, update, delete) and the subnets list, as in the SDK's
`scaleway/vpc/v2/api.py`. Lists are filtered by visibility first, then ordered
and cut into pages here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from allocator.contract import VPC, PrivateNetwork

from .auth import Principal, principal
from .context import ipam_of, served_region
from .errors import invalid_argument, not_found
from .wire import (
    QueryFields,
    paginate,
    path_uuid,
    private_network_json,
    read_body,
    sort_objects,
    subnet_json,
    vpc_json,
)

routes = web.RouteTableDef()

_BASE = "/vpc/v2/regions/{region}"
_ORDERS = ("created_at_asc", "created_at_desc", "name_asc", "name_desc")


def _project_scope(who: Principal, q: QueryFields) -> set[str] | None:
    """The projects a list may show: the one asked for, within what the key can see."""
    asked = q.uuid("project_id")
    visible = who.visible_projects
    if asked is not None:
        return {asked} if visible is None or asked in visible else set()
    return None if visible is None else set(visible)


def _paging(q: QueryFields, orders: tuple[str, ...] = _ORDERS) -> tuple[str, int, int]:
    """(order_by, page, page_size) of a list request."""
    order_by = q.choice("order_by", orders, "created_at_asc")
    page, page_size = q.page()
    return order_by, page, page_size


@dataclass
class _ListQuery:
    """What every VPC-side list reads from its query: the rest is read by the route."""

    region: str
    q: QueryFields
    paging: tuple[str, int, int]
    projects: set[str] | None
    organization_id: str | None


def _list_query(request: web.Request, orders: tuple[str, ...] = _ORDERS) -> _ListQuery:
    region = served_region(request)
    q = QueryFields(request.query)
    return _ListQuery(region, q, _paging(q, orders), _project_scope(principal(request), q),
                      q.uuid("organization_id"))


def _listing(items: list[Any], paging: tuple[str, int, int], key: str,
             render: Any) -> web.Response:
    order_by, page, page_size = paging
    ordered = sort_objects(items, order_by)
    return web.json_response({key: [render(i) for i in paginate(ordered, page, page_size)],
                              "total_count": len(ordered)})


def _project_for_create(who: Principal, project_id: str | None) -> str:
    project_id = project_id or who.default_project()
    if project_id is None:
        raise invalid_argument("project_id", "this field is required", "required")
    return project_id


async def _visible_vpc(request: web.Request, who: Principal, vpc_id: str, region: str) -> VPC:
    vpc = await ipam_of(request).get_vpc(vpc_id)
    who.check_visible("vpc", vpc_id, vpc.project_id)
    if vpc.region != region:
        raise not_found("vpc", vpc_id)
    return vpc


async def _visible_pn(request: web.Request, who: Principal, pn_id: str,
                      region: str) -> PrivateNetwork:
    pn = await ipam_of(request).get_private_network(pn_id)
    who.check_visible("private_network", pn_id, pn.project_id)
    if pn.region != region:
        raise not_found("private_network", pn_id)
    return pn


# -- VPCs ---------------------------------------------------------------------------------


@routes.post(_BASE + "/vpcs")
async def create_vpc(request: web.Request) -> web.Response:
    region = served_region(request)
    who = principal(request)
    body = await read_body(request)
    name = body.text("name")
    project_id = body.uuid("project_id")
    tags = body.text_list("tags") or []
    enable_routing = body.flag("enable_routing")
    enable_transitivity = body.flag("enable_transitivity")
    body.finish()
    project_id = _project_for_create(who, project_id)
    who.check_write("vpc", project_id)
    vpc = await ipam_of(request).create_vpc(
        region, project_id, who.organization_for(project_id), name, tags,
        enable_routing=True if enable_routing is None else enable_routing,
        enable_transitivity=bool(enable_transitivity))
    return web.json_response(vpc_json(vpc))


@routes.get(_BASE + "/vpcs")
async def list_vpcs(request: web.Request) -> web.Response:
    lq = _list_query(request)
    name, tags, is_default = lq.q.text("name"), lq.q.repeated("tags"), lq.q.flag("is_default")
    lq.q.flag("routing_enabled")
    lq.q.flag("object_storage_private_access_enabled")
    lq.q.finish()
    vpcs = await ipam_of(request).list_vpcs(
        lq.region, lq.projects, lq.organization_id, name, tags, is_default)
    return _listing(vpcs, lq.paging, "vpcs", vpc_json)


@routes.get(_BASE + "/vpcs/{vpc_id}")
async def get_vpc(request: web.Request) -> web.Response:
    region = served_region(request)
    vpc_id = path_uuid(request, "vpc_id", "vpc_id")
    return web.json_response(vpc_json(await _visible_vpc(request, principal(request), vpc_id,
                                                          region)))


@routes.patch(_BASE + "/vpcs/{vpc_id}")
async def update_vpc(request: web.Request) -> web.Response:
    region = served_region(request)
    who = principal(request)
    vpc_id = path_uuid(request, "vpc_id", "vpc_id")
    body = await read_body(request, empty_ok=True)
    name = body.text("name")
    tags = body.text_list("tags")
    body.finish()
    vpc = await _visible_vpc(request, who, vpc_id, region)
    who.check_write("vpc", vpc.project_id)
    updated = await ipam_of(request).update_vpc(vpc_id, name=name, tags=tags)
    return web.json_response(vpc_json(updated))


@routes.delete(_BASE + "/vpcs/{vpc_id}")
async def delete_vpc(request: web.Request) -> web.Response:
    region = served_region(request)
    who = principal(request)
    vpc_id = path_uuid(request, "vpc_id", "vpc_id")
    vpc = await _visible_vpc(request, who, vpc_id, region)
    who.check_write("vpc", vpc.project_id)
    await ipam_of(request).delete_vpc(vpc_id)
    return web.Response(status=204)


# -- Private Networks ---------------------------------------------------------------------


@routes.post(_BASE + "/private-networks")
async def create_private_network(request: web.Request) -> web.Response:
    region = served_region(request)
    who = principal(request)
    body = await read_body(request)
    name = body.text("name")
    project_id = body.uuid("project_id")
    tags = body.text_list("tags") or []
    subnets = body.text_list("subnets")
    vpc_id = body.uuid("vpc_id")
    propagation = body.flag("default_route_propagation_enabled")
    body.finish()
    project_id = _project_for_create(who, project_id)
    if vpc_id is not None:
        await _visible_vpc(request, who, vpc_id, region)
    who.check_write("private_network", project_id)
    pn = await ipam_of(request).create_private_network(
        region, project_id, who.organization_for(project_id), name, tags, vpc_id,
        subnets or None, default_route_propagation_enabled=bool(propagation))
    return web.json_response(private_network_json(pn))


@routes.get(_BASE + "/private-networks")
async def list_private_networks(request: web.Request) -> web.Response:
    lq = _list_query(request)
    name, tags = lq.q.text("name"), lq.q.repeated("tags")
    vpc_id, pn_ids = lq.q.uuid("vpc_id"), lq.q.uuid_list("private_network_ids")
    lq.q.flag("dhcp_enabled")
    lq.q.flag("object_storage_private_access_enabled")
    lq.q.finish()
    pns = await ipam_of(request).list_private_networks(
        lq.region, lq.projects, lq.organization_id, name, tags, vpc_id, pn_ids)
    return _listing(pns, lq.paging, "private_networks", private_network_json)


@routes.get(_BASE + "/private-networks/{private_network_id}")
async def get_private_network(request: web.Request) -> web.Response:
    region = served_region(request)
    pn_id = path_uuid(request, "private_network_id", "private_network_id")
    pn = await _visible_pn(request, principal(request), pn_id, region)
    return web.json_response(private_network_json(pn))


@routes.patch(_BASE + "/private-networks/{private_network_id}")
async def update_private_network(request: web.Request) -> web.Response:
    region = served_region(request)
    who = principal(request)
    pn_id = path_uuid(request, "private_network_id", "private_network_id")
    body = await read_body(request, empty_ok=True)
    name = body.text("name")
    tags = body.text_list("tags")
    propagation = body.flag("default_route_propagation_enabled")
    body.finish()
    pn = await _visible_pn(request, who, pn_id, region)
    who.check_write("private_network", pn.project_id)
    updated = await ipam_of(request).update_private_network(
        pn_id, name=name, tags=tags, default_route_propagation_enabled=propagation)
    return web.json_response(private_network_json(updated))


@routes.delete(_BASE + "/private-networks/{private_network_id}")
async def delete_private_network(request: web.Request) -> web.Response:
    region = served_region(request)
    who = principal(request)
    pn_id = path_uuid(request, "private_network_id", "private_network_id")
    pn = await _visible_pn(request, who, pn_id, region)
    who.check_write("private_network", pn.project_id)
    await ipam_of(request).delete_private_network(pn_id)
    return web.Response(status=204)


# -- subnets ---------------------------------------------------------------------------------


@routes.get(_BASE + "/subnets")
async def list_subnets(request: web.Request) -> web.Response:
    lq = _list_query(request, ("created_at_asc", "created_at_desc"))
    vpc_id, subnet_ids = lq.q.uuid("vpc_id"), lq.q.uuid_list("subnet_ids")
    private_network_id = lq.q.uuid("private_network_id")
    lq.q.finish()
    subnets = await ipam_of(request).list_subnets(
        lq.region, lq.projects, lq.organization_id, vpc_id, private_network_id, subnet_ids)
    return _listing(subnets, lq.paging, "subnets", subnet_json)
