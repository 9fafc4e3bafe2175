"""Idempotency entries hold only what a replay needs, and a replay is still the first
answer, byte for byte; entries of the format written before still replay; the retention
is the lease of every entry. Against real etcd."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from allocator_support import book_in, clean_audit, connected, make_pn

from allocator import idempotency as idem
from allocator.contract import IPAM, AddressAsk, IPFilter, IPRecord, Resource
from allocator.errors import Conflict, InvalidArgument
from allocator.store import prefix_end
from allocator.txn import GuardedTxn

SCOPE = "SCWTESTKEY"


@pytest.fixture
async def pn(ipam, project):
    return await make_pn(ipam, project, "10.9.0.0/24")


def vm(n: int, name: str | None = None) -> Resource:
    return Resource.custom(f"02:00:00:00:09:{n:02x}", name)


def answer(record: IPRecord) -> str:
    """An answer as the gateway serialises it (its ETag aside)."""
    return json.dumps(record.to_json(), sort_keys=True)


async def stored(ipam: IPAM, key: str) -> dict:
    kv = await ipam.store.get(ipam.keys.idempotency(SCOPE, key))
    assert kv is not None
    return json.loads(kv.value)


async def put_old_format(ipam: IPAM, key: str, fp: str, first: IPRecord) -> None:
    """An entry as the version before wrote it: the digest and the whole first record."""
    value = json.dumps({"fingerprint": fp, "result": first.to_json()})
    txn = GuardedTxn().put(ipam.keys.idempotency(SCOPE, key), value)
    assert (await ipam.store.txn(txn.compares(), txn.writes)).succeeded


async def lease_ttl(ipam: IPAM, lease: int) -> int:
    """The TTL etcd granted `lease`, through its JSON gateway (no client call for it)."""
    endpoint = ipam.store.endpoints[0]
    async with aiohttp.ClientSession() as http, http.post(
            f"http://{endpoint}/v3/lease/timetolive", json={"ID": str(lease)}) as resp:
        return int((await resp.json())["grantedTTL"])


async def test_a_booking_entry_holds_the_digest_and_the_ip_id_only(ipam, pn, project):
    ask = book_in(pn, project, idempotency_key="plain", idempotency_scope=SCOPE)
    first = await ipam.book(ask)
    fp = idem.fingerprint("book", ask.fingerprint_fields())
    digest = base64.urlsafe_b64encode(bytes.fromhex(fp)).rstrip(b"=").decode()
    assert await stored(ipam, "plain") == {"v": 2, "f": digest, "i": first.id}


async def test_a_replayed_booking_is_the_first_answer_after_later_changes(ipam, pn, project):
    ask = book_in(pn, project, tags=["a", "b"], resource=vm(1, "web"),
                  idempotency_key="attached", idempotency_scope=SCOPE)
    first = await ipam.book(ask)
    await ipam.update_ip(first.id, tags=["c"], reverses=[{"hostname": "web.example.com"}])
    await ipam.detach(first.id, vm(1, "web"))
    again = await ipam.book(ask)
    assert answer(again) == answer(first)
    assert (await ipam.get_ip(first.id)).tags == ("c",)  # the IP itself did change
    # An unattached booking with an expiry: its replay too, after the expiry is cleared.
    in_a_month = (datetime.now(UTC) + timedelta(days=30)).isoformat().replace("+00:00", "Z")
    expiring = book_in(pn, project, expires_at=in_a_month,
                       idempotency_key="expiring", idempotency_scope=SCOPE)
    first = await ipam.book(expiring)
    await ipam.update_ip(first.id, expires_at=None)
    assert answer(await ipam.book(expiring)) == answer(first)
    await clean_audit(ipam)


async def test_replayed_attach_detach_and_move_are_their_first_answers(ipam, pn, project):
    ip = await ipam.book(book_in(pn, project))
    attached = await ipam.attach(ip.id, vm(2, "one"), idempotency_key="att",
                                 idempotency_scope=SCOPE)
    moved = await ipam.move(ip.id, vm(2, "one"), vm(3), idempotency_key="mv",
                            idempotency_scope=SCOPE)
    detached = await ipam.detach(ip.id, vm(3), idempotency_key="det",
                                 idempotency_scope=SCOPE)
    await ipam.update_ip(ip.id, tags=["later"])
    await ipam.attach(ip.id, vm(4))
    assert answer(await ipam.attach(ip.id, vm(2, "one"), idempotency_key="att",
                                    idempotency_scope=SCOPE)) == answer(attached)
    assert answer(await ipam.move(ip.id, vm(2, "one"), vm(3), idempotency_key="mv",
                                  idempotency_scope=SCOPE)) == answer(moved)
    assert answer(await ipam.detach(ip.id, vm(3), idempotency_key="det",
                                    idempotency_scope=SCOPE)) == answer(detached)
    # Another node answers the same, from etcd alone.
    async with connected(ipam.store.endpoints, ipam.keys.prefix) as other:
        assert answer(await other.move(ip.id, vm(2, "one"), vm(3), idempotency_key="mv",
                                       idempotency_scope=SCOPE)) == answer(moved)
    assert (await ipam.get_ip(ip.id)).resource == vm(4)  # no replay changed anything
    await clean_audit(ipam)


async def test_an_entry_is_a_fraction_of_the_first_answer(ipam, pn, project):
    ask = book_in(pn, project, tags=["web"], resource=vm(5, "web-1"),
                  idempotency_key="small", idempotency_scope=SCOPE)
    first = await ipam.book(ask)
    kv = await ipam.store.get(ipam.keys.idempotency(SCOPE, "small"))
    assert kv is not None
    old = json.dumps({"fingerprint": idem.fingerprint("book", ask.fingerprint_fields()),
                      "result": first.to_json()}).encode()
    assert len(kv.value) * 2 < len(old)


async def test_a_key_reused_for_another_request_is_still_refused(ipam, pn, project):
    await ipam.book(book_in(pn, project, idempotency_key="k", idempotency_scope=SCOPE))
    with pytest.raises(Conflict) as err:
        await ipam.book(book_in(pn, project, tags=["x"], idempotency_key="k",
                                idempotency_scope=SCOPE))
    assert "different request" in err.value.message
    ip = (await ipam.list_ips(IPFilter(private_network_id=pn.id)))[0][0]
    await ipam.attach(ip.id, vm(6), idempotency_key="a", idempotency_scope=SCOPE)
    with pytest.raises(Conflict):
        await ipam.attach(ip.id, vm(7), idempotency_key="a", idempotency_scope=SCOPE)
    assert (await ipam.list_ips(IPFilter(private_network_id=pn.id)))[1] == 1


async def test_a_replay_of_a_released_ip_is_refused(ipam, pn, project):
    ask = book_in(pn, project, idempotency_key="gone", idempotency_scope=SCOPE)
    first = await ipam.book(ask)
    await ipam.release(first.id)
    with pytest.raises(Conflict) as err:
        await ipam.book(ask)
    assert err.value.message == (f"the IP {first.id} of the first request with this "
                                 "idempotency key has been released since")


async def test_an_entry_written_before_the_upgrade_still_replays(ipam, pn, project):
    ask = book_in(pn, project, tags=["t"], idempotency_key="old-book",
                  idempotency_scope=SCOPE)
    first = await ipam.book(AddressAsk(**{**ask.__dict__, "idempotency_key": None}))
    await put_old_format(ipam, "old-book", idem.fingerprint("book", ask.fingerprint_fields()),
                         first)
    await ipam.update_ip(first.id, tags=["changed"])
    assert answer(await ipam.book(ask)) == answer(first)
    attached = await ipam.attach(first.id, vm(8))
    fp = idem.fingerprint("attach", {"ip_id": first.id, "resource": vm(8).__dict__})
    await put_old_format(ipam, "old-attach", fp, attached)
    assert answer(await ipam.attach(first.id, vm(8), idempotency_key="old-attach",
                                    idempotency_scope=SCOPE)) == answer(attached)
    with pytest.raises(Conflict) as err:  # another request under an old key
        await ipam.attach(first.id, vm(9), idempotency_key="old-attach",
                          idempotency_scope=SCOPE)
    assert "different request" in err.value.message
    assert (await ipam.list_ips(IPFilter(private_network_id=pn.id)))[1] == 1


async def test_an_old_entry_of_a_released_ip_names_its_address(ipam, pn, project):
    ask = book_in(pn, project, idempotency_key="old-gone", idempotency_scope=SCOPE)
    first = await ipam.book(AddressAsk(**{**ask.__dict__, "idempotency_key": None}))
    await put_old_format(ipam, "old-gone", idem.fingerprint("book", ask.fingerprint_fields()),
                         first)
    await ipam.release(first.id)
    with pytest.raises(Conflict) as err:
        await ipam.book(ask)
    assert err.value.message == (f"the IP {first.id} ({first.address}) of the first request "
                                 "with this idempotency key has been released since")


async def test_every_entry_lives_on_a_lease_of_the_retention(etcd_single, key_prefix,
                                                             project):
    async with connected(etcd_single.endpoints, key_prefix,
                         idempotency_retention=240) as ipam:
        pn = await make_pn(ipam, project, "10.9.1.0/24")
        ip = await ipam.book(book_in(pn, project, idempotency_key="b",
                                     idempotency_scope=SCOPE))
        await ipam.attach(ip.id, vm(10), idempotency_key="a", idempotency_scope=SCOPE)
        resp = await ipam.store.range(ipam.keys.idempotency(SCOPE, ""),
                                      prefix_end(ipam.keys.idempotency(SCOPE, "")))
        leases = {kv.lease for kv in resp.kvs}
        assert len(resp.kvs) == 2 and len(leases) == 1  # one lease shared in a rotation
        assert idem.rotation(240) == 10
        assert await lease_ttl(ipam, leases.pop()) == 240 + 10


async def test_the_default_retention_is_an_hour(ipam, pn, project):
    await ipam.book(book_in(pn, project, idempotency_key="d", idempotency_scope=SCOPE))
    kv = (await ipam.store.range(ipam.keys.idempotency(SCOPE, "d"))).kvs[0]
    assert idem.RETENTION == 3600
    assert await lease_ttl(ipam, kv.lease) == 3600 + 150


@pytest.mark.parametrize("seconds", [0, 59, 7 * 24 * 3600 + 1, 3600.0, True, "3600"])
async def test_a_retention_out_of_range_is_refused(ipam, seconds):
    with pytest.raises(InvalidArgument) as err:
        idem.LeaseClock(ipam.store, seconds)
    assert [p.argument_name for p in err.value.problems] == ["idempotency_retention"]
