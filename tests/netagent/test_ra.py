"""Router Advertisements send hosts to DHCPv6: the builder byte by byte, the sender on a veth.

The messages are laid out here by hand with `struct`, independently of the module, and
compared byte for byte. The sender runs in a network namespace of its own, joined by a
veth pair to a host namespace that listens with a raw ICMPv6 socket (rdisc6 is not needed,
and not installed here): both namespaces are made per test and always removed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import TypeVar

import pytest

from allocator.contract import NetworkInfo, SubnetInfo
from devcluster import netlab
from netagent import ra
from netagent.ra import (
    InvalidSolicitation,
    RaConfig,
    RouterAdvertiser,
    RouterSolicitation,
    next_advertisement_delay,
    router_advertisement,
    router_solicitation,
    solicited_answer_delay,
)

T = TypeVar("T")

PN = "pn-web"
ROUTER_MAC, HOST_MAC = "02:00:00:aa:00:01", "02:00:00:aa:00:02"
ROUTER_LL, HOST_LL = "fe80::a", "fe80::b"
SERVER = "fd00:9::ffff:ffff:ffff:fffe"  # SubnetInfo.of: offset size-2


def network(name: str = "Web", dhcp_enabled: bool = True, cidr6: str = "fd00:9::/64"
            ) -> NetworkInfo:
    return NetworkInfo(PN, name, dhcp_enabled, (SubnetInfo.of("v4", "10.9.0.0/24"),
                                                SubnetInfo.of("v6", cidr6)))


def packed(address: str) -> bytes:
    return ipaddress.IPv6Address(address).packed


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


# RFC 4861 4.2 and 4.6, RFC 8106 5, by hand.
def ra_header(flags: int = 0xC0, lifetime: int = 0) -> bytes:
    return bytes((134, 0, 0, 0, 0, flags)) + lifetime.to_bytes(2, "big") + u32(0) + u32(0)


SOURCE_LINK_LAYER = bytes((1, 1)) + mac_bytes(ROUTER_MAC)
PREFIX = bytes((3, 4, 64, 0x80)) + u32(86400) + u32(14400) + u32(0) + packed("fd00:9::")
RDNSS = bytes((25, 3, 0, 0)) + u32(600) + packed(SERVER)
DNSSL = bytes((31, 3, 0, 0)) + u32(600) + b"\x03web\x08internal\x00" + bytes(2)


# -- the message ---------------------------------------------------------------------------


def test_the_advertisement_sends_hosts_to_dhcpv6_for_the_subnet():
    assert router_advertisement(network(), ROUTER_MAC, RaConfig()) == (
        ra_header() + SOURCE_LINK_LAYER + PREFIX + RDNSS + DNSSL)


def test_the_advertisement_follows_its_config():
    config = RaConfig(interval=30, router_lifetime=1800, managed=False, other=False,
                      prefix_valid_lifetime=7200, prefix_preferred_lifetime=0, dns_lifetime=45)
    assert router_advertisement(network(), ROUTER_MAC, config) == (
        ra_header(flags=0, lifetime=1800) + SOURCE_LINK_LAYER
        + bytes((3, 4, 64, 0x80)) + u32(7200) + u32(0) + u32(0) + packed("fd00:9::")
        + bytes((25, 3, 0, 0)) + u32(45) + packed(SERVER)
        + bytes((31, 3, 0, 0)) + u32(45) + b"\x03web\x08internal\x00" + bytes(2))
    only_other = replace(config, managed=False, other=True)
    assert router_advertisement(network(), ROUTER_MAC, only_other)[5] == 0x40  # type: ignore


def test_the_last_advertisement_has_router_lifetime_0():
    config = RaConfig(router_lifetime=600)
    last = router_advertisement(network(), ROUTER_MAC, config, final=True)
    assert last == ra_header() + SOURCE_LINK_LAYER + PREFIX + RDNSS + DNSSL


def test_without_a_mac_there_is_no_source_link_layer_option():
    assert router_advertisement(network(), None, RaConfig()) == (
        ra_header() + PREFIX + RDNSS + DNSSL)


@pytest.mark.parametrize("name, dnssl", [
    # 8 + 16 bytes: nothing to pad
    ("abcde", bytes((31, 3, 0, 0)) + u32(600) + b"\x05abcde\x08internal\x00"),
    ("my web", b""),  # not a DNS name: no search list
], ids=["exactly 8-byte aligned", "not a dns name"])
def test_the_search_list_is_padded_to_8_bytes_or_left_out(name, dnssl):
    assert router_advertisement(network(name=name), ROUTER_MAC, RaConfig()) == (
        ra_header() + SOURCE_LINK_LAYER + PREFIX + RDNSS + dnssl)


def test_another_prefix_length_is_advertised_as_it_is():
    wire = router_advertisement(network(cidr6="fd00:9:0:10::/60"), None, RaConfig())
    assert wire is not None and wire[16:20] == bytes((3, 4, 60, 0x80))
    assert wire[32:48] == packed("fd00:9:0:10::")


@pytest.mark.parametrize("served", [None, network(dhcp_enabled=False),
                                    replace(network(), subnets=network().subnets[:1])],
                         ids=["not in the view", "dhcp off", "ipv4 only"])
def test_a_network_not_served_is_not_advertised(served):
    assert router_advertisement(served, ROUTER_MAC, RaConfig()) is None


@pytest.mark.parametrize("settings, problem", [
    ({"interval": 3.9}, "interval 3.9 s is not within 4-1800"),
    ({"interval": 1801}, "interval 1801 s"),
    ({"min_interval": 2.9}, "min_interval 2.9 s"),
    ({"min_interval": 151}, "min_interval 151 s"),
    ({"router_lifetime": 100}, "router lifetime 100 s"),
    ({"router_lifetime": 9001}, "router lifetime 9001 s"),
    ({"prefix_preferred_lifetime": 86401}, "prefix lifetimes"),
    ({"prefix_valid_lifetime": 2**32, "prefix_preferred_lifetime": 0}, "prefix lifetimes"),
    ({"dns_lifetime": 199}, "DNS lifetime 199 s"),
    ({"dns_lifetime": 2**32}, "DNS lifetime"),
])
def test_a_config_outside_the_rfc_bounds_is_refused(settings, problem):
    with pytest.raises(ValueError, match=problem):
        RaConfig(**settings)


def test_the_config_defaults():
    config = RaConfig()
    assert (config.interval, config.min_interval, config.dns_lifetime) == (200, 150, 600)
    assert RaConfig(interval=4).min_interval == 3  # the RFC's floor


# -- when ------------------------------------------------------------------------------------


def test_unsolicited_advertisements_come_between_min_and_max_interval():
    config, rng = RaConfig(interval=100, min_interval=40), random.Random(7)
    later = [next_advertisement_delay(config, 3, rng) for _ in range(2000)]
    assert 40 <= min(later) < 45 and 95 < max(later) <= 100
    # RFC 4861 6.2.4: the first three come within 16 s, so a new interface is known soon.
    first = [next_advertisement_delay(config, sent, rng) for sent in (0, 1, 2) * 300]
    assert max(first) == 16.0


def test_a_solicitation_is_answered_within_half_a_second_multicast_answers_3_s_apart():
    rng = random.Random(7)
    unicast = [solicited_answer_delay(100.0, 99.0, False, rng) for _ in range(1000)]
    assert 0 <= min(unicast) < 0.01 and 0.49 < max(unicast) <= 0.5
    assert solicited_answer_delay(100.0, 99.0, True, rng) == pytest.approx(2.0)
    assert solicited_answer_delay(100.0, 90.0, True, rng) <= 0.5
    assert solicited_answer_delay(100.0, None, True, rng) <= 0.5


# -- Router Solicitations (RFC 4861 6.1.1) ---------------------------------------------------------


RS = bytes((133, 0, 0, 0)) + u32(0)


def test_a_valid_solicitation_is_read_with_its_mac():
    with_mac = RS + bytes((1, 1)) + mac_bytes(HOST_MAC)
    assert router_solicitation(with_mac, HOST_LL, 255) == RouterSolicitation(HOST_LL, HOST_MAC)
    assert router_solicitation(RS, "::", 255) == RouterSolicitation("::", None)
    # An unknown option is skipped; a link-layer address that is not a MAC is not one.
    other = RS + bytes((14, 1)) + bytes(6) + bytes((1, 2)) + bytes(14)
    assert router_solicitation(other, HOST_LL, 255) == RouterSolicitation(HOST_LL, None)


@pytest.mark.parametrize("data, source, hop_limit, problem", [
    (RS, HOST_LL, 64, "hop limit 64"),
    (RS, HOST_LL, None, "hop limit None"),
    (RS[:7], HOST_LL, 255, "7 bytes"),
    (bytes((134, 0)) + RS[2:], HOST_LL, 255, "type 134 code 0"),
    (bytes((133, 1)) + RS[2:], HOST_LL, 255, "type 133 code 1"),
    (RS + bytes((1, 0)) + bytes(6), HOST_LL, 255, "length 0"),
    (RS + bytes((1,)), HOST_LL, 255, "cut short"),
    (RS + bytes((1, 2)) + bytes(6), HOST_LL, 255, "runs past the end"),
    (RS + bytes((1, 1)) + mac_bytes(HOST_MAC), "::", 255, "from the unspecified address"),
    (RS, "10.0.0.1", 255, "not an IPv6 address"),
])
def test_an_invalid_solicitation_is_refused(data, source, hop_limit, problem):
    with pytest.raises(InvalidSolicitation, match=problem):
        router_solicitation(data, source, hop_limit)


# -- the sender, on a veth pair between two namespaces -----------------------------------------


why_not = netlab.available()
on_a_link = pytest.mark.skipif(why_not is not None, reason=str(why_not))


class LoopThread:
    """An asyncio loop in a thread of `lab`'s namespace: sockets made there are the lab's."""

    def __init__(self, lab: netlab.NetLab) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread: threading.Thread = lab.call(self._start)

    def _start(self) -> threading.Thread:
        # A thread started from the lab's thread lives in the lab namespace too.
        thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        thread.start()
        return thread

    def run(self, coroutine: Awaitable[T], timeout: float = 10.0) -> T:
        async def wrapped() -> T:
            return await coroutine
        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout)

    def read(self, fn: Callable[[], T]) -> T:
        """`fn()` run in the loop's thread, between two of its callbacks."""
        async def call() -> T:
            return fn()
        return self.run(call())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Received:
    payload: bytes
    source: str
    destination: str
    hop_limit: int | None


