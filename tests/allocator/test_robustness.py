"""What a review found could wedge or mislead a node, each proven fixed against real etcd."""

from __future__ import annotations

import asyncio

import pytest
from allocator_support import book_in, clean_audit, make_pn

from allocator.contract import Caller, IPRecord, Resource
from allocator.errors import AlreadyExists, InvalidArgument, OutcomeUnknown, StoreError

SERVER = Caller(role="product", product_types=frozenset({"instance_server"}))


@pytest.fixture
async def pn(ipam, project):
    return await make_pn(ipam, project, "10.1.0.0/24")


def server(name: str, mac: str = "02:aa:00:00:00:01") -> Resource:
    return Resource.product("instance_server", "11111111-2222-4333-8444-000000000009", mac,
                            name)


async def test_moving_an_ip_to_the_same_resource_renamed_or_remacced_works(ipam, pn, project):
    ip = await ipam.book(book_in(pn, project))
    await ipam.attach(ip.id, server("a"), SERVER)
    renamed = await ipam.move(ip.id, server("a"), server("b"), SERVER)
    assert renamed.resource.name == "b"
    remacced = await ipam.move(ip.id, server("b"), server("b", "02:aa:00:00:00:02"), SERVER)
    assert remacced.resource.mac_address == "02:aa:00:00:00:02"
    await clean_audit(ipam)


async def test_a_release_and_a_booking_of_its_address_racing_never_break_a_request(
        ipam, pn, project):
    for _ in range(5):
        ip = await ipam.book(book_in(pn, project))
        bystanders = [ipam.book(book_in(pn, project)) for _ in range(5)]
        results = await asyncio.gather(
            ipam.release(ip.id), ipam.book(book_in(pn, project, address=ip.address[:-3])),
            *bystanders, return_exceptions=True)
        assert results[0] is None
        assert isinstance(results[1], (IPRecord, AlreadyExists))
        assert all(isinstance(r, IPRecord) for r in results[2:])  # no collateral damage
    await clean_audit(ipam)


async def test_large_records_are_split_across_requests_instead_of_failing(ipam, pn, project):
    tags = [f"{n:03d}-" + "é" * 120 for n in range(64)]  # the largest tags allowed
    got = await asyncio.gather(*(ipam.book(book_in(pn, project, tags=tags,
                                                   idempotency_key=f"big-{n}"))
                                 for n in range(40)))
    assert len({g.address for g in got}) == 40
    await clean_audit(ipam)


async def test_a_source_whose_watch_dies_reloads_and_keeps_booking(ipam, pn, project):
    await ipam.book(book_in(pn, project))  # warm: cache and watch up
    cache = next(iter(ipam.lifecycle.engines.values())).cache
    real_watch = ipam.store.watch
    failures = 0

    async def broken_watch(prefix, start):
        nonlocal failures
        if failures < 2:
            failures += 1
            raise StoreError("watch could not be re-established")
        async for item in real_watch(prefix, start):
            yield item

    ipam.store.watch = broken_watch  # type: ignore[method-assign]
    cache._watch.cancel()
    cache._watch = asyncio.ensure_future(cache._follow(1))
    got = await asyncio.wait_for(asyncio.gather(*(ipam.book(book_in(pn, project))
                                                  for _ in range(10))), 20)
    assert len({g.address for g in got}) == 10
    assert failures == 2 and cache.free_count is not None
    await clean_audit(ipam)


async def test_a_caller_that_goes_away_does_not_hurt_the_others(ipam, pn, project):
    tasks = [asyncio.ensure_future(ipam.book(book_in(pn, project))) for _ in range(30)]
    await asyncio.sleep(0)
    for t in tasks[::3]:
        t.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    kept = [r for r in results if isinstance(r, IPRecord)]
    assert len(kept) == 20 and all(isinstance(r, asyncio.CancelledError)
                                   for r in results[::3])
    # Whatever the cancelled ones held is free again or booked: etcd agrees.
    report = await clean_audit(ipam)
    assert report.records >= 20


async def test_too_many_reverses_are_refused(ipam, pn, project):
    ip = await ipam.book(book_in(pn, project))
    with pytest.raises(InvalidArgument):
        await ipam.update_ip(ip.id, reverses=[{"hostname": f"h{n}.example.com"}
                                              for n in range(17)])


def _lose_answers(ipam, *, apply: bool, times: int = 1):
    """Make the next `times` commits fail with StoreError after (or instead of) applying."""
    real = ipam.committer.commit
    left = times

    async def commit(txn):
        nonlocal left
        if left:
            left -= 1
            if apply:
                await real(txn)
            raise StoreError("connection lost before the answer")
        return await real(txn)

    ipam.committer.commit = commit  # type: ignore[method-assign]


@pytest.mark.parametrize("apply", [True, False], ids=["applied", "not applied"])
async def test_changes_whose_answer_was_lost_are_settled_by_reading_back(ipam, pn, project,
                                                                        apply):
    ip = await ipam.book(book_in(pn, project))
    _lose_answers(ipam, apply=apply)
    updated = await ipam.update_ip(ip.id, tags=["after"])
    assert updated.tags == ("after",) and (await ipam.get_ip(ip.id)).tags == ("after",)
    _lose_answers(ipam, apply=apply)
    await ipam.release(ip.id)
    others = await asyncio.gather(*(ipam.book(book_in(pn, project)) for _ in range(3)))
    store_txn = ipam.store.txn
    calls = 0

    async def lossy_txn(compare, *args, **kwargs):  # release_set writes to the store
        nonlocal calls
        calls += bool(compare)  # the guarded write, not the reads around it
        if compare and calls == 1:
            if apply:
                await store_txn(compare, *args, **kwargs)
            raise StoreError("connection lost before the answer")
        return await store_txn(compare, *args, **kwargs)

    ipam.store.txn = lossy_txn  # type: ignore[method-assign]
    await ipam.release_set([o.id for o in others])
    ipam.store.txn = store_txn  # type: ignore[method-assign]
    assert calls == (1 if apply else 2)  # applied: read back, no second write
    report = await clean_audit(ipam)
    assert report.records == 0


async def test_a_change_racing_a_lost_answer_is_reported_unknown(ipam, pn, project):
    ip = await ipam.book(book_in(pn, project))
    real = ipam.committer.commit

    async def commit(txn):
        await real(txn)
        ipam.committer.commit = real  # type: ignore[method-assign]
        await ipam.update_ip(ip.id, tags=["someone-else"])  # lands before we look
        raise StoreError("connection lost before the answer")

    ipam.committer.commit = commit  # type: ignore[method-assign]
    with pytest.raises(OutcomeUnknown):
        await ipam.update_ip(ip.id, tags=["mine"])
