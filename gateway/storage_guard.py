"""The node's guard on etcd's database size: figures to scrape, and a log line before the
quota fills.

etcd refuses every change once a member's backend file reaches its quota
(`--quota-backend-bytes`) and raises its NOSPACE alarm, which only an operator clears
(docs/operations.md, "When the quota is full"). The allocator makes etcd weigh every
commit against the quota and answers a full one 503 (`allocator.store`); this guard makes
the quota visible before it fills, to a deployment that does not scrape etcd itself.

Every node reads each member's size (`IPAM.storage_usage`: a member silent for 1 s is
left out) against the quota it was given (`--etcd-quota-backend-bytes`), and

- shows it at scrape time (`gateway.metrics`: `ipam_etcd_db_size_bytes`, ...);
- looks every `CHECK_INTERVAL` and logs what changed (`QuotaWatch`): a WARNING when a
  member's database passes `NEAR_QUOTA` of the quota, once per crossing; an ERROR when an
  alarm is raised; an INFO line when it clears.

Not elected, unlike the compactor: it is a read, and each node logs what it sees. It never
touches readiness: reads still work on a full etcd, and /readyz stays 200 on purpose
(docs/operations.md says why).

One read serves the scrapes and the check: an answer is kept `CACHE_SECONDS`, askers
share the read in flight, and a scrape waits for it at most `SCRAPE_WAIT` (the alarm list
goes through etcd's consensus: a cluster without quorum would hold it for the store's
deadline), then shows the last answer while the read goes on for the next asker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from allocator.contract import IPAM, StorageUsage
from allocator.contract import errors as e

log = logging.getLogger("ipam")

NEAR_QUOTA = 0.8  # the share of the quota past which a member's size is worth a warning
# A size hovering at the mark warns once, not at every check: the warning is armed again
# only once the size is back under this (a compaction and defragmentation did their job).
REARM_BELOW = 0.75
CHECK_INTERVAL = 30.0
CACHE_SECONDS = 5.0
# etcd's own Status call is given 1 s per member; the rest is for the alarm list.
SCRAPE_WAIT = 1.5
# Alarms shown as 0 while not raised, so that a rule can tell "cleared" from "unknown".
KNOWN_ALARMS = ("NOSPACE", "CORRUPT")
RUNBOOK = "docs/operations.md, 'When the quota is full'"


class Notice(NamedTuple):
    """One log line the guard owes: its level and its message."""

    level: int
    message: str


@dataclass
class _Member:
    near: bool = False
    alarms: frozenset[str] = field(default_factory=frozenset)


class QuotaWatch:
    """What changed since the previous look, member by member; no I/O.

    A member missing from an answer (silent for its 1 s) keeps what was known of it, so
    that it is not announced again when it answers."""

    def __init__(self, near: float = NEAR_QUOTA, rearm_below: float = REARM_BELOW) -> None:
        self.near, self.rearm_below = near, rearm_below
        self._members: dict[str, _Member] = {}

    def observe(self, usage: Sequence[StorageUsage]) -> list[Notice]:
        """The notices `usage` calls for, given the previous ones."""
        notices = []
        for u in usage:
            member = self._members.setdefault(u.endpoint, _Member())
            if not member.near and u.used >= self.near:
                member.near = True
                notices.append(Notice(logging.WARNING, (
                    f"etcd's database on {u.endpoint} is at {u.used:.0%} of its quota "
                    f"({_mib(u.db_size)} of {_mib(u.quota)}, {_mib(u.db_size_in_use)} in "
                    f"use): compact and defragment before every change is refused: "
                    f"{RUNBOOK}")))
            elif member.near and u.used < self.rearm_below:
                member.near = False
            alarms = frozenset(u.alarms)
            for alarm in sorted(alarms - member.alarms):
                notices.append(Notice(logging.ERROR, _raised(alarm, u.endpoint)))
            for alarm in sorted(member.alarms - alarms):
                notices.append(Notice(logging.INFO, _cleared(alarm, u.endpoint)))
            member.alarms = alarms
        return notices


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _raised(alarm: str, endpoint: str) -> str:
    if alarm == "NOSPACE":
        return (f"etcd's NOSPACE alarm is raised on {endpoint}: every change is refused "
                f"until an operator frees space: {RUNBOOK}")
    return f"etcd's {alarm} alarm is raised on {endpoint}: see etcd's documentation"


def _cleared(alarm: str, endpoint: str) -> str:
    if alarm == "NOSPACE":
        return f"etcd's NOSPACE alarm on {endpoint} is cleared: changes are taken again"
    return f"etcd's {alarm} alarm on {endpoint} is cleared"


class StorageGuard:
    """The node's reads of etcd's database size (see the module docstring).

    `last` is the latest answer: empty before the first read, and after a read that
    failed (unknown is shown as absent, not as the figures of before)."""

    def __init__(self, ipam: IPAM, quota: int, *, check_interval: float = CHECK_INTERVAL,
                 cache_seconds: float = CACHE_SECONDS) -> None:
        self.ipam, self.quota = ipam, quota
        self.check_interval, self.cache_seconds = check_interval, cache_seconds
        self.watch = QuotaWatch()
        self.last: list[StorageUsage] = []
        self._read_at = -float("inf")
        self._reading: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def usage(self, wait: float | None = None) -> list[StorageUsage]:
        """Each answering member's usage, read at most once per `cache_seconds`. With
        `wait`, at most that long: past it, the last answer (the read goes on)."""
        if time.monotonic() - self._read_at < self.cache_seconds:
            return self.last
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._read())
        # Shielded: one asker giving up (a scrape past its wait, a cancelled request) must
        # not cancel the read the others share.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._reading), wait)
        return self.last

    async def _read(self) -> None:
        try:
            self.last = await self.ipam.storage_usage(self.quota)
        except e.StoreError as err:
            # An unreachable etcd is the availability gate's to report (gateway.availability).
            log.debug("could not read etcd's database sizes: %s", err)
            self.last = []
        finally:
            self._read_at = time.monotonic()
            self._reading = None

    async def check(self) -> list[Notice]:
        """One look: log what changed since the previous (`QuotaWatch`); the notices."""
        notices = self.watch.observe(await self.usage())
        for notice in notices:
            log.log(notice.level, notice.message)
        return notices

    @property
    def running(self) -> bool:
        """Whether the periodic check runs."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Check now, then every `check_interval`, until `close`."""
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.check_interval)

    async def close(self) -> None:
        """Stop the periodic check and any read in flight."""
        for task in (self._task, self._reading):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


