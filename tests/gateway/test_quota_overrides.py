"""A project's quota overrides through the admin API, the `ipam quotas` commands, and on
two nodes: `GET/PUT/DELETE /ipam/admin/v1/projects/{project_id}/quotas`.

Every answer and refusal is asserted as its exact body; a refused change writes nothing
(etcd's revision does not move). A change made on one node is the quota of the other
node's very next create, never awaited; an IP quota appearing on a project that had
none reaches a node with its watch, awaited (the documented window), never slept on.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from allocator_support import revision
from gateway_fixtures import ADMIN_SECRET, REGION, ApiKeys, GatewayNode, gateway_pair  # noqa: F401

from allocator.contract import MAX_OVERRIDE, Quotas
from gateway.cli import main

QUOTAS = Quotas(vpcs_per_project=2, private_networks_per_project=2,
                subnets_per_private_network=2, ips_per_project=None)
ADMIN = {"X-Auth-Token": ADMIN_SECRET}
VPCS = f"/vpc/v2/regions/{REGION}/vpcs"
PNS = f"/vpc/v2/regions/{REGION}/private-networks"
IPS = f"/ipam/v1/regions/{REGION}/ips"


@pytest.fixture
def node(etcd_single: Any, key_prefix: str) -> Iterator[GatewayNode]:
    gateway = GatewayNode(etcd_single.endpoints, key_prefix, quotas=QUOTAS).start()
    yield gateway
    gateway.stop()
    gateway.assert_conformant()


@pytest.fixture
def project() -> str:
    return str(uuid.uuid4())


def _quotas(node: GatewayNode, project: str, method: str = "GET", body: Any = None,
            headers: dict[str, str] = ADMIN) -> requests.Response:
    return requests.request(method, f"{node.url}/ipam/admin/v1/projects/{project}/quotas",
                            json=body, headers=headers, timeout=10)


def _answer(project: str, vpcs: int | None = 2, private_networks: int | None = 2,
            subnets: int | None = 2, ips: int | None = None,
            overridden: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"project_id": project, "vpcs": vpcs, "private_networks": private_networks,
            "subnets_per_private_network": subnets, "ips": ips,
            "overridden": list(overridden)}


def _create_vpc(node: GatewayNode, project: str, name: str) -> requests.Response:
    return requests.post(f"{node.url}{VPCS}", json={"project_id": project, "name": name},
                         headers=ADMIN, timeout=10)


def _quota_refusal(resource: str, quota: int, current: int) -> dict[str, Any]:
    return {"type": "quotas_exceeded", "details": [
        {"resource": resource, "quota": quota, "current": current}]}


def _without_message(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "message"}


# -- the admin routes -----------------------------------------------------------------------------


def test_get_answers_the_defaults_until_an_override_sets_some(node: GatewayNode, project: str):
    assert _quotas(node, project).json() == _answer(project)
    put = _quotas(node, project, "PUT", {"vpcs": 5, "ips": 0})
    assert (put.status_code, put.json()) == (200, _answer(project, vpcs=5, ips=0,
                                                          overridden=("vpcs", "ips")))
    assert _quotas(node, project).json() == put.json()


def test_put_keeps_the_fields_it_does_not_name_and_null_gives_one_back(
        node: GatewayNode, project: str):
    _quotas(node, project, "PUT", {"vpcs": 5, "private_networks": 7})
    put = _quotas(node, project, "PUT", {"vpcs": None, "subnets_per_private_network": 9})
    assert put.json() == _answer(project, private_networks=7, subnets=9,
                                 overridden=("private_networks",
                                             "subnets_per_private_network"))


def test_delete_answers_204_and_gives_the_defaults_back(node: GatewayNode, project: str):
    _quotas(node, project, "PUT", {"vpcs": 5})
    deleted = _quotas(node, project, "DELETE")
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert _quotas(node, project).json() == _answer(project)


@pytest.mark.parametrize("body, argument, reason", [
    ({"vpcs": 3, "colour": 1}, "colour", "unknown"),
    ({"vpcs": -1}, "vpcs", "constraint"),
    ({"ips": MAX_OVERRIDE + 1}, "ips", "constraint"),
    ({"ips": 2.5}, "ips", "format"),
    ({"private_networks": "3"}, "private_networks", "format"),
    ({"subnets_per_private_network": True}, "subnets_per_private_network", "format"),
])
def test_a_bad_put_is_400_invalid_arguments_naming_the_field_and_writes_nothing(
        node: GatewayNode, project: str, body: dict[str, Any], argument: str, reason: str):
    _quotas(node, project, "PUT", {"vpcs": 5})
    before = node.call(revision(node.ipam))
    refused = _quotas(node, project, "PUT", body)
    assert refused.status_code == 400
    answer = refused.json()
    assert _without_message(answer) | {"details": [
        {k: v for k, v in d.items() if k != "help_message"} for d in answer["details"]]} == {
        "type": "invalid_arguments",
        "details": [{"argument_name": argument, "reason": reason}]}
    assert answer["message"] == "invalid argument(s)"
    assert node.call(revision(node.ipam)) == before
    assert _quotas(node, project).json()["vpcs"] == 5


def test_a_whole_number_written_with_a_point_is_that_integer(node: GatewayNode,
                                                              project: str):
    """JSON Schema's integer takes 184549.0 (schemathesis sends such numbers): so do we."""
    answer = _quotas(node, project, "PUT", {"subnets_per_private_network": 184549.0,
                                            "vpcs": 7.0})
    assert answer.status_code == 200, answer.text
    assert (answer.json()["subnets_per_private_network"], answer.json()["vpcs"]) == (184549, 7)


