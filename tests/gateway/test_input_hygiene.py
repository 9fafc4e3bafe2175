"""Input hygiene at the HTTP edge: free text, addresses and CIDRs in their canonical
form, and zonal pools of public addresses only.

Every refusal is one 400 `invalid_arguments` naming the field, and leaves etcd's
revision where it was; the canonical inputs next to each rule still pass.
"""

from __future__ import annotations

import ipaddress
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from allocator_support import revision
from gateway_fixtures import ADMIN_SECRET, GatewayNode

from gateway.cli import main

R = "/ipam/v1/regions/fr-par"
V = "/vpc/v2/regions/fr-par"
A = "/ipam/admin/v1"
POOLS = f"{A}/regions/fr-par/zonal-pools"
MAC = "02:00:00:00:00:01"
PUBLIC = "a zonal pool holds public (global unicast) addresses"


@pytest.fixture(scope="module")
def node(etcd_single: Any) -> Iterator[GatewayNode]:
    """One gateway for the whole module, under a prefix of its own."""
    gateway = GatewayNode(etcd_single.endpoints, f"/t/{uuid.uuid4().hex[:12]}/").start()
    yield gateway
    gateway.stop()
    gateway.assert_conformant()


@dataclass
class World:
    """A VPC, a Private Network of it and an IP booked there, to aim the changes at."""

    node: GatewayNode
    project: str
    vpc: str = ""
    pn: str = ""
    ip: str = ""

    def __call__(self, method: str, path: str, body: Any = None) -> requests.Response:
        return requests.request(method, self.node.url + path, json=body, timeout=30,
                                headers={"X-Auth-Token": ADMIN_SECRET})

    def revision(self) -> int:
        assert self.node.ipam is not None
        return int(self.node.call(revision(self.node.ipam)))

    def refused(self, method: str, path: str, body: Any, argument: str, reason: str
                ) -> str:
        """The help message of the one 400 `argument` gets; checks nothing was written."""
        before = self.revision()
        resp = self(method, path, body)
        assert resp.status_code == 400, resp.text
        got = resp.json()
        assert got["type"] == "invalid_arguments", got
        assert [(d["argument_name"], d["reason"]) for d in got["details"]] == [
            (argument, reason)], got
        assert self.revision() == before, "a refused request wrote to etcd"
        return str(got["details"][0]["help_message"])


@pytest.fixture(scope="module")
def world(node: GatewayNode) -> World:
    w = World(node, str(uuid.uuid4()))
    vpc = w("POST", f"{V}/vpcs", {"project_id": w.project, "name": "hygiene"})
    assert vpc.status_code == 200, vpc.text
    w.vpc = vpc.json()["id"]
    pn = w("POST", f"{V}/private-networks", {"project_id": w.project, "vpc_id": w.vpc,
                                              "subnets": ["10.60.0.0/22", "fd00:60::/64"]})
    assert pn.status_code == 200, pn.text
    w.pn = pn.json()["id"]
    ip = w("POST", f"{R}/ips", {"project_id": w.project,
                                "source": {"private_network_id": w.pn}})
    assert ip.status_code == 200, ip.text
    w.ip = ip.json()["id"]
    return w


# -- free text --------------------------------------------------------------------------

Request = Callable[[World, Any], tuple[str, str, Any]]

