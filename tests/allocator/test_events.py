"""The IP event feed against real etcd: one event per committed change, in the change's
own commit and none for a refused one; a replay from "0" rebuilds every IP exactly;
tenancy; long polls; cursors that expired; pages that never split a commit."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from allocator_support import REGION, book_in, connected, make_pn, new_project, revision

from allocator import events as ev
from allocator.contract import IPAM, Caller, Event, IPFilter, IPRecord, Resource
from allocator.credentials import PROJECT_MEMBER, PROJECT_READER
from allocator.errors import InvalidArgument, PreconditionFailed
from allocator.events import SKEW, cursor_of, parse_cursor
from allocator.keys import Keys
from allocator.store import prefix_end

MAC = "02:00:00:00:ab:{:02x}"


def ahead(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


async def all_events(ipam: IPAM, after: str = "0", caller: Caller | None = None,
                     page_size: int = 1000, **filters: Any) -> tuple[list[Event], str]:
    """Every event after `after`, page by page, and the last cursor."""
    caller = caller or Caller()
    out: list[Event] = []
    cursor = after
    while True:
        page = await ipam.events(cursor, caller, page_size=page_size, **filters)
        out.extend(page.events)
        if not page.events:
            return out, page.cursor
        cursor = page.cursor


async def one_new_event(ipam: IPAM, cursor: str) -> tuple[Event, str]:
    events, cursor = await all_events(ipam, cursor)
    assert len(events) == 1, events
    return events[0], cursor


async def test_every_change_writes_exactly_one_event_in_its_own_commit(ipam: IPAM,
                                                                       project: str):
    pn = await make_pn(ipam, project, "10.91.0.0/24")
    _, cursor = await all_events(ipam)
    caller = Caller(access_key="SCWEVENTS0000000001")
    ip = await ipam.book(book_in(pn, project, tags=("a",)), caller)
    e, cursor = await one_new_event(ipam, cursor)
    assert (e.kind, e.ip_id, e.address, e.revision, e.actor) == (
        "booked", ip.id, ip.address, ip.revision, "SCWEVENTS0000000001")
    assert (e.project_id, e.private_network_id, e.source_id, e.resource) == (
        project, pn.id, ip.source_id, None)
    assert e.details == {"tags": ["a"]}

    updated = await ipam.update_ip(ip.id, tags=["b"], caller=caller)
    e, cursor = await one_new_event(ipam, cursor)
    assert (e.kind, e.revision, e.details["tags"]) == ("updated", updated.revision, ["b"])

    res = Resource.custom(MAC.format(1), "vm-1")
    attached = await ipam.attach(ip.id, res, caller)
    e, cursor = await one_new_event(ipam, cursor)
    assert (e.kind, e.revision) == ("attached", attached.revision)
    assert e.resource == {"type": "custom", "id": res.id, "mac_address": res.mac_address,
                          "name": "vm-1"}

    to = Resource.custom(MAC.format(2))
    moved = await ipam.move(ip.id, res, to, caller)
    e, cursor = await one_new_event(ipam, cursor)
    assert (e.kind, e.revision, e.resource["id"]) == ("moved", moved.revision, to.id)

    detached = await ipam.detach(ip.id, to, caller)
    e, cursor = await one_new_event(ipam, cursor)
    assert (e.kind, e.revision, e.resource) == ("detached", detached.revision, None)

    await ipam.release(ip.id)  # an allocator caller without an access key: "admin"
    e, cursor = await one_new_event(ipam, cursor)
    assert (e.kind, e.ip_id, e.actor, e.revision) == (
        "released", ip.id, "admin", await revision(ipam))


async def test_a_refused_change_writes_no_event(ipam: IPAM, project: str):
    pn = await make_pn(ipam, project, "10.91.1.0/24")
    res = Resource.custom(MAC.format(3))
    ip = await ipam.book(book_in(pn, project, resource=res))
    _, cursor = await all_events(ipam)
    before = await revision(ipam)
    with pytest.raises(PreconditionFailed):
        await ipam.release(ip.id)  # still attached
    with pytest.raises(PreconditionFailed):
        await ipam.update_ip(ip.id, tags=["x"], if_match=frozenset({ip.revision + 100}))
    same = await ipam.attach(ip.id, res)  # attached there already: nothing written
    assert same.revision == ip.revision
    assert await revision(ipam) == before
    events, _ = await all_events(ipam, cursor)
    assert events == []


async def test_a_release_set_writes_one_event_per_ip_in_one_commit(ipam: IPAM, project: str):
    pn = await make_pn(ipam, project, "10.91.2.0/24")
    ips = [await ipam.book(book_in(pn, project)) for _ in range(5)]
    _, cursor = await all_events(ipam)
    await ipam.release_set([ip.id for ip in ips])
    events, _ = await all_events(ipam, cursor)
    assert sorted(e.ip_id for e in events) == sorted(ip.id for ip in ips)
    assert {e.kind for e in events} == {"released"}
    assert {e.revision for e in events} == {await revision(ipam)}


async def test_the_expirer_s_release_is_an_expired_event_by_the_expirer(ipam: IPAM,
                                                                       project: str):
    pn = await make_pn(ipam, project, "10.91.3.0/24")
    ip = await ipam.book(book_in(pn, project, expires_at=ahead(3600)))
    _, cursor = await all_events(ipam)
    assert ip.expires_at is not None
    assert await ipam.lifecycle.expire(ip.id, ipam.keys.expiry(ip.expires_at, ip.id))
    e, _ = await one_new_event(ipam, cursor)
    assert (e.kind, e.ip_id, e.actor) == ("expired", ip.id, "expirer")


def fold(events: list[Event]) -> dict[str, dict[str, Any]]:
    """The IPs as the events tell them, by id."""
    ips: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.kind in ("released", "expired"):
            del ips[e.ip_id]
            continue
        ip = ips.setdefault(e.ip_id, {"reverses": [], "expires_at": None})
        ip.update(address=e.address, project_id=e.project_id, resource=e.resource,
                  private_network_id=e.private_network_id, source_id=e.source_id)
        if e.kind == "booked":
            ip.update(tags=e.details["tags"], expires_at=e.details.get("expires_at"))
        elif e.kind == "updated":
            ip.update(e.details)
        elif e.kind in ("attached", "moved"):
            ip["expires_at"] = None
    return ips


def as_folded(r: IPRecord) -> dict[str, Any]:
    res = r.resource
    return {"address": r.address, "project_id": r.project_id, "source_id": r.source_id,
            "private_network_id": r.private_network_id, "tags": list(r.tags),
            "reverses": [v.to_json() for v in r.reverses], "expires_at": r.expires_at,
            "resource": None if res is None else {"type": res.type, "id": res.id,
                                                  "mac_address": res.mac_address,
                                                  "name": res.name}}


async def churn(ipam: IPAM, pn_id: str, project: str, seed: int, steps: int) -> None:
    """Random lifecycle changes of IPs this worker booked (MACs of its own: no worker
    refuses another's change)."""
    rng = random.Random(seed)
    mine: list[IPRecord] = []
    for step in range(steps):
        choice = rng.random()
        if not mine or choice < 0.3:
            expires = ahead(3600) if rng.random() < 0.3 else None
            mine.append(await ipam.book(book_in_id(pn_id, project, expires_at=expires)))
            continue
        ip = rng.choice(mine)
        at = mine.index(ip)
        if ip.resource is None and choice < 0.5:
            res = Resource.custom(f"02:00:00:{seed:02x}:{step:02x}:00", f"n{step}")
            mine[at] = await ipam.attach(ip.id, res)
        elif ip.resource is not None and choice < 0.6:
            to = Resource.custom(f"02:00:00:{seed:02x}:{step:02x}:01")
            mine[at] = await ipam.move(ip.id, ip.resource, to)
        elif ip.resource is not None and choice < 0.75:
            mine[at] = await ipam.detach(ip.id, ip.resource)
        elif choice < 0.85:
            mine[at] = await ipam.update_ip(ip.id, tags=[f"t{step}"],
                                            reverses=[{"hostname": f"h{step}.example"}])
        elif ip.resource is None and ip.expires_at is not None:
            assert await ipam.lifecycle.expire(ip.id, ipam.keys.expiry(ip.expires_at, ip.id))
            mine.remove(ip)
        elif ip.resource is None:
            await ipam.release(ip.id)
            mine.remove(ip)


def book_in_id(pn_id: str, project: str, **kwargs: Any) -> Any:
    from allocator.contract import AddressAsk

    return AddressAsk(region=REGION, project_id=project, private_network_id=pn_id, **kwargs)


async def test_a_replay_from_zero_rebuilds_every_ip_exactly(etcd_cluster3, key_prefix: str):
    """Changes from two IPAM instances (each on another member first), concurrently;
    then the feed folded from "0" equals the full list of IPs."""
    project = new_project()
    eps = list(etcd_cluster3.endpoints)
    async with connected(eps, key_prefix) as a, connected(eps[1:] + eps[:1], key_prefix) as b:
        pn = await make_pn(a, project, "10.92.0.0/24")
        await asyncio.gather(*(churn(node, pn.id, project, seed, 30)
                               for seed, node in enumerate([a, b, a, b])))
        events, _ = await all_events(b, page_size=7)  # small pages: boundaries crossed
        revisions = [e.revision for e in events]
        assert revisions == sorted(revisions)
        listed, total = await a.list_ips(IPFilter(project_id=project), page_size=100)
        for page in range(2, -(-total // 100) + 1):
            listed += (await a.list_ips(IPFilter(project_id=project), page=page,
                                        page_size=100))[0]
        assert total == len(listed) > 0
        assert fold(events) == {r.id: as_folded(r) for r in listed}
        assert {e.kind for e in events} >= {"booked", "attached", "released"}


async def test_pages_end_at_commit_boundaries_and_add_up_to_the_whole_feed(ipam: IPAM,
                                                                          project: str):
    pn = await make_pn(ipam, project, "10.91.4.0/24")
    ips = await asyncio.gather(*(ipam.book(book_in(pn, project)) for _ in range(30)))
    await ipam.release_set([ip.id for ip in ips[:12]])  # twelve events in one commit
    whole, _ = await all_events(ipam)
    paged, _ = await all_events(ipam, page_size=5)
    assert [(e.revision, e.ip_id, e.kind) for e in paged] == [
        (e.revision, e.ip_id, e.kind) for e in whole]
    assert len(whole) == 42
    page = await ipam.events("0", page_size=1)
    last = page.events[-1].revision
    assert all(e.revision == last for e in page.events)
    assert page.cursor.startswith(f"{last}-")


async def test_another_project_s_key_sees_none_of_the_events(ipam: IPAM, project: str):
    pn = await make_pn(ipam, project, "10.91.5.0/24")
    other = new_project()
    await make_pn(ipam, other, "10.91.6.0/24")
    for _ in range(3):
        await ipam.book(book_in(pn, project))
    outsider = Caller(role=PROJECT_MEMBER, projects=frozenset({other}))
    seen, _ = await all_events(ipam, caller=outsider)
    assert [e for e in seen if e.project_id == project] == []
    asked, _ = await all_events(ipam, caller=outsider, project_id=project)
    assert asked == []
    reader = Caller(role=PROJECT_READER, projects=frozenset({project}))
    own, _ = await all_events(ipam, caller=reader)
    assert [e.kind for e in own] == ["booked"] * 3
    by_pn, _ = await all_events(ipam, private_network_id=pn.id)
    assert len(by_pn) == 3


async def test_a_long_poll_answers_as_soon_as_an_event_commits(ipam: IPAM, project: str):
    pn = await make_pn(ipam, project, "10.91.7.0/24")
    _, cursor = await all_events(ipam)
    poll = asyncio.ensure_future(ipam.events(cursor, wait=60))
    ip = await ipam.book(book_in(pn, project))
    page = await asyncio.wait_for(poll, 50)  # woken by the booking, not by its 60 s
    assert [(e.kind, e.ip_id) for e in page.events] == [("booked", ip.id)]


async def test_a_long_poll_ignores_other_projects_and_times_out_empty(ipam: IPAM,
                                                                      project: str):
    other = new_project()
    pn = await make_pn(ipam, other, "10.91.8.0/24")
    await make_pn(ipam, project, "10.91.9.0/24")
    _, cursor = await all_events(ipam, project_id=project)
    poll = asyncio.ensure_future(ipam.events(cursor, project_id=project, wait=0.5))
    await ipam.book(book_in(pn, other))
    page = await poll
    assert page.events == []
    rev, _ = parse_cursor(page.cursor, 24 * 3600)
    assert rev >= int(cursor.split("-")[0])


async def test_a_cursor_older_than_the_retention_is_refused(ipam: IPAM):
    old = cursor_of(5, time.time() - ipam.feed.retention - 1)
    with pytest.raises(PreconditionFailed) as refused:
        await ipam.events(old)
    assert refused.value.precondition == "cursor_expired"
    # Within the retention (less the clock margin): read as usual.
    page = await ipam.events(cursor_of(5, time.time() - ipam.feed.retention + SKEW + 60))
    assert page.events == []


# Cursors the feed could not have answered, made of the revision of a real cursor taken
# before a booking, the store's head after it and the clock.
FORGED: dict[str, Callable[[int, int, int], str]] = {
    "time_ahead_of_the_clock": lambda rev, head, now: f"{rev}-{now + SKEW + 60}",
    "revision_1_ten_minutes_ahead": lambda rev, head, now: f"1-{now + 600}",
    "time_of_the_far_future": lambda rev, head, now: f"{rev}-999999999999",
    "revision_beyond_the_head": lambda rev, head, now: f"{head + 1000}-{now}",
    "revision_beyond_the_head_time_expired": lambda rev, head, now: f"{head + 1000}-1",
    "revision_beyond_int64": lambda rev, head, now: "9999999999999999999-1",
    "revision_int64_max": lambda rev, head, now: f"{2**63 - 1}-{now}",
}


@pytest.mark.parametrize("forge", FORGED.values(), ids=FORGED.keys())
async def test_a_cursor_the_feed_could_not_have_answered_is_refused_and_skips_nothing(
        ipam: IPAM, project: str, forge: Callable[[int, int, int], str]):
    pn = await make_pn(ipam, project, "10.91.12.0/24")
    _, before = await all_events(ipam, project_id=project)
    ip = await ipam.book(book_in(pn, project))
    head = await revision(ipam)
    forged = forge(parse_cursor(before, ipam.feed.retention)[0], head, int(time.time()))
    for project_id in (None, project):  # every project's read, and one's
        with pytest.raises(InvalidArgument) as bad:
            await ipam.events(forged, project_id=project_id)
        assert bad.value.problems[0].argument_name == "after"
    assert await revision(ipam) == head
    events, _ = await all_events(ipam, before, project_id=project)
    assert [(e.kind, e.ip_id) for e in events] == [("booked", ip.id)]


async def test_cursors_the_feed_answers_still_read_on(ipam: IPAM, project: str):
    pn = await make_pn(ipam, project, "10.91.13.0/24")
    _, before = await all_events(ipam, project_id=project)
    ip = await ipam.book(book_in(pn, project))
    head = await revision(ipam)
    rev = parse_cursor(before, ipam.feed.retention)[0]
    # From another node whose clock is ahead of this one's, within SKEW: read as usual.
    ahead_cursor = cursor_of(rev, time.time() + SKEW - 60)
    for cursor in (before, ahead_cursor):
        page = await ipam.events(cursor, project_id=project)
        assert [(e.kind, e.ip_id) for e in page.events] == [("booked", ip.id)]
    at_head = await ipam.events(cursor_of(head, time.time()), project_id=project)
    assert at_head.events == [] and parse_cursor(at_head.cursor, 3600)[0] >= head
    from_zero, _ = await all_events(ipam, project_id=project)
    assert [(e.kind, e.ip_id) for e in from_zero] == [("booked", ip.id)]


async def test_a_cursor_from_a_node_whose_clock_is_ahead_misses_no_event(
        ipam: IPAM, project: str, monkeypatch: pytest.MonkeyPatch):
    """The cursor's time almost SKEW ahead of ours, the event's key a minute behind (its
    writer's clock late, or its time taken a minute before its commit): still read."""
    pn = await make_pn(ipam, project, "10.91.14.0/24")
    _, before = await all_events(ipam, project_id=project)
    cursor = cursor_of(parse_cursor(before, ipam.feed.retention)[0],
                       time.time() + SKEW - 5)

    def late_key(keys: Keys, project_id: str, ip_id: str) -> str:
        return keys.event(project_id, int(time.time()) - 60, ip_id, "0000000000")

    monkeypatch.setattr(ev, "event_key", late_key)
    ip = await ipam.book(book_in(pn, project))
    page = await ipam.events(cursor, project_id=project)
    assert [(e.kind, e.ip_id) for e in page.events] == [("booked", ip.id)]


@pytest.mark.parametrize("cursor", ["", "x", "-1", "12", "12-", "01-5", "3-4-5", None])
async def test_a_malformed_cursor_is_an_invalid_argument(ipam: IPAM, cursor: Any):
    with pytest.raises(InvalidArgument) as bad:
        await ipam.events(cursor)
    assert bad.value.problems[0].argument_name == "after"


@pytest.mark.parametrize("argument,value", [("page_size", 0), ("page_size", 1001),
                                            ("wait", -1), ("wait", 61)])
async def test_out_of_range_page_sizes_and_waits_are_invalid(ipam: IPAM, argument: str,
                                                             value: int):
    with pytest.raises(InvalidArgument) as bad:
        await ipam.events("0", **{argument: value})
    assert bad.value.problems[0].argument_name == argument


async def test_events_live_on_a_lease_and_a_node_without_a_feed_writes_none(
        etcd_single, key_prefix: str, project: str):
    async with connected(etcd_single.endpoints, key_prefix) as ipam:
        pn = await make_pn(ipam, project, "10.91.10.0/24")
        await ipam.book(book_in(pn, project))
        resp = await ipam.store.range(ipam.keys.events(), prefix_end(ipam.keys.events()))
        assert len(resp.kvs) == 1 and resp.kvs[0].lease != 0
    async with connected(etcd_single.endpoints, key_prefix, event_retention=0) as quiet:
        await quiet.book(book_in(pn, project))
        events, _ = await all_events(quiet)
        assert len(events) == 1  # the first node's only


async def test_history_of_one_ip(ipam: IPAM, project: str):
    pn = await make_pn(ipam, project, "10.91.11.0/24")
    ip = await ipam.book(book_in(pn, project))
    await ipam.book(book_in(pn, project))
    await ipam.update_ip(ip.id, tags=["z"])
    await ipam.release(ip.id)
    events, _ = await all_events(ipam, ip_id=ip.id)
    assert [e.kind for e in events] == ["booked", "updated", "released"]