def test_a_project_that_is_no_uuid_is_400(node: GatewayNode):
    for method in ("GET", "PUT", "DELETE"):
        refused = _quotas(node, "p1", method, {"vpcs": 1} if method == "PUT" else None)
        assert refused.status_code == 400
        assert [d["argument_name"] for d in refused.json()["details"]] == ["project_id"]


def test_only_an_admin_key_reads_or_changes_a_projects_quotas(node: GatewayNode,
                                                              project: str):
    keys = ApiKeys(node.url)
    _, member = keys.create("project_member", [project])
    _, product = keys.create("product", resource_types=["instance_server"])
    before = node.call(revision(node.ipam))
    for secret in (member, product):
        for method in ("GET", "PUT", "DELETE"):
            refused = _quotas(node, project, method, {"vpcs": 50} if method == "PUT" else None,
                              headers={"X-Auth-Token": secret})
            assert (refused.status_code, refused.json()) == (403, {
                "type": "permissions_denied", "message": "insufficient permissions",
                "details": [{"action": "admin", "resource": "project"}]})
    refused = _quotas(node, project, headers={})
    assert refused.status_code == 401
    assert node.call(revision(node.ipam)) == before


# -- the override counts, through the tenant API ----------------------------------------------


def test_an_override_raises_and_lowers_the_vpc_quota(node: GatewayNode, project: str):
    for name in ("a", "b"):
        assert _create_vpc(node, project, name).status_code == 200
    refused = _create_vpc(node, project, "c")
    assert (refused.status_code, _without_message(refused.json())) == (
        403, _quota_refusal("vpc", 2, 2))
    _quotas(node, project, "PUT", {"vpcs": 3})
    assert _create_vpc(node, project, "c").status_code == 200
    _quotas(node, project, "PUT", {"vpcs": 1})  # below what it holds: nothing deleted
    refused = _create_vpc(node, project, "d")
    assert (refused.status_code, refused.json()) == (403, {
        **_quota_refusal("vpc", 1, 3),
        "message": f"project {project} holds 3 vpcs, its quota: delete one first"})
    listed = requests.get(f"{node.url}{VPCS}", params={"project_id": project},
                          headers=ADMIN, timeout=10).json()
    assert sorted(v["name"] for v in listed["vpcs"]) == ["a", "b", "c"]


# -- two nodes ---------------------------------------------------------------------------------


def test_a_vpc_quota_set_on_one_node_holds_on_the_other_at_once(
        gateway_pair: tuple[GatewayNode, GatewayNode], project: str):  # noqa: F811
    a, b = gateway_pair
    assert _create_vpc(b, project, "first").status_code == 200
    _quotas(a, project, "PUT", {"vpcs": 1})
    refused = _create_vpc(b, project, "second")
    assert (refused.status_code, _without_message(refused.json())) == (
        403, _quota_refusal("vpc", 1, 1))
    assert _quotas(a, project, "DELETE").status_code == 204
    assert _create_vpc(b, project, "second").status_code == 200


@pytest.fixture
def ip_quota_pair(etcd_cluster3: Any, key_prefix: str
                  ) -> Iterator[tuple[GatewayNode, GatewayNode]]:
    """Two nodes with a default IP quota (`--quota-ips 1000`), each on another member."""
    eps = list(etcd_cluster3.endpoints)
    quotas = Quotas(ips_per_project=1000)
    a = GatewayNode(eps, key_prefix, quotas=quotas).start()
    b = GatewayNode(eps[1:] + eps[:1], key_prefix, quotas=quotas).start()
    yield a, b
    a.stop()
    b.stop()
    a.assert_conformant()
    b.assert_conformant()


