"""DHCPv6 answers what IPAM holds for a MAC now, and takes back the rest (pure protocol, fake view).

Client messages are built here byte by byte with `struct`, independently of the module's
encoder, so a codec bug cannot cancel itself out; replies are read with `decode` and,
where the exact wire form matters, byte by byte. The last test runs Debian's dhclient -6
against the responder in network namespaces.
"""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lease_views import FakeView

from allocator.contract import Lease, NetworkInfo, SubnetInfo
from devcluster import netlab
from netagent.dhcp4 import MalformedPacket
from netagent.dhcp6 import (
    Dhcp6Config,
    Dhcp6Message,
    Dhcp6Responder,
    MessageType,
    RelayMessage,
    Reply,
    decode,
    encode,
    encode_domain_name,
    network_duid,
)

PN, OTHER_PN = "pn-web", "pn-db"
MAC, OTHER_MAC, UNKNOWN_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
ADDRESS, OTHER_ADDRESS = "fd00:9::5", "fd00:9::6"
SERVER = "fd00:9::ffff:ffff:ffff:fffe"  # SubnetInfo.of: offset size-2
XID, IAID = 0x12ABCD, 0x0A0B0C0D
RELAY = "fe80::1%eth1"

# Option codes and status codes, spelled out so the test does not borrow the module's table.
CLIENTID, SERVERID, IA_NA, IA_TA, IAADDR, ORO, PREFERENCE, ELAPSED = 1, 2, 3, 4, 5, 6, 7, 8
RELAY_MSG, STATUS, RAPID_COMMIT, INTERFACE_ID, DNS, DOMAINS, IA_PD = 9, 13, 14, 18, 23, 24, 25
FQDN, LINKLAYER = 39, 79
SUCCESS, NO_ADDRS_AVAIL, NO_BINDING, NOT_ON_LINK, NO_PREFIX_AVAIL = 0, 2, 3, 4, 6
SOLICIT, ADVERTISE, REQUEST, CONFIRM, RENEW, REBIND, REPLY = 1, 2, 3, 4, 5, 6, 7
RELEASE, DECLINE, INFORMATION_REQUEST, RELAY_FORW, RELAY_REPL = 8, 9, 11, 12, 13


def network(pn_id: str = PN, name: str = "Web", cidr6: str = "fd00:9::/64",
            dhcp_enabled: bool = True) -> NetworkInfo:
    return NetworkInfo(pn_id, name, dhcp_enabled,
                       (SubnetInfo.of(f"{pn_id}-v4", "10.9.0.0/24"),
                        SubnetInfo.of(f"{pn_id}-v6", cidr6)))


def lease(address: str = ADDRESS, mac: str | None = MAC, name: str | None = "web-1",
          pn_id: str = PN) -> Lease:
    return Lease(f"ip-{address}", pn_id, address, 64, True, mac, name, ())


# -- client messages, by hand (RFC 8415 sections 8, 9 and 21) ------------------------------------


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def link_local(mac: str) -> str:
    """The modified EUI-64 link-local address of `mac` (RFC 4291 appendix A)."""
    b = mac_bytes(mac)
    interface_id = bytes((b[0] ^ 2,)) + b[1:3] + b"\xff\xfe" + b[3:]
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + interface_id))


SOURCE = link_local(MAC)  # fe80::ff:fe00:a


def packed(address: str) -> bytes:
    return ipaddress.IPv6Address(address).packed


def opt(code: int, value: bytes = b"") -> bytes:
    return struct.pack("!HH", code, len(value)) + value


def duid_ll(mac: str = MAC, hardware: int = 1) -> bytes:
    return struct.pack("!HH", 3, hardware) + mac_bytes(mac)


def duid_llt(mac: str = MAC) -> bytes:
    return struct.pack("!HHI", 1, 1, 0x2A2B2C2D) + mac_bytes(mac)


DUID_EN = struct.pack("!HI", 2, 32473) + b"\x01\x02\x03\x04"  # no MAC in it


def iaaddr(address: str, preferred: int = 0, valid: int = 0) -> bytes:
    return opt(IAADDR, packed(address) + struct.pack("!II", preferred, valid))


def ia_na(*addresses: str, iaid: int = IAID) -> bytes:
    return opt(IA_NA, struct.pack("!III", iaid, 0, 0) + b"".join(map(iaaddr, addresses)))


def ia_ta(*addresses: str, iaid: int = 7) -> bytes:
    return opt(IA_TA, struct.pack("!I", iaid) + b"".join(map(iaaddr, addresses)))


def ia_pd(iaid: int = 8) -> bytes:
    return opt(IA_PD, struct.pack("!III", iaid, 0, 0))


def message(kind: int, *options: bytes, xid: int = XID) -> bytes:
    return struct.pack("!I", kind << 24 | xid) + b"".join(options)


def client_message(kind: int, *options: bytes, client_id: bytes | None = None,
                   mac: str = MAC, server_id: bytes | None = None) -> bytes:
    """`kind` from `mac` (a DUID-LL by default), with elapsed time and ORO as clients send."""
    head = [opt(CLIENTID, client_id if client_id is not None else duid_ll(mac))]
    if server_id is not None:
        head.append(opt(SERVERID, server_id))
    head += [opt(ELAPSED, b"\x00\x00"), opt(ORO, struct.pack("!HH", DNS, DOMAINS))]
    return message(kind, *head, *options)


OURS = network_duid(PN)


def solicit(*ias: bytes, **kw: Any) -> bytes:
    return client_message(SOLICIT, *(ias or (ia_na(),)), **kw)


def request(address: str = ADDRESS, *extra: bytes, **kw: Any) -> bytes:
    kw.setdefault("server_id", OURS)
    return client_message(REQUEST, ia_na(address), *extra, **kw)


def renew(*addresses: str, kind: int = RENEW, **kw: Any) -> bytes:
    if kind == RENEW:
        kw.setdefault("server_id", OURS)
    return client_message(kind, ia_na(*(addresses or (ADDRESS,))), **kw)


def rebind(*addresses: str, **kw: Any) -> bytes:
    return renew(*addresses, kind=REBIND, **kw)


def confirm(*addresses: str, **kw: Any) -> bytes:
    return client_message(CONFIRM, ia_na(*(addresses or (ADDRESS,))), **kw)


def release(address: str = ADDRESS, **kw: Any) -> bytes:
    kw.setdefault("server_id", OURS)
    return client_message(RELEASE, ia_na(address), **kw)


