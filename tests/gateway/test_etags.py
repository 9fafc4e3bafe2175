"""ETag and If-Match on IPs, over HTTP against a real node: the version of an IP is the etcd
mod revision of its record, and a change that names a stale one changes nothing."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from allocator_support import revision
from gateway_fixtures import ApiKeys, GatewayNode, gateway  # noqa: F401

IPS = "/ipam/v1/regions/fr-par/ips"
PNS = "/vpc/v2/regions/fr-par/private-networks"
MAC = "02:00:00:00:e7:01"


class Member:
    """A project member's requests to one node."""

    def __init__(self, node: GatewayNode, keys: ApiKeys) -> None:
        self.node, self.project = node, str(uuid.uuid4())
        _, self.secret = keys.create("project_member", [self.project])

    def __call__(self, method: str, path: str, body: Any = None,
                 **headers: str) -> requests.Response:
        return requests.request(method, self.node.url + path, json=body, timeout=30,
                                headers={"X-Auth-Token": self.secret,
                                         **{k.replace("_", "-"): v for k, v in headers.items()}})

    def revision(self) -> int:
        return int(self.node.call(revision(self.node.ipam)))


@pytest.fixture
def user(gateway: GatewayNode) -> Member:  # noqa: F811
    return Member(gateway, ApiKeys(gateway.url))


def booked(user: Member) -> requests.Response:
    pn = user("POST", PNS, {"name": "etags", "project_id": user.project,
                            "subnets": ["10.77.0.0/24"]})
    assert pn.status_code == 200, pn.text
    ip = user("POST", IPS, {"source": {"private_network_id": pn.json()["id"]},
                            "project_id": user.project})
    assert ip.status_code == 200, ip.text
    return ip


def test_every_answer_of_one_ip_carries_its_version_and_a_change_moves_it(user: Member):
    ip = booked(user)
    url, tag = f"{IPS}/{ip.json()['id']}", ip.headers["ETag"]
    assert tag.startswith('"') and tag.endswith('"') and int(tag[1:-1]) > 0
    assert user("GET", url).headers["ETag"] == tag
    unchanged = user("GET", url, If_None_Match=tag)
    assert (unchanged.status_code, unchanged.content, unchanged.headers["ETag"]) == (304, b"", tag)
    assert user("GET", url, If_None_Match='"1", ' + tag).status_code == 304
    assert user("GET", url, If_None_Match='"1"').status_code == 200

    tagged = user("PATCH", url, {"tags": ["a"]}, If_Match=tag)
    assert tagged.status_code == 200, tagged.text
    assert tagged.headers["ETag"] != tag and user("GET", url).headers["ETag"] == tagged.headers[
        "ETag"]
    assert "ETag" not in user("GET", IPS).headers  # a list shows many versions: none of them


def test_a_change_naming_a_stale_version_is_412_and_writes_nothing(user: Member):
    ip = booked(user)
    url, stale = f"{IPS}/{ip.json()['id']}", ip.headers["ETag"]
    current = user("PATCH", url, {"tags": ["newer"]}).headers["ETag"]
    resource = {"resource": {"mac_address": MAC, "name": "vm"}}
    before = user.revision()
    for method, path, body in (("PATCH", url, {"tags": ["older"]}),
                               ("POST", url + "/attach", resource),
                               ("DELETE", url, None)):
        refused = user(method, path, body, If_Match=stale)
        assert refused.status_code == 412, (method, path, refused.text)
        assert refused.json()["type"] == "precondition_failed"
        assert refused.json()["precondition"] == "if_match"
    assert user.revision() == before
    assert user("GET", url).json()["tags"] == ["newer"]

    # The current version, one of several named, or `*`: the change applies.
    attached = user("POST", url + "/attach", resource, If_Match=f'"1", {current}')
    assert attached.status_code == 200, attached.text
    detached = user("POST", url + "/detach", resource, If_Match=attached.headers["ETag"])
    assert detached.status_code == 200, detached.text
    assert user("DELETE", url, If_Match="*").status_code == 204


