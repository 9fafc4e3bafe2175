"""IPAM API v1: the shapes of the SDK's `scaleway/ipam/v1/types.py`, plus our
`reserved-ips`, `usage` and `events` extensions.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from allocator.contract import (
    DEFAULT_EVENT_PAGE,
    MAX_EVENT_PAGE,
    MAX_EVENT_WAIT,
    MAX_EXPIRY,
    Event,
    EventPage,
    IPRecord,
    NetworkUsage,
)
from allocator.contract import SubnetUsage as DomainSubnetUsage

from ..etags import etag
from .fields import (
    Body,
    Flag,
    Hostname,
    IpAddress,
    Mac,
    NicMac,
    Page,
    PageSize,
    Printable,
    Query,
    RegionPath,
    Reply,
    ResourceName,
    Tags,
    Timestamp,
    Uuid,
    Zone,
    not_null,
    project_required,
    shape,
)

# Our extension (Scaleway has no such field): when an unattached IP is released by itself.
# The time rules (RFC 3339 with its offset, in the future, at most a year ahead) are the
# allocator's (`allocator.expiry`), checked before anything is written.
_EXPIRY_RULE = (f"RFC 3339 time with its offset, in the future and at most "
                f"{MAX_EXPIRY.days} days ahead")
# Its own format: a date-time that is also in the future and not too far (the document
# cannot say "from now" in JSON Schema; the description does).
ExpiresAt = Annotated[str, Field(max_length=64), WithJsonSchema({
    "type": "string", "format": "expiry-date-time", "maxLength": 64,
    "description": _EXPIRY_RULE})]

IPOrder = Literal["created_at_desc", "created_at_asc", "updated_at_desc", "updated_at_asc",
                  "attached_at_desc", "attached_at_asc", "ip_address_desc", "ip_address_asc",
                  "mac_address_desc", "mac_address_asc"]

# -- requests -----------------------------------------------------------------------------

_SOURCE_KINDS = ("zonal", "private_network_id", "subnet_id", "vpc_id")


class BookSource(Body):
    """Where to book from: exactly one of a zone, a Private Network, a subnet or a VPC."""

    # The SDK sends only the one it was given; null stands for absent, as everywhere.
    model_config = ConfigDict(json_schema_extra=lambda schema: _one_source_shapes(schema))

    zonal: Zone | None = None
    private_network_id: Uuid | None = None
    subnet_id: Uuid | None = None
    vpc_id: Uuid | None = None
    # Regional IPs are not offered here: only false (or absent) is accepted.
    regional: Annotated[bool | None, WithJsonSchema({"enum": [False, None]})] = None

    @model_validator(mode="after")
    def _one_source(self) -> BookSource:
        if self.regional:
            raise PydanticCustomError(
                "regional", "regional IPs are not offered here; book from a Private "
                            "Network or a zone", {"field": "regional"})
        named = [k for k in _SOURCE_KINDS if getattr(self, k) is not None]
        if len(named) != 1:
            # "missing" when none is named: mapped to reason `required` like any other.
            raise PydanticCustomError(
                "one_of" if named else "missing",
                "give exactly one of zonal, private_network_id, subnet_id")
        return self


def _one_source_shapes(schema: dict[str, Any]) -> None:
    # A VPC source is read (the SDK has it) but always refused by the allocator: book in
    # one of its Private Networks.
    props = {**schema.pop("properties"), "vpc_id": {"type": "null"}}
    bookable = [k for k in _SOURCE_KINDS if k != "vpc_id"]
    schema["anyOf"] = [shape({**props, **{k: {"type": "null"} for k in bookable},
                              kind: not_null(props[kind])}, [kind]) for kind in bookable]
    schema.pop("additionalProperties")


class CustomResource(Body):
    """A resource an IP is attached to: custom (a MAC) or, for a product key, its own."""

    model_config = ConfigDict(json_schema_extra=lambda schema: _resource_shapes(schema))

    mac_address: Mac | None = None
    name: ResourceName | None = None
    type: str | None = Field(default=None, min_length=1, max_length=64,
                             pattern=r"^[a-z][a-z0-9_]{0,63}$")
    id: Uuid | None = None

    @model_validator(mode="after")
    def _identified(self) -> CustomResource:
        if self.type in (None, "custom"):
            if self.mac_address is None:
                raise PydanticCustomError("missing", "a custom resource needs its MAC address",
                                          {"field": "mac_address"})
        elif self.id is None:
            raise PydanticCustomError("missing", "a product resource needs its id",
                                      {"field": "id"})
        return self


class NewResource(CustomResource):
    """A resource an IP is to be attached to (book, attach, move to): a custom one's MAC
    is a network interface's own, unicast."""

    mac_address: NicMac | None = None  # type: ignore[assignment]


