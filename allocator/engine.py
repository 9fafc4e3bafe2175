"""The booking engine of one source: free-set cache, group commit, outcome settling.

How a booking is served (DESIGN.md section 3):
1. It waits in the source's queue. Whenever fewer than `pipeline` transactions are
   in flight, everything queued (up to what one etcd request can carry) leaves as
   one batch: one outer transaction with one nested transaction per booking.
2. Each nested transaction is guarded by `create_revision == 0` on the address key,
   on the IP record key (so a booking retried after an unknown outcome can never
   apply twice), and on the idempotency and MAC keys it writes. Its failure branch
   reads those keys, so a loser learns in the same round trip what beat it.
3. A loser whose address was taken gets another candidate and rides the next batch.
4. An empty cache is confirmed with one linearizable count before "exhausted".
5. A transaction that errors has an unknown outcome: the engine reads back the IP
   record keys (the IP id is the booking's token) before it answers anything.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from . import idempotency as idem
from . import store as st
from .committer import REQUEST_BYTES, Committer, written_keys
from .errors import (
    AlreadyExists,
    Conflict,
    CredentialRevoked,
    IPAMError,
    NotFound,
    OutcomeUnknown,
    PoolExhausted,
    StoreError,
)
from .freeset import FreeSet, free_set_for
from .keys import Keys
from .records import IPRecord
from .sources import Source

log = logging.getLogger(__name__)

MAX_BATCH = 64  # bookings of one source per batch (the committer packs batches)
MAX_ATTEMPTS = 200
BOOKING_DEADLINE = 30.0


@dataclass
class Booking:
    """One booking waiting for, or riding, a batch."""

    record: IPRecord  # address filled in per candidate
    chosen: int | None = None  # offset asked for explicitly
    idempotency_key: str | None = None  # full etcd key
    idempotency_lease: int = 0
    fingerprint: str = ""
    mac_key: str | None = None
    resource_key: str | None = None
    credential_key: str | None = None  # must exist for the booking to apply (API key)
    future: asyncio.Future[IPRecord] = field(default_factory=lambda: asyncio.get_running_loop()
                                              .create_future())
    candidate: int | None = None
    attempts: int = 0
    # An earlier attempt's transaction errored and may still apply later: the
    # IP-key guard keeps that from booking twice, but giving up must then say
    # "unknown", not "failed".
    uncertain: bool = False
    started: float = field(default_factory=time.monotonic)

    def fail(self, err: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(err)

    def succeed(self, record: IPRecord) -> None:
        if not self.future.done():
            self.future.set_result(record)


@dataclass
class EngineStats:
    """Counters a bench or an operator reads; no globals."""

    batches: int = 0
    bookings: int = 0
    retries: int = 0
    exhaustion_checks: int = 0
    reloads: int = 0
    unknown_outcomes: int = 0


class SourceEngine:
    """Serves every booking of one source on this node."""

    def __init__(self, store: st.EtcdStore, keys: Keys, source: Source, *,
                 committer: Committer | None = None,
                 pipeline: int = 2, rng: random.Random | None = None) -> None:
        self.store, self.keys, self.source = store, keys, source
        self.pipeline = pipeline
        self.committer = committer or Committer(store, inflight=pipeline)
        self.rng = rng or random.Random()
        self.stats = EngineStats()
        self._first, self._last = source.bookable_range
        self._cache: FreeSet | None = None
        self._loading: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._queue: deque[Booking] = deque()
        self._parked: list[Booking] = []
        self._checking: asyncio.Task[None] | None = None
        self._full_at: int | None = None  # revision a count last found the source full at
        self._inflight = 0
        self._riding: list[list[Booking]] = []  # batches whose transaction is out
        self._tasks: set[asyncio.Task[Any]] = set()
        self._addr_prefix = keys.addresses(source.id)
        self._closed = False

    # -- public ---------------------------------------------------------------------

    async def book(self, booking: Booking) -> IPRecord:
        """Queue `booking` and wait for its outcome."""
        if self._closed:
            raise NotFound("source", self.source.id)
        await self.warm()
        self._queue.append(booking)
        self._kick()
        return await booking.future

    async def warm(self) -> None:
        """Load the cache and start the watch, once (concurrent callers share the load)."""
        if self._cache is not None:
            return
        if self._loading is None or self._loading.done():
            self._loading = asyncio.ensure_future(self._load())
        await asyncio.shield(self._loading)

    async def close(self) -> None:
        """Stop the watch and fail whatever still waits."""
        self._closed = True
        for task in [self._watch, self._checking, *self._tasks]:
            if task is not None:
                task.cancel()
        for b in [*self._queue, *self._parked]:
            b.fail(NotFound("source", self.source.id))
        self._queue.clear()
        self._parked.clear()

    @property
    def free_count(self) -> int | None:
        return self._cache.free_count if self._cache else None

    # -- cache ------------------------------------------------------------------------

    def _offset(self, key: str) -> int:
        return int(key.rsplit("/", 1)[1], 16)

    async def _load(self) -> None:
        kvs, revision = await self.store.scan(self._addr_prefix, keys_only=True)
        cache = free_set_for(self._first, self._last, self.source.is_dense,
                             (self._offset(kv.key) for kv in kvs))
        # Candidates already handed to queued or riding bookings stay out of the new
        # set: a node must never hand one address to two of its own bookings.
        for b in [*self._queue, *(b for batch in self._riding for b in batch)]:
            if b.candidate is not None:
                cache.claim(b.candidate)
        self._cache = cache
        self.stats.reloads += 1
        if self._watch is not None:
            self._watch.cancel()
        self._watch = asyncio.ensure_future(self._follow(revision + 1))

    async def _follow(self, start: int) -> None:
        try:
            async for events, _ in self.store.watch(self._addr_prefix, start):
                cache = self._cache
                if cache is None:
                    continue
                freed = False
                for ev in events:
                    offset = self._offset(ev.key)
                    if ev.deleted:
                        cache.freed(offset)
                        freed = True
                    else:
                        cache.held(offset)
                if freed and self._parked:
                    # Released addresses: parked bookings try them before any count.
                    parked, self._parked = self._parked, []
                    self._queue.extend(parked)
                if events and self._queue:
                    self._kick()
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - whatever ended it, reload
            # Compaction, or a watch that could not be re-established: read the source
            # again (with backoff) rather than leave it without a cache.
            log.warning("source %s: watch ended (%s), reloading", self.source.id, err)
            self._cache = None
            self._loading = asyncio.ensure_future(self._reload_with_backoff())

    async def _reload_with_backoff(self) -> None:
        delay = 0.05
        while not self._closed:
            try:
                await self._load()
                self._kick()
                return
            except IPAMError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    # -- batching -----------------------------------------------------------------------

    def _kick(self) -> None:
        while self._inflight < self.pipeline and self._queue and self._cache is not None:
            batch = self._take_batch()
            if not batch:
                break
            self._inflight += 1
            self._riding.append(batch)
            task = asyncio.ensure_future(self._commit(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._cache is None and self._queue and not self._closed and (
                self._loading is None or self._loading.done()):
            task = asyncio.ensure_future(self._reload_then_kick())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _reload_then_kick(self) -> None:
        try:
            await self.warm()
        except IPAMError as err:
            for b in self._queue:
                b.fail(err)
            self._queue.clear()
            return
        self._kick()

    def _take_batch(self) -> list[Booking]:
        cache = self._cache
        assert cache is not None
        batch: list[Booking] = []
        used: set[str] = set()
        deferred: list[Booking] = []
        while self._queue and len(batch) < MAX_BATCH:
            b = self._queue.popleft()
            if b.future.done():  # its caller went away: free what it held
                if b.candidate is not None:
                    cache.give_back(b.candidate)
                continue
            unique = [k for k in (b.idempotency_key, b.mac_key) if k]
            if any(k in used for k in unique) or (
                    b.candidate is not None and f"@{b.candidate}" in used):
                deferred.append(b)
                continue
            if b.candidate is None:
                if b.chosen is not None:
                    if not cache.claim(b.chosen):
                        deferred.append(b)  # this node has it in flight: next round
                        continue
                    b.candidate = b.chosen
                else:
                    offset = cache.take(self.rng)
                    if offset is None:
                        self._park(b)
                        continue
                    b.candidate = offset
            used.update(unique)
            used.add(f"@{b.candidate}")
            batch.append(b)
        self._queue.extendleft(reversed(deferred))
        return batch

    def _park(self, b: Booking) -> None:
        """No free candidate in the cache: wait for in-flight batches, then count."""
        self._parked.append(b)
        if self._checking is None and self._inflight == 0:
            self._checking = asyncio.ensure_future(self._confirm_exhaustion())

    async def _confirm_exhaustion(self) -> None:
        # Bookings that park while the count is out wait for the next count: the
        # answer must not predate their arrival.
        parked, self._parked = self._parked, []
        try:
            self.stats.exhaustion_checks += 1
            if self._full_at is not None:
                # Full at revision R, and no release since (every release writes the
                # marker): still full now. One key, not a count of the whole pool.
                marker = await self.store.get(self.keys.freed(self.source.id))
                if marker is None or marker.mod_revision <= self._full_at:
                    for b in parked:
                        b.fail(PoolExhausted(self.source.id))
                    return
            held, revision = await self.store.count(self._addr_prefix)
            if held >= self.source.bookable_count:
                self._full_at = revision
                for b in parked:
                    b.fail(PoolExhausted(self.source.id))
                return
            self._full_at = None
            # etcd has room this cache does not see (releases not yet watched, or
            # another node's bookings still in flight): re-read the source, retry.
            await self._load()
            for b in parked:
                self._requeue(b)
        except StoreError as err:
            for b in parked:
                b.fail(err)
        finally:
            self._checking = None
            if self._parked and self._inflight == 0:
                self._checking = asyncio.ensure_future(self._confirm_exhaustion())
            self._kick()

    def _requeue(self, b: Booking) -> None:
        b.attempts += 1
        self.stats.retries += 1
        if b.attempts > MAX_ATTEMPTS or time.monotonic() - b.started > BOOKING_DEADLINE:
            if b.candidate is not None and self._cache is not None:
                self._cache.settle_held(b.candidate)  # maybe written: keep it out
            if b.uncertain:
                b.fail(OutcomeUnknown("etcd kept failing while booking; retry with the same "
                                      "idempotency key"))
            else:
                b.fail(Conflict(f"booking in source {self.source.id} lost too many races"))
            return
        self._queue.appendleft(b)

    # -- commit ---------------------------------------------------------------------------

    def _ops(self, b: Booking) -> st.rpc.RequestOp:
        assert b.candidate is not None
        record = b.record = replace(b.record, address=self.source.address_at(b.candidate))
        k = self.keys
        addr_key = k.address(self.source.id, self.source.offset_key(b.candidate))
        ip_key = k.ip(record.id)
        meta_key = k.source(self.source.id)
        compare = [st.absent(addr_key), st.absent(ip_key), st.present(meta_key)]
        success = [
            st.put(addr_key, record.id),
            st.put(ip_key, json.dumps(record.to_json())),
            st.put(k.by_project(record.project_id, record.region, record.created_at, record.id),
                   ""),
            st.put(k.created(self.source.id, record.created_at, record.id), ""),
        ]
        failure = [st.get(addr_key), st.get(ip_key), st.get(meta_key)]
        if b.credential_key:
            compare.append(st.present(b.credential_key))
            failure.append(st.get(b.credential_key))
        if b.resource_key:
            success.append(st.put(b.resource_key, ""))
        idem_value = idem.entry(b.fingerprint, record) if b.idempotency_key else b""
        for extra, value, lease in ((b.idempotency_key, idem_value, b.idempotency_lease),
                                    (b.mac_key, record.id.encode(), 0)):
            if extra:
                compare.append(st.absent(extra))
                success.append(st.put(extra, value, lease))
                failure.append(st.get(extra))
        return st.nested(compare, success, failure)

    async def _commit(self, batch: list[Booking]) -> None:
        try:
            self.stats.batches += 1
            ops = [self._ops(b) for b in batch]
            # One etcd request holds at most REQUEST_BYTES: a batch of large records
            # (many long tags) goes in several parts, each settled on its own.
            parts: list[tuple[list[Booking], list[st.rpc.RequestOp], int]] = [([], [], 0)]
            for b, op in zip(batch, ops, strict=True):
                n = op.ByteSize()
                if parts[-1][0] and parts[-1][2] + n > REQUEST_BYTES:
                    parts.append(([], [], 0))
                bookings, part_ops, size = parts[-1]
                bookings.append(b)
                part_ops.append(op)
                parts[-1] = (bookings, part_ops, size + n)
            await asyncio.gather(*(self._commit_part(p, o, n) for p, o, n in parts))
        except asyncio.CancelledError:
            for b in batch:  # shutting down: never leave a caller hanging
                b.fail(OutcomeUnknown("the node stopped while booking; retry with the "
                                      "same idempotency key"))
            raise
        except Exception as err:  # never leave a caller hanging
            log.exception("source %s: commit failed", self.source.id)
            for b in batch:
                b.fail(err if isinstance(err, IPAMError) else StoreError(str(err)))
        finally:
            self._inflight -= 1
            if batch in self._riding:
                self._riding.remove(batch)
            if self._parked and self._checking is None and self._inflight == 0:
                self._checking = asyncio.ensure_future(self._confirm_exhaustion())
            self._kick()

    async def _commit_part(self, batch: list[Booking], ops: list[st.rpc.RequestOp],
                           size: int) -> None:
        try:
            responses = await self.committer.commit(
                ops, frozenset().union(*(written_keys(op.request_txn.success) for op in ops)),
                size)
        except StoreError:
            await self._settle_unknown(batch)
            return
        for b, r in zip(batch, responses, strict=True):
            await self._settle(b, r)

    async def _settle(self, b: Booking, r: st.rpc.TxnResponse) -> None:
        cache = self._cache
        offset = b.candidate
        assert offset is not None
        if r.succeeded:
            if cache:
                cache.settle_held(offset)
            self.stats.bookings += 1
            b.succeed(b.record)
            return
        addr_kvs, ip_kvs = r.responses[0].response_range.kvs, r.responses[1].response_range.kvs
        extra = [x.response_range.kvs for x in r.responses[2:]]
        source_gone = not extra.pop(0)
        credential_gone = bool(b.credential_key) and not extra.pop(0)
        if cache:
            (cache.settle_held if addr_kvs else cache.give_back)(offset)
        b.candidate = None
        if ip_kvs:  # an earlier attempt of this very booking was applied
            self.stats.bookings += 1
            b.succeed(IPRecord.from_json(json.loads(ip_kvs[0].value)))
            return
        if source_gone:
            if not self._closed:  # the source was deleted: stop following it
                self._closed = True
                if self._watch is not None:
                    self._watch.cancel()
            b.fail(NotFound("source", self.source.id))
            return
        if credential_gone:
            b.fail(CredentialRevoked())
            return
        i = 0
        if b.idempotency_key:
            if extra[i]:
                await self._replay(b, extra[i][0].value)
                return
            i += 1
        if b.mac_key and extra[i]:
            mac = b.record.resource.mac_address if b.record.resource else None
            b.fail(AlreadyExists("mac_address", mac or "", "this MAC address already has an "
                                 "IP in this Private Network"))
            return
        if addr_kvs:
            if b.chosen is not None:
                b.fail(AlreadyExists("ip", b.record.address.split("/")[0],
                                     f"address {b.record.address.split('/')[0]} is already "
                                     "booked"))
                return
            self._requeue(b)
            return
        b.fail(Conflict("booking guard failed for an unknown reason"))  # pragma: no cover

    async def _replay(self, b: Booking, value: bytes) -> None:
        """The idempotency key was used before: answer what the first request got."""
        try:
            b.succeed(await idem.replay(self.store, self.keys, value, b.fingerprint,
                                        b.credential_key))
        except IPAMError as err:
            b.fail(err)

    async def _settle_unknown(self, batch: list[Booking]) -> None:
        """The batch's transaction errored: read back each booking's IP key."""
        self.stats.unknown_outcomes += 1
        keys = {self.keys.ip(b.record.id): b for b in batch}
        found: dict[str, st.KV] | None = None
        for delay in (0.0, 0.2, 0.5, 1.0, 2.0):
            await asyncio.sleep(delay)
            try:
                found = await self.store.get_many(keys)
                break
            except StoreError:
                continue
        cache = self._cache
        for key, b in keys.items():
            if found is None:
                if cache and b.candidate is not None:
                    cache.settle_held(b.candidate)  # conservatively: maybe written
                b.fail(OutcomeUnknown("etcd unreachable while booking; retry with the same "
                                      "idempotency key"))
            elif key in found:
                if cache and b.candidate is not None:
                    cache.settle_held(b.candidate)
                self.stats.bookings += 1
                b.succeed(IPRecord.from_json(json.loads(found[key].value)))
            else:
                # Not applied yet, and the IP-key guard means it never applies twice:
                # retry as is, same id, same candidate.
                b.uncertain = True
                self._requeue(b)
