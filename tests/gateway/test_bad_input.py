"""Bad input against every route: the right 4xx in Scaleway's format, nothing written.

Every case runs against one gateway whose etcd keys are counted before and after:
a refused request must not change a single key.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests
from gateway_fixtures import ADMIN_SECRET, ApiKeys, GatewayNode, gateway  # noqa: F401

R = "/ipam/v1/regions/fr-par"
V = "/vpc/v2/regions/fr-par"
A = "/ipam/admin/v1"
U = str(uuid.uuid4())  # a well-formed id that names nothing
MAC = {"mac_address": "02:00:00:00:00:01"}

# (method, path, body: dict | str | None, status, argument_name or error type)
CASES: list[tuple[str, str, Any, int, str]] = [
    # malformed bodies
    ("POST", f"{R}/ips", "{not json", 400, "body"),
    ("POST", f"{R}/ips", "[1, 2]", 400, "body"),
    ("POST", f"{R}/ips", "", 400, "body"),
    ("POST", f"{V}/vpcs", "\xff\xfe", 400, "body"),
    ("POST", f"{V}/vpcs", "[" * 100_000 + "]" * 100_000, 400, "body"),
    ("POST", f"{R}/ip-sets/release", '{"ip_ids": ' + "[" * 50_000 + "]" * 50_000 + "}", 400,
     "body"),
    # wrong types, missing and unknown fields on booking
    ("POST", f"{R}/ips", {"is_ipv6": False}, 400, "source"),
    ("POST", f"{R}/ips", {"source": "pn"}, 400, "source"),
    ("POST", f"{R}/ips", {"source": {"private_network_id": "abc"}}, 400,
     "source.private_network_id"),
    ("POST", f"{R}/ips", {"source": {"private_network_id": U}, "is_ipv6": "yes"}, 400,
     "is_ipv6"),
    ("POST", f"{R}/ips", {"source": {"private_network_id": U}, "tags": "a"}, 400, "tags"),
    ("POST", f"{R}/ips", {"source": {"private_network_id": U}, "tags": [1]}, 400, "tags"),
    ("POST", f"{R}/ips", {"source": {"private_network_id": U}, "colour": "red"}, 400,
     "colour"),
    ("POST", f"{R}/ips", {"source": {"private_network_id": U, "shape": 1}}, 400,
     "source.shape"),
    ("POST", f"{R}/ips", {"source": {"private_network_id": U}, "project_id": 42}, 400,
     "project_id"),
    ("POST", f"{R}/ips", {"source": {"private_network_id": U},
                          "resource": {"mac_address": "nope"}}, 400, "resource.mac_address"),
    ("POST", f"{R}/ips", {"source": {"private_network_id": U}, "resource": {"name": "x"}},
     400, "resource.mac_address"),
    ("POST", f"{R}/ips", {"source": {"private_network_id": U}, "address": "10.0.0.1/24"},
     400, "address"),
    ("POST", f"{R}/ips", {"source": {"zonal": "nl-ams-1"}}, 400, "source.zonal"),
    ("POST", f"{R}/ips", {"source": {"regional": True}}, 400, "source.regional"),
    ("POST", f"{R}/ips", {"source": {}, "project_id": U}, 400, "source"),
    ("POST", f"{R}/ips", {"source": {"private_network_id": U}, "project_id": U}, 404,
     "not_found"),
    ("POST", f"{R}/ips", {"source": {"private_network_id": U}}, 400, "project_id"),
    # list parameters
    ("GET", f"{R}/ips?page=0", None, 400, "page"),
    ("GET", f"{R}/ips?page=abc", None, 400, "page"),
    ("GET", f"{R}/ips?page_size=101", None, 400, "page_size"),
    ("GET", f"{R}/ips?page_size=-1", None, 400, "page_size"),
    ("GET", f"{R}/ips?order_by=random", None, 400, "order_by"),
    ("GET", f"{R}/ips?is_ipv6=maybe", None, 400, "is_ipv6"),
    ("GET", f"{R}/ips?attached=2", None, 400, "attached"),
    ("GET", f"{R}/ips?project_id=p1", None, 400, "project_id"),
    ("GET", f"{R}/ips?ip_ids=x&ip_ids={U}", None, 400, "ip_ids"),
    ("GET", f"{R}/ips?mac_address=zz", None, 400, "mac_address"),
    ("GET", f"{V}/vpcs?order_by=size", None, 400, "order_by"),
    ("GET", f"{V}/private-networks?page_size=1000", None, 400, "page_size"),
    ("GET", f"{V}/private-networks?vpc_id=1", None, 400, "vpc_id"),
    ("GET", f"{V}/subnets?order_by=name_asc", None, 400, "order_by"),
    ("GET", f"{V}/subnets?subnet_ids=nope", None, 400, "subnet_ids"),
    # ids in paths
    ("GET", f"{R}/ips/123", None, 400, "ip_id"),
    ("PATCH", f"{R}/ips/123", {"tags": []}, 400, "ip_id"),
    ("DELETE", f"{R}/ips/123", None, 400, "ip_id"),
    ("POST", f"{R}/ips/123/attach", {"resource": MAC}, 400, "ip_id"),
    ("POST", f"{R}/ips/123/detach", {"resource": MAC}, 400, "ip_id"),
    ("POST", f"{R}/ips/123/move", {"from_resource": MAC}, 400, "ip_id"),
    ("GET", f"{R}/private-networks/123/reserved-ips", None, 400, "private_network_id"),
    ("GET", f"{V}/vpcs/zzz", None, 400, "vpc_id"),
    ("PATCH", f"{V}/vpcs/zzz", {}, 400, "vpc_id"),
    ("DELETE", f"{V}/vpcs/zzz", None, 400, "vpc_id"),
    ("GET", f"{V}/private-networks/zzz", None, 400, "private_network_id"),
    ("PATCH", f"{V}/private-networks/zzz", {}, 400, "private_network_id"),
    ("DELETE", f"{V}/private-networks/zzz", None, 400, "private_network_id"),
    ("DELETE", f"{A}/api-keys/lowercase", None, 400, "access_key"),
    ("GET", f"{A}/api-keys/SCW123", None, 400, "access_key"),
    ("DELETE", f"{A}/regions/fr-par/zonal-pools/zzz", None, 400, "pool_id"),
    # well-formed ids that name nothing
    ("GET", f"{R}/ips/{U}", None, 404, "not_found"),
    ("PATCH", f"{R}/ips/{U}", {"tags": ["a"]}, 404, "not_found"),
    ("DELETE", f"{R}/ips/{U}", None, 404, "not_found"),
    ("POST", f"{R}/ips/{U}/attach", {"resource": MAC}, 404, "not_found"),
    ("POST", f"{R}/ips/{U}/detach", {"resource": MAC}, 404, "not_found"),
    ("POST", f"{R}/ips/{U}/move", {"from_resource": MAC}, 404, "not_found"),
    ("POST", f"{R}/ip-sets/release", {"ip_ids": [U]}, 404, "not_found"),
    ("GET", f"{V}/vpcs/{U}", None, 404, "not_found"),
    ("DELETE", f"{V}/private-networks/{U}", None, 404, "not_found"),
    ("DELETE", f"{A}/regions/fr-par/zonal-pools/{U}", None, 404, "not_found"),
    # bodies of the other writes
    ("PATCH", f"{R}/ips/{U}", {"tags": "a"}, 400, "tags"),
    ("PATCH", f"{R}/ips/{U}", {"reverses": [{"address": "1.2.3.4"}]}, 400,
     "reverses.hostname"),
    ("PATCH", f"{R}/ips/{U}", {"reverses": "x"}, 400, "reverses"),
    ("POST", f"{R}/ips/{U}/attach", {}, 400, "resource"),
    ("POST", f"{R}/ips/{U}/attach", {"resource": {"mac_address": 7}}, 400,
     "resource.mac_address"),
    ("POST", f"{R}/ips/{U}/attach", {"resource": {"mac_address": "02:00-00:00-00:01"}}, 400,
     "resource.mac_address"),
    ("POST", f"{R}/ips/{U}/attach", {"resource": {"mac_address": "01:00:5e:00:00:01"}}, 400,
     "resource.mac_address"),
    ("POST", f"{R}/ips/{U}/attach", {"resource": {"mac_address": "ff:ff:ff:ff:ff:ff"}}, 400,
     "resource.mac_address"),
    ("POST", f"{R}/ips", {"source": {"private_network_id": U}, "project_id": U,
                          "resource": {"mac_address": "01:00:5e:00:00:01"}}, 400,
     "resource.mac_address"),
    ("POST", f"{R}/ips/{U}/move", {"from_resource": MAC,
                                   "to_resource": {"mac_address": "33:33:00:00:00:01"}}, 400,
     "to_resource.mac_address"),
    ("POST", f"{R}/ips/{U}/attach", {"resource": {"type": "instance_server"}}, 400,
     "resource.id"),
    ("POST", f"{R}/ips/{U}/move", {"to_resource": MAC}, 400, "from_resource"),
    ("POST", f"{R}/ip-sets/release", {}, 400, "ip_ids"),
    ("POST", f"{R}/ip-sets/release", {"ip_ids": []}, 400, "ip_ids"),
    ("POST", f"{R}/ip-sets/release", {"ip_ids": ["x"]}, 400, "ip_ids"),
    ("POST", f"{R}/ip-sets/release", {"ip_ids": U}, 400, "ip_ids"),
    ("POST", f"{V}/vpcs", {"name": 5}, 400, "name"),
    ("POST", f"{V}/vpcs", {"project_id": "p"}, 400, "project_id"),
    ("POST", f"{V}/vpcs", {"project_id": U, "tags": [None]}, 400, "tags"),
    ("POST", f"{V}/vpcs", {"project_id": U, "size": 3}, 400, "size"),
    ("POST", f"{V}/vpcs", {"name": "n"}, 400, "project_id"),
    ("PATCH", f"{V}/vpcs/{U}", {"name": ["x"]}, 400, "name"),
    ("POST", f"{V}/private-networks", {"project_id": U, "subnets": "10.0.0.0/24"}, 400,
     "subnets"),
    ("POST", f"{V}/private-networks", {"project_id": U, "subnets": ["10.0.0.0/33"]}, 400,
     "subnets"),
    ("POST", f"{V}/private-networks", {"project_id": U, "subnets": ["banana"]}, 400,
     "subnets"),
    ("POST", f"{V}/private-networks", {"project_id": U, "vpc_id": "v"}, 400, "vpc_id"),
    ("POST", f"{V}/private-networks", {"project_id": U, "vpc_id": U}, 404, "not_found"),
    ("POST", f"{V}/private-networks", {"project_id": U, "subnets": ["10.0.0.0/24",
                                                                   "10.0.0.128/25"]},
     400, "subnets"),
    ("PATCH", f"{V}/private-networks/{U}", {"tags": {"a": 1}}, 400, "tags"),
    ("POST", f"{A}/regions/fr-par/zonal-pools", {"zone": "fr-par-1"}, 400, "subnet"),
    ("POST", f"{A}/regions/fr-par/zonal-pools", {"zone": "fr-par-1", "subnet": "x"}, 400,
     "subnet"),
    ("POST", f"{A}/regions/fr-par/zonal-pools", {"zone": "fr-par-9", "subnet": "1.2.3.0/24"},
     400, "zone"),
    ("POST", f"{A}/api-keys", {"role": 3}, 400, "role"),
    # a region this node does not serve, on every family of routes
    ("GET", "/ipam/v1/regions/nl-ams/ips", None, 404, "not_found"),
    ("POST", "/ipam/v1/regions/nl-ams/ips", {"source": {"private_network_id": U}}, 404,
     "not_found"),
    ("GET", "/vpc/v2/regions/nl-ams/vpcs", None, 404, "not_found"),
    ("POST", "/vpc/v2/regions/nl-ams/private-networks", {"project_id": U}, 404, "not_found"),
    ("GET", "/ipam/admin/v1/regions/pl-waw/zonal-pools", None, 404, "not_found"),
    # unknown routes and methods
    ("GET", "/ipam/v2/regions/fr-par/ips", None, 404, "not_found"),
    ("PUT", f"{R}/ips", {}, 405, "method_not_allowed"),
]


def _id(case: tuple[str, str, Any, int, str]) -> str:
    return f"{case[0]} {case[1]} -> {case[3]} {case[4]}"


@pytest.fixture
def admin_of(gateway: GatewayNode) -> GatewayNode:  # noqa: F811
    return gateway


def _count(node: GatewayNode) -> tuple[int, list[str]]:
    assert node.ipam is not None
    kvs, _ = node.call(node.ipam.store.scan(node.prefix, keys_only=True))
    return len(kvs), [kv.key for kv in kvs]


def test_every_bad_request_gets_its_4xx_and_writes_nothing(gateway: GatewayNode) -> None:  # noqa: F811
    before = _count(gateway)
    failures = []
    for case in CASES:
        method, path, body, status, expected = case
        headers = {"X-Auth-Token": ADMIN_SECRET}
        if isinstance(body, str):
            data = body.encode("latin-1")
            headers["Content-Type"] = "application/json"
            resp = requests.request(method, gateway.url + path, data=data, headers=headers,
                                    timeout=30)
        else:
            resp = requests.request(method, gateway.url + path, json=body, headers=headers,
                                    timeout=30)
        try:
            got = resp.json()
        except ValueError:
            failures.append(f"{_id(case)}: not JSON: {resp.text[:200]}")
            continue
        names = [d.get("argument_name") for d in got.get("details", [])]
        if resp.status_code != status or (expected not in names and got.get("type") != expected):
            failures.append(f"{_id(case)}: got {resp.status_code} {got}")
        if "Traceback" in resp.text:
            failures.append(f"{_id(case)}: stack trace in body")
    assert not failures, "\n".join(failures)
    assert _count(gateway) == before


def test_an_oversized_body_is_413_and_writes_nothing(gateway: GatewayNode) -> None:  # noqa: F811
    before = _count(gateway)
    big = {"source": {"private_network_id": U}, "tags": ["x" * 1000] * 1000}
    resp = requests.post(f"{gateway.url}{R}/ips", json=big,
                         headers={"X-Auth-Token": ADMIN_SECRET}, timeout=30)
    assert resp.status_code == 413
    assert resp.json()["type"] == "request_entity_too_large"
    assert _count(gateway) == before


def test_wrong_role_for_each_family_of_routes_is_403(gateway: GatewayNode) -> None:  # noqa: F811
    project = str(uuid.uuid4())
    _, secret = ApiKeys(gateway.url).create("project_reader", [project])
    before = _count(gateway)
    headers = {"X-Auth-Token": secret}
    for method, path, body in (
            ("POST", f"{V}/vpcs", {"project_id": project}),
            ("POST", f"{V}/private-networks", {"project_id": project}),
            ("POST", f"{A}/api-keys", {"role": "admin"}),
            ("GET", f"{A}/api-keys", None),
            ("POST", f"{A}/regions/fr-par/zonal-pools", {"zone": "fr-par-1",
                                                          "subnet": "1.2.3.0/24"})):
        resp = requests.request(method, gateway.url + path, json=body, headers=headers,
                                timeout=30)
        assert resp.status_code == 403, (path, resp.text)
        assert resp.json()["type"] == "permissions_denied"
    assert _count(gateway) == before


def test_every_route_refuses_a_missing_key_with_401(gateway: GatewayNode) -> None:  # noqa: F811
    from gateway.app import create_app
    from gateway.openapi import document

    for path, ops in document(create_app(gateway.ipam))["paths"].items():  # type: ignore[arg-type]
        for method, op in ops.items():
            if op.get("security") == []:
                continue
            concrete = (path.replace("{region}", "fr-par").replace("{access_key}", "SCW" + "A" * 17)
                        .replace("{ip_id}", U).replace("{vpc_id}", U)
                        .replace("{private_network_id}", U).replace("{pool_id}", U)
                        .replace("{project_id}", U))
            resp = requests.request(method.upper(), gateway.url + concrete, json={}, timeout=30)
            assert resp.status_code == 401, (method, concrete, resp.text)
            assert resp.json()["type"] == "denied_authentication"


def test_headers_and_request_lines_up_to_16_kib_are_served_in_json(
        gateway: GatewayNode) -> None:  # noqa: F811
    """aiohttp refuses longer ones before any middleware, in text/plain the SDK cannot
    read, so the gateway raises aiohttp's 8190-byte limit to 16 KiB."""
    headers = {"X-Auth-Token": ADMIN_SECRET, "X-Forwarded-Trace": "t" * 16_000}
    padded = requests.get(f"{gateway.url}{R}/ips", headers=headers, timeout=30)
    assert (padded.status_code, padded.json()) == (200, {"ips": [], "total_count": 0})
    long_url = requests.get(f"{gateway.url}{R}/ips?tags={'t' * 16_000}",
                            headers={"X-Auth-Token": ADMIN_SECRET}, timeout=30)
    assert (long_url.status_code, long_url.json()) == (200, {"ips": [], "total_count": 0})
    long_token = requests.get(f"{gateway.url}{R}/ips", headers={"X-Auth-Token": "t" * 16_000},
                              timeout=30)
    assert long_token.status_code == 401
    assert long_token.json()["type"] == "denied_authentication"
