"""Where addresses come from, in etcd: VPCs, Private Networks and their subnets, zonal pools.

Each subnet and each zonal pool is a source (see `sources`). Writes here are rare
and read-then-guarded: creating a subnet (with its Private Network, or added later)
is guarded by a range compare over the VPC's subnet index, so two concurrent
creations can never both add overlapping subnets; deleting a source (a subnet, its
whole Private Network, a zonal pool) is guarded by a range compare that its address
keys are empty, and a booking by the source's own key being present, so a booking
and a delete can never both win. Every change of a Private Network's record is
guarded on the record's revision, so subnets added, deleted, renamed or flagged
concurrently never lose one another's change.

Creates of Private Networks in one project all guard the same two ranges (the VPC's
subnets, the project's networks for its quota), so side by side all but one lose each
round, however far apart their subnets. This node therefore runs its creates of one
project in turn (`_in_turn`): none loses to another of this node, and a burst (Terraform
creates ten at once) is served in sequence instead of answering Conflict. Only creates on
other nodes still race it, one per node at a time, each lost race meaning another
create committed (`retry.NETWORK_CREATES`). The guards are unchanged: the queue only
spares lost rounds, and every guarantee still rests on the guards alone.

This node keeps the Private Networks it books in for a moment
(`PN_CACHE_SECONDS`): their subnets may change, so a cached one is read again
once it is that old; a booking in a subnet deleted meanwhile is refused by the
booking's own guard, never served from the cache.

Each VPC and Private Network also has a key in its project's index (`Keys.project_vpcs`,
`Keys.project_private_networks`), written and deleted in the same transaction as the
record: a caller restricted to some projects lists by reading those projects' ranges
only, never another tenant's records, and the quotas (`quotas`) count them.

A VPC or Private Network takes its project's organization (`organizations`), whoever
creates it; the `organization_id` a caller passes counts only where the project has none
and organizations are not required (a library user without tenancy).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import netaddr

from . import retry
from .errors import AlreadyExists, Conflict, InvalidArgument, NotFound, PreconditionFailed
from .keys import Keys
from .networks import VPC, PrivateNetwork, Subnet
from .organizations import ProjectOrganizations
from .quotas import (
    DEFAULT_QUOTAS,
    OVERRIDE_GUARD,
    QUOTA_GUARD,
    QuotaOverrides,
    Quotas,
    refuse_subnets,
    within_quota,
)
from .records import check_tags, check_uuid, new_id, now
from .sources import ZONAL, Source, check_private, overlapping, parse_cidr
from .store import KV, Store
from .txn import GuardedTxn, commit

AUTO_IPV4_POOL = netaddr.IPNetwork("172.16.0.0/12")
AUTO_IPV4_PREFIX = 22
STILL_IN_USE = "resource_still_in_use"
# How long this node books in a Private Network's subnets as it last read them.
PN_CACHE_SECONDS = 2.0


def _name(name: Any, default_prefix: str) -> str:
    if name is None or name == "":
        return f"{default_prefix}-{random.randrange(16**6):06x}"
    if not isinstance(name, str) or len(name) > 255:
        raise InvalidArgument("name", "must be a string of at most 255 characters")
    return name


def _listed(obj: VPC | PrivateNetwork, region: str, project_ids: set[str] | None,
            organization_id: str | None, name: str | None, tags: Any) -> bool:
    """The filters VPC and Private Network lists share (name matches as a substring)."""
    return (obj.region == region
            and (project_ids is None or obj.project_id in project_ids)
            and (not organization_id or obj.organization_id == organization_id)
            and (not name or name in obj.name)
            and (not tags or bool(set(tags) & set(obj.tags))))


def _flag(actual: bool, wanted: bool | None) -> bool:
    """A boolean filter: None matches anything."""
    return wanted is None or actual == wanted


def _checked_subnets(subnets: Any) -> list[netaddr.IPNetwork]:
    """The CIDRs asked for a Private Network: each a private range, none overlapping another."""
    if subnets is not None and not isinstance(subnets, list):
        raise InvalidArgument("subnets", "must be a list of CIDRs", "format")
    nets = [parse_cidr(c, "subnets") for c in subnets or []]
    for net in nets:
        check_private(net)
    for i, a in enumerate(nets):
        for b in nets[i + 1:]:
            if a.version == b.version and a.first <= b.last and b.first <= a.last:
                raise InvalidArgument("subnets", f"{a} overlaps {b}")
    return nets


def _refuse_overlaps(cidrs: list[str], existing: dict[str, str], vpc_id: str) -> None:
    """AlreadyExists naming the first subnet of the VPC (id -> CIDR) a new CIDR overlaps."""
    for cidr in cidrs:
        clash = overlapping(cidr, existing)
        if clash:
            raise AlreadyExists("subnet", clash, f"{cidr} overlaps subnet {clash} "
                                                 f"({existing[clash]}) of VPC {vpc_id}")


def _ula48() -> str:
    """A random Unique Local Address /48 (RFC 4193), the IPv6 space of one VPC."""
    global_id = random.getrandbits(40)
    return str(netaddr.IPNetwork(f"{netaddr.IPAddress((0xFD << 120) | (global_id << 80), 6)}/48"))


class NetworkRegistry:
    """VPCs, Private Networks, subnets and zonal pools, stored in etcd, within `quotas`
    or a project's override of them (`overrides`), each VPC and Private Network of its
    project's organization (`organizations`)."""

    def __init__(self, store: Store, keys: Keys, quotas: Quotas = DEFAULT_QUOTAS,
                 organizations: ProjectOrganizations | None = None,
                 overrides: QuotaOverrides | None = None) -> None:
        self.store, self.keys, self.quotas = store, keys, quotas
        self.overrides = overrides or QuotaOverrides(store, keys, quotas)
        self.organizations = organizations or ProjectOrganizations(store, keys)
        # pn id -> (monotonic time read, the Private Network); see PN_CACHE_SECONDS
        self._pn_cache: dict[str, tuple[float, PrivateNetwork]] = {}
        self._pn_reads: dict[str, asyncio.Future[PrivateNetwork]] = {}
        # project id -> (its Private Network creates' turn on this node, how many want
        # it); see `_in_turn`
        self._turns: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        # Told the id of each subnet this node deleted, once committed (the resolver
        # forgets it, the lifecycle closes its engine); other nodes learn it from etcd.
        self.source_deleted: list[Callable[[str], None]] = []

    # -- VPCs ---------------------------------------------------------------------------

    async def create_vpc(self, region: str, project_id: str, organization_id: str | None,
                         name: str | None = None, tags: Any = (),
                         is_default: bool = False, enable_routing: bool = True,
                         enable_transitivity: bool = False) -> VPC:
        """A new VPC with its own IPv6 ULA /48, within the project's VPC quota, of the
        project's organization (OrganizationUnknown when required and unknown)."""
        check_uuid(project_id, "project_id")
        organization_id = await self.organizations.settle(project_id, organization_id)
        ts = now()
        vpc = VPC(new_id(), _name(name, "vpc"), region, project_id, organization_id, _ula48(),
                  ts, ts, is_default, check_tags(tags), routing_enabled=enable_routing,
                  transitivity_enabled=enable_transitivity)
        async for _ in retry.NETWORK_RACES.attempts():
            txn = (GuardedTxn().put(self.keys.vpc(vpc.id), json.dumps(vpc.stored()))
                   .put(self.keys.project_vpcs(project_id, region, vpc.id), ""))
            if is_default:
                dkey = self.keys.default_vpc(region, project_id)
                txn.absent("default_vpc", dkey).put(dkey, vpc.id)
            # The project's quota as etcd holds it now, guarded with the count.
            limits = await self.overrides.get(project_id)
            self.overrides.guard(txn, limits)
            await within_quota(self.store, txn, self.keys.project_vpcs(project_id),
                               limits.vpcs, "vpc", f"project {project_id}")
            outcome = await commit(self.store, txn)
            if outcome.succeeded:
                return replace(vpc, revision=outcome.revision)
            if "default_vpc" in outcome.failed:
                raise AlreadyExists("vpc", project_id, "the project already has a default VPC")
            # QUOTA_GUARD: another VPC of the project was created meanwhile: count again;
            # OVERRIDE_GUARD: its quota changed: read it again
        raise Conflict("the project's VPCs kept changing; try again")

    async def default_vpc(self, region: str, project_id: str,
                          organization_id: str | None) -> VPC:
        """The project's default VPC in `region`, created on first use."""
        async for _ in retry.NETWORK_RACES.attempts():
            kv = await self.store.get(self.keys.default_vpc(region, project_id))
            if kv is not None:
                try:
                    return await self.get_vpc(kv.value.decode())
                except NotFound:
                    pass
            try:
                return await self.create_vpc(region, project_id, organization_id, "default",
                                             is_default=True)
            except AlreadyExists:
                continue
        raise Conflict("could not settle the default VPC")

    async def get_vpc(self, vpc_id: str) -> VPC:
        check_uuid(vpc_id, "vpc_id")
        kv = await self.store.get(self.keys.vpc(vpc_id))
        if kv is None:
            raise NotFound("vpc", vpc_id)
        count, _ = await self.store.count(self.keys.vpc_private_networks(vpc_id))
        return replace(VPC.from_stored(json.loads(kv.value), kv.mod_revision),
                       private_network_count=count)

    async def list_vpcs(self, region: str, project_ids: set[str] | None = None,
                        organization_id: str | None = None, name: str | None = None,
                        tags: Any = (), is_default: bool | None = None, *,
                        routing_enabled: bool | None = None,
                        object_storage_private_access_enabled: bool | None = None
                        ) -> list[VPC]:
        """The VPCs of `region` that pass every filter (None or empty: any)."""
        if project_ids is not None and not project_ids:
            return []  # the caller sees no project: nothing to read
        if project_ids is None:
            kvs, _ = await self.store.scan(self.keys.vpc())
            # One keys-only read counts the Private Networks of every VPC at once.
            pn_keys, _ = await self.store.scan(self.keys.vpc_private_networks(),
                                               keys_only=True)
            counts = Counter(self.keys.vpc_of_private_network_key(kv.key) for kv in pn_keys)
        else:
            # A tenant reads its projects' indexes and records, nothing of anyone else's;
            # a VPC's networks are of its project, so that project's index counts them.
            kvs = await self._indexed(self.keys.project_vpcs, project_ids, region,
                                      self.keys.vpc)
            pn_index = await self._index(self.keys.project_private_networks, project_ids,
                                         region)
            counts = Counter(kv.value.decode() for kv in pn_index)
        vpcs = [v for v in (VPC.from_stored(json.loads(kv.value)) for kv in kvs)
                if _listed(v, region, project_ids, organization_id, name, tags)
                and _flag(v.is_default, is_default)
                and _flag(v.routing_enabled, routing_enabled)
                and _flag(v.object_storage_private_access_enabled,
                          object_storage_private_access_enabled)]
        return sorted((replace(v, private_network_count=counts[v.id]) for v in vpcs),
                      key=lambda v: v.created_at)

    async def _index(self, index: Callable[[str, str], str], project_ids: set[str],
                     region: str) -> list[KV]:
        """The keys of one project index (`index(project, region)`) for these projects,
        one range read each, side by side."""
        found = await asyncio.gather(*(self.store.scan(index(p, region))
                                       for p in sorted(project_ids)))
        return [kv for kvs, _ in found for kv in kvs]

    async def _indexed(self, index: Callable[[str, str], str], project_ids: set[str],
                       region: str, record: Callable[[str], str]) -> list[KV]:
        """The records (`record(id)`) a project index names for these projects; one gone
        since the index was read is left out."""
        ids = [self.keys.last_segment(kv.key)
               for kv in await self._index(index, project_ids, region)]
        found = await self.store.get_many(record(i) for i in ids)
        return [found[record(i)] for i in ids if record(i) in found]

    async def update_vpc(self, vpc_id: str, name: str | None = None, tags: Any = None) -> VPC:
        check_uuid(vpc_id, "vpc_id")
        await self._update_guarded(self.keys.vpc(vpc_id), "vpc", vpc_id, name, tags,
                           lambda d: VPC.from_stored(d), lambda v: v.stored())
        return await self.get_vpc(vpc_id)

    async def enable_routing(self, vpc_id: str) -> VPC:
        """Turn routing on in a VPC (it is never turned off again); enabled already: unchanged."""
        check_uuid(vpc_id, "vpc_id")
        await self._change_guarded(
            self.keys.vpc(vpc_id), "vpc", vpc_id, VPC.from_stored, VPC.stored,
            lambda v: None if v.routing_enabled else replace(v, routing_enabled=True,
                                                             updated_at=now()))
        return await self.get_vpc(vpc_id)

    async def _update_guarded(self, key: str, resource: str, object_id: str, name: str | None,
                      tags: Any, decode: Any, encode: Any, **flags: bool | None) -> Any:
        """Change the name, tags and/or flags of a stored object, guarded on its revision."""
        changes = {k: v for k, v in flags.items() if v is not None}
        new_tags = check_tags(tags) if tags is not None else None
        return await self._change_guarded(key, resource, object_id, decode, encode, lambda obj: (
            replace(obj, name=_name(name, resource) if name is not None else obj.name,
                    tags=new_tags if new_tags is not None else obj.tags, updated_at=now(),
                    **changes)))

    async def _change_guarded(self, key: str, resource: str, object_id: str, decode: Any,
                              encode: Any, change: Callable[[Any], Any]) -> Any:
        """Read a stored object, `change` it and write it back guarded on its revision;
        read again when another change won. `change` answering None: nothing to write."""
        async for _ in retry.NETWORK_RACES.attempts():
            kv = await self.store.get(key)
            if kv is None:
                raise NotFound(resource, object_id)
            current = replace(decode(json.loads(kv.value)), revision=kv.mod_revision)
            obj = change(current)
            if obj is None:
                return current
            txn = GuardedTxn().unchanged(resource, key, kv.mod_revision)
            outcome = await commit(self.store, txn.put(key, json.dumps(encode(obj))))
            if outcome.succeeded:
                return replace(obj, revision=outcome.revision)
        raise Conflict(f"the {resource} kept changing; try again")

    async def delete_vpc(self, vpc_id: str) -> None:
        """Delete a VPC that has no Private Network left."""
        vpc = await self.get_vpc(vpc_id)
        txn = (GuardedTxn().present("vpc", self.keys.vpc(vpc_id))
               .prefix_empty("private_networks", self.keys.vpc_private_networks(vpc_id))
               .delete(self.keys.vpc(vpc_id))
               .delete(self.keys.project_vpcs(vpc.project_id, vpc.region, vpc_id)))
        if vpc.is_default:
            txn.delete(self.keys.default_vpc(vpc.region, vpc.project_id))
        if not (await commit(self.store, txn)).succeeded:
            await self.get_vpc(vpc_id)
            raise PreconditionFailed(STILL_IN_USE, "the VPC still has Private Networks")

    # -- Private Networks -----------------------------------------------------------------

    async def create_private_network(
        self, region: str, project_id: str, organization_id: str | None,
        name: str | None = None, tags: Any = (), vpc_id: str | None = None,
        subnets: list[str] | None = None, default_route_propagation_enabled: bool = False,
    ) -> PrivateNetwork:
        """A Private Network with its subnets; subnets never overlap others of the VPC.
        Within the project's Private Network quota and the subnet quota of a network; of
        the project's organization (OrganizationUnknown when required and unknown, before
        a default VPC is created)."""
        check_uuid(project_id, "project_id")
        tags = check_tags(tags)
        pn_name = _name(name, "pn")
        nets = _checked_subnets(subnets)
        organization_id = await self.organizations.settle(project_id, organization_id)
        async with self._in_turn(project_id):
            return await self._create_private_network(
                region, project_id, organization_id, pn_name, tags, vpc_id, nets,
                default_route_propagation_enabled)

    @contextlib.asynccontextmanager
    async def _in_turn(self, project_id: str) -> AsyncIterator[None]:
        """Hold this node's turn to create a Private Network in `project_id` (first come,
        first served); the turn is forgotten once nobody wants it."""
        lock, wanting = self._turns.setdefault(project_id, (asyncio.Lock(), [0]))
        wanting[0] += 1
        try:
            async with lock:
                yield
        finally:
            wanting[0] -= 1
            if not wanting[0]:
                del self._turns[project_id]

    async def _create_private_network(
        self, region: str, project_id: str, organization_id: str | None, pn_name: str,
        tags: tuple[str, ...], vpc_id: str | None, nets: list[netaddr.IPNetwork],
        default_route_propagation_enabled: bool,
    ) -> PrivateNetwork:
        """`create_private_network` once its arguments are checked, in its turn."""
        if vpc_id is None:
            vpc = await self.default_vpc(region, project_id, organization_id)
        else:
            vpc = await self.get_vpc(vpc_id)
            if vpc.project_id != project_id:
                raise InvalidArgument("vpc_id", "the VPC belongs to another project")
        if vpc.region != region:
            raise InvalidArgument("vpc_id", f"the VPC is in region {vpc.region}")
        async for _ in retry.NETWORK_CREATES.attempts():
            existing_kvs, rev = await self.store.scan(self.keys.vpc_networks(vpc.id))
            existing = {self.keys.last_segment(kv.key): kv.value.decode() for kv in existing_kvs}
            chosen = [str(n.cidr) for n in nets] if nets else self._auto_subnets(vpc, existing)
            limits = await self.overrides.get(project_id)
            refuse_subnets(limits.subnets_per_private_network, 0, len(chosen), "")
            _refuse_overlaps(chosen, existing, vpc.id)
            ts = now()
            pn_id = new_id()
            pn = PrivateNetwork(pn_id, pn_name, region, project_id, organization_id, vpc.id, ts,
                                ts, tags, tuple(Subnet(new_id(), c, project_id, pn_id, vpc.id,
                                                       region, ts, ts) for c in chosen),
                                default_route_propagation_enabled)
            txn = (GuardedTxn().present("vpc", self.keys.vpc(vpc.id))
                   .prefix_unchanged_since("vpc_subnets", self.keys.vpc_networks(vpc.id), rev)
                   .put(self.keys.private_network(pn.id), json.dumps(pn.to_json()))
                   .put(self.keys.vpc_private_networks(vpc.id, pn.id), "")
                   .put(self.keys.project_private_networks(project_id, region, pn.id), vpc.id))
            for s in pn.subnets:
                txn.put(self.keys.source(s.id), json.dumps(pn.source(s).to_json()))
                txn.put(self.keys.vpc_network(vpc.id, s.id), s.subnet)
            self.overrides.guard(txn, limits)
            await within_quota(self.store, txn, self.keys.project_private_networks(project_id),
                               limits.private_networks, "private_network",
                               f"project {project_id}")
            outcome = await commit(self.store, txn)
            if outcome.succeeded:
                return replace(pn, revision=outcome.revision)
            if outcome.failed - {QUOTA_GUARD, OVERRIDE_GUARD}:
                await self.get_vpc(vpc.id)  # NotFound if it went away meanwhile
        raise Conflict("the VPC's subnets or the project's networks kept changing; try again")

    def _auto_subnets(self, vpc: VPC, existing: dict[str, str]) -> list[str]:
        """A free IPv4 /22 of 172.16.0.0/12 and a free /64 of the VPC's ULA /48."""
        taken4 = [netaddr.IPNetwork(c) for c in existing.values()]
        blocks = list(AUTO_IPV4_POOL.subnet(AUTO_IPV4_PREFIX))
        random.shuffle(blocks)
        v4 = next((b for b in blocks if not any(
            t.version == 4 and t.first <= b.last and b.first <= t.last for t in taken4)), None)
        if v4 is None:
            raise PreconditionFailed("no_free_subnet", "no free /22 left in 172.16.0.0/12")
        ula = netaddr.IPNetwork(vpc.ipv6_prefix)
        for _ in range(64):
            v6 = netaddr.IPNetwork(f"{netaddr.IPAddress(ula.first | (random.getrandbits(16) << 64), 6)}/64")
            if not overlapping(str(v6), existing):
                return [str(v4), str(v6)]
        raise PreconditionFailed("no_free_subnet", "no free IPv6 /64 left in the VPC")

    async def get_private_network(self, pn_id: str) -> PrivateNetwork:
        """The Private Network as etcd holds it now (and this node's cache with it)."""
        check_uuid(pn_id, "private_network_id")
        kv = await self.store.get(self.keys.private_network(pn_id))
        if kv is None:
            self._pn_cache.pop(pn_id, None)
            raise NotFound("private_network", pn_id)
        return self._remember(PrivateNetwork.from_json(json.loads(kv.value), kv.mod_revision))

    def _remember(self, pn: PrivateNetwork) -> PrivateNetwork:
        self._pn_cache[pn.id] = (time.monotonic(), pn)
        return pn

    def forget(self, pn_id: str) -> None:
        """Drop a Private Network from this node's cache (it changed or went away elsewhere)."""
        self._pn_cache.pop(pn_id, None)

    async def cached_private_network(self, pn_id: str) -> PrivateNetwork:
        """The PN from this node's cache while younger than PN_CACHE_SECONDS, else from
        etcd (concurrent callers share one read)."""
        hit = self._pn_cache.get(pn_id)
        if hit is not None and time.monotonic() - hit[0] < PN_CACHE_SECONDS:
            return hit[1]
        reading = self._pn_reads.get(pn_id)
        if reading is None:
            reading = self._pn_reads[pn_id] = asyncio.ensure_future(
                self.get_private_network(pn_id))
            reading.add_done_callback(lambda _: self._pn_reads.pop(pn_id, None))
        return await asyncio.shield(reading)

    async def list_private_networks(self, region: str, project_ids: set[str] | None = None,
                                    organization_id: str | None = None,
                                    name: str | None = None, tags: Any = (),
                                    vpc_id: str | None = None,
                                    private_network_ids: Any = (), *,
                                    dhcp_enabled: bool | None = None,
                                    object_storage_private_access_enabled: bool | None = None
                                    ) -> list[PrivateNetwork]:
        """The Private Networks of `region` that pass every filter (None or empty: any)."""
        if project_ids is not None and not project_ids:
            return []  # the caller sees no project: nothing to read
        if project_ids is None:
            kvs, _ = await self.store.scan(self.keys.private_network())
        else:  # a tenant reads its projects' indexes and records only
            kvs = await self._indexed(self.keys.project_private_networks, project_ids, region,
                                      self.keys.private_network)
        ids = set(private_network_ids or ())
        pns = [pn for pn in (PrivateNetwork.from_json(json.loads(kv.value)) for kv in kvs)
               if _listed(pn, region, project_ids, organization_id, name, tags)
               and (not vpc_id or pn.vpc_id == vpc_id) and (not ids or pn.id in ids)
               and _flag(pn.dhcp_enabled, dhcp_enabled)
               and _flag(pn.has_object_storage_private_access,
                         object_storage_private_access_enabled)]
        return sorted(pns, key=lambda p: p.created_at)

    async def update_private_network(self, pn_id: str, name: str | None = None,
                                     tags: Any = None,
                                     default_route_propagation_enabled: bool | None = None,
                                     dhcp_enabled: bool | None = None) -> PrivateNetwork:
        check_uuid(pn_id, "private_network_id")
        if dhcp_enabled is not None and not isinstance(dhcp_enabled, bool):
            raise InvalidArgument("dhcp_enabled", "must be a boolean", "format")
        pn: PrivateNetwork = await self._update_guarded(
            self.keys.private_network(pn_id), "private_network", pn_id, name, tags,
            PrivateNetwork.from_json, PrivateNetwork.to_json,
            default_route_propagation_enabled=default_route_propagation_enabled,
            dhcp_enabled=dhcp_enabled)
        return self._remember(pn)

    async def enable_dhcp(self, pn_id: str) -> PrivateNetwork:
        """Turn managed DHCP on in a Private Network (never off again); on already: unchanged."""
        check_uuid(pn_id, "private_network_id")
        pn: PrivateNetwork = await self._change_guarded(
            self.keys.private_network(pn_id), "private_network", pn_id,
            PrivateNetwork.from_json, PrivateNetwork.to_json,
            lambda p: None if p.dhcp_enabled else replace(p, dhcp_enabled=True,
                                                          updated_at=now()))
        return self._remember(pn)

    async def delete_private_network(self, pn_id: str) -> None:
        """Delete a Private Network whose subnets hold no IP."""
        check_uuid(pn_id, "private_network_id")
        key = self.keys.private_network(pn_id)
        async for _ in retry.NETWORK_RACES.attempts():
            kv = await self.store.get(key)
            if kv is None:
                self._pn_cache.pop(pn_id, None)
                raise NotFound("private_network", pn_id)
            pn = PrivateNetwork.from_json(json.loads(kv.value))
            # Guarded on the record's revision: a subnet added meanwhile is deleted too.
            txn = (GuardedTxn().unchanged("private_network", key, kv.mod_revision)
                   .delete(key).delete(self.keys.vpc_private_networks(pn.vpc_id, pn_id))
                   .delete(self.keys.project_private_networks(pn.project_id, pn.region, pn_id)))
            self._delete_sources(txn, pn, pn.subnets)
            outcome = await commit(self.store, txn)
            if outcome.succeeded:
                self._pn_cache.pop(pn_id, None)
                return
            if outcome.failed - {"private_network"}:
                raise PreconditionFailed(STILL_IN_USE, "the Private Network still holds IPs; "
                                                       "release them first")
        raise Conflict("the private_network kept changing; try again")

    def _delete_sources(self, txn: GuardedTxn, pn: PrivateNetwork,
                        subnets: tuple[Subnet, ...] | list[Subnet]) -> None:
        """Delete these subnets of `pn` in `txn`, each guarded on holding no address (the
        guard is named `addresses of {subnet id}`)."""
        for s in subnets:
            txn.prefix_empty(f"addresses of {s.id}", self.keys.addresses(s.id))
            (txn.delete(self.keys.source(s.id)).delete(self.keys.freed(s.id))
                .delete(self.keys.vpc_network(pn.vpc_id, s.id)))

    # -- subnets of a Private Network -------------------------------------------------------

    async def add_subnets(self, pn_id: str, subnets: Any) -> tuple[PrivateNetwork, list[Subnet]]:
        """Add subnets to a Private Network: (the network now, the subnets added).

        Each is a private range that overlaps no subnet of the VPC (AlreadyExists names
        the one it overlaps, as at creation); the network holds at most its subnet quota
        (exact: the write is guarded on the record it counts them in, and on the
        project's quota override)."""
        check_uuid(pn_id, "private_network_id")
        nets = _checked_subnets(subnets)
        if not nets:
            raise InvalidArgument("subnets", "give at least one CIDR", "required")
        key = self.keys.private_network(pn_id)
        async for _ in retry.NETWORK_RACES.attempts():
            kv = await self.store.get(key)
            if kv is None:
                raise NotFound("private_network", pn_id)
            pn = PrivateNetwork.from_json(json.loads(kv.value))
            limits = await self.overrides.get(pn.project_id)
            refuse_subnets(limits.subnets_per_private_network, len(pn.subnets), len(nets),
                           pn.id)
            index = self.keys.vpc_networks(pn.vpc_id)
            existing_kvs, rev = await self.store.scan(index)
            existing = {self.keys.last_segment(kv.key): kv.value.decode() for kv in existing_kvs}
            _refuse_overlaps([str(n.cidr) for n in nets], existing, pn.vpc_id)
            ts = now()
            added = [Subnet(new_id(), str(n.cidr), pn.project_id, pn.id, pn.vpc_id, pn.region,
                            ts, ts) for n in nets]
            updated = replace(pn, subnets=pn.subnets + tuple(added), updated_at=ts)
            txn = (GuardedTxn().unchanged("private_network", key, kv.mod_revision)
                   .prefix_unchanged_since("vpc_subnets", index, rev)
                   .put(key, json.dumps(updated.to_json())))
            self.overrides.guard(txn, limits)
            for s in added:
                txn.put(self.keys.source(s.id), json.dumps(updated.source(s).to_json()))
                txn.put(self.keys.vpc_network(pn.vpc_id, s.id), s.subnet)
            outcome = await commit(self.store, txn)
            if outcome.succeeded:
                return self._remember(replace(updated, revision=outcome.revision)), added
        raise Conflict("the Private Network or its VPC's subnets kept changing; try again")

    async def delete_subnets(self, pn_id: str, subnets: Any
                             ) -> tuple[PrivateNetwork, list[Subnet]]:
        """Delete subnets, named by CIDR, from a Private Network: (the network now, the
        subnets deleted). NotFound for a CIDR that is not one of its subnets;
        PreconditionFailed naming the first subnet that still holds an IP (then none is
        deleted). A booking in a subnet being deleted and the delete never both win."""
        check_uuid(pn_id, "private_network_id")
        if not isinstance(subnets, list) or not subnets:
            raise InvalidArgument("subnets", "give at least one CIDR", "required")
        asked = list(dict.fromkeys(str(parse_cidr(c, "subnets").cidr) for c in subnets))
        key = self.keys.private_network(pn_id)
        async for _ in retry.NETWORK_RACES.attempts():
            kv = await self.store.get(key)
            if kv is None:
                raise NotFound("private_network", pn_id)
            pn = PrivateNetwork.from_json(json.loads(kv.value))
            held = {str(netaddr.IPNetwork(s.subnet).cidr): s for s in pn.subnets}
            missing = [c for c in asked if c not in held]
            if missing:
                raise NotFound("subnet", missing[0])
            gone = [held[c] for c in asked]
            updated = replace(pn, subnets=tuple(s for s in pn.subnets if s not in gone),
                              updated_at=now())
            txn = (GuardedTxn().unchanged("private_network", key, kv.mod_revision)
                   .put(key, json.dumps(updated.to_json())))
            self._delete_sources(txn, pn, gone)
            outcome = await commit(self.store, txn)
            if outcome.succeeded:
                for subnet in gone:
                    for tell in self.source_deleted:
                        tell(subnet.id)
                return self._remember(replace(updated, revision=outcome.revision)), gone
            in_use = [s for s in gone if f"addresses of {s.id}" in outcome.failed]
            if in_use:
                s = in_use[0]
                raise PreconditionFailed(STILL_IN_USE, f"subnet {s.id} ({s.subnet}) still "
                                                       "holds IPs; release them first")
        raise Conflict("the Private Network kept changing; try again")

    async def list_subnets(self, region: str, project_ids: set[str] | None = None,
                           organization_id: str | None = None, vpc_id: str | None = None,
                           private_network_id: str | None = None,
                           subnet_ids: Any = ()) -> list[Subnet]:
        pns = await self.list_private_networks(region, project_ids, organization_id,
                                               vpc_id=vpc_id)
        ids = set(subnet_ids or ())
        return [s for pn in pns for s in pn.subnets
                if (not private_network_id or pn.id == private_network_id)
                and (not ids or s.id in ids)]

    # -- sources --------------------------------------------------------------------------

    async def get_source(self, source_id: str) -> Source:
        kv = await self.store.get(self.keys.source(source_id))
        if kv is None:
            raise NotFound("subnet", source_id)
        return Source.from_json(json.loads(kv.value))

    # -- zonal pools ------------------------------------------------------------------------

    async def create_zonal_pool(self, region: str, zone: str, cidr: str) -> Source:
        """A public pool shared by every project of `zone`; pools of a region never overlap."""
        if not isinstance(zone, str) or not zone.startswith(region + "-"):
            raise InvalidArgument("zone", f"must be a zone of region {region}, like {region}-1")
        net = parse_cidr(cidr)
        prefix = self.keys.zone_pools(region)
        async for _ in retry.NETWORK_RACES.attempts():
            kvs, rev = await self.store.scan(prefix)
            existing = {self.keys.last_segment(kv.key): kv.value.decode() for kv in kvs}
            clash = overlapping(str(net.cidr), existing)
            if clash:
                raise AlreadyExists("zonal_pool", clash,
                                    f"{net.cidr} overlaps zonal pool {clash} ({existing[clash]})")
            pool = Source(id=new_id(), kind=ZONAL, cidr=str(net.cidr), region=region,
                          created_at=now(), zone=zone)
            txn = (GuardedTxn().prefix_unchanged_since("zone_pools", prefix, rev)
                   .put(self.keys.source(pool.id), json.dumps(pool.to_json()))
                   .put(self.keys.zone_pool(region, zone, pool.id), pool.cidr))
            if (await commit(self.store, txn)).succeeded:
                return pool
        raise Conflict("the zone's pools kept changing; try again")

    async def list_zonal_pools(self, region: str, zone: str | None = None) -> list[Source]:
        kvs, _ = await self.store.scan(self.keys.zone_pools(region, zone or ""))
        ids = [self.keys.last_segment(kv.key) for kv in kvs]
        found = await self.store.get_many(self.keys.source(i) for i in ids)
        pools = [Source.from_json(json.loads(kv.value)) for kv in found.values()]
        return sorted(pools, key=lambda p: (p.zone or "", p.created_at))

    async def delete_zonal_pool(self, pool_id: str) -> None:
        """Delete a zonal pool that holds no IP."""
        check_uuid(pool_id, "pool_id")
        kv = await self.store.get(self.keys.source(pool_id))
        if kv is None:
            raise NotFound("zonal_pool", pool_id)
        pool = Source.from_json(json.loads(kv.value))
        if pool.kind != ZONAL or pool.zone is None:
            raise NotFound("zonal_pool", pool_id)
        txn = (GuardedTxn().present("zonal_pool", self.keys.source(pool_id))
               .prefix_empty("addresses", self.keys.addresses(pool_id))
               .delete(self.keys.source(pool_id)).delete(self.keys.freed(pool_id))
               .delete(self.keys.zone_pool(pool.region, pool.zone, pool_id)))
        if not (await commit(self.store, txn)).succeeded:
            raise PreconditionFailed(STILL_IN_USE, "the zonal pool still holds IPs")

