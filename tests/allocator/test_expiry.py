"""Expiring bookings against real etcd: the index follows every change in the same
transaction, one elected expirer releases what is due within a bounded lag, and an IP
attached before (or while) its expiry is released is never released."""

from __future__ import annotations

import asyncio
import io
import json
import random
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from allocator_support import book_in, clean_audit, connected, make_pn, revision

from allocator.contract import IPAM, UNCHANGED, Expirer, Resource
from allocator.errors import InvalidArgument, NotFound, PreconditionFailed, StoreError
from allocator.expiry import MAX_EXPIRY, check_expires_at
from allocator.keys import Keys
from allocator.txn import put

MAC = "02:00:00:00:ee:01"
LAG = 5.0  # seconds: the bound the issue asks for, from expires_at to the release


def ahead(seconds: float) -> str:
    """An RFC 3339 time `seconds` from now."""
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def epoch(expires_at: str) -> float:
    return datetime.fromisoformat(expires_at).timestamp()


async def until_time(moment: float) -> None:
    """Let the wall clock reach `moment` (the condition here is time itself)."""
    await asyncio.sleep(max(0.0, moment - time.time()))


async def index(ipam: IPAM) -> dict[str, int]:
    """The expiry index: IP id -> its time in microseconds."""
    kvs, _ = await ipam.store.scan(ipam.keys.expiry(), keys_only=True)
    entries = [ipam.keys.expiry_entry(kv.key) for kv in kvs]
    return {ip_id: micros for micros, ip_id in entries}


async def consistent(ipam: IPAM) -> None:
    """The audit's invariants, and the expiry index exactly the unattached records'
    expiries."""
    await clean_audit(ipam)
    kvs, _ = await ipam.store.scan(ipam.keys.ip())
    records = [json.loads(kv.value) for kv in kvs]
    expected = {ipam.keys.expiry(r["expires_at"], r["id"])
                for r in records if r.get("expires_at")}
    assert all(not r.get("resource") for r in records if r.get("expires_at"))
    held, _ = await ipam.store.scan(ipam.keys.expiry(), keys_only=True)
    assert {kv.key for kv in held} == expected


def expirer(ipam: IPAM, **options) -> Expirer:
    return ipam.expirer(**{"check_interval": 0.1, "lease_ttl": 2, **options})


# -- the value ------------------------------------------------------------------------------


def test_an_expiry_is_stored_in_utc_with_microseconds_whatever_its_offset():
    at = datetime(2030, 1, 1, tzinfo=UTC)
    assert check_expires_at("2030-01-01T14:30:00+02:00", at) == "2030-01-01T12:30:00.000000Z"
    assert check_expires_at("2030-01-01t12:30:00.5z", at) == "2030-01-01T12:30:00.500000Z"
    assert check_expires_at("2030-01-01T00:00:00.000001Z", at) == "2030-01-01T00:00:00.000001Z"


@pytest.mark.parametrize("value, reason", [
    ("tomorrow", "format"), ("2030-01-02T00:00:00", "format"), ("2030-01-02", "format"),
    ("2030-13-01T00:00:00Z", "format"), ("2030-01-02T00:00:00+0200", "format"),
    (1893456000, "format"), ("2029-12-31T23:59:59Z", "constraint"),
    ("2030-01-01T00:00:00Z", "constraint"), ("2031-01-01T00:00:01Z", "constraint")])
def test_an_expiry_must_be_an_rfc3339_time_in_the_future_and_at_most_a_year_ahead(
        value, reason):
    at = datetime(2030, 1, 1, tzinfo=UTC)
    with pytest.raises(InvalidArgument) as refused:
        check_expires_at(value, at)
    assert [(p.argument_name, p.reason) for p in refused.value.problems] == [
        ("expires_at", reason)]
    assert check_expires_at("2031-01-01T00:00:00Z", at)  # exactly MAX_EXPIRY: accepted
    assert MAX_EXPIRY == timedelta(days=365)


