"""A request in flight when etcd goes is answered 503 then, not when its own retries end."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestClient, TestServer
from gateway_fixtures import ADMIN_SECRET

from allocator.contract import IPAM
from devcluster.etcd import EtcdCluster
from gateway.app import availability_of, create_app
from gateway.availability import State
from gateway.config import GatewayConfig


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