class Host:
    """The host end of the link: a raw ICMPv6 socket hearing only RAs, able to solicit."""

    def __init__(self, lab: netlab.NetLab, interface: str) -> None:
        self.lab, self.interface = lab, interface
        self.sock, self.index = lab.call(self._open)

    def _open(self) -> tuple[socket.socket, int]:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode())
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        blocked = [0xFFFFFFFF] * 8
        blocked[134 >> 5] &= ~(1 << (134 & 31))  # pass Router Advertisements only
        sock.setsockopt(socket.IPPROTO_ICMPV6, 1, struct.pack("@8I", *blocked))
        return sock, socket.if_nametoindex(self.interface)

    def receive(self, timeout: float = 5.0) -> Received:
        """The next RA; socket.timeout (a TimeoutError) if none comes within `timeout`."""
        self.sock.settimeout(timeout)
        data, ancillary, _, address = self.sock.recvmsg(1500, 256)
        hop_limit, destination = None, ""
        for level, kind, value in ancillary:
            if (level, kind) == (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT):
                hop_limit = struct.unpack("@i", value[:4])[0]
            if (level, kind) == (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO):
                destination = str(ipaddress.IPv6Address(value[:16]))
        return Received(data, address[0].split("%")[0], destination, hop_limit)

    def solicit(self, hop_limit: int = 255) -> None:
        """A Router Solicitation from the host's link-local address, with its MAC."""
        self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, hop_limit)
        self.sock.sendto(RS + bytes((1, 1)) + mac_bytes(HOST_MAC), ("ff02::2", 0, 0, self.index))

    def solicit_unspecified(self) -> None:
        """A Router Solicitation from ::, as a host sends before its address is usable: the
        kernel will not source a raw ICMPv6 socket's message from ::, so the whole IPv6
        packet is written by hand to a packet socket."""
        message = bytearray(RS)
        message[2:4] = icmpv6_checksum("::", "ff02::2", bytes(message)).to_bytes(2, "big")
        header = struct.pack("!IHBB16s16s", 6 << 28, len(message), 58, 255, packed("::"),
                             packed("ff02::2"))

        def send() -> None:
            with socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM,
                               socket.htons(0x86DD)) as sock:
                sock.sendto(header + message, (self.interface, 0x86DD, 0, 0,
                                               bytes.fromhex("333300000002")))
        self.lab.call(send)

    def close(self) -> None:
        self.sock.close()