def test_expiry_keys_sort_in_time_order_and_the_due_range_ends_after_now():
    keys = Keys("/p/")
    times = ["2030-01-01T00:00:00.000001Z", "2030-01-01T00:00:00.000002Z",
             "2030-01-01T00:00:01.000000Z", "2031-06-01T00:00:00.000000Z"]
    built = [keys.expiry(t, str(uuid.uuid4())) for t in reversed(times)]
    assert sorted(built) == list(reversed(built))
    assert keys.expiry(times[1], "x") < keys.expiry_end(times[1]) < keys.expiry(times[2], "")
    assert keys.expiry_entry(keys.expiry(times[2], "ip")) == (
        int(epoch(times[2])) * 1_000_000, "ip")
    assert keys.kind(built[0])[0] == "expiry"


# -- the index follows every change ----------------------------------------------------------


async def test_a_booking_with_an_expiry_writes_its_index_key_and_one_without_writes_none(
        ipam, project):
    pn = await make_pn(ipam, project)
    plain = await ipam.book(book_in(pn, project))
    expiring = await ipam.book(book_in(pn, project, expires_at=ahead(3600)))
    assert plain.expires_at is None and "expires_at" not in plain.to_json()
    assert expiring.expires_at is not None and expiring.expires_at.endswith("Z")
    assert (await ipam.get_ip(expiring.id)).expires_at == expiring.expires_at
    assert set(await index(ipam)) == {expiring.id}
    await consistent(ipam)


async def test_update_sets_changes_and_clears_an_expiry_and_moves_its_index_key(ipam, project):
    pn = await make_pn(ipam, project)
    ip = await ipam.book(book_in(pn, project))
    first, later = check_expires_at(ahead(3600)), check_expires_at(ahead(7200))
    set_ = await ipam.update_ip(ip.id, expires_at=first)
    assert set_.expires_at == first and await index(ipam) == {ip.id: int(
        epoch(first) * 1_000_000)}
    tagged = await ipam.update_ip(ip.id, tags=["kept"])  # UNCHANGED: left as it is
    assert tagged.expires_at == first
    same = await ipam.update_ip(ip.id, expires_at=first)  # the same time keeps its key
    assert same.expires_at == first and set(await index(ipam)) == {ip.id}
    changed = await ipam.update_ip(ip.id, expires_at=later)
    assert changed.expires_at == later
    assert await index(ipam) == {ip.id: int(epoch(later) * 1_000_000)}
    await consistent(ipam)
    cleared = await ipam.update_ip(ip.id, expires_at=None)
    assert cleared.expires_at is None and await index(ipam) == {}
    assert (await ipam.update_ip(ip.id, expires_at=None)).expires_at is None
    assert (await ipam.update_ip(ip.id, expires_at=UNCHANGED)).expires_at is None
    await consistent(ipam)


async def test_every_refused_expiry_writes_nothing(ipam, project):
    pn = await make_pn(ipam, project)
    ip = await ipam.book(book_in(pn, project))
    attached = await ipam.book(book_in(pn, project, resource=Resource.custom(MAC)))
    before = await revision(ipam)
    for bad in (ahead(-1), ahead(MAX_EXPIRY.total_seconds() + 60), "soon"):
        with pytest.raises(InvalidArgument) as refused:
            await ipam.update_ip(ip.id, expires_at=bad)
        assert refused.value.problems[0].argument_name == "expires_at"
        with pytest.raises(InvalidArgument):
            await ipam.book(book_in(pn, project, expires_at=bad))
    with pytest.raises(InvalidArgument, match="a resource or an expiry, not both"):
        await ipam.book(book_in(pn, project, expires_at=ahead(60),
                                resource=Resource.custom("02:00:00:00:ee:02")))
    with pytest.raises(PreconditionFailed, match="detach it before giving it an expiry") as p:
        await ipam.update_ip(attached.id, expires_at=ahead(60))
    assert p.value.precondition == "resource_still_in_use"
    assert await revision(ipam) == before
    assert (await ipam.get_ip(attached.id)).expires_at is None


