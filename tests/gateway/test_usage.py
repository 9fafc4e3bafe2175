"""The usage extension over HTTP: how full each subnet of a Private Network is (for whoever
may get the network) and how full a zonal pool is (admins), exact and at one etcd revision;
every refusal reads like get-private-network's and writes nothing."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from allocator_support import revision
from gateway_fixtures import ADMIN_SECRET, REGION, ApiKeys, GatewayNode, gateway  # noqa: F401

from gateway.cli import main

IPS = f"/ipam/v1/regions/{REGION}/ips"
PNS = f"/vpc/v2/regions/{REGION}/private-networks"
POOLS = f"/ipam/admin/v1/regions/{REGION}/zonal-pools"
V6_USABLE = 2**64 - 4  # a /64 less its first two and last two addresses


def usage_path(pn_id: str) -> str:
    return f"/ipam/v1/regions/{REGION}/private-networks/{pn_id}/usage"


class Http:
    """requests bound to one gateway and one secret key."""

    def __init__(self, node: GatewayNode, secret: str) -> None:
        self.node, self.secret = node, secret

    def __call__(self, method: str, path: str, body: Any = None) -> requests.Response:
        return requests.request(method, self.node.url + path, json=body, timeout=30,
                                headers={"X-Auth-Token": self.secret})

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        answer = self(method, path, body)
        assert answer.status_code in (200, 204), answer.text
        return answer.json() if answer.status_code == 200 else None


def etcd_revision(node: GatewayNode) -> int:
    """etcd's revision now: unchanged means nothing was written."""
    assert node.ipam is not None
    return int(node.call(revision(node.ipam)))


@pytest.fixture
def admin(gateway: GatewayNode) -> Http:  # noqa: F811
    return Http(gateway, ADMIN_SECRET)


@pytest.fixture
def keys(gateway: GatewayNode) -> ApiKeys:  # noqa: F811
    return ApiKeys(gateway.url)


def key(gateway: GatewayNode, keys: ApiKeys, role: str, project: str | None = None,  # noqa: F811
        resource_types: tuple[str, ...] = ()) -> Http:
    _, secret = keys.create(role, [project] if project else [], resource_types)
    return Http(gateway, secret)


def subnet(found: dict[str, Any], cidr: str) -> dict[str, Any]:
    return next(s for s in found["subnets"] if s["subnet"] == cidr)


def counts(usage: dict[str, Any]) -> tuple[int, int, int, int]:
    return usage["usable"], usage["reserved"], usage["held"], usage["free"]


class Network:
    """A project's dual-stack Private Network (/24 and /64), made by its member's key."""

    def __init__(self, gateway: GatewayNode, keys: ApiKeys, v4: str, v6: str) -> None:  # noqa: F811
        self.project = str(uuid.uuid4())
        self.member = key(gateway, keys, "project_member", self.project)
        self.pn = self.member.ok("POST", PNS, {"project_id": self.project, "name": "web",
                                               "subnets": [v4, v6]})
        self.id: str = self.pn["id"]

    def book(self, is_ipv6: bool = False) -> dict[str, Any]:
        return self.member.ok("POST", IPS, {"source": {"private_network_id": self.id},
                                            "is_ipv6": is_ipv6, "project_id": self.project})


def test_a_dual_subnet_network_counts_each_subnet_exactly(gateway: GatewayNode,  # noqa: F811
                                                          keys: ApiKeys) -> None:
    net = Network(gateway, keys, "10.70.0.0/24", "fd00:70::/64")
    for _ in range(5):
        net.book()
    for _ in range(3):
        net.book(is_ipv6=True)
    now = etcd_revision(gateway)

    answer = net.member.ok("GET", usage_path(net.id))

    ids = {s["subnet"]: s["id"] for s in net.pn["subnets"]}
    assert answer == {"private_network_id": net.id, "revision": now, "subnets": [
        {"subnet_id": ids["10.70.0.0/24"], "subnet": "10.70.0.0/24", "is_ipv6": False,
         "usable": 252, "reserved": 4, "held": 5, "free": 247,
         "used_percent": 100 * 5 / 252},
        {"subnet_id": ids["fd00:70::/64"], "subnet": "fd00:70::/64", "is_ipv6": True,
         "usable": V6_USABLE, "reserved": 4, "held": 3, "free": V6_USABLE - 3,
         "used_percent": 100 * 3 / V6_USABLE}]}
    assert etcd_revision(gateway) == now  # a read


def test_a_release_is_counted_free_again(gateway: GatewayNode, keys: ApiKeys) -> None:  # noqa: F811
    net = Network(gateway, keys, "10.71.0.0/24", "fd00:71::/64")
    booked = [net.book() for _ in range(3)] + [net.book(is_ipv6=True)]
    net.member.ok("DELETE", f"{IPS}/{booked[0]['id']}")
    net.member.ok("DELETE", f"{IPS}/{booked[3]['id']}")

    answer = net.member.ok("GET", usage_path(net.id))

    assert counts(subnet(answer, "10.71.0.0/24")) == (252, 4, 2, 250)
    assert counts(subnet(answer, "fd00:71::/64")) == (V6_USABLE, 4, 0, V6_USABLE)
    assert subnet(answer, "fd00:71::/64")["used_percent"] == 0.0
    assert answer["revision"] == etcd_revision(gateway)


def test_whoever_may_get_the_network_may_read_its_usage(gateway: GatewayNode,  # noqa: F811
                                                       keys: ApiKeys, admin: Http) -> None:
    net = Network(gateway, keys, "10.72.0.0/24", "fd00:72::/64")
    net.book()
    reader = key(gateway, keys, "project_reader", net.project)
    a_product = key(gateway, keys, "product", resource_types=("instance_server",))
    for who in (net.member, reader, a_product, admin):
        assert who("GET", f"{PNS}/{net.id}").status_code == 200
        assert subnet(who.ok("GET", usage_path(net.id)), "10.72.0.0/24")["held"] == 1


