"""etcd upkeep against real etcd: the compactor (who compacts, how much history is kept,
what live watches see) and a full backend quota (NOSPACE) as a typed error and a 503.

tests/devcluster/test_full_disk.py fills etcd with bookings through a gateway that runs
throughout, and runs the runbook of docs/operations.md from there."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from allocator_support import book_in, connected, make_pn
from gateway_fixtures import ADMIN_SECRET, REGION, GatewayNode

from allocator.compactor import Compactor
from allocator.contract import Resource
from allocator.errors import StorageFull, StoreError
from allocator.keys import Keys
from allocator.store import Compacted, EtcdStore
from allocator.txn import GuardedTxn, nested, put
from devcluster.etcd import EtcdCluster

ROOT = Path(__file__).resolve().parents[2]
QUOTA = 2 * 1024 * 1024  # etcd's backend quota in the NOSPACE tests
FILLER = b"x" * 2000


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    """A member of this module's own: compactions must not cut other tests' history."""
    with EtcdCluster(1, name_prefix="compactor") as cluster:
        yield cluster


@pytest.fixture
async def store(etcd: EtcdCluster) -> AsyncIterator[EtcdStore]:
    s = EtcdStore(etcd.endpoints)
    try:
        yield s
    finally:
        await s.close()


async def write(store: EtcdStore, prefix: str, revisions: int) -> int:
    """`revisions` one-key writes under `prefix`; the revision of the last."""
    resp = None
    for i in range(revisions):
        resp = await store.txn([], [put(f"{prefix}w/{i % 7}", str(i))])
    assert resp is not None
    return int(resp.header.revision)


def compactor(store: EtcdStore, prefix: str, **kwargs) -> Compactor:
    settings = {"retain_revisions": 10, "interval": 3600.0, "check_interval": 0.05,
                "lease_ttl": 2, **kwargs}
    return Compactor(store, Keys(prefix), **settings)


async def readable_at(store: EtcdStore, key: str, revision: int) -> bool:
    try:
        await store.range(key, revision=revision)
    except StoreError as err:
        assert "compacted" in str(err)
        return False
    return True


# -- how much history, and when --------------------------------------------------------------


async def test_a_new_holder_compacts_at_once_keeping_retain_revisions(store, key_prefix):
    head = await write(store, key_prefix, 40)
    c = compactor(store, key_prefix, retain_revisions=10)
    try:
        await c.start()
        # The election wrote the key (head + 1); the compaction kept the 10 revisions below.
        assert (c.leader, c.elections, c.compactions) == (True, 1, 1)
        assert c.compacted_revision == head + 1 - 10
        key = f"{key_prefix}w/0"
        assert await readable_at(store, key, c.compacted_revision)
        assert not await readable_at(store, key, c.compacted_revision - 1)
    finally:
        await c.close()


async def test_more_than_every_revisions_written_trigger_a_compaction(store, key_prefix):
    await write(store, key_prefix, 11)  # so that the start compacts, on a fresh etcd too
    c = compactor(store, key_prefix, retain_revisions=10, every_revisions=20)
    try:
        await c.start()
        first = c.compacted_revision
        assert first > 0
        head = await write(store, key_prefix, 15)  # not more than 20 since the last one
        looks = c.looks
        await c.until(lambda c: c.looks >= looks + 3, 5)
        assert c.compacted_revision == first
        head = await write(store, key_prefix, 10)  # now 25 since it
        await c.until(lambda c: c.compacted_revision > first, 5)
        # It may look between two of those writes: at the first head more than 20 past the
        # last compaction's (first + 10) or at any later one, keeping 10 below it.
        assert first + 21 <= c.compacted_revision <= head - 10
        assert c.errors == 0
    finally:
        await c.close()


async def test_the_interval_compacts_what_moved_and_an_idle_cluster_is_left_alone(
        store, key_prefix):
    c = compactor(store, key_prefix, retain_revisions=5, interval=0.2,
                  every_revisions=10**9)
    try:
        await c.start()
        head = await write(store, key_prefix, 3)
        await c.until(lambda c: c.compacted_revision == head - 5, 5)
        done, looks = c.compactions, c.looks
        await c.until(lambda c: c.looks >= looks + 10, 5)  # 0.5 s: two intervals, idle
        assert (c.compactions, c.compacted_revision) == (done, head - 5)
    finally:
        await c.close()


async def test_mass_deletes_trigger_a_compaction_at_once(store, key_prefix):
    # Looks 20 s apart and no volume trigger: only the delete count can compact now.
    c = compactor(store, key_prefix, every_revisions=10**9, every_deletes=50,
                  check_interval=20.0, lease_ttl=60)
    try:
        await c.start()
        first, done = c.compacted_revision, c.compactions
        for i in range(60):
            await store.txn([], [put(f"{key_prefix}d/{i:02d}", "x")])
        await c.until(lambda c: c.looks >= 1, 1)  # (no look since the start)
        assert c.compacted_revision == first
        resp = await store.txn([], [GuardedTxn().delete(f"{key_prefix}d/{i:02d}").writes[0]
                                    for i in range(60)])
        await c.until(lambda c: c.compactions == done + 1, 5)
        assert c.compacted_revision == resp.header.revision - 10
        assert (c.looks, c.deletes_since_compaction, c.errors) == (2, 0, 0)
    finally:
        await c.close()


# -- one compactor per deployment -----------------------------------------------------------


async def test_of_two_compactors_one_compacts_and_the_other_takes_over_when_it_closes(
        etcd, key_prefix):
    async with connected(etcd.endpoints, key_prefix) as one, \
            connected(etcd.endpoints, key_prefix) as two:
        a = compactor(one.store, key_prefix, interval=0.05)
        b = compactor(two.store, key_prefix, interval=0.05)
        try:
            await a.start()
            await b.start()
            assert (a.leader, b.leader) == (True, False)
            for _ in range(3):
                head = await write(one.store, key_prefix, 12)
                await a.until(lambda c, head=head: c.compacted_revision == head - 10, 5)
            looks = b.looks
            await b.until(lambda c: c.looks >= looks + 3, 5)
            assert (b.compactions, b.elections, b.compacted_revision) == (0, 0, 0)
            assert a.compactions >= 3
            held = await one.store.get(one.keys.compactor())
            assert held is not None and held.value.decode() == a.holder

            await a.close()
            assert await one.store.get(one.keys.compactor()) is None  # revoked, not expired
            await b.until(lambda c: c.leader, 5)
            head = await write(two.store, key_prefix, 12)
            await b.until(lambda c: c.compacted_revision == head - 10, 5)
            assert (a.leader, b.elections) == (False, 1)
        finally:
            await a.close()
            await b.close()


async def test_a_holder_whose_lease_died_stops_and_another_takes_over(etcd, key_prefix):
    async with connected(etcd.endpoints, key_prefix) as one, \
            connected(etcd.endpoints, key_prefix) as two:
        a = compactor(one.store, key_prefix, interval=0.05)
        b = compactor(two.store, key_prefix, interval=0.05)
        try:
            await a.start()
            await b.start()
            resp = await two.store.range(two.keys.compactor())
            await two.store.lease_revoke(resp.kvs[0].lease)  # as if it had expired
            await a.until(lambda c: not c.leader, 5)
            await b.until(lambda c: c.leader, 5)
            done = a.compactions
            head = await write(two.store, key_prefix, 12)
            await b.until(lambda c: c.compacted_revision == head - 10, 5)
            assert a.compactions == done and not a.leader
        finally:
            await a.close()
            await b.close()


_HOLDER = """
import asyncio, sys
from allocator.compactor import Compactor
from allocator.keys import Keys
from allocator.store import EtcdStore

