"""A DHCP decline outlives the agent that received it and holds on every agent of the
network: recorded in IPAM once, read back from each agent's view.

The first part drives the responders over a fake view and a fake recorder (what is
asked of IPAM, and what is counted when it refuses or fails); the second runs agents
on real etcd: a restart, a second agent, an operator's clear. Datagrams are built with
the modules' own encoders: the codecs are tested byte by byte in test_dhcp4/test_dhcp6.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
from typing import Any

import pytest
from allocator_support import REGION, book_in, make_pn
from lease_views import FakeView

from allocator.contract import (
    DECLINE_LIMIT,
    IPAM,
    AddressNotHeld,
    Lease,
    NetworkInfo,
    Resource,
    SubnetInfo,
    TooManyDeclines,
    errors,
)
from netagent.agent import Agent, AgentConfig
from netagent.declines import OVER_LIMIT_LOG_SECONDS
from netagent.dhcp4 import BOOTREQUEST, Dhcp4Packet, Dhcp4Responder, MessageType, Option
from netagent.dhcp4 import decode as decode4
from netagent.dhcp4 import encode as encode4
from netagent.dhcp6 import Dhcp6Message, Dhcp6Responder, network_duid
from netagent.dhcp6 import MessageType as Message6
from netagent.dhcp6 import Option as Option6
from netagent.dhcp6 import decode as decode6
from netagent.dhcp6 import encode as encode6
from netagent.metrics import AgentCollector

PN = "pn-web"
MAC, OTHER_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
ADDRESS, ADDRESS6 = "10.9.0.5", "fd00:9::5"
SERVER = "10.9.0.254"
SOURCE6 = "fe80::ff:fe00:a"


def network(pn_id: str = PN, cidr: str = "10.9.0.0/24") -> NetworkInfo:
    return NetworkInfo(pn_id, "web", True, (SubnetInfo.of(f"{pn_id}-v4", cidr),
                                            SubnetInfo.of(f"{pn_id}-v6", "fd00:9::/64")))


def lease(address: str = ADDRESS, mac: str = MAC, is_ipv6: bool = False) -> Lease:
    return Lease(f"ip-{address}", PN, address, 64 if is_ipv6 else 24, is_ipv6, mac, "web-1", ())


def dhcp4(kind: MessageType, mac: str = MAC, address: str | None = None,
          server: str | None = SERVER) -> bytes:
    options: dict[int, bytes] = {}
    if address is not None:
        options[Option.REQUESTED_ADDRESS] = bytes(map(int, address.split(".")))
    if server is not None:
        options[Option.SERVER_ID] = bytes(map(int, server.split(".")))
    return encode4(Dhcp4Packet(BOOTREQUEST, kind, 0x1234, bytes.fromhex(mac.replace(":", "")),
                               options=options))


def decline4(address: str = ADDRESS, mac: str = MAC, server: str = SERVER) -> bytes:
    return dhcp4(MessageType.DECLINE, mac, address, server)


def dhcp6(kind: Message6, pn_id: str, address: str | None = None, mac: str = MAC) -> bytes:
    duid = struct.pack("!HH", 3, 1) + bytes.fromhex(mac.replace(":", ""))
    iaaddr = b"" if address is None else (struct.pack("!HH", Option6.IAADDR, 24)
                                          + ipaddress.IPv6Address(address).packed + bytes(8))
    ia = struct.pack("!HHIII", Option6.IA_NA, 12 + len(iaaddr), 1, 0, 0) + iaaddr
    options: list[tuple[int, bytes]] = [(Option6.CLIENTID, duid)]
    if kind is Message6.DECLINE:
        options.append((Option6.SERVERID, network_duid(pn_id)))
    payload = encode6(Dhcp6Message(kind, 0x99, tuple(options)))
    return payload + ia


def replied6(reply: Any) -> Message6 | None:
    if reply is None:
        return None
    return decode6(reply.payload).message_type


class Recorder:
    """A fake `IPAM.record_decline`: what it was asked, and what it answers."""

    def __init__(self, view: FakeView, fails: BaseException | None = None) -> None:
        self.view, self.fails = view, fails
        self.asked: list[tuple[str, str, str]] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, pn_id: str, mac: str, address: str) -> None:
        self.asked.append((pn_id, mac, address))
        if self.gate is not None:
            await self.gate.wait()
        if self.fails is not None:
            raise self.fails
        await self.view.record_decline(pn_id, mac, address)


def view_of(*leases: Lease) -> FakeView:
    return FakeView([network()], leases or (lease(), lease(ADDRESS6, is_ipv6=True)))


# -- what is asked of IPAM, and what is counted --------------------------------------------------


async def test_a_decline_is_recorded_once_however_often_the_client_sends_it():
    view = view_of()
    recorder = Recorder(view)
    recorder.gate = asyncio.Event()
    dhcp = Dhcp4Responder(view, record_decline=recorder)
    first = asyncio.ensure_future(dhcp.handle(decline4(), PN))
    await asyncio.sleep(0)  # the first one is being recorded
    assert await dhcp.handle(decline4(), PN) is None  # a retransmission meanwhile
    recorder.gate.set()
    assert await first is None
    assert await dhcp.handle(decline4(), PN) is None  # and once the view shows it
    assert recorder.asked == [(PN, MAC, ADDRESS)] and dhcp.counters.declines == 3
    assert await dhcp.handle(dhcp4(MessageType.DISCOVER), PN) is None
    assert dhcp.counters.withheld == 1


async def test_past_the_bound_a_decline_is_refused_without_asking_ipam(caplog):
    view = view_of()
    view.withheld |= {(PN, f"02:00:00:01:{i >> 8:02x}:{i & 255:02x}", "10.9.9.9")
                      for i in range(DECLINE_LIMIT)}
    recorder = Recorder(view)
    dhcp = Dhcp4Responder(view, record_decline=recorder)
    with caplog.at_level(logging.WARNING, logger="netagent.declines"):
        await dhcp.handle(decline4(), PN)
        await dhcp.handle(decline4(), PN)
    assert recorder.asked == [] and dhcp.counters.declines_over_limit == 2
    refusals = [r for r in caplog.records if "the most it may" in r.getMessage()]
    assert len(refusals) == 1  # a flood is logged once a minute per network
    assert f"{DECLINE_LIMIT} declines" in refusals[0].getMessage()
    # Still offered: the decline was not recorded.
    assert decode4((await dhcp.handle(dhcp4(MessageType.DISCOVER), PN)).payload).yiaddr \
        == ADDRESS


async def test_the_refusal_is_logged_again_after_a_minute(caplog, monkeypatch):
    view = view_of()
    dhcp = Dhcp4Responder(view, record_decline=Recorder(view, TooManyDeclines(PN, 3)))
    clock = [1000.0]
    monkeypatch.setattr("netagent.declines.time.monotonic", lambda: clock[0])
    with caplog.at_level(logging.WARNING, logger="netagent.declines"):
        await dhcp.handle(decline4(), PN)
        clock[0] += OVER_LIMIT_LOG_SECONDS - 1
        await dhcp.handle(decline4(), PN)
        clock[0] += 1
        await dhcp.handle(decline4(), PN)
    assert dhcp.counters.declines_over_limit == 3
    assert len([r for r in caplog.records if "the most it may" in r.getMessage()]) == 2


@pytest.mark.parametrize("failure", [errors.StoreError("etcd down"),
                                     AddressNotHeld(PN, MAC, ADDRESS),
                                     RuntimeError("a bug")])
async def test_a_decline_ipam_does_not_record_is_counted_and_the_address_still_offered(
        failure):
    view = view_of()
    dhcp = Dhcp4Responder(view, record_decline=Recorder(view, failure))
    assert await dhcp.handle(decline4(), PN) is None
    assert (dhcp.counters.declines, dhcp.counters.decline_failed) == (1, 1)
    offer = await dhcp.handle(dhcp4(MessageType.DISCOVER), PN)
    assert decode4(offer.payload).yiaddr == ADDRESS


async def test_without_a_recorder_a_decline_is_counted_and_logged_only(caplog):
    view = view_of()
    dhcp = Dhcp4Responder(view)
    with caplog.at_level(logging.WARNING, logger="netagent.declines"):
        assert await dhcp.handle(decline4(), PN) is None
    assert dhcp.counters.declines == 1 and view.withheld == set()
    assert "not recorded (no IPAM to record it in)" in caplog.text


@pytest.mark.parametrize(("failure", "answered"), [
    (None, True),
    (TooManyDeclines(PN, 3), True),  # refused for good: retransmitting changes nothing
    (AddressNotHeld(PN, MAC, ADDRESS6), True),
    (errors.StoreError("etcd down"), False),  # no Reply: the client retransmits
    (errors.Conflict("busy"), False),
])
async def test_a_dhcp6_decline_is_answered_once_ipam_has_decided(failure, answered):
    view = view_of()
    recorder = Recorder(view, failure)
    dhcp = Dhcp6Responder(view, record_decline=recorder)
    reply = await dhcp.handle(dhcp6(Message6.DECLINE, PN, ADDRESS6), PN, SOURCE6)
    assert (replied6(reply) is Message6.REPLY) is answered
    assert recorder.asked == [(PN, MAC, ADDRESS6)]
    assert view.withheld == ({(PN, MAC, ADDRESS6)} if failure is None else set())
    solicited = await dhcp.handle(dhcp6(Message6.SOLICIT, PN), PN, SOURCE6)
    assert (solicited is None) is (failure is None)


# -- agents on real etcd -------------------------------------------------------------------------


async def _agent(ipam: IPAM, pn_id: str, name: str) -> Agent:
    agent = Agent(ipam, AgentConfig(interfaces=(("eth-test", pn_id),), agent_id=name))
    # No sockets: the responder over the agent's own view only.
    agent.dhcp = agent.dhcp4_responder(await ipam.network_view([pn_id]))
    return agent


async def _until(agent: Agent, check: Any, rounds: int = 40) -> None:
    """Wait (bounded) until `check()` holds, one change of the agent's view at a time."""
    assert agent.view is not None
    for _ in range(rounds):
        if check():
            return
        await agent.view.changed(agent.view.revision, 0.25)
    assert check()