def decline(address: str = ADDRESS, **kw: Any) -> bytes:
    kw.setdefault("server_id", OURS)
    return client_message(DECLINE, ia_na(address), **kw)


def information_request(*options: bytes) -> bytes:
    return message(INFORMATION_REQUEST, opt(CLIENTID, duid_ll()), *options)


def relay_forw(inner: bytes, link: str = "fd00:9::1", peer: str = SOURCE, *options: bytes,
               hops: int = 0) -> bytes:
    return (struct.pack("!BB16s16s", RELAY_FORW, hops, packed(link), packed(peer))
            + b"".join(options) + opt(RELAY_MSG, inner))


# -- reading the answers ------------------------------------------------------------------------


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def status(code: int, text: str) -> bytes:
    return opt(STATUS, struct.pack("!H", code) + text.encode())


DOMAIN_WIRE = b"\x03web\x08internal\x00"
CONFIGURATION = opt(DNS, packed(SERVER)) + opt(DOMAINS, DOMAIN_WIRE)


def given_ia(*iaaddrs: bytes, iaid: int = IAID, t1: int = 30, t2: int = 52) -> bytes:
    return opt(IA_NA, struct.pack("!III", iaid, t1, t2) + b"".join(iaaddrs))


LEASED = iaaddr(ADDRESS, 1800, 3600)


def answer(reply: Reply | None, kind: int, xid: int = XID) -> Dhcp6Message:
    assert reply is not None
    decoded = decode(reply.payload)
    assert isinstance(decoded, Dhcp6Message)
    assert (decoded.message_type, decoded.transaction_id) == (kind, xid)
    return decoded


def body(reply: Reply | None, client_id: bytes | None = None, server_id: bytes = OURS) -> bytes:
    """The reply's options after the client and server identifiers, which are checked."""
    assert reply is not None
    ids = (opt(CLIENTID, client_id or duid_ll()) if client_id != b"" else b"") \
        + opt(SERVERID, server_id)
    assert reply.payload[4:4 + len(ids)] == ids
    return reply.payload[4 + len(ids):]


def responder(view: FakeView | None = None, config: Dhcp6Config | None = None
              ) -> Dhcp6Responder:
    view = view or FakeView([network()], [lease()])
    return Dhcp6Responder(view, config, record_decline=view.record_decline)


def to_client(reply: Reply | None, source: str = SOURCE) -> bool:
    return reply is not None and (reply.address, reply.port) == (source, 546)


def only(dhcp: Dhcp6Responder, **counts: int) -> dict[str, int]:
    """The counters as they must be: `counts`, every other one 0."""
    return {**{k: 0 for k in dhcp.counters.as_dict()}, **counts}


# -- SOLICIT, REQUEST ---------------------------------------------------------------------------


async def test_solicit_is_advertised_the_address_attached_to_the_mac():
    dhcp = responder()
    reply = await dhcp.handle(solicit(), PN, SOURCE)
    answer(reply, ADVERTISE)
    assert to_client(reply)
    # The wire form, byte by byte: ids, preference 255, the IA with T1 30 s, T2 52 s and the
    # address for 1800/3600 s, the DNS server and the search list; nothing else.
    assert reply.payload == (
        bytes((ADVERTISE,)) + XID.to_bytes(3, "big")
        + opt(CLIENTID, duid_ll()) + opt(SERVERID, OURS) + opt(PREFERENCE, b"\xff")
        + opt(IA_NA, u32(IAID) + u32(30) + u32(52)
              + opt(IAADDR, packed(ADDRESS) + u32(1800) + u32(3600)))
        + opt(DNS, packed(SERVER)) + opt(DOMAINS, DOMAIN_WIRE))
    assert dhcp.counters.as_dict() == only(dhcp, advertises=1)


async def test_request_is_replied_the_address_with_the_configured_lifetimes():
    dhcp = responder(config=Dhcp6Config(preferred_lifetime=600, valid_lifetime=900,
                                        renewal_time=100, rebinding_time=500))
    reply = await dhcp.handle(request(), PN, SOURCE)
    answer(reply, REPLY)
    assert to_client(reply)
    assert body(reply) == given_ia(iaaddr(ADDRESS, 600, 900), t1=100, t2=500) + CONFIGURATION
    assert dhcp.counters.as_dict() == only(dhcp, replies=1)


async def test_rapid_commit_solicit_is_replied_at_once_when_allowed():
    dhcp = responder()
    reply = await dhcp.handle(solicit(ia_na(), opt(RAPID_COMMIT)), PN, SOURCE)
    answer(reply, REPLY)
    assert body(reply) == opt(RAPID_COMMIT) + given_ia(LEASED) + CONFIGURATION
    assert dhcp.counters.replies == 1

    cautious = responder(config=Dhcp6Config(rapid_commit=False))
    reply = await cautious.handle(solicit(ia_na(), opt(RAPID_COMMIT)), PN, SOURCE)
    answer(reply, ADVERTISE)
    assert opt(RAPID_COMMIT) not in reply.payload and cautious.counters.advertises == 1


async def test_preference_is_configurable_and_0_is_not_sent():
    reply = await responder(config=Dhcp6Config(preference=0)).handle(solicit(), PN, SOURCE)
    assert body(reply) == given_ia(LEASED) + CONFIGURATION
    reply = await responder(config=Dhcp6Config(preference=7)).handle(solicit(), PN, SOURCE)
    assert body(reply).startswith(opt(PREFERENCE, b"\x07"))


async def test_the_addresses_a_soliciting_client_hints_are_not_answered():
    reply = await responder().handle(solicit(ia_na(OTHER_ADDRESS)), PN, SOURCE)
    assert body(reply) == opt(PREFERENCE, b"\xff") + given_ia(LEASED) + CONFIGURATION


async def test_request_for_another_address_gets_the_macs_and_the_other_with_lifetimes_0():
    dhcp = responder()
    reply = await dhcp.handle(request(OTHER_ADDRESS), PN, SOURCE)
    assert body(reply) == given_ia(LEASED, iaaddr(OTHER_ADDRESS, 0, 0)) + CONFIGURATION
    assert dhcp.counters.replies == 1


async def test_request_from_a_mac_ipam_holds_nothing_for_gets_no_addrs_avail():
    view = FakeView([network()], [lease()])
    dhcp = responder(view)
    answer(await dhcp.handle(solicit(), PN, SOURCE), ADVERTISE)
    view.detach(PN, MAC)  # between the ADVERTISE and the REQUEST
    reply = await dhcp.handle(request(), PN, SOURCE)
    assert body(reply) == opt(IA_NA, struct.pack("!III", IAID, 0, 0)
                              + status(NO_ADDRS_AVAIL, "no address for this client"))
    assert dhcp.counters.as_dict() == only(dhcp, advertises=1, refusals=1)