def icmpv6_checksum(source: str, destination: str, message: bytes) -> int:
    """RFC 4443 2.3: the one's complement sum over the pseudo-header and the message."""
    data = packed(source) + packed(destination) + struct.pack("!I3xB", len(message), 58) \
        + message + (b"\x00" if len(message) % 2 else b"")
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:  # two folds at most
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@dataclass
class Link:
    """The router's loop, the host's socket, and what the advertisers are told is served."""

    router: LoopThread
    host: Host
    router_lab: netlab.NetLab
    router_side: str
    served: dict[str, NetworkInfo | None]
    started: list[RouterAdvertiser] = field(default_factory=list)

    def advertiser(self, config: RaConfig | None = None) -> RouterAdvertiser:
        """A started advertiser on the router side; closed when the test ends."""
        made = RouterAdvertiser(self.router_side, lambda: self.served["network"], config)
        self.started.append(made)
        self.router.run(made.start())
        return made

    def counters(self, advertiser: RouterAdvertiser) -> dict[str, int]:
        return self.router.read(advertiser.counters.as_dict)


@pytest.fixture
def link() -> Iterator[Link]:
    """Two namespaces of our own (a router and a host) joined by a veth pair, link-local
    addresses without DAD on both ends (nobody waits for them), and no kernel RS: every
    solicitation the advertiser hears is the test's."""
    with ExitStack() as stack:
        router_lab = stack.enter_context(netlab.NetLab())
        host_lab = stack.enter_context(netlab.NetLab())
        router_side, host_side = f"r{router_lab.tag}", f"h{host_lab.tag}"
        subprocess.run(["ip", "link", "add", router_side, "netns", router_lab.namespace,
                        "type", "veth", "peer", "name", host_side, "netns", host_lab.namespace],
                       check=True, capture_output=True, timeout=30)
        for lab, side, mac, address in ((router_lab, router_side, ROUTER_MAC, ROUTER_LL),
                                        (host_lab, host_side, HOST_MAC, HOST_LL)):
            lab.exec_in(lab.namespace, ["ip", "link", "set", side, "address", mac,
                                        "addrgenmode", "none"])
            lab.exec_in(lab.namespace, ["sysctl", "-qw",
                                        f"net.ipv6.conf.{side}.router_solicitations=0"])
            lab.exec_in(lab.namespace, ["ip", "link", "set", side, "up"])
            lab.exec_in(lab.namespace, ["ip", "addr", "add", f"{address}/64", "dev", side,
                                        "nodad"])
        router = LoopThread(router_lab)
        stack.callback(router.close)
        host = Host(host_lab, host_side)
        stack.callback(host.close)
        made = Link(router, host, router_lab, router_side, {"network": network()})

        def close_advertisers() -> None:
            for advertiser in made.started:
                router.run(advertiser.close())
        stack.callback(close_advertisers)
        yield made


