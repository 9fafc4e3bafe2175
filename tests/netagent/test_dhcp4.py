"""DHCPv4 answers what IPAM holds for a MAC now, and nothing else (pure protocol, fake view).

Requests are built here byte by byte with `struct`, independently of the module's
encoder, so a codec bug cannot cancel itself out; replies are read with `decode` and,
where the exact wire form matters, byte by byte.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lease_views import FakeView

from allocator.contract import Lease, NetworkInfo, SubnetInfo
from netagent.dhcp4 import (
    BROADCAST_FLAG,
    BookUnknown,
    Dhcp4Config,
    Dhcp4Packet,
    Dhcp4Responder,
    MalformedPacket,
    MessageType,
    Reply,
    UnknownMac,
    decode,
    encode,
)

PN, OTHER_PN = "pn-web", "pn-db"
MAC, OTHER_MAC, UNKNOWN_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
ADDRESS, OTHER_ADDRESS = "10.9.0.5", "10.9.0.6"
SERVER, GATEWAY = "10.9.0.254", "10.9.0.1"  # SubnetInfo.of: offsets size-2 and 1
XID = 0x1234ABCD

# Option codes, spelled out so the test does not borrow the module's table.
MASK, ROUTER, DNS, HOST_NAME, DOMAIN = 1, 3, 6, 12, 15
REQUESTED, LEASE_TIME, OVERLOAD, MESSAGE_TYPE, SERVER_ID = 50, 51, 52, 53, 54
T1, T2, CLIENT_ID, PARAMETERS = 58, 59, 61, 55


def network(pn_id: str = PN, name: str = "Web", cidr: str = "10.9.0.0/24",
            dhcp_enabled: bool = True) -> NetworkInfo:
    return NetworkInfo(pn_id, name, dhcp_enabled,
                       (SubnetInfo.of(f"{pn_id}-v4", cidr),
                        SubnetInfo.of(f"{pn_id}-v6", "fd00:9::/64")))


def lease(address: str = ADDRESS, mac: str | None = MAC, name: str | None = "web-1",
          pn_id: str = PN, is_ipv6: bool = False) -> Lease:
    return Lease(f"ip-{address}", pn_id, address, 24, is_ipv6, mac, name, ())


def packed(address: str) -> bytes:
    return bytes(int(part) for part in address.split("."))


def client_packet(message_type: int, mac: str = MAC, *, ciaddr: str = "0.0.0.0",
                  giaddr: str = "0.0.0.0", flags: int = 0, hops: int = 0, op: int = 1,
                  htype: int = 1, hlen: int = 6, cookie: bytes = b"\x63\x82\x53\x63",
                  options: Sequence[tuple[int, bytes]] = (), end: bool = True) -> bytes:
    """A client's datagram, laid out by hand (RFC 2131 figure 1); message type first."""
    chaddr = bytes.fromhex(mac.replace(":", "")).ljust(16, b"\x00")
    header = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", op, htype, hlen, hops, XID, 3, flags,
                         packed(ciaddr), bytes(4), bytes(4), packed(giaddr), chaddr,
                         b"", b"")
    wire = [header, cookie, bytes((MESSAGE_TYPE, 1, message_type))]
    wire += [bytes((code, len(value))) + value for code, value in options]
    return b"".join(wire) + (b"\xff" if end else b"")


def discover(mac: str = MAC, **kw: Any) -> bytes:
    return client_packet(1, mac, options=[(PARAMETERS, bytes((1, 3, 6, 15, 12)))], **kw)


def request(address: str = ADDRESS, mac: str = MAC, server: str | None = SERVER,
            **kw: Any) -> bytes:
    """A REQUEST in the SELECTING state (with a server id) or INIT-REBOOT (without)."""
    options = [(REQUESTED, packed(address))]
    if server is not None:
        options.append((SERVER_ID, packed(server)))
    return client_packet(3, mac, options=options, **kw)


