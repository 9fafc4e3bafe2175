"""Private Networks created at once in one project, on real etcd.

Terraform (parallelism 10) and the Scaleway SDK create many networks of one project
side by side and retry no Conflict: each create must succeed unless a real limit (a
quota) is hit. What must hold all the same, read back from etcd itself: every create
answered is stored and indexed once, exactly one default VPC, and no two subnets of
the VPC overlap.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Iterable

import netaddr
from allocator_support import REGION, connected

from allocator.contract import IPAM, PrivateNetwork, Quotas, errors
from devcluster.etcd import EtcdCluster

# Creates at once: twice Terraform's default parallelism.
AT_ONCE = 24


async def _all_created(creates: Iterable[Awaitable[PrivateNetwork]]) -> list[PrivateNetwork]:
    results = await asyncio.gather(*creates, return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    assert not failed, f"{len(results) - len(failed)} of {len(results)} created: {failed!r}"
    return [r for r in results if isinstance(r, PrivateNetwork)]


async def _check_stored(ipam: IPAM, project: str, created: list[PrivateNetwork]) -> None:
    """etcd holds exactly `created`, all in the project's one default VPC, indexed once,
    with an IPv4 and an IPv6 subnet each and no two subnets of the VPC overlapping."""
    vpcs = await ipam.list_vpcs(REGION, {project})
    assert [v.is_default for v in vpcs] == [True]
    vpc = vpcs[0]
    records, _ = await ipam.store.scan(ipam.keys.private_network())
    index, _ = await ipam.store.scan(ipam.keys.project_private_networks(project))
    ids = {p.id for p in created}
    assert len(ids) == len(created)
    assert {ipam.keys.last_segment(kv.key) for kv in records} == ids
    assert {ipam.keys.last_segment(kv.key) for kv in index} == ids
    assert {p.vpc_id for p in created} == {vpc.id}
    assert (await ipam.get_vpc(vpc.id)).private_network_count == len(created)

    subnets, _ = await ipam.store.scan(ipam.keys.vpc_networks(vpc.id))
    stored = {ipam.keys.last_segment(kv.key): kv.value.decode() for kv in subnets}
    assert stored == {s.id: s.subnet for p in created for s in p.subnets}
    assert sorted(netaddr.IPNetwork(s.subnet).version for p in created
                  for s in p.subnets) == [4] * len(created) + [6] * len(created)
    nets = [netaddr.IPNetwork(c) for c in stored.values()]
    overlaps = [(str(a), str(b)) for a, b in itertools.combinations(nets, 2)
                if a.version == b.version and a.first <= b.last and b.first <= a.last]
    assert not overlaps


async def test_networks_created_at_once_in_one_project_all_succeed_apart(
        ipam: IPAM, project: str):
    created = await _all_created(
        ipam.create_private_network(REGION, project, None, f"d{n}") for n in range(AT_ONCE))
    await _check_stored(ipam, project, created)


async def test_networks_created_at_once_on_two_nodes_all_succeed_apart(
        etcd_cluster3: EtcdCluster, key_prefix: str, project: str):
    eps = list(etcd_cluster3.endpoints)
    async with connected(eps, key_prefix) as a, \
            connected(eps[1:] + eps[:1], key_prefix) as b:
        created = await _all_created(
            node.create_private_network(REGION, project, None, f"d{n}")
            for n in range(AT_ONCE // 2) for node in (a, b))
        await _check_stored(a, project, created)


async def test_networks_created_at_once_up_to_the_quota_take_it_exactly(
        etcd_single: EtcdCluster, key_prefix: str, project: str):
    async with connected(etcd_single.endpoints, key_prefix,
                         quotas=Quotas(private_networks_per_project=AT_ONCE - 4)) as ipam:
        results = await asyncio.gather(
            *(ipam.create_private_network(REGION, project, None, f"d{n}")
              for n in range(AT_ONCE)), return_exceptions=True)
        created = [r for r in results if isinstance(r, PrivateNetwork)]
        refused = [r for r in results if isinstance(r, errors.QuotaExceeded)]
        assert len(created) == AT_ONCE - 4 and len(refused) == 4, results
        assert {(r.quota, r.current) for r in refused} == {(AT_ONCE - 4, AT_ONCE - 4)}
        await _check_stored(ipam, project, created)
