"""A node's free-set cache of one source: loaded once, kept fresh by an etcd watch.

The cache is a hint, never the truth (the etcd guard is): it lets a booking pick a
free address uniformly at random in O(1) with no etcd read (DESIGN.md section 3).

- `ready()` loads it on first use: a keys-only scan of the source's address keys
  pinned to one revision, then a watch from the next revision.
- The watch covers the source's whole prefix, its `meta` key with its addresses, so
  that this node learns the source was deleted (through any node) and lets it go
  (`on_gone`: the engine closes and its node forgets it) instead of holding a free set
  and a watch for nothing. A source deleted before a load (or while a lost watch was
  down) is caught by the load itself: it reads the `meta` key after its scan. The
  price: the watch also carries the source's creation-index and `freed` keys, one
  more event per booking and two per release, in the same watch responses.
- A candidate handed out by `take()` or `claim()` stays out of the free set until the
  booking settles it (`settle_held`, `give_back`), across reloads too: a node never
  hands one address to two of its own bookings.
- When the watch ends (compaction, a lost stream), the cache reloads with backoff.
- `changed(since)` lets a booking that found no free candidate wait for one to come back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Callable

from . import retry
from .errors import IPAMError, NotFound
from .freeset import FreeSet, free_set_for
from .keys import Keys
from .sources import Source
from .store import Store, WatchEvent

log = logging.getLogger(__name__)


class SourceCache:
    """The free set of one source on this node, and the watch that keeps it current."""

    def __init__(self, store: Store, keys: Keys, source: Source,
                 on_gone: Callable[[], None] | None = None) -> None:
        self.store, self.keys, self.source = store, keys, source
        self.on_gone = on_gone  # called once, when etcd says the source was deleted
        self.reloads = 0
        self._first, self._last = source.bookable_range
        self._prefix = keys.addresses(source.id)
        self._meta = keys.source(source.id)
        # Every key of the source, its meta key with its addresses (wherever `Keys` puts
        # them, their common prefix holds both).
        self._watched = os.path.commonprefix([self._prefix, self._meta])
        self._set: FreeSet | None = None
        self._in_flight: set[int] = set()
        self._loading: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self.generation = 0  # grows whenever a candidate may have come back
        self.closed = False

    # -- life ---------------------------------------------------------------------

    async def ready(self) -> None:
        """Load the free set and start the watch, once (concurrent callers share the load);
        NotFound("source") once the cache is closed (the source was deleted, or the node
        is closing)."""
        if self._set is not None:
            return
        if self.closed:
            raise NotFound("source", self.source.id)
        if self._loading is None or self._loading.done():
            self._loading = asyncio.ensure_future(self.reload())
        loading = self._loading
        try:
            await asyncio.shield(loading)
        except asyncio.CancelledError:
            # The load was cancelled by `close`, not this caller: its source is gone.
            if loading.cancelled() and self.closed and not _cancelling():
                raise NotFound("source", self.source.id) from None
            raise

    async def reload(self) -> None:
        """Read the source's held addresses again, at one revision, and watch from the next.

        NotFound("source") (and the cache closed) when the source is deleted: its meta
        key, read after the scan, tells; present then, the watch from the scan's next
        revision sees any later delete."""
        kvs, revision = await self.store.scan(self._prefix, keys_only=True)
        if await self.store.get(self._meta) is None:
            self.gone()
        if self.closed:  # deleted, or closed while this read was out: start no watch
            raise NotFound("source", self.source.id)
        fresh = free_set_for(self._first, self._last, self.source.is_dense,
                             (self.keys.address_offset(kv.key) for kv in kvs))
        for offset in self._in_flight:
            fresh.claim(offset)
        self._set = fresh
        self.reloads += 1
        if self._watch is not None:
            self._watch.cancel()
        self._watch = asyncio.ensure_future(self._follow(revision + 1))
        self._signal()

    def close(self) -> None:
        """Stop the watch; the cache is of no further use."""
        self.closed = True
        for task in (self._watch, self._loading):
            # The watch may be what closes it (`gone`): it returns by itself.
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        self._signal()

    def gone(self) -> None:
        """etcd says the source was deleted: close, and tell `on_gone` (once)."""
        if self.closed:
            return
        self.close()
        if self.on_gone is not None:
            self.on_gone()

    # -- candidates -----------------------------------------------------------------

    @property
    def free_count(self) -> int | None:
        return self._set.free_count if self._set is not None else None

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def take(self, rng: random.Random) -> int | None:
        """A free offset picked uniformly at random, now in flight; None when none is free."""
        if self._set is None:
            return None
        offset = self._set.take(rng)
        if offset is not None:
            self._in_flight.add(offset)
        return offset

    def claim(self, offset: int) -> bool:
        """Put a chosen offset in flight; False if this node already has it in flight."""
        if offset in self._in_flight or (self._set is not None and not self._set.claim(offset)):
            return False
        self._in_flight.add(offset)
        return True

    def settle_held(self, offset: int) -> None:
        """An in-flight offset turned out held (ours, someone else's, or maybe written)."""
        self._in_flight.discard(offset)
        if self._set is not None:
            self._set.settle_held(offset)
        self._signal()

    def give_back(self, offset: int) -> None:
        """An in-flight offset was not written: free again."""
        self._in_flight.discard(offset)
        if self._set is not None:
            self._set.give_back(offset)
        self._signal()

    async def changed(self, since: int, timeout: float) -> None:
        """Wait (at most `timeout` s) until `generation` moves past `since`: a candidate
        settled, an address was freed or the cache reloaded."""
        if self.generation != since:
            return
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    def _signal(self) -> None:
        self.generation += 1
        self._changed.set()
        self._changed = asyncio.Event()

    # -- the watch --------------------------------------------------------------------

    async def _follow(self, start: int) -> None:
        watch = self.store.watch(self._watched, start)
        try:
            async for events, _ in watch:
                if self._apply(events):
                    return
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - whatever ended it, reload
            # Compaction, or a watch that could not be re-established: read the source
            # again (with backoff) rather than leave it without a cache.
            log.warning("source %s: watch ended (%s), reloading", self.source.id, err)
            self._set = None
            self._loading = asyncio.ensure_future(self._reload_with_backoff())
        finally:
            await watch.aclose()  # type: ignore[attr-defined]

    def _apply(self, events: list[WatchEvent]) -> bool:
        """Follow one batch of the watch; True when it says the source was deleted."""
        current, moved = self._set, False
        addresses, meta = self._prefix, self._meta
        for ev in events:
            # Prefix checks, not Keys.kind: every booking sends two events this way.
            key = ev.key
            if key.startswith(addresses):
                if current is not None:
                    offset = int(key[len(addresses):], 16)
                    if ev.deleted:
                        current.freed(offset)
                    else:
                        current.held(offset)
                    moved = True
            elif ev.deleted and key == meta:
                self.gone()
                return True
        if moved:
            self._signal()
        return False

    async def _reload_with_backoff(self) -> None:
        async for _ in retry.RELOAD.attempts():
            if self.closed:
                return
            try:
                await self.reload()
                return
            except NotFound:
                return  # the source was deleted: `reload` closed the cache
            except IPAMError:
                continue


def _cancelling() -> bool:
    """Whether the running task itself is being cancelled."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