def test_an_old_detach_replayed_after_a_newer_attach_is_fenced_off(user: Member):
    """The fencing token: a product detaches, someone attaches anew, and the first
    product's retried detach (naming the version it saw) must not undo the new attach."""
    ip = booked(user)
    url = f"{IPS}/{ip.json()['id']}"
    resource = {"resource": {"mac_address": MAC, "name": "first"}}
    seen = user("POST", url + "/attach", resource).headers["ETag"]
    assert user("POST", url + "/detach", resource, If_Match=seen).status_code == 200
    assert user("POST", url + "/attach", resource).status_code == 200  # a newer owner
    replay = user("POST", url + "/detach", resource, If_Match=seen)
    assert replay.status_code == 412
    assert user("GET", url).json()["resource"]["name"] == "first"  # still attached


def test_move_is_conditional_too(user: Member):
    ip = booked(user)
    url = f"{IPS}/{ip.json()['id']}"
    first = {"mac_address": MAC, "name": "a"}
    tag = user("POST", url + "/attach", {"resource": first}).headers["ETag"]
    move = {"from_resource": first, "to_resource": {"mac_address": "02:00:00:00:e7:02"}}
    assert user("POST", url + "/move", move, If_Match='"1"').status_code == 412
    moved = user("POST", url + "/move", move, If_Match=tag)
    assert moved.status_code == 200, moved.text
    assert moved.json()["resource"]["mac_address"] == "02:00:00:00:e7:02"


@pytest.mark.parametrize("header", ["4711", '"4711', "W/", '"a" "b"', '"a",,"b"'])
def test_an_if_match_that_is_no_list_of_entity_tags_is_400(user: Member, header: str):
    ip = booked(user)
    url = f"{IPS}/{ip.json()['id']}"
    before = user.revision()
    refused = user("PATCH", url, {"tags": ["x"]}, If_Match=header)
    assert refused.status_code == 400, refused.text
    assert refused.json()["type"] == "invalid_arguments"
    assert refused.json()["details"][0]["argument_name"] == "If-Match"
    assert user.revision() == before


def test_weak_or_foreign_tags_never_match(user: Member):
    ip = booked(user)
    url, tag = f"{IPS}/{ip.json()['id']}", ip.headers["ETag"]
    for header in ("W/" + tag, '"not-ours"', '"' + "9" * 5000 + '"', '"1' + "0" * 19 + '"'):
        assert user("PATCH", url, {"tags": ["x"]}, If_Match=header).status_code == 412


def test_of_concurrent_changes_naming_one_version_exactly_one_applies(user: Member):
    ip = booked(user)
    url, tag = f"{IPS}/{ip.json()['id']}", ip.headers["ETag"]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: user("PATCH", url, {"tags": [f"t{i}"]}, If_Match=tag),
                                range(16)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] + [412] * 15
    winner = next(a for a in answers if a.status_code == 200)
    assert user("GET", url).json()["tags"] == winner.json()["tags"]


VPCS = "/vpc/v2/regions/fr-par/vpcs"


def test_a_private_network_and_a_vpc_carry_their_version_too(user: Member):
    pn = user("POST", PNS, {"name": "versions", "project_id": user.project,
                            "subnets": ["10.78.0.0/24"]})
    url, tag = f"{PNS}/{pn.json()['id']}", pn.headers["ETag"]
    assert user("GET", url).headers["ETag"] == tag
    assert user("GET", url, If_None_Match=tag).status_code == 304
    renamed = user("PATCH", url, {"name": "renamed"})
    assert renamed.headers["ETag"] not in (None, tag)
    added = user("POST", url + "/subnets", {"subnets": ["10.79.0.0/24"]})
    assert added.status_code == 200, added.text
    assert user("GET", url).headers["ETag"] not in (tag, renamed.headers["ETag"])
    assert user("GET", url, If_None_Match=tag).status_code == 200

    vpc_url = f"{VPCS}/{pn.json()['vpc_id']}"
    vpc_tag = user("GET", vpc_url).headers["ETag"]
    assert user("GET", vpc_url, If_None_Match=vpc_tag).status_code == 304
    # A second Private Network changes what the VPC shows (its count), not its record.
    assert user("POST", PNS, {"name": "second", "project_id": user.project,
                              "vpc_id": pn.json()["vpc_id"],
                              "subnets": ["10.80.0.0/24"]}).status_code == 200
    again = user("GET", vpc_url, If_None_Match=vpc_tag)
    assert again.status_code == 200 and again.json()["private_network_count"] == 2
    assert again.headers["ETag"] != vpc_tag
