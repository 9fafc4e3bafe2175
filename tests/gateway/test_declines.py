"""DHCP declines for operators: the admin API (list, filter, clear, admin keys only) and
`ipam dhcp-declines list|clear`, against a real gateway on a real etcd."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from gateway_fixtures import ADMIN_SECRET, REGION, ApiKeys, GatewayNode, gateway  # noqa: F401

from allocator.contract import AddressAsk, Resource
from gateway.cli import main

DECLINES = f"/ipam/admin/v1/regions/{REGION}/dhcp-declines"
MAC, OTHER_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def http(node: GatewayNode, method: str, query: dict[str, str] | None = None,
         secret: str | None = ADMIN_SECRET, path: str = DECLINES) -> requests.Response:
    headers = {} if secret is None else {"X-Auth-Token": secret}
    return requests.request(method, node.url + path, params=query, headers=headers,
                            timeout=30)


class Declined:
    """Two networks of one project, and three declines recorded as agents would."""

    def __init__(self, node: GatewayNode) -> None:
        assert node.ipam is not None
        ipam, project = node.ipam, str(uuid.uuid4())
        self.pn = node.call(ipam.create_private_network(REGION, project, None, "web",
                                                        subnets=["10.9.0.0/24"]))
        self.other = node.call(ipam.create_private_network(REGION, project, None, "db",
                                                           subnets=["10.8.0.0/24"]))
        for pn, mac, address in ((self.pn, MAC, "10.9.0.5"), (self.pn, OTHER_MAC, "10.9.0.6"),
                                 (self.other, MAC, "10.8.0.5")):
            node.call(ipam.book(AddressAsk(region=REGION, project_id=project,
                                           private_network_id=pn.id, address=address,
                                           resource=Resource.custom(mac, "vm"))))
            node.call(ipam.record_decline(pn.id, mac, address, agent="agent-a"))

    def rows(self, answer: dict[str, Any]) -> list[tuple[str, str, str]]:
        assert answer["total_count"] == len(answer["dhcp_declines"])
        return sorted((d["private_network_id"], d["mac_address"], d["address"])
                      for d in answer["dhcp_declines"])


@pytest.fixture
def declined(gateway: GatewayNode) -> Declined:  # noqa: F811
    return Declined(gateway)


# -- the admin API -------------------------------------------------------------------------------


def test_declines_are_listed_whole_and_filtered(gateway: GatewayNode,  # noqa: F811
                                                declined: Declined) -> None:
    pn, other = declined.pn.id, declined.other.id
    everything = http(gateway, "GET")
    assert everything.status_code == 200, everything.text
    assert declined.rows(everything.json()) == sorted([
        (pn, MAC, "10.9.0.5"), (pn, OTHER_MAC, "10.9.0.6"), (other, MAC, "10.8.0.5")])
    one = next(d for d in everything.json()["dhcp_declines"] if d["address"] == "10.9.0.5")
    assert set(one) == {"private_network_id", "mac_address", "address", "is_ipv6", "ip_id",
                        "declined_at", "declined_by"}
    assert (one["is_ipv6"], one["declined_by"]) == (False, "agent-a")
    assert declined.rows(http(gateway, "GET", {"private_network_id": pn}).json()) == sorted([
        (pn, MAC, "10.9.0.5"), (pn, OTHER_MAC, "10.9.0.6")])
    assert declined.rows(http(gateway, "GET", {"mac_address": MAC.upper().replace(":", "-")}
                              ).json()) == sorted([(pn, MAC, "10.9.0.5"),
                                                   (other, MAC, "10.8.0.5")])
    both = http(gateway, "GET", {"private_network_id": other, "mac_address": OTHER_MAC})
    assert both.json() == {"dhcp_declines": [], "total_count": 0}


def test_a_clear_deletes_what_it_names_and_answers_it(gateway: GatewayNode,  # noqa: F811
                                                      declined: Declined) -> None:
    pn, other = declined.pn.id, declined.other.id
    cleared = http(gateway, "DELETE", {"private_network_id": pn, "mac_address": MAC})
    assert cleared.status_code == 200, cleared.text
    assert declined.rows(cleared.json()) == [(pn, MAC, "10.9.0.5")]
    assert http(gateway, "DELETE", {"private_network_id": pn, "mac_address": MAC}).json() == {
        "dhcp_declines": [], "total_count": 0}
    assert declined.rows(http(gateway, "GET").json()) == sorted([
        (pn, OTHER_MAC, "10.9.0.6"), (other, MAC, "10.8.0.5")])
    assert http(gateway, "DELETE").json()["total_count"] == 2
    assert http(gateway, "GET").json()["total_count"] == 0


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_only_an_admin_key_reads_or_clears_declines(gateway: GatewayNode,  # noqa: F811
                                                    declined: Declined, method: str) -> None:
    _, member = ApiKeys(gateway.url).create("project_member", [str(uuid.uuid4())])
    _, product = ApiKeys(gateway.url).create("product", resource_types=["instance_server"])
    for secret in (member, product):
        denied = http(gateway, method, secret=secret)
        assert denied.status_code == 403
        assert denied.json()["details"] == [{"action": "admin", "resource": "dhcp_decline"}]
    assert http(gateway, method, secret=None).status_code == 401
    assert http(gateway, "GET").json()["total_count"] == 3  # nothing was cleared


@pytest.mark.parametrize(("query", "argument"), [
    ({"private_network_id": "nope"}, "private_network_id"),
    ({"mac_address": "02:00:00"}, "mac_address"),
])
@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_a_bad_filter_is_a_400_naming_it(gateway: GatewayNode,  # noqa: F811
                                         declined: Declined, method: str,
                                         query: dict[str, str], argument: str) -> None:
    refused = http(gateway, method, query)
    assert refused.status_code == 400
    assert [d["argument_name"] for d in refused.json()["details"]] == [argument]
    assert http(gateway, "GET").json()["total_count"] == 3


def test_another_region_is_not_served(gateway: GatewayNode) -> None:  # noqa: F811
    for method in ("GET", "DELETE"):
        resp = http(gateway, method, path="/ipam/admin/v1/regions/nl-ams/dhcp-declines")
        assert resp.status_code == 404 and resp.json()["type"] == "not_found"


# -- ipam dhcp-declines --------------------------------------------------------------------------


@pytest.fixture
def run(gateway: GatewayNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> Any:
    """`ipam ARGS --url U --secret-key S` as the operator types it: (code, out, err)."""
    for name in [k for k in os.environ if k.startswith(("IPAM_", "SCW_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)

    def ipam(*args: str, secret: str = ADMIN_SECRET) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([*args, "--url", gateway.url, "--secret-key", secret])
        out, err = capsys.readouterr()
        return code, out, err

    return ipam


def test_ipam_dhcp_declines_list_prints_a_table_or_the_apis_objects(
        run: Any, declined: Declined) -> None:
    pn = declined.pn.id
    code, out, err = run("dhcp-declines", "list", "--pn", pn)
    assert (code, err) == (0, "")
    lines = [line.split() for line in out.splitlines()]
    assert lines[0] == ["PRIVATE_NETWORK_ID", "MAC_ADDRESS", "ADDRESS", "DECLINED_AT",
                        "DECLINED_BY"]
    assert sorted((row[1], row[2], row[4]) for row in lines[1:]) == [
        (MAC, "10.9.0.5", "agent-a"), (OTHER_MAC, "10.9.0.6", "agent-a")]
    code, out, _ = run("dhcp-declines", "list", "--mac", MAC, "-o", "json")
    assert code == 0 and sorted(d["address"] for d in json.loads(out)) == [
        "10.8.0.5", "10.9.0.5"]


def test_ipam_dhcp_declines_clear_says_how_many_it_cleared(run: Any,
                                                           declined: Declined) -> None:
    assert run("dhcp-declines", "clear", "--pn", declined.pn.id, "--mac", MAC) == (
        0, "cleared 1 decline\n", "")
    assert run("dhcp-declines", "clear", "--pn", declined.pn.id, "--mac", MAC) == (
        0, "cleared 0 declines\n", "")
    code, out, _ = run("dhcp-declines", "clear", "-o", "json")
    assert code == 0 and sorted(d["address"] for d in json.loads(out)) == [
        "10.8.0.5", "10.9.0.6"]
    assert run("dhcp-declines", "list") == (
        0, "PRIVATE_NETWORK_ID    MAC_ADDRESS    ADDRESS    DECLINED_AT    DECLINED_BY\n", "")


def test_ipam_dhcp_declines_refusals_exit_with_their_lines(gateway: GatewayNode,  # noqa: F811
                                                           run: Any,
                                                           declined: Declined) -> None:
    assert run("dhcp-declines", "list", "--pn", "12") == (
        2, "", ("ipam dhcp-declines list: Invalid value for '--pn': '12' is not a valid "
                "UUID.\n"))
    code, out, err = run("dhcp-declines", "clear", "--mac", "nope")
    assert (code, out) == (1, "") and err.startswith("error 400 invalid_arguments: ")
    assert "  mac_address: " in err
    _, member = ApiKeys(gateway.url).create("project_member", [str(uuid.uuid4())])
    code, out, err = run("dhcp-declines", "clear", secret=member)
    assert (code, out) == (1, "") and err.startswith("error 403 permissions_denied: ")
    assert http(gateway, "GET").json()["total_count"] == 3