async def test_one_address_per_mac_the_other_ias_get_none():
    dhcp = responder()
    reply = await dhcp.handle(request(ADDRESS, ia_na(iaid=2), ia_ta(), ia_pd()), PN, SOURCE)
    assert body(reply) == (
        given_ia(LEASED)
        + opt(IA_NA, struct.pack("!III", 2, 0, 0)
              + status(NO_ADDRS_AVAIL, "no address for this client"))
        + opt(IA_TA, struct.pack("!I", 7) + status(NO_ADDRS_AVAIL, "no address for this client"))
        + opt(IA_PD, struct.pack("!III", 8, 0, 0)
              + status(NO_PREFIX_AVAIL, "no prefix delegation here"))
        + CONFIGURATION)


async def test_solicit_without_ia_na_is_advertised_no_addresses_and_no_ia():
    dhcp = responder()
    reply = await dhcp.handle(solicit(ia_pd(), opt(RAPID_COMMIT)), PN, SOURCE)
    answer(reply, ADVERTISE)
    assert body(reply) == status(NO_ADDRS_AVAIL, "no address for this client")
    assert dhcp.counters.as_dict() == only(dhcp, advertises=1)


async def test_unknown_mac_gets_no_answer():
    dhcp = responder()
    assert await dhcp.handle(solicit(mac=UNKNOWN_MAC), PN, link_local(UNKNOWN_MAC)) is None
    assert dhcp.counters.as_dict() == only(dhcp, unknown_mac=1)


@pytest.mark.parametrize("address", ["fd00:8::5", "10.9.0.5"])
async def test_a_lease_outside_the_ipv6_subnet_is_not_handed_out(address):
    view = FakeView([network()], [lease(address)])
    dhcp = responder(view)
    assert await dhcp.handle(solicit(), PN, SOURCE) is None
    assert dhcp.counters.as_dict() == only(dhcp, unserved=1)
    reply = await dhcp.handle(renew("fd00:8::5"), PN, SOURCE)
    assert body(reply) == given_ia(iaaddr("fd00:8::5", 0, 0), t1=0, t2=0)
    assert body(await dhcp.handle(confirm("fd00:8::5"), PN, SOURCE)) == status(
        NOT_ON_LINK, "not this client's address")
    assert await dhcp.handle(decline("fd00:8::5"), PN, SOURCE) is not None
    assert view.withheld == set()
    assert dhcp.counters.as_dict() == only(dhcp, unserved=1, refusals=1, not_on_link=1,
                                           declines=1)


# -- which MAC ----------------------------------------------------------------------------------


NO_EUI64 = "fe80::1234:5678:9abc:def0"  # a stable-privacy link-local: no MAC in it


@pytest.mark.parametrize("client_id, source", [
    (duid_ll(), NO_EUI64),
    (duid_llt(), NO_EUI64),
    (DUID_EN, SOURCE),  # no MAC in the DUID: the link-local address gives it
    (duid_ll(hardware=6), SOURCE),  # not Ethernet
    (struct.pack("!HH", 3, 1) + mac_bytes(MAC) + b"\x00", SOURCE),  # 7 bytes: not a MAC
    (duid_ll(UNKNOWN_MAC), SOURCE),  # another NIC of the machine: IPAM holds nothing for it
    (duid_ll(), SOURCE + "%eth1"),  # a scoped source
    (b"\x00\x03\x00", SOURCE),  # a DUID too short to say anything
], ids=["duid-ll", "duid-llt", "duid-en", "not ethernet", "long duid-ll", "other nic",
        "scoped", "short duid"])
async def test_the_mac_comes_from_the_duid_or_the_link_local_address(client_id, source):
    dhcp = responder()
    reply = await dhcp.handle(solicit(client_id=client_id), PN, source)
    assert reply is not None and reply.address == source
    assert body(reply, client_id) == opt(PREFERENCE, b"\xff") + given_ia(LEASED) + CONFIGURATION


async def test_the_duid_mac_comes_before_the_link_local_one():
    view = FakeView([network()], [lease(), lease(OTHER_ADDRESS, OTHER_MAC, "web-2")])
    reply = await responder(view).handle(solicit(client_id=duid_ll(OTHER_MAC)), PN, SOURCE)
    assert given_ia(iaaddr(OTHER_ADDRESS, 1800, 3600)) in body(reply, duid_ll(OTHER_MAC))


@pytest.mark.parametrize("kind", [SOLICIT, REQUEST, RENEW, REBIND, CONFIRM])
async def test_a_client_no_mac_can_be_found_for_gets_no_answer(kind):
    dhcp = responder()
    server_id = OURS if kind in (REQUEST, RENEW) else None
    datagram = client_message(kind, ia_na(ADDRESS), client_id=DUID_EN, server_id=server_id)
    assert await dhcp.handle(datagram, PN, NO_EUI64) is None
    assert dhcp.counters.as_dict() == only(dhcp, unidentified=1)


# -- RENEW, REBIND: a move or a detach takes the address back ----------------------------------


@pytest.mark.parametrize("kind", [RENEW, REBIND])
async def test_renewal_gets_the_address_again(kind):
    dhcp = responder()
    reply = await dhcp.handle(renew(kind=kind), PN, SOURCE)
    answer(reply, REPLY)
    assert body(reply) == given_ia(LEASED) + CONFIGURATION
    assert dhcp.counters.as_dict() == only(dhcp, replies=1)


@pytest.mark.parametrize("kind", [RENEW, REBIND])
async def test_renewal_after_the_mac_got_another_address_drops_the_old_one(kind):
    view = FakeView([network()], [lease()])
    dhcp = responder(view)
    view.attach(lease(OTHER_ADDRESS))
    reply = await dhcp.handle(renew(kind=kind), PN, SOURCE)
    assert body(reply) == given_ia(iaaddr(OTHER_ADDRESS, 1800, 3600),
                                   iaaddr(ADDRESS, 0, 0)) + CONFIGURATION
    assert dhcp.counters.replies == 1


