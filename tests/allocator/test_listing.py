"""Listing pages: each page reads only itself, agrees with a full sort, and a walk through
the pages is one snapshot whatever is booked or released meanwhile."""

from __future__ import annotations

import asyncio
import random

import pytest
from allocator_support import REGION, book_in, connected, make_pn, new_project

from allocator.contract import Caller, IPFilter
from allocator.errors import StoreError
from allocator.listing import Stream, Walk, Walks, entries, select
from allocator.queries import READ_AHEAD
from allocator.records import Resource
from devcluster.etcd import EtcdCluster

SERVER = Caller(role="product", product_types=frozenset({"instance_server"}))


@pytest.fixture
async def filled(etcd_single, key_prefix):
    async with connected(etcd_single.endpoints, key_prefix) as ipam:
        project = new_project()
        pn = await make_pn(ipam, project, "10.90.0.0/24", "fd00:90::/64")
        for batch in range(3):
            await asyncio.gather(*(ipam.book(book_in(pn, project, is_ipv6=(i % 3 == 0)))
                                   for i in range(15)))
        yield ipam, pn, project


def read_counter(ipam):
    """Count the keys every read of `ipam.store` returns (list pages read through txn)."""
    store, seen = ipam.store, {"keys": 0}
    txn = store.txn

    async def counting(*args, **kwargs):
        resp = await txn(*args, **kwargs)
        seen["keys"] += sum(len(r.response_range.kvs) for r in resp.responses)
        return resp

    store.txn = counting
    return seen


async def walk_kind(ipam, flt, order):
    walk, _ = await ipam.queries._walk(flt, order)
    return "streamed" if walk.ids is None else "listed"


@pytest.mark.parametrize("order", ["created_at_desc", "created_at_asc", "ip_address_asc",
                                   "ip_address_desc"])
@pytest.mark.parametrize("is_ipv6", [None, True, False])
async def test_paged_listing_matches_a_full_sort(filled, order, is_ipv6):
    ipam, pn, project = filled
    flt = IPFilter(private_network_id=pn.id, project_ids=frozenset({project}), is_ipv6=is_ipv6)
    everything, total = await ipam.list_ips(IPFilter(project_id=project, is_ipv6=is_ipv6),
                                            order_by="created_at_asc", page=1, page_size=100)
    forward = order in ("created_at_desc", "ip_address_asc")
    assert await walk_kind(ipam, flt, order) == ("streamed" if forward else "listed")
    for page in range(1, 9):  # page 1 starts a walk, the next ones go on with it
        got, got_total = await ipam.list_ips(flt, order_by=order, page=page, page_size=7)
        expected, _ = select(everything, IPFilter(), order, page, 7)
        assert got_total == total
        assert [r.id for r in got] == [r.id for r in expected], (order, page)
    for page in (5, 2, 8):  # afresh, without a walk: the same pages
        ipam.queries.walks = Walks()
        got, _ = await ipam.list_ips(flt, order_by=order, page=page, page_size=7)
        expected, _ = select(everything, IPFilter(), order, page, 7)
        assert [r.id for r in got] == [r.id for r in expected], (order, page)


async def test_a_page_after_the_previous_one_reads_only_itself(filled):
    ipam, pn, project = filled
    await asyncio.gather(*(ipam.book(book_in(pn, project)) for _ in range(60)))
    flt = IPFilter(private_network_id=pn.id)
    before = ipam.store.requests
    await ipam.list_ips(flt, page=2, page_size=10)
    # afresh: 1 read of the network (its subnets change: another node may have added one),
    # 1 read of both indexes (counts and the keys up to page 2), 1 of the page's records
    assert ipam.store.requests - before == 3
    seen = read_counter(ipam)
    requests = []
    for page in range(3, 11):
        before, keys_before = ipam.store.requests, seen["keys"]
        got, total = await ipam.list_ips(flt, page=page, page_size=10)
        assert (len(got), total) == (10, 105)
        requests.append(ipam.store.requests - before)
        # its records and the next page's, at most READ_AHEAD pages more of each index
        assert seen["keys"] - keys_before <= 2 * 10 + 2 * (1 + READ_AHEAD) * 10
    # Page 3 reads the indexes ahead (for the pages after it too), its records and the
    # next page's (a walk that went on is likely to go on); the next ones find their
    # records read, and read the next page's (counted when that read is sent).
    assert requests[0] == 3 and sum(requests) <= 3 + 7


async def test_listing_another_projects_network_shows_nothing(filled):
    ipam, pn, _ = filled
    got, total = await ipam.list_ips(IPFilter(private_network_id=pn.id,
                                              project_ids=frozenset({new_project()})))
    assert (got, total) == ([], 0)


