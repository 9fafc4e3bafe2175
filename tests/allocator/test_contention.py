"""Many concurrent bookings on one source, through clients on different cluster members.

Each "node" is its own IPAM (own etcd connection, own free-set cache, own batches)
connected to a different member of the three-member cluster, as gateway nodes are.
Counts and uniqueness are checked from etcd itself afterwards.
"""

from __future__ import annotations

import asyncio
import random
from contextlib import AsyncExitStack

import pytest
from allocator_support import book_in, clean_audit, connected, make_pn, new_project

from allocator.contract import IPFilter, IPRecord
from allocator.errors import PoolExhausted


async def _nodes(stack: AsyncExitStack, cluster, prefix: str, count: int = 3):
    return [
        await stack.enter_async_context(connected([ep], prefix)) for ep in cluster.endpoints[:count]
    ]


async def _storm(nodes, pn, project, total: int, is_ipv6: bool = False):
    """`total` concurrent bookings spread round-robin over the nodes."""
    reqs = [nodes[i % len(nodes)].book(book_in(pn, project, is_ipv6=is_ipv6)) for i in range(total)]
    random.shuffle(reqs)
    return await asyncio.gather(*reqs, return_exceptions=True)


def _split(results):
    ok = [r for r in results if isinstance(r, IPRecord)]
    exhausted = [r for r in results if isinstance(r, PoolExhausted)]
    other = [r for r in results if not isinstance(r, (IPRecord, PoolExhausted))]
    return ok, exhausted, other


@pytest.mark.cluster
async def test_300_bookings_on_a_24_from_three_members(etcd_cluster3, key_prefix):
    async with AsyncExitStack() as stack:
        nodes = await _nodes(stack, etcd_cluster3, key_prefix)
        project = new_project()
        pn = await make_pn(nodes[0], project, "10.20.0.0/24")
        ok, exhausted, other = _split(await _storm(nodes, pn, project, 300))
        assert other == []
        assert len(ok) == 252 and len(exhausted) == 48
        assert len({r.address for r in ok}) == 252
        report = await clean_audit(nodes[1])
        assert report.records == report.held_addresses == 252
        _, total = await nodes[2].list_ips(IPFilter(private_network_id=pn.id))
        assert total == 252
        ids_in_etcd = set()
        for page in (1, 2, 3):
            got, _ = await nodes[2].list_ips(
                IPFilter(private_network_id=pn.id),
                order_by="ip_address_asc",
                page=page,
                page_size=100,
            )
            ids_in_etcd |= {g.id for g in got}
        assert ids_in_etcd == {r.id for r in ok}


@pytest.mark.cluster
@pytest.mark.parametrize("cidr, asked, bookable", [
    pytest.param("10.30.0.0/16", 2000, 2000, marks=pytest.mark.slow, id="2000 on a /16"),
    pytest.param("fd00:20::/64", 600, 600, id="600 on an IPv6 /64"),
    pytest.param("10.21.0.0/26", 240, 60, id="a /26 asked 4x over"),
])
async def test_concurrent_bookings_from_three_members_hold_each_address_once(
        etcd_cluster3, key_prefix, cidr, asked, bookable):
    async with AsyncExitStack() as stack:
        nodes = await _nodes(stack, etcd_cluster3, key_prefix)
        project = new_project()
        pn = await make_pn(nodes[0], project, cidr)
        v6 = ":" in cidr
        ok, exhausted, other = _split(await _storm(nodes, pn, project, asked, is_ipv6=v6))
        assert other == []
        assert len(ok) == bookable and len(exhausted) == asked - bookable
        assert len({r.address for r in ok}) == bookable
        assert all(r.address.endswith(cidr[cidr.index("/"):]) and r.is_ipv6 == v6 for r in ok)
        report = await clean_audit(nodes[2])
        assert report.records == report.held_addresses == bookable


@pytest.mark.cluster
async def test_concurrent_release_and_book_keep_counts_exact(etcd_cluster3, key_prefix):
    """Nodes book and release at once on a nearly full pool; etcd agrees at the end."""
    async with AsyncExitStack() as stack:
        nodes = await _nodes(stack, etcd_cluster3, key_prefix)
        project = new_project()
        pn = await make_pn(nodes[0], project, "10.22.0.0/26")
        first, _, _ = _split(await _storm(nodes, pn, project, 60))
        to_release = first[:30]
        releases = [nodes[i % 3].release(ip.id) for i, ip in enumerate(to_release)]
        bookings = [nodes[i % 3].book(book_in(pn, project)) for i in range(45)]
        results = await asyncio.gather(*releases, *bookings, return_exceptions=True)
        assert all(r is None for r in results[:30])
        ok, exhausted, other = _split(results[30:])
        assert other == []
        # A booking that ran before the releases landed may rightly be "exhausted".
        assert len(ok) + len(exhausted) == 45 and len(ok) <= 30
        assert (await clean_audit(nodes[1])).records == 30 + len(ok)
        # Once the releases are in, every node sees every freed address.
        refill, exhausted2, other2 = _split(await _storm(nodes, pn, project, 40))
        assert other2 == []
        assert len(refill) == 30 - len(ok) and len(exhausted2) == 40 - len(refill)
        report = await clean_audit(nodes[2])
        assert report.records == report.held_addresses == 60


@pytest.mark.parametrize("cidr", ["10.40.0.0/24", "10.41.0.0/16", "fd00:41::/64"])
async def test_warm_uncontended_booking_costs_at_most_two_round_trips(
    etcd_single, key_prefix, cidr
):
    async with connected(etcd_single.endpoints, key_prefix) as ipam:
        project = new_project()
        pn = await make_pn(ipam, project, cidr)
        v6 = ":" in cidr
        await ipam.book(book_in(pn, project, is_ipv6=v6))  # warms the source
        costs = []
        for _ in range(20):
            before = ipam.store.requests
            await ipam.book(book_in(pn, project, is_ipv6=v6))
            costs.append(ipam.store.requests - before)
        assert max(costs) <= 2
        assert costs.count(1) == len(costs)  # one transaction each, whatever the size
