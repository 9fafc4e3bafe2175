"""Packing logic of the cross-source committer, against a recording stand-in for etcd.

Pure batching logic (DESIGN.md section 6 allows a fake here); the real commits are
exercised by every booking test against real etcd.
"""

from __future__ import annotations

import asyncio

import pytest

from allocator import store as st
from allocator.committer import Committer, written_keys
from allocator.errors import StoreError


class RecordingStore:
    """Answers each nested transaction with a response naming its key; can be held or fail."""

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
        for k in keys:
            inner = st.rpc.TxnResponse(succeeded=True)
            inner.responses.add().response_range.kvs.add(key=k.encode())
            resp.responses.add().response_txn.CopyFrom(inner)
        return resp


def nested(key: str) -> st.rpc.RequestOp:
    return st.nested([], [st.put(key, "")])


async def test_waiting_batches_share_one_request_and_get_their_own_answers():
    store = RecordingStore()
    committer = Committer(store, inflight=1)  # type: ignore[arg-type]
    first = asyncio.ensure_future(committer.commit([nested("a1")]))
    await asyncio.sleep(0)
    waiting = [asyncio.ensure_future(committer.commit([nested(f"{s}{i}") for i in range(3)]))
               for s in "bcd"]
    await asyncio.sleep(0)
    store.release.set()
    answers = await asyncio.gather(first, *waiting)
    assert store.requests == [["a1"], ["b0", "b1", "b2", "c0", "c1", "c2", "d0", "d1", "d2"]]
    for answer, source in zip(answers[1:], "bcd", strict=True):
        assert [r.responses[0].response_range.kvs[0].key.decode() for r in answer] == [
            f"{source}{i}" for i in range(3)]


async def test_batches_sharing_a_unique_key_never_ride_together_and_size_is_capped():
    store = RecordingStore()
    committer = Committer(store, inflight=1, max_nested=4)  # type: ignore[arg-type]
    hold = asyncio.ensure_future(committer.commit([nested("h")]))
    await asyncio.sleep(0)
    calls = [committer.commit([nested("x1")], frozenset({"mac"})),
             committer.commit([nested("y1")], frozenset({"mac"})),
             committer.commit([nested("z1"), nested("z2"), nested("z3")]),
             committer.commit([nested("w1")])]
    tasks = [asyncio.ensure_future(c) for c in calls]
    await asyncio.sleep(0)
    store.release.set()
    await asyncio.gather(hold, *tasks)
    assert store.requests[1:] == [["x1", "z1", "z2", "z3"], ["y1", "w1"]]


async def test_a_failed_request_fails_every_batch_on_it():
    store = RecordingStore()
    store.fail = True
    committer = Committer(store, inflight=1)  # type: ignore[arg-type]
    tasks = [asyncio.ensure_future(committer.commit([nested(f"k{i}")])) for i in range(3)]
    await asyncio.sleep(0)
    store.release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, StoreError) for r in results)
    with pytest.raises(StoreError):
        await committer.commit([nested("again")])


def test_written_keys_are_the_puts_and_deletes():
    ops = [st.put("/a", "1"), st.delete("/b"), st.get("/c")]
    assert written_keys(ops) == frozenset({"/a", "/b"})
