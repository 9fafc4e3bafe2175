"""DHCP declines in etcd: recorded once, only for the MAC's own address, bounded per
network, listed and cleared by operators, and seen by every NetworkView (real etcd)."""

from __future__ import annotations

import asyncio
import ipaddress
import json

import pytest
from allocator_support import REGION, book_in, make_pn, revision, view_until

from allocator.contract import (
    IPAM,
    AddressNotHeld,
    Decline,
    Resource,
    TooManyDeclines,
    errors,
)
from allocator.declines import Declines
from allocator.store import EtcdStore
from devcluster.faults import FaultyStore

MAC, OTHER_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:0b"



async def _attached(ipam: IPAM, pn, project: str, mac: str, address: str | None = None,
                    is_ipv6: bool = False):
    return await ipam.book(book_in(pn, project, address=address, is_ipv6=is_ipv6,
                                   resource=Resource.custom(mac, f"vm-{mac[-2:]}")))


def _host(record) -> str:
    return record.address.split("/")[0]


# -- recording ----------------------------------------------------------------------------------


async def test_a_decline_of_the_macs_address_is_recorded_with_when_and_which_agent(
        ipam, project):
    pn = await make_pn(ipam, project, "10.9.0.0/24", "fd00:9::/64")
    ip = await _attached(ipam, pn, project, MAC, "10.9.0.5")
    ip6 = await _attached(ipam, pn, project, MAC, is_ipv6=True)
    decline = await ipam.record_decline(pn.id, MAC.upper(), "10.9.0.5", agent="agent-a")
    assert decline == Decline(pn.id, MAC, "10.9.0.5", False, ip.id, REGION,
                              decline.declined_at, "agent-a")
    assert decline.declined_at.endswith("Z")
    kv = await ipam.store.get(ipam.keys.decline(pn.id, MAC, "10.9.0.5"))
    assert kv is not None and json.loads(kv.value) == decline.to_json()
    # IPv6: the address as the client spells it, kept as the IP record spells it.
    spelled = ipaddress.IPv6Address(_host(ip6)).exploded.upper()
    decline6 = await ipam.record_decline(pn.id, MAC, spelled)
    assert (decline6.address, decline6.is_ipv6, decline6.ip_id) == (_host(ip6), True, ip6.id)
    assert await ipam.list_declines(REGION, pn.id) == [decline, decline6]


async def test_a_second_decline_of_the_same_address_writes_nothing(ipam, project):
    pn = await make_pn(ipam, project, "10.9.0.0/24")
    await _attached(ipam, pn, project, MAC, "10.9.0.5")
    first = await ipam.record_decline(pn.id, MAC, "10.9.0.5", agent="agent-a")
    before = await revision(ipam)
    again = await ipam.record_decline(pn.id, MAC, "10.9.0.5", agent="agent-b")
    assert again == first and await revision(ipam) == before


@pytest.mark.parametrize("case", ["other address", "other MAC", "detached", "other network",
                                  "unknown network", "other family"])
async def test_a_decline_of_an_address_the_mac_does_not_hold_is_refused(ipam, project, case):
    pn = await make_pn(ipam, project, "10.9.0.0/24", "fd00:9::/64")
    other = await make_pn(ipam, project, "10.8.0.0/24")
    ip = await _attached(ipam, pn, project, MAC, "10.9.0.5")
    await _attached(ipam, other, project, OTHER_MAC, "10.8.0.5")
    await ipam.book(book_in(pn, project, address="10.9.0.6"))  # held by nobody's MAC
    args = {"other address": (pn.id, MAC, "10.9.0.6"),
            "other MAC": (pn.id, OTHER_MAC, "10.9.0.5"),
            "detached": (pn.id, MAC, "10.9.0.5"),
            "other network": (other.id, MAC, "10.9.0.5"),
            "unknown network": ("7f1a0a2e-3c1e-4a39-9d1c-0c6d1d1e0e11", MAC, "10.9.0.5"),
            "other family": (pn.id, MAC, "fd00:9::5")}[case]
    if case == "detached":
        await ipam.detach(ip.id, Resource.custom(MAC, "vm-0a"))
    before = await revision(ipam)
    with pytest.raises(AddressNotHeld) as refused:
        await ipam.record_decline(*args)
    assert refused.value.precondition == "address_not_held"
    assert await revision(ipam) == before