# (id, the request carrying the text, the argument named)
TEXT_FIELDS: list[tuple[str, Request, str]] = [
    ("vpc-name", lambda w, v: ("POST", f"{V}/vpcs", {"project_id": w.project, "name": v}),
     "name"),
    ("vpc-tag", lambda w, v: ("POST", f"{V}/vpcs", {"project_id": w.project,
                                                    "tags": ["fine", v]}), "tags"),
    ("vpc-update-name", lambda w, v: ("PATCH", f"{V}/vpcs/{w.vpc}", {"name": v}), "name"),
    ("vpc-update-tag", lambda w, v: ("PATCH", f"{V}/vpcs/{w.vpc}", {"tags": [v]}), "tags"),
    ("pn-name", lambda w, v: ("POST", f"{V}/private-networks", {"project_id": w.project,
                                                                "name": v}), "name"),
    ("pn-tag", lambda w, v: ("POST", f"{V}/private-networks", {"project_id": w.project,
                                                               "tags": [v]}), "tags"),
    ("pn-update-name", lambda w, v: ("PATCH", f"{V}/private-networks/{w.pn}", {"name": v}),
     "name"),
    ("pn-update-tag", lambda w, v: ("PATCH", f"{V}/private-networks/{w.pn}", {"tags": [v]}),
     "tags"),
    ("ip-tag", lambda w, v: ("POST", f"{R}/ips", {
        "project_id": w.project, "source": {"private_network_id": w.pn}, "tags": [v]}),
     "tags"),
    ("ip-resource-name", lambda w, v: ("POST", f"{R}/ips", {
        "project_id": w.project, "source": {"private_network_id": w.pn},
        "resource": {"mac_address": MAC, "name": v}}), "resource.name"),
    ("ip-update-tag", lambda w, v: ("PATCH", f"{R}/ips/{w.ip}", {"tags": [v]}), "tags"),
    ("reverse-hostname", lambda w, v: ("PATCH", f"{R}/ips/{w.ip}", {
        "reverses": [{"hostname": v}]}), "reverses.hostname"),
    ("attach-resource-name", lambda w, v: ("POST", f"{R}/ips/{w.ip}/attach", {
        "resource": {"mac_address": MAC, "name": v}}), "resource.name"),
    ("move-to-resource-name", lambda w, v: ("POST", f"{R}/ips/{w.ip}/move", {
        "from_resource": {"mac_address": MAC},
        "to_resource": {"mac_address": "02:00:00:00:00:02", "name": v}}), "to_resource.name"),
    ("api-key-description", lambda w, v: ("POST", f"{A}/api-keys", {
        "role": "admin", "description": v}), "description"),
]

CONTROL = "must hold no control, format or separator character but the space"
EDGE = "must not start or end with a space"

# (id, value, help message); requests escapes a lone surrogate as JSON's "\ud800".
BAD_TEXT: list[tuple[str, str, str]] = [
    ("nul", "a\x00b", f"{CONTROL}: U+0000 at index 1"),
    ("bell", "a\x07b", f"{CONTROL}: U+0007 at index 1"),
    ("tab", "a\tb", f"{CONTROL}: U+0009 at index 1"),
    ("newline", "ab\n", f"{CONTROL}: U+000A at index 2"),
    ("del", "a\x7fb", f"{CONTROL}: U+007F at index 1"),
    ("c1-next-line", "a\x85b", f"{CONTROL}: U+0085 at index 1"),
    ("lone-high-surrogate", "a\ud800b", f"{CONTROL}: U+D800 at index 1"),
    ("lone-low-surrogate", "\udc00", f"{CONTROL}: U+DC00 at index 0"),
    ("no-break-space", "a\xa0b", f"{CONTROL}: U+00A0 at index 1"),
    ("line-separator", "a\u2028b", f"{CONTROL}: U+2028 at index 1"),
    ("bidi-override", "a\u202eb", f"{CONTROL}: U+202E at index 1"),
    ("leading-space", " ab", EDGE),
    ("trailing-space", "ab ", EDGE),
    ("only-a-space", " ", EDGE),
]


@pytest.mark.parametrize(("value", "message"), [(v, m) for _, v, m in BAD_TEXT],
                         ids=[i for i, _, _ in BAD_TEXT])
@pytest.mark.parametrize(("request_of", "argument"), [(r, a) for _, r, a in TEXT_FIELDS],
                         ids=[i for i, _, _ in TEXT_FIELDS])
def test_free_text_with_a_control_character_or_an_edge_space_is_refused(
        world: World, request_of: Request, argument: str, value: str, message: str) -> None:
    method, path, body = request_of(world, value)
    assert world.refused(method, path, body, argument, "format") == message


@pytest.mark.parametrize("value", ["web 1", "Ünïcödé", "café ☕ 😀", "a-b_c.d/e:f",
                                   "x" * 128])
def test_printable_text_is_kept_as_sent(world: World, value: str) -> None:
    made = world("POST", f"{V}/vpcs", {"project_id": world.project, "name": value,
                                       "tags": [value]})
    assert made.status_code == 200, made.text
    assert (made.json()["name"], made.json()["tags"]) == (value, [value])
    tagged = world("PATCH", f"{R}/ips/{world.ip}", {"tags": [value]})
    assert tagged.status_code == 200, tagged.text
    assert tagged.json()["tags"] == [value]


