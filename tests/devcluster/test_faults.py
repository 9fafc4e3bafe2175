"""FaultyStore: each fault does what it says, on real etcd underneath."""

from __future__ import annotations

import pytest

from allocator.errors import StoreError
from allocator.store import EtcdStore
from allocator.txn import GuardedTxn, commit
from devcluster.faults import FaultyStore


@pytest.fixture
async def faults(etcd_single):
    store = FaultyStore(EtcdStore(etcd_single.endpoints))
    try:
        yield store
    finally:
        await store.close()


@pytest.mark.parametrize("applied", [True, False])
async def test_a_lost_answer_raises_whether_or_not_the_write_applied(faults, key_prefix,
                                                                     applied):
    faults.lose_answers(applied=applied)
    with pytest.raises(StoreError):
        await commit(faults, GuardedTxn().put(key_prefix + "k", "v"))
    assert (await faults.get(key_prefix + "k") is not None) == applied
    await commit(faults, GuardedTxn().put(key_prefix + "k2", "v"))  # the next one is fine
    assert faults.answers_lost == 1 and faults.writes_seen == 2


async def test_reads_are_not_writes_and_an_outage_fails_everything_until_healed(faults,
                                                                                 key_prefix):
    faults.lose_answers(applied=True)
    assert await faults.get_many([key_prefix + "x"]) == {}  # a read: the fault waits
    faults.outage()
    with pytest.raises(StoreError):
        await faults.count(key_prefix)
    assert all(not ok for _, ok in await faults.status())
    faults.heal()
    assert (await faults.count(key_prefix))[0] == 0


async def test_an_open_watch_breaks_and_the_next_ones_fail_on_demand(faults, key_prefix):
    _, revision = await faults.count(key_prefix)
    stream = faults.watch(key_prefix, revision + 1)
    await commit(faults, GuardedTxn().put(key_prefix + "w", "1"))
    events, _ = await anext(stream)
    assert [e.key for e in events] == [key_prefix + "w"]
    faults.break_watches()
    with pytest.raises(StoreError):
        await anext(stream)
    faults.fail_watches(1)
    with pytest.raises(StoreError):
        await anext(faults.watch(key_prefix, revision + 1))
    assert faults.watches_failed == 1