def expected(config: RaConfig | None = None, final: bool = False) -> bytes:
    wire = router_advertisement(network(), ROUTER_MAC, config or RaConfig(), final=final)
    assert wire is not None
    return wire


def checked(received: Received) -> bytes:
    """The RA as built (checksum 0), after checking what the link demands of it: hop limit
    255, a link-local source (RFC 4861 6.1.2) and the checksum the kernel filled in."""
    assert received.hop_limit == 255 and received.source == ROUTER_LL
    assert icmpv6_checksum(received.source, received.destination, received.payload) == 0
    return received.payload[:2] + b"\x00\x00" + received.payload[4:]


@on_a_link
def test_the_advertiser_advertises_on_start_and_answers_a_solicitation(link: Link):
    advertiser = link.advertiser()
    first = link.host.receive()
    assert first.destination == "ff02::1" and checked(first) == expected()
    assert advertiser.mac == ROUTER_MAC

    started = time.monotonic()
    link.host.solicit()
    answer = link.host.receive()
    # By unicast to the host, within MAX_RA_DELAY_TIME (and some scheduling slack).
    assert answer.destination == HOST_LL and checked(answer) == expected()
    assert time.monotonic() - started < 2.0
    assert link.counters(advertiser) == {"advertisements": 2, "solicitations": 1, "shed": 0,
                                         "dropped": 0, "unserved": 0, "send_errors": 0}


