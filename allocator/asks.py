"""What is asked, and who asks: the two values a request carries down, parsed once at the edge."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .records import CUSTOM, IPRecord, Resource


@dataclass(frozen=True)
class Caller:
    """Who asks, as far as the allocator cares.

    `product_types`: a product key's resource types (None: not a product).
    `projects` / `region`: what the caller may see (None: everything); an IP outside
    is answered NotFound, exactly like an absent one.
    `credential`: an etcd key that must still exist for a change to apply (the
    caller's API key): a key revoked on any node stops every change made with it, in
    the same transaction.
    """

    product_types: frozenset[str] | None = None
    projects: frozenset[str] | None = None
    region: str | None = None
    credential: str | None = None

    def sees(self, record: IPRecord) -> bool:
        return (self.projects is None or record.project_id in self.projects) and (
            self.region is None or record.region == self.region)

    def sees_project(self, project_id: str | None) -> bool:
        return self.projects is None or project_id in self.projects

    def may_manage(self, resource_type: str) -> bool:
        """Custom resources are anyone's; product resources only their product's."""
        return resource_type == CUSTOM or (
            self.product_types is not None and resource_type in self.product_types)


@dataclass(frozen=True)
class AddressAsk:
    """What a booking asks for: exactly one of zonal / private_network_id / subnet_id
    (vpc_id is refused), any free address or `address`, optionally attached at once."""

    region: str
    project_id: str
    is_ipv6: bool = False
    organization_id: str | None = None
    zonal: str | None = None
    private_network_id: str | None = None
    subnet_id: str | None = None
    vpc_id: str | None = None
    address: str | None = None
    tags: Sequence[str] = ()
    resource: Resource | None = None
    idempotency_key: str | None = None
    idempotency_scope: str = ""

    def fingerprint_fields(self) -> dict[str, object]:
        """What identifies the ask for its idempotency key (everything but the key)."""
        return {k: v for k, v in self.__dict__.items() if k != "idempotency_key"}