@pytest.mark.parametrize(("args", "argument"), [
    (("nope", MAC, "10.9.0.5", ""), "private_network_id"),
    (("{pn}", "02:00:00:00:00", "10.9.0.5", ""), "mac_address"),
    (("{pn}", MAC, "10.9.0.500", ""), "address"),
    (("{pn}", MAC, "10.9.0.5/24", ""), "address"),
    (("{pn}", MAC, "10.9.0.5", "agent\n1"), "agent"),
    (("{pn}", MAC, "10.9.0.5", "a" * 256), "agent"),
])
async def test_bad_input_is_refused_before_etcd(ipam, project, args, argument):
    pn = await make_pn(ipam, project, "10.9.0.0/24")
    await _attached(ipam, pn, project, MAC, "10.9.0.5")
    before = await revision(ipam)
    with pytest.raises(errors.InvalidArgument) as refused:
        await ipam.record_decline(*(a.format(pn=pn.id) for a in args))
    assert refused.value.problems[0].argument_name == argument
    assert await revision(ipam) == before


# -- the bound ----------------------------------------------------------------------------------


async def test_a_network_holds_at_most_its_bound_of_declines(ipam, project):
    pn = await make_pn(ipam, project, "10.9.0.0/24")
    other = await make_pn(ipam, project, "10.8.0.0/24")
    macs = [f"02:00:00:00:01:{i:02x}" for i in range(3)]
    for i, mac in enumerate(macs):
        await _attached(ipam, pn, project, mac, f"10.9.0.{10 + i}")
    await _attached(ipam, other, project, MAC, "10.8.0.5")
    declines = Declines(ipam.store, ipam.keys, limit=2)
    first = await declines.record(pn.id, macs[0], "10.9.0.10")
    await declines.record(pn.id, macs[1], "10.9.0.11")
    before = await revision(ipam)
    with pytest.raises(TooManyDeclines) as refused:
        await declines.record(pn.id, macs[2], "10.9.0.12")
    assert (refused.value.precondition, refused.value.limit) == ("too_many_declines", 2)
    assert await revision(ipam) == before
    # At the bound, a decline recorded already is still answered; another network is not
    # concerned; a clear makes room again.
    assert await declines.record(pn.id, macs[0], "10.9.0.10") == first
    assert (await declines.record(other.id, MAC, "10.8.0.5")).private_network_id == other.id
    await ipam.clear_declines(REGION, pn.id, macs[0])
    assert (await declines.record(pn.id, macs[2], "10.9.0.12")).mac_address == macs[2]


async def test_declines_recorded_at_once_never_overshoot_the_bound(etcd_single, key_prefix,
                                                                  project):
    # Four agents, each with its own etcd connection, racing for a bound of three.
    ipams = [await IPAM.connect(etcd_single.endpoints, prefix=key_prefix) for _ in range(4)]
    try:
        pn = await make_pn(ipams[0], project, "10.9.0.0/24")
        macs = [f"02:00:00:00:02:{i:02x}" for i in range(8)]
        for i, mac in enumerate(macs):
            await _attached(ipams[0], pn, project, mac, f"10.9.0.{20 + i}")
        outcomes = await asyncio.gather(*(
            Declines(ipams[i % 4].store, ipams[i % 4].keys, limit=3).record(
                pn.id, mac, f"10.9.0.{20 + i}") for i, mac in enumerate(macs)),
            return_exceptions=True)
        recorded = [o for o in outcomes if isinstance(o, Decline)]
        assert len(recorded) == 3
        assert all(isinstance(o, TooManyDeclines) for o in outcomes if o not in recorded)
        count, _ = await ipams[0].store.count(ipams[0].keys.decline(pn.id))
        assert count == 3
        assert sorted(await ipams[0].list_declines(REGION, pn.id),
                      key=lambda d: d.mac_address) == sorted(recorded,
                                                             key=lambda d: d.mac_address)
    finally:
        for one in ipams:
            await one.close()