def renewal(address: str = ADDRESS, mac: str = MAC, **kw: Any) -> bytes:
    """A REQUEST in the RENEWING state: the address in ciaddr, no option 50 nor 54."""
    return client_packet(3, mac, ciaddr=address, **kw)


def decline(address: str = ADDRESS, mac: str = MAC, server: str = SERVER) -> bytes:
    return client_packet(4, mac, options=[(REQUESTED, packed(address)),
                                          (SERVER_ID, packed(server))])


def release(address: str = ADDRESS, mac: str = MAC) -> bytes:
    return client_packet(7, mac, ciaddr=address, options=[(SERVER_ID, packed(SERVER))])


def inform(address: str = "10.9.0.77", mac: str = MAC) -> bytes:
    return client_packet(8, mac, ciaddr=address)


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


LEASE_OPTIONS = {
    SERVER_ID: packed(SERVER),
    MASK: packed("255.255.255.0"),
    ROUTER: packed(GATEWAY),
    DNS: packed(SERVER),
    DOMAIN: b"web.internal",
    LEASE_TIME: u32(3600),
    T1: u32(30),
    T2: u32(52),
    HOST_NAME: b"web-1",
}
NETWORK_OPTIONS = {code: value for code, value in LEASE_OPTIONS.items()
                   if code not in (LEASE_TIME, T1, T2, HOST_NAME)}


def responder(view: FakeView | None = None, config: Dhcp4Config | None = None,
              book_unknown: BookUnknown | None = None) -> Dhcp4Responder:
    view = view or FakeView([network()], [lease()])
    return Dhcp4Responder(view, config, book_unknown, record_decline=view.record_decline)


def answer(reply: Reply | None, xid: int = XID) -> Dhcp4Packet:
    assert reply is not None
    packet = decode(reply.payload)
    assert (packet.op, packet.xid) == (2, xid)
    return packet


BROADCAST = ("255.255.255.255", 68, True)


def where(reply: Reply | None) -> tuple[str, int, bool]:
    assert reply is not None
    return reply.address, reply.port, reply.broadcast


# -- DORA -------------------------------------------------------------------------------------


async def test_dora_offers_and_acks_the_address_attached_to_the_mac():
    dhcp = responder()

    offer_reply = await dhcp.handle(discover(), PN)
    offer = answer(offer_reply)
    assert offer.message_type is MessageType.OFFER and where(offer_reply) == BROADCAST
    assert (offer.yiaddr, offer.ciaddr, offer.siaddr, offer.giaddr) == (
        ADDRESS, "0.0.0.0", "0.0.0.0", "0.0.0.0")
    assert (offer.mac, offer.flags, offer.hops) == (MAC, 0, 0)
    assert dict(offer.options) == LEASE_OPTIONS
    # The wire form, byte by byte: message type first, END last (longer than 300 bytes,
    # so no padding).
    assert offer_reply.payload[236:] == (
        b"\x63\x82\x53\x63" + bytes((53, 1, 2, 54, 4, 10, 9, 0, 254, 1, 4, 255, 255, 255, 0,
                                     3, 4, 10, 9, 0, 1, 6, 4, 10, 9, 0, 254, 15, 12))
        + b"web.internal" + bytes((51, 4)) + u32(3600) + bytes((58, 4)) + u32(30)
        + bytes((59, 4)) + u32(52) + bytes((12, 5)) + b"web-1" + b"\xff"
    )

    ack_reply = await dhcp.handle(request(), PN)
    ack = answer(ack_reply)
    assert ack.message_type is MessageType.ACK and where(ack_reply) == BROADCAST
    assert (ack.yiaddr, ack.ciaddr, ack.mac) == (ADDRESS, "0.0.0.0", MAC)
    assert dict(ack.options) == LEASE_OPTIONS
    assert (dhcp.counters.offers, dhcp.counters.acks) == (1, 1)


async def test_renewal_is_acked_by_unicast_to_the_client_address():
    dhcp = responder()
    reply = await dhcp.handle(renewal(), PN)
    ack = answer(reply)
    assert ack.message_type is MessageType.ACK and where(reply) == (ADDRESS, 68, False)
    assert (ack.yiaddr, ack.ciaddr) == (ADDRESS, ADDRESS)
    assert dict(ack.options) == LEASE_OPTIONS


