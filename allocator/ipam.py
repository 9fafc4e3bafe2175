"""The allocator's public contract: book, get, list, update, release, attach, detach, move.

`IPAM` is what the gateway (or any Python program) uses. It validates every
argument before anything reaches etcd, resolves a Scaleway `Source` to the
source(s) to book from, hands bookings to the per-source engines, and runs the
lifecycle changes as read-then-guarded-write transactions whose failure branch
reads the current record, so a retry needs no extra round trip.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import netaddr

from . import idempotency as idem
from . import store as st
from .committer import Committer, written_keys
from .engine import Booking, SourceEngine
from .errors import (
    STILL_ATTACHED,
    AlreadyExists,
    Conflict,
    CredentialRevoked,
    InvalidArgument,
    NotFound,
    OutcomeUnknown,
    PermissionDenied,
    PoolExhausted,
    PreconditionFailed,
    StoreError,
)
from .keys import Keys
from .listing import IPFilter
from .queries import Queries
from .records import CUSTOM, IPRecord, Resource, check_reverses, check_tags, check_uuid, new_id, now
from .sources import SUBNET, Source
from .store import EtcdSecurity, EtcdStore
from .topology import Topology

_RETRIES = 16
MAX_RELEASE_SET = 100
_ZONE_CACHE_SECONDS = 2.0


@dataclass(frozen=True)
class Caller:
    """Who asks, as far as the allocator cares.

    `product_types`: a product key's resource types (None: not a product).
    `projects` / `region`: what the caller may see (None: everything); an IP outside
    is answered NotFound, exactly like an absent one.
    """

    product_types: frozenset[str] | None = None
    projects: frozenset[str] | None = None
    region: str | None = None
    # An etcd key that must still exist for a change to apply (the caller's API key):
    # a key revoked on any node stops every change made with it, in the same transaction.
    credential: str | None = None

    def sees(self, record: IPRecord) -> bool:
        return (self.projects is None or record.project_id in self.projects) and (
            self.region is None or record.region == self.region)

    def may_manage(self, resource_type: str) -> bool:
        """Custom resources are anyone's; product resources only their product's."""
        return resource_type == CUSTOM or (
            self.product_types is not None and resource_type in self.product_types)


@dataclass(frozen=True)
class BookRequest:
    """What a booking asks for; exactly one of zonal / private_network_id / subnet_id."""

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
    caller: Caller = field(default_factory=Caller)
    idempotency_key: str | None = None
    idempotency_scope: str = ""


class IPAM:
    """The allocator over one etcd cluster; one per process, shared by all requests."""

    def __init__(self, store: EtcdStore, prefix: str = "/ipam/", *, pipeline: int = 2) -> None:
        self.store = store
        self.keys = Keys(prefix)
        self.networks = Topology(store, self.keys)
        self.pipeline = pipeline
        # One committer per node: batches of all sources share its etcd requests.
        self.committer = Committer(store, inflight=pipeline)
        self._engines: dict[str, SourceEngine] = {}
        self._sources: dict[str, Source] = {}
        self._zones: dict[tuple[str, str], tuple[float, list[Source]]] = {}
        self._leases = idem.LeaseClock(store)
        self._queries = Queries(store, self.keys, self.networks)
        self._rng = random.Random()

    @classmethod
    async def connect(cls, endpoints: Sequence[str], prefix: str = "/ipam/",
                      timeout: float = 3.0, eject_seconds: float = 5.0,
                      security: EtcdSecurity | None = None, **kwargs: Any) -> IPAM:
        """An IPAM on the etcd cluster reachable at `endpoints` (host:port each)."""
        store = EtcdStore(list(endpoints), timeout=timeout, eject_seconds=eject_seconds,
                          security=security)
        return cls(store, prefix, **kwargs)

    async def close(self) -> None:
        """Stop every engine's watch and close the etcd channels."""
        await asyncio.gather(*(e.close() for e in self._engines.values()))
        await self.store.close()

    async def readiness(self, timeout: float = 2.0) -> tuple[bool, list[tuple[str, bool]]]:
        """(a quorum answers a linearizable read, [(endpoint, answered)]) for /readyz."""
        async def quorum() -> bool:
            try:
                await asyncio.wait_for(self.store.count(self.keys.prefix), timeout)
                return True
            except (TimeoutError, StoreError):
                return False

        ready, members = await asyncio.gather(quorum(), self.store.status())
        return ready, members

    def engine_stats(self) -> dict[str, Any]:
        return {sid: e.stats for sid, e in self._engines.items()}

    # -- sources --------------------------------------------------------------------------

    async def source(self, source_id: str) -> Source:
        """A source (subnet or zonal pool) from this node's cache, else etcd.

        A source never changes; one deleted since is caught by its bookings' guard.
        """
        return await self._source(source_id)

    async def _source(self, source_id: str) -> Source:
        src = self._sources.get(source_id)
        if src is None:
            src = self._sources[source_id] = await self.networks.get_source(source_id)
        return src

    def _engine(self, source: Source) -> SourceEngine:
        eng = self._engines.get(source.id)
        if eng is None or eng._closed:
            eng = self._engines[source.id] = SourceEngine(
                self.store, self.keys, source, committer=self.committer,
                pipeline=self.pipeline, rng=self._rng)
        return eng

    async def _zone_pools(self, region: str, zone: str) -> list[Source]:
        hit = self._zones.get((region, zone))
        if hit and time.monotonic() - hit[0] < _ZONE_CACHE_SECONDS:
            return hit[1]
        pools = await self.networks.list_zonal_pools(region, zone)
        self._zones[(region, zone)] = (time.monotonic(), pools)
        return pools

    async def _candidate_sources(self, req: BookRequest) -> tuple[list[Source], str]:
        """The sources a booking may come from, and the scope of its MAC uniqueness."""
        chosen = [n for n in ("zonal", "private_network_id", "subnet_id", "vpc_id")
                  if getattr(req, n)]
        if len(chosen) != 1:
            raise InvalidArgument("source", "give exactly one of zonal, private_network_id, "
                                            "subnet_id", "required" if not chosen else "constraint")
        family = 6 if req.is_ipv6 else 4
        if req.vpc_id:
            raise InvalidArgument("source.vpc_id", "booking from a VPC source is not supported; "
                                                   "book in one of its Private Networks")
        if req.zonal:
            if req.address:
                raise InvalidArgument("address", "a specific address can only be booked in a "
                                                 "Private Network")
            pools = [p for p in await self._zone_pools(req.region, req.zonal)
                     if p.network.version == family]
            if not pools:
                raise NotFound("zonal_pool", f"{req.zonal} IPv{family}")
            return pools, f"zone-{req.zonal}"
        if req.subnet_id:
            check_uuid(req.subnet_id, "source.subnet_id")
            try:
                src = await self._source(req.subnet_id)
            except NotFound:
                raise NotFound("subnet", req.subnet_id)
            if src.kind != SUBNET:
                raise NotFound("subnet", req.subnet_id)
            if src.network.version != family:
                raise InvalidArgument("is_ipv6", f"subnet {src.cidr} is IPv{src.network.version}")
            sources = [src]
        else:
            pn_id = check_uuid(req.private_network_id, "source.private_network_id")
            pn = await self.networks.cached_private_network(pn_id)
            sources = [await self._source(s.id) for s in pn.subnets]
            sources = [s for s in sources if s.network.version == family]
            if not sources:
                raise InvalidArgument("is_ipv6", f"the Private Network has no IPv{family} subnet")
        if sources[0].region != req.region:
            raise NotFound("private_network" if req.private_network_id else "subnet",
                           str(req.private_network_id or req.subnet_id))
        if sources[0].project_id != req.project_id:
            raise InvalidArgument("project_id", "must be the Private Network's project")
        if req.address:
            within = [s for s in sources if _contains(s, req.address)]
            if not within:
                sources[0].offset_of(req.address)  # raises the precise error
            sources = within
        return sources, f"pn-{sources[0].private_network_id}"

    # -- booking ---------------------------------------------------------------------------

    async def book(self, req: BookRequest) -> IPRecord:
        """Book an address (any free one, or `req.address`), optionally attached at once."""
        check_uuid(req.project_id, "project_id")
        if not isinstance(req.is_ipv6, bool):
            raise InvalidArgument("is_ipv6", "must be a boolean", "format")
        tags = check_tags(list(req.tags))
        if req.resource and not req.caller.may_manage(req.resource.type):
            raise PermissionDenied("attach", req.resource.type,
                                   f"only the product managing {req.resource.type} may attach it")
        if req.idempotency_key is not None:
            idem.check_key(req.idempotency_key)
        sources, mac_scope = await self._candidate_sources(req)
        chosen = sources[0].offset_of(req.address) if req.address else None
        fp = idem.fingerprint("book", {k: v for k, v in req.__dict__.items()
                                       if k not in ("idempotency_key", "caller")}
                              ) if req.idempotency_key else ""
        idem_key = (self.keys.idempotency(req.idempotency_scope, req.idempotency_key)
                    if req.idempotency_key else None)
        if idem_key:
            kv = await self.store.get(idem_key)
            if kv is not None:
                return await idem.replay(self.store, self.keys, kv.value, fp,
                                         req.caller.credential)
        lease = await self._leases.lease() if idem_key else 0
        order = list(sources)
        self._rng.shuffle(order)
        ip_id = new_id()
        for src in order:
            ts = now()
            res = req.resource
            record = IPRecord(
                id=ip_id, address="", project_id=req.project_id, is_ipv6=src.is_ipv6,
                region=req.region, source_id=src.id, source_kind=src.kind, created_at=ts,
                updated_at=ts, organization_id=req.organization_id, zone=src.zone,
                vpc_id=src.vpc_id, private_network_id=src.private_network_id, resource=res,
                attached_at=ts if res else None, tags=tags)
            booking = Booking(record=record, chosen=chosen, fingerprint=fp,
                              credential_key=req.caller.credential,
                              idempotency_key=idem_key, idempotency_lease=lease,
                              mac_key=self.keys.mac(res.mac_address, mac_scope)
                              if res and res.mac_address else None,
                              resource_key=self.keys.by_resource(res.id, ip_id) if res else None)
            try:
                return await self._engine(src).book(booking)
            except PoolExhausted:
                if src is order[-1]:
                    raise PoolExhausted(req.zonal or req.private_network_id or src.id)
            except NotFound:
                # The source went away (deleted through another node): answer in the
                # caller's terms and forget what this node cached.
                self._sources.pop(src.id, None)
                if req.private_network_id:
                    self.networks.forget(req.private_network_id)
                    raise NotFound("private_network", req.private_network_id)
                raise NotFound("zonal_pool" if req.zonal else "subnet",
                               str(req.zonal or src.id))
        raise AssertionError("unreachable")  # pragma: no cover

    # -- reading -----------------------------------------------------------------------------

    async def get_ip(self, ip_id: str) -> IPRecord:
        """The IP record, or NotFound."""
        check_uuid(ip_id, "ip_id")
        kv = await self.store.get(self.keys.ip(ip_id))
        if kv is None:
            raise NotFound("ip", ip_id)
        return IPRecord.from_json(json.loads(kv.value))

    async def list_ips(self, flt: IPFilter, order_by: str = "created_at_desc", page: int = 1,
                       page_size: int = 50) -> tuple[list[IPRecord], int]:
        """One page of the IPs that match `flt`, and how many match in all."""
        return await self._queries.list_ips(flt, order_by, page, page_size)

    async def reserved_ips(self, pn_id: str) -> list[dict[str, Any]]:
        """For each subnet of the Private Network, the addresses never handed out and why."""
        pn = await self.networks.get_private_network(pn_id)
        out = []
        for s in pn.subnets:
            src = pn.source(s)
            out.append({"subnet_id": s.id, "subnet": s.subnet,
                        "reserved": [r.__dict__ for r in src.reserved_addresses()]})
        return out

    # -- lifecycle ------------------------------------------------------------------------------

    async def _address_key(self, record: IPRecord) -> str:
        src = await self._source(record.source_id)
        offset = int(netaddr.IPNetwork(record.address).ip) - int(src.network.network)
        return self.keys.address(src.id, src.offset_key(offset))

    async def _read(self, ip_id: str, idem_key: str | None) -> tuple[st.KV, st.KV | None]:
        keys = [self.keys.ip(ip_id)] + ([idem_key] if idem_key else [])
        found = await self.store.get_many(keys)
        kv = found.get(keys[0])
        if kv is None:
            raise NotFound("ip", ip_id)
        return kv, found.get(idem_key) if idem_key else None

    async def _change(self, op: str, ip_id: str, payload: dict[str, Any],
                      decide: Any, caller: Caller, idem_key_name: str | None = None,
                      idem_scope: str = "") -> IPRecord:
        """Read the record, let `decide` build the change, commit it guarded; retry on races.

        `decide(record) -> (new_record, guards, ops)` raises to refuse the change.
        """
        check_uuid(ip_id, "ip_id")
        idem_key = None
        fp = idem.fingerprint(op, {"ip_id": ip_id, **payload})
        if idem_key_name is not None:
            idem_key = self.keys.idempotency(idem_scope, idem.check_key(idem_key_name))
        kv, seen_idem = await self._read(ip_id, idem_key)
        if not caller.sees(IPRecord.from_json(json.loads(kv.value))):
            raise NotFound("ip", ip_id)
        if seen_idem is not None:
            return await idem.replay(self.store, self.keys, seen_idem.value, fp,
                                     caller.credential)
        ip_key = self.keys.ip(ip_id)
        for _ in range(_RETRIES):
            current = IPRecord.from_json(json.loads(kv.value))
            new, guards, ops = await decide(current)
            guards = [st.unchanged(ip_key, kv.mod_revision), *guards]
            failure = [st.get(ip_key)]
            if caller.credential:
                guards.append(st.present(caller.credential))
                failure.append(st.get(caller.credential))
            if new is not None:
                ops = [st.put(ip_key, json.dumps(new.to_json())), *ops]
            if idem_key and new is not None:
                guards.append(st.absent(idem_key))
                ops.append(st.put(idem_key, idem.entry(fp, new), await self._leases.lease()))
                failure.append(st.get(idem_key))
            # Rides the node's committer with the bookings and other changes in flight.
            try:
                [resp] = await self.committer.commit([st.nested(guards, ops, failure)],
                                                     written_keys(ops))
            except StoreError:
                settled = await self._read_back(ip_key, kv, new)
                if settled is None:
                    continue  # not applied: try again
                return settled
            if resp.succeeded:
                return new if new is not None else current
            ip_kvs = resp.responses[0].response_range.kvs
            seen = [r.response_range.kvs for r in resp.responses[1:]]
            if caller.credential and not seen.pop(0):
                raise CredentialRevoked()
            if idem_key and seen[0]:
                return await idem.replay(self.store, self.keys, seen[0][0].value, fp,
                                         caller.credential)
            if not ip_kvs:
                raise NotFound("ip", ip_id)
            if ip_kvs[0].mod_revision == kv.mod_revision:
                # The record did not change: another guard (a MAC) refused.
                raise _mac_taken(new)
            kv = st._kv(ip_kvs[0])
        raise Conflict(f"IP {ip_id} kept changing; try again")

    async def _read_back(self, ip_key: str, seen: st.KV, new: IPRecord | None
                         ) -> IPRecord | None:
        """After an unknown outcome: the result if the change applied, None if it did not.

        The record's value is the token: a changed record carries a fresh updated_at,
        and a release removes it. Anything else cannot be told apart: OutcomeUnknown.
        """
        try:
            now_kv = await self.store.get(ip_key)
        except StoreError:
            raise OutcomeUnknown("etcd unreachable during a change; read the IP to see "
                                 "whether it applied, or retry with the idempotency key")
        if now_kv is not None and now_kv.mod_revision == seen.mod_revision:
            return None
        if new is None and now_kv is None:
            return IPRecord.from_json(json.loads(seen.value))  # released
        if new is not None and now_kv is not None and \
                json.loads(now_kv.value) == new.to_json():
            return new
        raise OutcomeUnknown("the IP changed while etcd was failing; read it to see whether "
                             "this change applied")

    async def update_ip(self, ip_id: str, tags: Any = None, reverses: Any = None,
                        caller: Caller = Caller()) -> IPRecord:
        """Change an IP's tags and/or reverse DNS entries."""
        new_tags = check_tags(tags) if tags is not None else None

        async def decide(r: IPRecord) -> Any:
            changes: dict[str, Any] = {}
            if new_tags is not None:
                changes["tags"] = new_tags
            if reverses is not None:
                changes["reverses"] = check_reverses(reverses, r.address)
            return r.with_changes(**changes), [], []

        if reverses is not None and not isinstance(reverses, (list, tuple)):
            raise InvalidArgument("reverses", "must be a list", "format")
        return await self._change("update", ip_id, {}, decide, caller)

    async def release(self, ip_id: str, caller: Caller = Caller()) -> None:
        """Release a detached IP: its address is free again."""
        async def decide(r: IPRecord) -> Any:
            _check_detached(r)
            return None, [], [*await self._deletes(r), st.put(self.keys.freed(r.source_id),
                                                              r.id)]

        await self._change("release", ip_id, {}, decide, caller)

    async def _deletes(self, r: IPRecord) -> list[Any]:
        return [st.delete(self.keys.ip(r.id)), st.delete(await self._address_key(r)),
                st.delete(self.keys.by_project(r.project_id, r.region, r.created_at, r.id)),
                st.delete(self.keys.created(r.source_id, r.created_at, r.id))]

    async def release_set(self, ip_ids: Sequence[str], caller: Caller = Caller()) -> None:
        """Release several detached IPs atomically: all of them, or none."""
        if not isinstance(ip_ids, (list, tuple)) or not ip_ids:
            raise InvalidArgument("ip_ids", "must be a non-empty list of IP ids", "required")
        if len(ip_ids) > MAX_RELEASE_SET:
            raise InvalidArgument("ip_ids", f"at most {MAX_RELEASE_SET} IPs at once")
        ids = list(dict.fromkeys(check_uuid(i, "ip_ids") for i in ip_ids))
        for _ in range(_RETRIES):
            extra = [caller.credential] if caller.credential else []
            found = await self.store.get_many([*(self.keys.ip(i) for i in ids), *extra])
            if caller.credential and caller.credential not in found:
                raise CredentialRevoked()
            guards, deletes = [st.present(k) for k in extra], []
            freed: dict[str, str] = {}
            for i in ids:
                kv = found.get(self.keys.ip(i))
                if kv is None:
                    raise NotFound("ip", i)
                r = IPRecord.from_json(json.loads(kv.value))
                if not caller.sees(r):
                    raise NotFound("ip", i)
                _check_detached(r)
                guards.append(st.unchanged(self.keys.ip(i), kv.mod_revision))
                deletes += await self._deletes(r)
                freed[r.source_id] = r.id
            deletes += [st.put(self.keys.freed(sid), ip) for sid, ip in freed.items()]
            room = st.MAX_TXN_OPS - len(guards)
            chunks = [st.nested([], deletes[j:j + room]) for j in range(0, len(deletes), room)]
            try:
                resp = await self.store.txn(guards, chunks)
            except StoreError:
                # Unknown outcome: all gone means it applied (it is all or none).
                try:
                    left = await self.store.get_many(self.keys.ip(i) for i in ids)
                except StoreError:
                    raise OutcomeUnknown("etcd unreachable while releasing; list the IPs "
                                         "to see whether they were released")
                if not left:
                    return
                if all(left.get(self.keys.ip(i)) == found.get(self.keys.ip(i))
                       for i in ids):
                    continue  # nothing applied: try again
                raise OutcomeUnknown("the IPs changed while etcd was failing")
            if resp.succeeded:
                return
        raise Conflict("the IPs kept changing; try again")

    async def attach(self, ip_id: str, resource: Resource, caller: Caller = Caller(),
                     idempotency_key: str | None = None,
                     idempotency_scope: str = "") -> IPRecord:
        """Attach a detached IP to a resource (a MAC holds one IP per Private Network)."""
        _check_resource(resource, caller, "attach")

        async def decide(r: IPRecord) -> Any:
            if r.resource is not None:
                if r.resource.same_as(resource):
                    return r, [], []
                raise PreconditionFailed("resource_already_attached",
                                         f"IP {r.id} is already attached to a resource; "
                                         "detach it first")
            guards, ops = self._attach_ops(r, resource)
            return r.with_changes(resource=resource, attached_at=now()), guards, ops

        return await self._change("attach", ip_id, {"resource": resource.__dict__}, decide,
                                  caller, idempotency_key, idempotency_scope)

    async def detach(self, ip_id: str, resource: Resource, caller: Caller = Caller(),
                     idempotency_key: str | None = None,
                     idempotency_scope: str = "") -> IPRecord:
        """Detach an IP from the resource it is attached to (which the caller must name)."""
        async def decide(r: IPRecord) -> Any:
            current = _check_attached_to(r, resource, caller, "detach")
            return (r.with_changes(resource=None, attached_at=None), [],
                    self._detach_ops(r, current))

        return await self._change("detach", ip_id, {"resource": resource.__dict__}, decide,
                                  caller, idempotency_key, idempotency_scope)

    async def move(self, ip_id: str, from_resource: Resource, to_resource: Resource | None,
                   caller: Caller = Caller(), idempotency_key: str | None = None,
                   idempotency_scope: str = "") -> IPRecord:
        """Move an IP from the resource it is attached to, to another one (or to none)."""
        if to_resource is not None:
            _check_resource(to_resource, caller, "move")

        async def decide(r: IPRecord) -> Any:
            current = _check_attached_to(r, from_resource, caller, "move")
            detach_ops = self._detach_ops(r, current)
            if to_resource is None:
                return r.with_changes(resource=None, attached_at=None), [], detach_ops
            guards, attach_ops = self._attach_ops(r, to_resource)
            # A key both deleted and written in one transaction is refused by etcd:
            # what stays the same (the resource id, the MAC) keeps its key as it is.
            kept = {k for k in (self._mac_key(r, current), self.keys.by_resource(current.id, r.id))
                    if k and k in {self._mac_key(r, to_resource),
                                   self.keys.by_resource(to_resource.id, r.id)}}
            guards = [g for g in guards if g.key.decode() not in kept]
            detach_ops = [o for o in detach_ops
                          if o.request_delete_range.key.decode() not in kept]
            attach_ops = [o for o in attach_ops if o.request_put.key.decode() not in kept]
            return (r.with_changes(resource=to_resource, attached_at=now()), guards,
                    detach_ops + attach_ops)

        return await self._change(
            "move", ip_id, {"from": from_resource.__dict__,
                            "to": to_resource.__dict__ if to_resource else None},
            decide, caller, idempotency_key, idempotency_scope)

    def _mac_key(self, r: IPRecord, res: Resource) -> str | None:
        if not res.mac_address:
            return None
        scope = f"pn-{r.private_network_id}" if r.private_network_id else f"zone-{r.zone}"
        return self.keys.mac(res.mac_address, scope)

    def _attach_ops(self, r: IPRecord, res: Resource) -> tuple[list[Any], list[Any]]:
        guards, ops = [], [st.put(self.keys.by_resource(res.id, r.id), "")]
        mac_key = self._mac_key(r, res)
        if mac_key:
            guards.append(st.absent(mac_key))
            ops.append(st.put(mac_key, r.id))
        return guards, ops

    def _detach_ops(self, r: IPRecord, res: Resource) -> list[Any]:
        ops = [st.delete(self.keys.by_resource(res.id, r.id))]
        mac_key = self._mac_key(r, res)
        if mac_key:
            ops.append(st.delete(mac_key))
        return ops