@pytest.mark.parametrize("kind", [RENEW, REBIND])
async def test_renewal_after_detach_gives_the_address_lifetimes_0(kind):
    view = FakeView([network()], [lease()])
    dhcp = responder(view)
    view.detach(PN, MAC)
    view.attach(lease(mac=OTHER_MAC, name="web-2"))  # the address moved to another NIC
    reply = await dhcp.handle(renew(kind=kind), PN, SOURCE)
    answer(reply, REPLY)
    assert body(reply) == given_ia(iaaddr(ADDRESS, 0, 0), t1=0, t2=0)
    assert dhcp.counters.as_dict() == only(dhcp, refusals=1)
    # ...and its new holder renews it.
    other = await dhcp.handle(renew(kind=kind, mac=OTHER_MAC), PN, link_local(OTHER_MAC))
    assert given_ia(LEASED) in body(other, duid_ll(OTHER_MAC))


async def test_renewal_of_an_empty_ia_without_a_binding_gets_no_binding():
    view = FakeView([network()], [])
    reply = await responder(view).handle(client_message(RENEW, ia_na(), server_id=OURS), PN,
                                         SOURCE)
    assert body(reply) == opt(IA_NA, struct.pack("!III", IAID, 0, 0)
                              + status(NO_BINDING, "no binding for this IA"))


async def test_renewal_of_the_other_ias():
    dhcp = responder()
    datagram = client_message(RENEW, ia_na(ADDRESS), ia_na(OTHER_ADDRESS, iaid=2),
                              ia_na(iaid=3), ia_ta("fd00:9::7"), ia_pd(), server_id=OURS)
    assert body(await dhcp.handle(datagram, PN, SOURCE)) == (
        given_ia(LEASED)
        + opt(IA_NA, struct.pack("!III", 2, 0, 0) + iaaddr(OTHER_ADDRESS, 0, 0))
        + opt(IA_NA, struct.pack("!III", 3, 0, 0) + status(NO_BINDING, "no binding for this IA"))
        + opt(IA_TA, struct.pack("!I", 7) + iaaddr("fd00:9::7", 0, 0))
        + opt(IA_PD, struct.pack("!III", 8, 0, 0) + status(NO_BINDING, "no binding for this IA"))
        + CONFIGURATION)


# -- CONFIRM, RELEASE, DECLINE, INFORMATION-REQUEST ----------------------------------------------


async def test_confirm_is_success_only_for_the_address_ipam_holds_for_the_mac():
    view = FakeView([network()], [lease()])
    dhcp = responder(view)
    reply = await dhcp.handle(confirm(), PN, SOURCE)
    answer(reply, REPLY)
    assert body(reply) == status(SUCCESS, "success")
    for datagram in (confirm(OTHER_ADDRESS), confirm(ADDRESS, OTHER_ADDRESS),
                     confirm("fd00:8::5")):
        assert body(await dhcp.handle(datagram, PN, SOURCE)) == status(
            NOT_ON_LINK, "not this client's address")
    view.detach(PN, MAC)
    assert body(await dhcp.handle(confirm(), PN, SOURCE)) == status(
        NOT_ON_LINK, "not this client's address")
    assert dhcp.counters.as_dict() == only(dhcp, confirms=1, not_on_link=4)


async def test_release_is_replied_success_and_the_address_stays_the_macs():
    dhcp = responder()
    reply = await dhcp.handle(release(), PN, SOURCE)
    answer(reply, REPLY)
    assert body(reply) == status(SUCCESS, "success")
    assert given_ia(LEASED) in body(await dhcp.handle(solicit(), PN, SOURCE))
    assert dhcp.counters.as_dict() == only(dhcp, releases=1, advertises=1)


async def test_a_declined_address_is_withheld_from_that_mac_until_cleared():
    view = FakeView([network()], [lease(), lease(OTHER_ADDRESS, OTHER_MAC)])
    dhcp = responder(view)
    reply = await dhcp.handle(decline(), PN, SOURCE)
    assert body(reply) == status(SUCCESS, "success")
    assert view.withheld == {(PN, MAC, ADDRESS)}  # recorded (in IPAM, for every agent)

    assert await dhcp.handle(solicit(), PN, SOURCE) is None
    assert body(await dhcp.handle(request(), PN, SOURCE)) == opt(
        IA_NA, struct.pack("!III", IAID, 0, 0)
        + status(NO_ADDRS_AVAIL, "no address for this client"))
    assert body(await dhcp.handle(renew(), PN, SOURCE)) == given_ia(
        iaaddr(ADDRESS, 0, 0), t1=0, t2=0)
    assert body(await dhcp.handle(confirm(), PN, SOURCE)) == status(
        NOT_ON_LINK, "not this client's address")
    # Another MAC is not concerned.
    other = await dhcp.handle(solicit(mac=OTHER_MAC), PN, link_local(OTHER_MAC))
    assert given_ia(iaaddr(OTHER_ADDRESS, 1800, 3600)) in body(other, duid_ll(OTHER_MAC))
    assert dhcp.counters.as_dict() == only(dhcp, declines=1, withheld=1, refusals=2,
                                           not_on_link=1, advertises=1)

    view.withheld.clear()  # an operator cleared it: the view shows it gone
    assert given_ia(LEASED) in body(await dhcp.handle(solicit(), PN, SOURCE))


async def test_declining_an_address_ipam_does_not_hold_for_the_mac_records_nothing():
    view = FakeView([network()], [lease(), lease(OTHER_ADDRESS, OTHER_MAC)])
    dhcp = responder(view)
    for datagram, source in ((decline(OTHER_ADDRESS), SOURCE),
                             (decline(mac=UNKNOWN_MAC), link_local(UNKNOWN_MAC)),
                             (decline(client_id=DUID_EN), NO_EUI64)):
        reply = await dhcp.handle(datagram, PN, source)
        assert reply is not None and status(SUCCESS, "success") in reply.payload
    assert view.withheld == set() and dhcp.counters.as_dict() == only(dhcp, declines=3)


async def test_information_request_gets_the_configuration_only():
    dhcp = responder(FakeView([network()]))  # no lease needed
    reply = await dhcp.handle(information_request(), PN, NO_EUI64)
    answer(reply, REPLY)
    assert to_client(reply, NO_EUI64) and body(reply) == CONFIGURATION
    anonymous = await dhcp.handle(message(INFORMATION_REQUEST), PN, NO_EUI64)
    assert body(anonymous, b"") == CONFIGURATION
    named = await dhcp.handle(information_request(opt(SERVERID, OURS)), PN, NO_EUI64)
    assert body(named) == CONFIGURATION
    assert dhcp.counters.as_dict() == only(dhcp, informs=3)


