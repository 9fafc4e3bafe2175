"""Operator routes (API keys, zonal pools, DHCP declines) and the probes: our own API, not
Scaleway's."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, RootModel

from allocator.contract import ApiKey as DomainApiKey
from allocator.contract import Decline, Source

from .fields import (
    RESOURCE_TYPE_PATTERN,
    Body,
    Cidr,
    Mac,
    Path,
    Query,
    RegionPath,
    Reply,
    Timestamp,
    Uuid,
    Zone,
)

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
    organization_id: Uuid | None = None
    project_ids: list[Uuid] | None = None
    resource_types: list[str] | None = Field(
        default=None, json_schema_extra={"items": {"type": "string",
                                                   "pattern": RESOURCE_TYPE_PATTERN,
                                                   "not": {"const": "custom"}}})
    description: str | None = Field(default=None, max_length=255)
    expires_at: str | None = Field(default=None, json_schema_extra={
        "format": "future-date-time",
        "description": "an RFC 3339 time with its time zone, in the future"})


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


class CreateZonalPoolRequest(Body):
    zone: Zone
    subnet: Cidr


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
