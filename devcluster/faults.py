"""A real etcd store that fails on demand: the faults a robustness test needs, no monkeypatching.

`FaultyStore` wraps an `EtcdStore` (real etcd underneath, always) and implements the
allocator's `Store` protocol; a test arms a fault, and the next matching call meets it:

    faults = FaultyStore(EtcdStore(endpoints))
    ipam = IPAM(faults, prefix)
    faults.lose_answers(1, applied=True)   # the next write is applied, its answer lost
    faults.lose_answers(1, applied=False)  # the next write never reaches etcd
    faults.fail_watches(2)                 # the next two watches cannot be set up
    faults.break_watches()                 # every open watch ends now, as on a lost stream
    faults.compact_watches()               # every open watch meets a compaction
    faults.outage()                        # every call fails until `heal()`

A *write* is a transaction that puts or deletes (reads batched in a transaction are
not writes). A lost answer raises `StoreError`, as a broken connection does: the
caller cannot tell whether it applied.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

from aetcd import rpc

from allocator.errors import StoreError
from allocator.store import KV, Compacted, EtcdStore, WatchEvent


def _writes(ops: Sequence[rpc.RequestOp]) -> bool:
    for op in ops:
        if op.HasField("request_put") or op.HasField("request_delete_range"):
            return True
        if op.HasField("request_txn") and _writes(op.request_txn.success):
            return True
    return False


class FaultyStore:
    """An `EtcdStore` with faults a test arms (see the module docstring)."""

    def __init__(self, store: EtcdStore) -> None:
        self.store = store
        self.writes_seen = 0
        self.answers_lost = 0
        self.watches_failed = 0
        self._lose: list[tuple[bool, Callable[[], Awaitable[Any]] | None, StoreError]] = []
        self._failing_watches: list[str] = []  # one per watch to fail: the prefix it targets
        # Each open watch's fault queue, and the prefix it watches.
        self._watch_faults: dict[asyncio.Queue[BaseException], str] = {}
        self._down = False

    # -- arming ---------------------------------------------------------------------

    def lose_answers(self, times: int = 1, *, applied: bool,
                     meanwhile: Callable[[], Awaitable[Any]] | None = None,
                     error: StoreError | None = None) -> None:
        """The next `times` writes raise StoreError, after being applied or instead.

        `meanwhile`: run after the write applied and before its error is raised (another
        client's change that lands while the answer is lost). `error`: what is raised
        instead (StorageFull, applied: etcd applies the write that crosses its quota and
        answers it "database space exceeded" all the same).
        """
        lost = error or StoreError("connection lost before the answer (injected)")
        self._lose.extend([(applied, meanwhile, lost)] * times)

    def fail_watches(self, times: int, prefix: str = "") -> None:
        """The next `times` watches (of keys under `prefix`: a node watches several
        prefixes) raise StoreError before their first event."""
        self._failing_watches.extend([prefix] * times)

    def break_watches(self, prefix: str = "") -> None:
        """Every open watch (of keys under `prefix`) raises StoreError now (a stream that
        could not be resumed)."""
        self._inject(StoreError("watch broken by the test"), prefix)

    def compact_watches(self, revision: int = 1) -> None:
        """Every open watch raises Compacted now (its history was compacted away)."""
        self._inject(Compacted(revision))

    def outage(self) -> None:
        """Every call fails with StoreError until `heal()`."""
        self._down = True

    def heal(self) -> None:
        self._down = False

    def _inject(self, err: BaseException, prefix: str = "") -> None:
        for queue, watched in self._watch_faults.items():
            if watched.startswith(prefix):
                queue.put_nowait(err)

    def _check_up(self) -> None:
        if self._down:
            raise StoreError("etcd unreachable (injected outage)")

    # -- the Store protocol -------------------------------------------------------------

    async def txn(self, compare: Sequence[rpc.Compare], success: Sequence[rpc.RequestOp],
                  failure: Sequence[rpc.RequestOp] = (), *, retry: bool = False
                  ) -> rpc.TxnResponse:
        self._check_up()
        if not _writes(success):
            return await self.store.txn(compare, success, failure, retry=retry)
        self.writes_seen += 1
        if not self._lose:
            return await self.store.txn(compare, success, failure, retry=retry)
        applied, meanwhile, error = self._lose.pop(0)
        self.answers_lost += 1
        if applied:
            await self.store.txn(compare, success, failure, retry=retry)
            if meanwhile is not None:
                await meanwhile()
        raise error

    async def get(self, key: str) -> KV | None:
        self._check_up()
        return await self.store.get(key)

    async def get_many(self, keys: Iterable[str]) -> dict[str, KV]:
        self._check_up()
        return await self.store.get_many(keys)

    async def first_keys(self, prefix: str, limit: int, *, descending: bool = False,
                         keys_only: bool = True) -> list[KV]:
        self._check_up()
        return await self.store.first_keys(prefix, limit, descending=descending,
                                           keys_only=keys_only)

    async def count(self, prefix: str) -> tuple[int, int]:
        self._check_up()
        return await self.store.count(prefix)

    async def scan(self, prefix: str, *, keys_only: bool = False, revision: int = 0,
                   page: int = 5000) -> tuple[list[KV], int]:
        self._check_up()
        return await self.store.scan(prefix, keys_only=keys_only, revision=revision, page=page)

    async def lease_grant(self, ttl: int) -> int:
        self._check_up()
        return await self.store.lease_grant(ttl)

    async def status(self) -> list[tuple[str, bool]]:
        if self._down:
            return [(e, False) for e in self.store.endpoints]
        return await self.store.status()

    async def watch(self, prefix: str, start_revision: int
                    ) -> AsyncIterator[tuple[list[WatchEvent], int]]:
        self._check_up()
        armed = next((p for p in self._failing_watches if prefix.startswith(p)), None)
        if armed is not None:
            self._failing_watches.remove(armed)
            self.watches_failed += 1
            raise StoreError("watch could not be set up (injected)")
        faults: asyncio.Queue[BaseException] = asyncio.Queue()
        self._watch_faults[faults] = prefix
        inner = self.store.watch(prefix, start_revision).__aiter__()
        fault = asyncio.ensure_future(faults.get())
        step: asyncio.Future[Any] | None = None
        try:
            while True:
                step = asyncio.ensure_future(inner.__anext__())
                done, _ = await asyncio.wait({step, fault}, return_when=asyncio.FIRST_COMPLETED)
                if fault in done:
                    raise fault.result()
                try:
                    item = step.result()
                except StopAsyncIteration:
                    return
                yield item
        finally:
            fault.cancel()
            self._watch_faults.pop(faults, None)
            if step is not None and not step.done():
                step.cancel()
                with contextlib.suppress(BaseException):
                    await step
            await inner.aclose()  # type: ignore[attr-defined]

    async def close(self) -> None:
        await self.store.close()

    def __getattr__(self, name: str) -> Any:
        # Counters and endpoint facts (requests, endpoints, ...) are the real store's.
        return getattr(self.store, name)