async def test_broadcast_flag_is_echoed_and_the_reply_broadcast():
    reply = await responder().handle(discover(flags=BROADCAST_FLAG), PN)
    assert answer(reply).flags == BROADCAST_FLAG and where(reply) == BROADCAST


async def test_timers_come_from_the_config():
    dhcp = responder(config=Dhcp4Config(lease_time=600, renewal_time=100, rebinding_time=500))
    options = answer(await dhcp.handle(discover(), PN)).options
    assert (options[LEASE_TIME], options[T1], options[T2]) == (u32(600), u32(100), u32(500))


@pytest.mark.parametrize("timers", [
    {"renewal_time": 0}, {"renewal_time": 60, "rebinding_time": 60},
    {"rebinding_time": 3600}, {"lease_time": 2**32 - 1}, {"renewal_time": -1},
])
def test_timers_out_of_order_are_refused(timers):
    with pytest.raises(ValueError, match="T1 < T2 < lease time"):
        Dhcp4Config(**timers)


@pytest.mark.parametrize("pn_name, resource_name", [
    ("my web", "web 1"), ("web\n", "web-1\n"), ("wéb", "wéb-1"), ("web", "a." * 3 + "b"),
    ("-web", "web-1-"), ("x" * 64, "y" * 64),
])
async def test_a_name_that_is_not_a_dns_label_is_not_sent(pn_name, resource_name):
    view = FakeView([network(name=pn_name)], [lease(name=resource_name)])
    options = answer(await responder(view).handle(discover(), PN)).options
    assert HOST_NAME not in options
    assert DOMAIN not in options or pn_name == "web"
    assert options[SERVER_ID] == packed(SERVER)


async def test_an_unnamed_resource_gets_no_host_name():
    view = FakeView([network()], [lease(name=None)])
    options = answer(await responder(view).handle(discover(), PN)).options
    assert dict(options) == {k: v for k, v in LEASE_OPTIONS.items() if k != HOST_NAME}


async def test_a_lease_outside_the_network_subnets_is_not_offered():
    dhcp = responder(FakeView([network()], [lease(address="192.168.1.5")]))
    assert await dhcp.handle(discover(), PN) is None
    assert (dhcp.counters.offers, dhcp.counters.unserved) == (0, 1)


# -- REQUEST: ACK exactly what IPAM holds, NAK the rest ------------------------------------------


async def test_request_after_the_ip_moved_to_another_mac_is_naked():
    view = FakeView([network()], [lease()])
    dhcp = responder(view)
    assert answer(await dhcp.handle(discover(), PN)).yiaddr == ADDRESS
    view.detach(PN, MAC)
    view.attach(lease(mac=OTHER_MAC, name="web-2"))

    reply = await dhcp.handle(renewal(), PN)
    nak = answer(reply)
    # RFC 2131 4.1: a NAK is broadcast, even to a client that has an address.
    assert nak.message_type is MessageType.NAK and where(reply) == BROADCAST
    assert (nak.yiaddr, nak.ciaddr) == ("0.0.0.0", "0.0.0.0")
    assert dict(nak.options) == {SERVER_ID: packed(SERVER)}
    # RFC 1542 2.1: a short reply is padded to the 300 bytes of a BOOTP message.
    assert reply.payload[240:] == bytes((53, 1, 6, 54, 4, 10, 9, 0, 254, 255)).ljust(60, b"\0")
    # ...and the new holder is ACKed for it.
    assert answer(await dhcp.handle(renewal(mac=OTHER_MAC), PN)).message_type is MessageType.ACK
    assert (dhcp.counters.naks, dhcp.counters.acks) == (1, 1)


