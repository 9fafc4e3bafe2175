"""What a review found could wedge or mislead a node, each proven fixed against real etcd.

Every test records its bookings, releases, attaches and moves into a history
(`recording.RecordingIPAM`) and ends by checking it against etcd (`clean_history`):
not only the final state, but what each client was told along the way.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from allocator_support import book_in, clean_audit, connected, make_pn
from recording import RecordingIPAM, clean_history

from allocator.contract import IPAM, Caller, IPFilter, IPRecord, Resource
from allocator.errors import (
    AlreadyExists,
    InvalidArgument,
    OutcomeUnknown,
    PoolExhausted,
    StorageFull,
    StoreError,
)
from allocator.store import EtcdStore
from bench.history import OK, UNKNOWN, History
from devcluster.faults import FaultyStore

SERVER = Caller(role="product", product_types=frozenset({"instance_server"}))


@pytest.fixture
def history() -> History:
    return History()


@pytest.fixture
def ipam(ipam, history):
    """The shared member's allocator, its changes recorded."""
    return RecordingIPAM(ipam, history)


@pytest.fixture
async def faults(etcd_single):
    """The shared member behind a store that fails on demand (real etcd underneath)."""
    store = FaultyStore(EtcdStore(etcd_single.endpoints))
    yield store


@pytest.fixture
async def faulty_ipam(faults, key_prefix, history):
    ipam = IPAM(faults, key_prefix)
    try:
        yield RecordingIPAM(ipam, history)
    finally:
        await ipam.close()


@pytest.fixture
async def pn(ipam, project):
    return await make_pn(ipam, project, "10.1.0.0/24")


def server(name: str, mac: str = "02:aa:00:00:00:01") -> Resource:
    return Resource.product("instance_server", "11111111-2222-4333-8444-000000000009", mac,
                            name)


async def test_moving_an_ip_to_the_same_resource_renamed_or_remacced_works(ipam, pn, project,
                                                                            history):
    ip = await ipam.book(book_in(pn, project))
    await ipam.attach(ip.id, server("a"), SERVER)
    renamed = await ipam.move(ip.id, server("a"), server("b"), SERVER)
    assert renamed.resource.name == "b"
    remacced = await ipam.move(ip.id, server("b"), server("b", "02:aa:00:00:00:02"), SERVER)
    assert remacced.resource.mac_address == "02:aa:00:00:00:02"
    await clean_history(ipam, history)


async def test_a_release_and_a_booking_of_its_address_racing_never_break_a_request(
        ipam, pn, project, history):
    for _ in range(5):
        ip = await ipam.book(book_in(pn, project))
        bystanders = [ipam.book(book_in(pn, project)) for _ in range(5)]
        results = await asyncio.gather(
            ipam.release(ip.id), ipam.book(book_in(pn, project, address=ip.address[:-3])),
            *bystanders, return_exceptions=True)
        assert results[0] is None
        assert isinstance(results[1], (IPRecord, AlreadyExists))
        assert all(isinstance(r, IPRecord) for r in results[2:])  # no collateral damage
    await clean_history(ipam, history)  # a booking that won the address came after its release


async def test_large_records_are_split_across_requests_instead_of_failing(ipam, pn, project,
                                                                           history):
    tags = [f"{n:03d}-" + "é" * 120 for n in range(64)]  # the largest tags allowed
    got = await asyncio.gather(*(ipam.book(book_in(pn, project, tags=tags,
                                                   idempotency_key=f"big-{n}"))
                                 for n in range(40)))
    assert len({g.address for g in got}) == 40
    await clean_history(ipam, history)


