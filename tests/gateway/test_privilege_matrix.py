"""The probe's findings, through HTTP with real keys: a product key may not change another
product's IPs or a project's own IPs (403 permissions_denied, and etcd is not written).

The rows are every (product key, change, IP) that `allocator.access.RULES` refuses among
the changes the probe made: PATCH of tags or of reverses, detach, release, release of a
set; each tried on a fresh IP. The managing product, and the project's member, still
make the same changes (the last test), so the refusals are about ownership, not keys.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from allocator_support import revision
from gateway_fixtures import ApiKeys, GatewayNode

from allocator.access import (
    BOOKED_BY_ME,
    BOOKED_BY_OTHER,
    DETACH,
    ON_MY_RESOURCE,
    ON_OTHER_PRODUCT,
    PROJECT_IP,
    RELEASE,
    RULES,
    UPDATE,
)

IPS = "/ipam/v1/regions/fr-par/ips"
X, Y = "instance_server", "lb_server"


@pytest.fixture(scope="module")
def node(etcd_single: Any) -> Iterator[GatewayNode]:
    """One gateway for the whole module, under a prefix of its own."""
    gateway = GatewayNode(etcd_single.endpoints, f"/t/{uuid.uuid4().hex[:12]}/").start()
    yield gateway
    gateway.stop()
    gateway.assert_conformant()


@dataclass
class World:
    node: GatewayNode
    project: str
    pn: str
    secrets: dict[str, str]  # "member", X, Y

    def __call__(self, who: str, method: str, path: str, body: Any = None
                 ) -> requests.Response:
        return requests.request(method, self.node.url + path, json=body, timeout=30,
                                headers={"X-Auth-Token": self.secrets[who]})

    def revision(self) -> int:
        assert self.node.ipam is not None
        return int(self.node.call(revision(self.node.ipam)))


@pytest.fixture(scope="module")
def world(node: GatewayNode) -> World:
    keys, project = ApiKeys(node.url), str(uuid.uuid4())
    secrets = {"member": keys.create("project_member", [project])[1],
               X: keys.create("product", resource_types=[X])[1],
               Y: keys.create("product", resource_types=[Y])[1]}
    w = World(node, project, "", secrets)
    pn = w("member", "POST", "/vpc/v2/regions/fr-par/private-networks",
           {"project_id": project, "subnets": ["10.71.0.0/22"]})
    assert pn.status_code == 200, pn.text
    w.pn = pn.json()["id"]
    return w


_macs = itertools.count(1)


def custom() -> dict[str, Any]:
    n = next(_macs)
    return {"mac_address": f"02:71:00:00:{n >> 8 & 255:02x}:{n & 255:02x}"}


def server(type_: str) -> dict[str, Any]:
    return {"type": type_, "id": str(uuid.uuid4())}


# The IPs the probe changed: (who books it, what it is attached to, by whom), and the
# column of the table each is to a product key of type X or Y.
TARGETS: dict[str, tuple[str, str | None]] = {
    "tenant_custom_ip": ("member", "custom"),
    "tenant_unattached_ip": ("member", None),
    "ip_on_resource_of_x": ("member", X),
    "ip_booked_by_x": (X, None),
}
COLUMN: dict[tuple[str, str], str] = {
    (X, "tenant_custom_ip"): PROJECT_IP, (Y, "tenant_custom_ip"): PROJECT_IP,
    (X, "tenant_unattached_ip"): PROJECT_IP, (Y, "tenant_unattached_ip"): PROJECT_IP,
    (X, "ip_on_resource_of_x"): ON_MY_RESOURCE, (Y, "ip_on_resource_of_x"): ON_OTHER_PRODUCT,
    (X, "ip_booked_by_x"): BOOKED_BY_ME, (Y, "ip_booked_by_x"): BOOKED_BY_OTHER,
}


def place(w: World, target: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A fresh IP of `target`, and the resource a detach of it names."""
    booker, attached = TARGETS[target]
    body: dict[str, Any] = {"source": {"private_network_id": w.pn}, "is_ipv6": False,
                            "project_id": w.project}
    named = custom()
    if attached == "custom":
        body["resource"] = named
    booked = w(booker, "POST", IPS, body)
    assert booked.status_code == 200, booked.text
    ip = booked.json()
    if attached in (X, Y):
        named = server(attached)
        done = w(attached, "POST", f"{IPS}/{ip['id']}/attach", {"resource": named})
        assert done.status_code == 200, done.text
    return ip, named