def _pn(node: GatewayNode, project: str) -> str:
    made = requests.post(f"{node.url}{PNS}", json={"project_id": project, "name": "pn",
                                                   "subnets": ["10.8.0.0/24"]},
                         headers=ADMIN, timeout=10)
    assert made.status_code == 200, made.text
    return str(made.json()["id"])


def _book(node: GatewayNode, project: str, pn: str) -> requests.Response:
    return requests.post(f"{node.url}{IPS}", json={
        "project_id": project, "is_ipv6": False, "source": {"private_network_id": pn}},
        headers=ADMIN, timeout=10)


def test_an_ip_quota_set_on_one_node_holds_on_the_other_at_once(
        ip_quota_pair: tuple[GatewayNode, GatewayNode], project: str):
    a, b = ip_quota_pair
    pn = _pn(b, project)
    assert _book(b, project, pn).status_code == 200
    _quotas(a, project, "PUT", {"ips": 1})
    refused = _book(b, project, pn)
    assert (refused.status_code, _without_message(refused.json())) == (
        403, _quota_refusal("ip", 1, 1))
    assert _quotas(a, project, "DELETE").status_code == 204
    assert _book(b, project, pn).status_code == 200


def test_an_ip_quota_new_to_a_project_reaches_the_other_node_with_its_watch(
        gateway_pair: tuple[GatewayNode, GatewayNode], project: str):  # noqa: F811
    """No IP quota by default: the other node learns of the new one from its watch (the
    window README's "Quotas" measures), awaited here."""
    a, b = gateway_pair
    pn = _pn(b, project)
    assert _book(b, project, pn).status_code == 200
    assert _quotas(a, project, "PUT", {"ips": 1}).status_code == 200
    assert b.ipam is not None
    override = b.call(b.ipam.project_quotas(project))
    assert b.call(b.ipam.quota_overrides.seen(override.revision))
    refused = _book(b, project, pn)
    assert (refused.status_code, _without_message(refused.json())) == (
        403, _quota_refusal("ip", 1, 1))


# -- ipam quotas --------------------------------------------------------------------------------


def _ipam(node: GatewayNode, capsys: pytest.CaptureFixture[str], *args: str
          ) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([*args, "--url", node.url, "--secret-key", ADMIN_SECRET])
    out, err = capsys.readouterr()
    return code, out, err


def test_ipam_quotas_get_set_and_reset(node: GatewayNode, project: str,
                                       capsys: pytest.CaptureFixture[str]):
    code, out, err = _ipam(node, capsys, "quotas", "get", "--project", project)
    assert (code, err) == (0, "")
    assert [line.split() for line in out.splitlines()] == [
        ["QUOTA", "VALUE", "FROM"], ["vpcs", "2", "default"],
        ["private_networks", "2", "default"], ["subnets_per_private_network", "2", "default"],
        ["ips", "none", "default"]]
    code, out, err = _ipam(node, capsys, "quotas", "set", "--project", project,
                           "--vpcs", "5", "--ips", "100", "-o", "json")
    assert (code, err) == (0, "")
    assert json.loads(out) == _answer(project, vpcs=5, ips=100, overridden=("vpcs", "ips"))
    code, out, _ = _ipam(node, capsys, "quotas", "set", "--project", project,
                         "--vpcs", "default")
    assert out.splitlines()[1].split() == ["vpcs", "2", "default"]
    assert out.splitlines()[4].split() == ["ips", "100", "override"]
    assert _ipam(node, capsys, "quotas", "reset", "--project", project)[:2] == (
        0, f"project {project}: the default quotas\n")
    assert _quotas(node, project).json() == _answer(project)


@pytest.mark.parametrize("args, message", [
    (["quotas", "set", "--project", "P"], "'P' is not a valid UUID."),
    (["quotas", "set", "--project", str(uuid.uuid4()), "--ips", "-2"],
     "'-2' is not an integer from 0, nor 'default'."),
    (["quotas", "set", "--project", str(uuid.uuid4())], "name at least one quota"),
])
def test_ipam_quotas_refuses_bad_input_before_any_request(
        node: GatewayNode, capsys: pytest.CaptureFixture[str], args: list[str], message: str):
    code, out, err = _ipam(node, capsys, *args)
    assert (code, out) == (2, "")
    assert message in err


def test_ipam_quotas_prints_the_gateways_refusal(node: GatewayNode, project: str,
                                                 capsys: pytest.CaptureFixture[str]):
    _, member = ApiKeys(node.url).create("project_member", [project])
    capsys.readouterr()
    code = main(["quotas", "get", "--project", project, "--url", node.url,
                 "--secret-key", member])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert "permissions_denied" in err or "insufficient permissions" in err
