"""Two gateway nodes on one three-member etcd cluster behave as one service."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import aiohttp
import pytest
import requests
from gateway_fixtures import ADMIN_SECRET, ApiKeys, GatewayNode, gateway_pair  # noqa: F401

pytestmark = pytest.mark.cluster

IPS = "/ipam/v1/regions/fr-par/ips"


def test_a_key_revoked_on_one_node_is_refused_on_the_other_at_once(
        gateway_pair: tuple[GatewayNode, GatewayNode]) -> None:  # noqa: F811
    a, b = gateway_pair
    access, secret = ApiKeys(a.url).create("project_member", [str(uuid.uuid4())])
    headers = {"X-Auth-Token": secret}
    assert requests.get(b.url + IPS, headers=headers, timeout=10).status_code == 200
    revoked = requests.delete(f"{a.url}/ipam/admin/v1/api-keys/{access}",
                              headers={"X-Auth-Token": ADMIN_SECRET}, timeout=10)
    assert revoked.status_code == 204
    for node in (b, a):
        resp = requests.get(node.url + IPS, headers=headers, timeout=10)
        assert resp.status_code == 401 and resp.json()["reason"] == "not_found"


def test_a_key_revoked_on_one_node_books_nothing_on_the_other(
        gateway_pair: tuple[GatewayNode, GatewayNode]) -> None:  # noqa: F811
    """Bookings authenticate from each node's cache: the revocation must still hold."""
    a, b = gateway_pair
    project = str(uuid.uuid4())
    access, secret = ApiKeys(a.url).create("project_member", [project])
    headers = {"X-Auth-Token": secret}
    pn = requests.post(f"{a.url}/vpc/v2/regions/fr-par/private-networks", headers=headers,
                       json={"project_id": project, "subnets": ["10.52.0.0/24"]},
                       timeout=10).json()
    body = {"source": {"private_network_id": pn["id"]}, "project_id": project}
    assert requests.post(b.url + IPS, headers=headers, json=body, timeout=10).status_code == 200
    assert requests.delete(f"{a.url}/ipam/admin/v1/api-keys/{access}", timeout=10,
                           headers={"X-Auth-Token": ADMIN_SECRET}).status_code == 204
    for node in (b, a, b):
        resp = requests.post(node.url + IPS, headers=headers, json=body, timeout=10)
        assert resp.status_code == 401 and resp.json()["reason"] == "not_found"
    admin = {"X-Auth-Token": ADMIN_SECRET}
    listed = requests.get(b.url + IPS, headers=admin, timeout=10,
                          params={"private_network_id": pn["id"]}).json()
    assert listed["total_count"] == 1


async def test_300_concurrent_bookings_across_two_nodes_fill_a_24_exactly_once(
        gateway_pair: tuple[GatewayNode, GatewayNode]) -> None:  # noqa: F811
    a, b = gateway_pair
    project = str(uuid.uuid4())
    _, secret = ApiKeys(a.url).create("project_member", [project])
    headers = {"X-Auth-Token": secret}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        async with http.post(f"{a.url}/vpc/v2/regions/fr-par/private-networks",
                             headers=headers, json={"project_id": project,
                                                    "subnets": ["10.50.0.0/24"]}) as resp:
            pn = await resp.json()
        body = {"source": {"private_network_id": pn["id"]}, "is_ipv6": False,
                "project_id": project}

        async def book(i: int) -> tuple[int, dict]:
            node = (a, b)[i % 2]
            async with http.post(node.url + IPS, json=body, headers=headers) as resp:
                return resp.status, await resp.json()

        results = await asyncio.gather(*(book(i) for i in range(300)))
        async with http.get(f"{b.url}{IPS}?private_network_id={pn['id']}&page_size=1",
                            headers=headers) as resp:
            listed = await resp.json()

    statuses = Counter(status for status, _ in results)
    assert statuses == {200: 252, 409: 48}, statuses
    assert {r["type"] for s, r in results if s == 409} == {"out_of_stock"}
    addresses = [r["address"] for s, r in results if s == 200]
    assert len(set(addresses)) == 252
    assert all(addr.startswith("10.50.0.") and addr.endswith("/24") for addr in addresses)
    # and etcd itself holds exactly one key per booked address
    assert a.ipam is not None
    subnet_id = pn["subnets"][0]["id"]
    held, _ = a.call(a.ipam.store.count(a.ipam.keys.addresses(subnet_id)))
    assert held == 252
    assert listed["total_count"] == 252


def test_a_node_whose_first_endpoint_is_dead_serves_from_the_others(
        etcd_single: Any, key_prefix: str) -> None:
    node = GatewayNode(["127.0.0.1:1", *etcd_single.endpoints], key_prefix).start()
    try:
        headers = {"X-Auth-Token": ADMIN_SECRET}
        project = str(uuid.uuid4())
        pn = requests.post(f"{node.url}/vpc/v2/regions/fr-par/private-networks",
                           headers=headers, timeout=30,
                           json={"project_id": project, "subnets": ["10.51.0.0/24"]})
        assert pn.status_code == 200, pn.text
        codes = [requests.post(node.url + IPS, headers=headers, timeout=30, json={
            "source": {"private_network_id": pn.json()["id"]}, "project_id": project,
        }).status_code for _ in range(10)]
        assert codes == [200] * 10
        assert requests.get(node.url + "/readyz", timeout=30).json()["etcd"][0] == {
            "endpoint": "127.0.0.1:1", "answered": False}
    finally:
        node.stop()
    node.assert_conformant()
