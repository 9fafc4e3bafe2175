"""VPCs, Private Networks and their subnets: the records, as stored and as answered.

Each subnet of a Private Network is also a source of addresses (`PrivateNetwork.source`).
A subnet's CIDR never changes; a Private Network's list of subnets does (subnets are
added and deleted after creation, see `NetworkRegistry.add_subnets`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .sources import SUBNET, Source


@dataclass(frozen=True)
class VPC:
    id: str
    name: str
    region: str
    project_id: str
    organization_id: str | None
    ipv6_prefix: str
    created_at: str
    updated_at: str
    is_default: bool = False
    tags: tuple[str, ...] = ()
    private_network_count: int = 0
    routing_enabled: bool = True
    transitivity_enabled: bool = False
    # The etcd mod revision of its record as read or written (0: not known). Not stored.
    revision: int = field(default=0, compare=False)

    @property
    def object_storage_private_access_enabled(self) -> bool:
        """Never on here: this service reaches no Object Storage."""
        return False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "region": self.region,
            "project_id": self.project_id, "organization_id": self.organization_id,
            "tags": list(self.tags), "is_default": self.is_default,
            "private_network_count": self.private_network_count,
            "routing_enabled": self.routing_enabled,
            "custom_routes_propagation_enabled": False,
            "transitivity_enabled": self.transitivity_enabled,
            "object_storage_private_access_enabled": self.object_storage_private_access_enabled,
            "created_at": self.created_at, "updated_at": self.updated_at,
        }

    def stored(self) -> dict[str, Any]:
        return {**self.to_json(), "ipv6_prefix": self.ipv6_prefix}

    @classmethod
    def from_stored(cls, d: dict[str, Any], revision: int = 0) -> VPC:
        return cls(d["id"], d["name"], d["region"], d["project_id"], d.get("organization_id"),
                   d["ipv6_prefix"], d["created_at"], d["updated_at"], d.get("is_default", False),
                   tuple(d.get("tags") or ()), routing_enabled=d.get("routing_enabled", True),
                   transitivity_enabled=d.get("transitivity_enabled", False),
                   revision=revision)


@dataclass(frozen=True)
class Subnet:
    id: str
    subnet: str
    project_id: str
    private_network_id: str
    vpc_id: str
    region: str
    created_at: str
    updated_at: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class PrivateNetwork:
    id: str
    name: str
    region: str
    project_id: str
    organization_id: str | None
    vpc_id: str
    created_at: str
    updated_at: str
    tags: tuple[str, ...] = ()
    subnets: tuple[Subnet, ...] = field(default_factory=tuple)
    default_route_propagation_enabled: bool = False
    # Whether the network's DHCP and DNS answer (the agent answers nothing when false).
    dhcp_enabled: bool = True
    # The etcd mod revision of its record as read or written (0: not known). Not stored.
    revision: int = field(default=0, compare=False)

    @property
    def has_object_storage_private_access(self) -> bool:
        """Never on here: this service reaches no Object Storage."""
        return False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "region": self.region,
            "project_id": self.project_id, "organization_id": self.organization_id,
            "vpc_id": self.vpc_id, "tags": list(self.tags),
            "subnets": [s.to_json() for s in self.subnets], "dhcp_enabled": self.dhcp_enabled,
            "default_route_propagation_enabled": self.default_route_propagation_enabled,
            "has_object_storage_private_access": self.has_object_storage_private_access,
            "created_at": self.created_at, "updated_at": self.updated_at,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], revision: int = 0) -> PrivateNetwork:
        return cls(d["id"], d["name"], d["region"], d["project_id"], d.get("organization_id"),
                   d["vpc_id"], d["created_at"], d["updated_at"], tuple(d.get("tags") or ()),
                   tuple(Subnet(**s) for s in d.get("subnets") or ()),
                   bool(d.get("default_route_propagation_enabled", False)),
                   bool(d.get("dhcp_enabled", True)), revision)

    def source(self, subnet: Subnet) -> Source:
        return Source(id=subnet.id, kind=SUBNET, cidr=subnet.subnet, region=self.region,
                      created_at=subnet.created_at, project_id=self.project_id,
                      organization_id=self.organization_id, vpc_id=self.vpc_id,
                      private_network_id=self.id)