async def main():
    c = Compactor(EtcdStore([sys.argv[1]]), Keys(sys.argv[2]), retain_revisions=10,
                  interval=0.05, check_interval=0.05, lease_ttl=2)
    await c.start()
    print("leader" if c.leader else "follower", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_when_the_holder_process_dies_another_node_takes_over_after_its_lease(
        store, etcd, key_prefix):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLDER, etcd.endpoints[0], key_prefix, cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE)
    b = compactor(store, key_prefix, interval=0.05)
    try:
        assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"leader\n"
        await b.start()
        assert not b.leader
        proc.kill()  # no revoke: etcd lets the lease run out (2 s)
        await proc.wait()
        t0 = time.monotonic()
        await b.until(lambda c: c.leader, 10)
        assert time.monotonic() - t0 < 2 + 1.5
        held = await store.get(Keys(key_prefix).compactor())
        assert held is not None and held.value.decode() == b.holder
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await b.close()


# -- live watches across compactions -----------------------------------------------------------


async def test_bookings_and_a_live_view_go_on_across_compactions(etcd, key_prefix):
    project = str(uuid.uuid4())
    async with connected(etcd.endpoints, key_prefix) as ipam:
        pn = await make_pn(ipam, project, "10.7.0.0/22")
        view = await ipam.network_view([pn.id])
        # Ten revisions of history: the time between a cache's load at revision R and
        # its watch from R + 1 (with none, a compaction can slip in between: a reload).
        c = Compactor(ipam.store, ipam.keys, retain_revisions=10, interval=0.05,
                      check_interval=0.05)
        try:
            await c.start()
            booked = []
            for r in range(5):
                booked += await asyncio.gather(*(ipam.book(book_in(
                    pn, project, resource=Resource.custom(f"02:00:00:00:{r:02x}:{i:02x}",
                                                          f"vm-{r}-{i}")))
                    for i in range(20)))
                _, head = await ipam.store.count(key_prefix)
                await c.until(lambda c, head=head: c.compacted_revision >= head - 10, 5)
            assert c.compactions >= 5 and c.errors == 0
            assert len({ip.address for ip in booked}) == 100

            # A later change reaches the view, and nothing had to be reloaded: a current
            # watch is not cut by a compaction.
            late = await ipam.book(book_in(pn, project, resource=Resource.custom(
                "02:00:00:00:ff:01", "late")))
            for _ in range(40):
                if view.lease(pn.id, "02:00:00:00:ff:01", False) is not None:
                    break
                await view.changed(view.revision, 0.25)
            assert view.lease(pn.id, "02:00:00:00:ff:01", False).ip_id == late.id
            assert len(view.leases(pn.id)) == 101
            assert view.reloads == 1
            assert [e.cache.reloads for e in ipam.lifecycle.engines.values()] == [1]

            # A watch that is behind is told so, which is what makes a cache reload.
            with pytest.raises(Compacted):
                async for _ in ipam.store.watch(key_prefix, 1):
                    pass
        finally:
            await c.close()
            await view.close()


