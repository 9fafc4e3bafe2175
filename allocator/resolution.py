"""From what a booking names (a Private Network, a subnet, a zone) to the sources it may use.

A source never changes once created, so this node keeps it: a warm booking resolves
its source with no etcd read. Which subnets a Private Network has does change
(subnets are added and deleted): the registry keeps a Private Network for a moment
only (`network_registry.PN_CACHE_SECONDS`). A source deleted since is caught by the
booking's own guard (`present(source meta)`) or by its engine's watch, which then make
this node forget it; a booking that met one resolves its ask again, once, fresh from
etcd (`resolve(..., fresh=True)`), and tries the sources it has not tried yet.
"""

from __future__ import annotations

import time

import netaddr

from .access import Caller
from .asks import AddressAsk
from .errors import InvalidArgument, NotFound
from .network_registry import NetworkRegistry
from .records import check_uuid
from .sources import SUBNET, Source

_ZONE_CACHE_SECONDS = 2.0


class SourceResolver:
    """This node's view of the sources: cached, resolved from a booking's ask."""

    def __init__(self, networks: NetworkRegistry) -> None:
        self.networks = networks
        self._sources: dict[str, Source] = {}
        self._zones: dict[tuple[str, str], tuple[float, list[Source]]] = {}
        networks.source_deleted.append(self.forget_source)

    async def source(self, source_id: str) -> Source:
        """A source (subnet or zonal pool) from this node's cache, else etcd."""
        src = self._sources.get(source_id)
        if src is None:
            src = self._sources[source_id] = await self.networks.get_source(source_id)
        return src

    def forget(self, source: Source) -> None:
        """The source was deleted (through another node): drop what this node cached of
        it, its Private Network or its zone's pools with it."""
        self._sources.pop(source.id, None)
        if source.private_network_id:
            self.networks.forget(source.private_network_id)
        if source.zone:
            self._zones.pop((source.region, source.zone), None)

    def forget_source(self, source_id: str) -> None:
        """The source was deleted through this node: drop it (its network is kept)."""
        self._sources.pop(source_id, None)

    async def _zone_pools(self, region: str, zone: str, fresh: bool = False) -> list[Source]:
        hit = self._zones.get((region, zone))
        if hit and not fresh and time.monotonic() - hit[0] < _ZONE_CACHE_SECONDS:
            return hit[1]
        pools = await self.networks.list_zonal_pools(region, zone)
        self._zones[(region, zone)] = (time.monotonic(), pools)
        return pools

    async def resolve(self, ask: AddressAsk, caller: Caller, fresh: bool = False
                      ) -> tuple[list[Source], str]:
        """The sources `ask` may book from, and the scope its MAC is unique in.

        Decides, once: that exactly one source is named, that the caller sees it (a
        source of another project answers NotFound), the family and the address.
        `fresh`: read the Private Network (or the zone's pools) from etcd, not from this
        node's cache nor a read already under way (a source was found deleted).
        """
        named = [n for n in ("zonal", "private_network_id", "subnet_id", "vpc_id")
                 if getattr(ask, n)]
        if len(named) != 1:
            raise InvalidArgument("source", "give exactly one of zonal, private_network_id, "
                                            "subnet_id", "required" if not named else "constraint")
        family = 6 if ask.is_ipv6 else 4
        if ask.vpc_id:
            raise InvalidArgument("source.vpc_id", "booking from a VPC source is not supported; "
                                                   "book in one of its Private Networks")
        if ask.zonal:
            if ask.address:
                raise InvalidArgument("address", "a specific address can only be booked in a "
                                                 "Private Network")
            pools = [p for p in await self._zone_pools(ask.region, ask.zonal, fresh)
                     if p.network.version == family]
            if not pools:
                raise NotFound("zonal_pool", f"{ask.zonal} IPv{family}")
            return pools, f"zone-{ask.zonal}"
        if ask.subnet_id:
            check_uuid(ask.subnet_id, "source.subnet_id")
            try:
                src = await self.source(ask.subnet_id)
            except NotFound:
                raise NotFound("subnet", ask.subnet_id) from None
            if src.kind != SUBNET or not caller.sees_project(src.project_id):
                raise NotFound("subnet", ask.subnet_id)
            if src.network.version != family:
                raise InvalidArgument("is_ipv6", f"subnet {src.cidr} is IPv{src.network.version}")
            sources = [src]
        else:
            pn_id = check_uuid(ask.private_network_id, "source.private_network_id")
            pn = await (self.networks.get_private_network(pn_id) if fresh
                        else self.networks.cached_private_network(pn_id))
            if ask.address and not fresh and not any(_contains_cidr(s.subnet, ask.address)
                                       for s in pn.subnets):
                # Maybe in a subnet added since this node read the network: read it again.
                pn = await self.networks.get_private_network(pn_id)
            if not caller.sees_project(pn.project_id):
                raise NotFound("private_network", pn_id)
            sources = []
            for subnet in pn.subnets:
                try:
                    sources.append(await self.source(subnet.id))
                except NotFound:
                    # Deleted since the network was read: not one of its subnets now
                    # (and the next booking reads the network again).
                    self.networks.forget(pn_id)
            sources = [s for s in sources if s.network.version == family]
            if not sources:
                raise InvalidArgument("is_ipv6", f"the Private Network has no IPv{family} subnet")
        if sources[0].region != ask.region:
            raise NotFound("private_network" if ask.private_network_id else "subnet",
                           str(ask.private_network_id or ask.subnet_id))
        if sources[0].project_id != ask.project_id:
            raise InvalidArgument("project_id", "must be the Private Network's project")
        if ask.address:
            within = [s for s in sources if _contains(s, ask.address)]
            if not within:
                sources[0].offset_of(ask.address)  # raises the precise error
            sources = within
        return sources, f"pn-{sources[0].private_network_id}"


def _contains(src: Source, address: str) -> bool:
    try:
        return netaddr.IPAddress(address) in src.network
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return False


def _contains_cidr(cidr: str, address: str) -> bool:
    try:
        return netaddr.IPAddress(address) in netaddr.IPNetwork(cidr)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return False
