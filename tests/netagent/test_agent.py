"""The agent's booking for unknown MACs, against real etcd: what it answers when it cannot."""

from __future__ import annotations

import asyncio

from allocator_support import book_in, make_pn

from allocator.contract import PRODUCT, Caller, Resource
from netagent.agent import BOOK, UNKNOWN_CLIENT, Agent, AgentConfig

MAC = "02:00:00:aa:00:01"


async def _agent(ipam, pn_id: str, policy: str = BOOK) -> Agent:
    agent = Agent(ipam, AgentConfig(interfaces=(("eth-test", pn_id),),
                                    unknown_mac={pn_id: policy}))
    # No sockets: the responder and the booking path only.
    agent.dhcp4_responder(await ipam.network_view([pn_id]))
    return agent


async def test_a_booked_unknown_mac_is_answered_from_its_booking_until_the_view_shows_it(
        ipam, project):
    pn = await make_pn(ipam, project, "10.31.0.0/24")
    agent = await _agent(ipam, pn.id)
    try:
        lease = await agent._book_unknown(pn.id, MAC)
        assert lease is not None and agent.leases.lease(pn.id, MAC, False) == lease
        assert await agent.view.leased(pn.id, MAC, False, lease.address, 5.0)
        assert agent.view.lease(pn.id, MAC, False) == lease
        # A retransmit's booking: the MAC holds an IP already, which answers it.
        assert await agent._book_unknown(pn.id, MAC) is None
        assert agent.leases.lease(pn.id, MAC, False) == lease
        for _ in range(100):  # the held booking goes once the view shows it (bounded)
            if agent.leases.held == 0:
                break
            await asyncio.sleep(0)
        assert agent.leases.held == 0
    finally:
        await agent.close()


async def test_a_detach_right_after_the_booking_is_what_the_agent_answers(ipam, project):
    pn = await make_pn(ipam, project, "10.31.0.0/24")
    agent = await _agent(ipam, pn.id)
    try:
        lease = await agent._book_unknown(pn.id, MAC)
        assert lease is not None
        record = await ipam.get_ip(lease.ip_id)
        await ipam.detach(lease.ip_id, record.resource, Caller(
            role=PRODUCT, product_types=frozenset({UNKNOWN_CLIENT})))
        for _ in range(200):  # bounded: the view applies the detach within a few turns
            if agent.view.lease(pn.id, MAC, False) is None and agent.leases.held == 0:
                break
            await agent.view.changed(agent.view.revision, 0.05)
        assert agent.leases.lease(pn.id, MAC, False) is None
    finally:
        await agent.close()


async def test_a_mac_whose_booking_was_moved_away_or_released_gets_a_new_one(ipam, project):
    """A new-user trial: the booking was made with an idempotency key of (network, MAC),
    whose replay offered for an hour the first IP, after it had been detached and
    attached to another machine (two hosts on one address), or released (no address)."""
    pn = await make_pn(ipam, project, "10.31.0.0/24")
    agent = await _agent(ipam, pn.id)
    product = Caller(role=PRODUCT, product_types=frozenset({UNKNOWN_CLIENT}))
    try:
        first = await agent._book_unknown(pn.id, MAC)
        assert first is not None
        record = await ipam.get_ip(first.ip_id)
        await ipam.detach(first.ip_id, record.resource, product)
        await ipam.attach(first.ip_id, Resource.custom("02:00:00:aa:00:07", "victim"))
        second = await agent._book_unknown(pn.id, MAC)
        assert second is not None and second.address != first.address
        record = await ipam.get_ip(second.ip_id)
        await ipam.detach(second.ip_id, record.resource, product)
        await ipam.release(second.ip_id)
        third = await agent._book_unknown(pn.id, MAC)
        assert third is not None and third.ip_id not in (first.ip_id, second.ip_id)
        assert (await ipam.get_ip(first.ip_id)).resource.mac_address == "02:00:00:aa:00:07"
    finally:
        await agent.close()


async def test_no_offer_when_the_policy_ignores_the_mac_holds_an_ip_or_the_pool_is_full(
        ipam, project):
    pn = await make_pn(ipam, project, "10.31.0.0/29")  # 4 bookable addresses
    ignoring = await _agent(ipam, pn.id, "ignore")
    booking = await _agent(ipam, pn.id)
    try:
        assert await ignoring._book_unknown(pn.id, MAC) is None
        # Attached through the API meanwhile: the MAC's index refuses a second IP.
        await ipam.book(book_in(pn, project, resource=Resource.custom(MAC, "vm")))
        assert await booking._book_unknown(pn.id, MAC) is None
        for _ in range(3):
            await ipam.book(book_in(pn, project))
        assert await booking._book_unknown(pn.id, "02:00:00:aa:00:02") is None  # exhausted
    finally:
        await ignoring.close()
        await booking.close()