async def test_a_source_whose_watch_dies_reloads_and_keeps_booking(
        faulty_ipam, faults, project, etcd_single, key_prefix, history):
    ipam = faulty_ipam
    pn = await make_pn(ipam, project, "10.1.0.0/24")
    await ipam.book(book_in(pn, project))  # warm: cache and watch up
    cache = ipam.lifecycle.engines[pn.subnets[0].id].cache
    loads = cache.reloads
    # The source's own watch (the node watches other prefixes too: quota overrides, keys).
    watched = ipam.keys.source(pn.subnets[0].id).rsplit("/", 1)[0]
    faults.fail_watches(2, watched)  # the next two watches cannot be set up
    faults.break_watches(watched)  # and the open one ends now
    got = await asyncio.wait_for(asyncio.gather(*(ipam.book(book_in(pn, project))
                                                  for _ in range(10))), 20)
    assert len({g.address for g in got}) == 10
    # Following again once both failed watches are behind it: another node's booking
    # reaches this node's cache.
    for _ in range(20):  # bounded: each wait ends at the next change, or after 0.5 s
        if faults.watches_failed == 2 and cache.free_count is not None:
            break
        await cache.changed(cache.generation, 0.5)
    async with connected(etcd_single.endpoints, key_prefix) as other:
        await RecordingIPAM(other, history, "other node").book(book_in(pn, project))
    for _ in range(20):
        if cache.free_count == 252 - 12:
            break
        await cache.changed(cache.generation, 0.5)
    assert faults.watches_failed == 2 and cache.reloads >= loads + 3
    assert cache.free_count == 252 - 12
    await clean_history(ipam, history)


async def test_a_compacted_watch_reloads_the_source_and_sees_what_it_missed(
        faulty_ipam, faults, project, etcd_single, key_prefix, history):
    ipam = faulty_ipam
    pn = await make_pn(ipam, project, "10.1.0.0/29")
    await ipam.book(book_in(pn, project))
    cache = ipam.lifecycle.engines[pn.subnets[0].id].cache
    loads = cache.reloads
    async with connected(etcd_single.endpoints, key_prefix) as plain:
        other = RecordingIPAM(plain, history, "other node")
        taken = [await other.book(book_in(pn, project)) for _ in range(2)]
    seen = cache.generation
    faults.compact_watches()
    await cache.changed(seen, 5.0)  # the reload the compaction causes
    assert cache.reloads == loads + 1
    last = await asyncio.wait_for(ipam.book(book_in(pn, project)), 20)
    assert last.address not in {t.address for t in taken}
    with pytest.raises(PoolExhausted):  # 4 bookable in a /29: all held now
        await ipam.book(book_in(pn, project))
    await clean_history(ipam, history)


async def test_a_caller_that_goes_away_does_not_hurt_the_others(ipam, pn, project, history):
    tasks = [asyncio.ensure_future(ipam.book(book_in(pn, project))) for _ in range(30)]
    await asyncio.sleep(0)
    for t in tasks[::3]:
        t.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    kept = [r for r in results if isinstance(r, IPRecord)]
    assert len(kept) == 20 and all(isinstance(r, asyncio.CancelledError)
                                   for r in results[::3])
    # Whatever the cancelled ones held is free again or booked (once at most): etcd agrees.
    verdict = await clean_history(ipam, history)
    assert verdict.requests["book"] == {OK: 20, UNKNOWN: 10}


async def test_too_many_reverses_are_refused(ipam, pn, project, history):
    ip = await ipam.book(book_in(pn, project))
    with pytest.raises(InvalidArgument):
        await ipam.update_ip(ip.id, reverses=[{"hostname": f"h{n}.example.com"}
                                              for n in range(17)])
    await clean_history(ipam, history)


@pytest.mark.parametrize("apply", [True, False], ids=["applied", "not applied"])
async def test_changes_whose_answer_was_lost_are_settled_by_reading_back(faulty_ipam, faults,
                                                                        project, apply,
                                                                        history):
    ipam = faulty_ipam
    pn = await make_pn(ipam, project, "10.1.0.0/24")
    ip = await ipam.book(book_in(pn, project))
    faults.lose_answers(applied=apply)
    updated = await ipam.update_ip(ip.id, tags=["after"])
    assert updated.tags == ("after",) and (await ipam.get_ip(ip.id)).tags == ("after",)
    faults.lose_answers(applied=apply)
    await ipam.release(ip.id)
    others = await asyncio.gather(*(ipam.book(book_in(pn, project)) for _ in range(3)))
    before = faults.writes_seen
    faults.lose_answers(applied=apply)
    await ipam.release_set([o.id for o in others])
    assert faults.writes_seen - before == (1 if apply else 2)  # applied: read back only
    report = await clean_audit(ipam)
    assert report.records == 0
    await clean_history(ipam, history)


