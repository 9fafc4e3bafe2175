"""How a list request reads etcd: which index to read, and the paged fast path.

The common listing, one Private Network (or subnet) page by page in creation or
address order, reads only the page: creation order comes from each source's
`c/{created_at}/{ip_id}` index and address order from its address keys, both in
key order, so a page costs a read of the network (its subnets as they are now, not
as this node's booking cache last saw them), a count and a bounded range per
source, then one read of the page's records, whatever the size of the network.

Every other filter or order narrows the IPs through the most selective index
(ids, resource, MAC, source, project), reads those records and leaves filtering,
ordering and paging to the pure `listing.select`.
"""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

from .errors import NotFound
from .keys import Keys
from .listing import IPFilter, check_page, select
from .network_registry import NetworkRegistry
from .records import IPRecord, check_uuid
from .sources import SUBNET, Source
from .store import Store

_CREATION_ORDERS = {"created_at_desc", "created_at_asc"}
_ADDRESS_ORDERS = {"ip_address_asc", "ip_address_desc"}
# Filters that the choice of sources already settles (every IP of a subnet shares them).
_SETTLED_BY_SOURCE = {"project_ids", "project_id", "region", "private_network_id", "subnet_id",
                      "source_vpc_id", "vpc_id", "is_ipv6"}
# Filters that the per-project, per-region creation index settles.
_SETTLED_BY_PROJECT = {"project_ids", "project_id", "region"}