@pytest.mark.parametrize("datagram", [
    request(OTHER_ADDRESS),                    # SELECTING, not the address held
    request(OTHER_ADDRESS, server=None),       # INIT-REBOOT, not the address held
    request("192.168.1.5", server=None),       # INIT-REBOOT from another network
    renewal(OTHER_ADDRESS),                    # RENEWING an address moved away
    request(mac=OTHER_MAC),                    # another MAC asks for this one's address
])
async def test_request_for_an_address_ipam_does_not_hold_for_the_mac_is_naked(datagram):
    dhcp = responder()
    nak = answer(await dhcp.handle(datagram, PN))
    assert nak.message_type is MessageType.NAK and nak.yiaddr == "0.0.0.0"
    assert dict(nak.options) == {SERVER_ID: packed(SERVER)}
    assert dhcp.counters.naks == 1


async def test_request_after_detach_is_naked():
    view = FakeView([network()], [lease()])
    dhcp = responder(view)
    view.detach(PN, MAC)
    assert answer(await dhcp.handle(request(server=None), PN)).message_type is MessageType.NAK


async def test_request_for_another_server_is_ignored():
    dhcp = responder()
    assert await dhcp.handle(request(server="10.9.0.253"), PN) is None
    assert (dhcp.counters.other_server, dhcp.counters.naks, dhcp.counters.acks) == (1, 0, 0)


# -- unknown MACs -----------------------------------------------------------------------------


async def test_unknown_mac_is_ignored_by_default():
    dhcp = responder()
    assert await dhcp.handle(discover(UNKNOWN_MAC), PN) is None
    assert (dhcp.counters.unknown_ignored, dhcp.counters.offers) == (1, 0)


async def test_unknown_mac_is_booked_then_offered_what_was_booked():
    booked = lease(address="10.9.0.42", mac=UNKNOWN_MAC, name=None)
    view = FakeView([network(), network(OTHER_PN, "db", "10.8.0.0/24")], [lease()])
    calls: list[tuple[str, str]] = []

    async def book(pn_id: str, mac: str) -> Lease:
        calls.append((pn_id, mac))
        await asyncio.sleep(0)  # a real commit suspends; the offer waits for it
        view.attach(booked)
        return booked

    dhcp = responder(view, config=Dhcp4Config(unknown_mac={PN: UnknownMac.BOOK}),
                     book_unknown=book)
    offer = answer(await dhcp.handle(discover(UNKNOWN_MAC), PN))
    assert calls == [(PN, UNKNOWN_MAC)]
    assert offer.message_type is MessageType.OFFER and offer.yiaddr == "10.9.0.42"
    assert (dhcp.counters.unknown_booked, dhcp.counters.offers) == (1, 1)
    # The booking is attached now: the REQUEST that follows finds it in the view.
    assert answer(await dhcp.handle(request("10.9.0.42", UNKNOWN_MAC), PN)).message_type \
        is MessageType.ACK
    # The policy is per network: the other one still ignores unknown MACs.
    assert await dhcp.handle(discover(UNKNOWN_MAC), OTHER_PN) is None
    assert calls == [(PN, UNKNOWN_MAC)] and dhcp.counters.unknown_ignored == 1


async def test_a_known_mac_is_never_booked():
    async def book(pn_id: str, mac: str) -> Lease:
        raise AssertionError("booked a MAC that holds an address")

    dhcp = responder(config=Dhcp4Config(unknown_mac={PN: UnknownMac.BOOK}), book_unknown=book)
    assert answer(await dhcp.handle(discover(), PN)).yiaddr == ADDRESS


async def _fails(pn_id: str, mac: str) -> Lease | None:
    raise ConnectionError("etcd unreachable")


async def _books_nothing(pn_id: str, mac: str) -> Lease | None:
    return None


async def _books_ipv6(pn_id: str, mac: str) -> Lease | None:
    return lease(address="fd00:9::5", mac=mac, is_ipv6=True)


async def _books_in_another_network(pn_id: str, mac: str) -> Lease | None:
    return lease(address="10.8.0.5", mac=mac, pn_id=OTHER_PN)


async def _books_for_another_mac(pn_id: str, mac: str) -> Lease | None:
    return lease(address="10.9.0.42", mac=OTHER_MAC)