def _resource_shapes(schema: dict[str, Any]) -> None:
    props = schema.pop("properties")
    custom = {**props, "mac_address": not_null(props["mac_address"]),
              "type": {"enum": ["custom", None]}}
    product = {**props, "type": {**not_null(props["type"]), "not": {"const": "custom"}},
               "id": not_null(props["id"])}
    schema["anyOf"] = [shape(custom, ["mac_address"]), shape(product, ["type", "id"])]
    schema.pop("additionalProperties")


def _book_shapes(schema: dict[str, Any]) -> None:
    # The allocator books a given address only in a Private Network: from a zone, the
    # address must be left out.
    project_required(schema)
    props, required = schema.pop("properties"), schema.pop("required")
    zonal, *network = BookSource.model_json_schema()["anyOf"]
    schema["anyOf"] = [shape({**props, "source": zonal, "address": {"type": "null"}}, required),
                       shape({**props, "source": {"anyOf": network}}, required)]
    schema.pop("additionalProperties")


class BookIPRequest(Body):
    model_config = ConfigDict(json_schema_extra=lambda schema: _book_shapes(schema))

    source: BookSource
    is_ipv6: bool | None = None
    project_id: Uuid | None = None
    address: IpAddress | None = None
    tags: Tags | None = None
    resource: NewResource | None = None
    expires_at: ExpiresAt | None = Field(
        default=None, description="our extension: release the IP by itself at this time "
                                  "unless it was attached meanwhile (attaching clears it); "
                                  f"an {_EXPIRY_RULE}; not with `resource`")


class ReverseRequest(Body):
    hostname: Hostname
    address: IpAddress | None = None


class UpdateIPRequest(Body):
    tags: Tags | None = None
    reverses: list[ReverseRequest] | None = None
    # Absent: left as it is; null: cleared (`model_fields_set` tells them apart).
    expires_at: ExpiresAt | None = Field(
        default=None, description="our extension: set or change (an "
                                  f"{_EXPIRY_RULE}) or clear (null) when the unattached IP "
                                  "is released by itself; absent: left as it is")


class ReleaseIPSetRequest(Body):
    ip_ids: list[Uuid] = Field(min_length=1)


class AttachIPRequest(Body):
    resource: NewResource


class DetachIPRequest(Body):
    resource: CustomResource


class MoveIPRequest(Body):
    from_resource: CustomResource
    to_resource: NewResource | None = None


class IPPath(RegionPath):
    ip_id: Uuid


