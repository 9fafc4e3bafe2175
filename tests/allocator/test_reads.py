"""GETs of one IP coalesced into one etcd request (`allocator.reads`), against real etcd:
each waiter gets its own answer, a write acknowledged before a GET starts is seen by it
on any node, a failed batch fails each of its waiters only, a cancelled waiter none."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest
from allocator_support import book_in, connected, make_pn, new_project

from allocator.errors import NotFound, StoreError
from allocator.reads import CoalescedReads
from allocator.store import KV, Store
from devcluster.faults import FaultyStore


@dataclass
class Read:
    """One read a `HeldAnswers` was asked: its keys, and the test's hold on its answer."""

    keys: list[str]
    done: asyncio.Event = field(default_factory=asyncio.Event)  # etcd has answered it
    release: asyncio.Event = field(default_factory=asyncio.Event)


class HeldAnswers:
    """The real store, whose reads hold their answer until the test releases it: a read
    that has read etcd and is still in flight, for as long as the test needs."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.reads: list[Read] = []
        self.holding = True
        self._progress = asyncio.Event()

    @property
    def batches(self) -> list[list[str]]:
        return [r.keys for r in self.reads]

    async def get(self, key: str) -> KV | None:
        return (await self.get_many([key])).get(key)

    async def get_many(self, keys: Iterable[str]) -> dict[str, KV]:
        read = Read(list(keys))
        if not self.holding:
            read.release.set()
        self.reads.append(read)
        found = await self.store.get_many(read.keys)
        read.done.set()
        self._progress.set()
        await read.release.wait()
        return found

    async def read(self, i: int) -> Read:
        """The `i`th read (from 0), once etcd has answered it (it holds the answer)."""
        while len(self.reads) <= i or not self.reads[i].done.is_set():
            self._progress.clear()
            await self._progress.wait()
        return self.reads[i]

    def release_all(self) -> None:
        """Every read answers at once, now and from now on."""
        self.holding = False
        for r in self.reads:
            r.release.set()


@pytest.fixture
async def booked(ipam):
    project = new_project()
    pn = await make_pn(ipam, project, "10.77.0.0/24")
    ips = await asyncio.gather(*(ipam.book(book_in(pn, project)) for _ in range(5)))
    return ipam, ips


def hold_answers(ipam) -> HeldAnswers:
    held = HeldAnswers(ipam.queries.reads.store)
    ipam.queries.reads.store = held
    return held


def keys(ipam, *ips) -> list[str]:
    return [ipam.keys.ip(ip.id) for ip in ips]


async def test_gets_asked_while_a_read_is_in_flight_share_the_next_one_and_get_their_own(
        booked):
    ipam, ips = booked
    held = hold_answers(ipam)
    first = asyncio.create_task(ipam.get_ip(ips[0].id))
    await held.read(0)
    later = [asyncio.create_task(ipam.get_ip(ip.id)) for ip in ips[1:]]
    await asyncio.sleep(0)  # they are asked, and wait: one read in flight at a time
    assert held.batches == [keys(ipam, ips[0])]

    held.release_all()

    assert (await first).id == ips[0].id
    assert [(r.id, r.address, r.revision) for r in [await t for t in later]] == [
        (ip.id, ip.address, ip.revision) for ip in ips[1:]]
    assert held.batches == [keys(ipam, ips[0]), keys(ipam, *ips[1:])]


async def test_many_concurrent_gets_cost_two_reads(booked):
    ipam, ips = booked
    before = ipam.queries.reads.batches

    got = await asyncio.gather(*(ipam.get_ip(ip.id) for ip in ips * 4))

    # The first is sent alone at once; the others, asked meanwhile, together after it.
    assert ipam.queries.reads.batches - before == 2
    assert [r.id for r in got] == [ip.id for ip in ips * 4]


async def test_a_missing_ip_in_a_batch_is_not_found_and_the_others_are_answered(booked):
    ipam, ips = booked
    held = hold_answers(ipam)
    held.release_all()
    missing = str(uuid.uuid4())

    got = await asyncio.gather(ipam.get_ip(ips[0].id), ipam.get_ip(missing),
                               ipam.get_ip(ips[1].id), return_exceptions=True)

    assert held.batches == [keys(ipam, ips[0]), [ipam.keys.ip(missing), ipam.keys.ip(ips[1].id)]]
    assert [r.id for r in (got[0], got[2])] == [ips[0].id, ips[1].id]
    assert isinstance(got[1], NotFound)
    assert (got[1].resource, got[1].resource_id) == ("ip", missing)


async def test_a_missing_ip_read_alone_is_not_found(booked):
    ipam, _ = booked
    missing = str(uuid.uuid4())
    with pytest.raises(NotFound) as err:
        await ipam.get_ip(missing)
    assert (err.value.resource, err.value.resource_id) == ("ip", missing)


async def test_the_same_ip_asked_twice_in_a_batch_is_read_once_and_answered_twice(booked):
    ipam, ips = booked
    held = hold_answers(ipam)
    held.release_all()

    _, first, second = await asyncio.gather(ipam.get_ip(ips[1].id), ipam.get_ip(ips[0].id),
                                            ipam.get_ip(ips[0].id))

    assert held.batches == [keys(ipam, ips[1]), keys(ipam, ips[0])]
    assert first == second and first.id == ips[0].id


async def test_a_write_acknowledged_before_a_get_starts_is_seen_by_it_on_the_same_node(booked):
    ipam, ips = booked
    held = hold_answers(ipam)
    before = asyncio.create_task(ipam.get_ip(ips[0].id))
    await held.read(0)  # a read of the IP has read etcd, and is still in flight

    # The change's own read of the IP would wait on the held batch: it reads apart.
    ipam.lifecycle.reads = None
    await ipam.update_ip(ips[0].id, tags=["changed"])
    after = asyncio.create_task(ipam.get_ip(ips[0].id))
    await asyncio.sleep(0)  # asked while the first read is in flight
    held.release_all()

    assert (await before).tags == ()  # it started before the write: either is right
    assert (await after).tags == ("changed",)
    assert held.batches == [keys(ipam, ips[0]), keys(ipam, ips[0])]


async def test_a_write_acknowledged_on_another_node_before_a_get_starts_is_seen_by_it(
        booked, etcd_single, key_prefix):
    ipam, ips = booked
    held = hold_answers(ipam)
    async with connected(etcd_single.endpoints, key_prefix) as other_node:
        before = asyncio.create_task(ipam.get_ip(ips[1].id))
        await held.read(0)  # a read of the IP has read etcd, and is still in flight

        await other_node.update_ip(ips[1].id, tags=["elsewhere"])
        after = [asyncio.create_task(ipam.get_ip(ip.id)) for ip in (ips[1], ips[2])]
        await asyncio.sleep(0)  # asked while the first read is in flight
        held.release_all()

        assert (await before).tags == ()
        changed, _ = [await t for t in after]
    assert changed.tags == ("elsewhere",)
    assert changed.revision > ips[1].revision
    assert held.batches == [keys(ipam, ips[1]), keys(ipam, ips[1], ips[2])]


async def test_a_failed_batch_fails_each_waiter_and_the_next_batch_works(booked):
    ipam, ips = booked
    faults = FaultyStore(ipam.queries.reads.store)
    held = HeldAnswers(faults)
    ipam.queries.reads.store = held
    first = asyncio.create_task(ipam.get_ip(ips[0].id))
    await held.read(0)
    waiting = [asyncio.create_task(ipam.get_ip(ip.id)) for ip in ips[1:4]]
    await asyncio.sleep(0)  # asked, for the next batch

    faults.outage()
    held.release_all()

    assert (await first).id == ips[0].id  # read before the outage
    got = await asyncio.gather(*waiting, return_exceptions=True)
    assert held.batches == [keys(ipam, ips[0]), keys(ipam, *ips[1:4])]
    assert [type(e) for e in got] == [StoreError] * 3
    assert {str(e) for e in got} == {"etcd unreachable (injected outage)"}
    faults.heal()
    got = await asyncio.gather(*(ipam.get_ip(ip.id) for ip in ips[1:4]))
    assert [r.id for r in got] == [ip.id for ip in ips[1:4]]


async def test_a_read_sent_alone_that_fails_fails_its_caller_only(booked):
    ipam, ips = booked
    faults = FaultyStore(ipam.queries.reads.store)
    ipam.queries.reads.store = faults
    faults.outage()
    with pytest.raises(StoreError, match="injected outage"):
        await ipam.get_ip(ips[0].id)
    faults.heal()
    assert (await ipam.get_ip(ips[0].id)).id == ips[0].id


async def test_a_cancelled_waiter_leaves_the_others_of_its_batch_answered(booked):
    ipam, ips = booked
    held = hold_answers(ipam)
    first = asyncio.create_task(ipam.get_ip(ips[0].id))
    await held.read(0)
    waiting = [asyncio.create_task(ipam.get_ip(ip.id)) for ip in ips[1:4]]
    await asyncio.sleep(0)
    held.reads[0].release.set()
    await held.read(1)  # their batch has read etcd, and is in flight

    waiting[1].cancel()
    held.release_all()

    assert [(await first).id, (await waiting[0]).id, (await waiting[2]).id] == [
        ips[0].id, ips[1].id, ips[3].id]
    with pytest.raises(asyncio.CancelledError):
        await waiting[1]
    assert held.batches == [keys(ipam, ips[0]), keys(ipam, *ips[1:4])]


async def test_a_cancelled_waiter_of_the_next_batch_is_not_read(booked):
    ipam, ips = booked
    held = hold_answers(ipam)
    first = asyncio.create_task(ipam.get_ip(ips[0].id))
    await held.read(0)
    dropped = asyncio.create_task(ipam.get_ip(ips[1].id))
    kept = asyncio.create_task(ipam.get_ip(ips[2].id))
    await asyncio.sleep(0)  # both are asked, for the next batch

    dropped.cancel()
    held.release_all()

    assert [(await first).id, (await kept).id] == [ips[0].id, ips[2].id]
    with pytest.raises(asyncio.CancelledError):
        await dropped
    assert held.batches == [keys(ipam, ips[0]), keys(ipam, ips[2])]


async def test_a_batch_whose_every_waiter_was_cancelled_is_not_sent(booked):
    ipam, ips = booked
    held = hold_answers(ipam)
    first = asyncio.create_task(ipam.get_ip(ips[0].id))
    await held.read(0)
    dropped = asyncio.create_task(ipam.get_ip(ips[1].id))
    await asyncio.sleep(0)

    dropped.cancel()
    held.release_all()

    assert (await first).id == ips[0].id
    with pytest.raises(asyncio.CancelledError):
        await dropped
    assert (await ipam.get_ip(ips[3].id)).id == ips[3].id  # and reads go on
    assert held.batches == [keys(ipam, ips[0]), keys(ipam, ips[3])]


async def test_closing_cancels_the_waiters_and_reads_start_again_after(booked):
    ipam, ips = booked
    held = HeldAnswers(ipam.store)
    reads = CoalescedReads(held)
    alone = asyncio.create_task(reads.get(ipam.keys.ip(ips[0].id)))
    await held.read(0)
    batched = asyncio.create_task(reads.get(ipam.keys.ip(ips[1].id)))
    await asyncio.sleep(0)
    held.reads[0].release.set()
    await held.read(1)  # a batch is in flight
    waiting = asyncio.create_task(reads.get(ipam.keys.ip(ips[2].id)))
    await asyncio.sleep(0)

    await reads.close()

    assert (await alone) is not None  # sent alone by its caller: it keeps its answer
    for task in (batched, waiting):
        with pytest.raises(asyncio.CancelledError):
            await task
    held.release_all()
    kv = await reads.get(ipam.keys.ip(ips[3].id))
    assert kv is not None and kv.key == ipam.keys.ip(ips[3].id)
    await reads.close()  # nothing in flight: nothing to do