async def test_attaching_clears_the_expiry_and_detaching_does_not_bring_it_back(ipam, project):
    pn = await make_pn(ipam, project)
    ip = await ipam.book(book_in(pn, project, expires_at=ahead(3600)))
    res = Resource.custom(MAC)
    attached = await ipam.attach(ip.id, res)
    assert attached.expires_at is None and await index(ipam) == {}
    detached = await ipam.detach(ip.id, res)
    assert detached.expires_at is None and await index(ipam) == {}
    again = await ipam.update_ip(ip.id, expires_at=ahead(3600))  # detached: it may expire
    assert again.expires_at is not None and set(await index(ipam)) == {ip.id}
    moved = await ipam.attach(ip.id, res)
    assert moved.expires_at is None
    await consistent(ipam)


async def test_releasing_an_expiring_ip_alone_or_in_a_set_deletes_its_index_key(ipam, project):
    pn = await make_pn(ipam, project)
    one, two, three = [await ipam.book(book_in(pn, project, expires_at=ahead(3600),
                                                tags=["t"])) for _ in range(3)]
    await ipam.release(one.id)
    assert set(await index(ipam)) == {two.id, three.id}
    await ipam.release_set([two.id, three.id])
    assert await index(ipam) == {}
    await consistent(ipam)


async def test_a_retried_booking_gets_its_first_answer_after_its_expiry_passed(ipam, project):
    pn = await make_pn(ipam, project)
    expires_at = ahead(1)
    ask = book_in(pn, project, expires_at=expires_at, idempotency_key="expiring-1")
    first = await ipam.book(ask)
    await until_time(epoch(expires_at) + 0.05)
    with pytest.raises(InvalidArgument, match="future"):
        await ipam.book(book_in(pn, project, expires_at=expires_at))  # no key: refused
    assert await ipam.book(ask) == first  # the key: the first answer


# -- the expirer -----------------------------------------------------------------------------


async def test_an_expiring_ip_is_released_within_five_seconds_and_its_address_is_free_again(
        ipam, project):
    pn = await make_pn(ipam, project, "10.81.0.0/29")
    ip = await ipam.book(book_in(pn, project, expires_at=ahead(2)))
    assert ip.expires_at is not None
    e = ipam.expirer()  # the default check interval: the lag a deployment sees
    try:
        await e.start()
        assert e.leader and e.check_interval <= 1.0
        await e.until(lambda e: e.expired == 1, 2 + LAG + 5)
        lag = time.time() - epoch(ip.expires_at)
        assert 0 <= e.last_lag <= lag <= LAG, (e.last_lag, lag)
        with pytest.raises(NotFound):
            await ipam.get_ip(ip.id)
        assert (e.kept, e.errors) == (0, 0)
        assert await index(ipam) == {}
        address = ip.address.split("/")[0]
        again = await ipam.book(book_in(pn, project, address=address))
        assert again.address == ip.address
        freed = await ipam.store.get(ipam.keys.freed(ip.source_id))
        assert freed is not None and freed.value.decode() == ip.id
        await consistent(ipam)
    finally:
        await e.close()


async def test_an_ip_attached_before_its_expiry_is_never_released(ipam, project):
    pn = await make_pn(ipam, project)
    ip = await ipam.book(book_in(pn, project, expires_at=ahead(1)))
    other = await ipam.book(book_in(pn, project, expires_at=ahead(1)))
    attached = await ipam.attach(ip.id, Resource.custom(MAC))
    assert attached.expires_at is None
    e = expirer(ipam)
    try:
        await e.start()
        assert ip.expires_at is not None
        due = epoch(ip.expires_at) + 2 * e.check_interval
        # Past the expiry and two looks more: the unattached one went, the attached stays.
        await e.until(lambda e: time.time() > due and e.expired == 1, 10)
        kept = await ipam.get_ip(ip.id)
        assert kept.resource == Resource.custom(MAC) and kept.expires_at is None
        with pytest.raises(NotFound):
            await ipam.get_ip(other.id)
        assert (e.expired, e.errors) == (1, 0)
        await consistent(ipam)
    finally:
        await e.close()