def _declined_gauge(agent: Agent) -> float:
    for metric in AgentCollector(agent).collect():
        if metric.name == "ipam_dhcp_declined_addresses":
            return metric.samples[0].value
    raise AssertionError("no ipam_dhcp_declined_addresses")


async def _network(ipam: IPAM, project: str):
    pn = await make_pn(ipam, project, "10.31.0.0/24", "fd00:31::/64")
    ip = await ipam.book(book_in(pn, project, address="10.31.0.5",
                                 resource=Resource.custom(MAC, "vm")))
    return pn, ip


def _discover() -> bytes:
    return dhcp4(MessageType.DISCOVER, MAC)


async def test_a_declined_address_stays_withheld_after_the_agent_restarts(ipam, project):
    pn, _ = await _network(ipam, project)
    first = await _agent(ipam, pn.id, "agent-a")
    try:
        assert first.dhcp is not None
        assert await first.dhcp.handle(decline4("10.31.0.5", server="10.31.0.254"),
                                       pn.id) is None
        [recorded] = await ipam.list_declines(REGION, pn.id)
        assert (recorded.mac_address, recorded.address, recorded.agent) == (
            MAC, "10.31.0.5", "agent-a")
    finally:
        await first.close()
    restarted = await _agent(ipam, pn.id, "agent-a")  # a new view over the same etcd
    try:
        assert restarted.dhcp is not None
        assert restarted.view is not None and restarted.view.declined(pn.id, MAC, "10.31.0.5")
        assert await restarted.dhcp.handle(_discover(), pn.id) is None
        assert restarted.dhcp.counters.withheld == 1 and _declined_gauge(restarted) == 1
    finally:
        await restarted.close()


