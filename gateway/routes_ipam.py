"""IPAM API v1 routes: book, get, list, update, release, release a set, attach, detach, move.

Paths, bodies and query parameters are those of the SDK's `scaleway/ipam/v1/api.py`,
plus our extensions `GET .../private-networks/{id}/reserved-ips`,
`GET .../private-networks/{id}/usage` and the event feed `GET .../events`.
"""

from __future__ import annotations

from aiohttp import web

from allocator.contract import (
    CUSTOM,
    DEFAULT_PAGE_SIZE,
    UNCHANGED,
    AddressAsk,
    IPFilter,
    Resource,
    normalize_mac,
)

from .auth import Principal, guarded_change, principal
from .context import ipam_of, served_zone
from .errors import invalid_argument, not_found
from .etags import if_match
from .models.errors import PreconditionFailed
from .models.fields import RegionPath
from .models.ipam import (
    IP,
    AttachIPRequest,
    BookIPRequest,
    ChangeHeaders,
    ConditionalHeaders,
    CustomResource,
    DetachIPRequest,
    EventsQuery,
    EventsResponse,
    IdempotencyHeaders,
    IPPath,
    ListIPsQuery,
    ListIPsResponse,
    MoveIPRequest,
    PrivateNetworkUsageResponse,
    ReleaseIPSetRequest,
    ReservedIPsResponse,
    UpdateIPRequest,
)
from .models.vpc import PrivateNetworkPath
from .wire import endpoint

routes = web.RouteTableDef()

_BASE = "/ipam/v1/regions/{region}"


def _resource(given: CustomResource | None) -> Resource | None:
    """A resource from its JSON: custom (MAC and name), or a product's (type and id)."""
    if given is None:
        return None
    if given.type is None or given.type == CUSTOM:
        assert given.mac_address is not None  # the model requires it
        return Resource.custom(given.mac_address, given.name)
    assert given.id is not None  # the model requires it
    return Resource.product(given.type, given.id, given.mac_address, given.name)


def _idempotency(headers: IdempotencyHeaders, who: Principal) -> tuple[str | None, str]:
    """The Idempotency-Key header, scoped to the caller's access key."""
    return headers.idempotency_key, who.access_key


@routes.post(_BASE + "/ips")
@guarded_change
@endpoint
async def book_ip(request: web.Request, path: RegionPath, headers: IdempotencyHeaders,
                  body: BookIPRequest) -> IP:
    """Book an IP from a Private Network, one of its subnets, or a zonal pool."""
    who = principal(request)
    ipam = ipam_of(request)
    source = body.source
    if source.zonal is not None:
        served_zone(source.zonal, "source.zonal", request)
    if body.address is not None and "/" in body.address:
        raise invalid_argument("address", "give the address without its prefix length",
                               "format")
    project_id = body.project_id
    if project_id is None:
        project_id = who.default_project()
        if project_id is None:
            raise invalid_argument("project_id", "this field is required", "required")
    key, scope = _idempotency(headers, who)
    pn_id, subnet_id = source.private_network_id, source.subnet_id
    # The allocator decides the rest, once: who may book where (allocator.access), the
    # source and whether the caller sees it, the organization (the project's, whoever
    # books: 412 project_organization_unknown when nobody set it).
    record = await ipam.book(AddressAsk(
        region=path.region, project_id=project_id,
        organization_id=who.organization_claim,
        is_ipv6=body.is_ipv6 or False, zonal=source.zonal, private_network_id=pn_id,
        subnet_id=subnet_id, vpc_id=source.vpc_id, address=body.address,
        tags=tuple(body.tags or ()), resource=_resource(body.resource),
        expires_at=body.expires_at, idempotency_key=key, idempotency_scope=scope),
        who.caller())
    return IP.of(record)


@routes.get(_BASE + "/ips")
@endpoint
async def list_ips(request: web.Request, path: RegionPath, query: ListIPsQuery
                   ) -> ListIPsResponse:
    """List the IPs the caller can see that match every filter given, one page at a time."""
    who = principal(request)
    q = query
    flt = IPFilter(
        project_ids=who.visible_projects,
        project_id=q.project_id,
        organization_id=q.organization_id,
        region=path.region,
        zonal=q.zonal,
        private_network_id=q.private_network_id,
        subnet_id=q.subnet_id,
        source_vpc_id=q.source_vpc_id,
        vpc_id=q.vpc_id,
        attached=q.attached,
        resource_id=q.resource_id,
        resource_ids=tuple(q.resource_ids),
        resource_type=None if q.resource_type in (None, "unknown_type") else q.resource_type,
        resource_types=tuple(t for t in q.resource_types if t != "unknown_type"),
        resource_name=q.resource_name,
        mac_address=normalize_mac(q.mac_address) if q.mac_address else None,
        tags=tuple(q.tags),
        is_ipv6=q.is_ipv6,
        ip_ids=tuple(q.ip_ids),
    )
    if q.regional:  # no regional IPs exist here
        return ListIPsResponse(ips=[], total_count=0)
    # The SDK sends page_size only when asked; 0 would mean "default" to it.
    page_size = q.page_size or DEFAULT_PAGE_SIZE
    records, total = await ipam_of(request).list_ips(flt, q.order_by, q.page, page_size)
    return ListIPsResponse(ips=[IP.of(r) for r in records], total_count=total)


@routes.get(_BASE + "/ips/{ip_id}")
@endpoint
async def get_ip(request: web.Request, path: IPPath) -> IP:
    """Get an IP."""
    record = await ipam_of(request).get_ip(path.ip_id)
    principal(request).check_visible("ip", path.ip_id, record.project_id)
    if record.region != path.region:
        raise not_found("ip", path.ip_id)
    return IP.of(record)