def _contains(src: Source, address: str) -> bool:
    try:
        return netaddr.IPAddress(address) in src.network
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return False


def _check_detached(r: IPRecord) -> None:
    if r.resource is not None:
        raise PreconditionFailed(STILL_ATTACHED, f"IP {r.id} is attached to a resource; "
                                                 "detach it before releasing it")


def _check_resource(resource: Resource, caller: Caller, action: str) -> None:
    if not isinstance(resource, Resource):
        raise InvalidArgument("resource", "is required", "required")
    if not caller.may_manage(resource.type):
        raise PermissionDenied(action, resource.type,
                               f"only the product managing {resource.type} resources may "
                               f"{action} them")


def _check_attached_to(r: IPRecord, named: Resource, caller: Caller, action: str) -> Resource:
    if not isinstance(named, Resource):
        raise InvalidArgument("resource", "is required", "required")
    if r.resource is None:
        raise PreconditionFailed("ip_not_attached", f"IP {r.id} is not attached")
    if not caller.may_manage(r.resource.type):
        raise PermissionDenied(action, r.resource.type,
                               f"only the product managing {r.resource.type} resources may "
                               f"{action} this IP")
    if not r.resource.same_as(named):
        raise PreconditionFailed("resource_mismatch",
                                 f"IP {r.id} is attached to another resource")
    return r.resource


def _mac_taken(new: IPRecord | None) -> Exception:
    mac = new.resource.mac_address if new and new.resource else ""
    return AlreadyExists("mac_address", mac or "", "this MAC address already has an IP in this "
                                                   "Private Network")
