"""Readiness means a quorum answers a linearizable read, not merely that a socket opens."""

from __future__ import annotations

from allocator_support import connected


async def test_ready_when_a_quorum_answers(etcd_single, key_prefix):
    async with connected(etcd_single.endpoints, key_prefix) as ipam:
        ready, members = await ipam.readiness()
        assert ready and members == [(etcd_single.endpoints[0], True)]


async def test_not_ready_without_etcd(key_prefix):
    async with connected(["127.0.0.1:1"], key_prefix, timeout=0.5) as ipam:
        ready, members = await ipam.readiness(timeout=1.0)
        assert not ready and members == [("127.0.0.1:1", False)]


async def test_not_ready_while_two_of_three_members_hang(etcd_cluster3_fresh, key_prefix):
    cluster = etcd_cluster3_fresh
    async with connected(cluster.endpoints, key_prefix, timeout=0.5) as ipam:
        assert (await ipam.readiness())[0]
        for member in cluster.members[:2]:
            member.pause()  # two of three hung: no quorum
        try:
            ready, members = await ipam.readiness(timeout=1.5)
            assert not ready
            assert [ok for _, ok in members].count(True) <= 1
        finally:
            for member in cluster.members[:2]:
                member.resume()
