"""The availability gate: a request in flight when etcd goes is answered 503 then, not when
its own retries end; the gate closes when no quorum probe is answered at all, not when
the answers come slowly (issue 15: a leader 200 ms away), nor while other calls are
answered (issue 14: a saturated machine), and a late answer opens it."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from gateway_fixtures import ADMIN_SECRET

from allocator.contract import IPAM, EtcdStore
from allocator.store import KV
from allocator.txn import put
from devcluster.etcd import EtcdCluster
from devcluster.faults import FaultyStore
from gateway.app import availability_of, create_app
from gateway.availability import State
from gateway.config import GatewayConfig

# Longer than the 1 s the gate's probe used to be given, shorter than its deadline now.
SLOW_READ = 1.5


class SlowReads:
    """A real store whose single-key reads (what the quorum probe sends) are answered
    `delay` seconds late, as through a slow leader: the answer comes, late."""

    def __init__(self, store: Any, delay: float = 0.0) -> None:
        self.store, self.delay = store, delay

    async def get(self, key: str) -> KV | None:
        await asyncio.sleep(self.delay)  # the latency injected, not a wait for a condition
        return await self.store.get(key)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def _app(store: Any, prefix: str) -> Any:
    app = create_app(IPAM(store, prefix),
                     GatewayConfig(region="fr-par", admin_secret_key=ADMIN_SECRET),
                     close_ipam=True)
    availability_of(app).probe_interval = 0.05
    return app


async def _answered(availability: Any, probes: int) -> None:
    """Until `probes` more quorum probes were answered (bounded)."""
    target = availability.probes_answered + probes
    for _ in range(3000):
        if availability.probes_answered >= target:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{availability.probes_answered} probes answered, {target} awaited")


async def test_a_request_in_flight_when_etcd_goes_is_answered_503_at_once(
        etcd_cluster3_fresh: EtcdCluster, key_prefix: str) -> None:
    cluster = etcd_cluster3_fresh
    ipam = await IPAM.connect(cluster.endpoints, prefix=key_prefix)
    app = create_app(ipam, GatewayConfig(region="fr-par", admin_secret_key=ADMIN_SECRET),
                     close_ipam=True)
    availability = availability_of(app)
    availability.probe_interval = 0.05
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        assert await availability.wait_ready(30)
        token = {"X-Auth-Token": ADMIN_SECRET}
        for member in cluster.members:
            member.pause()  # every member silent: the listing below waits on etcd
        listing = asyncio.ensure_future(client.get("/ipam/v1/regions/fr-par/ips",
                                                   headers=token))
        for _ in range(500):  # bounded: until the request reached its handler
            if availability.in_flight:
                break
            await asyncio.sleep(0.01)
        assert availability.in_flight == 1 and availability.available
        assert await availability.changed(30) and availability.state is State.UNAVAILABLE
        resp = await listing
        body = await resp.json()
        assert (resp.status, body["type"]) == (503, "service_unavailable")
        assert body["message"].startswith("etcd has been unreachable for")
        assert availability.in_flight == 0
    finally:
        for member in cluster.members:
            member.resume()
        await client.close()


async def test_a_quorum_that_answers_slowly_keeps_the_gate_open(
        etcd_single: EtcdCluster, key_prefix: str) -> None:
    app = _app(SlowReads(EtcdStore(etcd_single.endpoints), SLOW_READ), key_prefix)
    availability = availability_of(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        assert await availability.wait_ready(30)
        opened = availability.since
        await _answered(availability, 10)  # each answered SLOW_READ after it was sent
        assert (availability.state, availability.since) == (State.AVAILABLE, opened)
        resp = await client.get("/ipam/v1/regions/fr-par/ips",
                                headers={"X-Auth-Token": ADMIN_SECRET})
        assert resp.status == 200
    finally:
        await client.close()


async def test_the_gate_closes_after_its_silence_and_a_late_answer_opens_it(
        etcd_single: EtcdCluster, key_prefix: str) -> None:
    faults = FaultyStore(EtcdStore(etcd_single.endpoints))
    slow = SlowReads(faults)
    app = _app(slow, key_prefix)
    availability = availability_of(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        assert await availability.wait_ready(30)
        faults.outage()  # every probe fails at once: the gate waits for its silence still
        assert await availability.changed(30) and availability.state is State.UNAVAILABLE
        assert availability.since - availability.answered_at >= availability.silence
        assert availability.reason == "etcd unreachable (injected outage)"
        closed_at, answered = availability.since, availability.probes_answered
        slow.delay = SLOW_READ
        faults.heal()  # back, but each probe answered SLOW_READ late
        assert await availability.changed(30) and availability.available
        assert availability.probes_answered > answered
        assert availability.answered_at >= closed_at
        resp = await client.get("/ipam/v1/regions/fr-par/ips",
                                headers={"X-Auth-Token": ADMIN_SECRET})
        assert resp.status == 200
    finally:
        await client.close()


async def test_other_answers_keep_the_gate_open_while_its_probes_go_unanswered(
        etcd_single: EtcdCluster, key_prefix: str) -> None:
    """On a saturated machine a probe may stay unanswered past the silence while writes
    are still committed: any answer that took a quorum keeps the gate open; once nothing
    at all is answered, it closes."""
    store = EtcdStore(etcd_single.endpoints)
    probes = SlowReads(store)
    app = _app(probes, key_prefix)
    availability = availability_of(app)
    availability.silence = 0.5
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        assert await availability.wait_ready(30)
        probes.delay = 3600.0  # every probe from now on stays unanswered
        opened = availability.since
        for n in range(40):  # 2 s, four silences, with a write answered every 50 ms
            await store.txn([], [put(f"{key_prefix}w{n}", "x")])
            await asyncio.sleep(0.05)
        assert (availability.state, availability.since) == (State.AVAILABLE, opened)
        assert availability.ipam.quorum_answered_at > availability.answered_at
        # Nothing answered any more: closed one silence after the last answer.
        assert await availability.changed(30) and availability.state is State.UNAVAILABLE
        assert availability.since - availability.ipam.quorum_answered_at >= availability.silence
    finally:
        await client.close()