async def test_project_wide_listing_is_paged_and_matches_a_full_sort(filled):
    ipam, _, project = filled
    other_pn = await make_pn(ipam, project, "10.91.0.0/24")
    await asyncio.gather(*(ipam.book(book_in(other_pn, project)) for _ in range(10)))
    second = new_project()
    second_pn = await make_pn(ipam, second, "10.92.0.0/24")
    await asyncio.gather(*(ipam.book(book_in(second_pn, second)) for _ in range(8)))
    both = frozenset({project, second})
    everything, total = await ipam.list_ips(IPFilter(project_ids=both), order_by="ip_address_asc",
                                            page_size=100)
    assert total == 45 + 10 + 8
    for flt in (IPFilter(project_ids=both, region="fr-par"),
                IPFilter(project_id=project, region="fr-par", project_ids=both),
                IPFilter(region="fr-par"), IPFilter()):  # the last two: an admin's
        expected_all = [r for r in everything if flt.project_id in (None, r.project_id)]
        for order in ("created_at_desc", "created_at_asc"):
            for page in range(1, 9):
                got, got_total = await ipam.list_ips(flt, order_by=order, page=page,
                                                     page_size=9)
                expected, n = select(expected_all, IPFilter(), order, page, 9)
                assert got_total == n
                assert [r.id for r in got] == [r.id for r in expected], (flt, order, page)


async def test_vpc_and_residual_filters_match_a_full_sort(filled):
    ipam, pn, project = filled
    ips, _ = await ipam.list_ips(IPFilter(private_network_id=pn.id), page_size=100)
    attached = ips[:5]
    for r in attached:
        await ipam.attach(r.id, Resource.product("instance_server", new_project()), SERVER)
    everything, _ = await ipam.list_ips(IPFilter(project_id=project), page_size=100)
    cases = [IPFilter(vpc_id=pn.vpc_id), IPFilter(source_vpc_id=pn.vpc_id, is_ipv6=False),
             IPFilter(private_network_id=pn.id, attached=True),
             IPFilter(attached=True), IPFilter(project_id=project, attached=False),
             IPFilter(resource_type="instance_server", region=REGION)]
    for flt in cases:
        for order in ("created_at_desc", "ip_address_desc", "attached_at_asc"):
            for page in (1, 2, 3):
                got, total = await ipam.list_ips(flt, order_by=order, page=page, page_size=4)
                expected, n = select(everything, flt, order, page, 4)
                assert total == n
                assert [r.id for r in got] == [r.id for r in expected], (flt, order, page)


async def test_a_page_asked_again_is_read_afresh(filled):
    ipam, pn, _ = filled
    flt = IPFilter(private_network_id=pn.id)
    first, _ = await ipam.list_ips(flt, page=1, page_size=10)
    await ipam.list_ips(flt, page=2, page_size=10)
    await ipam.release(first[0].id)
    # Page 2 again (a refresh) is no continuation: it sees the release, as page 1 does.
    again, total = await ipam.list_ips(flt, page=2, page_size=10)
    assert total == 44
    fresh, _ = select((await ipam.list_ips(flt, page_size=100))[0], IPFilter(),
                      "created_at_desc", 2, 10)
    assert [r.id for r in again] == [r.id for r in fresh]


@pytest.mark.parametrize("order", ["created_at_desc", "created_at_asc", "ip_address_asc"])
@pytest.mark.parametrize("by", ["network", "project"])
async def test_walking_all_pages_during_bookings_and_releases_is_one_snapshot(
        etcd_single, key_prefix, order, by):
    async with connected(etcd_single.endpoints, key_prefix) as ipam, \
            connected(etcd_single.endpoints, key_prefix) as writer:
        project = new_project()
        pn = await make_pn(ipam, project, "10.93.0.0/24")
        await asyncio.gather(*(ipam.book(book_in(pn, project)) for _ in range(120)))
        before, _ = await ipam.list_ips(IPFilter(project_id=project), page_size=100)
        before += (await ipam.list_ips(IPFilter(project_id=project), page=2,
                                       page_size=100))[0]
        assert len(before) == 120
        # Half the IPs are released while the pages are walked (another node does it),
        # and as many are booked: the rest stay unchanged throughout.
        leaving = {r.id for r in random.sample(before, 60)}
        stop = asyncio.Event()

        changes = 0

        async def churn() -> None:
            nonlocal changes
            for ip_id in leaving:
                await writer.release(ip_id)
                await writer.book(book_in(pn, project))
                changes += 1
                await asyncio.sleep(0)
            await stop.wait()

        flt = (IPFilter(private_network_id=pn.id) if by == "network"
               else IPFilter(project_id=project, region=REGION))
        task = asyncio.ensure_future(churn())
        seen: list[str] = []
        totals = set()
        page = 1
        try:
            while True:
                got, total = await ipam.list_ips(flt, order_by=order, page=page, page_size=7)
                if page == 1:
                    changes_at_first_page = changes
                totals.add(total)
                seen += [r.id for r in got]
                if not got:
                    break
                page += 1
                await asyncio.sleep(0.01)  # let the churn go on between pages
            changes_during_walk = changes - changes_at_first_page
        finally:
            stop.set()
            await task
        assert changes_during_walk > 0
        assert len(seen) == len(set(seen)), "an IP came twice"
        stayed = {r.id for r in before} - leaving
        assert stayed <= set(seen), "an IP that never changed was skipped"
        assert totals == {len(seen)}
        assert ipam.queries.walks.resumed >= page - 1


