"""An IP's life: book, update, release (one or a set), attach, detach, move, expire.

Booking resolves the ask to its sources once, checks the idempotency key once,
and hands one prepared `Booking` to the source's engine. A source deleted under a
booking (its guard failed, or its engine learnt it from etcd) sends the booking on to
the ask's other sources, resolving the ask again, fresh, once: a network that still
has a subnet with room books there, never answers "not found". A booking that named
its address gets, for an address whose subnet was deleted, what a booking a moment
later gets: InvalidArgument (400), the address is in no subnet of the network.
Every other change is
read-then-guarded-write (DESIGN.md section 3, point 4): the record is read, the
change decided on it, and committed with `unchanged(record)` plus the guards of
the keys it writes; the failure branch reads them all, so a retry needs no extra
round trip and a refusal names its guard.

Every change that commits writes its event (`events`) in its own transaction: one
put, on the feed's shared lease; a change that writes nothing (an attach to the
resource the IP is on already) writes no event either.
"""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import netaddr

from . import events as ev
from . import idempotency as idem
from . import retry
from .access import DETACH, RELEASE, UPDATE, Caller
from .asks import AddressAsk
from .committer import Committer
from .engine import Booking, SourceEngine, commit_change
from .errors import (
    STILL_ATTACHED,
    AlreadyExists,
    Conflict,
    CredentialRevoked,
    InvalidArgument,
    IPAMError,
    NotFound,
    OutcomeUnknown,
    PoolExhausted,
    PreconditionFailed,
    StorageFull,
    StoreError,
)
from .expiry import UNCHANGED, ExpiryChange, check_expires_at
from .keys import Keys
from .organizations import ProjectOrganizations
from .quotas import IPQuota
from .reads import CoalescedReads
from .records import (
    IfMatch,
    IPRecord,
    Resource,
    check_nic_mac,
    check_reverses,
    check_tags,
    check_uuid,
    new_id,
    now,
)
from .resolution import SourceResolver
from .sources import Source
from .store import KV, Store
from .txn import GuardedTxn, commit

MAX_RELEASE_SET = 100

# decide(current record, txn to add guards and writes to) -> the new record (None: gone)
Decide = Callable[[IPRecord, GuardedTxn], Awaitable[IPRecord | None]]


