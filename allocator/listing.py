"""Listing IPs: the filters and orders of Scaleway's `ListIPsRequest`, and its pages, as
pure logic.

Which etcd keys to read is decided in `queries`; this module says whether a record
matches, in which order records come, which page is which, and how a walk through the
pages goes on where the previous page stopped (`Walk`, `Walks`).

How each filter of the SDK's `list_i_ps` is answered: `queries` takes the first row
that applies and checks every other filter given on the records read. n: the IPs the
row's index names; p: the page size.

    filter                        index read                                 first page
    ip_ids                        the records themselves                     len(ip_ids)
    resource_id, resource_ids     ix/res/{resource}/                         n (attached)
    mac_address                   ix/mac/{mac}/                              n (<= 2 a scope)
    tags (any of)                 ix/tag/{tag}/{project}/, each tag and      n (tagged)
                                  visible project (admins: ix/tag/{tag}/)
    private_network_id,           the sources, read now (a VPC's from        S: p; else n
    subnet_id, vpc_id,            vpcpn/{vpc}/, a zone's from zone/{r}/{z}/),
    source_vpc_id, zonal (*)      then src/{source}/c/ (creation order) or
                                  src/{source}/a/ (address order, else)
    project_id, or a project-     ix/project/{project}/{region}/             S: p; else n
    scoped caller's projects
    attached=true                 ix/res/ (every attached IP)                n (attached)
    region alone (admins)         ix/project/, keys only, this region's      n keys (K)
                                  (creation orders; else every IP record)
    organization_id,              none of their own: the row above that      that row's;
    attached=false,               applies, else (admins only) every IP       alone: every
    resource_type(s),             record                                     IP record
    resource_name, is_ipv6
    (*) zonal with a project filter: a zone's pools hold every project's IPs, so the
        project's index answers (the row below).

S (streamed): the filter names nothing the indexes do not settle and the order is
their key order (created_at_desc: creation indexes hold an inverted time;
ip_address_asc: address keys). Each page reads p keys of each index at the walk's
cursor (a walk that goes on reads READ_AHEAD pages at once) and p records: the
first page of 20,000 IPs costs what the first of 20 does, and so does the last.
K: the reverse of those orders (created_at_asc, ip_address_desc), and the region of
an admin, read every key of the index once, no record. Every other case reads the
records the row names once, at the first page, and keeps their order. After the
first page, whatever the row, a page of a walk reads only its p records (and, once
the walk went on, the next page's meanwhile).

Walks and consistency. Scaleway's `page` is a number, not a cursor, so each node keeps
its own: the first page starts a walk pinned to the etcd revision R of its first read;
page N+1 (or any later page) on the same node goes on with the walk of the same
(filter, order, page size) that went furthest short of it, reading at R, records too.
A walk is one snapshot: its pages never repeat an IP nor skip one that existed at R,
and every page says the same total, whatever is booked or released meanwhile. A walk
ends, and the page is read afresh at the current revision (a new walk from there),
when etcd no longer holds R (compaction keeps 2000 revisions by default), when the
walk is older than `Walks.max_age`, when the page asked is not after the last one it
served (page 1 always starts afresh: a client starting over sees what is there now),
or when the page lands on another node (no walk there). Across a fresh read, pages
may overlap or miss IPs that were booked or released in between. Two clients walking
the same query on one node at once may swap walks: each page is still a snapshot.
"""

from __future__ import annotations

import time
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


def arrange(records: Iterable[IPRecord], flt: IPFilter, order_by: str) -> list[IPRecord]:
    """The records that match `flt`, in the order `order_by`."""
    key, reverse = ORDERS[order_by]
    return sorted((r for r in records if flt.matches(r)), key=key, reverse=reverse)


def select(records: Iterable[IPRecord], flt: IPFilter, order_by: str, page: int,
           page_size: int) -> tuple[list[IPRecord], int]:
    """Filter, order and cut one page: (the page, the total count before paging)."""
    check_page(order_by, page, page_size)
    kept = arrange(records, flt, order_by)
    start = (page - 1) * page_size
    return kept[start:start + page_size], len(kept)


# -- walks through the pages ----------------------------------------------------------


# Orders whose list is the key order of an index (creation indexes hold inverted times);
# their reverse is read whole once (keys only) and kept.
KEY_ORDERS = {"created_at_desc": False, "ip_address_asc": True}  # order -> by address
REVERSED_KEY_ORDERS = {"created_at_asc": False, "ip_address_desc": True}


@dataclass(frozen=True)
class Stream:
    """An index prefix whose keys name exactly the matching IPs of one part of a list.

    Creation indexes (`by_address` False) end their keys with `{inverted time}/{ip_id}`;
    address keys (`by_address`) end with the offset and hold the IP id, and streams of
    several sources come one after the other by `rank` (their networks' order).
    `in_order`: key order is list order (a per-region index; not the all-regions one).
    `region`: keep only the keys of this region (the all-projects index).
    """

    prefix: str
    by_address: bool = False
    rank: int = 0
    in_order: bool = True
    region: str | None = None


# (order within the list, key, IP id, index of the stream it came from)
Entry = tuple[tuple[int, str, str], str, str, int]


