"""One node of a deployment does a chore: the holder of a key on an etcd lease.

The compactor (`compactor`) and the expirer (`expiry`) each need exactly one node to
work at a time, and another to take over when it goes. Both run the loop here, and
differ only in their `work`:

- campaign: a node that holds nothing reads the key; when nobody holds it, it creates
  it if absent on a fresh lease of `lease_ttl` seconds (one holder at a time);
- lead: the holder renews its lease a third of the TTL apart, and before each piece of
  work confirms, in one linearizable read that also tells etcd's head revision, that
  the key is still the one it created (create_revision guard). A holder that could not
  renew in time steps down before its lease may have expired;
- go: when the holder dies its lease expires, etcd deletes the key and the next node to
  look takes over; `close()` revokes the lease, so another node takes over at its next
  look (`check_interval` at most).

Holding the key makes a node the only one that *tries*; it is no lock around the data.
What a worker writes must stay safe with two holders at once (a lease that ran out a
moment ago): the compactor's compactions are idempotent, the expirer's releases are
guarded transactions.

Counters (plain attributes, for metrics and tests): `leader`, `elections`, `looks`,
`errors`, `last_error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Protocol, Self

from aetcd import rpc

from .errors import IPAMError
from .store import KV
from .txn import GuardedTxn, get

log = logging.getLogger(__name__)


class ElectionStore(Protocol):
    """What an election needs from etcd (`store.EtcdStore` has it)."""

    async def txn(self, compare: Sequence[rpc.Compare], success: Sequence[rpc.RequestOp],
                  failure: Sequence[rpc.RequestOp] = (), *, retry: bool = False
                  ) -> rpc.TxnResponse: ...

    async def get(self, key: str) -> KV | None: ...

    async def lease_grant(self, ttl: int) -> int: ...

    async def lease_keep_alive(self, lease_id: int) -> int: ...

    async def lease_revoke(self, lease_id: int) -> None: ...


def default_holder() -> str:
    """This process, as a holder's name: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class ElectedLoop:
    """Works (`work`) every `check_interval` seconds while this node holds `key`; see the
    module docstring. Subclasses set `chore` (a name for logs) and write `work`."""

    chore = "elected"

    def __init__(self, store: ElectionStore, key: str, *, check_interval: float,
                 lease_ttl: int, holder: str | None = None) -> None:
        if check_interval <= 0 or lease_ttl < 2:
            raise ValueError("check_interval > 0 and lease_ttl >= 2 are needed")
        self.store, self.key = store, key
        self.check_interval = check_interval
        self.lease_ttl = lease_ttl
        self.holder = holder or default_holder()
        # Counters: read by metrics and tests, written here only.
        self.leader = False  # this node holds the key now
        self.elections = 0  # times this node took the key
        self.looks = 0  # times this node looked (for the key, then to work)
        self.errors = 0  # looks that failed (etcd unreachable, full, ...)
        self.last_error = ""
        # The holder also wakes to renew its lease, a third of the TTL apart.
        self._leader_tick = min(check_interval, lease_ttl / 3)
        self._lease = 0
        self._key_revision = 0  # create_revision of the key while this node holds it
        self._lease_deadline = 0.0  # monotonic time by which the lease may have expired
        self._renewed_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._looked = asyncio.Condition()

    # -- what a chore writes ----------------------------------------------------------

    async def work(self, head: int) -> None:
        """One piece of the chore, on the node that holds the key (`head`: etcd's head
        revision, read as the key was confirmed)."""
        raise NotImplementedError

    def elected(self) -> None:
        """Called when this node has just taken the key."""

    def stepped_down(self) -> None:
        """Called when this node stops holding the key (or closes)."""

    # -- life -----------------------------------------------------------------------

    async def start(self) -> None:
        """Look for the key once (so `leader` is settled when this returns), then keep
        looking and working in the background until `close()`."""
        if self._task is not None:
            return
        await self._look()
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        """Stop; if this node holds the key, give it up at once (revoke its lease)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        lease = self._lease
        self._step_down("closing")
        if lease:
            try:
                await self.store.lease_revoke(lease)
            except IPAMError as err:  # it expires on its own within lease_ttl
                log.warning("%s: could not revoke lease %x: %s", self.chore, lease, err)

    async def until(self, condition: Callable[[Self], bool], timeout: float) -> None:
        """Wait until `condition(self)` holds after some look (TimeoutError after `timeout`)."""
        async with self._looked:
            await asyncio.wait_for(self._looked.wait_for(lambda: condition(self)), timeout)

    def wake(self) -> None:
        """Look again now rather than at the next tick."""
        self._wake.set()

    # -- the loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._leader_tick if self.leader
                                       else self.check_interval)
            self._wake.clear()
            await self._look()

    async def _look(self) -> None:
        try:
            if not self.leader:
                await self._campaign()
            if self.leader:
                head = await self._hold()
                if head is not None:
                    await self.work(head)
        except Exception as err:  # noqa: BLE001 - etcd down or full, a closed channel: next look
            self.errors += 1
            self.last_error = f"{type(err).__name__}: {err}"
            log.warning("%s: %s", self.chore, self.last_error)
        self.looks += 1
        async with self._looked:
            self._looked.notify_all()

    async def _campaign(self) -> None:
        """Take the key if nobody holds it: create-if-absent on a fresh lease."""
        if await self.store.get(self.key) is not None:
            return  # another node holds it; look again later
        granted_at = time.monotonic()
        lease = await self.store.lease_grant(self.lease_ttl)
        txn = GuardedTxn().absent(self.chore, self.key).put(self.key, self.holder, lease)
        resp = await self.store.txn(txn.compares(), txn.writes)
        if not resp.succeeded:  # another node was quicker
            await self.store.lease_revoke(lease)
            return
        self._lease, self._key_revision = lease, resp.header.revision
        self._renewed_at, self._lease_deadline = granted_at, granted_at + self.lease_ttl
        self.leader = True
        self.elections += 1
        self.elected()
        log.info("%s: %s holds it from now on (lease %x)", self.chore, self.holder, lease)

    async def _hold(self) -> int | None:
        """Renew the lease when due and confirm the key is still ours: etcd's head
        revision, or None (and no longer the leader) when it is not."""
        now = time.monotonic()
        if now - self._renewed_at >= self.lease_ttl / 3:
            ttl = await self.store.lease_keep_alive(self._lease)
            if ttl <= 0:
                self._step_down("its lease expired")
                return None
            self._renewed_at, self._lease_deadline = now, now + ttl
        # A margin of one look: never work on a lease that may be gone by then.
        if time.monotonic() >= self._lease_deadline - self._leader_tick:
            self._step_down("its lease could not be renewed in time")
            return None
        mine = rpc.Compare(key=self.key.encode(), target=rpc.Compare.CREATE,
                           result=rpc.Compare.EQUAL, create_revision=self._key_revision)
        # The read of the key makes the transaction linearizable: etcd serves one with no
        # operation at all as a serializable read, from the member's own state, which may
        # lag (measured on a three-member cluster: the key this node had just created was
        # not there yet, and the node stepped down).
        resp = await self.store.txn([mine], [get(self.key)], retry=True)
        if not resp.succeeded:
            self._step_down("another node holds the key")
            return None
        return int(resp.header.revision)

    def _step_down(self, why: str) -> None:
        if self.leader:
            log.info("%s: %s stops: %s", self.chore, self.holder, why)
        self.stepped_down()
        self.leader = False
        self._lease = self._key_revision = 0
        self._lease_deadline = -math.inf
