"""The live view DHCP and DNS answer from: loaded at one revision, kept current by watches."""

from __future__ import annotations

import asyncio

import pytest
from allocator_support import book_in, make_pn, view_until

from allocator.contract import IPAM, Resource
from allocator.store import EtcdStore
from devcluster.faults import FaultyStore

MAC, OTHER_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:0b"



async def test_attach_detach_move_and_names_reach_the_view(ipam, project):
    pn = await make_pn(ipam, project, "10.9.0.0/24", "fd00:9::/64")
    other_pn = await make_pn(ipam, project, "10.8.0.0/24")
    view = await ipam.network_view([pn.id])
    try:
        info = view.network(pn.id)
        assert info is not None and info.dhcp_enabled and info.domain == "pn.internal"
        v4 = info.subnet(is_ipv6=False)
        assert (v4.gateway, v4.server) == ("10.9.0.1", "10.9.0.254")
        ip = await ipam.book(book_in(pn, project, resource=Resource.custom(MAC, "web-1")))
        ip6 = await ipam.book(book_in(pn, project, is_ipv6=True))
        await ipam.book(book_in(other_pn, project, resource=Resource.custom(MAC, "x")))
        await view_until(view, lambda: view.lease(pn.id, MAC, False) is not None)
        lease = view.lease(pn.id, MAC, False)
        assert lease.address == ip.address.split("/")[0] and lease.name == "web-1"
        assert [x.address for x in view.named(pn.id, "WEB-1")] == [lease.address]
        assert view.at(lease.address) == lease and view.lease(pn.id, MAC, True) is None
        assert {x.private_network_id for x in view.leases(pn.id)} == {pn.id}
        await ipam.update_ip(ip.id, reverses=[{"hostname": "www.example.com", "address": lease.address}])
        await view_until(view, lambda: view.at(lease.address).reverses == ("www.example.com",))
        await ipam.move(ip.id, Resource.custom(MAC, "web-1"), Resource.custom(OTHER_MAC, "web-2"))
        await view_until(view, lambda: view.lease(pn.id, MAC, False) is None)
        assert view.lease(pn.id, OTHER_MAC, False).address == lease.address
        assert view.named(pn.id, "web-1") == [] and len(view.named(pn.id, "web-2")) == 1
        await ipam.detach(ip.id, Resource.custom(OTHER_MAC, "web-2"))
        await view_until(view, lambda: view.lease(pn.id, OTHER_MAC, False) is None)
        await ipam.release(ip.id)
        await view_until(view, lambda: view.at(lease.address) is None)
        assert view.at(ip6.address.split("/")[0]) is not None
        await ipam.update_private_network(pn.id, dhcp_enabled=False)
        await view_until(view, lambda: not view.network(pn.id).dhcp_enabled)
    finally:
        await view.close()


async def test_waiting_for_one_macs_lease_is_woken_by_that_mac_only(ipam, project):
    pn = await make_pn(ipam, project, "10.9.0.0/24")
    view = await ipam.network_view([pn.id])
    try:
        waiting = asyncio.ensure_future(view.leased(pn.id, MAC.upper(), False, "10.9.0.9", 5.0))
        await ipam.book(book_in(pn, project, resource=Resource.custom(OTHER_MAC, "other")))
        await view_until(view, lambda: view.lease(pn.id, OTHER_MAC, False) is not None)
        assert not waiting.done()  # another MAC's change does not answer it
        await ipam.book(book_in(pn, project, address="10.9.0.9",
                                resource=Resource.custom(MAC, "web-1")))
        assert await asyncio.wait_for(waiting, 5.0) is True
        # Another address than the one held, or nothing at all: no, once the time is up.
        assert await view.leased(pn.id, MAC, False, "10.9.0.10", 0.05) is False
        assert await view.leased(pn.id, OTHER_MAC, True, "fd00::1", 0.05) is False
        assert view._awaited == {}  # no waiter left behind
    finally:
        await view.close()


async def test_a_compacted_watch_reloads_the_view(etcd_single, key_prefix, project):
    faults = FaultyStore(EtcdStore(etcd_single.endpoints))
    ipam = IPAM(faults, key_prefix)
    try:
        pn = await make_pn(ipam, project, "10.9.0.0/24")
        view = await ipam.network_view([pn.id])
        await ipam.book(book_in(pn, project, resource=Resource.custom(OTHER_MAC, "b")))
        await view_until(view, lambda: view.lease(pn.id, OTHER_MAC, False) is not None)
        faults.compact_watches()  # the view's watches are open now
        await ipam.book(book_in(pn, project, resource=Resource.custom(MAC, "a")))
        await view_until(view, lambda: view.lease(pn.id, MAC, False) is not None)
        assert view.reloads >= 2
        await view.close()
    finally:
        await ipam.close()


async def test_a_bad_dhcp_flag_is_refused(ipam, project):
    from allocator.errors import InvalidArgument

    pn = await make_pn(ipam, project, "10.9.0.0/24")
    with pytest.raises(InvalidArgument):
        await ipam.update_private_network(pn.id, dhcp_enabled="yes")