# -- when etcd fails ----------------------------------------------------------------------------


@pytest.mark.parametrize("applied", [True, False])
async def test_a_decline_whose_answer_is_lost_is_recorded_once(etcd_single, key_prefix,
                                                               project, applied):
    faults = FaultyStore(EtcdStore(etcd_single.endpoints))
    ipam = IPAM(faults, key_prefix)
    try:
        pn = await make_pn(ipam, project, "10.9.0.0/24")
        await _attached(ipam, pn, project, MAC, "10.9.0.5")
        faults.lose_answers(1, applied=applied)
        decline = await ipam.record_decline(pn.id, MAC, "10.9.0.5", agent="a")
        assert faults.answers_lost == 1
        assert await ipam.list_declines(REGION) == [decline]
    finally:
        await ipam.close()


async def test_a_decline_etcd_cannot_read_for_is_a_store_error(etcd_single, key_prefix,
                                                               project):
    faults = FaultyStore(EtcdStore(etcd_single.endpoints))
    ipam = IPAM(faults, key_prefix)
    try:
        pn = await make_pn(ipam, project, "10.9.0.0/24")
        await _attached(ipam, pn, project, MAC, "10.9.0.5")
        faults.outage()
        with pytest.raises(errors.StoreError):
            await ipam.record_decline(pn.id, MAC, "10.9.0.5")
        faults.heal()
        assert await ipam.list_declines(REGION) == []
    finally:
        await ipam.close()


# -- listing and clearing -----------------------------------------------------------------------


async def _three_declines(ipam: IPAM, project: str):
    pn = await make_pn(ipam, project, "10.9.0.0/24")
    other = await make_pn(ipam, project, "10.8.0.0/24")
    await _attached(ipam, pn, project, MAC, "10.9.0.5")
    await _attached(ipam, pn, project, OTHER_MAC, "10.9.0.6")
    await _attached(ipam, other, project, MAC, "10.8.0.5")
    a = await ipam.record_decline(pn.id, MAC, "10.9.0.5")
    b = await ipam.record_decline(pn.id, OTHER_MAC, "10.9.0.6")
    c = await ipam.record_decline(other.id, MAC, "10.8.0.5")
    return pn, other, a, b, c


async def test_declines_are_listed_by_region_network_and_mac(ipam, project):
    pn, _, a, b, c = await _three_declines(ipam, project)
    everything = await ipam.list_declines(REGION)
    assert sorted(everything, key=lambda d: d.address) == [c, a, b]
    assert await ipam.list_declines(REGION, pn.id) == [a, b]
    assert await ipam.list_declines(REGION, pn.id, MAC.upper()) == [a]
    assert sorted(await ipam.list_declines(REGION, mac=MAC),
                  key=lambda d: d.address) == [c, a]
    assert await ipam.list_declines("nl-ams") == []
    with pytest.raises(errors.InvalidArgument):
        await ipam.list_declines(REGION, "nope")
    with pytest.raises(errors.InvalidArgument):
        await ipam.list_declines(REGION, mac="nope")


async def test_clear_deletes_the_declines_it_names_and_answers_them(ipam, project):
    pn, _, a, b, c = await _three_declines(ipam, project)
    assert await ipam.clear_declines("nl-ams") == []
    assert await ipam.clear_declines(REGION, pn.id, MAC) == [a]
    assert await ipam.clear_declines(REGION, pn.id, MAC) == []  # nothing left to clear
    assert await ipam.list_declines(REGION) in ([c, b], [b, c])
    assert sorted(await ipam.clear_declines(REGION), key=lambda d: d.address) == [c, b]
    assert await ipam.list_declines(REGION) == []
    # Cleared, the address may be declined (and recorded) again.
    assert (await ipam.record_decline(pn.id, MAC, "10.9.0.5")).address == "10.9.0.5"