@pytest.mark.parametrize("name", ["my web", "wéb", "-web", "x" * 64])
async def test_a_domain_that_is_not_a_dns_name_is_not_sent(name):
    view = FakeView([network(name=name)], [lease()])
    reply = await responder(view).handle(information_request(), PN, SOURCE)
    assert body(reply) == opt(DNS, packed(SERVER))


# -- client FQDN (RFC 4704) ---------------------------------------------------------------------


@pytest.mark.parametrize("client_flags, flags", [(0, 0x03), (0x01, 0x01), (0x04, 0x03)],
                         ids=["client updates nothing", "asks the server", "says no update"])
async def test_client_fqdn_is_the_resource_name_in_the_network_domain(client_flags, flags):
    dhcp = responder()
    asked = opt(FQDN, bytes((client_flags,)) + b"\x04host\x00")
    for datagram, kind in ((solicit(ia_na(), asked), ADVERTISE),
                           (request(ADDRESS, asked), REPLY)):
        reply = await dhcp.handle(datagram, PN, SOURCE)
        answer(reply, kind)
        assert body(reply).endswith(
            CONFIGURATION + opt(FQDN, bytes((flags,)) + b"\x05web-1" + DOMAIN_WIRE))


@pytest.mark.parametrize("name", [None, "web 1", "x" * 64])
async def test_no_client_fqdn_for_a_resource_without_a_dns_name(name):
    dhcp = responder(FakeView([network()], [lease(name=name)]))
    reply = await dhcp.handle(request(ADDRESS, opt(FQDN, b"\x00")), PN, SOURCE)
    assert body(reply) == given_ia(LEASED) + CONFIGURATION


async def test_no_client_fqdn_when_the_client_sends_none():
    reply = await responder().handle(request(), PN, SOURCE)
    assert body(reply) == given_ia(LEASED) + CONFIGURATION


# -- servers and networks -----------------------------------------------------------------------


def test_the_server_duid_is_a_stable_duid_ll_per_network():
    duid = network_duid(PN)
    assert len(duid) == 10 and duid[:4] == struct.pack("!HH", 3, 1)
    assert duid[4] & 0x03 == 0x02  # a locally administered unicast MAC
    assert duid == network_duid(PN) and duid != network_duid(OTHER_PN)
    assert Dhcp6Responder(FakeView([])).server_duid(PN) == duid


async def test_a_configured_server_duid_replaces_the_derived_one():
    mine = struct.pack("!HI", 2, 32473) + b"agent-1"
    dhcp = responder(config=Dhcp6Config(server_duid=mine))
    reply = await dhcp.handle(request(server_id=mine), PN, SOURCE)
    assert body(reply, server_id=mine) == given_ia(LEASED) + CONFIGURATION
    assert await dhcp.handle(request(), PN, SOURCE) is None  # the derived one is not ours


@pytest.mark.parametrize("datagram", [
    request(server_id=network_duid(OTHER_PN)), renew(server_id=b"\x00\x03\x00\x01abcdef"),
    release(server_id=network_duid(OTHER_PN)), decline(server_id=network_duid(OTHER_PN)),
    information_request(opt(SERVERID, network_duid(OTHER_PN))),
], ids=["request", "renew", "release", "decline", "information-request"])
async def test_a_message_for_another_server_gets_no_answer(datagram):
    view = FakeView([network()], [lease()])
    dhcp = responder(view)
    assert await dhcp.handle(datagram, PN, SOURCE) is None
    assert view.withheld == set()
    assert dhcp.counters.as_dict() == only(dhcp, other_server=1)


V4_ONLY = replace(network(), subnets=network().subnets[:1])


@pytest.mark.parametrize("view, pn_id", [
    (FakeView([network(dhcp_enabled=False)], [lease()]), PN),
    (FakeView([network()], [lease()]), "pn-not-served"),
    (FakeView([network()], [lease()]), None),  # not relayed, and no network on the interface
    (FakeView([V4_ONLY], [lease()]), PN),
], ids=["dhcp off", "not served", "no network", "ipv4 only"])
async def test_a_network_not_served_or_with_dhcp_off_gets_no_answer(view, pn_id):
    dhcp = responder(view)
    datagrams = [solicit(), request(), renew(), rebind(), confirm(), release(), decline(),
                 information_request()]
    for datagram in datagrams:
        assert await dhcp.handle(datagram, pn_id, SOURCE) is None
    assert dhcp.counters.as_dict() == only(dhcp, unserved=len(datagrams))


# -- relays -----------------------------------------------------------------------------------


def two_networks() -> FakeView:
    return FakeView([network(), network(OTHER_PN, "db", "fd00:8::/64")],
                    [lease(), lease("fd00:8::5", name="db-1", pn_id=OTHER_PN)])


async def test_relayed_solicit_is_answered_to_the_relay_for_the_network_of_its_link():
    dhcp = responder(two_networks())
    interface_id = opt(INTERFACE_ID, b"ge-0/0/1")
    datagram = relay_forw(solicit(), "fd00:8::1", SOURCE, interface_id, hops=1)
    reply = await dhcp.handle(datagram, None, RELAY)
    assert reply is not None and (reply.address, reply.port) == (RELAY, 547)
    wrapped = decode(reply.payload)
    assert isinstance(wrapped, RelayMessage)
    assert (wrapped.message_type, wrapped.hop_count, wrapped.link_address,
            wrapped.peer_address, wrapped.options) == (
        MessageType.RELAY_REPL, 1, "fd00:8::1", SOURCE, ((INTERFACE_ID, b"ge-0/0/1"),))
    inner = wrapped.relayed
    assert isinstance(inner, Dhcp6Message) and inner.message_type is MessageType.ADVERTISE
    assert inner.first(SERVERID) == network_duid(OTHER_PN)
    # The byte layout of the relay header: type, hop count, link, peer, then the options.
    assert reply.payload[:34] == struct.pack("!BB16s16s", RELAY_REPL, 1, packed("fd00:8::1"),
                                             packed(SOURCE))
    assert given_ia(iaaddr("fd00:8::5", 1800, 3600)) in encode(inner)
    assert inner.first(DNS) == packed("fd00:8::ffff:ffff:ffff:fffe")
    # The relay's link decides, not the interface it came in on.
    reply = await dhcp.handle(datagram, PN, RELAY)
    assert reply is not None and b"db-1" not in reply.payload
    assert given_ia(iaaddr("fd00:8::5", 1800, 3600)) in reply.payload


