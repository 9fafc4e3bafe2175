"""How a list request reads etcd: which index answers it, and each page at one revision.

`listing` holds the table of which index answers which filter, and what a walk through
the pages sees; this module does the reading. A list is either streamed, when its
filter names nothing but what some indexes settle and its order is their key order
(a page reads the page's keys from each index at the walk's cursor, then the page's
records), or listed: the matching IP ids are read once, at the walk's first page,
from the narrowest index the filter allows (the records they name, filtered and
ordered by `listing.arrange`, or the keys alone when the index settles the filter),
and each page reads only its records.

Every read of a walk is pinned to its revision. The `Store` protocol reads at a
revision through `scan` and read-only transactions: one transaction carries the
ranges of every index of a page, or every record of a page, in one round trip. What
etcd held at a past revision never changes, so those reads are serializable (any
member that applied the revision answers alone); one that has not says so, and the
read goes linearizable. etcd 3.4 walks its in-memory index over a whole range to
count it, whatever the limit: a walk that goes on reads its indexes READ_AHEAD pages
at a time, and reads the records of its next page while the caller takes this one.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from aetcd import rpc

from .access import Caller
from .errors import NotFound, StoreError
from .keys import Keys
from .listing import (
    KEY_ORDERS,
    REVERSED_KEY_ORDERS,
    Entry,
    IPFilter,
    Stream,
    Walk,
    Walks,
    arrange,
    check_page,
    entries,
)
from .network_registry import NetworkRegistry
from .networks import PrivateNetwork
from .reads import CoalescedReads
from .records import IPRecord, check_uuid
from .sources import SUBNET, ZONAL, Source
from .store import MAX_TXN_OPS, Store, prefix_end

# Filters the choice of subnets settles (every IP of a Private Network's subnet shares them).
_SETTLED_BY_SUBNETS = {"project_ids", "project_id", "region", "private_network_id",
                       "subnet_id", "source_vpc_id", "vpc_id", "is_ipv6"}
# Filters the choice of zonal pools settles (a pool is shared by every project of its zone).
_SETTLED_BY_POOLS = {"zonal", "region", "private_network_id", "subnet_id", "source_vpc_id",
                     "vpc_id", "is_ipv6"}
# Filters the per-project, per-region creation index settles.
_SETTLED_BY_PROJECTS = {"project_ids", "project_id", "region"}
# Pages a streamed walk reads ahead once it goes on past its first page: etcd 3.4 walks
# its whole in-memory index from a range's start to its end (to count it) whatever the
# limit, so one read for many pages costs that walk once.
READ_AHEAD = 10


@dataclass(frozen=True)
class _Range:
    """One range read, to be sent at a revision known only when it is sent."""

    start: str
    end: bytes = b""
    limit: int = 0
    keys_only: bool = False
    count_only: bool = False

    def op(self, revision: int, serializable: bool) -> rpc.RequestOp:
        return rpc.RequestOp(request_range=rpc.RangeRequest(
            key=self.start.encode(), range_end=self.end, limit=self.limit, revision=revision,
            keys_only=self.keys_only, count_only=self.count_only, serializable=serializable))


def _unobserved(task: asyncio.Future[Any]) -> None:
    """Mark a read ahead's failure seen: a walk that does not go on never awaits it."""
    if not task.cancelled():
        task.exception()


def _compacted(err: StoreError) -> bool:
    """Whether etcd refused a read because its revision was compacted away."""
    return "compacted" in str(err)


@dataclass(frozen=True)
class SubnetUsage:
    """How full one source (a Private Network's subnet or a zonal pool) was at `revision`.

    `held` is the number of its held-address keys, one per IP, counted by etcd; the rest
    follows from the source's size and the allocator's own rule of which addresses it
    never hands out, so no two answers can disagree on them.
    """

    source: Source
    held: int
    revision: int

    @property
    def usable(self) -> int:
        """The addresses the allocator hands out: the source's size less the reserved."""
        return self.source.bookable_count

    @property
    def reserved(self) -> int:
        """The addresses never handed out (network, gateway, broadcast, provider's)."""
        return self.source.size - self.usable

    @property
    def free(self) -> int:
        return self.usable - self.held

    @property
    def used_percent(self) -> float:
        """100 * held / usable, unrounded (an IPv6 /64 is never visibly used otherwise)."""
        return 100 * self.held / self.usable if self.usable else 0.0


@dataclass(frozen=True)
class NetworkUsage:
    """How full each subnet of a Private Network was, every count read at `revision`."""

    private_network_id: str
    revision: int
    subnets: tuple[SubnetUsage, ...]