async def test_a_walk_whose_revision_was_compacted_reads_afresh():
    with EtcdCluster(1, name_prefix="listing") as cluster:
        async with connected(cluster.endpoints, "/list/") as ipam:
            project = new_project()
            pn = await make_pn(ipam, project, "10.94.0.0/24")
            await asyncio.gather(*(ipam.book(book_in(pn, project)) for _ in range(30)))
            flt = IPFilter(private_network_id=pn.id)
            first, _ = await ipam.list_ips(flt, page=1, page_size=10)
            await ipam.release(first[0].id)
            _, now = await ipam.store.count(ipam.keys.prefix)
            await ipam.store.compact(now)
            got, total = await ipam.list_ips(flt, page=2, page_size=10)
            assert total == 29  # read afresh, at the current revision
            everything, _ = await ipam.list_ips(flt, page_size=100)
            assert [r.id for r in got] == [r.id for r in everything[10:20]]


async def test_a_member_behind_the_walks_revision_is_read_linearizably(filled):
    ipam, pn, _ = filled
    flt = IPFilter(private_network_id=pn.id)
    await ipam.list_ips(flt, page=1, page_size=10)
    store, txn, refused = ipam.store, ipam.store.txn, []

    async def lagging(compare, success, failure=(), **kwargs):
        # A member that has not applied the walk's revision yet refuses a serializable read.
        if any(op.request_range.serializable for op in success):
            refused.append(1)
            raise StoreError("etcd Txn failed: OUT_OF_RANGE: etcdserver: mvcc: required "
                             "revision is a future revision")
        return await txn(compare, success, failure, **kwargs)

    store.txn = lagging
    got, total = await ipam.list_ips(flt, page=2, page_size=10)
    store.txn = txn
    everything, _ = await ipam.list_ips(flt, page_size=100)
    assert refused and total == 45
    assert [r.id for r in got] == [r.id for r in everything[10:20]]


async def test_two_requests_for_the_next_page_at_once_both_get_it(filled):
    ipam, pn, _ = filled
    flt = IPFilter(private_network_id=pn.id)
    await ipam.list_ips(flt, page=1, page_size=10)
    a, b = await asyncio.gather(*(ipam.list_ips(flt, page=2, page_size=10) for _ in range(2)))
    everything, _ = await ipam.list_ips(flt, page_size=100)
    assert [r.id for r in a[0]] == [r.id for r in b[0]] == [r.id for r in everything[10:20]]


# -- pure: which walk a page goes on with ---------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_page_goes_on_with_the_walk_that_went_furthest_before_it():
    clock = Clock()
    walks = Walks(clock=clock, max_age=60)
    q = (IPFilter(project_id="p"), "created_at_desc", 10)
    a, b = Walk(last_page=5), Walk(last_page=3)
    walks.keep(q, a)
    clock.now += 1
    walks.keep(q, b)
    assert walks.resume(q, 6) is a
    assert walks.resume(q, 4) is b
    assert walks.resume(q, 3) is None  # asked again: afresh
    assert walks.resume((IPFilter(), "created_at_desc", 10), 6) is None
    clock.now += 60
    assert walks.resume(q, 6) is b  # a is too old; b, one second younger, is not yet
    clock.now += 1
    assert walks.resume(q, 6) is None


def test_walks_are_bounded_in_number_and_in_ids():
    clock = Clock()
    walks = Walks(clock=clock, max_walks=3, max_ids=100)
    qs = [(IPFilter(project_id=str(i)), "created_at_desc", 10) for i in range(5)]
    for q in qs:
        clock.now += 1
        walks.keep(q, Walk(last_page=1))
    assert len(walks) == 3
    assert walks.resume(qs[0], 2) is None and walks.resume(qs[4], 2) is not None
    walks.keep(qs[0], Walk(ids=[str(i) for i in range(101)], last_page=1))  # too big to keep
    assert walks.resume(qs[0], 2) is None
    clock.now += 1
    walks.keep(qs[1], Walk(ids=[str(i) for i in range(60)], last_page=1))
    clock.now += 1
    walks.keep(qs[2], Walk(ids=[str(i) for i in range(60)], last_page=1))  # evicts the other
    assert walks.resume(qs[2], 2) is not None and walks.resume(qs[1], 2) is None
    assert walks.resume(qs[4], 2) is not None  # holds no ids: kept


def test_a_streamed_walk_merges_its_indexes_and_moves_its_cursor():
    a, b = Stream("/c/a/"), Stream("/c/b/")
    walk = Walk.streamed([a, b])
    keys_a = [(f"/c/a/{t:016x}/ip{t}", b"") for t in (1, 4, 5)]
    keys_b = [(f"/c/b/{t:016x}/ip{t}", b"") for t in (2, 3, 6)]
    assert walk.wants(2, 2) == 4
    walk.take([entries(a, 0, keys_a), entries(b, 1, keys_b)], 5)  # one read ahead
    assert walk.cursor == (keys_a[2][0] + "\0", keys_b[1][0] + "\0")
    assert walk.serve(2, 2) == ["ip3", "ip4"] and walk.last_page == 2
    assert walk.ahead == ["ip5"]