async def test_a_relayed_client_is_found_by_its_link_layer_address_option():
    dhcp = responder()
    linklayer = opt(LINKLAYER, struct.pack("!H", 1) + mac_bytes(MAC))
    datagram = relay_forw(solicit(client_id=DUID_EN), "fd00:9::1", NO_EUI64, linklayer)
    reply = await dhcp.handle(datagram, None, RELAY)
    assert reply is not None and given_ia(LEASED) in reply.payload
    # A link-layer address that is not Ethernet's says nothing.
    for value in (struct.pack("!H", 6) + mac_bytes(MAC), struct.pack("!H", 1) + bytes(8)):
        datagram = relay_forw(solicit(client_id=DUID_EN), "fd00:9::1", NO_EUI64,
                              opt(LINKLAYER, value))
        assert await dhcp.handle(datagram, None, RELAY) is None
    assert dhcp.counters.unidentified == 2


async def test_a_relayed_client_is_found_by_its_link_local_peer_address():
    reply = await responder().handle(
        relay_forw(request(client_id=DUID_EN), "fd00:9::1", SOURCE), None, RELAY)
    assert reply is not None and given_ia(LEASED) in reply.payload


async def test_nested_relays_are_answered_through_each_of_them():
    dhcp = responder(two_networks())
    datagram = renew(server_id=network_duid(OTHER_PN))
    nearest = relay_forw(datagram, "fd00:8::1", SOURCE, opt(INTERFACE_ID, b"port-7"))
    outer = relay_forw(nearest, "::", "fd00:1::2", opt(INTERFACE_ID, b"uplink"), hops=1)
    reply = await dhcp.handle(outer, None, RELAY)
    assert reply is not None and reply.port == 547
    first = decode(reply.payload)
    assert isinstance(first, RelayMessage) and first.options == ((INTERFACE_ID, b"uplink"),)
    assert (first.hop_count, first.link_address, first.peer_address) == (1, "::", "fd00:1::2")
    second = first.relayed
    assert isinstance(second, RelayMessage) and second.options == ((INTERFACE_ID, b"port-7"),)
    assert (second.link_address, second.peer_address) == ("fd00:8::1", SOURCE)
    assert isinstance(second.relayed, Dhcp6Message)
    assert second.relayed.message_type is MessageType.REPLY
    # The network of the nearest relay's link: its address for the MAC, and the one of
    # the other network the client names handed back with lifetimes 0.
    assert body(Reply(encode(second.relayed), RELAY, 547),
                server_id=network_duid(OTHER_PN)).startswith(
        given_ia(iaaddr("fd00:8::5", 1800, 3600), iaaddr(ADDRESS, 0, 0)))
    assert dhcp.counters.replies == 1


@pytest.mark.parametrize("link", ["fd00:7::1", "::", "fe80::1"])
async def test_a_relay_link_in_no_served_network_gets_no_answer(link):
    dhcp = responder()
    assert await dhcp.handle(relay_forw(solicit(), link), PN, RELAY) is None
    assert dhcp.counters.as_dict() == only(dhcp, unserved=1)


async def test_a_relay_link_several_networks_hold_is_refused_unless_the_interface_says():
    view = FakeView([network(), network(OTHER_PN, "db")],
                    [lease(), lease("fd00:9::7", name="db-1", pn_id=OTHER_PN)])
    dhcp = responder(view)
    datagram = relay_forw(solicit(), "fd00:9::1")
    assert await dhcp.handle(datagram, None, RELAY) is None
    assert dhcp.counters.unserved == 1
    reply = await dhcp.handle(datagram, OTHER_PN, RELAY)
    assert reply is not None and given_ia(iaaddr("fd00:9::7", 1800, 3600)) in reply.payload


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize("timers", [
    {"renewal_time": 0}, {"renewal_time": 60, "rebinding_time": 60},
    {"rebinding_time": 1800}, {"preferred_lifetime": 3601},
    {"preferred_lifetime": 2**32 - 1, "valid_lifetime": 2**32 - 1},
])
def test_timers_out_of_order_are_refused(timers):
    with pytest.raises(ValueError, match="T1 < T2 < preferred <= valid"):
        Dhcp6Config(**timers)


def test_a_bad_preference_or_server_duid_is_refused():
    with pytest.raises(ValueError, match="preference 256"):
        Dhcp6Config(preference=256)
    with pytest.raises(ValueError, match="DUID of 1 bytes"):
        Dhcp6Config(server_duid=b"\x00")
    with pytest.raises(ValueError, match="DUID of 131 bytes"):
        Dhcp6Config(server_duid=bytes(131))


# -- the codec, and what is dropped -------------------------------------------------------------


def test_the_codec_reads_back_what_it_writes():
    inner = Dhcp6Message(MessageType.REPLY, XID, ((CLIENTID, duid_ll()), (IA_NA, bytes(12))))
    relayed = RelayMessage(MessageType.RELAY_REPL, 3, "fd00:9::1", SOURCE, inner,
                           ((INTERFACE_ID, b"x"),))
    assert decode(encode(inner)) == inner and decode(encode(relayed)) == relayed


def test_the_codec_refuses_what_does_not_fit_the_wire():
    with pytest.raises(ValueError, match="option 24 is 65536 bytes"):
        encode(Dhcp6Message(MessageType.REPLY, XID, ((DOMAINS, bytes(65536)),)))
    with pytest.raises(ValueError, match="transaction id 16777216 is not 24 bits"):
        encode(Dhcp6Message(MessageType.REPLY, 1 << 24))


@pytest.mark.parametrize("name, wire", [
    ("web.internal", DOMAIN_WIRE), ("web.internal.", DOMAIN_WIRE), ("a", b"\x01a\x00"),
    ("a..b", None), ("", None), ("-a", None), ("é", None), (".".join(["x" * 63] * 4), None),
])
def test_domain_names_are_encoded_uncompressed_or_refused(name, wire):
    assert encode_domain_name(name) == wire


def nested(depth: int) -> bytes:
    datagram = solicit()
    for _ in range(depth):
        datagram = relay_forw(datagram)
    return datagram


