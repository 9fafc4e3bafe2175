"""The store's prober: a silent endpoint is out of use until it answers, its calls abandoned.

A paused member (SIGSTOP) is silent as a member cut off by a partition is; the real
partitions are in tests/devcluster/test_partitions.py, slow members (whose answers come
late, not never) in tests/devcluster/test_slow_members.py. Every member paused stands
for a cluster that no endpoint answers in time: a leader lost, or a slow one that holds
every member's reads. Probes are sent by hand here
(`probe_endpoints`), so nothing depends on the prober's timing.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from aetcd import rpc

from allocator.errors import StoreError
from allocator.store import (
    ABANDONED,
    PROBE_SLOWNESS,
    PROBE_TIMEOUT_MAX,
    SUPERSEDED,
    EtcdStore,
)
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


async def test_a_watch_on_a_silent_endpoint_moves_to_another_and_misses_nothing(
        etcd_cluster3_fresh: EtcdCluster, key_prefix: str) -> None:
    cluster = etcd_cluster3_fresh
    hung = next(m for i, m in enumerate(cluster.members) if i != cluster.leader_index())
    # A long deadline and no background probes: only the hand-sent probe can move them.
    store = EtcdStore(cluster.endpoints, timeout=60.0, eject_seconds=0.0,
                      probe_interval=HOUR)
    writer = EtcdStore([m.endpoint for m in cluster.members if m is not hung])
    watches = [store.watch(key_prefix, 1) for _ in cluster.members]  # one per endpoint
    try:
        first = [asyncio.ensure_future(anext(w)) for w in watches]
        await _put(writer, f"{key_prefix}0")
        assert [[e.key for e in events] for events, _ in await asyncio.gather(*first)] == [
            [f"{key_prefix}0"]] * 3
        hung.pause()
        assert dict(await store.probe_endpoints())[hung.endpoint] is False
        for n in range(1, 4):
            await _put(writer, f"{key_prefix}{n}")
        for watch in watches:
            seen: list[str] = []
            while len(seen) < 3:  # bounded by the wait: three events, in batches
                events, _ = await asyncio.wait_for(anext(watch), 10.0)
                seen += [e.key for e in events]
            assert seen == [f"{key_prefix}{n}" for n in range(1, 4)]
    finally:
        hung.resume()
        for watch in watches:
            await watch.aclose()  # type: ignore[attr-defined]
        await writer.close()
        await store.close()


async def test_a_watch_whose_endpoint_goes_silent_while_it_opens_moves_at_once(
        etcd_cluster3_fresh: EtcdCluster, key_prefix: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The stream's endpoint is picked, then its call metadata awaited (an auth token may
    # be fetched): a member lost meanwhile is told of before the stream listens.
    cluster = etcd_cluster3_fresh
    index = cluster.leader_index()
    assert index is not None
    leader = cluster.members[index]
    # Followers first: the first stream's pick, the member lost, is not the leader.
    store = EtcdStore([m.endpoint for m in cluster.members if m is not leader]
                      + [leader.endpoint], timeout=60.0, eject_seconds=0.0,
                      probe_interval=HOUR)
    by_address = {m.endpoint: m for m in cluster.members}
    picked: list[str] = []
    pick, metadata = store._pick, store._metadata
    hung: list[Any] = []

    def recording_pick(*args: Any) -> Any:
        ep = pick(*args)
        picked.append(ep.address)
        return ep

    async def losing_metadata(renew: bool = False) -> Any:
        if not hung:  # the first stream's member goes silent while it opens
            hung.append(by_address[picked[-1]])
            hung[0].pause()
            await store.probe_endpoints()
        return await metadata(renew)

    monkeypatch.setattr(store, "_pick", recording_pick)
    monkeypatch.setattr(store, "_metadata", losing_metadata)
    watch = store.watch(key_prefix, 1)
    first = asyncio.ensure_future(anext(watch))
    writer: EtcdStore | None = None
    try:
        for _ in range(100):  # bounded: the stream opens within a few turns of the loop
            if hung:
                break
            await asyncio.sleep(0.01)
        assert hung and hung[0] is not leader
        writer = EtcdStore([m.endpoint for m in cluster.members if m not in hung])
        await _put(writer, f"{key_prefix}0")
        # Within the wait, not after gRPC's keepalive gives up on the silent member.
        events, _ = await asyncio.wait_for(first, 5.0)
        assert [e.key for e in events] == [f"{key_prefix}0"]
        assert hung and picked[-1] != hung[0].endpoint  # it moved
    finally:
        first.cancel()
        with contextlib.suppress(BaseException):
            await first
        for member in hung:
            member.resume()
        await watch.aclose()  # type: ignore[attr-defined]
        if writer is not None:
            await writer.close()
        await store.close()


async def _put(store: EtcdStore, key: str) -> None:
    await store.txn([], [rpc.RequestOp(request_put=rpc.PutRequest(key=key.encode(),
                                                                    value=b"x"))])


async def test_calls_are_abandoned_even_when_no_endpoint_answers(
        etcd_cluster3_fresh: EtcdCluster, key_prefix: str) -> None:
    # Kept instead, they would be right for a slow leader (every member's reads are
    # slow, none lost) and wrong for a leader lost: a follower's calls then wait on
    # proposals it forwarded to a leader that is gone, and keeping them tripled the
    # window of a cut leader (0.6-0.8 s to 2.3 s, tests/devcluster/test_partitions.py).
    cluster = etcd_cluster3_fresh
    store = EtcdStore(cluster.endpoints, timeout=60.0, eject_seconds=0.0,
                      probe_interval=HOUR)
    paused = list(cluster.members)
    try:
        assert all(answered for _, answered in await store.probe_endpoints())
        for member in paused:
            member.pause()
        # Writes, never sent twice: each call abandoned is one write come back unknown.
        writes = [asyncio.ensure_future(store.txn([], [rpc.RequestOp(
            request_put=rpc.PutRequest(key=f"{key_prefix}{n}".encode(), value=b"x"))]))
            for n in range(6)]
        await asyncio.sleep(0)  # each write is sent: round-robin puts two on each member
        assert dict(await store.probe_endpoints()) == {m.endpoint: False
                                                       for m in cluster.members}
        outcomes = await asyncio.gather(*writes, return_exceptions=True)
        assert [str(o) for o in outcomes] == [
            f"etcd Txn failed: DEADLINE_EXCEEDED: {ABANDONED}"] * 6
        assert store.abandoned_calls == 6
    finally:
        for member in paused:
            member.resume()
        await store.close()


async def test_a_slow_cluster_is_not_a_silent_one(
        etcd_cluster3_fresh: EtcdCluster, key_prefix: str) -> None:
    """Silence, not slowness: once every member answers probes slowly (a saturated
    machine), a stall longer than `probe_timeout` but within what they have been taking
    abandons nothing; the writes in flight through it succeed. (One member slower than
    the others is still avoided: tests/devcluster/test_slow_members.py.)"""
    cluster = etcd_cluster3_fresh
    store = EtcdStore(cluster.endpoints, timeout=60.0, eject_seconds=0.0,
                      probe_interval=HOUR, probe_timeout=1.5)
    try:
        assert all(answered for _, answered in await store.probe_endpoints())
        assert store.probe_deadline() == 1.5
        # Slow answers: every member stalls 0.4 s while a probe waits on it.
        for member in cluster.members:
            member.pause()
        probes = asyncio.ensure_future(store.probe_endpoints())
        await asyncio.sleep(0.4)
        for member in cluster.members:
            member.resume()
        assert all(answered for _, answered in await probes)
        store.probe_timeout = 0.3  # what a probe of an endpoint with no slow past gets
        assert PROBE_SLOWNESS * 0.4 <= store.probe_deadline() <= PROBE_TIMEOUT_MAX

        # A 0.8 s stall: silence by `probe_timeout`, not by what the members take lately.
        for member in cluster.members:
            member.pause()
        writes = [asyncio.ensure_future(store.txn([], [rpc.RequestOp(
            request_put=rpc.PutRequest(key=f"{key_prefix}{n}".encode(), value=b"x"))]))
            for n in range(6)]
        probes = asyncio.ensure_future(store.probe_endpoints())
        await asyncio.sleep(0.8)
        for member in cluster.members:
            member.resume()
        assert all(answered for _, answered in await probes)
        await asyncio.gather(*writes)  # each applied, none abandoned
        assert store.abandoned_calls == 0
        assert sorted(store.healthy_endpoints()) == sorted(cluster.endpoints)
        assert [kv is not None for kv in (await store.get_many(
            f"{key_prefix}{n}" for n in range(6))).values()] == [True] * 6
    finally:
        for member in cluster.members:
            member.resume()
        await store.close()



async def test_one_slow_member_does_not_set_the_pace(
        etcd_cluster3_fresh: EtcdCluster) -> None:
    """The deadline follows the fastest member: one member answering late while the others
    answer at once leaves it at `probe_timeout`, so a slow follower is still left out."""
    cluster = etcd_cluster3_fresh
    leader = cluster.leader_index()  # a slow leader holds every member's reads
    slow = next(m for i, m in enumerate(cluster.members) if i != leader)
    store = EtcdStore(cluster.endpoints, timeout=60.0, eject_seconds=0.0,
                      probe_interval=HOUR, probe_timeout=1.5)
    try:
        slow.pause()
        probes = asyncio.ensure_future(store.probe_endpoints())
        await asyncio.sleep(0.4)
        slow.resume()
        assert all(answered for _, answered in await probes)  # the slow one late
        assert store.probe_deadline() == 1.5
    finally:
        slow.resume()
        await store.close()


async def test_writes_a_follower_forwarded_to_a_lost_leader_end_once_a_new_one_is_seen(
        etcd_cluster3_fresh: EtcdCluster, key_prefix: str) -> None:
    """A follower forwards a write to the leader it knows; paused, that leader never gets
    it, and etcd 3.4 lets the write wait out the caller's deadline (60 s here). Once a
    probe's answer carries the new leader's term, the calls sent before it get one probe
    deadline, then end: unknown, at once, and the followers stay in use."""
    cluster = etcd_cluster3_fresh
    leader_index = cluster.leader_index()
    leader = cluster.members[leader_index]
    followers = [m.endpoint for i, m in enumerate(cluster.members) if i != leader_index]
    # Only the followers, and no probes but by hand: only the new term can end these
    # writes. (A linearizable read, the probe, waits as long: its read index request went
    # to the old leader too.)
    store = EtcdStore(followers, timeout=60.0, eject_seconds=0.0, probe_interval=HOUR)
    try:
        assert all(answered for _, answered in await store.probe_endpoints())
        term = store.term
        assert term > 0
        leader.pause()
        writes = [asyncio.ensure_future(store.txn([], [rpc.RequestOp(
            request_put=rpc.PutRequest(key=f"{key_prefix}{n}".encode(), value=b"x"))]))
            for n in range(4)]
        await asyncio.sleep(0)  # each write is sent: two on each follower
        # A follower answers a serializable read itself: its header carries the term of
        # the election the followers hold once the leader is silent (a timeout or two).
        for _ in range(200):  # bounded: 200 x 50 ms
            await store.range(f"{key_prefix}x", serializable=True)
            if store.term > term:
                break
            await asyncio.sleep(0.05)
        assert store.term > term
        outcomes = await asyncio.wait_for(
            asyncio.gather(*writes, return_exceptions=True), 15.0)
        assert [type(o) for o in outcomes] == [StoreError] * 4
        assert {str(o) for o in outcomes} == {f"etcd Txn failed: CANCELLED: {SUPERSEDED}"}
        assert store.abandoned_calls == 4
        assert sorted(store.healthy_endpoints()) == sorted(followers)  # none ejected
        await store.txn([], [rpc.RequestOp(request_put=rpc.PutRequest(
            key=f"{key_prefix}after".encode(), value=b"x"))])  # the new leader commits
    finally:
        leader.resume()
        await store.close()

