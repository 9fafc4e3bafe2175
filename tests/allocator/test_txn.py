"""Guarded transactions report which guard failed, by name, against real etcd."""

from __future__ import annotations

import uuid

from allocator.store import EtcdStore
from allocator.txn import GuardedTxn, commit


async def test_a_failed_transaction_names_exactly_the_guards_that_failed(ipam):
    k = ipam.keys.prefix
    await commit(ipam.store, GuardedTxn().put(k + "held", "1").put(k + "dir/x", "1"))
    held = await ipam.store.get(k + "held")
    txn = (GuardedTxn()
           .absent("taken", k + "held")
           .absent("free", k + "nothing")
           .present("gone", k + "missing")
           .unchanged("same", k + "held", held.mod_revision)
           .prefix_empty("busy", k + "dir/")
           .prefix_unchanged_since("quiet", k + "dir/", held.mod_revision)
           .read("extra", k + "held")
           .put(k + "new", "1"))
    out = await commit(ipam.store, txn)
    assert not out.succeeded
    assert out.failed == {"taken", "gone", "busy"}
    assert out.found("taken").value == b"1" and out.found("extra").value == b"1"
    assert out.found("free") is None
    assert await ipam.store.get(k + "new") is None  # nothing was written


async def test_a_transaction_whose_guards_hold_applies_every_write(ipam):
    k = ipam.keys.prefix
    out = await commit(ipam.store, GuardedTxn().absent("free", k + "a").put(k + "a", "1")
                       .put(k + "b", "2"))
    assert out.succeeded and out.failed == frozenset()
    assert (await ipam.store.get(k + "b")).value == b"2"


def test_written_keys_are_the_puts_and_deletes_and_without_drops_them():
    txn = GuardedTxn().absent("mac", "/m").put("/a", "1").delete("/b").put("/m", "x")
    assert txn.written_keys == {"/a", "/b", "/m"}
    txn.without({"/m"})
    assert txn.written_keys == {"/a", "/b"} and txn.guard_names == []


async def test_a_transaction_of_hundreds_of_writes_and_few_guards_is_one_etcd_accepts(
        etcd_single):
    """`commit` nests writes beyond one level, keeping one put at the top (the quota
    weighs it): its chunks must leave that put room under etcd's --max-txn-ops, or etcd
    refuses the whole request (a network of 200 subnets writes about 400 keys)."""
    store = EtcdStore(etcd_single.endpoints)
    prefix = f"/t/txn/{uuid.uuid4().hex[:8]}/"
    try:
        for writes, guards in ((403, 4), (1_000, 1), (3_000, 100)):
            txn = GuardedTxn()
            for i in range(guards):
                txn.absent(f"guard {i}", f"{prefix}{writes}/guard/{i}")
            for i in range(writes):
                txn.put(f"{prefix}{writes}/k/{i:05d}", "v")
            outcome = await commit(store, txn)
            assert outcome.succeeded, (writes, guards)
            assert (await store.count(f"{prefix}{writes}/k/"))[0] == writes
    finally:
        await store.close()


def test_a_transaction_is_built_as_its_guards_and_writes_say_and_its_size_bounds_it():
    """`request()` builds the plain data a transaction holds into one message: the same
    compares, writes and failure reads, in order; `size` bounds its bytes without
    building it (the committer packs requests under etcd's limit by it)."""
    txn = (GuardedTxn().absent("a", "/k/a").present("p", "/k/p").unchanged("u", "/k/u", 7)
           .prefix_empty("e", "/k/e/").prefix_unchanged_since("q", "/k/q/", 9)
           .read("r", "/k/r").put("/k/w", "v" * 300).put("/k/l", b"x", 42).delete("/k/d"))
    op = txn.request().request_txn
    assert [c.key for c in op.compare] == [b"/k/a", b"/k/p", b"/k/u", b"/k/e/", b"/k/q/"]
    assert list(op.compare) == txn.compares()
    assert list(op.failure) == txn.failure_reads()
    assert list(op.success) == txn.writes
    assert op.success[1].request_put.lease == 42
    assert op.success[2].request_delete_range.key == b"/k/d"
    for t in (txn, GuardedTxn(), GuardedTxn().put("/" + "k" * 5000, "v" * 100_000, 1)):
        assert t.size >= t.request().ByteSize()