class Lifecycle:
    """Every change to IPs, on one node; shares the node's committer and engines."""

    # Admits each booking against its project's IP quota (None: no quota); set by IPAM.
    ip_quota: IPQuota | None = None
    # The organization of every IP booked: its project's (None: the network's or the
    # ask's, as named); set by IPAM.
    organizations: ProjectOrganizations | None = None
    # The node's coalesced single-key reads (None: plain reads); set by IPAM.
    reads: CoalescedReads | None = None

    def __init__(self, store: Store, keys: Keys, resolver: SourceResolver,
                 committer: Committer, idempotency_retention: int = idem.RETENTION, *,
                 event_leases: idem.LeaseClock | None = None) -> None:
        self.store, self.keys, self.resolver, self.committer = store, keys, resolver, committer
        self.engines: dict[str, SourceEngine] = {}
        # A subnet deleted through this node: its engine goes at once.
        resolver.networks.source_deleted.append(self._close_engine)
        self._leases = idem.LeaseClock(store, idempotency_retention)
        # The event feed's leases (None: no feed, no event written).
        self.event_leases = event_leases
        self._rng = random.Random()

    def _engine(self, source: Source) -> SourceEngine:
        eng = self.engines.get(source.id)
        if eng is None or eng.closed:
            eng = self.engines[source.id] = SourceEngine(
                self.store, self.keys, source, self.committer, self._rng,
                on_gone=self._engine_gone)
        return eng

    def _engine_gone(self, engine: SourceEngine) -> None:
        """etcd says an engine's source was deleted (the engine closed itself): let it go,
        and forget the source, so that the next booking resolves its ask afresh."""
        if self.engines.get(engine.source.id) is engine:
            del self.engines[engine.source.id]
        self.resolver.forget(engine.source)

    def _close_engine(self, source_id: str) -> None:
        """The source was deleted through this node: close its engine, if any."""
        engine = self.engines.pop(source_id, None)
        if engine is not None:
            engine.close()

    # -- booking ------------------------------------------------------------------------

    async def book(self, ask: AddressAsk, caller: Caller) -> IPRecord:
        """Book an address (any free one, or `ask.address`), optionally attached at once."""
        check_uuid(ask.project_id, "project_id")
        caller.require_book(ask.project_id, bool(ask.zonal), ask.resource)
        if not isinstance(ask.is_ipv6, bool):
            raise InvalidArgument("is_ipv6", "must be a boolean", "format")
        tags = check_tags(list(ask.tags))
        if ask.expires_at is not None and ask.resource is not None:
            raise InvalidArgument("expires_at", "an IP attached at booking never expires: "
                                  "give a resource or an expiry, not both")
        if ask.resource is not None:
            _check_resource(ask.resource)
        if ask.idempotency_key is None:
            return await self._book(ask, caller, tags, None, "")
        idem_key = self.keys.idempotency(ask.idempotency_scope,
                                         idem.check_key(ask.idempotency_key))
        fp = idem.fingerprint("book", ask.fingerprint_fields())
        try:
            return await self._book(ask, caller, tags, idem_key, fp)
        except IPAMError as refused:
            # Every booking transaction is guarded by the key's absence and replays the
            # first answer when it is there, so a first request costs no read of it. A
            # retry that cannot even try (the pool full since, the network deleted) reads
            # it here, and still gets the answer of the request that succeeded.
            try:
                kv = await self.store.get(idem_key)
            except StoreError:
                raise refused from None
            if kv is None:
                raise
            return await idem.replay(self.store, self.keys, kv.value, fp, caller.credential)

    async def _book(self, ask: AddressAsk, caller: Caller, tags: tuple[str, ...],
                    idem_key: str | None, fp: str) -> IPRecord:
        # Checked here, inside the idempotent retry's net: a retry after the time passed
        # still gets the first answer.
        expires_at = None if ask.expires_at is None else check_expires_at(ask.expires_at)
        sources, mac_scope = await self.resolver.resolve(ask, caller)
        organization = sources[0].organization_id or ask.organization_id
        if self.organizations is not None:  # the project's, whoever books
            organization = await self.organizations.settle(ask.project_id, organization)
        if self.ip_quota is not None:
            await self.ip_quota.admit(ask.project_id)
        if ask.address:  # a reserved address is refused before any lease is taken
            sources[0].offset_of(ask.address)
        lease = await self._leases.lease() if idem_key else 0
        event_lease = await self.event_leases.lease() if self.event_leases else 0
        actor = ev.actor_of(caller.access_key)
        res = ask.resource
        ip_id = new_id()
        tried: set[str] = set()
        full = False  # a source tried was full
        resolved_again = False
        while True:
            order = [s for s in sources if s.id not in tried]
            self._rng.shuffle(order)
            deleted = False  # a source tried was deleted under this booking
            for src in order:
                tried.add(src.id)
                ts = now()
                record = IPRecord(
                    id=ip_id, address="", project_id=ask.project_id, is_ipv6=src.is_ipv6,
                    region=ask.region, source_id=src.id, source_kind=src.kind,
                    created_at=ts, updated_at=ts, organization_id=organization,
                    zone=src.zone, vpc_id=src.vpc_id,
                    private_network_id=src.private_network_id, resource=res,
                    attached_at=ts if res else None, tags=tags,
                    booked_by_product=caller.booked_by_product, expires_at=expires_at)
                booking = Booking(
                    record=record, chosen=src.offset_of(ask.address) if ask.address else None,
                    fingerprint=fp, credential_key=caller.credential,
                    idempotency_key=idem_key, idempotency_lease=lease,
                    mac_key=self.keys.mac(res.mac_address, mac_scope, src.is_ipv6)
                    if res and res.mac_address else None,
                    resource_key=self.keys.by_resource(res.id, ip_id) if res else None,
                    event_key=ev.event_key(self.keys, ask.project_id, ip_id)
                    if self.event_leases else None,
                    event_lease=event_lease, actor=actor)
                try:
                    return await self._engine(src).book(booking)
                except PoolExhausted:
                    full = True
                except NotFound as err:
                    if err.resource != "source":
                        raise
                    # Deleted through some node: this node forgets it (and its network).
                    self.resolver.forget(src)
                    deleted = True
            if not deleted or resolved_again:
                break
            # Read the ask's sources again, fresh, once: the network's other subnets (or
            # the zone's other pools), one added since; or the caller's answer (the
            # network gone, the address in no subnet of it any more).
            resolved_again = True
            sources, _ = await self.resolver.resolve(ask, caller, fresh=True)
        if full:
            raise PoolExhausted(ask.zonal or ask.private_network_id or str(ask.subnet_id))
        if ask.private_network_id:
            raise NotFound("private_network", ask.private_network_id)
        raise NotFound("zonal_pool" if ask.zonal else "subnet", str(ask.zonal or ask.subnet_id))

    # -- changes of one IP --------------------------------------------------------------

    async def _change(self, op: str, ip_id: str, payload: dict[str, Any], decide: Decide,
                      caller: Caller, idem_key_name: str | None = None,
                      idem_scope: str = "", if_match: IfMatch | None = None,
                      actor: str | None = None) -> IPRecord:
        """Read the record, let `decide` build the change, commit it guarded; retry on races.

        `if_match`: the versions (mod revisions) the IP must be at, else nothing changes
        and PreconditionFailed says so; a race lost to another change fails it too, where
        an unconditional change would decide again on the new version. `actor`: who the
        event names (None: the caller's access key)."""
        check_uuid(ip_id, "ip_id")
        caller.require_any_ip_change()
        idem_key = None
        fp = idem.fingerprint(op, {"ip_id": ip_id, **payload})
        if idem_key_name is not None:
            idem_key = self.keys.idempotency(idem_scope, idem.check_key(idem_key_name))
        ip_key = self.keys.ip(ip_id)
        if idem_key is None and self.reads is not None:
            # Changes of many IPs at once (a burst of releases) share their reads too.
            kv = await self.reads.get(ip_key)
            found = {ip_key: kv} if kv is not None else {}
        else:
            found = await self.store.get_many([ip_key] + ([idem_key] if idem_key else []))
            kv = found.get(ip_key)
        if kv is None or not caller.sees(_record(kv)):
            raise NotFound("ip", ip_id)
        if idem_key and idem_key in found:
            return await idem.replay(self.store, self.keys, found[idem_key].value, fp,
                                     caller.credential)
        async for _ in retry.RACES.attempts():
            if if_match is not None and kv.mod_revision not in if_match:
                raise PreconditionFailed("if_match", f"IP {ip_id} is at version "
                                         f"{kv.mod_revision}, not the one If-Match names")
            current = _record(kv)
            txn = GuardedTxn().unchanged("record", ip_key, kv.mod_revision)
            new = await decide(current, txn)
            if caller.credential:
                txn.present("credential", caller.credential)
            if new is not None and new is not current:
                txn.put(ip_key, new.stored())
            if new is not current and self.event_leases is not None:
                self._event(txn, ev.KIND_OF_CHANGE[op], current if new is None else new,
                            actor or ev.actor_of(caller.access_key),
                            await self.event_leases.lease())
            if idem_key and new is not None:
                txn.absent("idempotency", idem_key).put(
                    idem_key, idem.entry(fp, new), await self._leases.lease())
            # Rides the node's committer with the bookings and other changes in flight.
            try:
                out = await commit_change(self.committer, self.store, txn)
            except StorageFull:
                # etcd applies the write that crosses its quota and answers it "full" all
                # the same: read back; not applied, it is a refusal (never retried).
                settled = await self._read_back(ip_key, kv, new)
                if settled is None:
                    raise
                return settled
            except StoreError:
                settled = await self._read_back(ip_key, kv, new)
                if settled is None:
                    continue  # not applied: try again
                return settled
            if out.succeeded:
                return current if new is None or new is current else new.at(out.revision)
            if "credential" in out.failed:
                raise CredentialRevoked()
            if "idempotency" in out.failed:
                seen = out.found("idempotency")
                assert seen is not None
                return await idem.replay(self.store, self.keys, seen.value, fp,
                                         caller.credential)
            if "record" in out.failed:
                changed = out.found("record")
                if changed is None:
                    raise NotFound("ip", ip_id)
                kv = changed
                continue
            if "mac" in out.failed:
                raise _mac_taken(new)
            raise Conflict(f"IP {ip_id}: guard(s) {sorted(out.failed)} failed")
        raise Conflict(f"IP {ip_id} kept changing; try again")

    def _event(self, txn: GuardedTxn, kind: str, r: IPRecord, actor: str, lease: int) -> None:
        """The event of a change of `r` (the IP as it is after it; as it was, released)."""
        at = r.updated_at if kind not in (ev.RELEASED, ev.EXPIRED) else now()
        txn.put(ev.event_key(self.keys, r.project_id, r.id), ev.entry(kind, r, actor, at),
                lease)

    async def _read_back(self, ip_key: str, seen: KV, new: IPRecord | None
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
            return _record(seen)  # released
        if new is not None and now_kv is not None and \
                json.loads(now_kv.value) == new.to_json():
            return new.at(now_kv.mod_revision)
        raise OutcomeUnknown("the IP changed while etcd was failing; read it to see whether "
                             "this change applied")

    async def update_ip(self, ip_id: str, tags: Any = None, reverses: Any = None,
                        caller: Caller = Caller(), if_match: IfMatch | None = None,
                        expires_at: ExpiryChange = UNCHANGED) -> IPRecord:
        """Change an IP's tags and/or reverse DNS entries, and set (a time) or clear (None)
        the expiry of an unattached IP."""
        new_tags = check_tags(tags) if tags is not None else None
        if reverses is not None and not isinstance(reverses, (list, tuple)):
            raise InvalidArgument("reverses", "must be a list", "format")
        if isinstance(expires_at, str):
            expires_at = check_expires_at(expires_at)

        async def decide(r: IPRecord, txn: GuardedTxn) -> IPRecord:
            caller.require_ip(UPDATE, r)
            changes: dict[str, Any] = {}
            if new_tags is not None and new_tags != r.tags:
                changes["tags"] = new_tags
                self._retag(txn, r, new_tags)
            if reverses is not None:
                new_reverses = check_reverses(reverses, r.address)
                if new_reverses != r.reverses:
                    changes["reverses"] = new_reverses
            if expires_at is not UNCHANGED:
                # Whoever may update an unattached IP may release it too (access.RULES).
                new_expiry = self._re_expire(txn, r, expires_at)
                if new_expiry != r.expires_at:
                    changes["expires_at"] = new_expiry
            # An update that changes nothing writes nothing: no new version, no event.
            return r.with_changes(**changes) if changes else r

        return await self._change("update", ip_id, {}, decide, caller, if_match=if_match)

    async def release(self, ip_id: str, caller: Caller = Caller(),
                      if_match: IfMatch | None = None) -> None:
        """Release a detached IP: its address is free again."""
        async def decide(r: IPRecord, txn: GuardedTxn) -> None:
            caller.require_ip(RELEASE, r)
            _check_detached(r)
            await self._delete(txn, r)
            self._mark_freed(txn, r)

        await self._change("release", ip_id, {}, decide, caller, if_match=if_match)

    async def expire(self, ip_id: str, index_key: str) -> bool:
        """Release the IP the expiry index key `index_key` names, as `release` does, if it
        is still unattached and still expiring then; True when this released it.

        Guarded by the record's version like every change: an attach (or a PATCH, or a
        release) that commits first makes this read the record again and find it no
        longer due, and an attach that comes after finds no IP. A key that no longer
        matches its IP (or has none) is deleted, so it is not read again."""
        released = False

        async def decide(r: IPRecord, txn: GuardedTxn) -> IPRecord | None:
            nonlocal released
            released = (r.resource is None and r.expires_at is not None
                        and self.keys.expiry(r.expires_at, r.id) == index_key)
            if not released:
                txn.delete(index_key)  # gone already with the change that won
                return r
            await self._delete(txn, r)
            self._mark_freed(txn, r)
            return None

        try:
            await self._change("expire", ip_id, {}, decide, Caller(), actor=ev.EXPIRER)
        except NotFound:  # released meanwhile, the key with it; or a key without its IP
            ip_key = self.keys.ip(ip_id)
            await commit_change(self.committer, self.store,
                                GuardedTxn().absent("ip", ip_key).delete(index_key))
            return False
        return released

    def _mark_freed(self, txn: GuardedTxn, r: IPRecord) -> None:
        """Tell "exhausted" checks that `r`'s source may have room again (engine._count):
        a marker, so that the releases of one source can share a request."""
        txn.mark(self.keys.freed(r.source_id), r.id, self.keys.source(r.source_id))

    async def _delete(self, txn: GuardedTxn, r: IPRecord) -> None:
        src = await self.resolver.source(r.source_id)
        offset = int(netaddr.IPNetwork(r.address).ip) - int(src.network.network)
        (txn.delete(self.keys.ip(r.id))
            .delete(self.keys.address(src.id, src.offset_key(offset)))
            .delete(self.keys.by_project(r.project_id, r.region, r.created_at, r.id))
            .delete(self.keys.created(r.source_id, r.created_at, r.id)))
        for tag in r.tags:
            txn.delete(self.keys.by_tag(tag, r.project_id, r.id))
        if r.expires_at:
            txn.delete(self.keys.expiry(r.expires_at, r.id))

    def _re_expire(self, txn: GuardedTxn, r: IPRecord, expires_at: str | None) -> str | None:
        """Move the IP's expiry index key to `expires_at` (None: none); the new expiry.
        Only an unattached IP expires: attaching clears it, and an attached IP refuses one."""
        if expires_at is not None and r.resource is not None:
            raise PreconditionFailed(STILL_ATTACHED, f"IP {r.id} is attached to a resource; "
                                     "detach it before giving it an expiry")
        if expires_at != r.expires_at:  # the same time keeps its key as it is
            if r.expires_at:
                txn.delete(self.keys.expiry(r.expires_at, r.id))
            if expires_at:
                txn.put(self.keys.expiry(expires_at, r.id), "")
        return expires_at

    def _retag(self, txn: GuardedTxn, r: IPRecord, tags: Sequence[str]) -> None:
        """Move the IP's tag-index keys from its tags to `tags`; a tag it keeps keeps its key
        (etcd refuses a key both deleted and written in one transaction)."""
        for tag in r.tags:
            if tag not in tags:
                txn.delete(self.keys.by_tag(tag, r.project_id, r.id))
        for tag in tags:
            if tag not in r.tags:
                txn.put(self.keys.by_tag(tag, r.project_id, r.id), "")

    async def release_set(self, ip_ids: Sequence[str], caller: Caller = Caller()) -> None:
        """Release several detached IPs atomically: all of them, or none."""
        if not isinstance(ip_ids, (list, tuple)) or not ip_ids:
            raise InvalidArgument("ip_ids", "must be a non-empty list of IP ids", "required")
        caller.require_any_ip_change()
        if len(ip_ids) > MAX_RELEASE_SET:
            raise InvalidArgument("ip_ids", f"at most {MAX_RELEASE_SET} IPs at once")
        ids = list(dict.fromkeys(check_uuid(i, "ip_ids") for i in ip_ids))
        async for _ in retry.RACES.attempts():
            extra = [caller.credential] if caller.credential else []
            found = await self.store.get_many([*(self.keys.ip(i) for i in ids), *extra])
            if caller.credential and caller.credential not in found:
                raise CredentialRevoked()
            txn = GuardedTxn()
            if caller.credential:
                txn.present("credential", caller.credential)
            event_lease = await self.event_leases.lease() if self.event_leases else 0
            freed: dict[str, str] = {}
            for i in ids:
                kv = found.get(self.keys.ip(i))
                if kv is None or not caller.sees(r := _record(kv)):
                    raise NotFound("ip", i)
                caller.require_ip(RELEASE, r)
                _check_detached(r)
                txn.unchanged(f"record {i}", self.keys.ip(i), kv.mod_revision)
                await self._delete(txn, r)
                if self.event_leases is not None:
                    self._event(txn, ev.RELEASED, r, ev.actor_of(caller.access_key),
                                event_lease)
                freed[r.source_id] = r.id
            for sid, ip in freed.items():
                txn.put(self.keys.freed(sid), ip)
            try:
                out = await commit(self.store, txn)
            except StoreError as err:
                # Unknown outcome: all gone means it applied (it is all or none). So too
                # when etcd said it is full: it applies the write that crosses its quota
                # and answers it "full" all the same.
                try:
                    left = await self.store.get_many(self.keys.ip(i) for i in ids)
                except StoreError:
                    raise OutcomeUnknown("etcd unreachable while releasing; list the IPs "
                                         "to see whether they were released") from None
                if not left:
                    return
                if all(left.get(self.keys.ip(i)) == found.get(self.keys.ip(i)) for i in ids):
                    if isinstance(err, StorageFull):
                        raise  # refused whole: nothing applied, and never retried
                    continue  # nothing applied: try again
                raise OutcomeUnknown("the IPs changed while etcd was failing") from None
            if out.succeeded:
                return
            if "credential" in out.failed:
                raise CredentialRevoked()
        raise Conflict("the IPs kept changing; try again")

    async def attach(self, ip_id: str, resource: Resource, caller: Caller = Caller(),
                     idempotency_key: str | None = None, idempotency_scope: str = "",
                     if_match: IfMatch | None = None) -> IPRecord:
        """Attach a detached IP to a resource (a MAC holds one IP per Private Network)."""
        _check_resource(resource)

        async def decide(r: IPRecord, txn: GuardedTxn) -> IPRecord:
            caller.require_attach(r, resource)
            if r.resource is not None:
                if r.resource == resource:  # a retry: it is attached already
                    return r
                if r.resource.same_as(resource):
                    raise PreconditionFailed(
                        "resource_already_attached",
                        f"IP {r.id} is already attached to this resource, with another "
                        f"{_differing(r.resource, resource)}; move it (from the resource as "
                        "attached to the resource as named) to change that")
                raise PreconditionFailed("resource_already_attached",
                                         f"IP {r.id} is already attached to a resource; "
                                         "detach it first")
            self._attach(txn, r, resource)
            return r.with_changes(resource=resource, attached_at=now(), expires_at=None)

        return await self._change("attach", ip_id, {"resource": resource.__dict__}, decide,
                                  caller, idempotency_key, idempotency_scope, if_match)

    async def detach(self, ip_id: str, resource: Resource, caller: Caller = Caller(),
                     idempotency_key: str | None = None, idempotency_scope: str = "",
                     if_match: IfMatch | None = None) -> IPRecord:
        """Detach an IP from the resource it is attached to (which the caller must name)."""
        async def decide(r: IPRecord, txn: GuardedTxn) -> IPRecord:
            caller.require_ip(DETACH, r)
            self._detach(txn, r, _check_attached_to(r, resource))
            return r.with_changes(resource=None, attached_at=None)

        return await self._change("detach", ip_id, {"resource": resource.__dict__}, decide,
                                  caller, idempotency_key, idempotency_scope, if_match)

    async def move(self, ip_id: str, from_resource: Resource, to_resource: Resource | None,
                   caller: Caller = Caller(), idempotency_key: str | None = None,
                   idempotency_scope: str = "", if_match: IfMatch | None = None
                   ) -> IPRecord:
        """Move an IP from the resource it is attached to, to another one (or to none)."""
        if to_resource is not None:
            _check_resource(to_resource)

        async def decide(r: IPRecord, txn: GuardedTxn) -> IPRecord:
            caller.require_move(r, to_resource)
            current = _check_attached_to(r, from_resource)
            self._detach(txn, r, current)
            if to_resource is None:
                return r.with_changes(resource=None, attached_at=None)
            self._attach(txn, r, to_resource)
            # A key both deleted and written in one transaction is refused by etcd:
            # what stays the same (the resource id, the MAC) keeps its key as it is.
            before = {self._mac_key(r, current), self.keys.by_resource(current.id, r.id)}
            after = {self._mac_key(r, to_resource), self.keys.by_resource(to_resource.id, r.id)}
            txn.without({k for k in before & after if k})
            return r.with_changes(resource=to_resource, attached_at=now(), expires_at=None)

        return await self._change(
            "move", ip_id, {"from": from_resource.__dict__,
                            "to": to_resource.__dict__ if to_resource else None},
            decide, caller, idempotency_key, idempotency_scope, if_match)

    def _mac_key(self, r: IPRecord, res: Resource) -> str | None:
        if not res.mac_address:
            return None
        scope = f"pn-{r.private_network_id}" if r.private_network_id else f"zone-{r.zone}"
        return self.keys.mac(res.mac_address, scope, r.is_ipv6)

    def _attach(self, txn: GuardedTxn, r: IPRecord, res: Resource) -> None:
        """Index the IP under `res`; an attached IP never expires: its expiry key goes
        (the caller's new record has none)."""
        self._re_expire(txn, r, None)
        txn.put(self.keys.by_resource(res.id, r.id), "")
        mac_key = self._mac_key(r, res)
        if mac_key:
            txn.absent("mac", mac_key).put(mac_key, r.id)

    def _detach(self, txn: GuardedTxn, r: IPRecord, res: Resource) -> None:
        txn.delete(self.keys.by_resource(res.id, r.id))
        mac_key = self._mac_key(r, res)
        if mac_key:
            txn.delete(mac_key)


def _record(kv: KV) -> IPRecord:
    return IPRecord.read(kv.value, kv.mod_revision)


def _check_detached(r: IPRecord) -> None:
    if r.resource is not None:
        raise PreconditionFailed(STILL_ATTACHED, f"IP {r.id} is attached to a resource; "
                                                 "detach it before releasing it")


def _check_resource(resource: Resource) -> None:
    """A resource an IP is to be attached to: one, and with a NIC's MAC if any."""
    if not isinstance(resource, Resource):
        raise InvalidArgument("resource", "is required", "required")
    if resource.mac_address:
        check_nic_mac(resource.mac_address)


def _differing(held: Resource, named: Resource) -> str:
    """What tells `named` from `held`, the same resource: "name 'a' (not 'b')", ..."""
    return " and ".join(
        f"{what} {getattr(held, attr)!r} (not {getattr(named, attr)!r})"
        for what, attr in (("MAC address", "mac_address"), ("name", "name"))
        if getattr(held, attr) != getattr(named, attr))


def _check_attached_to(r: IPRecord, named: Resource) -> Resource:
    if not isinstance(named, Resource):
        raise InvalidArgument("resource", "is required", "required")
    if r.resource is None:
        raise PreconditionFailed("ip_not_attached", f"IP {r.id} is not attached")
    if not r.resource.same_as(named):
        raise PreconditionFailed("resource_mismatch",
                                 f"IP {r.id} is attached to another resource")
    return r.resource


def _mac_taken(new: IPRecord | None) -> Exception:
    mac = new.resource.mac_address if new and new.resource else ""
    return AlreadyExists("mac_address", mac or "", "this MAC address already has an IP in this "
                                                   "Private Network")