@on_a_link
def test_a_solicitation_that_was_forwarded_is_dropped(link: Link):
    advertiser = link.advertiser()
    link.host.receive()
    link.host.solicit(hop_limit=64)
    link.host.solicit()  # heard after the bad one, on the same link
    assert link.host.receive().destination == HOST_LL
    counts = link.counters(advertiser)
    assert (counts["dropped"], counts["solicitations"], counts["advertisements"]) == (1, 1, 2)


@on_a_link
def test_a_solicitation_from_the_unspecified_address_is_answered_by_multicast(
        link: Link, monkeypatch: pytest.MonkeyPatch):
    # The 3 s between multicast RAs are proven above, on the pure function; here 0.2 s.
    monkeypatch.setattr(ra, "MIN_DELAY_BETWEEN_RAS", 0.2)
    advertiser = link.advertiser()
    link.host.receive()
    link.host.solicit_unspecified()
    answer = link.host.receive()
    assert answer.destination == "ff02::1" and checked(answer) == expected()
    assert link.counters(advertiser)["solicitations"] == 1


@on_a_link
def test_solicitations_beyond_the_pending_answers_are_shed(
        link: Link, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(ra, "MAX_PENDING_ANSWERS", 0)
    monkeypatch.setattr(ra, "MIN_DELAY_BETWEEN_RAS", 0.2)
    advertiser = link.advertiser()
    link.host.receive()
    link.host.solicit()  # would be answered by unicast: shed
    link.host.solicit_unspecified()  # the multicast answer is not held back
    assert link.host.receive().destination == "ff02::1"
    counts = link.counters(advertiser)
    assert (counts["shed"], counts["solicitations"], counts["advertisements"]) == (1, 1, 2)


@on_a_link
def test_advertisements_repeat_without_solicitation(link: Link,
                                                    monkeypatch: pytest.MonkeyPatch):
    # The delays themselves are proven on the pure function; here they are short.
    monkeypatch.setattr(ra, "next_advertisement_delay", lambda config, sent, rng: 0.1)
    advertiser = link.advertiser()
    for _ in range(4):
        received = link.host.receive()
        assert received.destination == "ff02::1" and checked(received) == expected()
    assert link.counters(advertiser)["advertisements"] >= 4


@on_a_link
def test_a_network_not_served_gets_no_advertisement_until_it_is(
        link: Link, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(ra, "next_advertisement_delay", lambda config, sent, rng: 0.2)
    link.served["network"] = network(dhcp_enabled=False)
    advertiser = link.advertiser()
    counts = link.counters(advertiser)  # the RA on start (and maybe the next), not sent
    assert counts["unserved"] >= 1 and counts["advertisements"] == 0
    link.served["network"] = network()
    assert checked(link.host.receive()) == expected()
    counts = link.counters(advertiser)
    assert counts["unserved"] >= 1 and counts["advertisements"] >= 1


@on_a_link
def test_an_interface_without_a_usable_address_sends_nothing_until_it_has_one(
        link: Link, monkeypatch: pytest.MonkeyPatch):
    # As while the interface's link-local address is tentative: no source for the RA.
    monkeypatch.setattr(ra, "next_advertisement_delay", lambda config, sent, rng: 0.2)
    lab = link.router_lab
    lab.exec_in(lab.namespace, ["ip", "addr", "flush", "dev", link.router_side])
    advertiser = link.advertiser()
    counts = link.counters(advertiser)
    assert counts["send_errors"] >= 1 and counts["advertisements"] == 0
    lab.exec_in(lab.namespace, ["ip", "addr", "add", f"{ROUTER_LL}/64", "dev",
                                link.router_side, "nodad"])
    assert checked(link.host.receive()) == expected()
    assert link.counters(advertiser)["advertisements"] >= 1


@on_a_link
def test_an_interface_gone_before_its_mac_is_read_is_named_in_the_error(
        link: Link, monkeypatch: pytest.MonkeyPatch):
    def gone(sock: socket.socket, interface: str) -> str:
        raise OSError(19, "No such device")
    monkeypatch.setattr(ra, "interface_mac", gone)
    advertiser = RouterAdvertiser(link.router_side, lambda: network())
    with pytest.raises(OSError, match=f"MAC of interface {link.router_side}: No such device"):
        link.router.run(advertiser.start())
    link.router.run(advertiser.close())  # nothing to close: the socket was not kept
    assert advertiser.counters.advertisements == 0


def test_a_receive_error_is_logged_and_the_advertiser_goes_on(caplog: pytest.LogCaptureFixture):
    advertiser = RouterAdvertiser("eth-test", lambda: network())
    # An unconnected stream socket: reading it fails with ENOTCONN, not EAGAIN.
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as broken:
        broken.setblocking(False)
        advertiser._sock = broken
        advertiser._readable()
    assert "receiving on eth-test" in caplog.text
    assert advertiser.counters.as_dict() == {k: 0 for k in advertiser.counters.as_dict()}


def test_an_interface_without_a_mac_gives_none():
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        assert ra.interface_mac(sock, "lo") is None


@on_a_link
def test_closing_withdraws_the_router_when_it_advertised_one(link: Link):
    config = RaConfig(router_lifetime=600)
    advertiser = link.advertiser(config)
    assert checked(link.host.receive()) == expected(config)
    link.router.run(advertiser.close())
    last = link.host.receive()
    assert last.destination == "ff02::1" and checked(last) == expected(config, final=True)
    link.router.run(advertiser.close())  # idempotent
    assert link.counters(advertiser)["advertisements"] == 2


@on_a_link
def test_closing_sends_nothing_when_the_agent_was_no_router(link: Link):
    advertiser = link.advertiser()
    link.host.receive()
    link.router.run(advertiser.close())
    assert link.counters(advertiser)["advertisements"] == 1


@on_a_link
def test_an_interface_that_does_not_exist_is_named_in_the_error(link: Link):
    advertiser = RouterAdvertiser("nosuch0", lambda: network())
    with pytest.raises(OSError, match="Router Advertisements on interface nosuch0"):
        link.router.run(advertiser.start())