async def test_clear_deletes_more_declines_than_one_request_carries(ipam, project):
    pn = await make_pn(ipam, project, "10.9.0.0/24")
    declines = Declines(ipam.store, ipam.keys)
    for i in range(70):  # more than one request's worth (64)
        mac = f"02:00:00:00:03:{i:02x}"
        await _attached(ipam, pn, project, mac, f"10.9.0.{10 + i}")
        await declines.record(pn.id, mac, f"10.9.0.{10 + i}")
    assert len(await ipam.clear_declines(REGION, pn.id)) == 70
    assert await ipam.list_declines(REGION, pn.id) == []


async def test_a_detach_leaves_the_decline_and_a_reattach_is_still_withheld(ipam, project):
    pn = await make_pn(ipam, project, "10.9.0.0/24")
    ip = await _attached(ipam, pn, project, MAC, "10.9.0.5")
    decline = await ipam.record_decline(pn.id, MAC, "10.9.0.5")
    await ipam.detach(ip.id, Resource.custom(MAC, "vm-0a"))
    assert await ipam.list_declines(REGION, pn.id) == [decline]
    await ipam.attach(ip.id, Resource.custom(MAC, "vm-0a"))
    view = await ipam.network_view([pn.id])
    try:
        assert view.lease(pn.id, MAC, False) is not None
        assert view.declined(pn.id, MAC, "10.9.0.5")
    finally:
        await view.close()


# -- what the views see -------------------------------------------------------------------------


async def test_a_network_view_loads_and_follows_the_declines_of_its_networks(ipam, project):
    pn = await make_pn(ipam, project, "10.9.0.0/24")
    other = await make_pn(ipam, project, "10.8.0.0/24")
    await _attached(ipam, pn, project, MAC, "10.9.0.5")
    await _attached(ipam, pn, project, OTHER_MAC, "10.9.0.6")
    await _attached(ipam, other, project, MAC, "10.8.0.5")
    loaded = await ipam.record_decline(pn.id, MAC, "10.9.0.5")
    view = await ipam.network_view([pn.id])
    try:
        assert view.declined(pn.id, MAC.upper(), "10.9.0.5")  # loaded with the IPs
        assert view.declines() == [loaded] and view.decline_count(pn.id) == 1
        assert not view.declined(pn.id, OTHER_MAC, "10.9.0.6")
        followed = await ipam.record_decline(pn.id, OTHER_MAC, "10.9.0.6")
        await ipam.record_decline(other.id, MAC, "10.8.0.5")  # not a served network
        await view_until(view, lambda: view.declined(pn.id, OTHER_MAC, "10.9.0.6"))
        assert view.declines(pn.id) == [loaded, followed]
        assert view.declines(other.id) == [] and not view.declined(other.id, MAC, "10.8.0.5")
        await ipam.clear_declines(REGION, pn.id, MAC)
        await view_until(view, lambda: not view.declined(pn.id, MAC, "10.9.0.5"))
        assert view.declines() == [followed] and view.decline_count(pn.id) == 1
    finally:
        await view.close()


async def test_a_reloaded_view_sees_the_declines_recorded_meanwhile(etcd_single, key_prefix,
                                                                    project):
    faults = FaultyStore(EtcdStore(etcd_single.endpoints))
    ipam = IPAM(faults, key_prefix)
    try:
        pn = await make_pn(ipam, project, "10.9.0.0/24")
        await _attached(ipam, pn, project, MAC, "10.9.0.5")
        await _attached(ipam, pn, project, OTHER_MAC, "10.9.0.6")
        view = await ipam.network_view([pn.id])
        await ipam.record_decline(pn.id, MAC, "10.9.0.5")
        await view_until(view, lambda: view.declined(pn.id, MAC, "10.9.0.5"))
        faults.compact_watches()  # the view's watches are open now
        await ipam.record_decline(pn.id, OTHER_MAC, "10.9.0.6")
        await view_until(view, lambda: view.declined(pn.id, OTHER_MAC, "10.9.0.6"))
        assert view.reloads >= 2 and view.decline_count(pn.id) == 2
        await view.close()
    finally:
        await ipam.close()