@pytest.mark.parametrize("book", [_fails, _books_nothing, _books_ipv6,
                                  _books_in_another_network, _books_for_another_mac])
async def test_a_failed_booking_offers_nothing(book):
    dhcp = responder(config=Dhcp4Config(unknown_mac={PN: UnknownMac.BOOK}), book_unknown=book)
    assert await dhcp.handle(discover(UNKNOWN_MAC), PN) is None
    assert (dhcp.counters.booking_failed, dhcp.counters.unknown_booked,
            dhcp.counters.offers) == (1, 0, 0)


def test_policies_may_be_spelt_as_strings_but_not_misspelt():
    assert Dhcp4Config(unknown_mac={PN: "book"}).policy(PN) is UnknownMac.BOOK
    assert Dhcp4Config(unknown_mac={PN: "book"}).policy(OTHER_PN) is UnknownMac.IGNORE
    with pytest.raises(ValueError, match="'boook' is not a valid UnknownMac"):
        Dhcp4Config(unknown_mac={PN: "boook"})


def test_a_book_policy_needs_a_booking_callback():
    with pytest.raises(ValueError, match="no book_unknown"):
        Dhcp4Responder(FakeView([network()]), Dhcp4Config(unknown_mac={PN: UnknownMac.BOOK}))


# -- relays -----------------------------------------------------------------------------------


async def test_relayed_discover_is_answered_to_the_relay_of_the_network_holding_giaddr():
    view = FakeView([network(), network(OTHER_PN, "db", "10.8.0.0/24")],
                    [lease(), lease("10.8.0.5", name="db-1", pn_id=OTHER_PN)])
    dhcp = responder(view)
    reply = await dhcp.handle(discover(giaddr="10.8.0.2", hops=1), None)
    offer = answer(reply)
    assert where(reply) == ("10.8.0.2", 67, False)
    assert (offer.yiaddr, offer.giaddr) == ("10.8.0.5", "10.8.0.2")
    assert offer.options[SERVER_ID] == packed("10.8.0.254")
    assert offer.options[DOMAIN] == b"db.internal" and offer.options[HOST_NAME] == b"db-1"
    # The relay's address decides, not the interface it came in on.
    assert answer(await dhcp.handle(discover(giaddr="10.8.0.2"), PN)).yiaddr == "10.8.0.5"
    ack_reply = await dhcp.handle(renewal("10.8.0.5", giaddr="10.8.0.2"), None)
    assert answer(ack_reply).ciaddr == "10.8.0.5" and where(ack_reply) == ("10.8.0.2", 67, False)


async def test_relayed_nak_goes_to_the_relay_with_the_broadcast_flag():
    reply = await responder().handle(request(OTHER_ADDRESS, giaddr=GATEWAY), None)
    nak = answer(reply)
    assert nak.message_type is MessageType.NAK and where(reply) == (GATEWAY, 67, False)
    assert nak.flags == BROADCAST_FLAG and nak.giaddr == GATEWAY


async def test_relay_address_in_no_served_network_gets_no_answer():
    dhcp = responder()
    assert await dhcp.handle(discover(giaddr="172.16.0.1"), None) is None
    assert dhcp.counters.unserved == 1


async def test_relay_address_several_networks_hold_is_refused_unless_the_interface_says():
    # Two VPCs may reuse a range: only the receiving interface's network can settle it.
    view = FakeView([network(), network(OTHER_PN, "db")],
                    [lease(), lease("10.9.0.7", name="db-1", pn_id=OTHER_PN)])
    dhcp = responder(view)
    assert await dhcp.handle(discover(giaddr=GATEWAY), None) is None
    assert dhcp.counters.unserved == 1
    assert answer(await dhcp.handle(discover(giaddr=GATEWAY), OTHER_PN)).yiaddr == "10.9.0.7"


# -- DECLINE, RELEASE, INFORM -------------------------------------------------------------------


