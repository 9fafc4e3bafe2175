"""Listing a Private Network page by page reads only the page, and agrees with a full sort."""

from __future__ import annotations

import asyncio

import pytest
from allocator_support import book_in, connected, make_pn, new_project

from allocator.contract import IPFilter
from allocator.listing import select
from allocator.queries import Queries


@pytest.fixture
async def filled(etcd_single, key_prefix):
    async with connected(etcd_single.endpoints, key_prefix) as ipam:
        project = new_project()
        pn = await make_pn(ipam, project, "10.90.0.0/24", "fd00:90::/64")
        for batch in range(3):
            await asyncio.gather(*(ipam.book(book_in(pn, project, is_ipv6=(i % 3 == 0)))
                                   for i in range(15)))
        yield ipam, pn, project


@pytest.mark.parametrize("order", ["created_at_desc", "created_at_asc", "ip_address_asc",
                                   "ip_address_desc"])
@pytest.mark.parametrize("is_ipv6", [None, True, False])
async def test_paged_listing_matches_a_full_sort(filled, order, is_ipv6):
    ipam, pn, project = filled
    flt = IPFilter(private_network_id=pn.id, project_ids=frozenset({project}), is_ipv6=is_ipv6)
    everything, total = await ipam.list_ips(IPFilter(project_id=project, is_ipv6=is_ipv6),
                                            order_by="created_at_asc", page=1, page_size=100)
    assert Queries._by_source(flt)
    for page in range(1, 9):
        got, got_total = await ipam.list_ips(flt, order_by=order, page=page, page_size=7)
        expected, _ = select(everything, IPFilter(), order, page, 7)
        assert got_total == total
        assert [r.id for r in got] == [r.id for r in expected], (order, page)


async def test_paged_listing_costs_a_few_round_trips_whatever_the_size(filled):
    ipam, pn, project = filled
    flt = IPFilter(private_network_id=pn.id)
    before = ipam.store.requests
    await ipam.list_ips(flt, page=2, page_size=10)
    # 1 read of the network (its subnets change: another node may have added one),
    # 2 counts + 2 index ranges + 1 read of the page's records
    assert ipam.store.requests - before == 6


async def test_listing_another_projects_network_shows_nothing(filled):
    ipam, pn, _ = filled
    got, total = await ipam.list_ips(IPFilter(private_network_id=pn.id,
                                              project_ids=frozenset({new_project()})))
    assert (got, total) == ([], 0)


async def test_project_wide_listing_is_paged_and_matches_a_full_sort(filled):
    ipam, pn, project = filled
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
                IPFilter(project_id=project, region="fr-par", project_ids=both)):
        assert Queries._by_project(flt)
        expected_all = [r for r in everything if flt.project_id in (None, r.project_id)]
        for order in ("created_at_desc", "created_at_asc"):
            for page in range(1, 9):
                got, got_total = await ipam.list_ips(flt, order_by=order, page=page,
                                                     page_size=9)
                expected, n = select(expected_all, IPFilter(), order, page, 9)
                assert got_total == n
                assert [r.id for r in got] == [r.id for r in expected], (flt, order, page)
    hidden = IPFilter(project_id=second, region="fr-par", project_ids=frozenset({project}))
    assert await ipam.list_ips(hidden) == ([], 0)