async def test_a_booking_whose_answer_was_lost_is_settled_by_reading_back(faulty_ipam, faults,
                                                                         project, history):
    ipam = faulty_ipam
    pn = await make_pn(ipam, project, "10.1.0.0/24")
    faults.lose_answers(applied=True)
    first = await ipam.book(book_in(pn, project))
    faults.lose_answers(applied=False)
    second = await ipam.book(book_in(pn, project))
    assert first.address != second.address and faults.answers_lost == 2
    report = await clean_audit(ipam)
    assert report.records == 2
    await clean_history(ipam, history)


FULL = "etcd Txn refused: etcdserver: mvcc: database space exceeded"


@pytest.mark.parametrize("apply", [True, False], ids=["applied", "not applied"])
async def test_a_full_answer_is_read_back_as_etcd_applies_the_write_that_fills_it(
        faulty_ipam, faults, project, apply, history):
    """etcd applies the write that crosses its quota and answers it "database space
    exceeded" all the same (its quota applier): a booking, a change, a release and a
    release set told so read back, and are answered applied, or refused, never retried."""
    ipam = faulty_ipam
    pn = await make_pn(ipam, project, "10.1.0.0/24")

    async def told_full(call: Any) -> Any:
        faults.lose_answers(applied=apply, error=StorageFull(FULL))
        before = faults.writes_seen
        if apply:
            done = await call
        else:
            with pytest.raises(StorageFull):
                await call
            done = None
        assert faults.writes_seen - before == 1  # read back, never sent again
        return done

    booked = await told_full(ipam.book(book_in(pn, project)))
    ip = booked or await ipam.book(book_in(pn, project))
    assert (await ipam.get_ip(ip.id)).address == ip.address
    updated = await told_full(ipam.update_ip(ip.id, tags=["after"]))
    assert (await ipam.get_ip(ip.id)).tags == (("after",) if apply else ())
    assert updated is None or updated.tags == ("after",)
    await told_full(ipam.release(ip.id))
    assert (await ipam.list_ips(IPFilter(private_network_id=pn.id)))[1] == (0 if apply else 1)
    others = await asyncio.gather(*(ipam.book(book_in(pn, project)) for _ in range(3)))
    await told_full(ipam.release_set([o.id for o in others]))
    held = (await ipam.list_ips(IPFilter(private_network_id=pn.id)))[1]
    assert held == (0 if apply else 4)
    await clean_audit(ipam)
    await clean_history(ipam, history)


async def test_a_change_racing_a_lost_answer_is_reported_unknown(faulty_ipam, faults, project,
                                                                 history):
    ipam = faulty_ipam
    pn = await make_pn(ipam, project, "10.1.0.0/24")
    ip = await ipam.book(book_in(pn, project))

    async def someone_else() -> None:  # lands before we look
        await ipam.update_ip(ip.id, tags=["someone-else"])

    faults.lose_answers(applied=True, meanwhile=someone_else)
    with pytest.raises(OutcomeUnknown):
        await ipam.update_ip(ip.id, tags=["mine"])
    await clean_history(ipam, history)


async def test_an_outage_fails_fast_and_the_node_recovers_by_itself(faulty_ipam, faults,
                                                                    project, history):
    ipam = faulty_ipam
    pn = await make_pn(ipam, project, "10.1.0.0/24")
    ip = await ipam.book(book_in(pn, project))
    faults.outage()
    with pytest.raises(StoreError):
        await ipam.update_ip(ip.id, tags=["during"])
    with pytest.raises(StoreError):
        await ipam.get_ip(ip.id)
    faults.heal()
    assert (await ipam.update_ip(ip.id, tags=["after"])).tags == ("after",)
    await clean_history(ipam, history)
