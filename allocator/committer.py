"""Group commit across sources: one etcd request carries the batches of many sources.

Each source's engine groups its own bookings into a batch (one nested transaction
per booking). When many sources are busy at once, each of them has only a few
bookings in hand; sending a request per source would cost a round trip per
booking again. The committer packs the batches that are waiting into one outer
transaction, up to what one etcd request may carry, while at most `inflight`
requests are out; a batch waits only while the node's requests are all in flight.

Sibling nested transactions must not write the same key (etcd refuses the whole
request), so batches that write a common key (an address, an IP, an idempotency
key, a MAC, a release marker) never ride the same request; and a request stays
under etcd's size limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import store as st
from .errors import StoreError

# Outer request: one op per nested transaction; each nested one may use what is left.
MAX_NESTED = 64
# etcd refuses requests over --max-request-bytes (1.5 MiB by default): stay well below.
REQUEST_BYTES = 1024 * 1024


@dataclass
class _Waiting:
    ops: list[st.rpc.RequestOp]
    unique: frozenset[str]
    size: int = 0
    future: asyncio.Future[list[st.rpc.TxnResponse]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


def written_keys(ops: Sequence[st.rpc.RequestOp]) -> frozenset[str]:
    """Every key `ops` put or delete: changes sharing one must not share a request."""
    keys = set()
    for op in ops:
        if op.HasField("request_put"):
            keys.add(op.request_put.key.decode())
        elif op.HasField("request_delete_range"):
            keys.add(op.request_delete_range.key.decode())
    return frozenset(keys)


class Committer:
    """Sends the nested transactions of many batches in as few etcd requests as it can."""

    def __init__(self, store: st.EtcdStore, *, inflight: int = 2,
                 max_nested: int = MAX_NESTED) -> None:
        self.store = store
        self.inflight_limit = inflight
        self.max_nested = max_nested
        self.requests = 0
        self._waiting: list[_Waiting] = []
        self._inflight = 0

    async def commit(self, ops: Sequence[st.rpc.RequestOp],
                     unique: frozenset[str] = frozenset(),
                     size: int | None = None) -> list[st.rpc.TxnResponse]:
        """Commit nested transactions; their responses, in order. StoreError: unknown.

        `size`: their encoded bytes, when the caller has counted them already.
        """
        if size is None:
            size = sum(op.ByteSize() for op in ops)
        waiting = _Waiting(list(ops), unique, size)
        self._waiting.append(waiting)
        self._kick()
        return await waiting.future

    def _kick(self) -> None:
        while self._inflight < self.inflight_limit and self._waiting:
            packed: list[_Waiting] = []
            used: set[str] = set()
            count = size = 0
            for w in list(self._waiting):
                if packed and (count + len(w.ops) > self.max_nested or w.unique & used
                               or size + w.size > REQUEST_BYTES):
                    continue
                packed.append(w)
                used |= w.unique
                count += len(w.ops)
                size += w.size
                self._waiting.remove(w)
                if count >= self.max_nested:
                    break
            self._inflight += 1
            asyncio.ensure_future(self._send(packed))

    async def _send(self, packed: list[_Waiting]) -> None:
        try:
            self.requests += 1
            resp = await self.store.txn([], [op for w in packed for op in w.ops])
            start = 0
            for w in packed:
                end = start + len(w.ops)
                if not w.future.done():  # its caller may have gone away meanwhile
                    w.future.set_result([r.response_txn for r in resp.responses[start:end]])
                start = end
        except StoreError as err:
            for w in packed:
                if not w.future.done():
                    w.future.set_exception(err)
        except BaseException as err:  # never leave a batch hanging
            for w in packed:
                if not w.future.done():
                    w.future.set_exception(StoreError(f"commit failed: {err!r}"))
            raise
        finally:
            self._inflight -= 1
            self._kick()
