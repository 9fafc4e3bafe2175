"""Per-project quota overrides (`allocator.quotas.QuotaOverrides`), against real etcd.

An override is read, changed and reset; a bad one is refused whole with nothing
written; each quota it sets is the one creates and bookings count under, on every node:
creates read it linearizably and guard it in their transaction (a change between the
read and the commit makes the create count again), bookings take it from a watch-fed
cache, and the IP count read near a quota reads it too, at the count's revision.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from allocator_support import REGION, book_in, connected, make_pn, new_project, revision

from allocator.contract import IPAM, AddressAsk, ProjectQuotas, Quotas, errors
from allocator.quotas import MAX_OVERRIDE
from allocator.store import Compacted
from allocator.txn import put
from devcluster.etcd import EtcdCluster

DEFAULTS = Quotas(vpcs_per_project=10, private_networks_per_project=10,
                  subnets_per_private_network=4, ips_per_project=None)


@pytest.fixture
async def node(etcd_single: EtcdCluster, key_prefix: str) -> AsyncIterator[IPAM]:
    """An allocator with small defaults and no IP quota."""
    async with connected(etcd_single.endpoints, key_prefix, quotas=DEFAULTS) as ipam:
        yield ipam


def _refusal(exc: pytest.ExceptionInfo[errors.QuotaExceeded]) -> tuple[str, int, int]:
    return exc.value.resource, exc.value.quota, exc.value.current


# -- reading, changing, resetting -------------------------------------------------------------


async def test_a_project_without_an_override_has_the_nodes_defaults(node: IPAM, project: str):
    assert await node.project_quotas(project) == ProjectQuotas(
        project, vpcs=10, private_networks=10, subnets_per_private_network=4, ips=None)


async def test_set_overrides_the_named_quotas_and_keeps_the_others(node: IPAM, project: str):
    await node.set_project_quotas(project, {"ips": 7})
    changed = await node.set_project_quotas(project, {"vpcs": 3})
    assert (changed.vpcs, changed.private_networks, changed.subnets_per_private_network,
            changed.ips, changed.overridden) == (3, 10, 4, 7, ("vpcs", "ips"))
    assert await node.project_quotas(project) == changed
    assert (await node.project_quotas(new_project())).overridden == ()


async def test_null_gives_one_quota_back_and_an_empty_override_is_deleted(
        node: IPAM, project: str):
    await node.set_project_quotas(project, {"vpcs": 3, "ips": 7})
    one = await node.set_project_quotas(project, {"vpcs": None})
    assert (one.vpcs, one.ips, one.overridden) == (10, 7, ("ips",))
    none = await node.set_project_quotas(project, {"ips": None})
    assert (none.ips, none.overridden, none.revision) == (None, (), 0)
    assert await node.store.get(node.keys.quota_override(project)) is None


async def test_setting_what_is_set_already_writes_nothing(node: IPAM, project: str):
    first = await node.set_project_quotas(project, {"vpcs": 3})
    before = await revision(node)
    assert await node.set_project_quotas(project, {"vpcs": 3}) == first
    assert await node.set_project_quotas(new_project(), {"ips": None}) is not None
    assert await revision(node) == before


async def test_reset_gives_every_default_back(node: IPAM, project: str):
    await node.set_project_quotas(project, {"vpcs": 3, "private_networks": 1, "ips": 7})
    assert await node.reset_project_quotas(project) == await node.project_quotas(project) == \
        ProjectQuotas(project, 10, 10, 4, None)
    await node.reset_project_quotas(project)  # none left: still the defaults


@pytest.mark.parametrize("changes, argument", [
    ({"vpcs": 3, "colour": 1}, "colour"),
    ({"vpcs": -1}, "vpcs"),
    ({"ips": 2.0}, "ips"),
    ({"ips": True}, "ips"),
    ({"private_networks": "3"}, "private_networks"),
    ({"subnets_per_private_network": MAX_OVERRIDE + 1}, "subnets_per_private_network"),
    ([("vpcs", 3)], "quotas"),
])
async def test_a_bad_override_is_refused_whole_and_writes_nothing(
        node: IPAM, project: str, changes: Any, argument: str):
    await node.set_project_quotas(project, {"vpcs": 5})
    before = await revision(node)
    with pytest.raises(errors.InvalidArgument) as exc:
        await node.set_project_quotas(project, changes)
    assert [(p.argument_name, p.reason) for p in exc.value.problems] == [
        (argument, "unknown" if argument == "colour" else
         "format" if argument == "quotas" else "constraint")]
    assert await revision(node) == before
    assert (await node.project_quotas(project)).vpcs == 5


async def test_an_override_of_a_project_that_is_no_uuid_is_refused(node: IPAM):
    for call in (lambda: node.project_quotas("p1"),
                 lambda: node.set_project_quotas("p1", {"vpcs": 1}),
                 lambda: node.reset_project_quotas("p1")):
        with pytest.raises(errors.InvalidArgument) as exc:
            await call()
        assert [p.argument_name for p in exc.value.problems] == ["project_id"]


# -- each quota, from the override ------------------------------------------------------------


async def test_the_vpc_quota_of_the_override_is_counted_under(node: IPAM, project: str):
    await node.set_project_quotas(project, {"vpcs": 1})
    await node.create_vpc(REGION, project, None, "a")
    before = await revision(node)
    with pytest.raises(errors.QuotaExceeded) as exc:
        await node.create_vpc(REGION, project, None, "b")
    assert _refusal(exc) == ("vpc", 1, 1)
    assert await revision(node) == before
    await node.create_vpc(REGION, new_project(), None, "another project: the default")


async def test_the_private_network_quota_of_the_override_is_counted_under(
        node: IPAM, project: str):
    await node.set_project_quotas(project, {"private_networks": 1})
    await make_pn(node, project, "10.1.0.0/24")
    with pytest.raises(errors.QuotaExceeded) as exc:
        await make_pn(node, project, "10.2.0.0/24")
    assert _refusal(exc) == ("private_network", 1, 1)


async def test_the_subnet_quota_of_the_override_bounds_creates_and_adds(
        node: IPAM, project: str):
    await node.set_project_quotas(project, {"subnets_per_private_network": 2})
    with pytest.raises(errors.QuotaExceeded) as exc:
        await make_pn(node, project, "10.1.0.0/24", "10.2.0.0/24", "10.3.0.0/24")
    assert _refusal(exc) == ("subnet", 2, 0)
    pn = await make_pn(node, project, "10.1.0.0/24")
    await node.add_subnets(pn.id, ["10.2.0.0/24"])
    before = await revision(node)
    with pytest.raises(errors.QuotaExceeded) as exc:
        await node.add_subnets(pn.id, ["10.3.0.0/24"])
    assert _refusal(exc) == ("subnet", 2, 2)
    assert await revision(node) == before


async def test_the_ip_quota_of_the_override_holds_on_a_node_without_a_default(
        node: IPAM, project: str):
    pn = await make_pn(node, project, "10.1.0.0/24")
    await node.book(book_in(pn, project))
    await node.set_project_quotas(project, {"ips": 2})
    await node.book(book_in(pn, project))
    before = await revision(node)
    with pytest.raises(errors.QuotaExceeded) as exc:
        await node.book(book_in(pn, project))
    assert _refusal(exc) == ("ip", 2, 2)
    assert await revision(node) == before
    await node.reset_project_quotas(project)
    assert await node.quota_overrides.seen(await revision(node))
    await node.book(book_in(pn, project))


async def test_an_override_of_zero_refuses_every_create(node: IPAM, project: str):
    await node.set_project_quotas(project, {"vpcs": 0, "private_networks": 0, "ips": 0})
    with pytest.raises(errors.QuotaExceeded) as exc:
        await node.create_vpc(REGION, project, None, "a")
    assert _refusal(exc) == ("vpc", 0, 0)
    await node.create_zonal_pool(REGION, f"{REGION}-1", "192.0.2.0/24")
    with pytest.raises(errors.QuotaExceeded) as exc:
        await node.book(AddressAsk(region=REGION, project_id=project, zonal=f"{REGION}-1"))
    assert _refusal(exc) == ("ip", 0, 0)


async def test_lowering_a_quota_below_what_is_held_refuses_creates_and_deletes_nothing(
        node: IPAM, project: str):
    vpcs = [await node.create_vpc(REGION, project, None, n) for n in ("a", "b", "c")]
    pn = await make_pn(node, project, "10.1.0.0/24")
    ips = [await node.book(book_in(pn, project)) for _ in range(3)]
    await node.set_project_quotas(project, {"vpcs": 1, "ips": 1})
    with pytest.raises(errors.QuotaExceeded) as exc:
        await node.create_vpc(REGION, project, None, "d")
    assert _refusal(exc) == ("vpc", 1, 4)  # the three, and the network's default VPC
    with pytest.raises(errors.QuotaExceeded) as exc:
        await node.book(book_in(pn, project))
    assert _refusal(exc) == ("ip", 1, 3)
    listed = await node.list_vpcs(REGION, {project})
    assert {v.id for v in vpcs} <= {v.id for v in listed} and len(listed) == 4
    assert [(await node.get_ip(ip.id)).address for ip in ips] == [ip.address for ip in ips]
    for ip in ips:  # below the quota again: a slot
        await node.release(ip.id)
    await node.book(book_in(pn, project))


# -- every node, at once ------------------------------------------------------------------------


async def test_an_override_changed_after_a_create_read_it_makes_the_create_count_again(
        etcd_single: EtcdCluster, key_prefix: str, project: str):
    """The create's transaction guards the override it read: changed by another node
    between the read and the commit, the create reads it again and is refused."""
    async with connected(etcd_single.endpoints, key_prefix, quotas=DEFAULTS) as a, \
            connected(etcd_single.endpoints, key_prefix, quotas=DEFAULTS) as b:
        await a.create_vpc(REGION, project, None, "first")
        read = a.quota_overrides.get
        reads: list[ProjectQuotas] = []

        async def read_then_changed_elsewhere(project_id: str) -> ProjectQuotas:
            seen = await read(project_id)
            reads.append(seen)
            if len(reads) == 1:
                await b.set_project_quotas(project_id, {"vpcs": 1})
            return seen

        a.quota_overrides.get = read_then_changed_elsewhere  # type: ignore[method-assign]
        with pytest.raises(errors.QuotaExceeded) as exc:
            await a.create_vpc(REGION, project, None, "second")
        assert _refusal(exc) == ("vpc", 1, 1)
        assert [r.vpcs for r in reads] == [10, 1]
        assert len(await b.list_vpcs(REGION, {project})) == 1


async def test_creates_racing_an_override_never_pass_the_quota_that_committed_first(
        etcd_cluster3: EtcdCluster, key_prefix: str):
    eps = list(etcd_cluster3.endpoints)
    async with connected(eps, key_prefix, quotas=DEFAULTS) as a, \
            connected(eps[1:] + eps[:1], key_prefix, quotas=DEFAULTS) as b:
        for _ in range(3):
            project = new_project()

            async def lower(project: str) -> ProjectQuotas:
                await asyncio.sleep(0)  # let the creates start first
                return await b.set_project_quotas(project, {"vpcs": 2})

            results = await asyncio.gather(
                lower(project), *(node.create_vpc(REGION, project, None, f"v{n}")
                           for n in range(8) for node in (a, b)), return_exceptions=True)
            override = results[0]
            assert isinstance(override, ProjectQuotas), override
            created = [r for r in results[1:] if not isinstance(r, BaseException)]
            failed = [r for r in results[1:] if isinstance(r, BaseException)]
            assert all(isinstance(r, errors.QuotaExceeded | errors.Conflict
                                  | errors.StoreError) for r in failed), failed
            before = [v for v in created if v.revision < override.revision]
            after = [v for v in created if v.revision > override.revision]
            assert len(after) <= max(0, 2 - len(before)), (len(before), len(after))
            assert len(await a.list_vpcs(REGION, {project})) == len(created)


async def test_a_booking_in_a_project_without_an_ip_quota_reads_nothing(
        node: IPAM, project: str):
    pn = await make_pn(node, project, "10.1.0.0/24")
    for _ in range(5):
        await node.book(book_in(pn, project))
    gate = node.lifecycle.ip_quota
    assert gate is not None
    assert (gate.reads, node.quota_overrides.reloads) == (0, 1)


async def test_an_ip_override_set_on_another_node_holds_once_its_watch_brings_it(
        etcd_cluster3: EtcdCluster, key_prefix: str, project: str):
    """No IP quota at all before: the node learns of the new one from its watch (the
    window README's "Quotas" measures), awaited here, never slept on."""
    eps = list(etcd_cluster3.endpoints)
    async with connected(eps, key_prefix, quotas=DEFAULTS) as a, \
            connected(eps[1:] + eps[:1], key_prefix, quotas=DEFAULTS) as b:
        pn = await make_pn(b, project, "10.1.0.0/24")
        await b.book(book_in(pn, project))  # b's cache is loaded and watching
        quotas = await a.set_project_quotas(project, {"ips": 1})
        assert await b.quota_overrides.seen(quotas.revision)
        with pytest.raises(errors.QuotaExceeded) as exc:
            await b.book(book_in(pn, project))
        assert _refusal(exc) == ("ip", 1, 1)


async def test_with_a_default_ip_quota_an_override_on_another_node_holds_at_once(
        etcd_cluster3: EtcdCluster, key_prefix: str, project: str):
    """A project under an IP quota: the count read near it reads the override at its
    revision, so the other node's next booking counts under the new quota, no wait."""
    eps = list(etcd_cluster3.endpoints)
    quotas = Quotas(ips_per_project=1000)
    async with connected(eps, key_prefix, quotas=quotas) as a, \
            connected(eps[1:] + eps[:1], key_prefix, quotas=quotas) as b:
        pn = await make_pn(b, project, "10.1.0.0/24")
        await b.book(book_in(pn, project))
        await a.set_project_quotas(project, {"ips": 1})
        with pytest.raises(errors.QuotaExceeded) as exc:
            await b.book(book_in(pn, project))
        assert _refusal(exc) == ("ip", 1, 1)
        await a.reset_project_quotas(project)
        await b.book(book_in(pn, project))


# -- what the cache and the reads survive -------------------------------------------------------


async def test_the_cache_loads_again_when_its_watch_ends(node: IPAM, project: str):
    """A watch ended (compaction, a stream that could not resume): the cache is read
    again rather than trusted, and follows changes from there."""
    real_watch = node.store.watch
    ended: list[int] = []

    def watch_compacted_once(prefix: str, start: int) -> Any:
        if ended:
            return real_watch(prefix, start)
        ended.append(start)

        async def compacted() -> AsyncIterator[Any]:
            raise Compacted(start)
            yield  # pragma: no cover - an async generator that ends at once

        return compacted()

    node.store.watch = watch_compacted_once  # type: ignore[method-assign,assignment]
    await node.quota_overrides.ready()
    quotas = await node.set_project_quotas(project, {"ips": 3})
    assert await node.quota_overrides.seen(quotas.revision)
    assert (len(ended), node.quota_overrides.reloads) == (1, 2)
    assert node.quota_overrides.cached_ips(project, None) == 3


async def test_an_override_etcd_holds_in_a_shape_it_does_not_know_gives_the_defaults(
        node: IPAM, project: str):
    other = new_project()
    await node.store.txn([], [put(node.keys.quota_override(project), b"not json"),
                              put(node.keys.quota_override(other),
                                  b'{"vpcs": 2, "colour": 1, "ips": -3}')])
    assert await node.project_quotas(project) == ProjectQuotas(project, 10, 10, 4, None,
                                                               revision=(await revision(node)))
    assert (await node.project_quotas(other)).overridden == ("vpcs",)
    await node.quota_overrides.ready()
    assert node.quota_overrides.cached_ips(other, None) is None


async def test_bookings_read_etcd_when_the_cache_cannot_load(node: IPAM, project: str):
    """The cache's load fails (etcd refuses its scan): bookings neither wait for it nor
    fail with it; the count, which reads the override with it, holds the quota."""
    real_scan = node.store.scan
    refused: list[str] = []

    async def scan_refusing_overrides(prefix: str, **kw: Any) -> Any:
        if prefix == node.keys.quota_override():
            refused.append(prefix)
            raise errors.StoreError("scan refused (test)")
        return await real_scan(prefix, **kw)

    pn = await make_pn(node, project, "10.1.0.0/24")
    await node.set_project_quotas(project, {"ips": 1})
    node.store.scan = scan_refusing_overrides  # type: ignore[method-assign]
    await asyncio.wait_for(node.book(book_in(pn, project)), 10)
    with pytest.raises(errors.QuotaExceeded) as exc:
        await asyncio.wait_for(node.book(book_in(pn, project)), 10)
    assert _refusal(exc) == ("ip", 1, 1)
    assert refused and not node.quota_overrides.loaded