async def test_declined_address_is_never_offered_again_to_that_mac_until_cleared():
    view = FakeView([network()], [lease(), lease(OTHER_ADDRESS, mac=OTHER_MAC)])
    dhcp = responder(view)
    assert await dhcp.handle(decline(), PN) is None
    assert view.withheld == {(PN, MAC, ADDRESS)}  # recorded (in IPAM, for every agent)
    assert dhcp.counters.declines == 1

    assert await dhcp.handle(discover(), PN) is None
    assert dhcp.counters.withheld == 1
    assert answer(await dhcp.handle(request(server=None), PN)).message_type is MessageType.NAK
    # Another MAC is not concerned.
    assert answer(await dhcp.handle(discover(OTHER_MAC), PN)).yiaddr == OTHER_ADDRESS

    view.withheld.clear()  # an operator cleared it: the view shows it gone
    assert answer(await dhcp.handle(discover(), PN)).yiaddr == ADDRESS


async def test_a_new_address_for_a_mac_that_declined_is_offered():
    view = FakeView([network()], [lease()])
    dhcp = responder(view)
    await dhcp.handle(decline(), PN)
    view.attach(lease(OTHER_ADDRESS))
    assert answer(await dhcp.handle(discover(), PN)).yiaddr == OTHER_ADDRESS


async def test_a_decline_recorded_by_another_agent_is_withheld_here():
    view = FakeView([network()], [lease()])
    dhcp = responder(view)
    view.withheld.add((PN, MAC, ADDRESS))  # the watch brought another agent's record
    assert await dhcp.handle(discover(MAC.upper()), PN) is None
    assert (dhcp.counters.withheld, dhcp.counters.declines) == (1, 0)


async def test_declining_an_address_ipam_does_not_hold_for_the_mac_records_nothing():
    view = FakeView([network()], [lease()])
    dhcp = responder(view)
    assert await dhcp.handle(decline(OTHER_ADDRESS), PN) is None
    assert await dhcp.handle(decline(mac=OTHER_MAC), PN) is None
    assert dhcp.counters.declines == 2 and view.withheld == set()
    assert answer(await dhcp.handle(discover(), PN)).yiaddr == ADDRESS


async def test_a_decline_sent_to_another_server_is_ignored():
    view = FakeView([network()], [lease()])
    dhcp = responder(view)
    assert await dhcp.handle(decline(server="10.9.0.253"), PN) is None
    assert view.withheld == set()
    assert (dhcp.counters.declines, dhcp.counters.other_server) == (0, 1)


async def test_release_is_accepted_silently_and_the_address_stays_the_macs():
    dhcp = responder()
    assert await dhcp.handle(release(), PN) is None
    assert dhcp.counters.releases == 1
    assert answer(await dhcp.handle(discover(), PN)).yiaddr == ADDRESS


async def test_inform_is_acked_with_the_configuration_only_by_unicast():
    dhcp = responder()
    reply = await dhcp.handle(inform(), PN)
    ack = answer(reply)
    assert ack.message_type is MessageType.ACK and where(reply) == ("10.9.0.77", 68, False)
    assert (ack.yiaddr, ack.ciaddr) == ("0.0.0.0", "10.9.0.77")
    assert dict(ack.options) == NETWORK_OPTIONS
    assert dhcp.counters.informs == 1


async def test_inform_from_an_address_outside_the_network_gets_no_answer():
    dhcp = responder()
    assert await dhcp.handle(inform("192.168.1.9"), PN) is None
    assert (dhcp.counters.informs, dhcp.counters.unserved) == (0, 1)


# -- networks not served ----------------------------------------------------------------------


def _served(view: FakeView, pn_id: str | None, relay: str = "0.0.0.0") -> tuple:
    return view, pn_id, relay


DHCP_OFF = FakeView([network(dhcp_enabled=False)], [lease()])
SERVED = FakeView([network()], [lease()])
IPV6_ONLY = FakeView([replace(network(), subnets=network().subnets[1:])], [lease()])


