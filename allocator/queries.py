"""How a list request reads etcd: which index to read, and the paged fast path.

The common listing, one Private Network (or subnet) page by page in creation or
address order, reads only the page: creation order comes from each source's
`c/{created_at}/{ip_id}` index and address order from its address keys, both in
key order, so a page costs a count and a bounded range per source, then one read
of the page's records, whatever the size of the network.

Every other filter or order narrows the IPs through the most selective index
(ids, resource, MAC, source, project), reads those records and leaves filtering,
ordering and paging to the pure `listing.select`.
"""

from __future__ import annotations

import json
from dataclasses import fields

from .errors import NotFound
from .keys import Keys
from .listing import IPFilter, check_page, select
from .records import IPRecord
from .sources import SUBNET, Source
from .store import EtcdStore
from .topology import Topology

_PAGED_ORDERS = {"created_at_desc", "created_at_asc", "ip_address_asc", "ip_address_desc"}
# Filters that the choice of sources already settles (every IP of a subnet shares them).
_SETTLED_BY_SOURCE = {"project_ids", "project_id", "region", "private_network_id", "subnet_id",
                      "source_vpc_id", "vpc_id", "is_ipv6"}


class Queries:
    """Read side of IP listing."""

    def __init__(self, store: EtcdStore, keys: Keys, networks: Topology) -> None:
        self.store, self.keys, self.networks = store, keys, networks

    async def list_ips(self, flt: IPFilter, order_by: str, page: int,
                       page_size: int) -> tuple[list[IPRecord], int]:
        """One page of the IPs that match `flt`, and how many match in all."""
        check_page(order_by, page, page_size)
        if order_by in _PAGED_ORDERS and self._paged(flt):
            return await self._paged_list(flt, order_by, page, page_size)
        ids = await self._narrow(flt)
        if ids is None:
            kvs, _ = await self.store.scan(self.keys.ip())
            records = [IPRecord.from_json(json.loads(kv.value)) for kv in kvs]
        else:
            found = await self.store.get_many(self.keys.ip(i) for i in ids)
            records = [IPRecord.from_json(json.loads(kv.value)) for kv in found.values()]
        return select(records, flt, order_by, page, page_size)

    @staticmethod
    def _paged(flt: IPFilter) -> bool:
        if not (flt.private_network_id or flt.subnet_id):
            return False
        for f in fields(flt):
            value = getattr(flt, f.name)
            if f.name not in _SETTLED_BY_SOURCE and value not in (None, (), ""):
                return False
        return True

    async def _sources(self, flt: IPFilter) -> list[Source]:
        """The sources whose every IP matches `flt` (which only names source-wide filters)."""
        try:
            if flt.private_network_id:
                pn = await self.networks.cached_private_network(flt.private_network_id)
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

    async def _paged_list(self, flt: IPFilter, order_by: str, page: int,
                          page_size: int) -> tuple[list[IPRecord], int]:
        sources = await self._sources(flt)
        counts = [(await self.store.count(self.keys.addresses(s.id)))[0] for s in sources]
        start, descending = (page - 1) * page_size, order_by.endswith("_desc")
        if start >= sum(counts):
            return [], sum(counts)
        if order_by.startswith("created_at"):
            ids = await self._by_creation(sources, start + page_size, descending)
        else:
            ids = await self._by_address(sources, counts, start, page_size, descending)
        page_ids = ids[start:] if order_by.startswith("created_at") else ids
        page_ids = page_ids[:page_size]
        found = await self.store.get_many(self.keys.ip(i) for i in page_ids)
        records = [IPRecord.from_json(json.loads(found[self.keys.ip(i)].value))
                   for i in page_ids if self.keys.ip(i) in found]
        return records, sum(counts)

    async def _by_creation(self, sources: list[Source], limit: int,
                           descending: bool) -> list[str]:
        """The first `limit` IP ids of the sources in creation order (merged).

        The index sorts newest first, so the default order is a plain limited range.
        """
        entries: list[tuple[str, str]] = []
        for s in sources:
            for kv in await self.store.first_keys(self.keys.created(s.id), limit,
                                                  descending=not descending):
                inverted_time, ip_id = kv.key.rsplit("/", 2)[1:]
                entries.append((inverted_time, ip_id))
        entries.sort(reverse=not descending)
        return [ip_id for _, ip_id in entries[:limit]]

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
                out += [kv.key.rsplit("/", 1)[1] for kv in kvs]
            return out
        if flt.mac_address:
            kvs, _ = await self.store.scan(self.keys.mac(flt.mac_address))
            return [kv.value.decode() for kv in kvs]
        source_ids: list[str] = []
        if flt.subnet_id:
            source_ids = [flt.subnet_id]
        elif flt.private_network_id:
            try:
                pn = await self.networks.cached_private_network(flt.private_network_id)
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
                out += [kv.key.rsplit("/", 1)[1] for kv in kvs]
            return out
        return None
