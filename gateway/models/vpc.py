"""VPC API v2, the subset served: the shapes of the SDK's `scaleway/vpc/v2/types.py`."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field

from allocator.contract import VPC as DomainVPC
from allocator.contract import PrivateNetwork as DomainPrivateNetwork
from allocator.contract import Subnet as DomainSubnet

from ..etags import etag
from .fields import (
    Body,
    Cidr,
    Flag,
    Name,
    Page,
    PageSize,
    Printable,
    PrivateCidr,
    Query,
    RegionPath,
    Reply,
    Tags,
    Timestamp,
    Uuid,
    project_required,
)

ObjectOrder = Literal["created_at_asc", "created_at_desc", "name_asc", "name_desc"]
SubnetOrder = Literal["created_at_asc", "created_at_desc"]

# -- requests -----------------------------------------------------------------------------


class CreateVPCRequest(Body):
    model_config = ConfigDict(json_schema_extra=project_required)

    name: Name | None = None
    project_id: Uuid | None = None
    tags: Tags | None = None
    enable_routing: bool | None = None
    enable_transitivity: bool | None = None


class UpdateVPCRequest(Body):
    name: Name | None = None
    tags: Tags | None = None


class CreatePrivateNetworkRequest(Body):
    model_config = ConfigDict(json_schema_extra=project_required)

    name: Name | None = None
    project_id: Uuid | None = None
    tags: Tags | None = None
    # Overlapping subnets are refused; equal ones are the simplest overlap.
    subnets: list[PrivateCidr] | None = Field(default=None,
                                              json_schema_extra={"uniqueItems": True})
    vpc_id: Uuid | None = None
    default_route_propagation_enabled: bool | None = None


class UpdatePrivateNetworkRequest(Body):
    name: Name | None = None
    tags: Tags | None = None
    default_route_propagation_enabled: bool | None = None


class EnableRoutingRequest(Body):
    """Nothing to give: the SDK sends `{}` (or no body at all)."""


class EnableDHCPRequest(Body):
    """Nothing to give: the SDK sends `{}` (or no body at all)."""


class AddSubnetsRequest(Body):
    # Each may overlap no subnet of the VPC (nor another of the list).
    subnets: list[PrivateCidr] = Field(min_length=1, json_schema_extra={"uniqueItems": True})


class DeleteSubnetsRequest(Body):
    # Each must be a subnet of the Private Network, holding no IP (a repeat counts once).
    subnets: list[Cidr] = Field(min_length=1)


class VPCPath(RegionPath):
    vpc_id: Uuid


class PrivateNetworkPath(RegionPath):
    private_network_id: Uuid


class ListQuery(Query):
    """What every VPC-side list reads."""

    page: Page = 1
    page_size: PageSize = 0
    project_id: Uuid | None = None
    organization_id: Uuid | None = None


class ListVPCsQuery(ListQuery):
    order_by: ObjectOrder = "created_at_asc"
    name: Printable | None = None
    tags: list[Printable] = Field(default_factory=list)
    is_default: Flag | None = None
    routing_enabled: Flag | None = None
    object_storage_private_access_enabled: Flag | None = None


class ListPrivateNetworksQuery(ListQuery):
    order_by: ObjectOrder = "created_at_asc"
    name: Printable | None = None
    tags: list[Printable] = Field(default_factory=list)
    vpc_id: Uuid | None = None
    private_network_ids: list[Uuid] = Field(default_factory=list)
    dhcp_enabled: Flag | None = None
    object_storage_private_access_enabled: Flag | None = None


class ListSubnetsQuery(ListQuery):
    order_by: SubnetOrder = "created_at_asc"
    vpc_id: Uuid | None = None
    private_network_id: Uuid | None = None
    subnet_ids: list[Uuid] = Field(default_factory=list)


# -- answers ------------------------------------------------------------------------------


def _known(model: type[Reply], data: dict[str, Any]) -> dict[str, Any]:
    """The fields of `data` the model sends; the rest (stored only) stays in."""
    return {k: v for k, v in data.items() if k in model.model_fields}


class VPC(Reply):
    versioned: ClassVar[bool] = True

    id: Uuid
    name: str
    organization_id: str | None
    project_id: str
    region: str
    tags: list[str] = Field(default_factory=list)
    is_default: bool = False
    private_network_count: int = 0
    routing_enabled: bool = True
    custom_routes_propagation_enabled: bool = False
    transitivity_enabled: bool = False
    object_storage_private_access_enabled: bool = False
    created_at: Timestamp | None = None
    updated_at: Timestamp | None = None

    @classmethod
    def of(cls, vpc: DomainVPC) -> VPC:
        """The SDK's `VPC`; its version counts its Private Networks too, which it shows."""
        return cls(**_known(cls, vpc.to_json())).versioned_as(
            etag(vpc.revision, vpc.private_network_count))


class Subnet(Reply):
    id: Uuid
    subnet: str
    project_id: str
    private_network_id: str
    vpc_id: str
    region: str
    created_at: Timestamp
    updated_at: Timestamp

    @classmethod
    def of(cls, subnet: DomainSubnet | dict[str, Any]) -> Subnet:
        """The SDK's `Subnet`."""
        data = subnet if isinstance(subnet, dict) else subnet.to_json()
        return cls(**_known(cls, data))


class PrivateNetwork(Reply):
    versioned: ClassVar[bool] = True

    id: Uuid
    name: str
    organization_id: str | None
    project_id: str
    region: str
    vpc_id: str
    tags: list[str] = Field(default_factory=list)
    dhcp_enabled: bool = True
    default_route_propagation_enabled: bool = False
    has_object_storage_private_access: bool = False
    created_at: Timestamp | None = None
    updated_at: Timestamp | None = None
    subnets: list[Subnet] = Field(default_factory=list)

    @classmethod
    def of(cls, pn: DomainPrivateNetwork) -> PrivateNetwork:
        """The SDK's `PrivateNetwork`, subnets included."""
        data = pn.to_json()
        subnets = [Subnet.of(s) for s in data.get("subnets") or []]
        return cls(**{**_known(cls, data), "subnets": subnets}).versioned_as(etag(pn.revision))


class ListVPCsResponse(Reply):
    vpcs: list[VPC]
    total_count: int = Field(ge=0)


class ListPrivateNetworksResponse(Reply):
    private_networks: list[PrivateNetwork]
    total_count: int = Field(ge=0)


class ListSubnetsResponse(Reply):
    subnets: list[Subnet]
    total_count: int = Field(ge=0)


class AddSubnetsResponse(Reply):
    """The SDK's `AddSubnetsResponse`: the CIDRs added."""

    subnets: list[str]


class DeleteSubnetsResponse(Reply):
    """The SDK's `DeleteSubnetsResponse`: the CIDRs deleted."""

    subnets: list[str]
