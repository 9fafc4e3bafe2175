"""The IP event feed: every lifecycle change of an IP, in commit order, with a cursor.

Our extension; Scaleway's IPAM has none.

Written with the change, never after it: each change puts one event key in its own
guarded transaction (the booking's in `engine`, every other change's in
`lifecycle`), so an event exists exactly when its change committed. A refused or
failed change writes none; a retried one writes one (the read-back after an unknown
outcome never commits a second time).

    {p}ev/{project_id}/{seconds}/{ip_id}.{random}   one event (compact JSON), leased

- The key: the tenant's project first, so a project key reads its own prefix and
  nothing else; then the writer's clock in seconds (fixed-width hex), so a read from
  a cursor starts near it instead of at the project's first event (`SKEW` below);
  then the IP and a random suffix, unique without coordination (no ordering rests on
  it). One put per change, no read, no guard: the booking pays one operation and a
  small JSON encode of a few fields, never of the whole record.
- Order and cursor: an event's place is its etcd mod revision (the commit's), ties
  (the changes sharing one group commit, a release set) ordered by key. A feed read is
  a range over the prefix from a key near the cursor's time, filtered by etcd to
  `min_mod_revision = cursor + 1` and sorted by mod revision; a page always ends at
  a commit boundary (a full page reads the rest of its last revision), so the cursor
  is a revision and never splits a commit. The cursor also carries a time (the last
  event's, or the read's when the feed is caught up), `"{revision}-{unix seconds}"`;
  `"0"` reads from the oldest event kept. A page that found everything up to the read
  hands back the read's revision, so a quiet feed's cursor keeps moving.
- A cursor the feed could not have answered is refused, InvalidArgument on `after`,
  never read with a gap: a revision beyond the store's (the read's own header says it:
  no extra round trip; an expired cursor's is checked by one key read before the 412)
  or beyond etcd's int64, a time later than the reader's clock by more than `SKEW`
  (the writer's or another node's clock may be ahead of ours, that much at most). The
  time is only a hint where to start reading, never later than the reader's clock: a
  cursor from a node whose clock is ahead reads from where one of ours would. Nothing
  else in a cursor is checked (it is not signed): a forged one with an old revision
  and a recent time skips what was written in between, as it asked.
- Retention: events live on leases shared per period (as idempotency keys do,
  `idempotency.LeaseClock`), `retention` seconds at least, then etcd deletes them. A
  cursor older than the retention (its time) may have lost events after it: it is
  refused, PreconditionFailed `cursor_expired` (412), never answered with a gap; read
  from "0" again. etcd's compaction does not matter to the feed: it reads current keys,
  and a long poll watches from the revision it has just read. So a replay from "0"
  rebuilds every IP booked within the retention; a consumer of older IPs starts from a
  caught-up cursor, then a full list, then follows the feed from that cursor.
- A backup carries the events (they are leased keys) but not their revisions: after a
  restore the feed's order is the restore's, and cursors taken before it mean nothing
  (one beyond the restored store's revision is refused, as above).
- Long poll: with `wait`, a read that finds nothing watches the prefixes from the
  revision it read until an event is put (or `wait` seconds pass), then reads again.
- Filters: by project (the tenant's visible projects, or one of them), and then, on
  what was read, by Private Network and by IP (`ipam ips history`). A per-network key
  would double every change's event writes for a filter the gateway applies cheaply.
- The actor: the caller's access key (`Caller.access_key`), `admin` for an allocator
  caller without one, `expirer` for the expirer's releases.

What a read costs: etcd filters by mod revision and sorts after reading the whole
key range, so a read costs the events of the tenant's prefix written since the
cursor's time less `SKEW`; an admin's read of every project costs the whole feed.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import orjson
from aetcd import rpc

from .errors import InvalidArgument, PreconditionFailed
from .keys import Keys
from .records import IPRecord, Resource
from .store import KV, Compacted, WatchEvent, kv_of, prefix_end

BOOKED, ATTACHED, DETACHED, MOVED, UPDATED, RELEASED, EXPIRED = (
    "booked", "attached", "detached", "moved", "updated", "released", "expired")
KINDS = (BOOKED, ATTACHED, DETACHED, MOVED, UPDATED, RELEASED, EXPIRED)
# The event of each change of one IP (`Lifecycle._change`'s operation names).
KIND_OF_CHANGE = {"update": UPDATED, "attach": ATTACHED, "detach": DETACHED, "move": MOVED,
                  "release": RELEASED, "expire": EXPIRED}
EXPIRER = "expirer"

# An hour, as idempotency records: each event is a key of about 1 KB, and a day of them
# filled etcd's default 2 GiB quota at under 25 changes/s (bench soak: 240,000 an hour
# at 17 cycles/s). A consumer that stops for longer reads from a cursor it kept, or
# the operator raises it.
DEFAULT_RETENTION = 3600
MIN_RETENTION = 600
MAX_WAIT = 60.0
DEFAULT_PAGE = 100
MAX_PAGE = 1000
# How far apart the time in an event's key may be from its commit: the writer's clock
# against the reader's, and a change's time taken before its commit (retries included).
# A read from a cursor starts this much before the cursor's time.
SKEW = 300
START = "0"
# The read asks etcd for the revisions after the cursor's, an int64.
MAX_REVISION = 2**63 - 2
_CURSOR = re.compile(r"^(0|[1-9][0-9]{0,18}-[0-9]{1,12})$")


def _encode(data: dict[str, Any]) -> bytes:
    # orjson: a booking writes one event, and the standard encoder was a twentieth of its
    # CPU. Same JSON, but for characters beyond ASCII, written as UTF-8 instead of \u
    # escapes (the feed reads both).
    return orjson.dumps(data)


def event_key(keys: Keys, project_id: str, ip_id: str) -> str:
    """A fresh event key of `ip_id` in `project_id`, written now."""
    return keys.event(project_id, int(time.time()), ip_id, f"{random.getrandbits(40):010x}")


def _resource(r: Resource | None) -> dict[str, Any] | None:
    return None if r is None else {"type": r.type, "id": r.id, "mac_address": r.mac_address,
                                   "name": r.name}


def entry(kind: str, record: IPRecord, actor: str, at: str) -> bytes:
    """The value of one event: what changed, of which IP, by whom, when.

    Built from the record's fields (never its whole JSON): the booking's hot path pays
    for this. A booking and an update carry what a replay needs to rebuild the IP as
    it is (tags, and for an update its reverses and expiry too)."""
    data: dict[str, Any] = {
        "kind": kind, "ip_id": record.id, "address": record.address,
        "project_id": record.project_id, "region": record.region,
        "private_network_id": record.private_network_id, "source_id": record.source_id,
        "resource": _resource(record.resource), "actor": actor, "at": at}
    if kind == BOOKED:
        data["tags"] = list(record.tags)
        if record.expires_at:
            data["expires_at"] = record.expires_at
    elif kind == UPDATED:
        data["tags"] = list(record.tags)
        data["reverses"] = [r.to_json() for r in record.reverses]
        data["expires_at"] = record.expires_at
    return _encode(data)


def actor_of(access_key: str | None) -> str:
    """Who a change is recorded as made by: the access key, or `admin` (the allocator's
    own callers, and a bootstrap admin without a stored key)."""
    return access_key or "admin"


@dataclass(frozen=True)
class Event:
    """One IP lifecycle change as the feed answers it."""

    # Where reading on after this event resumes: after its commit (every event of one
    # commit shares its revision, and a page never splits a commit).
    cursor: str
    revision: int
    kind: str
    ip_id: str
    address: str
    project_id: str
    region: str
    private_network_id: str | None
    source_id: str
    resource: dict[str, Any] | None
    actor: str
    at: str
    # A booking's and an update's: what a replay needs to rebuild the IP exactly.
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, kv: KV) -> Event:
        d = json.loads(kv.value)
        details = {k: d[k] for k in ("tags", "reverses", "expires_at") if k in d}
        return cls(cursor=cursor_of(kv.mod_revision, _seconds(d["at"])),
                   revision=kv.mod_revision, kind=d["kind"],
                   ip_id=d["ip_id"], address=d["address"], project_id=d["project_id"],
                   region=d["region"], private_network_id=d.get("private_network_id"),
                   source_id=d["source_id"], resource=d.get("resource"), actor=d["actor"],
                   at=d["at"], details=details)


@dataclass(frozen=True)
class EventPage:
    """What one feed read answers: events in commit order, and the cursor to read on from
    (the same as asked when nothing was found and nothing could advance it)."""

    events: list[Event]
    cursor: str


class FeedStore(Protocol):
    """What the feed needs from etcd (`store.EtcdStore` has it)."""

    async def range(self, key: str, range_end: bytes | None = None, *, limit: int = 0,
                    revision: int = 0, keys_only: bool = False, count_only: bool = False,
                    serializable: bool = False, descending: bool = False,
                    min_mod_revision: int = 0, max_mod_revision: int = 0,
                    sort_by_mod: bool = False) -> rpc.RangeResponse: ...

    def watch(self, prefix: str, start_revision: int
              ) -> AsyncIterator[tuple[list[WatchEvent], int]]: ...


def parse_cursor(cursor: Any, retention: int, at: float | None = None) -> tuple[int, int]:
    """(revision, seconds) of a cursor, checked against the clock (`at`, default now);
    InvalidArgument when the feed could not have answered it (but for a revision beyond
    the store's: `EventFeed.read` checks that), PreconditionFailed `cursor_expired` when
    events after it may have expired."""
    revision, seconds = _parts(cursor, time.time() if at is None else at)
    if _expired(seconds, retention, at):
        raise _cursor_expired(cursor, retention)
    return revision, seconds


def _parts(cursor: Any, now: float) -> tuple[int, int]:
    """(revision, seconds) of a cursor the feed could have answered by `now`, as far as
    it tells without a read: InvalidArgument otherwise."""
    if not isinstance(cursor, str) or not _CURSOR.match(cursor):
        raise InvalidArgument("after", 'must be "0" or a cursor the feed answered, like '
                                       '"4711-1767225600"', "format")
    if cursor == START:
        return 0, 0
    revision, seconds = (int(p) for p in cursor.split("-"))
    if revision > MAX_REVISION:
        raise _not_answered(f"its revision {revision} is beyond any etcd's")
    if seconds > now + SKEW:
        raise _not_answered(f"its time {seconds} is more than {SKEW} s ahead of the clock")
    return revision, seconds


def _expired(seconds: int, retention: int, at: float | None = None) -> bool:
    """Whether events after a cursor of time `seconds` ("0": 0) may have expired by `at`."""
    slack = min(SKEW, retention // 2)
    return bool(seconds) and (time.time() if at is None else at) - seconds > retention - slack


def _cursor_expired(cursor: str, retention: int) -> PreconditionFailed:
    return PreconditionFailed("cursor_expired", f"events after cursor {cursor} are older "
                              f"than the feed keeps ({retention} s); read from \"0\" "
                              "again and rebuild what was derived from the feed")


def _not_answered(why: str) -> InvalidArgument:
    return InvalidArgument("after", f'is no cursor the feed answered ({why}): give one it '
                                    'answered, or "0"')


def _within_head(revision: int, head: int) -> None:
    """InvalidArgument unless a cursor's `revision` is at most `head`, the store's current
    one as a linearizable read saw it: every cursor the feed answered is."""
    if revision > head:
        raise _not_answered(f"its revision {revision} is beyond the store's, {head}")


def cursor_of(revision: int, seconds: float) -> str:
    return f"{revision}-{int(seconds)}" if revision else START


class EventFeed:
    """Reads the feed: pages after a cursor, and long polls (see the module docstring)."""

    def __init__(self, store: FeedStore, keys: Keys, retention: int = DEFAULT_RETENTION
                 ) -> None:
        self.store, self.keys, self.retention = store, keys, retention

    async def read(self, after: str = START, *, projects: Iterable[str] | None = None,
                   region: str | None = None, private_network_id: str | None = None,
                   ip_id: str | None = None, page_size: int = DEFAULT_PAGE,
                   wait: float = 0.0) -> EventPage:
        """The events after cursor `after` in `projects` (None: every project), in commit
        order, at most about `page_size` (a page ends at a commit boundary: the last
        commit's events all come); with `wait` seconds, a read that finds none waits
        for one that long, then answers (empty, with a cursor on, if none came)."""
        if not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE:
            raise InvalidArgument("page_size", f"must be 1 to {MAX_PAGE}")
        if not isinstance(wait, (int, float)) or not 0 <= wait <= MAX_WAIT:
            raise InvalidArgument("wait", f"must be 0 to {MAX_WAIT:g} seconds")
        revision, seconds = _parts(after, time.time())
        if _expired(seconds, self.retention):
            # However old its time, a revision beyond the store's is no cursor at all:
            # refused as such, not as expired (one key read, on this path only).
            _within_head(revision, (await self.store.range(self.keys.events())
                                    ).header.revision)
            raise _cursor_expired(after, self.retention)
        prefixes = ([self.keys.events()] if projects is None else
                    [self.keys.events(p) for p in sorted(set(projects))])
        deadline = time.monotonic() + wait

        def wanted(e: Event) -> bool:
            return ((region is None or e.region == region)
                    and (private_network_id is None
                         or e.private_network_id == private_network_id)
                    and (ip_id is None or e.ip_id == ip_id))

        while True:
            events, revision, seconds, caught_up = await self._page(
                prefixes, revision, seconds, page_size)
            kept = [e for e in events if wanted(e)]
            cursor = cursor_of(revision, seconds)
            if kept or not prefixes:
                return EventPage(kept, cursor)
            if not caught_up:
                continue  # a full page, all filtered out: read on
            left = deadline - time.monotonic()
            if left <= 0 or not await self._put_after(prefixes, revision, left):
                return EventPage([], cursor)

    async def _page(self, prefixes: Sequence[str], after: int, seconds: int, size: int
                    ) -> tuple[list[Event], int, int, bool]:
        """(events after revision `after`, the revision and time read up to, whether that is
        the read's own revision: nothing more was there)."""
        reads = await asyncio.gather(*(self._range(p, after, seconds, size)
                                       for p in prefixes))
        # Every read saw everything up to its own revision: together, up to the lowest.
        head = min((r.header.revision for r in reads), default=after)
        _within_head(after, head)
        # Complete up to the lowest last revision of a full read.
        upto = min([int(r.kvs[-1].mod_revision) for r in reads if r.more] + [head])
        if any(r.more for r in reads):
            # A full read may have cut its last revision short: read that one whole.
            extra = await asyncio.gather(*(self._range(p, upto - 1, seconds, 0, upto)
                                           for p, r in zip(prefixes, reads, strict=True)
                                           if r.more))
            reads = [*reads, *extra]
        found = {kv.key: kv_of(kv) for r in reads for kv in r.kvs if kv.mod_revision <= upto}
        kvs = sorted(found.values(), key=lambda kv: (kv.mod_revision, kv.key))
        if len(kvs) > size:  # several projects' reads: cut at the commit of the size-th
            last = kvs[size - 1].mod_revision
            kvs = [kv for kv in kvs if kv.mod_revision <= last]
            upto = last
        events = [Event.of(kv) for kv in kvs]
        if upto == head and not any(r.more for r in reads[:len(prefixes)]):
            return events, head, int(time.time()), True  # caught up
        return events, upto, int(_seconds(events[-1].at)), False

    async def _range(self, prefix: str, after: int, seconds: int, limit: int,
                     upto: int = 0) -> rpc.RangeResponse:
        # A project's prefix starts near the cursor's time; every project's cannot. Never
        # later than our clock: a cursor's time may come from a clock ahead of ours (up to
        # SKEW, `_parts`), and the events after it from one that is not.
        start = prefix
        if seconds and prefix != self.keys.events():
            project = prefix[len(self.keys.events()):].rstrip("/")
            start = self.keys.events(project, min(seconds, int(time.time())) - SKEW)
        return await self.store.range(start, prefix_end(prefix), limit=limit,
                                      min_mod_revision=after + 1, max_mod_revision=upto,
                                      sort_by_mod=True)

    async def _put_after(self, prefixes: Sequence[str], revision: int, timeout: float
                         ) -> bool:
        """Whether an event was put under one of `prefixes` after `revision` within
        `timeout` seconds (deletions, the retention's, do not count)."""
        async def one(prefix: str) -> None:
            try:
                async for batch, _ in self.store.watch(prefix, revision + 1):
                    if any(not e.deleted for e in batch):
                        return
            except Compacted:
                return  # history gone since the read: read again, it will say

        waits = [asyncio.ensure_future(one(p)) for p in prefixes]
        try:
            done, _ = await asyncio.wait(waits, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            return bool(done)
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)


def _seconds(at: str) -> float:
    """Unix seconds of an event's stored time (`records.now()`'s form)."""
    return datetime.fromisoformat(at).timestamp()