# (id, path and query without the value, argument)
FILTERS = [("vpcs-name", f"{V}/vpcs?name=", "name"),
           ("private-networks-tags", f"{V}/private-networks?tags=", "tags"),
           ("ips-tags", f"{R}/ips?tags=", "tags"),
           ("ips-resource-name", f"{R}/ips?resource_name=", "resource_name"),
           ("ips-resource-type", f"{R}/ips?resource_type=", "resource_type"),
           ("ips-zonal", f"{R}/ips?zonal=", "zonal")]

# A filter is matched as a part of what is stored: its spaces count, its controls never.
BAD_FILTERS = [(i, v, m) for i, v, m in BAD_TEXT
               if m != EDGE and "surrogate" not in i]  # no URL carries a lone surrogate


@pytest.mark.parametrize(("value", "message"), [(v, m) for _, v, m in BAD_FILTERS],
                         ids=[i for i, _, _ in BAD_FILTERS])
@pytest.mark.parametrize(("path", "argument"), [(p, a) for _, p, a in FILTERS],
                         ids=[i for i, _, _ in FILTERS])
def test_a_list_filter_with_a_control_character_is_refused(
        world: World, path: str, argument: str, value: str, message: str) -> None:
    assert world.refused("GET", path + requests.utils.quote(value, safe=""), None,
                         argument, "format") == message


def test_a_list_filter_keeps_its_spaces(world: World) -> None:
    made = world("POST", f"{V}/vpcs", {"project_id": world.project, "name": "blue whale"})
    assert made.status_code == 200, made.text
    found = world("GET", f"{V}/vpcs?name=%20whale&project_id={world.project}")
    assert found.status_code == 200, found.text
    assert [v["name"] for v in found.json()["vpcs"]] == ["blue whale"]


# -- addresses and CIDRs ----------------------------------------------------------------

PREFIX = "the prefix length must be a decimal number without leading zeros, at most"
NOT_AN_ADDRESS = ("is not an IP address: IPv4 as four decimal numbers without leading "
                  "zeros, IPv6 as RFC 4291 writes it")

# (id, CIDR, help message)
BAD_CIDRS: list[tuple[str, str, str]] = [
    ("trailing-space", "10.61.0.0/24 ", "'10.61.0.0/24 ' must hold no whitespace"),
    ("leading-space", " 10.61.0.0/24", "' 10.61.0.0/24' must hold no whitespace"),
    ("trailing-newline", "10.61.0.0/24\n", "'10.61.0.0/24\\n' must hold no whitespace"),
    ("space-before-slash", "10.61.0.0 /24", "'10.61.0.0 /24' must hold no whitespace"),
    ("prefix-leading-zero", "10.61.0.0/024", f"'10.61.0.0/024': {PREFIX} 32"),
    ("prefix-sign", "10.61.0.0/+24", f"'10.61.0.0/+24': {PREFIX} 32"),
    ("prefix-arabic-digits", "10.61.0.0/\u0662\u0664",
     f"'10.61.0.0/\\u0662\\u0664': {PREFIX} 32"),
    ("prefix-too-long", "10.61.0.0/33", f"'10.61.0.0/33': {PREFIX} 32"),
    ("two-prefixes", "10.61.0.0/24/24", f"'10.61.0.0/24/24': {PREFIX} 32"),
    ("no-prefix", "10.61.0.0", "'10.61.0.0' has no prefix length"),
    ("empty", "", "'' has no prefix length"),
    ("octet-leading-zero", "10.061.0.0/24", f"'10.061.0.0' {NOT_AN_ADDRESS}"),
    ("short-form", "10.61/16", f"'10.61' {NOT_AN_ADDRESS}"),
    ("hexadecimal-octet", "0xa.61.0.0/24", f"'0xa.61.0.0' {NOT_AN_ADDRESS}"),
    ("v6-zone-index", "fd00:61::%eth0/64", "'fd00:61::%eth0' must carry no zone index (%...)"),
    ("v6-zone-after-prefix", "fd00:61::/64%eth0", f"'fd00:61::/64%eth0': {PREFIX} 128"),
    ("v6-prefix-leading-zero", "fd00:61::/064", f"'fd00:61::/064': {PREFIX} 128"),
    ("v6-prefix-too-long", "fd00:61::/129", f"'fd00:61::/129': {PREFIX} 128"),
]