# -- a full backend quota -----------------------------------------------------------------------


@dataclass
class Full:
    """An etcd whose quota is full (NOSPACE raised), set up before it filled."""

    cluster: EtcdCluster
    prefix: str
    project: str
    pn_id: str
    gateway: GatewayNode


async def fill(store: EtcdStore, prefix: str, *, history: bool = False) -> int:
    """Write until etcd refuses; the writes that got in. `history`: overwrite the same
    keys (what fills a store nobody compacts), else new keys (live data)."""
    for i in range(10_000):
        row = 0 if history else i
        try:
            await store.txn([], [put(f"{prefix}fill/{row}/{j}", FILLER) for j in range(50)])
        except StorageFull:
            return i
    raise AssertionError("etcd never said its quota was full")


async def refuses_reads_while_full(cluster: EtcdCluster, store: EtcdStore) -> bool:
    """etcd 3.5.0 to 3.5.6 weigh read-only txns against the quota too (fixed in 3.5.7 by
    etcd PR 14884, in 3.4.20 by PR 14254): `backendQuota.Available` is `Size() + cost <
    quota`, with cost 0 for a read, so they refuse one once the backend file itself has
    reached the quota, which a fill may stop just short of. Plain ranges always answer."""
    version = cluster.members[0].version()
    assert version is not None
    major, minor, patch = (int(part) for part in version.split(".")[:3])
    [usage] = await store.storage_usage(QUOTA)
    return (major, minor) == (3, 5) and patch < 7 and usage.db_size >= QUOTA