async def test_a_due_ip_whose_attach_commits_first_is_left_attached(ipam, project):
    """The race decided by hand: the expirer read the due key, then an attach committed
    before its release. The release's guard fails, the record read again is attached,
    and the IP stays."""
    pn = await make_pn(ipam, project)
    ip = await ipam.book(book_in(pn, project, expires_at=ahead(3600)))
    assert ip.expires_at is not None
    stale_key = ipam.keys.expiry(ip.expires_at, ip.id)  # as the expirer read it
    await ipam.attach(ip.id, Resource.custom(MAC))
    assert await ipam.lifecycle.expire(ip.id, stale_key) is False
    assert (await ipam.get_ip(ip.id)).resource is not None
    await consistent(ipam)


async def test_index_keys_without_their_ip_or_not_its_expiry_are_dropped(ipam, project):
    pn = await make_pn(ipam, project)
    ip = await ipam.book(book_in(pn, project, expires_at=ahead(3600)))
    past = check_expires_at(ahead(0.5))
    orphan = ipam.keys.expiry(past, str(uuid.uuid4()))  # no such IP
    wrong = ipam.keys.expiry(past, ip.id)  # the IP expires later
    await ipam.store.txn([], [put(orphan, ""), put(wrong, "")])
    await until_time(epoch(past))
    e = expirer(ipam)
    try:
        await e.start()
        await e.until(lambda e: e.kept == 2, 5)
        assert (e.expired, e.errors) == (0, 0)
        assert set(await index(ipam)) == {ip.id}  # its own key stays
        assert (await ipam.get_ip(ip.id)).expires_at == ip.expires_at
        await consistent(ipam)
    finally:
        await e.close()


async def test_a_release_that_fails_is_counted_and_tried_again_at_the_next_look(
        ipam, project, monkeypatch):
    pn = await make_pn(ipam, project)
    ip = await ipam.book(book_in(pn, project, expires_at=ahead(1)))
    real = ipam.lifecycle.expire
    calls = 0

    async def expire_once_failing(ip_id: str, index_key: str) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StoreError("etcd unreachable")
        return await real(ip_id, index_key)

    monkeypatch.setattr(ipam.lifecycle, "expire", expire_once_failing)
    assert ip.expires_at is not None
    await until_time(epoch(ip.expires_at))
    e = expirer(ipam)
    try:
        await e.start()
        await e.until(lambda e: e.expired == 1, 5)
        assert e.errors == 1 and e.last_error == "StoreError: etcd unreachable"
        with pytest.raises(NotFound):
            await ipam.get_ip(ip.id)
    finally:
        await e.close()


async def test_more_due_ips_than_a_batch_are_released_in_consecutive_looks(ipam, project):
    pn = await make_pn(ipam, project)
    expires_at = ahead(1)
    ips = await asyncio.gather(*(ipam.book(book_in(pn, project, expires_at=expires_at))
                                 for _ in range(7)))
    await until_time(epoch(expires_at))
    # No tick within the test: only a full batch looks again at once.
    e = expirer(ipam, batch=3, check_interval=30.0, lease_ttl=60)
    try:
        await e.start()
        await e.until(lambda e: e.expired == 7, 10)
        assert e.looks == 3  # 3, 3, then 1 (fewer than a batch: wait for the next tick)
        for ip in ips:
            with pytest.raises(NotFound):
                await ipam.get_ip(ip.id)
    finally:
        await e.close()