# (id, the request carrying the CIDR, the argument named)
CIDR_FIELDS: list[tuple[str, Request, str]] = [
    ("create-private-network", lambda w, v: ("POST", f"{V}/private-networks", {
        "project_id": w.project, "subnets": [v]}), "subnets"),
    ("add-subnets", lambda w, v: ("POST", f"{V}/private-networks/{w.pn}/subnets", {
        "subnets": ["10.62.0.0/24", v]}), "subnets"),
    ("delete-subnets", lambda w, v: ("DELETE", f"{V}/private-networks/{w.pn}/subnets", {
        "subnets": [v]}), "subnets"),
    # allowed private, so that the form alone is judged
    ("create-zonal-pool", lambda w, v: ("POST", POOLS, {
        "zone": "fr-par-1", "subnet": v, "allow_private": True}), "subnet"),
]


@pytest.mark.parametrize(("value", "message"), [(v, m) for _, v, m in BAD_CIDRS],
                         ids=[i for i, _, _ in BAD_CIDRS])
@pytest.mark.parametrize(("request_of", "argument"), [(r, a) for _, r, a in CIDR_FIELDS],
                         ids=[i for i, _, _ in CIDR_FIELDS])
def test_a_cidr_not_in_its_canonical_form_is_refused(
        world: World, request_of: Request, argument: str, value: str, message: str) -> None:
    method, path, body = request_of(world, value)
    assert world.refused(method, path, body, argument, "format") == message


@pytest.mark.parametrize(("request_of", "argument", "cidr"), [
    (CIDR_FIELDS[0][1], "subnets", "10.63.0.1/24"),
    (CIDR_FIELDS[1][1], "subnets", "10.63.0.1/24"),
    (CIDR_FIELDS[3][1], "subnet", "51.15.63.1/24"),
], ids=["create-private-network", "add-subnets", "create-zonal-pool"])
def test_a_cidr_with_host_bits_set_is_refused(world: World, request_of: Request,
                                               argument: str, cidr: str) -> None:
    """The allocator's rule, already made: the network address is the CIDR's."""
    method, path, body = request_of(world, cidr)
    assert world.refused(method, path, body, argument, "constraint") == (
        f"{cidr} has host bits set (did you mean {ipaddress.ip_network(cidr, strict=False)}?)")


def test_canonical_cidrs_pass_and_any_rfc_4291_form_of_ipv6(world: World) -> None:
    made = world("POST", f"{V}/private-networks", {
        "project_id": world.project, "vpc_id": world.vpc,
        "subnets": ["10.64.0.0/24", "FD00:0064:0000::/64"]})
    assert made.status_code == 200, made.text
    assert sorted(s["subnet"] for s in made.json()["subnets"]) == ["10.64.0.0/24",
                                                                   "fd00:64::/64"]
    pn = made.json()["id"]
    added = world("POST", f"{V}/private-networks/{pn}/subnets", {"subnets": ["10.65.0.0/24"]})
    assert (added.status_code, added.json()) == (200, {"subnets": ["10.65.0.0/24"]})
    deleted = world("DELETE", f"{V}/private-networks/{pn}/subnets",
                    {"subnets": ["10.65.0.0/24"]})
    assert (deleted.status_code, deleted.json()) == (200, {"subnets": ["10.65.0.0/24"]})
    booked = world("POST", f"{R}/ips", {"project_id": world.project,
                                        "source": {"private_network_id": pn},
                                        "address": "10.64.0.10"})
    assert booked.status_code == 200, booked.text
    assert booked.json()["address"] == "10.64.0.10/24"


