"""Operator routes (API keys, project organizations and quotas, zonal pools, DHCP declines)
and the probes: our own API, not Scaleway's."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, RootModel, model_validator
from pydantic_core import PydanticCustomError

from allocator.contract import MAX_OVERRIDE, Decline, Source, SubnetUsage
from allocator.contract import ApiKey as DomainApiKey
from allocator.contract import ProjectQuotas as DomainProjectQuotas

from .fields import (
    RESOURCE_TYPE_PATTERN,
    Body,
    Cidr,
    Description,
    Mac,
    Path,
    Query,
    RegionPath,
    Reply,
    Timestamp,
    Uuid,
    Zone,
)
from .ipam import AddressCounts

Role = Literal["admin", "project_member", "project_reader", "product"]

# Which fields each role needs or refuses (checked by `allocator.credentials`).
_ROLE_RULES = [
    {"if": {"properties": {"role": {"const": "admin"}}},
     "then": {"properties": {"project_ids": {"maxItems": 0},
                             "resource_types": {"maxItems": 0}}}},
    {"if": {"properties": {"role": {"enum": ["project_member", "project_reader"]}}},
     "then": {"required": ["project_ids"],
              "properties": {"project_ids": {"type": "array", "minItems": 1},
                             "resource_types": {"maxItems": 0}}}},
    {"if": {"properties": {"role": {"const": "product"}}},
     "then": {"required": ["resource_types"],
              "properties": {"resource_types": {"type": "array", "minItems": 1}}}},
]


class CreateApiKeyRequest(Body):
    """A new key: its role, and the projects or product resource types it acts for."""

    model_config = ConfigDict(json_schema_extra={"allOf": _ROLE_RULES})

    role: Role
    organization_id: Uuid | None = Field(default=None, description=(
        "A project key's organization: its projects are mapped to it (for good) when the "
        "key is created, and every object created in them carries it. A project mapped "
        "to another organization already: 409 already_exists, and no key is created."))
    project_ids: list[Uuid] | None = Field(default=None, max_length=100)
    resource_types: list[str] | None = Field(
        default=None, json_schema_extra={"items": {"type": "string",
                                                   "pattern": RESOURCE_TYPE_PATTERN,
                                                   "not": {"const": "custom"}}})
    description: Description | None = None
    expires_at: str | None = Field(default=None, json_schema_extra={
        "format": "future-date-time",
        "description": "an RFC 3339 time with its time zone, in the future"})


class ProjectPath(Path):
    project_id: Uuid


class SetProjectOrganizationRequest(Body):
    """The organization a project belongs to, set once."""

    organization_id: Uuid


class ProjectOrganization(Reply):
    """A project and the organization of everything created in it."""

    project_id: Uuid
    organization_id: Uuid


_QUOTA = ("an integer from 0 (the project may create none) up; null: back to the nodes' "
          "default; left out: unchanged")


def _whole(value: Any) -> Any:
    """JSON has one kind of number, and JSON Schema's integer takes 3.0 as 3: so does a
    quota. 2.5, a string or a boolean stay what they are, and are refused."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


QuotaValue = Annotated[int | None, BeforeValidator(_whole)]


class SetProjectQuotasRequest(Body):
    """The quotas of a project that differ from the nodes' defaults (`--quota-*`): each
    field named sets one, the others keep what they are. A quota lowered below what the
    project holds deletes nothing: its creates are refused until it holds less."""

    vpcs: QuotaValue = Field(default=None, ge=0, le=MAX_OVERRIDE,
                             description=f"VPCs, every region counted: {_QUOTA}")
    private_networks: QuotaValue = Field(
        default=None, ge=0, le=MAX_OVERRIDE,
        description=f"Private Networks, every region counted: {_QUOTA}")
    subnets_per_private_network: QuotaValue = Field(
        default=None, ge=0, le=MAX_OVERRIDE,
        description=f"subnets of each of its Private Networks: {_QUOTA}")
    ips: QuotaValue = Field(default=None, ge=0, le=MAX_OVERRIDE,
                            description=f"IPs booked, every source counted: {_QUOTA}")

    def changes(self) -> dict[str, int | None]:
        """The fields the request named (null included): absent ones change nothing."""
        return {name: getattr(self, name) for name in self.model_fields_set}


