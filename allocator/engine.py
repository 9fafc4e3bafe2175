"""The booking engine of one source: pick a candidate, commit it guarded, settle the outcome.

How a booking is served (DESIGN.md section 3), all in the caller's own coroutine:
1. A candidate comes from the node's free-set cache of the source (`SourceCache`),
   uniformly at random, or is the address asked for.
2. The booking's transaction is guarded by `create_revision == 0` on the address
   key, on the IP record key (so a booking retried after an unknown outcome can
   never apply twice), and on the idempotency and MAC keys it writes; its failure
   branch reads them all, so a loser learns by name what beat it.
3. The node's committer carries it to etcd with every other change in flight
   (group commit: one etcd request, one nested transaction per change); one too
   heavy to share a request (an IP with very many tags) goes alone.
4. A loser whose address was taken picks again; an empty cache is confirmed with
   one linearizable count before "exhausted".
5. A transaction that errors has an unknown outcome: the booking reads back its IP
   record key (the IP id is its token) before it answers anything.
6. The booking's event (`events`) is one more put in the same transaction: it exists
   exactly when the booking committed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from . import events as ev
from . import idempotency as idem
from . import retry
from .committer import MAX_NESTED, Committer
from .errors import (
    AlreadyExists,
    Conflict,
    CredentialRevoked,
    NotFound,
    OutcomeUnknown,
    PoolExhausted,
    StorageFull,
    StoreError,
)
from .keys import Keys
from .records import IPRecord
from .source_cache import SourceCache
from .sources import Source
from .store import MAX_TXN_OPS, Store
from .txn import GuardedTxn, TxnOutcome, commit

log = logging.getLogger(__name__)

# How long a booking that found no free candidate waits for an in-flight one to settle
# before it looks again.
SETTLE_WAIT = 0.5
# The operations a change may use inside a committer's request that carries the most
# nested transactions (etcd counts them against its --max-txn-ops with their parent's).
SHARED_TXN_OPS = MAX_TXN_OPS - MAX_NESTED


def commit_change(committer: Committer, store: Store, txn: GuardedTxn
                  ) -> Awaitable[TxnOutcome]:
    """Commit `txn` through the node's committer, or alone when it outweighs its share of
    a shared request: an IP with very many tags (one index key each) would make etcd
    refuse the whole request, every other change in it with it. (A plain function, as
    `Committer.commit` is: the booking's await chain stays one frame short.)"""
    if max(txn.write_count, len(txn.guard_names)) <= SHARED_TXN_OPS:
        return committer.commit(txn)
    return commit(store, txn)


@dataclass
class Booking:
    """One booking, prepared by the lifecycle: what to write, and the keys that guard it."""

    record: IPRecord  # address filled in per candidate
    chosen: int | None = None  # offset asked for explicitly
    idempotency_key: str | None = None  # full etcd key
    idempotency_lease: int = 0
    fingerprint: str = ""
    mac_key: str | None = None
    resource_key: str | None = None
    credential_key: str | None = None  # must exist for the booking to apply (API key)
    event_key: str | None = None  # the booking's event in the feed (None: no feed)
    event_lease: int = 0
    actor: str = "admin"  # who booked, as the feed records it
    started: float = field(default_factory=time.monotonic)


@dataclass
class EngineStats:
    """Counters a bench or an operator reads; no globals."""

    bookings: int = 0
    retries: int = 0  # bookings tried again after losing a race for an address
    exhaustion_checks: int = 0
    exhausted: int = 0  # bookings answered "the source is full"
    unknown_outcomes: int = 0  # commits whose outcome was read back from etcd


class SourceEngine:
    """Serves every booking of one source on this node."""

    def __init__(self, store: Store, keys: Keys, source: Source, committer: Committer,
                 rng: random.Random | None = None,
                 on_gone: Callable[[SourceEngine], None] | None = None) -> None:
        self.store, self.keys, self.source = store, keys, source
        self.committer = committer
        # Told once when etcd says the source was deleted (this engine is closed by then).
        self.on_gone = on_gone
        self.cache = SourceCache(store, keys, source, on_gone=self._gone)
        self.rng = rng or random.Random()
        self.stats = EngineStats()
        self._checks = itertools.count(1)
        self._check: asyncio.Task[None] | None = None
        self._check_number = 0
        self._full_at: int | None = None  # revision a count last found the source full at

    @property
    def closed(self) -> bool:
        return self.cache.closed

    def close(self) -> None:
        """Stop following the source (its watch); later bookings answer NotFound."""
        self.cache.close()
        if self._check is not None and self._check is not asyncio.current_task():
            self._check.cancel()

    def source_gone(self) -> None:
        """etcd says the source was deleted (a failed `source` guard, its meta key gone):
        close, and tell `on_gone`, once, so that the node lets this engine go."""
        self.cache.gone()  # closes the cache, then calls `_gone`

    def _gone(self) -> None:
        self.close()
        if self.on_gone is not None:
            self.on_gone(self)

    # -- one booking ------------------------------------------------------------------

    async def book(self, b: Booking) -> IPRecord:
        """Book one address of this source for `b`, or raise why not."""
        uncertain = False  # an attempt's outcome was unknown: giving up must say so
        offset: int | None = None
        async for _ in retry.BOOKING.attempts():
            if self.closed:
                raise NotFound("source", self.source.id)
            if offset is None:
                # The common case without a coroutine: a warm cache with a free address.
                if b.chosen is None and self.cache.free_count:
                    offset = self.cache.take(self.rng)
                if offset is None:
                    offset = await self._candidate(b)
                if offset is None:
                    continue
            txn = self._txn(b, offset)
            try:
                outcome = await commit_change(self.committer, self.store, txn)
            except StoreError as err:
                # An unknown outcome; or etcd full, which applies the write that crosses
                # its quota and answers it "full" all the same: read back.
                try:
                    found = await self._read_back(b)
                except BaseException:
                    self.cache.settle_held(offset)  # maybe written: keep it out
                    raise
                if found is not None:
                    self.cache.settle_held(offset)
                    return found
                if isinstance(err, StorageFull):
                    self.cache.give_back(offset)  # refused whole: nothing applied
                    raise
                # Not applied yet, and the IP-key guard means it never applies twice:
                # try again as is, same id, same candidate.
                uncertain = True
                continue
            except BaseException:
                # Cancelled with the commit in flight (the availability gate does it when
                # etcd goes away): maybe written. Keep the address out, and no longer in
                # flight, or a full source would wait on it for ever instead of counting.
                self.cache.settle_held(offset)
                raise
            result = await self._settle(b, offset, outcome)
            if result is not None:
                return result
            offset = None  # lost the address to another booking: pick again
            self.stats.retries += 1
        if offset is not None:
            self.cache.settle_held(offset)  # maybe written: keep it out
        if uncertain:
            raise OutcomeUnknown("etcd kept failing while booking; retry with the same "
                                 "idempotency key")
        raise Conflict(f"booking in source {self.source.id} lost too many races")

    async def _candidate(self, b: Booking) -> int | None:
        """The offset to try next, or None to look again (after a wait or a count)."""
        await self.cache.ready()
        seen = self.cache.generation
        if b.chosen is not None:
            if self.cache.claim(b.chosen):
                return b.chosen
            await self.cache.changed(seen, SETTLE_WAIT)  # this node has it in flight
            return None
        offset = self.cache.take(self.rng)
        if offset is not None:
            return offset
        if self.cache.in_flight:
            # Candidates out with other bookings may come back: wait for one to settle.
            await self.cache.changed(seen, SETTLE_WAIT)
        else:
            try:
                await self._confirm_exhaustion()  # raises PoolExhausted, or reloads the cache
            except PoolExhausted:
                self.stats.exhausted += 1
                raise
        return None

    def _txn(self, b: Booking, offset: int) -> GuardedTxn:
        record = b.record = b.record.with_address(self.source.address_at(offset))
        k = self.keys
        addr_key = k.address(self.source.id, self.source.offset_key(offset))
        ip_key = k.ip(record.id)
        txn = (GuardedTxn()
               .absent("address", addr_key)
               .absent("ip", ip_key)
               .present("source", k.source(self.source.id))
               .put(addr_key, record.id)
               .put(ip_key, record.stored())
               .put(k.by_project(record.project_id, record.region, record.created_at,
                                 record.id), "")
               .put(k.created(self.source.id, record.created_at, record.id), ""))
        for tag in record.tags:  # an untagged IP adds no operation
            txn.put(k.by_tag(tag, record.project_id, record.id), "")
        if record.expires_at:  # nor does one that never expires
            txn.put(k.expiry(record.expires_at, record.id), "")
        if b.credential_key:
            txn.present("credential", b.credential_key)
        if b.resource_key:
            txn.put(b.resource_key, "")
        if b.idempotency_key:
            txn.absent("idempotency", b.idempotency_key).put(
                b.idempotency_key, idem.entry(b.fingerprint, record), b.idempotency_lease)
        if b.mac_key:
            txn.absent("mac", b.mac_key).put(b.mac_key, record.id)
        if b.event_key:
            txn.put(b.event_key, ev.entry(ev.BOOKED, record, b.actor, record.created_at),
                    b.event_lease)
        return txn

    async def _settle(self, b: Booking, offset: int, out: TxnOutcome) -> IPRecord | None:
        """The booking's answer from its transaction's outcome; None: pick another address."""
        if out.succeeded:
            self.cache.settle_held(offset)
            self.stats.bookings += 1
            return b.record.at(out.revision)
        failed = out.failed
        if "address" in failed:
            self.cache.settle_held(offset)
        else:
            self.cache.give_back(offset)
        if "ip" in failed:  # an earlier attempt of this very booking was applied
            found = out.found("ip")
            assert found is not None
            self.stats.bookings += 1
            return IPRecord.read(found.value, found.mod_revision)
        if "source" in failed:  # the source was deleted: stop following it
            self.source_gone()
            raise NotFound("source", self.source.id)
        if "credential" in failed:
            raise CredentialRevoked()
        if "idempotency" in failed:  # the key was used before: answer the first result
            found = out.found("idempotency")
            assert found is not None
            return await idem.replay(self.store, self.keys, found.value, b.fingerprint,
                                     b.credential_key)
        if "mac" in failed:
            mac = b.record.resource.mac_address if b.record.resource else None
            raise AlreadyExists("mac_address", mac or "", "this MAC address already has an "
                                "IP in this Private Network")
        if b.chosen is not None:
            address = b.record.address.split("/")[0]
            raise AlreadyExists("ip", address, f"address {address} is already booked")
        return None

    async def _read_back(self, b: Booking) -> IPRecord | None:
        """After an unknown outcome: the record if the booking applied, None if it did not."""
        self.stats.unknown_outcomes += 1
        async for _ in retry.READ_BACK.attempts():
            try:
                kv = await self.store.get(self.keys.ip(b.record.id))
            except StoreError:
                continue
            if kv is None:
                return None
            self.stats.bookings += 1
            return IPRecord.read(kv.value, kv.mod_revision)
        raise OutcomeUnknown("etcd unreachable while booking; retry with the same "
                             "idempotency key")

    # -- "exhausted" --------------------------------------------------------------------

    async def _confirm_exhaustion(self) -> None:
        """Raise PoolExhausted if etcd agrees the source is full; else reload the cache.

        Concurrent callers share one count, but never one that started before they
        arrived: an answer must not predate the question.
        """
        arrived = self._check_number
        while True:
            if self.closed:
                raise NotFound("source", self.source.id)
            check = self._check
            if check is None or check.done():
                self._check_number = next(self._checks)
                check = self._check = asyncio.ensure_future(self._count())
            if self._check_number > arrived:
                await self._shared(check)
                return
            try:
                await self._shared(check)
            except PoolExhausted:
                pass

    async def _shared(self, check: asyncio.Task[None]) -> None:
        """Await a count shared with other bookings; NotFound when `close` cancelled it
        (the source was deleted) rather than this booking being cancelled."""
        try:
            await asyncio.shield(check)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if check.cancelled() and self.closed and not (task and task.cancelling()):
                raise NotFound("source", self.source.id) from None
            raise

    async def _count(self) -> None:
        self.stats.exhaustion_checks += 1
        if self._full_at is not None:
            # Full at revision R, and no release since (every release writes the
            # marker): still full now. Two keys in one read, not a count of the pool;
            # the source's own key tells a deleted source (whose marker is gone too).
            freed, meta = self.keys.freed(self.source.id), self.keys.source(self.source.id)
            found = await self.store.get_many([freed, meta])
            if meta not in found:
                self.source_gone()
                raise NotFound("source", self.source.id)
            marker = found.get(freed)
            if marker is None or marker.mod_revision <= self._full_at:
                raise PoolExhausted(self.source.id)
        held, revision = await self.store.count(self.keys.addresses(self.source.id))
        if held >= self.source.bookable_count:
            self._full_at = revision
            raise PoolExhausted(self.source.id)
        self._full_at = None
        # etcd has room this cache does not see (releases not yet watched, or another
        # node's bookings still in flight): read the source again.
        await self.cache.reload()
