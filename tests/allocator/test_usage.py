"""How full a Private Network's subnets and a zonal pool are (`IPAM.network_usage`,
`IPAM.pool_usage`): exact counts, all read at one etcd revision, against a real etcd."""

from __future__ import annotations

import pytest
from allocator_support import REGION, book_in, connected, make_pn, new_project, revision

from allocator import network_registry
from allocator.contract import IPAM, PROJECT_MEMBER, AddressAsk, Caller, SubnetUsage, errors
from devcluster.etcd import EtcdCluster

ADMIN = Caller()  # sees every project's networks, in any region
V6_USABLE = 2**64 - 4  # a /64 less its first two and last two addresses


@pytest.fixture
def long_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep cached Private Networks for the whole test: what a node has cached is then
    what the test made it cache, however slow the machine."""
    monkeypatch.setattr(network_registry, "PN_CACHE_SECONDS", 3600.0)


def counts(usage: SubnetUsage) -> tuple[int, int, int, int]:
    return (usage.usable, usage.reserved, usage.held, usage.free)


async def test_usage_counts_each_subnet_exactly_at_one_revision(ipam: IPAM) -> None:
    project = new_project()
    pn = await make_pn(ipam, project, "10.60.0.0/24", "fd00:60::/64")
    for _ in range(5):
        await ipam.book(book_in(pn, project))
    for _ in range(3):
        await ipam.book(book_in(pn, project, is_ipv6=True))
    now = await revision(ipam)

    usage = await ipam.network_usage(pn.id, ADMIN)

    assert usage.private_network_id == pn.id and usage.revision == now
    v4, v6 = usage.subnets
    assert (v4.source.id, v4.source.cidr, v6.source.cidr) == (
        pn.subnets[0].id, "10.60.0.0/24", "fd00:60::/64")
    assert counts(v4) == (252, 4, 5, 247) and v4.used_percent == 100 * 5 / 252
    assert counts(v6) == (V6_USABLE, 4, 3, V6_USABLE - 3)
    assert v6.used_percent == 100 * 3 / V6_USABLE > 0
    assert {v4.revision, v6.revision} == {now}


async def test_a_release_frees_its_address_in_the_count(ipam: IPAM) -> None:
    project = new_project()
    pn = await make_pn(ipam, project, "10.61.0.0/24")
    booked = [await ipam.book(book_in(pn, project)) for _ in range(3)]
    await ipam.release(booked[1].id)

    (subnet,) = (await ipam.network_usage(pn.id, ADMIN)).subnets

    assert counts(subnet) == (252, 4, 2, 250)
    assert subnet.revision == await revision(ipam)


async def test_a_full_subnet_has_nothing_free(ipam: IPAM) -> None:
    project = new_project()
    pn = await make_pn(ipam, project, "10.62.0.0/29")
    for _ in range(4):
        await ipam.book(book_in(pn, project))
    (subnet,) = (await ipam.network_usage(pn.id, ADMIN)).subnets
    assert counts(subnet) == (4, 4, 4, 0) and subnet.used_percent == 100.0


async def test_a_network_without_subnets_has_a_revision_and_no_counts(ipam: IPAM) -> None:
    project = new_project()
    pn = await make_pn(ipam, project, "10.63.0.0/24")
    await ipam.delete_subnets(pn.id, ["10.63.0.0/24"])
    usage = await ipam.network_usage(pn.id, ADMIN)
    assert (usage.subnets, usage.revision) == ((), await revision(ipam))


async def test_usage_of_a_cached_network_is_one_round_trip(ipam: IPAM, long_cache: None
                                                           ) -> None:
    project = new_project()
    pn = await make_pn(ipam, project, "10.64.0.0/24", "10.64.1.0/24", "fd00:64::/64")
    await ipam.cached_private_network(pn.id)
    sent = ipam.store.requests  # type: ignore[attr-defined]
    usage = await ipam.network_usage(pn.id, ADMIN)
    assert ipam.store.requests - sent == 1  # type: ignore[attr-defined]
    assert [s.held for s in usage.subnets] == [0, 0, 0]


async def test_subnets_changed_since_the_node_cached_the_network_are_counted(
        etcd_single: EtcdCluster, key_prefix: str, ipam: IPAM, long_cache: None) -> None:
    project = new_project()
    pn = await make_pn(ipam, project, "10.65.0.0/24")
    await ipam.book(book_in(pn, project))
    assert len((await ipam.network_usage(pn.id, ADMIN)).subnets) == 1  # this node caches it

    async with connected(etcd_single.endpoints, key_prefix) as other_node:
        _, (added,) = await other_node.add_subnets(pn.id, ["10.65.1.0/29"])
        for _ in range(2):
            await other_node.book(AddressAsk(region=REGION, project_id=project,
                                             subnet_id=added.id))
    now = await revision(ipam)

    usage = await ipam.network_usage(pn.id, ADMIN)

    assert [(u.source.cidr, u.held, u.free) for u in usage.subnets] == [
        ("10.65.0.0/24", 1, 251), ("10.65.1.0/29", 2, 2)]
    assert usage.revision == now


async def test_a_network_deleted_since_the_node_cached_it_is_not_found(
        etcd_single: EtcdCluster, key_prefix: str, ipam: IPAM, long_cache: None) -> None:
    pn = await make_pn(ipam, new_project(), "10.68.0.0/24")
    await ipam.network_usage(pn.id, ADMIN)  # this node caches it
    async with connected(etcd_single.endpoints, key_prefix) as other_node:
        await other_node.delete_private_network(pn.id)
    with pytest.raises(errors.NotFound) as refused:
        await ipam.network_usage(pn.id, ADMIN)
    assert (refused.value.resource, refused.value.resource_id) == ("private_network", pn.id)


async def test_a_network_the_caller_may_not_see_is_not_found(ipam: IPAM) -> None:
    project = new_project()
    pn = await make_pn(ipam, project, "10.66.0.0/24")
    member = Caller(role=PROJECT_MEMBER, projects=frozenset({project}), region=REGION)
    assert len((await ipam.network_usage(pn.id, member)).subnets) == 1
    before = await revision(ipam)
    stranger = Caller(role=PROJECT_MEMBER, projects=frozenset({new_project()}))
    elsewhere = Caller(region="nl-ams")
    for caller, pn_id in ((stranger, pn.id), (elsewhere, pn.id), (ADMIN, new_project())):
        with pytest.raises(errors.NotFound) as refused:
            await ipam.network_usage(pn_id, caller)
        assert (refused.value.resource, refused.value.resource_id) == ("private_network", pn_id)
    with pytest.raises(errors.InvalidArgument):
        await ipam.network_usage("not-a-uuid", ADMIN)
    assert await revision(ipam) == before


async def test_a_zonal_pool_counts_every_projects_ips(ipam: IPAM) -> None:
    pool = await ipam.create_zonal_pool(REGION, "fr-par-1", "51.15.60.0/24")
    for _ in range(2):
        for project in (new_project(), new_project()):
            await ipam.book(AddressAsk(region=REGION, project_id=project, zonal="fr-par-1"))
    now = await revision(ipam)

    usage = await ipam.pool_usage(pool.id, REGION)

    assert usage.source == pool and usage.revision == now
    assert counts(usage) == (252, 4, 4, 248) and usage.used_percent == 100 * 4 / 252


async def test_only_a_zonal_pool_of_the_region_has_a_pool_usage(ipam: IPAM) -> None:
    pool = await ipam.create_zonal_pool(REGION, "fr-par-2", "51.15.61.0/24")
    pn = await make_pn(ipam, new_project(), "10.67.0.0/24")
    before = await revision(ipam)
    for pool_id, region in ((pool.id, "nl-ams"), (pn.subnets[0].id, REGION),
                            (new_project(), REGION)):
        with pytest.raises(errors.NotFound) as refused:
            await ipam.pool_usage(pool_id, region)
        assert (refused.value.resource, refused.value.resource_id) == ("zonal_pool", pool_id)
    with pytest.raises(errors.InvalidArgument):
        await ipam.pool_usage("nope")
    assert await revision(ipam) == before