async def test_a_second_agent_withholds_the_address_and_offers_it_again_once_cleared(
        etcd_single, key_prefix, ipam, project):
    pn, _ = await _network(ipam, project)
    other_ipam = await IPAM.connect(etcd_single.endpoints, prefix=key_prefix)
    a = await _agent(ipam, pn.id, "agent-a")
    b = await _agent(other_ipam, pn.id, "agent-b")
    try:
        assert a.dhcp is not None and b.dhcp is not None and b.view is not None
        offer = await b.dhcp.handle(_discover(), pn.id)
        assert offer is not None and decode4(offer.payload).yiaddr == "10.31.0.5"
        await a.dhcp.handle(decline4("10.31.0.5", server="10.31.0.254"), pn.id)
        await _until(b, lambda: b.view.declined(pn.id, MAC, "10.31.0.5"))
        assert await b.dhcp.handle(_discover(), pn.id) is None
        assert (b.dhcp.counters.withheld, b.dhcp.counters.declines) == (1, 0)
        # A DECLINE the second agent receives too (a retransmission) costs etcd nothing.
        await b.dhcp.handle(decline4("10.31.0.5", server="10.31.0.254"), pn.id)
        assert [d.agent for d in await ipam.list_declines(REGION, pn.id)] == ["agent-a"]

        cleared = await ipam.clear_declines(REGION, pn.id, MAC)
        assert [d.address for d in cleared] == ["10.31.0.5"]
        await _until(b, lambda: not b.view.declined(pn.id, MAC, "10.31.0.5"))
        offer = await b.dhcp.handle(_discover(), pn.id)
        assert offer is not None and decode4(offer.payload).yiaddr == "10.31.0.5"
    finally:
        await a.close()
        await b.close()
        await other_ipam.close()


async def test_a_dhcp6_decline_holds_on_another_agent(etcd_single, key_prefix, ipam,
                                                      project):
    pn, _ = await _network(ipam, project)
    ip6 = await ipam.book(book_in(pn, project, is_ipv6=True,
                                  resource=Resource.custom(MAC, "vm")))
    address6 = ip6.address.split("/")[0]
    other_ipam = await IPAM.connect(etcd_single.endpoints, prefix=key_prefix)
    a = await _agent(ipam, pn.id, "agent-a")
    b = await _agent(other_ipam, pn.id, "agent-b")
    try:
        assert a.view is not None and b.view is not None
        dhcp6_a = Dhcp6Responder(a.view, record_decline=a.record_decline)
        dhcp6_b = Dhcp6Responder(b.view, record_decline=b.record_decline)
        reply = await dhcp6_a.handle(dhcp6(Message6.DECLINE, pn.id, address6), pn.id, SOURCE6)
        assert replied6(reply) is Message6.REPLY
        await _until(b, lambda: b.view.declined(pn.id, MAC, address6))
        assert await dhcp6_b.handle(dhcp6(Message6.SOLICIT, pn.id), pn.id, SOURCE6) is None
        assert dhcp6_b.counters.withheld == 1
        [recorded] = await ipam.list_declines(REGION, pn.id)
        assert (recorded.is_ipv6, recorded.agent) == (True, "agent-a")
    finally:
        await a.close()
        await b.close()
        await other_ipam.close()
