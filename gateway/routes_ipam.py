"""IPAM API v1 routes: book, get, list, update, release, release a set, attach, detach, move.

Paths, bodies and query parameters are those of the SDK's `scaleway/ipam/v1/api.py`,
plus our extension `GET .../private-networks/{id}/reserved-ips`.
"""

from __future__ import annotations

from aiohttp import web

from allocator.contract import (
    CUSTOM,
    ORDERS,
    AddressAsk,
    Caller,
    IPFilter,
    Resource,
    normalize_mac,
)

from .auth import Principal, guarded_change, principal
from .context import ipam_of, served_region, served_zone
from .errors import invalid_argument, not_found, permissions_denied
from .wire import Fields, QueryFields, ip_json, path_uuid, read_body

routes = web.RouteTableDef()

IDEMPOTENCY_HEADER = "Idempotency-Key"
_BASE = "/ipam/v1/regions/{region}"


def _resource(fields: Fields | None) -> Resource | None:
    """A resource from its JSON: custom (MAC and name), or a product's (type and id)."""
    if fields is None:
        return None
    kind = fields.text("type", max_length=64)
    rid = fields.text("id", max_length=64)
    mac = fields.text("mac_address", required=kind in (None, CUSTOM), max_length=64)
    name = fields.text("name", allow_empty=True)
    if fields.problems:
        return None
    if kind is None or kind == CUSTOM:
        assert mac is not None
        return Resource.custom(mac, name)
    if rid is None:
        fields.problem("id", "required", "a product resource needs its id")
        return None
    return Resource.product(kind, rid, mac, name)


def _check_one_source(*given: str | None) -> None:
    """400 unless exactly one source is named, before any permission is judged on one.

    The allocator refuses the same, but only after the zonal permission check would
    have answered a member key 403 for a body that is simply malformed.
    """
    named = [g for g in given if g is not None]
    if len(named) != 1:
        raise invalid_argument("source", "give exactly one of zonal, private_network_id, "
                                         "subnet_id", "constraint" if named else "required")


def _idempotency(request: web.Request, who: Principal) -> tuple[str | None, str]:
    """The Idempotency-Key header, scoped to the caller's access key."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not (0 < len(key) <= 256 and key.isprintable()):
        raise invalid_argument(IDEMPOTENCY_HEADER, "must be 1 to 256 printable characters",
                               "format")
    return key, who.access_key


@routes.post(_BASE + "/ips")
@guarded_change
async def book_ip(request: web.Request) -> web.Response:
    """Book an IP from a Private Network, one of its subnets, or a zonal pool."""
    region = served_region(request)
    who = principal(request)
    ipam = ipam_of(request)
    body = await read_body(request)
    source = body.obj("source", required=True)
    zonal = pn_id = subnet_id = vpc_id = None
    regional = None
    if source is not None:
        zonal = source.text("zonal", max_length=32)
        pn_id = source.uuid("private_network_id")
        subnet_id = source.uuid("subnet_id")
        vpc_id = source.uuid("vpc_id")
        regional = source.flag("regional")
    is_ipv6 = body.flag("is_ipv6") or False
    project_id = body.uuid("project_id")
    address = body.text("address", max_length=64)
    tags = body.text_list("tags") or []
    resource = _resource(body.obj("resource"))
    body.finish()
    if regional:
        raise invalid_argument("source.regional", "regional IPs are not offered here; book "
                                                  "from a Private Network or a zone")
    _check_one_source(zonal, pn_id, subnet_id, vpc_id)
    if zonal is not None:
        served_zone(zonal, "source.zonal", request)
        if not (who.is_admin or who.is_product):  # zonal IPs are products' to book
            raise permissions_denied("book", "zonal_ip")
    if address is not None and "/" in address:
        raise invalid_argument("address", "give the address without its prefix length",
                               "format")
    if project_id is None:
        project_id = who.default_project()
        if project_id is None:
            raise invalid_argument("project_id", "this field is required", "required")
    who.check_write("ip", project_id, products_allowed=True)
    key, scope = _idempotency(request, who)
    # The allocator resolves the source, checks the caller sees it, and takes the
    # organization of a Private Network's IPs from the network itself.
    record = await ipam.book(AddressAsk(
        region=region, project_id=project_id, organization_id=who.organization_for(project_id),
        is_ipv6=is_ipv6, zonal=zonal, private_network_id=pn_id, subnet_id=subnet_id,
        vpc_id=vpc_id, address=address, tags=tuple(tags), resource=resource,
        idempotency_key=key, idempotency_scope=scope), who.caller())
    return web.json_response(ip_json(record))


@routes.get(_BASE + "/ips")
async def list_ips(request: web.Request) -> web.Response:
    """One page of the IPs the caller can see that match every filter given."""
    region = served_region(request)
    who = principal(request)
    q = QueryFields(request.query)
    order_by = q.choice("order_by", ORDERS, "created_at_desc")
    page, page_size = q.page()
    project_id = q.uuid("project_id")
    resource_type = q.text("resource_type")
    mac = q.text("mac_address")
    flt = IPFilter(
        project_ids=who.visible_projects,
        project_id=project_id,
        organization_id=q.uuid("organization_id"),
        region=region,
        zonal=q.text("zonal"),
        private_network_id=q.uuid("private_network_id"),
        subnet_id=q.uuid("subnet_id"),
        source_vpc_id=q.uuid("source_vpc_id"),
        vpc_id=q.uuid("vpc_id"),
        attached=q.flag("attached"),
        resource_id=q.uuid("resource_id"),
        resource_ids=tuple(q.uuid_list("resource_ids")),
        resource_type=None if resource_type in (None, "unknown_type") else resource_type,
        resource_types=tuple(t for t in q.repeated("resource_types") if t != "unknown_type"),
        resource_name=q.text("resource_name"),
        mac_address=normalize_mac(mac) if mac else None,
        tags=tuple(q.repeated("tags")),
        is_ipv6=q.flag("is_ipv6"),
        ip_ids=tuple(q.uuid_list("ip_ids")),
    )
    regional = q.flag("regional")
    q.finish()
    if regional:  # no regional IPs exist here
        return web.json_response({"ips": [], "total_count": 0})
    records, total = await ipam_of(request).list_ips(flt, order_by, page, page_size)
    return web.json_response({"ips": [ip_json(r) for r in records], "total_count": total})


@routes.get(_BASE + "/ips/{ip_id}")
async def get_ip(request: web.Request) -> web.Response:
    region = served_region(request)
    ip_id = path_uuid(request, "ip_id", "ip_id")
    record = await ipam_of(request).get_ip(ip_id)
    principal(request).check_visible("ip", ip_id, record.project_id)
    if record.region != region:
        raise not_found("ip", ip_id)
    return web.json_response(ip_json(record))


@routes.patch(_BASE + "/ips/{ip_id}")
@guarded_change
async def update_ip(request: web.Request) -> web.Response:
    """Change an IP's tags and reverse DNS entries."""
    region = served_region(request)
    who = principal(request)
    ip_id = path_uuid(request, "ip_id", "ip_id")
    body = await read_body(request, empty_ok=True)
    tags = body.text_list("tags")
    reverse_fields = body.obj_list("reverses")
    reverses = None
    if reverse_fields is not None:
        reverses = [{"hostname": f.text("hostname", required=True, max_length=253),
                     "address": f.text("address", max_length=64)} for f in reverse_fields]
    body.finish()
    who.check_write("ip", None, products_allowed=True)
    updated = await ipam_of(request).update_ip(ip_id, tags=tags, reverses=reverses,
                                               caller=who.caller(region))
    return web.json_response(ip_json(updated))