class ProjectQuotas(Reply):
    """The quotas in force for a project (null: no quota of that resource), and which of
    them its override sets (the others are the nodes' defaults)."""

    project_id: Uuid
    vpcs: int | None
    private_networks: int | None
    subnets_per_private_network: int | None
    ips: int | None
    overridden: list[Literal["vpcs", "private_networks", "subnets_per_private_network",
                             "ips"]]

    @classmethod
    def of(cls, quotas: DomainProjectQuotas) -> ProjectQuotas:
        return cls(project_id=quotas.project_id, vpcs=quotas.vpcs,
                   private_networks=quotas.private_networks,
                   subnets_per_private_network=quotas.subnets_per_private_network,
                   ips=quotas.ips, overridden=list(quotas.overridden))  # type: ignore[arg-type]


class ApiKeyPath(Path):
    access_key: str = Field(pattern=r"^SCW[A-Z0-9]{17}$")


class ApiKey(Reply):
    access_key: str
    role: Role
    organization_id: str | None
    project_ids: list[str]
    resource_types: list[str]
    description: str
    created_at: str
    expires_at: str | None

    @classmethod
    def of(cls, key: DomainApiKey) -> ApiKey:
        return cls(**key.to_json())


class ApiKeyWithSecret(ApiKey):
    """A key as created: the only time its secret is ever shown."""

    secret_key: Uuid


class ListApiKeysResponse(Reply):
    api_keys: list[ApiKey]
    total_count: int = Field(ge=0)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _ranges(*ranges: tuple[str, str]) -> list[tuple[Network, str]]:
    return [(ipaddress.ip_network(cidr), why) for cidr, why in ranges]


# No address of these is unicast to a host on the Internet: never a zonal pool.
_NEVER_PUBLIC = _ranges(
    ("0.0.0.0/8", "unspecified (this network)"), ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"), ("192.0.0.0/24", "reserved for IETF protocols"),
    ("192.88.99.0/24", "reserved (the former 6to4 relay anycast)"),
    ("224.0.0.0/4", "multicast"), ("240.0.0.0/4", "reserved (and the broadcast address)"),
    ("::/128", "unspecified"), ("::1/128", "loopback"), ("::ffff:0:0/96", "IPv4-mapped"),
    ("fe80::/10", "link-local"), ("ff00::/8", "multicast"),
    ("2001::/23", "reserved for IETF protocols"))
# Not public either, but what a lab uses for its make-believe Internet: allowed by
# `allow_private`.
_PRIVATE_USE = _ranges(
    ("10.0.0.0/8", "private (RFC 1918)"), ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("100.64.0.0/10", "shared address space (carrier-grade NAT, RFC 6598)"),
    ("192.0.2.0/24", "documentation (RFC 5737)"),
    ("198.51.100.0/24", "documentation (RFC 5737)"),
    ("203.0.113.0/24", "documentation (RFC 5737)"), ("198.18.0.0/15", "benchmarking (RFC 2544)"),
    ("fc00::/7", "unique local (RFC 4193)"), ("2001:db8::/32", "documentation (RFC 3849)"),
    ("3fff::/20", "documentation (RFC 9637)"))
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")


def _within(net: Network, ranges: list[tuple[Network, str]]) -> str | None:
    first, last = int(net.network_address), int(net.broadcast_address)
    for known, why in ranges:
        low, high = int(known.network_address), int(known.broadcast_address)
        if known.version == net.version and first <= high and low <= last:
            where = "lies in" if low <= first and last <= high else "overlaps"
            return f"{net} {where} {known}: {why}"
    return None