def entries(stream: Stream, index: int, kvs: Iterable[tuple[str, bytes]]) -> list[Entry]:
    """The list entries of `(key, value)` pairs read under `stream.prefix`."""
    out: list[Entry] = []
    for key, value in kvs:
        if stream.by_address:
            out.append(((stream.rank, key.rsplit("/", 1)[1], ""), key, value.decode(), index))
            continue
        region, inverted_time, ip_id = key.rsplit("/", 3)[1:]
        if stream.region is None or region == stream.region:
            out.append(((0, inverted_time, ip_id), key, ip_id, index))
    return out


@dataclass(eq=False)  # a walk is itself: found and dropped by identity
class Walk:
    """One walk through the pages of one list query, pinned to one etcd revision.

    Streamed (`streams`): `ahead` holds the ids read after the last page served, in list
    order, and each stream goes on at its key in `cursor`. Listed (`ids`): every
    matching IP id, in list order, read at the first page.
    """

    streams: tuple[Stream, ...] = ()
    cursor: tuple[str, ...] = ()
    ahead: list[str] = field(default_factory=list)
    taken: int = 0  # entries read from the streams so far
    ids: list[str] | None = None
    revision: int = 0  # 0: nothing read yet
    total: int = 0
    last_page: int = 0
    started: float = 0.0
    used: float = 0.0
    busy: bool = False  # serving a page: another request must not go on with it meanwhile
    next_records: Any = None  # the next page's records, read ahead (`queries`)

    @classmethod
    def streamed(cls, streams: Iterable[Stream]) -> Walk:
        s = tuple(streams)
        return cls(streams=s, cursor=tuple(x.prefix for x in s))

    def wants(self, page: int, page_size: int) -> int:
        """How many more entries the streams must give before `page` can be served."""
        need = (page - self.last_page) * page_size - len(self.ahead)
        if self.revision:  # the total is known: never ask past it
            need = min(need, self.total - self.taken)
        return max(0, need)

    def take(self, reads: list[list[Entry]], limit: int) -> None:
        """Keep the first `limit` entries of what each stream returned at `cursor` (up to
        `limit` each: their first `limit` merged are the next ones), past which the
        cursor moves."""
        merged = sorted(e for r in reads for e in r)[:limit]
        cursor = list(self.cursor)
        for _, key, _, index in merged:
            cursor[index] = key + "\0"  # the first key after it
        self.cursor = tuple(cursor)
        self.ahead += [ip_id for _, _, ip_id, _ in merged]
        self.taken += len(merged)

    def following(self, page_size: int) -> list[str]:
        """The ids of the page after the last one served, as far as they are read."""
        if self.ids is not None:
            start = self.last_page * page_size
            return self.ids[start:start + page_size]
        return self.ahead[:page_size]

    def serve(self, page: int, page_size: int) -> list[str]:
        """The ids of `page` (after the last page served), from those read ahead."""
        skip = (page - self.last_page - 1) * page_size
        ids = self.ahead[skip:skip + page_size]
        del self.ahead[:skip + page_size]
        self.last_page = page
        return ids


Query = tuple[IPFilter, str, int]  # (filter, order, page size)


class Walks:
    """This node's walks through list pages, by query (see the module docstring).

    At most `max_walks` walks and `max_ids` ids of listed walks are kept, the least
    recently used leaving first; a walk older than `max_age` seconds is not resumed.
    """

    def __init__(self, *, max_walks: int = 256, max_age: float = 60.0,
                 max_ids: int = 500_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_walks, self.max_age, self.max_ids, self.clock = (
            max_walks, max_age, max_ids, clock)
        self._walks: dict[Query, list[Walk]] = {}
        self.resumed = 0  # pages served by going on with a walk (for tests and the bench)

    def resume(self, query: Query, page: int) -> Walk | None:
        """The walk to serve `page` of `query` from: of those that served an earlier page
        and are young enough, the one that went furthest (the newest among equals)."""
        now = self.clock()
        best: Walk | None = None
        for walk in self._walks.get(query, ()):
            if walk.last_page < page and not walk.busy and now - walk.started <= self.max_age and (
                    best is None or walk.last_page > best.last_page
                    or (walk.last_page == best.last_page and walk.started > best.started)):
                best = walk
        if best is not None:
            best.used = now
            self.resumed += 1
        return best

    def keep(self, query: Query, walk: Walk) -> None:
        """Remember a new walk of `query` (evicting what is old or over budget)."""
        if walk.ids is not None and len(walk.ids) > self.max_ids:
            return
        walk.started = walk.used = self.clock()
        self._walks.setdefault(query, []).append(walk)
        self._evict()

    def drop(self, query: Query, walk: Walk) -> None:
        """Forget a walk that cannot go on (etcd compacted its revision)."""
        walks = self._walks.get(query, [])
        if walk in walks:
            walks.remove(walk)
        if not walks:
            self._walks.pop(query, None)

    def __len__(self) -> int:
        return sum(len(w) for w in self._walks.values())

    def _evict(self) -> None:
        now = self.clock()
        kept = [(q, w) for q, ws in self._walks.items() for w in ws
                if now - w.started <= self.max_age]
        kept.sort(key=lambda qw: qw[1].used, reverse=True)
        ids, room = 0, []
        for q, w in kept[:self.max_walks]:
            n = len(w.ids or ())
            if ids + n <= self.max_ids:
                ids += n
                room.append((q, w))
        self._walks = {}
        for q, w in reversed(room):
            self._walks.setdefault(q, []).append(w)
