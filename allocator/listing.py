"""Listing IPs: the filters and orders of Scaleway's `ListIPsRequest`, as pure logic.

Which etcd keys to read is decided in `ipam`; this module only says whether a
record matches, in which order records come, and which page is which.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import netaddr

from .errors import InvalidArgument
from .records import IPRecord

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 50


@dataclass(frozen=True)
class IPFilter:
    """Every filter of `ListIPsRequest`; None or empty means "any".

    `project_ids` is visibility, not a user filter: the projects the caller may see
    (None: all of them).
    """

    project_ids: frozenset[str] | None = None
    project_id: str | None = None
    organization_id: str | None = None
    region: str | None = None
    zonal: str | None = None
    private_network_id: str | None = None
    subnet_id: str | None = None
    source_vpc_id: str | None = None
    vpc_id: str | None = None
    attached: bool | None = None
    resource_id: str | None = None
    resource_ids: tuple[str, ...] = field(default_factory=tuple)
    resource_type: str | None = None
    resource_types: tuple[str, ...] = field(default_factory=tuple)
    resource_name: str | None = None
    mac_address: str | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)
    is_ipv6: bool | None = None
    ip_ids: tuple[str, ...] = field(default_factory=tuple)

    def matches(self, r: IPRecord) -> bool:
        """Whether the record passes every filter."""
        res = r.resource
        checks = (
            self.project_ids is None or r.project_id in self.project_ids,
            not self.project_id or r.project_id == self.project_id,
            not self.organization_id or r.organization_id == self.organization_id,
            not self.region or r.region == self.region,
            not self.zonal or (r.source_kind == "zonal" and r.zone == self.zonal),
            not self.private_network_id or r.private_network_id == self.private_network_id,
            not self.subnet_id or (r.source_kind == "subnet" and r.source_id == self.subnet_id),
            not self.source_vpc_id or r.vpc_id == self.source_vpc_id,
            not self.vpc_id or r.vpc_id == self.vpc_id,
            self.attached is None or (res is not None) == self.attached,
            not self.resource_id or (res is not None and res.id == self.resource_id),
            not self.resource_ids or (res is not None and res.id in self.resource_ids),
            not self.resource_type or (res is not None and res.type == self.resource_type),
            not self.resource_types or (res is not None and res.type in self.resource_types),
            not self.resource_name or (res is not None and self.resource_name in (res.name or "")),
            not self.mac_address or (res is not None and res.mac_address == self.mac_address),
            not self.tags or bool(set(self.tags) & set(r.tags)),
            self.is_ipv6 is None or r.is_ipv6 == self.is_ipv6,
            not self.ip_ids or r.id in self.ip_ids,
        )
        return all(checks)


def _address(r: IPRecord) -> tuple[int, int]:
    ip = netaddr.IPNetwork(r.address).ip
    return ip.version, int(ip)


def _mac(r: IPRecord) -> tuple[int, str]:
    mac = r.resource.mac_address if r.resource else None
    return (0, mac) if mac else (1, "")


ORDERS: dict[str, tuple[Callable[[IPRecord], Any], bool]] = {
    "created_at_desc": (lambda r: (r.created_at, r.id), True),
    "created_at_asc": (lambda r: (r.created_at, r.id), False),
    "updated_at_desc": (lambda r: (r.updated_at, r.id), True),
    "updated_at_asc": (lambda r: (r.updated_at, r.id), False),
    "attached_at_desc": (lambda r: (r.attached_at or "", r.id), True),
    "attached_at_asc": (lambda r: (r.attached_at or "", r.id), False),
    "ip_address_desc": (_address, True),
    "ip_address_asc": (_address, False),
    "mac_address_desc": (_mac, True),
    "mac_address_asc": (_mac, False),
}


def check_page(order_by: str, page: int, page_size: int) -> None:
    """InvalidArgument unless the order is known and the page is sane."""
    if order_by not in ORDERS:
        raise InvalidArgument("order_by", f"must be one of {', '.join(ORDERS)}", "format")
    if not isinstance(page, int) or page < 1:
        raise InvalidArgument("page", "must be an integer >= 1")
    if not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument("page_size", f"must be between 1 and {MAX_PAGE_SIZE}")


def select(records: Iterable[IPRecord], flt: IPFilter, order_by: str, page: int,
           page_size: int) -> tuple[list[IPRecord], int]:
    """Filter, order and cut one page: (the page, the total count before paging)."""
    check_page(order_by, page, page_size)
    key, reverse = ORDERS[order_by]
    kept = sorted((r for r in records if flt.matches(r)), key=key, reverse=reverse)
    start = (page - 1) * page_size
    return kept[start:start + page_size], len(kept)