async def test_the_expirer_key_is_no_data_a_backup_carries(ipam, project):
    pn = await make_pn(ipam, project)
    ip = await ipam.book(book_in(pn, project, expires_at=ahead(3600)))
    e = expirer(ipam)
    try:
        await e.start()
        assert e.leader and await ipam.store.get(ipam.keys.expirer()) is not None
        out = io.BytesIO()
        await ipam.export_state(out)
        keys = [json.loads(line).get("k") for line in out.getvalue().splitlines()]
        assert "expirer" not in keys
        assert ipam.keys.expiry(ip.expires_at or "", ip.id)[len(ipam.keys.prefix):] in keys
    finally:
        await e.close()


# -- one expirer per deployment, on a three-member cluster -----------------------------------


async def test_expiry_racing_attaches_on_three_members_never_releases_an_attached_ip(
        etcd_cluster3, key_prefix):
    """Many IPs expire at the same instant while attaches hit them, on two nodes each
    running an expirer: each IP ends attached (and present) or released (and absent)."""
    eps = list(etcd_cluster3.endpoints)
    project = str(uuid.uuid4())
    count = 60
    async with connected(eps, key_prefix) as one, \
            connected(eps[1:] + eps[:1], key_prefix) as two:
        pn = await make_pn(one, project, "10.82.0.0/24")
        expires_at = ahead(3.0)
        ips = await asyncio.gather(*(one.book(book_in(pn, project, expires_at=expires_at))
                                     for _ in range(count)))
        a, b = expirer(one), expirer(two)
        try:
            await a.start()
            await b.start()
            assert (a.leader, b.leader) == (True, False), (a.last_error, b.last_error)
            rng = random.Random(12)
            due = epoch(expires_at)

            async def attach(i: int) -> bool:
                # Spread around the expiry and the expirer's first look after it.
                await until_time(due + rng.uniform(-0.3, 1.5))
                node = one if i % 2 else two
                try:
                    await node.attach(ips[i].id, Resource.custom(f"02:00:00:00:{i // 256:02x}:"
                                                                 f"{i % 256:02x}"))
                except NotFound:
                    return False
                return True

            attached = await asyncio.gather(*(attach(i) for i in range(count)))
            await a.until(lambda _: a.expired + b.expired == attached.count(False), 10)
            for ip, won in zip(ips, attached, strict=True):
                if won:
                    record = await one.get_ip(ip.id)
                    assert record.resource is not None and record.expires_at is None
                else:
                    with pytest.raises(NotFound):
                        await one.get_ip(ip.id)
            assert b.expired == 0 and not b.leader
            assert 0 < attached.count(True) < count, attached  # both sides of the race
            assert a.errors == 0
            await consistent(one)
        finally:
            await a.close()
            await b.close()


async def test_when_the_leading_expirer_closes_another_takes_over_and_releases_what_is_due(
        etcd_cluster3, key_prefix):
    eps = list(etcd_cluster3.endpoints)
    project = str(uuid.uuid4())
    async with connected(eps, key_prefix) as one, \
            connected(eps[2:] + eps[:2], key_prefix) as two:
        pn = await make_pn(one, project)
        a, b = expirer(one, lease_ttl=3), expirer(two, lease_ttl=3)
        try:
            await a.start()
            await b.start()
            assert (a.leader, b.leader) == (True, False)
            first = await one.book(book_in(pn, project, expires_at=ahead(1)))
            await a.until(lambda e: e.expired == 1, 5)
            await a.close()
            assert not a.leader and await one.store.get(one.keys.expirer()) is None
            await b.until(lambda e: e.leader, b.lease_ttl)
            second = await two.book(book_in(pn, project, expires_at=ahead(1)))
            await b.until(lambda e: e.expired == 1, 5)
            for ip in (first, second):
                with pytest.raises(NotFound):
                    await two.get_ip(ip.id)
            assert (a.expired, b.elections) == (1, 1)
            held = await two.store.get(two.keys.expirer())
            assert held is not None and held.value.decode() == b.holder
        finally:
            await a.close()
            await b.close()