def test_another_tenant_gets_the_404_get_private_network_answers(
        gateway: GatewayNode, keys: ApiKeys) -> None:  # noqa: F811
    net = Network(gateway, keys, "10.73.0.0/24", "fd00:73::/64")
    net.book()
    stranger = key(gateway, keys, "project_member", str(uuid.uuid4()))
    before = etcd_revision(gateway)

    refused = stranger("GET", usage_path(net.id))
    as_get = stranger("GET", f"{PNS}/{net.id}")

    assert (refused.status_code, as_get.status_code) == (404, 404)
    assert refused.json() == as_get.json() == {
        "type": "not_found", "resource": "private_network", "resource_id": net.id,
        "message": "resource is not found"}
    assert etcd_revision(gateway) == before


def test_an_unknown_network_is_404_and_a_bad_id_400(admin: Http,
                                                    gateway: GatewayNode) -> None:  # noqa: F811
    unknown = str(uuid.uuid4())
    before = etcd_revision(gateway)
    missing = admin("GET", usage_path(unknown))
    assert missing.status_code == 404
    assert missing.json() == admin("GET", f"{PNS}/{unknown}").json()
    assert missing.json()["resource"] == "private_network"
    bad = admin("GET", usage_path("not-a-uuid"))
    assert bad.status_code == 400
    assert bad.json()["details"] == [{"argument_name": "private_network_id",
                                      "reason": "format", "help_message": "must be a UUID"}]
    assert etcd_revision(gateway) == before


def test_a_zonal_pool_counts_every_projects_ips_for_an_admin(
        admin: Http, gateway: GatewayNode, keys: ApiKeys) -> None:  # noqa: F811
    pool = admin.ok("POST", POOLS, {"zone": "fr-par-1", "subnet": "51.15.70.0/24"})
    a_product = key(gateway, keys, "product", resource_types=("instance_server",))
    for _ in range(3):
        a_product.ok("POST", IPS, {"source": {"zonal": "fr-par-1"}, "is_ipv6": False,
                                   "project_id": str(uuid.uuid4())})
    now = etcd_revision(gateway)

    answer = admin.ok("GET", f"{POOLS}/{pool['id']}/usage")

    assert answer == {"id": pool["id"], "region": REGION, "zone": "fr-par-1",
                      "subnet": "51.15.70.0/24", "is_ipv6": False, "revision": now,
                      "usable": 252, "reserved": 4, "held": 3, "free": 249,
                      "used_percent": 100 * 3 / 252}


def test_only_an_admin_reads_a_zonal_pools_usage(admin: Http, gateway: GatewayNode,  # noqa: F811
                                                 keys: ApiKeys) -> None:
    pool = admin.ok("POST", POOLS, {"zone": "fr-par-2", "subnet": "51.15.71.0/24"})
    net = Network(gateway, keys, "10.74.0.0/24", "fd00:74::/64")
    a_product = key(gateway, keys, "product", resource_types=("instance_server",))
    before = etcd_revision(gateway)
    for who in (net.member, a_product):
        refused = who("GET", f"{POOLS}/{pool['id']}/usage")
        assert refused.status_code == 403
        assert refused.json()["type"] == "permissions_denied"
        assert refused.json()["details"] == [{"action": "admin", "resource": "zonal_pool"}]
    for not_a_pool in (str(uuid.uuid4()), net.pn["subnets"][0]["id"]):
        missing = admin("GET", f"{POOLS}/{not_a_pool}/usage")
        assert missing.status_code == 404
        assert (missing.json()["resource"], missing.json()["resource_id"]) == (
            "zonal_pool", not_a_pool)
    assert etcd_revision(gateway) == before


def test_ipam_usage_shows_the_endpoints_counts(gateway: GatewayNode, keys: ApiKeys,  # noqa: F811
                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    for name in [k for k in os.environ if k.startswith(("IPAM_", "SCW_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    net = Network(gateway, keys, "10.75.0.0/24", "fd00:75::/64")
    for _ in range(3):
        net.book()
    net.book(is_ipv6=True)

    def ipam_usage(pn_id: str, *flags: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["usage", "--pn", pn_id, "--url", gateway.url,
                     "--secret-key", net.member.secret, *flags])
        out, err = capsys.readouterr()
        return code, out, err

    ids = {s["subnet"]: s["id"] for s in net.pn["subnets"]}
    code, out, _ = ipam_usage(net.id, "-o", "json")
    assert code == 0 and json.loads(out) == [
        {"subnet_id": ids["10.75.0.0/24"], "subnet": "10.75.0.0/24", "bookable": 252,
         "held": 3, "free": 249, "used_percent": 1.2},
        {"subnet_id": ids["fd00:75::/64"], "subnet": "fd00:75::/64", "bookable": V6_USABLE,
         "held": 1, "free": V6_USABLE - 1, "used_percent": 0.0}]
    code, out, _ = ipam_usage(net.id)
    assert code == 0 and [line.split() for line in out.splitlines()] == [
        ["SUBNET", "HELD", "FREE", "USED"], ["10.75.0.0/24", "3", "249", "1.2%"],
        ["fd00:75::/64", "1", str(V6_USABLE - 1), "0.0%"]]
    unknown = str(uuid.uuid4())
    assert ipam_usage(unknown) == (
        1, "", f"error 404 not_found: resource is not found (private_network {unknown})\n")