def public_refusal(subnet: str, allow_private: bool) -> str | None:
    """Why `subnet` (a CIDR in its canonical text) may not be a zonal pool, or None.

    A zonal pool hands out public addresses: global unicast only, or for a lab that says
    so, private-use ranges too. Multicast, loopback, link-local, unspecified and reserved
    ranges never (no host is reached at one)."""
    net = ipaddress.ip_network(subnet, strict=False)  # host bits are the allocator's 400
    public = "a zonal pool holds public (global unicast) addresses"
    never = _within(net, _NEVER_PUBLIC)
    if never is not None:
        return f"{never}; {public}"
    private = _within(net, _PRIVATE_USE)
    if private is not None:
        return None if allow_private else f"{private}; {public} (allow_private: true for a lab)"
    if isinstance(net, ipaddress.IPv6Network) and not net.subnet_of(_GLOBAL_UNICAST_V6):
        return f"{net} lies outside {_GLOBAL_UNICAST_V6}, the global unicast range; {public}"
    return None


class CreateZonalPoolRequest(Body):
    """A pool of public addresses for a zone: global unicast, unless a lab says otherwise."""

    zone: Zone
    subnet: Cidr
    allow_private: bool | None = Field(default=None, description=(
        "Our extension, for a lab: true lets `subnet` be a private (RFC 1918, unique local "
        "fc00::/7), shared (100.64.0.0/10), documentation or benchmarking range. Absent or "
        "false: only global unicast ranges. Multicast, loopback, link-local, unspecified "
        "and reserved ranges are refused either way."))

    @model_validator(mode="after")
    def _public(self) -> CreateZonalPoolRequest:
        refusal = public_refusal(self.subnet, bool(self.allow_private))
        if refusal is not None:
            raise PydanticCustomError("public_range", refusal, {"field": "subnet"})
        return self


class ListZonalPoolsQuery(Query):
    zone: Zone | None = None


class ZonalPoolPath(RegionPath):
    pool_id: Uuid


class ZonalPool(Reply):
    id: Uuid
    region: str
    zone: str | None
    subnet: str
    is_ipv6: bool
    created_at: str

    @classmethod
    def of(cls, pool: Source) -> ZonalPool:
        return cls(id=pool.id, region=pool.region, zone=pool.zone, subnet=pool.cidr,
                   is_ipv6=pool.is_ipv6, created_at=pool.created_at)


class ListZonalPoolsResponse(Reply):
    zonal_pools: list[ZonalPool]
    total_count: int = Field(ge=0)


class ZonalPoolUsage(AddressCounts):
    """How full a zonal pool is, counted at one etcd revision."""

    id: Uuid
    region: str
    zone: str | None
    subnet: str
    is_ipv6: bool
    revision: int = Field(ge=1, description="the etcd revision the count was read at")

    @classmethod
    def of(cls, usage: SubnetUsage) -> ZonalPoolUsage:
        pool = usage.source
        return cls(id=pool.id, region=pool.region, zone=pool.zone, subnet=pool.cidr,
                   is_ipv6=pool.is_ipv6, revision=usage.revision,
                   **AddressCounts.counts(usage))


class DhcpDeclinesQuery(Query):
    """Which declines: those of one Private Network, of one MAC, or both (all without)."""

    private_network_id: Uuid | None = None
    mac_address: Mac | None = None


class DhcpDecline(Reply):
    """An address DHCP withholds from the MAC that declined it (found in use)."""

    private_network_id: Uuid
    mac_address: str
    address: str
    is_ipv6: bool
    ip_id: Uuid
    declined_at: Timestamp
    declined_by: str = Field(description="the agent that recorded it: its host name or "
                                         "`--agent-id`")

    @classmethod
    def of(cls, decline: Decline) -> DhcpDecline:
        return cls(private_network_id=decline.private_network_id,
                   mac_address=decline.mac_address, address=decline.address,
                   is_ipv6=decline.is_ipv6, ip_id=decline.ip_id,
                   declined_at=decline.declined_at, declined_by=decline.agent)


class ListDhcpDeclinesResponse(Reply):
    """Declines listed, or the ones a clear deleted."""

    dhcp_declines: list[DhcpDecline]
    total_count: int = Field(ge=0)


class Document(RootModel[dict[str, Any]]):
    """An OpenAPI 3.1 document."""
