"""The store's prober: a silent endpoint is out of use until it answers, its calls abandoned.

A paused member (SIGSTOP) is silent as a member cut off by a partition is; the real
partitions are in tests/devcluster/test_partitions.py. Probes are sent by hand here
(`probe_endpoints`), so nothing depends on the prober's timing.
"""

from __future__ import annotations

import asyncio

import pytest

from allocator.store import EtcdStore
from devcluster.etcd import EtcdCluster

HOUR = 3600.0  # the background prober's interval: only the hand-sent probes count


async def test_a_silent_endpoint_loses_its_calls_and_stays_out_until_it_answers(
        etcd_cluster3_fresh: EtcdCluster, key_prefix: str) -> None:
    cluster = etcd_cluster3_fresh
    leader = cluster.leader_index()
    hung = next(m for i, m in enumerate(cluster.members) if i != leader)
    # No ejection time and a long deadline: only the probes can take the endpoint out,
    # and only abandoning can end its calls.
    store = EtcdStore(cluster.endpoints, timeout=60.0, eject_seconds=0.0,
                      probe_interval=HOUR)
    try:
        assert all(answered for _, answered in await store.probe_endpoints())
        hung.pause()
        reads = [asyncio.ensure_future(store.get(f"{key_prefix}{n}")) for n in range(6)]
        await asyncio.sleep(0)  # each read is sent: round-robin puts two on `hung`
        assert dict(await store.probe_endpoints()) == {
            m.endpoint: m is not hung for m in cluster.members}
        assert await asyncio.gather(*reads) == [None] * 6  # retried on the others
        assert store.abandoned_calls == 2
        assert hung.endpoint not in store.healthy_endpoints()
        assert await store.get(key_prefix) is None  # sent elsewhere, at once
        hung.resume()
        for _ in range(100):  # bounded: the member answers once its threads run again
            if dict(await store.probe_endpoints())[hung.endpoint]:
                break
        assert sorted(store.healthy_endpoints()) == sorted(cluster.endpoints)
    finally:
        await store.close()


async def test_a_cancelled_caller_is_cancelled_not_abandoned(
        etcd_cluster3_fresh: EtcdCluster, key_prefix: str) -> None:
    store = EtcdStore(etcd_cluster3_fresh.endpoints, probe_interval=HOUR)
    try:
        read = asyncio.ensure_future(store.get(key_prefix))
        await asyncio.sleep(0)
        read.cancel()
        with pytest.raises(asyncio.CancelledError):
            await read
        assert store.abandoned_calls == 0
    finally:
        await store.close()
