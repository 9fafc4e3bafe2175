"""Packing logic of the node's committer, against a recording stand-in for etcd.

Pure batching logic (DESIGN.md section 6 allows a fake here); the real commits are
exercised by every booking test against real etcd.
"""

from __future__ import annotations

import asyncio

import pytest

from allocator import store as st
from allocator.committer import Committer
from allocator.errors import StoreError
from allocator.txn import GuardedTxn


class RecordingStore:
    """Answers each nested transaction as applied; records the keys of each request."""

    def __init__(self) -> None:
        self.requests: list[list[str]] = []
        self.release = asyncio.Event()
        self.fail = False

    async def txn(self, compare, success, failure=(), retry=False):
        keys = [op.request_txn.success[0].request_put.key.decode() for op in success]
        self.requests.append(keys)
        await self.release.wait()
        if self.fail:
            raise StoreError("etcd went away")
        resp = st.rpc.TxnResponse(succeeded=True)
        for _ in keys:
            resp.responses.add().response_txn.CopyFrom(st.rpc.TxnResponse(succeeded=True))
        return resp


def writing(*keys: str) -> GuardedTxn:
    txn = GuardedTxn()
    for k in keys:
        txn.put(k, "")
    return txn


async def test_waiting_changes_share_one_request_and_each_gets_its_outcome():
    store = RecordingStore()
    committer = Committer(store, max_inflight=1)  # type: ignore[arg-type]
    first = asyncio.ensure_future(committer.commit(writing("a1")))
    await asyncio.sleep(0)
    waiting = [asyncio.ensure_future(committer.commit(writing(f"{s}1"))) for s in "bcd"]
    await asyncio.sleep(0)
    store.release.set()
    outcomes = await asyncio.gather(first, *waiting)
    assert store.requests == [["a1"], ["b1", "c1", "d1"]]
    assert all(o.succeeded for o in outcomes)


async def test_changes_writing_a_common_key_never_ride_together_and_size_is_capped():
    store = RecordingStore()
    committer = Committer(store, max_inflight=1, max_nested=3)  # type: ignore[arg-type]
    hold = asyncio.ensure_future(committer.commit(writing("h")))
    await asyncio.sleep(0)
    txns = [writing("x1", "mac"), writing("y1", "mac"), writing("z1"), writing("z2"),
            writing("w1")]
    tasks = [asyncio.ensure_future(committer.commit(t)) for t in txns]
    await asyncio.sleep(0)
    store.release.set()
    await asyncio.gather(hold, *tasks)
    assert store.requests[1:] == [["x1", "z1", "z2"], ["y1", "w1"]]


async def test_a_failed_request_fails_every_change_on_it():
    store = RecordingStore()
    store.fail = True
    committer = Committer(store, max_inflight=1)  # type: ignore[arg-type]
    tasks = [asyncio.ensure_future(committer.commit(writing(f"k{i}"))) for i in range(3)]
    await asyncio.sleep(0)
    store.release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, StoreError) for r in results)
    with pytest.raises(StoreError):
        await committer.commit(writing("again"))
