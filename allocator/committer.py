"""Group commit: the node's one packer of transactions into etcd requests.

Every booking and lifecycle change of a node, whatever its source, hands its
guarded transaction to the node's committer and waits for its outcome. While
`max_inflight` requests are out, the transactions that arrive wait; as soon as a
request returns, everything waiting leaves in the next one, each as a nested
transaction (etcd >= 3.3): one round trip commits many changes, and each learns
from its own failure reads what beat it.

What one request may carry is decided here and nowhere else:
- at most MAX_NESTED nested transactions, and under etcd's request size limit;
- never two transactions that write a common key (an address, an IP, an
  idempotency key, a MAC): etcd refuses the whole request;
- markers (`GuardedTxn.mark`, the `freed` key of a source that every release
  writes) are not such keys: the request writes each once, beside the changes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from . import store as st
from .errors import StoreError
from .store import MAX_TXN_OPS
from .txn import GuardedTxn, TxnOutcome, marker_ops

# Outer request: one op per nested transaction; each nested one may use what is left.
MAX_NESTED = 64
# etcd refuses requests over --max-request-bytes (1.5 MiB by default): stay well below.
REQUEST_BYTES = 1024 * 1024


class CommitObserver(Protocol):
    """Told of every request the committer sent (metrics); none by default."""

    def committed(self, transactions: int, seconds: float, failed: bool) -> None: ...


class _Waiting:
    __slots__ = ("future", "marks", "op", "size", "txn", "written")

    def __init__(self, txn: GuardedTxn, future: asyncio.Future[TxnOutcome]) -> None:
        self.txn, self.future = txn, future
        self.op = txn.request()
        self.size = txn.size
        self.written = txn.written_keys
        self.marks = txn.marks


class Committer:
    """Sends the guarded transactions of a node in as few etcd requests as it can."""

    def __init__(self, store: st.Store, *, max_inflight: int = 2,
                 max_nested: int = MAX_NESTED, observer: CommitObserver | None = None) -> None:
        self.store = store
        self.observer = observer
        self.max_inflight = max_inflight
        self.max_nested = max_nested
        self.requests = 0
        self._waiting: list[_Waiting] = []
        self._inflight = 0

    def commit(self, txn: GuardedTxn) -> asyncio.Future[TxnOutcome]:
        """Commit `txn` with whatever else is waiting: await its outcome (StoreError: the
        outcome is unknown). A plain function returning the future, so that a booking's
        await chain is one frame shorter."""
        future: asyncio.Future[TxnOutcome] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(txn, future))
        self._send_what_fits()
        return future

    def _send_what_fits(self) -> None:
        while self._inflight < self.max_inflight and self._waiting:
            packed: list[_Waiting] = []
            written: set[str] = set()
            marks: dict[str, tuple[str, str]] = {}
            size = 0
            left: list[_Waiting] = []
            for w in self._waiting:
                if w.future.done():  # its caller went away meanwhile
                    continue
                keys = w.written
                if len(packed) >= self.max_nested or keys & written or (
                        packed and size + w.size > REQUEST_BYTES) or (
                        w.marks and len(packed) + len(marks | w.marks) >= MAX_TXN_OPS):
                    left.append(w)
                    continue
                packed.append(w)
                written |= keys
                if w.marks:
                    marks |= w.marks
                size += w.size
            self._waiting = left
            if not packed:
                return
            self._inflight += 1
            asyncio.ensure_future(self._send(packed, marks))

    async def _send(self, packed: list[_Waiting], marks: dict[str, tuple[str, str]]) -> None:
        started, failed = time.perf_counter(), True
        try:
            self.requests += 1
            ops = [w.op for w in packed]
            if marks:
                ops += marker_ops(marks)
            resp = await self.store.txn([], ops)
            failed = False
            revision = resp.header.revision
            for w, r in zip(packed, resp.responses[:len(packed)], strict=True):
                if not w.future.done():
                    w.future.set_result(w.txn.outcome(r.response_txn, revision))
        except StoreError as err:
            for w in packed:
                if not w.future.done():
                    w.future.set_exception(err)
        except BaseException as err:  # never leave a change hanging
            for w in packed:
                if not w.future.done():
                    w.future.set_exception(StoreError(f"commit failed: {err!r}"))
            raise
        finally:
            self._inflight -= 1
            if self.observer is not None:
                self.observer.committed(len(packed), time.perf_counter() - started, failed)
            self._send_what_fits()
