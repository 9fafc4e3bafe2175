"""Subnets added to and deleted from a Private Network after creation, on real etcd.

The invariant under test: an address is never booked in a subnet that is being
deleted. A booking is guarded by its subnet's source key being present, a delete by
the subnet's address keys being absent; etcd orders the two, so either the booking
won (and the delete is refused) or the delete won (and the booking fails).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from allocator_support import book_in, clean_audit, connected, make_pn, view_until

from allocator.contract import IPAM, AddressAsk, IPFilter, IPRecord, PrivateNetwork, Resource
from allocator.errors import AlreadyExists, InvalidArgument, NotFound, PreconditionFailed

MAC = "02:00:00:00:00:0a"


def _subnet(pn: PrivateNetwork, cidr: str) -> str:
    return next(s.id for s in pn.subnets if s.subnet == cidr)


def _in_subnet(project: str, subnet_id: str) -> AddressAsk:
    return AddressAsk(region="fr-par", project_id=project, subnet_id=subnet_id)


async def _keys_of_source(ipam: IPAM, source_id: str) -> list[str]:
    kvs, _ = await ipam.store.scan(f"{ipam.keys.prefix}src/{source_id}/", keys_only=True)
    return [kv.key for kv in kvs]


async def _vpc_subnet_ids(ipam: IPAM, vpc_id: str) -> set[str]:
    kvs, _ = await ipam.store.scan(ipam.keys.vpc_networks(vpc_id), keys_only=True)
    return {ipam.keys.last_segment(kv.key) for kv in kvs}


async def test_added_subnets_are_booked_in_and_overlaps_name_the_collider(ipam, project):
    pn = await make_pn(ipam, project, "10.60.0.0/24")
    other = await ipam.create_private_network("fr-par", project, None, "other",
                                              vpc_id=pn.vpc_id, subnets=["10.61.0.0/24"])
    updated, added = await ipam.add_subnets(pn.id, ["10.62.0.0/24", "fd00:62::/64"])
    assert [s.subnet for s in added] == ["10.62.0.0/24", "fd00:62::/64"]
    assert [s.subnet for s in updated.subnets] == ["10.60.0.0/24", "10.62.0.0/24",
                                                   "fd00:62::/64"]
    assert (await ipam.get_private_network(pn.id)).subnets == updated.subnets
    ip = await ipam.book(book_in(pn, project, address="10.62.0.7"))
    assert ip.source_id == added[0].id and ip.address == "10.62.0.7/24"
    v6 = await ipam.book(book_in(pn, project, is_ipv6=True))
    assert v6.source_id == added[1].id
    with pytest.raises(AlreadyExists) as exc:
        await ipam.add_subnets(pn.id, ["10.61.0.128/25"])
    assert exc.value.resource_id == other.subnets[0].id
    assert "10.61.0.0/24" in exc.value.message and pn.vpc_id in exc.value.message
    with pytest.raises(AlreadyExists) as exc:
        await ipam.add_subnets(pn.id, ["10.60.0.0/24"])
    assert exc.value.resource_id == _subnet(pn, "10.60.0.0/24")
    for bad in (["10.63.0.1/24"], ["8.8.8.0/24"], ["nope"], [], ["10.64.0.0/24", "10.64.0.0/25"]):
        with pytest.raises(InvalidArgument):
            await ipam.add_subnets(pn.id, bad)
    assert (await ipam.get_private_network(pn.id)).subnets == updated.subnets
    await clean_audit(ipam)


async def test_a_subnet_holding_an_ip_is_not_deleted_and_an_empty_one_is(ipam, project):
    pn = await make_pn(ipam, project, "10.65.0.0/24", "10.66.0.0/24")
    held, empty = _subnet(pn, "10.65.0.0/24"), _subnet(pn, "10.66.0.0/24")
    ip = await ipam.book(book_in(pn, project, address="10.65.0.9"))
    with pytest.raises(PreconditionFailed) as exc:
        await ipam.delete_subnets(pn.id, ["10.66.0.0/24", "10.65.0.0/24"])
    assert exc.value.precondition == "resource_still_in_use"
    assert held in exc.value.message and "10.65.0.0/24" in exc.value.message
    assert len((await ipam.get_private_network(pn.id)).subnets) == 2  # all or nothing
    with pytest.raises(NotFound) as missing:
        await ipam.delete_subnets(pn.id, ["10.67.0.0/24"])
    assert (missing.value.resource, missing.value.resource_id) == ("subnet", "10.67.0.0/24")
    updated, gone = await ipam.delete_subnets(pn.id, ["10.66.0.0/24"])
    assert [s.id for s in gone] == [empty]
    assert [s.subnet for s in updated.subnets] == ["10.65.0.0/24"]
    assert await _keys_of_source(ipam, empty) == []
    assert await _vpc_subnet_ids(ipam, pn.vpc_id) == {held}
    with pytest.raises(InvalidArgument):  # outside every subnet the network has now
        await ipam.book(book_in(pn, project, address="10.66.0.9"))
    with pytest.raises(NotFound):
        await ipam.book(_in_subnet(project, empty))
    await ipam.release(ip.id)
    await ipam.delete_subnets(pn.id, ["10.65.0.0/24"])
    assert (await ipam.get_private_network(pn.id)).subnets == ()
    # The CIDRs are free again in the VPC.
    _, readded = await ipam.add_subnets(pn.id, ["10.65.0.0/24", "10.66.0.0/24"])
    assert len(readded) == 2
    await clean_audit(ipam)


async def test_flags_subnets_and_names_changed_at_once_all_stay(ipam, project):
    vpc = await ipam.create_vpc("fr-par", project, None, "v", enable_routing=False)
    pn = await ipam.create_private_network("fr-par", project, None, "pn", vpc_id=vpc.id,
                                           subnets=["10.68.0.0/24"])
    await ipam.update_private_network(pn.id, dhcp_enabled=False)
    await asyncio.gather(
        ipam.enable_dhcp(pn.id), ipam.update_private_network(pn.id, name="renamed"),
        ipam.add_subnets(pn.id, ["10.69.0.0/24"]), ipam.add_subnets(pn.id, ["10.70.0.0/24"]),
        ipam.enable_routing(vpc.id), ipam.update_vpc(vpc.id, name="vv"))
    got = await ipam.get_private_network(pn.id)
    assert got.dhcp_enabled and got.name == "renamed"
    assert sorted(s.subnet for s in got.subnets) == ["10.68.0.0/24", "10.69.0.0/24",
                                                     "10.70.0.0/24"]
    assert await _vpc_subnet_ids(ipam, vpc.id) == {s.id for s in got.subnets}
    vpc_now = await ipam.get_vpc(vpc.id)
    assert vpc_now.routing_enabled and vpc_now.name == "vv"
    again = await ipam.enable_dhcp(pn.id)  # on already: nothing written
    assert again.updated_at == got.updated_at
    assert (await ipam.enable_routing(vpc.id)).updated_at == vpc_now.updated_at


async def test_two_overlapping_additions_at_once_never_both_win(ipam, project):
    pn = await make_pn(ipam, project, "10.71.0.0/24")
    other = await ipam.create_private_network("fr-par", project, None, "o",
                                              vpc_id=pn.vpc_id, subnets=["10.72.0.0/24"])
    results = await asyncio.gather(ipam.add_subnets(pn.id, ["10.73.0.0/24"]),
                                   ipam.add_subnets(other.id, ["10.73.0.0/25"]),
                                   return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["AlreadyExists", "tuple"]
    cidrs = [s.subnet for p in (pn, other) for s in (await ipam.get_private_network(p.id)).subnets]
    assert len([c for c in cidrs if c.startswith("10.73.")]) == 1


async def test_a_private_network_deleted_while_a_subnet_is_added_leaves_nothing_behind(
        ipam, project):
    for _ in range(5):
        pn = await make_pn(ipam, project, "10.74.0.0/24")
        results = await asyncio.gather(ipam.add_subnets(pn.id, ["10.75.0.0/24"]),
                                       ipam.delete_private_network(pn.id),
                                       return_exceptions=True)
        added, deleted = results
        assert deleted is None, deleted  # the delete retries over the addition
        assert isinstance(added, tuple | NotFound), added
        assert await _vpc_subnet_ids(ipam, pn.vpc_id) == set()
        metas, _ = await ipam.store.scan(ipam.keys.source())
        assert [kv.key for kv in metas
                if json.loads(kv.value).get("private_network_id") == pn.id] == []


async def _race(ipams: list[IPAM], pn: PrivateNetwork, doomed: str, asks: list[AddressAsk],
                after: int) -> tuple[list[IPRecord], Any]:
    """Run the bookings `asks`, spread over `ipams`, and one delete of the subnet `doomed`
    at once; the delete starts when `after` bookings have been answered."""
    answered = 0
    started = asyncio.Event()

    async def book(ipam: IPAM, ask: AddressAsk) -> IPRecord:
        nonlocal answered
        try:
            return await ipam.book(ask)
        finally:
            answered += 1
            if answered >= after:
                started.set()

    async def delete() -> Any:
        if after:
            await started.wait()
        return await ipams[0].delete_subnets(pn.id, [doomed])

    results = await asyncio.gather(
        delete(), *(book(ipams[i % len(ipams)], ask) for i, ask in enumerate(asks)),
        return_exceptions=True)
    deleted, results = results[0], results[1:]
    booked = [r for r in results if isinstance(r, IPRecord)]
    # A booking that lost to the delete is told its source is gone.
    assert all(isinstance(r, IPRecord | NotFound) for r in results), results
    return booked, deleted


async def _check_outcome(ipam: IPAM, pn: PrivateNetwork, doomed: str, booked: list[IPRecord],
                         deleted: Any) -> None:
    doomed_id = _subnet(pn, doomed)
    now = await ipam.get_private_network(pn.id)
    for record in booked:  # every answered booking is in etcd, and its subnet still is
        assert (await ipam.get_ip(record.id)).address == record.address
    if isinstance(deleted, PreconditionFailed):
        assert doomed_id in [s.id for s in now.subnets]
        assert any(r.source_id == doomed_id for r in booked)
    else:
        assert not isinstance(deleted, BaseException), deleted
        assert doomed_id not in [s.id for s in now.subnets]
        assert not any(r.source_id == doomed_id for r in booked)
        assert await _keys_of_source(ipam, doomed_id) == []
    held = {s.id for s in now.subnets}
    assert all(r.source_id in held for r in booked)
    listed, total = await ipam.list_ips(IPFilter(private_network_id=pn.id), page_size=100)
    assert total == len(booked) and {r.id for r in listed} == {r.id for r in booked}
    await clean_audit(ipam)


async def test_bookings_racing_a_subnet_delete_never_land_in_a_deleted_subnet(
        etcd_single, key_prefix, project):
    outcomes = []
    async with connected(etcd_single.endpoints, key_prefix) as one, \
            connected(etcd_single.endpoints, key_prefix) as two:
        # (by the network or by the doomed subnet itself, bookings answered before the delete)
        for round_, (by_network, after) in enumerate([(True, 0), (False, 0), (True, 5),
                                                      (False, 5), (True, 1), (False, 1)]):
            doomed, kept = f"10.{80 + 2 * round_}.0.0/24", f"10.{81 + 2 * round_}.0.0/24"
            pn = await make_pn(one, project, doomed, kept)
            # Both nodes warm: they know the network and its sources.
            for node in (one, two):
                await node.release((await node.book(book_in(
                    pn, project, address=kept.replace(".0/24", ".9")))).id)
            asks = [book_in(pn, project) if by_network else
                    _in_subnet(project, _subnet(pn, doomed)) for _ in range(40)]
            booked, deleted = await _race([one, two], pn, doomed, asks, after)
            await _check_outcome(one, pn, doomed, booked, deleted)
            outcomes.append(type(deleted).__name__)
    # Both ends of the race were run: the delete won, and the bookings won.
    assert {"tuple", "PreconditionFailed"} <= set(outcomes), outcomes


async def test_another_node_stops_booking_in_a_subnet_deleted_elsewhere(
        etcd_single, key_prefix, project):
    async with connected(etcd_single.endpoints, key_prefix) as one, \
            connected(etcd_single.endpoints, key_prefix) as two:
        pn = await make_pn(one, project, "10.90.0.0/24", "10.91.0.0/24")
        gone = _subnet(pn, "10.90.0.0/24")
        await two.release((await two.book(book_in(pn, project, address="10.90.0.9"))).id)
        await one.delete_subnets(pn.id, ["10.90.0.0/24"])
        with pytest.raises(NotFound):
            await two.book(_in_subnet(project, gone))
        answers = await asyncio.gather(*(two.book(book_in(pn, project)) for _ in range(10)),
                                       return_exceptions=True)
        assert all(isinstance(a, IPRecord | NotFound) for a in answers), answers
        assert all(a.source_id != gone for a in answers if isinstance(a, IPRecord))
        # A subnet added elsewhere is booked in at once when asked for by address.
        _, added = await one.add_subnets(pn.id, ["10.92.0.0/24"])
        ip = await two.book(book_in(pn, project, address="10.92.0.5"))
        assert ip.source_id == added[0].id
        listed, _ = await two.list_ips(IPFilter(private_network_id=pn.id), page_size=100)
        assert ip.id in {r.id for r in listed}
        await clean_audit(one)



async def test_the_network_view_follows_subnets_added_and_deleted(ipam, project):
    pn = await make_pn(ipam, project, "10.93.0.0/24")
    view = await ipam.network_view([pn.id])
    try:
        await ipam.add_subnets(pn.id, ["10.94.0.0/24", "fd00:94::/64"])
        await view_until(view, lambda: len(view.network(pn.id).subnets) == 3)
        assert view.network(pn.id).subnet(is_ipv6=True).gateway == "fd00:94::1"
        ip = await ipam.book(book_in(pn, project, address="10.94.0.20",
                                     resource=Resource.custom(MAC, "vm")))
        await view_until(view, lambda: view.lease(pn.id, MAC, False) is not None)
        assert view.lease(pn.id, MAC, False).address == "10.94.0.20"
        await ipam.detach(ip.id, Resource.custom(MAC, "vm"))
        await ipam.release(ip.id)
        await ipam.delete_subnets(pn.id, ["10.94.0.0/24", "fd00:94::/64"])
        await view_until(view, lambda: [s.cidr for s in view.network(pn.id).subnets]
                     == ["10.93.0.0/24"])
        assert view.at("10.94.0.20") is None
    finally:
        await view.close()