@routes.patch(_BASE + "/ips/{ip_id}")
@guarded_change
@endpoint(optional_body=True)
async def update_ip(request: web.Request, path: IPPath, headers: ConditionalHeaders,
                    body: UpdateIPRequest) -> IP:
    """Change an IP's tags and reverse DNS entries, and its expiry (our extension)."""
    who = principal(request)
    reverses = None if body.reverses is None else [
        {"hostname": r.hostname, "address": r.address} for r in body.reverses]
    # `"expires_at": null` clears the expiry; leaving the field out leaves it as it is.
    expires_at = body.expires_at if "expires_at" in body.model_fields_set else UNCHANGED
    updated = await ipam_of(request).update_ip(path.ip_id, tags=body.tags, reverses=reverses,
                                               caller=who.caller(path.region),
                                               if_match=if_match(headers.if_match),
                                               expires_at=expires_at)
    return IP.of(updated)


@routes.delete(_BASE + "/ips/{ip_id}")
@guarded_change
@endpoint
async def release_ip(request: web.Request, path: IPPath, headers: ConditionalHeaders) -> None:
    """Release a detached IP (412 resource_still_in_use while attached)."""
    await ipam_of(request).release(path.ip_id, principal(request).caller(path.region),
                                   if_match(headers.if_match))


@routes.post(_BASE + "/ip-sets/release")
@guarded_change
@endpoint
async def release_ip_set(request: web.Request, path: RegionPath,
                         body: ReleaseIPSetRequest) -> None:
    """Release several detached IPs: all of them, or none."""
    await ipam_of(request).release_set(body.ip_ids, principal(request).caller(path.region))


@routes.post(_BASE + "/ips/{ip_id}/attach")
@guarded_change
@endpoint
async def attach_ip(request: web.Request, path: IPPath, headers: ChangeHeaders,
                    body: AttachIPRequest) -> IP:
    """Attach a detached IP to a custom resource (or, for a product key, its resource)."""
    who = principal(request)
    resource = _resource(body.resource)
    assert resource is not None
    key, scope = _idempotency(headers, who)
    record = await ipam_of(request).attach(path.ip_id, resource, who.caller(path.region), key,
                                           scope, if_match(headers.if_match))
    return IP.of(record)


@routes.post(_BASE + "/ips/{ip_id}/detach")
@guarded_change
@endpoint
async def detach_ip(request: web.Request, path: IPPath, headers: ChangeHeaders,
                    body: DetachIPRequest) -> IP:
    """Detach an IP from the resource it is attached to (named in the body)."""
    who = principal(request)
    resource = _resource(body.resource)
    assert resource is not None
    key, scope = _idempotency(headers, who)
    record = await ipam_of(request).detach(path.ip_id, resource, who.caller(path.region), key,
                                           scope, if_match(headers.if_match))
    return IP.of(record)


@routes.post(_BASE + "/ips/{ip_id}/move")
@guarded_change
@endpoint
async def move_ip(request: web.Request, path: IPPath, headers: ChangeHeaders,
                  body: MoveIPRequest) -> IP:
    """Move an IP from the resource it is attached to, to another one (or to none)."""
    who = principal(request)
    from_resource = _resource(body.from_resource)
    assert from_resource is not None
    to_resource = _resource(body.to_resource)
    caller = who.caller(path.region)
    key, scope = _idempotency(headers, who)
    record = await ipam_of(request).move(path.ip_id, from_resource, to_resource, caller, key,
                                         scope, if_match(headers.if_match))
    return IP.of(record)


@routes.get(_BASE + "/private-networks/{private_network_id}/reserved-ips")
@endpoint
async def reserved_ips(request: web.Request, path: PrivateNetworkPath) -> ReservedIPsResponse:
    """List the addresses of each subnet that are never handed out, and why (extension)."""
    who = principal(request)
    pn_id = path.private_network_id
    ipam = ipam_of(request)
    pn = await ipam.get_private_network(pn_id)
    who.check_visible("private_network", pn_id, pn.project_id)
    return ReservedIPsResponse.model_validate(
        {"private_network_id": pn_id, "subnets": await ipam.reserved_ips(pn_id)})


@routes.get(_BASE + "/private-networks/{private_network_id}/usage")
@endpoint
async def private_network_usage(request: web.Request, path: PrivateNetworkPath
                                ) -> PrivateNetworkUsageResponse:
    """How full each subnet of a Private Network is, counted at one revision (extension).

    Whoever may get the Private Network may read it; anyone else gets its 404."""
    usage = await ipam_of(request).network_usage(path.private_network_id,
                                                 principal(request).caller(path.region))
    return PrivateNetworkUsageResponse.of(usage)


@routes.get(_BASE + "/events")
@endpoint(replies={412: PreconditionFailed})
async def list_events(request: web.Request, path: RegionPath, query: EventsQuery
                      ) -> EventsResponse:
    """Read the IP lifecycle events after a cursor, in commit order (extension).

    A key reads its own projects' events only; with `wait`, an empty read waits for the
    next event (long poll). 412 cursor_expired: the cursor is older than the feed keeps."""
    page = await ipam_of(request).events(
        query.after, principal(request).caller(path.region), region=path.region,
        project_id=query.project_id, private_network_id=query.private_network_id,
        ip_id=query.ip_id, page_size=query.page_size, wait=query.wait_seconds)
    return EventsResponse.of(page)