BAD_DATAGRAMS = {
    "empty": b"",
    "truncated header": solicit()[:3],
    "message type 0": message(0, opt(CLIENTID, duid_ll()), ia_na()),
    "message type 14": message(14, opt(CLIENTID, duid_ll()), ia_na()),
    "an option running past the end": solicit() + struct.pack("!HH", DNS, 16) + bytes(8),
    "stray bytes after the options": solicit() + b"\x00\x17",
    "an ADVERTISE": client_message(ADVERTISE, ia_na(ADDRESS), server_id=OURS),
    "a REPLY": client_message(REPLY, ia_na(ADDRESS), server_id=OURS),
    "a RECONFIGURE": client_message(10, server_id=OURS),
    "a RELAY-REPL": struct.pack("!BB16s16s", RELAY_REPL, 0, bytes(16), bytes(16))
    + opt(RELAY_MSG, solicit()),
    "a RELAY-FORW carrying a RELAY-REPL": relay_forw(
        struct.pack("!BB16s16s", RELAY_REPL, 0, bytes(16), bytes(16)) + opt(RELAY_MSG, solicit())),
    "a truncated relay header": relay_forw(solicit())[:30],
    "a relay carrying nothing": relay_forw(solicit())[:34],
    "a relay carrying two messages": relay_forw(solicit()) + opt(RELAY_MSG, solicit()),
    "a relay carrying garbage": relay_forw(b"\x01\x02"),
    "relays nested ten deep": nested(10),
    "a SOLICIT without client id": message(SOLICIT, ia_na()),
    "a SOLICIT naming a server": solicit(server_id=OURS),
    "a REBIND naming a server": rebind(server_id=OURS),
    "a CONFIRM naming a server": confirm(server_id=OURS),
    "a REQUEST naming no server": client_message(REQUEST, ia_na(ADDRESS)),
    "a RENEW naming no server": client_message(RENEW, ia_na(ADDRESS)),
    "a RELEASE naming no server": client_message(RELEASE, ia_na(ADDRESS)),
    "a DECLINE naming no server": client_message(DECLINE, ia_na(ADDRESS)),
    "an INFORMATION-REQUEST with an IA": information_request(ia_na()),
    "a CONFIRM naming no address": client_message(CONFIRM, ia_na()),
    "two client ids": solicit(ia_na(), opt(CLIENTID, duid_ll())),
    "two server ids": request(ADDRESS, opt(SERVERID, OURS)),
    "a one-byte DUID": solicit(client_id=b"\x00"),
    "a 131-byte DUID": solicit(client_id=bytes(131)),
    "a short IA_NA": solicit(opt(IA_NA, bytes(11))),
    "a short IA_TA": solicit(opt(IA_TA, bytes(3))),
    "a short IA_PD": solicit(opt(IA_PD, bytes(11))),
    "a short IAADDR": solicit(opt(IA_NA, bytes(12) + opt(IAADDR, bytes(23)))),
    "an IAADDR with broken options": solicit(opt(IA_NA, bytes(12) + opt(
        IAADDR, bytes(24) + b"\x00"))),
    "an IA with broken options": solicit(opt(IA_NA, bytes(12) + b"\x00\x05\x00")),
    "a rapid commit with a value": solicit(ia_na(), opt(RAPID_COMMIT, b"\x01")),
    "an empty client FQDN": solicit(ia_na(), opt(FQDN)),
    "two client FQDNs": solicit(ia_na(), opt(FQDN, b"\x00"), opt(FQDN, b"\x00")),
    "a short relay link-layer address": relay_forw(solicit(), "fd00:9::1", SOURCE,
                                                   opt(LINKLAYER, b"\x00")),
    "two relay link-layer addresses": relay_forw(
        solicit(), "fd00:9::1", SOURCE, *[opt(LINKLAYER, b"\x00\x01" + mac_bytes(MAC))] * 2),
    "oversized": solicit(opt(ORO, bytes(5000))),
    "random bytes": bytes(range(256)) * 2,
}


@pytest.mark.parametrize("datagram", BAD_DATAGRAMS.values(), ids=BAD_DATAGRAMS.keys())
async def test_a_bad_datagram_is_dropped_and_counted(datagram):
    dhcp = responder()
    assert await dhcp.handle(datagram, PN, SOURCE) is None
    assert dhcp.counters.as_dict() == only(dhcp, dropped=1)


@pytest.mark.parametrize("source", ["10.0.0.1", "not an address", ""])
async def test_a_source_that_is_not_ipv6_is_dropped(source):
    dhcp = responder()
    assert await dhcp.handle(solicit(), PN, source) is None
    assert dhcp.counters.as_dict() == only(dhcp, dropped=1)


@pytest.mark.parametrize("name", ["empty", "truncated header", "message type 0",
                                  "an option running past the end", "a truncated relay header",
                                  "a relay carrying two messages", "relays nested ten deep",
                                  "oversized"])
def test_the_codec_names_why_a_datagram_is_not_dhcpv6(name):
    with pytest.raises(MalformedPacket):
        decode(BAD_DATAGRAMS[name])


async def test_relays_nested_as_deep_as_the_hop_count_limit_allows_are_answered():
    reply = await responder().handle(nested(9), None, RELAY)
    assert reply is not None and given_ia(LEASED) in reply.payload


# -- fuzzing: nothing a client sends raises, and every datagram is counted once ------------------


def _counted(dhcp: Dhcp6Responder) -> int:
    return sum(dhcp.counters.as_dict().values())


VALID = [solicit(), solicit(ia_na(), opt(RAPID_COMMIT), opt(FQDN, b"\x00")), request(),
         renew(), rebind(OTHER_ADDRESS), confirm(), release(), decline(),
         information_request(), solicit(mac=UNKNOWN_MAC),
         relay_forw(solicit(client_id=DUID_EN), "fd00:9::1", SOURCE,
                    opt(LINKLAYER, b"\x00\x01" + mac_bytes(MAC))),
         relay_forw(relay_forw(request(ADDRESS, ia_ta(), ia_pd())), "::", hops=1)]