@pytest.fixture(scope="module")
async def full() -> AsyncIterator[Full]:
    with EtcdCluster(1, name_prefix="full", quota_backend_bytes=QUOTA) as cluster:
        prefix, project = "/t/full/", str(uuid.uuid4())
        async with connected(cluster.endpoints, prefix) as ipam:
            pn = await make_pn(ipam, project, "10.6.0.0/24")
            await ipam.book(book_in(pn, project))  # the source exists and is warm
        # The node starts before etcd fills: its start-up may write.
        node = GatewayNode(cluster.endpoints, prefix).start()
        try:
            store = EtcdStore(cluster.endpoints)
            assert await fill(store, prefix) > 0
            await store.close()
            yield Full(cluster, prefix, project, pn.id, node)
        finally:
            node.stop()
            # Every answer of the node, the full datastore's 503 included, is in its
            # OpenAPI document.
            assert node.conformance is not None
            assert node.conformance.violations == []


async def test_a_write_to_a_full_etcd_raises_storage_full_at_once(full):
    async with connected(full.cluster.endpoints, full.prefix) as ipam:
        sent = ipam.store.requests
        t0 = time.monotonic()
        with pytest.raises(StorageFull, match="database space exceeded"):
            await ipam.store.txn([], [put(f"{full.prefix}one", "x")])
        assert time.monotonic() - t0 < 1.0
        assert ipam.store.requests - sent == 1  # not retried, not sent elsewhere


async def test_the_committers_nested_writes_are_refused_too_and_none_applies(full):
    """etcd 3.4 lets a request whose puts are all nested past a full quota, alarm or
    not; the store makes etcd weigh the committer's (unguarded) requests."""
    async with connected(full.cluster.endpoints, full.prefix) as ipam:
        key = f"{full.prefix}nested"
        booking = GuardedTxn().absent("address", f"{key}/a").put(f"{key}/a", "ip").put(
            f"{key}/ip", "record")
        with pytest.raises(StorageFull):
            await ipam.committer.commit(booking)
        with pytest.raises(StorageFull):
            await ipam.store.txn([], [nested([], [put(key, "x")]), booking.request()])
        keys = [key, f"{key}/a", f"{key}/ip"]
        if await refuses_reads_while_full(full.cluster, ipam.store):
            with pytest.raises(StorageFull, match="database space exceeded"):
                await ipam.store.get_many(keys)  # a read-only txn, refused all the same
            assert [await ipam.store.get(k) for k in keys] == [None, None, None]
        else:
            assert await ipam.store.get_many(keys) == {}


async def test_reads_still_work_and_storage_usage_shows_the_alarm(full):
    async with connected(full.cluster.endpoints, full.prefix) as ipam:
        pn = await ipam.get_private_network(full.pn_id)
        assert pn.id == full.pn_id
        [usage] = await ipam.store.storage_usage(QUOTA)
        assert usage.endpoint == full.cluster.endpoints[0]
        assert usage.alarms == ("NOSPACE",) and usage.quota == QUOTA
        assert usage.used > 0.9 and usage.db_size_in_use <= usage.db_size


async def test_a_change_through_the_front_door_raises_storage_full_promptly(full):
    async with connected(full.cluster.endpoints, full.prefix) as ipam:
        t0 = time.monotonic()
        with pytest.raises(StorageFull):
            await ipam.create_private_network(REGION, full.project, None, "more",
                                              subnets=["10.5.0.0/24"])
        assert time.monotonic() - t0 < 1.0


async def test_a_booking_raises_storage_full_promptly(full):
    async with connected(full.cluster.endpoints, full.prefix) as ipam:
        t0 = time.monotonic()
        with pytest.raises(StorageFull):
            await ipam.book(book_in(await ipam.get_private_network(full.pn_id), full.project))
        assert time.monotonic() - t0 < 1.0


