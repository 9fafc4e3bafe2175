"""What is asked: a booking's value, parsed once at the edge (who asks: `access.Caller`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .records import Resource


@dataclass(frozen=True)
class AddressAsk:
    """What a booking asks for: exactly one of zonal / private_network_id / subnet_id
    (vpc_id is refused), any free address or `address`, optionally attached at once or
    else expiring at `expires_at`."""

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
    expires_at: str | None = None  # RFC 3339: released by itself then (`expiry`)
    idempotency_key: str | None = None
    idempotency_scope: str = ""

    def fingerprint_fields(self) -> dict[str, object]:
        """What identifies the ask for its idempotency key (everything but the key). An
        ask without an expiry leaves the field out: the digest a node of the previous
        version stored for the same ask stays the same, for a retry across an upgrade."""
        return {k: v for k, v in self.__dict__.items()
                if k != "idempotency_key" and not (k == "expires_at" and v is None)}
