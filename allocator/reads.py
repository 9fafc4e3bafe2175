"""Reads of one key each, coalesced: the GETs waiting on one node share one etcd request.

One `get` costs a round trip to etcd, and a node serving many at once spends most of its
time on those round trips, one gRPC call each. `CoalescedReads` keeps at most one read in
flight: the keys asked while it is form the next one, a read-only transaction of their
ranges (`Store.get_many`), sent the moment the previous one returns. No timer waits for
company: a caller that finds nothing in flight sends its own key at once, alone, as the
plain read it would have been (`Store.get`), so a lone GET pays nothing for the batching.

Linearizable as a plain read. A range, or a read-only transaction of ranges that are not
serializable, is a linearizable read in etcd (its member confirms with the leader that it
has applied everything committed before it answers), so a batch reflects every write
acknowledged before the batch was sent. A key joins only a batch sent after it was
asked: one asked while a batch is in flight waits for the next. So each `get` reflects
every write acknowledged before it was called, on this node or on any other.

Failures and cancellation: a batch that fails fails each of its waiters with the
batch's error (a `StoreError`); the next batch is sent as usual. A waiter cancelled
before its batch returns is skipped (its key is not even sent when no one else still
waits on it); the other waiters of the batch are answered. One read in flight means one
slow answer holds the next batch back: a member that stops answering holds it until the
store gives up on that member (its prober abandons the call within a second, and the
read goes to another member), where separate reads would have held only their share.
"""

from __future__ import annotations

import asyncio

from .store import KV, Store


class CoalescedReads:
    """Single-key reads of one node, sent to etcd one batch at a time (see the module)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.batches = 0  # read requests sent, for tests and the bench
        # The keys asked since the batch in flight was sent, each with its waiters.
        self._asked: dict[str, list[asyncio.Future[KV | None]]] = {}
        self._busy = False  # a batch is in flight
        self._sender: asyncio.Task[None] | None = None

    async def get(self, key: str) -> KV | None:
        """The key's current value, or None: a linearizable read, in the next batch.

        With no batch in flight the caller sends its key itself, alone, as a plain read:
        nobody else can have asked since (no await between), and a lone read pays
        nothing for the batching. Its return sends what was asked meanwhile.
        """
        if self._busy:
            answer: asyncio.Future[KV | None] = asyncio.get_running_loop().create_future()
            self._asked.setdefault(key, []).append(answer)
            # Cancelling this waiter cancels only its own future: the batch goes on.
            return await answer
        self._busy = True
        self.batches += 1
        try:
            return await self.store.get(key)
        finally:
            self._next()

    def _next(self) -> None:
        """A batch returned: send what was asked meanwhile, or stand idle."""
        if self._asked:
            self._sender = asyncio.create_task(self._send())
        else:
            self._busy = False

    async def _send(self) -> None:
        """Send batches until no key is asked; each is taken whole when it is sent."""
        batch: dict[str, list[asyncio.Future[KV | None]]] = {}
        try:
            while self._asked:
                batch, self._asked = self._asked, {}
                wanted = [k for k, waiters in batch.items()
                          if not all(w.done() for w in waiters)]
                if not wanted:
                    continue
                self.batches += 1
                try:
                    found = await self.store.get_many(wanted)
                except Exception as err:  # noqa: BLE001 - each waiter of the batch meets it
                    _fail(batch, err)
                    continue
                for key, waiters in batch.items():
                    kv = found.get(key)
                    for w in waiters:
                        if not w.done():
                            w.set_result(kv)
                batch = {}
        except asyncio.CancelledError:
            # The node is closing: no batch follows, no waiter is left hanging.
            for waiters in batch.values():
                for w in waiters:
                    w.cancel()
            raise
        finally:
            self._sender = None
            self._busy = False

    async def close(self) -> None:
        """Cancel the waiters of the batch in flight and of the next one, for a node that
        closes (a caller that sent its own read alone keeps it); a read asked after this
        starts afresh."""
        waiting, self._asked = self._asked, {}
        for waiters in waiting.values():
            for w in waiters:
                w.cancel()
        sender = self._sender
        if sender is not None:
            sender.cancel()
            try:
                await sender
            except asyncio.CancelledError:
                pass


def _fail(batch: dict[str, list[asyncio.Future[KV | None]]], err: Exception) -> None:
    for waiters in batch.values():
        for w in waiters:
            if not w.done():
                w.set_exception(err)
