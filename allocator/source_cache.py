"""A node's free-set cache of one source: loaded once, kept fresh by an etcd watch.

The cache is a hint, never the truth (the etcd guard is): it lets a booking pick a
free address uniformly at random in O(1) with no etcd read (DESIGN.md section 3).

- `ready()` loads it on first use: a keys-only scan of the source's address keys
  pinned to one revision, then a watch from the next revision.
- A candidate handed out by `take()` or `claim()` stays out of the free set until the
  booking settles it (`settle_held`, `give_back`), across reloads too: a node never
  hands one address to two of its own bookings.
- When the watch ends (compaction, a lost stream), the cache reloads with backoff.
- `changed(since)` lets a booking that found no free candidate wait for one to come back.
"""

from __future__ import annotations

import asyncio
import logging
import random

from . import retry
from .errors import IPAMError
from .freeset import FreeSet, free_set_for
from .keys import Keys
from .sources import Source
from .store import Store

log = logging.getLogger(__name__)


class SourceCache:
    """The free set of one source on this node, and the watch that keeps it current."""

    def __init__(self, store: Store, keys: Keys, source: Source) -> None:
        self.store, self.keys, self.source = store, keys, source
        self.reloads = 0
        self._first, self._last = source.bookable_range
        self._prefix = keys.addresses(source.id)
        self._set: FreeSet | None = None
        self._in_flight: set[int] = set()
        self._loading: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self.generation = 0  # grows whenever a candidate may have come back
        self.closed = False

    # -- life ---------------------------------------------------------------------

    async def ready(self) -> None:
        """Load the free set and start the watch, once (concurrent callers share the load)."""
        if self._set is not None:
            return
        if self._loading is None or self._loading.done():
            self._loading = asyncio.ensure_future(self.reload())
        await asyncio.shield(self._loading)

    async def reload(self) -> None:
        """Read the source's held addresses again, at one revision, and watch from the next."""
        kvs, revision = await self.store.scan(self._prefix, keys_only=True)
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
            if task is not None:
                task.cancel()
        self._signal()

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
        try:
            async for events, _ in self.store.watch(self._prefix, start):
                current = self._set
                if current is None:
                    continue
                for ev in events:
                    offset = self.keys.address_offset(ev.key)
                    if ev.deleted:
                        current.freed(offset)
                    else:
                        current.held(offset)
                if events:
                    self._signal()
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - whatever ended it, reload
            # Compaction, or a watch that could not be re-established: read the source
            # again (with backoff) rather than leave it without a cache.
            log.warning("source %s: watch ended (%s), reloading", self.source.id, err)
            self._set = None
            self._loading = asyncio.ensure_future(self._reload_with_backoff())

    async def _reload_with_backoff(self) -> None:
        async for _ in retry.RELOAD.attempts():
            if self.closed:
                return
            try:
                await self.reload()
                return
            except IPAMError:
                continue
