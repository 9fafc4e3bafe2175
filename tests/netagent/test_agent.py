"""The agent's booking for unknown MACs, against real etcd: what it answers when it cannot."""

from __future__ import annotations

from allocator_support import book_in, make_pn

from allocator.contract import Resource
from netagent.agent import BOOK, Agent, AgentConfig

MAC = "02:00:00:aa:00:01"


async def _agent(ipam, pn_id: str, policy: str = BOOK) -> Agent:
    agent = Agent(ipam, AgentConfig(interfaces=(("eth-test", pn_id),),
                                    unknown_mac={pn_id: policy}))
    agent.view = await ipam.network_view([pn_id])  # no sockets: the booking path only
    return agent


async def test_a_booked_unknown_mac_is_shown_by_the_view_before_it_is_offered(ipam, project):
    pn = await make_pn(ipam, project, "10.31.0.0/24")
    agent = await _agent(ipam, pn.id)
    try:
        lease = await agent._book_unknown(pn.id, MAC)
        assert lease is not None and agent.view.lease(pn.id, MAC, False) == lease
        again = await agent._book_unknown(pn.id, MAC)  # a retransmit: the same IP
        assert again == lease
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