# (id, address, help message)
BAD_ADDRESSES: list[tuple[str, str, str]] = [
    ("trailing-space", "10.60.0.20 ", "'10.60.0.20 ' must hold no whitespace"),
    ("trailing-newline", "10.60.0.20\n", "'10.60.0.20\\n' must hold no whitespace"),
    ("octet-leading-zero", "10.60.0.020", f"'10.60.0.020' {NOT_AN_ADDRESS}"),
    ("short-form", "10.60.20", f"'10.60.20' {NOT_AN_ADDRESS}"),
    ("hexadecimal-octet", "0xa.60.0.20", f"'0xa.60.0.20' {NOT_AN_ADDRESS}"),
    ("fullwidth-digits", "\uff11\uff10.60.0.20", f"'\\uff11\\uff10.60.0.20' {NOT_AN_ADDRESS}"),
    ("with-a-prefix", "10.60.0.20/22", f"'10.60.0.20/22' {NOT_AN_ADDRESS}"),
    ("v6-zone-index", "fd00:60::20%eth0", "'fd00:60::20%eth0' must carry no zone index (%...)"),
]

ADDRESS_FIELDS: list[tuple[str, Request, str]] = [
    ("book", lambda w, v: ("POST", f"{R}/ips", {
        "project_id": w.project, "source": {"private_network_id": w.pn}, "address": v}),
     "address"),
    ("reverse", lambda w, v: ("PATCH", f"{R}/ips/{w.ip}", {
        "reverses": [{"hostname": "host.example.com", "address": v}]}), "reverses.address"),
]


@pytest.mark.parametrize(("value", "message"), [(v, m) for _, v, m in BAD_ADDRESSES],
                         ids=[i for i, _, _ in BAD_ADDRESSES])
@pytest.mark.parametrize(("request_of", "argument"), [(r, a) for _, r, a in ADDRESS_FIELDS],
                         ids=[i for i, _, _ in ADDRESS_FIELDS])
def test_an_address_not_in_its_canonical_form_is_refused(
        world: World, request_of: Request, argument: str, value: str, message: str) -> None:
    method, path, body = request_of(world, value)
    assert world.refused(method, path, body, argument, "format") == message


# -- zonal pools ------------------------------------------------------------------------

# (CIDR, the range it lies in and what that range is): refused even for a lab
NEVER_PUBLIC = [
    ("224.0.0.0/24", "224.0.0.0/4: multicast"),
    ("239.255.0.0/16", "224.0.0.0/4: multicast"),
    ("127.0.0.0/24", "127.0.0.0/8: loopback"),
    ("169.254.1.0/24", "169.254.0.0/16: link-local"),
    ("0.0.0.0/24", "0.0.0.0/8: unspecified (this network)"),
    ("240.0.0.0/24", "240.0.0.0/4: reserved (and the broadcast address)"),
    ("255.255.255.0/24", "240.0.0.0/4: reserved (and the broadcast address)"),
    ("192.0.0.0/24", "192.0.0.0/24: reserved for IETF protocols"),
    ("ff02::/64", "ff00::/8: multicast"),
    ("fe80::/64", "fe80::/10: link-local"),
    ("::ffff:0:0/112", "::ffff:0:0/96: IPv4-mapped"),
    ("2001::/48", "2001::/23: reserved for IETF protocols"),
]


@pytest.mark.parametrize("allow_private", [None, False, True])
@pytest.mark.parametrize(("cidr", "within"), NEVER_PUBLIC, ids=[c for c, _ in NEVER_PUBLIC])
def test_a_zonal_pool_is_never_multicast_loopback_link_local_or_reserved(
        world: World, cidr: str, within: str, allow_private: bool | None) -> None:
    body = {"zone": "fr-par-1", "subnet": cidr, "allow_private": allow_private}
    assert world.refused("POST", POOLS, body, "subnet", "constraint") == (
        f"{cidr} lies in {within}; {PUBLIC}")


@pytest.mark.parametrize("cidr", ["::/64", "4000::/48", "fec0::/48"])
def test_a_zonal_ipv6_pool_lies_in_the_global_unicast_range(world: World, cidr: str) -> None:
    message = world.refused("POST", POOLS, {"zone": "fr-par-1", "subnet": cidr,
                                            "allow_private": True}, "subnet", "constraint")
    assert message == ({"::/64": f"::/64 overlaps ::/128: unspecified; {PUBLIC}"}.get(cidr)
                       or f"{cidr} lies outside 2000::/3, the global unicast range; {PUBLIC}")