def _post(node: GatewayNode, path: str, body: dict) -> requests.Response:
    return requests.post(node.url + path, json=body, headers={"X-Auth-Token": ADMIN_SECRET},
                         timeout=30)


FULL_ANSWER = {"type": "service_unavailable",
               "message": "the datastore is full: changes are refused until an operator "
                          "frees space; reads still work"}


async def test_the_gateway_answers_503_with_a_scaleway_error_body(full):
    resp = await asyncio.to_thread(
        _post, full.gateway, f"/vpc/v2/regions/{REGION}/private-networks",
        {"project_id": full.project, "name": "more", "subnets": ["10.4.0.0/24"]})
    assert (resp.status_code, resp.json()) == (503, FULL_ANSWER)


async def test_a_booking_over_http_answers_503(full):
    resp = await asyncio.to_thread(
        _post, full.gateway, f"/ipam/v1/regions/{REGION}/ips",
        {"project_id": full.project, "source": {"private_network_id": full.pn_id}})
    assert (resp.status_code, resp.json()) == (503, FULL_ANSWER)


# -- the operator's way out -------------------------------------------------------------------------


def etcdctl(endpoint: str, *args: str) -> str:
    out = subprocess.run(["etcdctl", f"--endpoints={endpoint}", *args], check=True,
                         capture_output=True, text=True, timeout=60,
                         env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
    return out.stdout


@pytest.mark.skipif(shutil.which("etcdctl") is None, reason="etcdctl is not installed")
async def test_compact_defrag_and_disarm_with_etcdctl_let_writes_in_again():
    with EtcdCluster(1, name_prefix="recover", quota_backend_bytes=QUOTA) as cluster:
        prefix, project = "/t/recover/", str(uuid.uuid4())
        endpoint = cluster.endpoints[0]
        async with connected(cluster.endpoints, prefix) as ipam:
            pn = await make_pn(ipam, project, "10.3.0.0/24")
            assert await fill(ipam.store, prefix, history=True) > 0  # uncompacted history
            with pytest.raises(StorageFull):
                await ipam.create_private_network(REGION, project, None, "more",
                                                  subnets=["10.2.0.0/24"])
        # What the operator runs (docs/operations.md's runbook, which
        # tests/devcluster/test_full_disk.py runs as written against a running gateway):
        status = json.loads(etcdctl(endpoint, "endpoint", "status", "--write-out=json"))
        revision = status[0]["Status"]["header"]["revision"]
        assert "NOSPACE" in etcdctl(endpoint, "alarm", "list")
        etcdctl(endpoint, "compact", "--physical", str(revision))  # wait until freed
        etcdctl(endpoint, "defrag")
        etcdctl(endpoint, "alarm", "disarm")
        assert etcdctl(endpoint, "alarm", "list").strip() == ""
        async with connected(cluster.endpoints, prefix) as ipam:
            ip = await ipam.book(book_in(pn, project))
            assert ip.private_network_id == pn.id
            [usage] = await ipam.store.storage_usage(QUOTA)
            assert usage.alarms == () and usage.used < 0.5


async def test_a_release_set_too_big_for_one_level_is_refused_by_a_full_quota_too():
    """Its writes go in nested chunks (`txn.commit`); one put stays at the top level, or
    etcd 3.4 would weigh it at nothing and let it past a raised NOSPACE alarm."""
    with EtcdCluster(1, name_prefix="fullset", quota_backend_bytes=QUOTA) as cluster:
        prefix, project = "/t/fullset/", str(uuid.uuid4())
        async with connected(cluster.endpoints, prefix) as ipam:
            pn = await make_pn(ipam, project, "10.7.0.0/24")
            ips = [await ipam.book(book_in(pn, project)) for _ in range(60)]
            assert await fill(ipam.store, prefix) > 0
            before = (await ipam.store.count(prefix))[0]
            with pytest.raises(StorageFull):
                await ipam.release_set([ip.id for ip in ips])
            assert (await ipam.store.count(prefix))[0] == before  # not one released
            assert [(await ipam.get_ip(ip.id)).address for ip in ips] == [
                ip.address for ip in ips]