class IdempotencyHeaders(BaseModel):
    """A retried change with the same key gets the first answer, and changes nothing more."""

    model_config = ConfigDict(extra="ignore")

    # Visible ASCII: what a header carries intact; HTTP trims spaces at either end.
    idempotency_key: str | None = Field(default=None, alias="Idempotency-Key", min_length=1,
                                        max_length=256,
                                        pattern=r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$")


# `*`, or entity tags (RFC 9110: optional W/, then an opaque string in double quotes);
# an empty header is an absent one.
_TAG = r'(W/)?"[\x21\x23-\x7e]*"'
IF_MATCH = rf"^[ \t]*(\*|{_TAG}([ \t]*,[ \t]*{_TAG})*)?[ \t]*$"


class ConditionalHeaders(BaseModel):
    """A change that applies only while the IP is at a version its ETag named."""

    model_config = ConfigDict(extra="ignore")

    if_match: str | None = Field(
        default=None, alias="If-Match", pattern=IF_MATCH,
        description='`*` or the ETags (`"4711"`) of the versions of the IP this change '
                    "may apply to; otherwise 412 precondition_failed and nothing changes.")


class ChangeHeaders(IdempotencyHeaders, ConditionalHeaders):
    """A retryable change that may also be conditional."""


class ListIPsQuery(Query):
    order_by: IPOrder = "created_at_desc"
    page: Page = 1
    page_size: PageSize = 0
    project_id: Uuid | None = None
    organization_id: Uuid | None = None
    zonal: Printable | None = None
    private_network_id: Uuid | None = None
    subnet_id: Uuid | None = None
    source_vpc_id: Uuid | None = None
    vpc_id: Uuid | None = None
    attached: Flag | None = None
    resource_id: Uuid | None = None
    resource_ids: list[Uuid] = Field(default_factory=list)
    resource_type: Printable | None = None
    resource_types: list[Printable] = Field(default_factory=list)
    resource_name: Printable | None = None
    mac_address: Mac | None = None
    tags: list[Printable] = Field(default_factory=list)
    is_ipv6: Flag | None = None
    ip_ids: list[Uuid] = Field(default_factory=list)
    regional: Flag | None = None


# -- answers ------------------------------------------------------------------------------


class Resource(Reply):
    type: str
    id: str
    mac_address: str | None
    name: str | None


class Reverse(Reply):
    hostname: str
    address: str | None


class ZonalSource(Reply):
    """A public IP's source: its zone, and nothing else (Scaleway's `Source` is a one-of)."""

    zonal: str


class SubnetSource(Reply):
    """A private IP's source: the subnet it was booked in, and nothing else, as Scaleway
    answers (the Private Network and VPC are the subnet's: list_subnets gives them)."""

    subnet_id: Uuid


class IP(Reply):
    versioned: ClassVar[bool] = True

    id: Uuid
    address: str
    project_id: str
    is_ipv6: bool
    created_at: Timestamp
    updated_at: Timestamp
    source: ZonalSource | SubnetSource
    resource: Resource | None
    tags: list[str]
    reverses: list[Reverse]
    region: str
    zone: str | None
    expires_at: Timestamp | None = Field(
        description="our extension: when the IP is released by itself (null: never)")

    @classmethod
    def of(cls, record: IPRecord) -> IP:
        """The SDK's `IP` for a record.

        Built without validation (`model_construct`): the record was checked when it was
        written, and validating what we stored cost a third of a GET's model work. The
        answer is the same, byte for byte (tests/gateway/test_models_of.py)."""
        r = record.resource
        return cls.model_construct(
            id=record.id, address=record.address, project_id=record.project_id,
            is_ipv6=record.is_ipv6, created_at=record.created_at,
            updated_at=record.updated_at, source=_source(record),
            resource=None if r is None else Resource.model_construct(
                type=r.type, id=r.id, mac_address=r.mac_address, name=r.name),
            tags=list(record.tags),
            reverses=[Reverse.model_construct(hostname=v.hostname, address=v.address)
                      for v in record.reverses],
            region=record.region, zone=record.zone,
            expires_at=record.expires_at).versioned_as(etag(record.revision))


def _source(record: IPRecord) -> ZonalSource | SubnetSource:
    if record.source_kind == "zonal":
        assert record.zone is not None  # a zonal pool always has its zone
        return ZonalSource.model_construct(zonal=record.zone)
    return SubnetSource.model_construct(subnet_id=record.source_id)


class ListIPsResponse(Reply):
    ips: list[IP]
    total_count: int = Field(ge=0)


class ReservedAddress(Reply):
    address: str
    reason: str


class ReservedSubnet(Reply):
    subnet_id: str
    subnet: str
    reserved: list[ReservedAddress]


class ReservedIPsResponse(Reply):
    """Our extension: the addresses of each subnet that are never handed out, and why."""

    private_network_id: Uuid
    subnets: list[ReservedSubnet]


class AddressCounts(Reply):
    """How full a source is. Counts are exact JSON integers, never strings: an IPv6 /64
    has 2^64 addresses, more than a double holds exactly, so read them with a parser that
    keeps integers whole (Python's does)."""

    usable: int = Field(ge=0, description="addresses the allocator hands out: the size "
                                          "less the reserved ones")
    reserved: int = Field(ge=0, description="addresses never handed out: network, "
                                            "gateway, broadcast, the provider's")
    held: int = Field(ge=0, description="IPs in it")
    free: int = Field(ge=0, description="usable - held")
    used_percent: float = Field(ge=0, le=100, description="100 * held / usable, unrounded")

    @staticmethod
    def counts(usage: DomainSubnetUsage) -> dict[str, Any]:
        """The fields of this model for one source's usage."""
        return {"usable": usage.usable, "reserved": usage.reserved, "held": usage.held,
                "free": usage.free, "used_percent": usage.used_percent}


class SubnetUsage(AddressCounts):
    """How full one subnet of a Private Network is."""

    subnet_id: Uuid
    subnet: str
    is_ipv6: bool


class PrivateNetworkUsageResponse(Reply):
    """Our extension: how full each subnet of a Private Network is, every count read at
    one etcd revision."""

    private_network_id: Uuid
    revision: int = Field(ge=1, description="the etcd revision every count was read at")
    subnets: list[SubnetUsage]

    @classmethod
    def of(cls, usage: NetworkUsage) -> PrivateNetworkUsageResponse:
        return cls(private_network_id=usage.private_network_id, revision=usage.revision,
                   subnets=[SubnetUsage(subnet_id=u.source.id, subnet=u.source.cidr,
                                        is_ipv6=u.source.is_ipv6, **AddressCounts.counts(u))
                            for u in usage.subnets])


# -- the event feed (our extension) ----------------------------------------------------

EventKind = Literal["booked", "attached", "detached", "moved", "updated", "released",
                    "expired"]
_CURSOR_HELP = ('"0" (the oldest event kept) or a cursor the feed answered; one older '
                "than the retention is refused (412 precondition_failed, precondition "
                "cursor_expired): read from \"0\" again; one the feed could not have "
                "answered (a revision beyond the store's, a time ahead of the clock) is "
                "refused (400 invalid_arguments)")


# Their own formats, like `expires_at`'s: what JSON Schema cannot say (a cursor the feed
# could have answered, within its retention) is said by the description.
EventCursor = Annotated[str, Field(max_length=40,
                                   pattern=r"^(0|[1-9][0-9]{0,18}-[0-9]{1,12})$"),
                        WithJsonSchema({"type": "string", "format": "event-cursor",
                                        "maxLength": 40, "description": _CURSOR_HELP})]
PollWait = Annotated[str, Field(max_length=7, pattern=r"^[0-9]{1,2}(\.[0-9]{1,3})?s?$"),
                     WithJsonSchema({
                         "type": "string", "format": "poll-wait", "maxLength": 7,
                         "description": f"long poll: when no event follows the cursor, "
                                        f"wait this long for one (seconds, `30` or `30s`, "
                                        f"at most {MAX_EVENT_WAIT:g})"})]


class EventsQuery(Query):
    """Where to read the feed from, what of it, and how long to wait for an event."""

    after: EventCursor = "0"
    project_id: Uuid | None = None
    private_network_id: Uuid | None = None
    ip_id: Uuid | None = None
    page_size: int = Field(default=DEFAULT_EVENT_PAGE, ge=1, le=MAX_EVENT_PAGE,
                           description="about this many events: a page ends with the "
                                       "last event of a commit, so it may hold a few more")
    wait: PollWait | None = None

    @property
    def wait_seconds(self) -> float:
        return float(self.wait.removesuffix("s")) if self.wait else 0.0


class IPEvent(Reply):
    """One change of an IP, as committed."""

    cursor: str = Field(description="read on from here: after this event's commit")
    kind: EventKind
    ip_id: Uuid
    address: str
    project_id: str
    region: str
    private_network_id: str | None
    source_id: str
    resource: Resource | None = Field(description="what holds the IP after the change")
    actor: str = Field(description="the access key that made the change; admin, or "
                                   "expirer for an expired IP's release")
    at: Timestamp
    tags: list[str] | None = Field(description="booked and updated: the IP's tags")
    reverses: list[Reverse] | None = Field(description="updated: the IP's reverses")
    expires_at: Timestamp | None = Field(description="booked and updated: its expiry")

    @classmethod
    def of(cls, e: Event) -> IPEvent:
        d = e.details
        r = e.resource
        return cls(cursor=e.cursor, kind=e.kind, ip_id=e.ip_id,  # type: ignore[arg-type]
                   address=e.address, project_id=e.project_id, region=e.region,
                   private_network_id=e.private_network_id, source_id=e.source_id,
                   resource=None if r is None else Resource(**r), actor=e.actor, at=e.at,
                   tags=d.get("tags"), expires_at=d.get("expires_at"),
                   reverses=None if "reverses" not in d else [
                       Reverse(hostname=v["hostname"], address=v.get("address"))
                       for v in d["reverses"]])


class EventsResponse(Reply):
    """Our extension: IP lifecycle events in commit order, and where to read on from."""

    events: list[IPEvent]
    cursor: str = Field(description="give it as `after` to read on (the same as asked "
                                    "when nothing came)")

    @classmethod
    def of(cls, page: EventPage) -> EventsResponse:
        return cls(events=[IPEvent.of(e) for e in page.events], cursor=page.cursor)