# (CIDR, the range it lies in and what that range is): a lab's, with allow_private
PRIVATE_USE = [
    ("10.66.0.0/24", "10.0.0.0/8: private (RFC 1918)"),
    ("172.16.66.0/24", "172.16.0.0/12: private (RFC 1918)"),
    ("192.168.66.0/24", "192.168.0.0/16: private (RFC 1918)"),
    ("100.64.66.0/24", "100.64.0.0/10: shared address space (carrier-grade NAT, RFC 6598)"),
    ("192.0.2.0/24", "192.0.2.0/24: documentation (RFC 5737)"),
    ("198.51.100.0/24", "198.51.100.0/24: documentation (RFC 5737)"),
    ("203.0.113.0/24", "203.0.113.0/24: documentation (RFC 5737)"),
    ("198.18.66.0/24", "198.18.0.0/15: benchmarking (RFC 2544)"),
    ("fd00:66::/64", "fc00::/7: unique local (RFC 4193)"),
    ("2001:db8:66::/64", "2001:db8::/32: documentation (RFC 3849)"),
    ("3fff:66::/48", "3fff::/20: documentation (RFC 9637)"),
]


@pytest.mark.parametrize(("cidr", "within"), PRIVATE_USE, ids=[c for c, _ in PRIVATE_USE])
def test_a_private_zonal_pool_needs_allow_private(world: World, cidr: str,
                                                  within: str) -> None:
    for unset in ({}, {"allow_private": None}, {"allow_private": False}):
        body = {"zone": "fr-par-1", "subnet": cidr, **unset}
        assert world.refused("POST", POOLS, body, "subnet", "constraint") == (
            f"{cidr} lies in {within}; {PUBLIC} (allow_private: true for a lab)")
    made = world("POST", POOLS, {"zone": "fr-par-1", "subnet": cidr, "allow_private": True})
    assert made.status_code == 200, made.text
    assert made.json()["subnet"] == cidr


def test_a_pool_overlapping_a_private_range_is_named_so(world: World) -> None:
    assert world.refused("POST", POOLS, {"zone": "fr-par-2", "subnet": "198.51.0.0/16"},
                         "subnet", "constraint") == (
        f"198.51.0.0/16 overlaps 198.51.100.0/24: documentation (RFC 5737); {PUBLIC} "
        "(allow_private: true for a lab)")


@pytest.mark.parametrize("cidr", ["51.15.66.0/24", "2a01:4f8:66::/64", "2A01:04F8:67::/64"])
def test_a_global_unicast_zonal_pool_needs_no_flag(world: World, cidr: str) -> None:
    made = world("POST", POOLS, {"zone": "fr-par-2", "subnet": cidr})
    assert made.status_code == 200, made.text
    assert made.json()["subnet"] == str(ipaddress.ip_network(cidr))


def test_allow_private_is_a_json_boolean(world: World) -> None:
    assert world.refused("POST", POOLS, {"zone": "fr-par-1", "subnet": "10.67.0.0/24",
                                         "allow_private": "true"},
                         "allow_private", "format") == "Input should be a valid boolean"


def test_the_document_describes_allow_private(world: World) -> None:
    doc = world("GET", "/openapi.json").json()
    prop = doc["components"]["schemas"]["CreateZonalPoolRequest"]["properties"][
        "allow_private"]
    assert "for a lab" in prop["description"]
    assert "Multicast, loopback, link-local, unspecified" in prop["description"]


def test_pools_add_allow_private_creates_a_lab_pool(
        world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    for name in [k for k in os.environ if k.startswith("IPAM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))  # no config file of the tester's
    common = ["--url", world.node.url, "--secret-key", ADMIN_SECRET, "--zone", "fr-par-3",
              "--subnet", "10.68.0.0/24"]
    assert main(["pools", "add", *common]) == 1
    assert capsys.readouterr() == ("", (
        "error 400 invalid_arguments: invalid argument(s)\n  subnet: 10.68.0.0/24 lies in "
        f"10.0.0.0/8: private (RFC 1918); {PUBLIC} (allow_private: true for a lab) "
        "(constraint)\n"))
    assert main(["pools", "add", *common, "--allow-private"]) == 0
    assert "10.68.0.0/24" in capsys.readouterr().out