@settings(max_examples=1000, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(datagram=st.one_of(
    st.binary(max_size=600),
    # A SOLICIT or RELAY-FORW header, then random options: the option parser sees random
    # bytes, not only the header checks.
    st.builds(lambda kind, options: bytes((kind, 0x12, 0xAB, 0xCD)) + options,
              st.integers(1, 13), st.binary(max_size=400)),
), relay_listener=st.booleans())
async def test_random_bytes_never_raise_and_are_counted_once(datagram, relay_listener):
    dhcp = responder()
    await dhcp.handle(datagram, None if relay_listener else PN, SOURCE)
    assert _counted(dhcp) == 1


# (what, where, which byte): overwrite, cut the rest, or insert. Plain tuples of integers
# keep the draws cheap: thousands of examples fit in a few seconds.
_mutation = st.tuples(st.sampled_from(("flip", "cut", "insert")), st.integers(0, 300),
                      st.integers(0, 255))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(original=st.sampled_from(VALID), mutations=st.lists(_mutation, min_size=1, max_size=6),
       tail=st.binary(max_size=40), relay_listener=st.booleans())
async def test_mutated_messages_never_raise_and_every_one_is_counted_once(
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
    reply = await dhcp.handle(bytes(datagram), None if relay_listener else PN, SOURCE)
    assert _counted(dhcp) == 1
    if reply is not None:
        sent = decode(reply.payload)
        while isinstance(sent, RelayMessage):
            assert sent.message_type is MessageType.RELAY_REPL
            sent = sent.relayed
        assert sent.message_type in (MessageType.ADVERTISE, MessageType.REPLY)
        assert reply.port in (546, 547)


# -- a real client: Debian's dhclient -6 in a network namespace ----------------------------------


why_not = netlab.available() or (None if shutil.which("dhclient") else
                                 "dhclient is not installed")

# dhclient runs this instead of its own script: it records what it was given, nothing else.
DHCLIENT_SCRIPT = """#!/bin/sh
env | grep -E '^(reason|interface|new_|old_)' | sort > "OUT/.partial.$$"
mv "OUT/.partial.$$" "OUT/$reason.$$"  # renamed whole: never read half-written
exit 0
"""


class ServerThread:
    """The socket layer the agent will have, in a thread of the lab namespace: UDP 547 on
    one interface, ff02::1:2 joined, each datagram answered by the responder."""

    def __init__(self, lab: netlab.NetLab, interface: str, dhcp: Dhcp6Responder) -> None:
        self.loop = asyncio.new_event_loop()
        self.interface, self.dhcp = interface, dhcp
        self.thread: threading.Thread = lab.call(self._start)
        self.transport = asyncio.run_coroutine_threadsafe(self._open(), self.loop).result(10)

    def _start(self) -> threading.Thread:
        # Started from the lab's thread, the loop's thread lives in the lab namespace too.
        thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        thread.start()
        return thread

    async def _open(self) -> asyncio.DatagramTransport:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode())
        index = socket.if_nametoindex(self.interface)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                        packed("ff02::1:2") + struct.pack("@I", index))
        sock.bind(("::", 547))
        sock.setblocking(False)
        dhcp = self.dhcp

        class Protocol(asyncio.DatagramProtocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: Any) -> None:
                asyncio.ensure_future(self.answer(data, addr[0]))

            async def answer(self, data: bytes, source: str) -> None:
                reply = await dhcp.handle(data, PN, source)
                if reply is not None:
                    self.transport.sendto(reply.payload, (reply.address, reply.port))

        transport, _ = await self.loop.create_datagram_endpoint(Protocol, sock=sock)
        return transport

    def call(self, fn: Any) -> Any:
        """`fn()` run in the loop's thread, between two answers."""
        async def call() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(10)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.transport.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def lab() -> Iterator[netlab.NetLab]:
    with netlab.NetLab() as made:
        yield made


def _until(check: Any, what: str, timeout: float = 20.0) -> None:
    """Poll an outside process's effect (a file it writes), bounded in time."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.1)


def _reported(directory: Path, reason: str) -> dict[str, str] | None:
    """What dhclient handed its script for `reason` the last time, if it did."""
    files = sorted(directory.glob(f"{reason}.*"), key=lambda p: p.stat().st_mtime)
    if not files:
        return None
    return dict(line.split("=", 1) for line in files[-1].read_text().splitlines() if "=" in line)


@pytest.mark.skipif(why_not is not None, reason=str(why_not))
def test_dhclient_gets_its_ipam_address_and_gives_it_up_at_the_renewal_after_detach(
        lab: netlab.NetLab, tmp_path: Path) -> None:
    client = lab.add_client(MAC)
    # Link-local addresses without duplicate address detection, so nobody waits a second
    # for them: the server's, and the client's in EUI-64 form, as a kernel would make it.
    for namespace, interface, address in ((lab.namespace, client.lab_side, "fe80::1"),
                                          (client.namespace, client.client_side, SOURCE)):
        lab.exec_in(namespace, ["ip", "addr", "flush", "dev", interface, "scope", "link"])
        lab.exec_in(namespace, ["ip", "addr", "add", f"{address}/64", "dev", interface,
                                "nodad"])
    view = FakeView([network()], [lease()])
    dhcp = responder(view, Dhcp6Config(renewal_time=1, rebinding_time=2,
                                       preferred_lifetime=4, valid_lifetime=6))
    server = ServerThread(lab, client.lab_side, dhcp)
    try:
        script = tmp_path / "dhclient-script"
        script.write_text(DHCLIENT_SCRIPT.replace("OUT", str(tmp_path)))
        script.chmod(0o755)
        (tmp_path / "dhclient.conf").write_text("")
        with open(tmp_path / "dhclient.log", "wb") as log:  # the child keeps its own copy
            lab.spawn_in(client.namespace, [
                "dhclient", "-6", "-d", "-v", "-sf", str(script),
                "-cf", str(tmp_path / "dhclient.conf"), "-lf", str(tmp_path / "leases"),
                "-pf", str(tmp_path / "pid"), client.client_side], stdout=log, stderr=log)
        _until(lambda: _reported(tmp_path, "BOUND6"), "dhclient bound")
        bound = _reported(tmp_path, "BOUND6")
        assert bound is not None and bound["new_ip6_address"] == ADDRESS
        assert bound["new_dhcp6_name_servers"] == SERVER
        assert bound["new_dhcp6_domain_search"] == "web.internal."
        assert bound["new_dhcp6_server_id"] == ":".join(f"{b:x}" for b in OURS)
        assert (bound["new_renew"], bound["new_rebind"], bound["new_preferred_life"],
                bound["new_max_life"]) == ("1", "2", "4", "6")

        server.call(lambda: view.detach(PN, MAC))
        # The next RENEW (T1 = 1 s) gets the address with lifetimes 0: the client drops it
        # at once, without waiting for its valid lifetime.
        _until(lambda: _reported(tmp_path, "EXPIRE6"), "dhclient gave the address up")
        expired = _reported(tmp_path, "EXPIRE6")
        assert expired is not None and expired["old_ip6_address"] == ADDRESS
        assert expired["old_max_life"] == "0"
        counts = server.call(dhcp.counters.as_dict)
        assert counts["replies"] >= 1 and counts["refusals"] >= 1 and counts["dropped"] == 0
    finally:
        server.close()
