"""Sources: where addresses come from, and the arithmetic on them.

A source is one CIDR that addresses are booked from: either a subnet of a Private
Network, or a zonal public pool. Inside a source an address is known by its
offset from the network address; offsets are what the etcd keys carry, in
fixed-width hex so that key order is address order.

Which addresses are never handed out is decided here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import netaddr

from .errors import InvalidArgument

SUBNET = "subnet"
ZONAL = "zonal"

# Sources with more addresses than this keep only their held set and probe at
# random; smaller ones keep an exact free set.
DENSE_LIMIT = 1 << 20


@dataclass(frozen=True)
class ReservedAddress:
    """An address of a source that is never handed out, and why."""

    address: str
    reason: str


@dataclass(frozen=True)
class Source:
    """One CIDR addresses are booked from (a Private Network subnet or a zonal pool)."""

    id: str
    kind: str  # SUBNET | ZONAL
    cidr: str
    region: str
    created_at: str
    project_id: str | None = None
    organization_id: str | None = None
    vpc_id: str | None = None
    private_network_id: str | None = None
    zone: str | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)

    @cached_property
    def network(self) -> netaddr.IPNetwork:
        # Parsed once per Source: the booking path asks for it several times.
        return netaddr.IPNetwork(self.cidr)

    @property
    def is_ipv6(self) -> bool:
        return self.network.version == 6

    @property
    def size(self) -> int:
        return self.network.size

    @property
    def offset_width(self) -> int:
        """Hex digits needed for any offset of this source (fixed width keeps key order)."""
        return max(1, ((self.size - 1).bit_length() + 3) // 4)

    @property
    def bookable_range(self) -> tuple[int, int]:
        """First and last bookable offsets, inclusive."""
        return reserved_edges(self.size)

    @property
    def bookable_count(self) -> int:
        first, last = self.bookable_range
        return max(0, last - first + 1)

    @property
    def is_dense(self) -> bool:
        return self.size <= DENSE_LIMIT

    def reserved_addresses(self) -> list[ReservedAddress]:
        """The addresses of this source that are never handed out, each with its reason."""
        net = self.network
        size = self.size
        first, last = self.bookable_range
        reasons: list[ReservedAddress] = []
        high = _RESERVED_HIGH_V6 if net.version == 6 else _RESERVED_HIGH
        for offset in range(min(first, size)):
            reasons.append(ReservedAddress(str(net[offset]), _RESERVED_LOW[offset]))
        for offset in range(max(last + 1, first), size):
            reasons.append(ReservedAddress(str(net[offset]), high[size - 1 - offset]))
        return reasons

    def offset_of(self, address: str) -> int:
        """The offset of `address` in this source; InvalidArgument when outside or reserved."""
        try:
            ip = netaddr.IPAddress(address)
        except (netaddr.AddrFormatError, ValueError, TypeError):
            raise InvalidArgument("address", f"{address!r} is not an IP address", "format")
        net = self.network
        if ip.version != net.version:
            raise InvalidArgument(
                "address", f"{address} is IPv{ip.version} but the source is IPv{net.version}"
            )
        if ip not in net:
            raise InvalidArgument("address", f"{address} is outside the subnet {self.cidr}")
        offset = int(ip) - int(net.network)
        first, last = self.bookable_range
        if not first <= offset <= last:
            reason = next(r.reason for r in self.reserved_addresses() if r.address == str(ip))
            raise InvalidArgument("address", f"{address} is reserved ({reason})")
        return offset

    def address_at(self, offset: int) -> str:
        """The address at `offset`, with the source's prefix length (`10.0.0.5/24`)."""
        first, version, suffix = self._first
        return f"{netaddr.IPAddress(first + offset, version)}{suffix}"

    @cached_property
    def _first(self) -> tuple[int, int, str]:
        # What `address_at` needs of the network, worked out once: every booking asks.
        net = self.network
        return int(net.network), net.version, f"/{net.prefixlen}"

    def offset_key(self, offset: int) -> str:
        return format(offset, f"0{self.offset_width}x")

    def to_json(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["tags"] = list(self.tags)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Source:
        fields: dict[str, Any] = {k: data.get(k) for k in cls.__dataclass_fields__}
        fields["tags"] = tuple(data.get("tags") or ())
        return cls(**fields)


# Scaleway keeps the first two and the last two addresses of every subnet.
_RESERVED_LOW = ["network address", "gateway address"]
_RESERVED_HIGH = ["broadcast address", "reserved by the provider"]
_RESERVED_HIGH_V6 = ["last address of the subnet, reserved by the provider",
                     "reserved by the provider"]
# Private Networks carry private addresses only, as Scaleway requires.
PRIVATE_RANGES = [netaddr.IPNetwork(c) for c in
                  ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")]


def reserved_edges(size: int) -> tuple[int, int]:
    """First and last bookable offsets of a CIDR with `size` addresses."""
    return len(_RESERVED_LOW), size - 1 - len(_RESERVED_HIGH)


def parse_cidr(cidr: str, argument: str = "subnet") -> netaddr.IPNetwork:
    """Parse and check a source CIDR: canonical network address, sensible size."""
    try:
        net = netaddr.IPNetwork(cidr)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise InvalidArgument(argument, f"{cidr!r} is not a CIDR", "format")
    if "/" not in str(cidr):
        raise InvalidArgument(argument, f"{cidr!r} has no prefix length", "format")
    if net.ip != net.network:
        raise InvalidArgument(argument, f"{cidr} has host bits set (did you mean {net.cidr}?)")
    if net.version == 4 and not 16 <= net.prefixlen <= 29:
        raise InvalidArgument(argument, "an IPv4 source must be between /16 and /29")
    if net.version == 6 and not 48 <= net.prefixlen <= 125:
        raise InvalidArgument(argument, "an IPv6 source must be between /48 and /125")
    return net


def check_private(net: netaddr.IPNetwork, argument: str = "subnets") -> None:
    """InvalidArgument unless `net` lies in RFC 1918 (IPv4) or the ULA range (IPv6)."""
    if not any(net in p for p in PRIVATE_RANGES):
        raise InvalidArgument(argument, f"{net} is not a private range: use 10.0.0.0/8, "
                                        "172.16.0.0/12, 192.168.0.0/16 or fc00::/7")


def overlapping(cidr: str, others: dict[str, str]) -> str | None:
    """The id of the first CIDR in `others` (id -> cidr) that overlaps `cidr`, if any."""
    net = netaddr.IPNetwork(cidr)
    for other_id, other in sorted(others.items()):
        o = netaddr.IPNetwork(other)
        if o.version == net.version and (o.first <= net.last and net.first <= o.last):
            return other_id
    return None