class Queries:
    """The read side of IPs: one IP, a list page, the reserved addresses of a network."""

    def __init__(self, store: Store, keys: Keys, networks: NetworkRegistry) -> None:
        self.store, self.keys, self.networks = store, keys, networks

    async def get_ip(self, ip_id: str) -> IPRecord:
        """The IP record, or NotFound."""
        check_uuid(ip_id, "ip_id")
        kv = await self.store.get(self.keys.ip(ip_id))
        if kv is None:
            raise NotFound("ip", ip_id)
        return IPRecord.from_json(json.loads(kv.value))

    async def reserved_ips(self, pn_id: str) -> list[dict[str, Any]]:
        """For each subnet of the Private Network, the addresses never handed out and why."""
        pn = await self.networks.get_private_network(pn_id)
        return [{"subnet_id": s.id, "subnet": s.subnet,
                 "reserved": [r.__dict__ for r in pn.source(s).reserved_addresses()]}
                for s in pn.subnets]

    async def list_ips(self, flt: IPFilter, order_by: str, page: int,
                       page_size: int) -> tuple[list[IPRecord], int]:
        """One page of the IPs that match `flt`, and how many match in all."""
        check_page(order_by, page, page_size)
        if order_by in _CREATION_ORDERS | _ADDRESS_ORDERS and self._by_source(flt):
            sources = await self._sources(flt)
            counts = [(await self.store.count(self.keys.addresses(s.id)))[0] for s in sources]
            if order_by in _CREATION_ORDERS:
                return await self._paged(
                    [self.keys.created(s.id) for s in sources], counts, order_by, page,
                    page_size)
            return await self._paged_by_address(sources, counts, order_by, page, page_size)
        if order_by in _CREATION_ORDERS and self._by_project(flt):
            prefixes = [self.keys.by_project(p, str(flt.region))
                        for p in sorted(self._projects(flt))]
            counts = [(await self.store.count(p))[0] for p in prefixes]
            return await self._paged(prefixes, counts, order_by, page, page_size)
        ids = await self._narrow(flt)
        if ids is None:
            kvs, _ = await self.store.scan(self.keys.ip())
            records = [IPRecord.from_json(json.loads(kv.value)) for kv in kvs]
        else:
            found = await self.store.get_many(self.keys.ip(i) for i in ids)
            records = [IPRecord.from_json(json.loads(kv.value)) for kv in found.values()]
        return select(records, flt, order_by, page, page_size)

    @staticmethod
    def _only(flt: IPFilter, settled: set[str]) -> bool:
        """Whether `flt` uses no filter beyond `settled`."""
        return all(getattr(flt, f.name) in (None, (), "") for f in fields(flt)
                   if f.name not in settled)

    @classmethod
    def _by_source(cls, flt: IPFilter) -> bool:
        return bool(flt.private_network_id or flt.subnet_id) and cls._only(
            flt, _SETTLED_BY_SOURCE)

    @classmethod
    def _by_project(cls, flt: IPFilter) -> bool:
        return bool(flt.region) and (flt.project_id is not None or flt.project_ids is not None) \
            and cls._only(flt, _SETTLED_BY_PROJECT)

    @staticmethod
    def _projects(flt: IPFilter) -> set[str]:
        if flt.project_id:
            visible = flt.project_ids is None or flt.project_id in flt.project_ids
            return {flt.project_id} if visible else set()
        return set(flt.project_ids or ())

    async def _sources(self, flt: IPFilter) -> list[Source]:
        """The sources whose every IP matches `flt` (which only names source-wide filters)."""
        try:
            if flt.private_network_id:
                pn = await self.networks.get_private_network(flt.private_network_id)
                sources = [pn.source(s) for s in pn.subnets]
            else:
                sources = [await self.networks.get_source(str(flt.subnet_id))]
        except NotFound:
            return []
        keep = []
        for s in sources:
            if s.kind != SUBNET or (flt.subnet_id and s.id != flt.subnet_id):
                continue
            if flt.project_ids is not None and s.project_id not in flt.project_ids:
                continue
            if (flt.project_id and s.project_id != flt.project_id) or (
                    flt.region and s.region != flt.region):
                continue
            if any(v and s.vpc_id != v for v in (flt.vpc_id, flt.source_vpc_id)):
                continue
            if flt.is_ipv6 is not None and s.is_ipv6 != flt.is_ipv6:
                continue
            keep.append(s)
        return keep

    async def _paged(self, prefixes: list[str], counts: list[int], order_by: str, page: int,
                     page_size: int) -> tuple[list[IPRecord], int]:
        """A page in creation order, merged from creation indexes (newest first in key order)."""
        start, total = (page - 1) * page_size, sum(counts)
        if start >= total:
            return [], total
        descending = order_by.endswith("_desc")
        entries: list[tuple[str, str]] = []
        for prefix in prefixes:
            for kv in await self.store.first_keys(prefix, start + page_size,
                                                  descending=not descending):
                entries.append(self.keys.created_entry(kv.key))
        entries.sort(reverse=not descending)
        return await self._records([i for _, i in entries[start:start + page_size]]), total

    async def _paged_by_address(self, sources: list[Source], counts: list[int], order_by: str,
                                page: int, page_size: int) -> tuple[list[IPRecord], int]:
        start, total = (page - 1) * page_size, sum(counts)
        if start >= total:
            return [], total
        ids = await self._by_address(sources, counts, start, page_size,
                                     order_by.endswith("_desc"))
        return await self._records(ids), total

    async def _records(self, ids: list[str]) -> list[IPRecord]:
        """The records of `ids`, in that order (one that vanished meanwhile is skipped)."""
        found = await self.store.get_many(self.keys.ip(i) for i in ids)
        return [IPRecord.from_json(json.loads(found[self.keys.ip(i)].value))
                for i in ids if self.keys.ip(i) in found]

    async def _by_address(self, sources: list[Source], counts: list[int], start: int,
                          size: int, descending: bool) -> list[str]:
        """The ids of one page in address order, skipping whole sources by their counts."""
        ordered = sorted(zip(sources, counts), reverse=descending,
                         key=lambda sc: (sc[0].network.version, int(sc[0].network.network)))
        ids: list[str] = []
        skip = start
        for source, count in ordered:
            if len(ids) >= size:
                break
            if skip >= count:
                skip -= count
                continue
            kvs = await self.store.first_keys(self.keys.addresses(source.id),
                                              skip + size - len(ids), descending=descending,
                                              keys_only=False)
            ids += [kv.value.decode() for kv in kvs[skip:]]
            skip = 0
        return ids[:size]

    async def _narrow(self, flt: IPFilter) -> list[str] | None:
        """IP ids from the most selective index the filter allows (None: scan all)."""
        if flt.ip_ids:
            return list(flt.ip_ids)
        if flt.resource_id or flt.resource_ids:
            rids = [flt.resource_id] if flt.resource_id else list(flt.resource_ids)
            out: list[str] = []
            for rid in rids:
                kvs, _ = await self.store.scan(self.keys.by_resource(rid), keys_only=True)
                out += [self.keys.last_segment(kv.key) for kv in kvs]
            return out
        if flt.mac_address:
            kvs, _ = await self.store.scan(self.keys.mac(flt.mac_address))
            return [kv.value.decode() for kv in kvs]
        source_ids: list[str] = []
        if flt.subnet_id:
            source_ids = [flt.subnet_id]
        elif flt.private_network_id:
            try:
                pn = await self.networks.get_private_network(flt.private_network_id)
            except NotFound:
                return []
            source_ids = [s.id for s in pn.subnets]
        if source_ids:
            out = []
            for sid in source_ids:
                kvs, _ = await self.store.scan(self.keys.addresses(sid))
                out += [kv.value.decode() for kv in kvs]
            return out
        projects = ({flt.project_id} if flt.project_id else
                    set(flt.project_ids) if flt.project_ids is not None else None)
        if projects is not None:
            out = []
            for pid in sorted(projects):
                kvs, _ = await self.store.scan(self.keys.by_project(pid), keys_only=True)
                out += [self.keys.last_segment(kv.key) for kv in kvs]
            return out
        return None