@routes.delete(_BASE + "/ips/{ip_id}")
@guarded_change
async def release_ip(request: web.Request) -> web.Response:
    """Release a detached IP (412 resource_still_in_use while attached)."""
    region = served_region(request)
    who = principal(request)
    ip_id = path_uuid(request, "ip_id", "ip_id")
    who.check_write("ip", None, products_allowed=True)
    await ipam_of(request).release(ip_id, who.caller(region))
    return web.Response(status=204)


@routes.post(_BASE + "/ip-sets/release")
@guarded_change
async def release_ip_set(request: web.Request) -> web.Response:
    """Release several detached IPs: all of them, or none."""
    region = served_region(request)
    who = principal(request)
    body = await read_body(request)
    ip_ids = body.uuid_list("ip_ids", required=True)
    body.finish()
    assert ip_ids is not None
    if not ip_ids:
        raise invalid_argument("ip_ids", "give at least one IP id", "required")
    who.check_write("ip", None, products_allowed=True)
    await ipam_of(request).release_set(ip_ids, who.caller(region))
    return web.Response(status=204)


async def _prepare_change(request: web.Request) -> tuple[Principal, str, Fields]:
    served_region(request)
    who = principal(request)
    ip_id = path_uuid(request, "ip_id", "ip_id")
    return who, ip_id, await read_body(request)


def _changer(request: web.Request, who: Principal) -> Caller:
    """Role check here; which IPs the key may touch is checked by the allocator as it reads."""
    who.check_write("ip", None, products_allowed=True)
    return who.caller(served_region(request))


@routes.post(_BASE + "/ips/{ip_id}/attach")
@guarded_change
async def attach_ip(request: web.Request) -> web.Response:
    """Attach a detached IP to a custom resource (or, for a product key, its resource)."""
    return await _attachment(request, "attach")


@routes.post(_BASE + "/ips/{ip_id}/detach")
@guarded_change
async def detach_ip(request: web.Request) -> web.Response:
    """Detach an IP from the resource it is attached to (named in the body)."""
    return await _attachment(request, "detach")


async def _attachment(request: web.Request, action: str) -> web.Response:
    """Attach or detach: the body names one resource; the allocator does the rest."""
    who, ip_id, body = await _prepare_change(request)
    resource = _resource(body.obj("resource", required=True))
    body.finish()
    assert resource is not None
    caller = _changer(request, who)
    key, scope = _idempotency(request, who)
    change = ipam_of(request).attach if action == "attach" else ipam_of(request).detach
    record = await change(ip_id, resource, caller, key, scope)
    return web.json_response(ip_json(record))


@routes.post(_BASE + "/ips/{ip_id}/move")
@guarded_change
async def move_ip(request: web.Request) -> web.Response:
    """Move an IP from the resource it is attached to, to another one (or to none)."""
    who, ip_id, body = await _prepare_change(request)
    from_resource = _resource(body.obj("from_resource", required=True))
    to_resource = _resource(body.obj("to_resource"))
    body.finish()
    assert from_resource is not None
    caller = _changer(request, who)
    key, scope = _idempotency(request, who)
    record = await ipam_of(request).move(ip_id, from_resource, to_resource, caller, key, scope)
    return web.json_response(ip_json(record))


@routes.get(_BASE + "/private-networks/{private_network_id}/reserved-ips")
async def reserved_ips(request: web.Request) -> web.Response:
    """Our extension: the addresses of each subnet that are never handed out, and why."""
    served_region(request)
    who = principal(request)
    pn_id = path_uuid(request, "private_network_id", "private_network_id")
    ipam = ipam_of(request)
    pn = await ipam.get_private_network(pn_id)
    who.check_visible("private_network", pn_id, pn.project_id)
    return web.json_response({"private_network_id": pn_id,
                              "subnets": await ipam.reserved_ips(pn_id)})
