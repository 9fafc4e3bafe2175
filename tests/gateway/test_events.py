"""The IP event feed over HTTP (our extension, `GET .../events`) and `ipam ips history`:
events in commit order with their actor, tenancy, long polls, cursor errors in
Scaleway's format; every answer checked against the OpenAPI document by the fixture."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from gateway_fixtures import (  # noqa: F401
    ADMIN_SECRET,
    ApiKeys,
    GatewayNode,
    admin_access_key,
    gateway,
)

from gateway.cli import main

BASE = "/ipam/v1/regions/fr-par"
PNS = "/vpc/v2/regions/fr-par/private-networks"
MAC = "02:00:00:00:e7:01"


class Client:
    """Requests to one node with one key."""

    def __init__(self, node: GatewayNode, secret: str = ADMIN_SECRET) -> None:
        self.node, self.secret = node, secret

    def __call__(self, method: str, path: str, body: Any = None, **params: Any
                 ) -> requests.Response:
        return requests.request(method, self.node.url + path, json=body, params=params,
                                timeout=90, headers={"X-Auth-Token": self.secret})

    def ok(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        resp = self(method, path, body, **params)
        assert resp.status_code in (200, 204), resp.text
        return resp.json() if resp.content else None

    def events(self, after: str = "0", **params: Any) -> tuple[list[dict[str, Any]], str]:
        """Every event after `after`, page by page, and the last cursor."""
        out: list[dict[str, Any]] = []
        while True:
            page = self.ok("GET", BASE + "/events", after=after, **params)
            out += page["events"]
            after = page["cursor"]
            if not page["events"]:
                return out, after


def new_pn(admin: Client, project: str, cidr: str) -> str:
    pn = admin.ok("POST", PNS, {"name": "feed", "project_id": project, "subnets": [cidr]})
    return str(pn["id"])


def book(client: Client, project: str, pn: str) -> dict[str, Any]:
    ip: dict[str, Any] = client.ok("POST", BASE + "/ips", {
        "source": {"private_network_id": pn}, "project_id": project})
    return ip


@pytest.fixture
def admin(gateway: GatewayNode) -> Client:  # noqa: F811
    return Client(gateway)


def test_the_feed_answers_each_change_in_commit_order_with_its_actor(admin: Client):
    project = str(uuid.uuid4())
    pn = new_pn(admin, project, "10.95.0.0/24")
    _, cursor = admin.events()
    ip = book(admin, project, pn)
    custom = {"type": "custom", "mac_address": MAC, "name": "vm"}
    admin.ok("POST", f"{BASE}/ips/{ip['id']}/attach", {"resource": custom})
    admin.ok("POST", f"{BASE}/ips/{ip['id']}/detach", {"resource": custom})
    admin.ok("PATCH", f"{BASE}/ips/{ip['id']}", {"tags": ["t"]})
    admin.ok("DELETE", f"{BASE}/ips/{ip['id']}")
    events, after = admin.events(cursor)
    assert [e["kind"] for e in events] == ["booked", "attached", "detached", "updated",
                                           "released"]
    assert {(e["ip_id"], e["address"], e["project_id"], e["private_network_id"])
            for e in events} == {(ip["id"], ip["address"], project, pn)}
    assert {e["actor"] for e in events} == {admin_access_key()}
    assert events[1]["resource"]["mac_address"] == MAC
    assert events[3]["tags"] == ["t"]
    cursors = [int(e["cursor"].split("-")[0]) for e in events]
    assert cursors == sorted(set(cursors))  # one commit each, in order
    assert int(after.split("-")[0]) >= cursors[-1]


def test_a_project_key_reads_its_own_projects_events_only(gateway: GatewayNode,  # noqa: F811
                                                          admin: Client):
    mine, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    keys = ApiKeys(gateway.url)
    access, secret = keys.create("project_member", [mine])
    me = Client(gateway, secret)
    pn_mine, pn_theirs = new_pn(admin, mine, "10.95.1.0/24"), new_pn(admin, theirs,
                                                                      "10.95.2.0/24")
    ip = book(me, mine, pn_mine)
    book(admin, theirs, pn_theirs)
    seen, _ = me.events()
    assert [(e["kind"], e["ip_id"], e["actor"]) for e in seen] == [("booked", ip["id"],
                                                                    access)]
    asked, _ = me.events(project_id=theirs)
    assert asked == []
    by_pn, _ = admin.events(private_network_id=pn_theirs)
    assert [e["project_id"] for e in by_pn] == [theirs]


def test_a_long_poll_answers_when_an_event_commits(admin: Client):
    project = str(uuid.uuid4())
    pn = new_pn(admin, project, "10.95.3.0/24")
    _, cursor = admin.events()
    answers: list[requests.Response] = []
    poll = threading.Thread(target=lambda: answers.append(
        admin("GET", BASE + "/events", after=cursor, wait="60s")))
    poll.start()
    ip = book(admin, project, pn)
    poll.join(80)  # the poll's own bound is 60 s: it returned for the booking
    assert not poll.is_alive()
    assert answers[0].status_code == 200, answers[0].text
    assert [(e["kind"], e["ip_id"]) for e in answers[0].json()["events"]] == [
        ("booked", ip["id"])]


def test_a_long_poll_with_nothing_new_times_out_empty(admin: Client):
    _, cursor = admin.events()
    answer = admin.ok("GET", BASE + "/events", after=cursor, wait="0.2")
    assert answer["events"] == []


@pytest.mark.parametrize("params,argument", [
    ({"after": "yesterday"}, "after"), ({"wait": "forever"}, "wait"),
    ({"page_size": "0"}, "page_size"), ({"wait": "99s"}, "wait"),
    ({"ip_id": "not-a-uuid"}, "ip_id")])
def test_a_bad_parameter_is_an_invalid_argument(admin: Client, params: dict[str, str],
                                                argument: str):
    resp = admin("GET", BASE + "/events", **params)
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert body["type"] == "invalid_arguments"
    assert [d["argument_name"] for d in body["details"]] == [argument]


def test_a_cursor_older_than_the_retention_is_412_cursor_expired(admin: Client):
    resp = admin("GET", BASE + "/events", after="12-1000000000")
    assert resp.status_code == 412, resp.text
    body = resp.json()
    assert (body["type"], body["precondition"]) == ("precondition_failed", "cursor_expired")


def test_a_cursor_the_feed_could_not_have_answered_is_400_and_skips_nothing(admin: Client):
    project = str(uuid.uuid4())
    pn = new_pn(admin, project, "10.95.5.0/24")
    _, before = admin.events(project_id=project)
    ip = book(admin, project, pn)
    _, head_cursor = admin.events(before, project_id=project)
    head, now = int(head_cursor.split("-")[0]), int(time.time())
    for forged in (f"1-{now + 600}", f"{head + 1000}-{now}", f"{head + 1000}-1",
                   "9999999999999999999-1"):
        resp = admin("GET", BASE + "/events", after=forged, project_id=project)
        assert resp.status_code == 400, (forged, resp.text)
        body = resp.json()
        assert body["type"] == "invalid_arguments"
        assert [d["argument_name"] for d in body["details"]] == ["after"]
    events, _ = admin.events(before, project_id=project)
    assert [(e["kind"], e["ip_id"]) for e in events] == [("booked", ip["id"])]


def test_ipam_ips_history_shows_one_ip_s_life(admin: Client, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]):
    for name in [k for k in os.environ if k.startswith(("IPAM_", "SCW_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    project = str(uuid.uuid4())
    pn = new_pn(admin, project, "10.95.4.0/24")
    ip = book(admin, project, pn)
    book(admin, project, pn)  # another IP: not in this one's history
    custom = {"type": "custom", "mac_address": MAC, "name": "vm"}
    admin.ok("POST", f"{BASE}/ips/{ip['id']}/attach", {"resource": custom})

    def ipam(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([*args, "--url", admin.node.url, "--secret-key", ADMIN_SECRET])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = ipam("ips", "history", ip["id"])
    assert (code, err) == (0, "")
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["AT", "KIND", "ADDRESS", "RESOURCE_TYPE", "RESOURCE_NAME", "MAC",
                       "ACTOR"]
    assert [r[1:] for r in rows[1:]] == [
        ["booked", ip["address"], "-", "-", "-", admin_access_key()],
        ["attached", ip["address"], "custom", "vm", MAC, admin_access_key()]]
    code, out, _ = ipam("ips", "history", ip["id"], "-o", "json")
    assert code == 0 and [e["kind"] for e in json.loads(out)] == ["booked", "attached"]
    code, _, err = ipam("ips", "history", "nope")
    assert code == 2 and "nope" in err