@pytest.mark.parametrize("view, pn_id, relay", [
    _served(DHCP_OFF, PN),
    _served(DHCP_OFF, None, relay=GATEWAY),  # relayed from a network with DHCP off
    _served(SERVED, "pn-not-served"),
    _served(SERVED, None),  # not relayed, and no network on the interface
    _served(IPV6_ONLY, PN),
], ids=["dhcp off", "relayed, dhcp off", "not served", "no network", "ipv6 only"])
async def test_a_network_not_served_or_with_dhcp_off_gets_no_answer(view, pn_id, relay):
    dhcp = responder(view)
    for datagram in (discover(giaddr=relay), request(giaddr=relay), renewal(giaddr=relay),
                     inform(), decline(), release()):
        assert await dhcp.handle(datagram, pn_id) is None
    assert dhcp.counters.as_dict() == {**{k: 0 for k in dhcp.counters.as_dict()},
                                       "unserved": 6}


# -- what is dropped --------------------------------------------------------------------------


def _with_header_byte(datagram: bytes, offset: int, value: int) -> bytes:
    return datagram[:offset] + bytes((value,)) + datagram[offset + 1:]


BAD_DATAGRAMS = {
    "empty": b"",
    "truncated header": discover()[:100],
    "truncated before the cookie": discover()[:238],
    "wrong magic cookie": discover(cookie=b"\x63\x82\x53\x64"),
    "a BOOTREPLY": discover(op=2),
    "op 0": discover(op=0),
    "not Ethernet": discover(htype=6),
    "a 16-byte hardware address": discover(hlen=16),
    "an option running past the end": discover()[:-1] + bytes((CLIENT_ID, 7, 1, 2, 3)),
    "a lone option code": discover()[:-1] + bytes((CLIENT_ID,)),
    "option overload": client_packet(1, options=[(OVERLOAD, b"\x03")]),
    "no message type": discover()[:240] + b"\xff",
    "two message types": client_packet(1, options=[(MESSAGE_TYPE, b"\x03")]),
    "message type 0": client_packet(0),
    "message type 9": client_packet(9),
    "a long message type": discover()[:240] + bytes((MESSAGE_TYPE, 2, 1, 1, 255)),
    "a short requested address": client_packet(3, options=[(REQUESTED, b"\x0a\x09\x00")]),
    "two requested addresses": client_packet(3, options=[(REQUESTED, packed(ADDRESS)),
                                                         (REQUESTED, packed(OTHER_ADDRESS))]),
    "a server's OFFER": client_packet(2),
    "a server's ACK": client_packet(5, ciaddr=ADDRESS),
    "a server's NAK": client_packet(6),
    "a REQUEST naming no address": client_packet(3),
    "a DECLINE naming no address": client_packet(4, options=[(SERVER_ID, packed(SERVER))]),
    "an INFORM without ciaddr": client_packet(8),
    "a relay loop": discover(giaddr=GATEWAY, hops=17),
    "oversized": discover()[:-1] + bytes((CLIENT_ID, 255)) + bytes(255) * 6 + b"\xff",
    "random bytes": bytes(range(256)) * 2,
}


@pytest.mark.parametrize("datagram", BAD_DATAGRAMS.values(), ids=BAD_DATAGRAMS.keys())
async def test_a_bad_datagram_is_dropped_and_counted(datagram):
    dhcp = responder()
    assert await dhcp.handle(datagram, PN) is None
    assert dhcp.counters.as_dict() == {**{k: 0 for k in dhcp.counters.as_dict()}, "dropped": 1}


@pytest.mark.parametrize("name", ["empty", "truncated header", "wrong magic cookie",
                                  "not Ethernet", "an option running past the end",
                                  "a lone option code", "option overload", "no message type",
                                  "two message types", "message type 9", "oversized"])
def test_the_codec_names_why_a_datagram_is_not_dhcp(name):
    with pytest.raises(MalformedPacket):
        decode(BAD_DATAGRAMS[name])


