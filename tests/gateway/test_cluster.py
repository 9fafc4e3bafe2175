"""Two gateway nodes on one three-member etcd cluster behave as one service.

The tests that book record every booking (when asked, when answered, what status)
into a history and check it against etcd at the end (`bench.history_check`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import aiohttp
import pytest
import requests
from gateway_fixtures import ADMIN_SECRET, ApiKeys, GatewayNode, gateway_pair  # noqa: F401

from bench.history import History, read_final_state
from bench.history_check import check

pytestmark = pytest.mark.cluster

IPS = "/ipam/v1/regions/fr-par/ips"


def book(history: History, node: GatewayNode, headers: dict[str, str], body: dict[str, Any],
         client: str) -> requests.Response:
    """POST a booking to `node`, recorded in `history`."""
    op = history.invoke("book", client=client, pool=body["source"]["private_network_id"])
    try:
        resp = requests.post(node.url + IPS, headers=headers, json=body, timeout=30)
    except requests.RequestException as err:
        history.failed(op, err)
        raise
    history.answered(op, resp.status_code, resp.json())
    return resp


def assert_history_clean(node: GatewayNode, history: History) -> None:
    """`history` checked against etcd under the node's prefix, read on the node's loop."""
    assert node.ipam is not None
    final = node.call(read_final_state(node.ipam.store, node.ipam.keys))
    verdict = check(history.operations, final)
    assert verdict.ok, str(verdict)


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
    history = History()
    assert book(history, b, headers, body, "b").status_code == 200
    assert requests.delete(f"{a.url}/ipam/admin/v1/api-keys/{access}", timeout=10,
                           headers={"X-Auth-Token": ADMIN_SECRET}).status_code == 204
    for name, node in (("b", b), ("a", a), ("b", b)):
        resp = book(history, node, headers, body, name)
        assert resp.status_code == 401 and resp.json()["reason"] == "not_found"
    admin = {"X-Auth-Token": ADMIN_SECRET}
    listed = requests.get(b.url + IPS, headers=admin, timeout=10,
                          params={"private_network_id": pn["id"]}).json()
    assert listed["total_count"] == 1
    assert_history_clean(a, history)  # the refused bookings left nothing


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
        history = History()

        async def book_on(i: int) -> tuple[int, dict]:
            node = (a, b)[i % 2]
            op = history.invoke("book", client=f"c{i}", pool=pn["id"])
            try:
                async with http.post(node.url + IPS, json=body, headers=headers) as resp:
                    answer = resp.status, await resp.json()
            except BaseException as err:
                history.failed(op, err)
                raise
            history.answered(op, *answer)
            return answer

        results = await asyncio.gather(*(book_on(i) for i in range(300)))
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
    assert_history_clean(a, history)


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
        history = History()
        body = {"source": {"private_network_id": pn.json()["id"]}, "project_id": project}
        codes = [book(history, node, headers, body, "c").status_code for _ in range(10)]
        assert codes == [200] * 10
        assert requests.get(node.url + "/readyz", timeout=30).json()["etcd"][0] == {
            "endpoint": "127.0.0.1:1", "answered": False}
        assert_history_clean(node, history)
    finally:
        node.stop()
    node.assert_conformant()