# change -> (the table's action, the request it makes)
CHANGES: dict[str, str] = {"patch_tags": UPDATE, "patch_reverses": UPDATE, "detach": DETACH,
                           "release": RELEASE, "release_set": RELEASE}


WIRE_OPERATION = {"patch_tags": "update", "patch_reverses": "update", "detach": "detach",
                  "release": "release", "release_set": "release"}


def request(w: World, who: str, change: str, ip: dict[str, Any], named: dict[str, Any]
            ) -> requests.Response:
    if change == "patch_tags":
        return w(who, "PATCH", f"{IPS}/{ip['id']}", {"tags": ["probe"]})
    if change == "patch_reverses":
        return w(who, "PATCH", f"{IPS}/{ip['id']}", {"reverses": [{"hostname": "probe.example"}]})
    if change == "detach":
        return w(who, "POST", f"{IPS}/{ip['id']}/detach", {"resource": named})
    if change == "release":
        return w(who, "DELETE", f"{IPS}/{ip['id']}")
    return w(who, "POST", "/ipam/v1/regions/fr-par/ip-sets/release", {"ip_ids": [ip["id"]]})


REFUSED = [(who, change, target)
           for who, change, target in itertools.product((X, Y), CHANGES, TARGETS)
           if COLUMN[who, target] not in RULES["product"][CHANGES[change]]]


def test_the_matrix_covers_both_findings() -> None:
    refused = set(REFUSED)
    for who, change, target in (  # finding 1: PATCH of another product's and of tenants' IPs
            (Y, "patch_tags", "ip_on_resource_of_x"), (Y, "patch_reverses", "ip_on_resource_of_x"),
            (X, "patch_tags", "tenant_custom_ip"), (X, "patch_reverses", "tenant_custom_ip"),
            # finding 2: detach and release of any project's custom IPs
            (X, "detach", "tenant_custom_ip"), (Y, "detach", "tenant_custom_ip"),
            (X, "release", "tenant_unattached_ip"), (X, "release_set", "tenant_unattached_ip")):
        assert (who, change, target) in refused


@pytest.mark.parametrize(("who", "change", "target"), REFUSED,
                         ids=["-".join(row) for row in REFUSED])
def test_a_product_key_is_refused_what_it_does_not_own(world: World, who: str, change: str,
                                                        target: str) -> None:
    ip, named = place(world, target)
    before = world.revision()
    resp = request(world, who, change, ip, named)
    assert resp.status_code == 403, resp.text
    assert resp.json()["type"] == "permissions_denied"
    # the operation asked for, and the resource type when the IP is on another product's
    held = X if COLUMN[who, target] == ON_OTHER_PRODUCT else "ip"
    assert resp.json()["details"] == [{"action": WIRE_OPERATION[change], "resource": held}]
    assert world.revision() == before, "a refused request wrote to etcd"


def test_the_owners_still_make_the_same_changes(world: World) -> None:
    on_x, server_x = place(world, "ip_on_resource_of_x")
    for change in ("patch_tags", "patch_reverses"):
        assert request(world, X, change, on_x, server_x).status_code == 200
    assert request(world, X, "detach", on_x, server_x).json()["resource"] is None
    assert request(world, "member", "release", on_x, server_x).status_code == 204
    mine, named = place(world, "ip_booked_by_x")
    assert request(world, X, "patch_tags", mine, named).status_code == 200
    assert request(world, X, "release_set", mine, named).status_code == 204
    tenant, mac = place(world, "tenant_custom_ip")
    assert request(world, "member", "patch_tags", tenant, mac).status_code == 200
    assert request(world, "member", "detach", tenant, mac).status_code == 200
    assert request(world, "member", "release", tenant, mac).status_code == 204