def test_the_codec_refuses_to_encode_an_option_longer_than_255_bytes():
    packet = Dhcp4Packet(op=2, message_type=MessageType.ACK, xid=XID, chaddr=bytes(6),
                         options={DOMAIN: b"x" * 256})
    with pytest.raises(ValueError, match="option 15 is 256 bytes"):
        encode(packet)


async def test_padding_and_a_missing_end_option_are_tolerated():
    dhcp = responder()
    padded = discover()[:-1] + b"\x00\x00\x00\xff" + bytes(60)  # PADs, END, then zeros
    assert answer(await dhcp.handle(padded, PN)).yiaddr == ADDRESS
    assert answer(await dhcp.handle(discover(end=False), PN)).yiaddr == ADDRESS


async def test_a_real_windows_discover_is_offered():
    # A DISCOVER captured from a Windows client (dpkt's test vector): client id,
    # requested address, host name, vendor class and a parameter request list.
    captured = bytes.fromhex(
        "01010600" "ad53c863" "b887" "8000" + "00" * 16     # op..flags (broadcast), addresses
        + "00025582f3a6" + "00" * 10 + "00" * 192 + "63825363"  # chaddr, sname, file, cookie
        + "350101" "fb0101" "3d070100025582f3a6" "32040a000165"  # DISCOVER, 251, 61, 50
        + "0c09" + b"Guinevere".hex() + "3c08" + b"MSFT 5.0".hex()  # host name, vendor class
        + "370a010f03062c2e2f1f212b" + "ff" + "00" * 5  # parameter request list, END, pad
    )
    mac = "00:02:55:82:f3:a6"
    dhcp = responder(FakeView([network()], [lease(mac=mac)]))
    reply = await dhcp.handle(captured, PN)
    offer = answer(reply, xid=0xAD53C863)
    assert offer.flags == BROADCAST_FLAG
    assert offer.mac == mac and offer.yiaddr == ADDRESS and where(reply) == BROADCAST


# -- fuzzing: nothing a client sends raises, and every datagram is counted once -----------------


def _counted(dhcp: Dhcp4Responder) -> int:
    return sum(dhcp.counters.as_dict().values())


VALID = [discover(), request(), renewal(), request(server=None), decline(), release(),
         inform(), discover(giaddr=GATEWAY, hops=1), discover(UNKNOWN_MAC)]


@settings(max_examples=1000, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(datagram=st.one_of(
    st.binary(max_size=700),
    # An Ethernet BOOTREQUEST header and the cookie, then random options: the option
    # parser sees random bytes, not only the length check.
    st.builds(lambda header, options: bytes((1, 1, 6, 0)) + header + b"\x63\x82\x53\x63"
              + options, st.binary(min_size=232, max_size=232), st.binary(max_size=400)),
))
async def test_random_bytes_never_raise_and_are_dropped(datagram):
    dhcp = responder()
    reply = await dhcp.handle(datagram, PN)
    try:
        decode(datagram)
    except MalformedPacket:
        assert reply is None and dhcp.counters.dropped == 1
    assert _counted(dhcp) == 1


_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 400), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, 400), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 400), st.integers(0, 255)),
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(original=st.sampled_from(VALID), mutations=st.lists(_mutation, min_size=1, max_size=6),
       tail=st.binary(max_size=40), relay_listener=st.booleans())
async def test_mutated_requests_never_raise_and_every_one_is_counted_once(
        original, mutations, tail, relay_listener):
    datagram = bytearray(original)
    for kind, at, value in mutations:
        at = min(at, len(datagram))
        if kind == "flip" and at < len(datagram):
            datagram[at] = value
        elif kind == "cut":
            del datagram[at:]
        elif kind == "insert":
            datagram[at:at] = bytes((value,))
    datagram += tail
    dhcp = responder()
    reply = await dhcp.handle(bytes(datagram), None if relay_listener else PN)
    assert _counted(dhcp) == 1
    if reply is not None:
        sent = decode(reply.payload)
        assert sent.op == 2 and sent.message_type in (
            MessageType.OFFER, MessageType.ACK, MessageType.NAK)
        assert reply.port in (67, 68)
