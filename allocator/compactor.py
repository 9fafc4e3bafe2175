"""Bounded etcd history: one node of a deployment compacts it, on a schedule and after
mass deletes.

etcd keeps every revision until it is compacted; the embedded member compacts itself
only hourly. And on 3.4.23 many deletes (releases) slow later create-if-absent writes
until the next compaction, any compaction, which restores full speed at once (DESIGN.md
section 4; measured with raw etcd transactions: 2 to 3 times slower after 10,000
deletes, back at once even when the compaction stops short of the deletes). So the
allocator compacts, as kube-apiserver does.

When: the node holding the compactor key compacts etcd to `R - retain_revisions`, R the
head revision, when one of these holds (each can be turned off or tuned):

- time: `interval` seconds have passed since its last compaction;
- volume: more than `every_revisions` revisions (default: `retain_revisions`) were
  written since its last compaction;
- deletes: `every_deletes` keys under the prefix were deleted since its last compaction
  (counted by a watch that etcd sends deletions alone; 0 turns it off). This one acts
  at once, not at the next look, for it is the one that saves speed;

and only if that moves the compacted revision forward: an idle cluster is never
compacted twice to the same point. The holder looks every `check_interval` seconds
(one linearizable read of one key). History is thus kept between `retain_revisions`
and `retain_revisions + every_revisions` revisions. A node that has just become the
holder compacts at once: it cannot know when the last one did.

Who: kube-apiserver (`storage/etcd3/compact.go`) makes concurrent apiservers compact at
most once per interval with a compare-and-swap on the version of one key. Here the key
`{p}compactor` is created if absent on an etcd lease of `lease_ttl` seconds that its
holder keeps alive: one holder at a time (`election.ElectedLoop`, which the expirer runs
too). When the holder dies its lease expires, etcd deletes the key, and the next node to
look takes over; `close()` revokes the lease, so another node takes over at its next
look. Before each compaction the holder checks, in the read that tells it R, that the
key is still the one it created (create_revision guard); a holder that could not renew
its lease stops before the lease may expire.

Watches: a watch that is current is not affected by a compaction. One that is behind
the compacted revision (a broken stream resuming) ends with `Compacted`, and the source
caches, network views and the API-key cache reload. `retain_revisions` is the window a
broken watch, or a paged read pinned to one revision (a cache load, a backup export),
has before it must start again. A revision here is one commit of up to 64 bookings:
2,000 revisions are tens of seconds at the full booking rate, hours when quiet.

Counters (plain attributes, for metrics): `compactions`, `compacted_revision`,
`errors`, `last_error`, `leader`, `elections`, `looks`, `deletes_since_compaction`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Protocol

from .election import ElectedLoop, ElectionStore
from .keys import Keys
from .store import WatchEvent

log = logging.getLogger(__name__)

RETAIN_REVISIONS = 2_000
INTERVAL = 60.0
EVERY_DELETES = 10_000
CHECK_INTERVAL = 5.0
LEASE_TTL = 15


class CompactionStore(ElectionStore, Protocol):
    """What the compactor needs from etcd (`store.EtcdStore` has it): an election's
    calls, and these."""

    async def compact(self, revision: int, *, physical: bool = False) -> bool: ...

    def watch(self, prefix: str, start_revision: int, *, deletes_only: bool = False
              ) -> AsyncIterator[tuple[list[WatchEvent], int]]: ...


class Compactor(ElectedLoop):
    """Compacts etcd's history to `retain_revisions` behind the head while this node
    holds the compactor key (see the module docstring for when and who)."""

    chore = "compactor"

    def __init__(self, store: CompactionStore, keys: Keys, *,
                 retain_revisions: int = RETAIN_REVISIONS, interval: float = INTERVAL,
                 every_revisions: int | None = None, every_deletes: int = EVERY_DELETES,
                 check_interval: float = CHECK_INTERVAL, lease_ttl: int = LEASE_TTL,
                 holder: str | None = None, physical: bool = False) -> None:
        if min(retain_revisions, every_deletes) < 0 or interval <= 0 or \
                check_interval <= 0 or lease_ttl < 2:
            raise ValueError("retain_revisions >= 0, every_deletes >= 0, interval > 0, "
                             "check_interval > 0 and lease_ttl >= 2 are needed")
        super().__init__(store, keys.compactor(), check_interval=check_interval,
                         lease_ttl=lease_ttl, holder=holder)
        self.store: CompactionStore = store
        self.keys = keys
        self.retain_revisions = retain_revisions
        self.interval = interval
        self.every_revisions = retain_revisions if every_revisions is None else every_revisions
        self.every_deletes = every_deletes
        self.physical = physical
        # Counters (besides the election's): read by metrics and tests, written here only.
        self.compactions = 0  # compactions this node made
        self.compacted_revision = 0  # the newest revision this node compacted etcd to
        self.deletes_since_compaction = 0  # keys deleted under the prefix (holder only)
        self._compacted_at: float | None = None  # monotonic; None: compact at once
        self._head_at_compaction = 0
        self._deletes: asyncio.Task[None] | None = None
        self._stopped_deletes: asyncio.Task[None] | None = None  # cancelled, to await

    async def close(self) -> None:
        """Stop; if this node holds the key, give it up at once (revoke its lease)."""
        await super().close()
        stopped, self._stopped_deletes = self._stopped_deletes, None
        if stopped is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await stopped

    # -- the chore ------------------------------------------------------------------------

    def elected(self) -> None:
        self._compacted_at = None  # it cannot know when the last holder compacted
        self.deletes_since_compaction = 0

    def stepped_down(self) -> None:
        if self._deletes is not None:
            self._deletes.cancel()
            self._stopped_deletes, self._deletes = self._deletes, None

    async def work(self, head: int) -> None:
        """Compact when due (the key was just confirmed ours, at `head`)."""
        if self.every_deletes and (self._deletes is None or self._deletes.done()):
            self._deletes = asyncio.ensure_future(self._count_deletes(head + 1))
        target = head - self.retain_revisions
        if target <= self.compacted_revision or target <= 0:
            return
        due = (self._compacted_at is None
               or time.monotonic() - self._compacted_at >= self.interval
               or head - self._head_at_compaction > self.every_revisions
               or 0 < self.every_deletes <= self.deletes_since_compaction)
        if not due:
            return
        deletes = self.deletes_since_compaction
        if await self.store.compact(target, physical=self.physical):
            self.compactions += 1
            log.info("compactor: compacted etcd to revision %d (head %d, %d keys deleted "
                     "since the last time)", target, head, deletes)
        self.compacted_revision = target  # or further: someone else compacted past it
        self._compacted_at, self._head_at_compaction = time.monotonic(), head
        self.deletes_since_compaction -= deletes

    async def _count_deletes(self, start: int) -> None:
        """Count the keys deleted under the prefix; wake the loop past `every_deletes`.
        Ends with the stream (a compaction it fell behind, an outage): the next look
        starts another from the head."""
        try:
            async for events, _ in self.store.watch(self.keys.prefix, start, deletes_only=True):
                before = self.deletes_since_compaction
                self.deletes_since_compaction += len(events)
                if before < self.every_deletes <= self.deletes_since_compaction:
                    self.wake()
        except Exception as err:  # noqa: BLE001 - whatever ended it, the next look restarts it
            log.info("compactor: delete count restarts (%s)", err)