class Queries:
    """The read side of IPs: one IP, a list page, the reserved addresses of a network, how
    full its subnets (or a zonal pool) are."""

    def __init__(self, store: Store, keys: Keys, networks: NetworkRegistry,
                 walks: Walks | None = None) -> None:
        self.store, self.keys, self.networks = store, keys, networks
        self.walks = walks if walks is not None else Walks()
        self.reads = CoalescedReads(store)

    async def get_ip(self, ip_id: str) -> IPRecord:
        """The IP record, or NotFound: a linearizable read, coalesced with the other GETs
        this node serves meanwhile into one etcd request (`allocator.reads`)."""
        check_uuid(ip_id, "ip_id")
        kv = await self.reads.get(self.keys.ip(ip_id))
        if kv is None:
            raise NotFound("ip", ip_id)
        return IPRecord.read(kv.value, kv.mod_revision)

    async def reserved_ips(self, pn_id: str) -> list[dict[str, Any]]:
        """For each subnet of the Private Network, the addresses never handed out and why."""
        pn = await self.networks.get_private_network(pn_id)
        return [{"subnet_id": s.id, "subnet": s.subnet,
                 "reserved": [r.__dict__ for r in pn.source(s).reserved_addresses()]}
                for s in pn.subnets]

    # -- usage ----------------------------------------------------------------------------

    async def network_usage(self, pn_id: str, caller: Caller) -> NetworkUsage:
        """How full each subnet of the Private Network is, all counted at one revision.

        NotFound, before any count, for a network the caller may not see or of another
        region than the caller's. One read-only transaction carries the network's record
        and a count of each subnet's held-address keys (`count_only`: etcd counts in its
        index and sends no key), for the subnets this node's cache last saw. When the
        record read with them has other subnets, those are counted again at that same
        revision: the answer is always of one revision, and usually of one round trip.
        """
        check_uuid(pn_id, "private_network_id")
        cached = await self.networks.cached_private_network(pn_id)
        # A network's project and region never change: the cached record settles them.
        caller.require_visible("private_network", pn_id, cached.project_id)
        if caller.region is not None and cached.region != caller.region:
            raise NotFound("private_network", pn_id)
        answers, revision = await self._ranges(
            [_Range(self.keys.private_network(pn_id)), *self._held(cached)], 0)
        if not answers[0].kvs:  # deleted since this node cached it
            self.networks.forget(pn_id)
            raise NotFound("private_network", pn_id)
        pn = PrivateNetwork.from_json(json.loads(answers[0].kvs[0].value))
        counts = answers[1:]
        if [s.id for s in pn.subnets] != [s.id for s in cached.subnets]:
            self.networks.forget(pn_id)  # the next read takes the record afresh
            counts, _ = await self._ranges(self._held(pn), revision)
        return NetworkUsage(pn_id, revision, tuple(
            SubnetUsage(pn.source(s), a.count, revision)
            for s, a in zip(pn.subnets, counts, strict=True)))

    async def pool_usage(self, pool_id: str, region: str | None = None) -> SubnetUsage:
        """How full the zonal pool is: its record and the count of its held addresses in
        one read-only transaction. NotFound for a pool unknown (in `region`, when given)."""
        check_uuid(pool_id, "pool_id")
        answers, revision = await self._ranges(
            [_Range(self.keys.source(pool_id)),
             _Range(self.keys.addresses(pool_id), prefix_end(self.keys.addresses(pool_id)),
                    count_only=True)], 0)
        if not answers[0].kvs:
            raise NotFound("zonal_pool", pool_id)
        pool = Source.from_json(json.loads(answers[0].kvs[0].value))
        if pool.kind != ZONAL or (region is not None and pool.region != region):
            raise NotFound("zonal_pool", pool_id)
        return SubnetUsage(pool, answers[1].count, revision)

    def _held(self, pn: PrivateNetwork) -> list[_Range]:
        """A count of the held-address keys of each subnet of `pn`, in its order."""
        return [_Range(self.keys.addresses(s.id), prefix_end(self.keys.addresses(s.id)),
                       count_only=True) for s in pn.subnets]

    # -- a list page ----------------------------------------------------------------------

    async def list_ips(self, flt: IPFilter, order_by: str, page: int,
                       page_size: int) -> tuple[list[IPRecord], int]:
        """One page of the IPs that match `flt`, and how many match in all.

        A page after the first goes on with this node's walk of the same query when
        there is one (see `listing`): it reads only its page, at the walk's revision.
        """
        check_page(order_by, page, page_size)
        query = (flt, order_by, page_size)
        walk = self.walks.resume(query, page) if page > 1 else None
        if walk is not None:
            walk.busy = True
            try:
                return await self._page(walk, page, page_size, {}, going_on=True), walk.total
            except StoreError as err:
                if not _compacted(err):
                    raise
                self.walks.drop(query, walk)  # etcd no longer holds its revision: afresh
            finally:
                walk.busy = False
        walk, known = await self._walk(flt, order_by)
        if walk is None:
            return [], 0
        records = await self._page(walk, page, page_size, known, going_on=False)
        self.walks.keep(query, walk)
        return records, walk.total

    async def _page(self, walk: Walk, page: int, page_size: int,
                    known: dict[str, IPRecord], going_on: bool) -> list[IPRecord]:
        """The records of `page` of `walk`, read at its revision (`known`: read already).

        A walk that goes on past its first page is likely to go on again: the records of
        its next page are read meanwhile, and that page finds them read.
        """
        start = (page - 1) * page_size
        if walk.ids is not None:
            ids = walk.ids[start:start + page_size]
            walk.last_page = page
        elif walk.revision and start >= walk.total:
            return []
        else:
            ids = await self._advance(walk, page, page_size)
        ahead, walk.next_records = walk.next_records, None
        if going_on and (following := walk.following(page_size)):
            reading = asyncio.ensure_future(self._records(following, walk.revision, {}))
            reading.add_done_callback(_unobserved)
            walk.next_records = (page + 1, reading)
        if ahead is not None and ahead[0] == page:
            try:
                known = {**known, **(await ahead[1])[0]}
            except StoreError:
                pass  # read again below
        found, _ = await self._records(ids, walk.revision, known)
        return [found[i] for i in ids if i in found]

    async def _advance(self, walk: Walk, page: int, page_size: int) -> list[str]:
        """The ids of `page` of a streamed walk: what it read ahead, else what each index
        holds from the walk's cursor on, one read for them all (the first also counts
        them, and pins the walk; a walk that goes on reads READ_AHEAD pages more)."""
        want = walk.wants(page, page_size)
        if want:
            limit = want + (READ_AHEAD * page_size if walk.revision else 0)
            counts = [] if walk.revision else [
                _Range(s.prefix, prefix_end(s.prefix), count_only=True) for s in walk.streams]
            ranges = [_Range(at, prefix_end(s.prefix), limit=limit, keys_only=not s.by_address)
                      for s, at in zip(walk.streams, walk.cursor, strict=True)]
            answers, revision = await self._ranges(counts + ranges, walk.revision)
            if not walk.revision:
                walk.revision = revision
                walk.total = sum(a.count for a in answers[:len(counts)])
            walk.take([entries(s, i, ((kv.key.decode(), kv.value) for kv in a.kvs))
                       for i, (s, a) in enumerate(zip(walk.streams, answers[len(counts):],
                                                      strict=True))], limit)
        return walk.serve(page, page_size)

    async def _walk(self, flt: IPFilter, order_by: str
                    ) -> tuple[Walk | None, dict[str, IPRecord]]:
        """A new walk for the query (None: nothing can match), with the records it read."""
        narrowed = bool(flt.ip_ids or flt.resource_id or flt.resource_ids or flt.mac_address
                        or flt.tags)
        sources = None if narrowed else await self._sources(flt)
        by_address = KEY_ORDERS.get(order_by, REVERSED_KEY_ORDERS.get(order_by))
        if by_address is not None and not narrowed:
            streams = self._streams(flt, by_address, sources)
            if streams is not None:
                if not streams:
                    return None, {}
                if order_by in KEY_ORDERS and all(s.in_order for s in streams):
                    return Walk.streamed(streams), {}
                return await self._listed_from_keys(streams, order_by in REVERSED_KEY_ORDERS), {}
        return await self._listed_from_records(flt, order_by, sources)

    # -- which indexes ------------------------------------------------------------------

    @staticmethod
    def _only(flt: IPFilter, settled: set[str]) -> bool:
        """Whether `flt` uses no filter beyond `settled`."""
        return all(getattr(flt, f.name) in (None, (), "") for f in fields(flt)
                   if f.name not in settled)

    def _streams(self, flt: IPFilter, by_address: bool, sources: list[Source] | None
                 ) -> list[Stream] | None:
        """Indexes whose keys name exactly the IPs that match `flt`, for a list in creation
        order (`by_address`: in address order); None when no such indexes exist."""
        if sources is not None:
            if not self._only(flt, _SETTLED_BY_POOLS if flt.zonal else _SETTLED_BY_SUBNETS):
                return None
            if not by_address:
                return [Stream(self.keys.created(s.id)) for s in sources]
            ordered = sorted(sources, key=lambda s: (s.network.version, int(s.network.network)))
            return [Stream(self.keys.addresses(s.id), by_address=True, rank=i)
                    for i, s in enumerate(ordered)]
        if by_address:
            return None
        projects = self._projects(flt)
        if projects is not None and self._only(flt, _SETTLED_BY_PROJECTS):
            return [Stream(self.keys.by_project(p, flt.region or ""), in_order=bool(flt.region))
                    for p in sorted(projects)]
        if projects is None and self._only(flt, {"region"}):  # an admin's whole region
            return [Stream(self.keys.by_project(""), in_order=False, region=flt.region)]
        return None

    @staticmethod
    def _projects(flt: IPFilter) -> set[str] | None:
        """The projects whose IPs may match (None: any project)."""
        if flt.project_id:
            visible = flt.project_ids is None or flt.project_id in flt.project_ids
            return {flt.project_id} if visible else set()
        return None if flt.project_ids is None else set(flt.project_ids)

    async def _sources(self, flt: IPFilter) -> list[Source] | None:
        """The sources the filter names, as etcd holds them now, less those whose IPs
        cannot match; None when it names none (no subnet, network, zone or VPC)."""
        try:
            if flt.subnet_id:
                found = [await self.networks.get_source(flt.subnet_id)]
            elif flt.private_network_id:
                pn = await self.networks.get_private_network(flt.private_network_id)
                found = [pn.source(s) for s in pn.subnets]
            elif flt.zonal:
                region = flt.region or flt.zonal.rsplit("-", 1)[0]
                found = await self.networks.list_zonal_pools(region, flt.zonal)
            elif flt.vpc_id or flt.source_vpc_id:
                found = await self._vpc_sources(str(flt.vpc_id or flt.source_vpc_id))
            else:
                return None
        except NotFound:
            return []
        return [s for s in found if _may_hold_matches(s, flt)]

    async def _vpc_sources(self, vpc_id: str) -> list[Source]:
        """The subnets of the VPC's Private Networks (a zonal pool is in no VPC)."""
        kvs, _ = await self.store.scan(self.keys.vpc_private_networks(vpc_id), keys_only=True)
        found = await self.store.get_many(
            self.keys.private_network(self.keys.last_segment(kv.key)) for kv in kvs)
        pns = [PrivateNetwork.from_json(json.loads(kv.value)) for kv in found.values()]
        return [pn.source(s) for pn in pns for s in pn.subnets]

    async def _candidates(self, flt: IPFilter, sources: list[Source] | None
                          ) -> tuple[list[str] | None, int]:
        """(ids of every IP that may match, from the narrowest index the filter allows
        (None: no index narrows it), the revision they were read at (0: none read))."""
        if flt.ip_ids:
            return list(flt.ip_ids), 0
        if flt.resource_id or flt.resource_ids:
            rids = [flt.resource_id] if flt.resource_id else list(flt.resource_ids)
            return await self._ids([self.keys.by_resource(r) for r in rids])
        if flt.mac_address:
            return await self._ids([self.keys.mac(flt.mac_address)], in_value=True)
        projects = self._projects(flt)
        if flt.tags:
            tags = list(dict.fromkeys(flt.tags))
            return await self._ids([self.keys.by_tag(t) for t in tags] if projects is None else
                                   [self.keys.by_tag(t, p) for t in tags for p in sorted(projects)])
        if sources is not None and (projects is None or not flt.zonal):
            return await self._ids([self.keys.addresses(s.id) for s in sources], in_value=True)
        if projects is not None:  # a zone's pools hold every project's IPs: the project's
            return await self._ids([self.keys.by_project(p, flt.region or "")
                                    for p in sorted(projects)])
        if flt.attached:
            return await self._ids([self.keys.by_resource()])
        return None, 0

    # -- listed walks ---------------------------------------------------------------------

    async def _listed_from_keys(self, streams: list[Stream], reverse: bool) -> Walk:
        """A walk through every key of `streams`, read once (keys only, or the address keys'
        values), in list order."""
        found: list[Entry] = []
        revision = 0
        for i, s in enumerate(streams):
            kvs, revision = await self.store.scan(s.prefix, keys_only=not s.by_address,
                                                  revision=revision)
            found += entries(s, i, ((kv.key, kv.value) for kv in kvs))
        found.sort(reverse=reverse)
        return Walk(ids=[ip_id for _, _, ip_id, _ in found], revision=revision,
                    total=len(found))

    async def _listed_from_records(self, flt: IPFilter, order_by: str,
                                   sources: list[Source] | None
                                   ) -> tuple[Walk, dict[str, IPRecord]]:
        """A walk through the records the narrowest index names, filtered and ordered."""
        ids, revision = await self._candidates(flt, sources)
        if ids is None:  # nothing narrows it (an admin's filter): every IP record
            kvs, revision = await self.store.scan(self.keys.ip(), revision=revision)
            records = [IPRecord.read(kv.value, kv.mod_revision) for kv in kvs]
        else:
            found, revision = await self._records(list(dict.fromkeys(ids)), revision, {})
            records = list(found.values())
        kept = arrange(records, flt, order_by)
        walk = Walk(ids=[r.id for r in kept], revision=revision, total=len(kept))
        return walk, {r.id: r for r in kept}

    # -- reads at a revision -------------------------------------------------------------

    async def _ids(self, prefixes: Sequence[str], in_value: bool = False
                   ) -> tuple[list[str], int]:
        """The IP ids under `prefixes` (the last segment of each key, or its value), all
        read at the revision of the first read; (ids, that revision)."""
        ids: list[str] = []
        revision = 0
        for prefix in prefixes:
            kvs, revision = await self.store.scan(prefix, keys_only=not in_value,
                                                  revision=revision)
            ids += [kv.value.decode() if in_value else self.keys.last_segment(kv.key)
                    for kv in kvs]
        return ids, revision

    async def _records(self, ids: Sequence[str], revision: int, known: dict[str, IPRecord]
                       ) -> tuple[dict[str, IPRecord], int]:
        """The records of `ids` at `revision` (0: now), by id, those in `known` not read
        again; one that did not exist then is missing. Returns (records, revision)."""
        wanted = [i for i in ids if i not in known]
        found = dict(known)
        if wanted:
            answers, revision = await self._ranges([_Range(self.keys.ip(i)) for i in wanted],
                                                   revision)
            for a in answers:
                for kv in a.kvs:
                    record = IPRecord.read(kv.value, kv.mod_revision)
                    found[record.id] = record
        return found, revision

    async def _ranges(self, ranges: Sequence[_Range], revision: int
                      ) -> tuple[list[rpc.RangeResponse], int]:
        """Range reads in read-only transactions of at most MAX_TXN_OPS, all at `revision`
        (0: at the revision of the first transaction); (answers in order, revision)."""
        chunks = [ranges[i:i + MAX_TXN_OPS] for i in range(0, len(ranges), MAX_TXN_OPS)]

        async def send(chunk: Sequence[_Range], at: int) -> tuple[list[rpc.RangeResponse], int]:
            # What etcd held at a past revision never changes: any member that has applied
            # it answers alone (serializable), without a round of its cluster; one that
            # has not yet says so, and the read goes linearizable.
            try:
                resp = await self.store.txn([], [r.op(at, bool(at)) for r in chunk],
                                            retry=True)
            except StoreError as err:
                if not at or "future revision" not in str(err):
                    raise
                resp = await self.store.txn([], [r.op(at, False) for r in chunk], retry=True)
            return [r.response_range for r in resp.responses], at or resp.header.revision

        if not chunks:
            return [], revision
        answers, revision = await send(chunks[0], revision)
        for more, _ in await asyncio.gather(*(send(c, revision) for c in chunks[1:])):
            answers += more
        return answers, revision


def _may_hold_matches(s: Source, flt: IPFilter) -> bool:
    """Whether the IPs of source `s` may match `flt`, judged on what a source settles."""
    subnet = s.kind == SUBNET
    return all((
        not flt.subnet_id or (subnet and s.id == flt.subnet_id),
        not flt.private_network_id or s.private_network_id == flt.private_network_id,
        not flt.zonal or (s.kind == ZONAL and s.zone == flt.zonal),
        all(not v or s.vpc_id == v for v in (flt.vpc_id, flt.source_vpc_id)),
        not flt.region or s.region == flt.region,
        flt.is_ipv6 is None or s.is_ipv6 == flt.is_ipv6,
        # A subnet's IPs are its network's project's; a zonal pool's, any project's.
        not subnet or flt.project_ids is None or s.project_id in flt.project_ids,
        not subnet or not flt.project_id or s.project_id == flt.project_id,
    ))
