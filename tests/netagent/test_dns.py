"""The internal DNS: names, reverses, negative answers, EDNS, truncation, relaying, bad input.

Pure tests ask `InternalDns` over a small in-test view; server tests ask the real UDP and
TCP listeners on 127.0.0.1, with dnslib as the client and with Debian's `dig`; one test
reads a real `NetworkView` on etcd, and one asks the agent of two projects' networks with
`dig` from their clients, in network namespaces (skipped where they cannot be made).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import shutil
import socket
import struct
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from allocator_support import REGION, book_in, connected, make_pn
from dnslib import EDNS0, QTYPE, RCODE, RR, A, DNSQuestion, DNSRecord

from allocator.contract import IPAM, Lease, NetworkInfo, Resource, SubnetInfo
from devcluster import netlab
from devcluster.etcd import EtcdCluster
from devcluster.netlab import NetLab
from netagent.agent import Agent, AgentConfig
from netagent.dns import DnsConfig, DnsServer, Forward, InternalDns, Upstream, serve_dns

WEB = NetworkInfo("pn-web", "Web", True, (SubnetInfo.of("s-web-4", "10.0.0.0/24"),
                                          SubnetInfo.of("s-web-6", "fd00:1::/64")))
WIDE = NetworkInfo("pn-wide", "wide", True, (SubnetInfo.of("s-wide", "172.16.0.0/16"),))
LAB = NetworkInfo("pn-lab", "lab", True, (SubnetInfo.of("s-lab", "10.2.4.0/22"),))
TINY = NetworkInfo("pn-tiny", "tiny", True, (SubnetInfo.of("s-tiny", "10.3.0.16/28"),))
OFF = NetworkInfo("pn-off", "off", False, (SubnetInfo.of("s-off", "10.1.0.0/24"),))

WEB_SERVER_6 = "fd00:1::ffff:ffff:ffff:fffe"  # offset size-2 of the /64
BIG = [f"10.0.0.{100 + i}" for i in range(60)]  # ~1 kB of A records: more than 512 bytes
MID = [f"10.0.0.{30 + i}" for i in range(20)]  # ~400 bytes: over 300, within 512


def lease(network: NetworkInfo, address: str, name: str | None = None,
          reverses: tuple[str, ...] = ()) -> Lease:
    is_ipv6 = ":" in address
    mac = "02:00:00:00:00:01" if name else None
    return Lease(f"ip-{address}", network.id, address, 64 if is_ipv6 else 24, is_ipv6, mac,
                 name, reverses)


class FakeView:
    """The lookups the DNS makes, with NetworkView's meaning, over a list of leases."""

    def __init__(self, networks: list[NetworkInfo], leases: list[Lease]) -> None:
        self._networks, self._leases = networks, leases
        self.revision = 41

    def networks(self) -> list[NetworkInfo]:
        return list(self._networks)

    def named(self, pn_id: str, name: str) -> list[Lease]:
        return [x for x in self._leases if x.private_network_id == pn_id and x.name
                and x.name.lower() == name.lower()]

    def at(self, address: str) -> Lease | None:
        return next((x for x in self._leases if x.address == address), None)

    def leases(self, pn_id: str) -> list[Lease]:
        return [x for x in self._leases if x.private_network_id == pn_id]

    def attach(self, new: Lease) -> None:
        self._leases.append(new)
        self.revision += 1


def sample_view() -> FakeView:
    return FakeView([WEB, WIDE, LAB, TINY, OFF], [
        lease(WEB, "10.0.0.5", "web-1"), lease(WEB, "fd00:1::5", "web-1"),
        lease(WEB, "10.0.0.6", "db", reverses=("db.example.com",)),
        lease(WEB, "10.0.0.7"),  # booked, not attached: no name
        *(lease(WEB, a, "multi") for a in ("10.0.0.12", "10.0.0.10", "10.0.0.11")),
        *(lease(WEB, a, "big") for a in BIG), *(lease(WEB, a, "mid") for a in MID),
        lease(WEB, "10.0.0.20", "app.eu"),
        lease(WIDE, "172.16.3.4", "w"), lease(LAB, "10.2.6.9", "bench"),
        lease(TINY, "10.3.0.20", "t"), lease(OFF, "10.1.0.5", "x"),
    ])


@pytest.fixture
def view() -> FakeView:
    return sample_view()


@pytest.fixture
def dns(view: FakeView) -> InternalDns:
    return InternalDns(view)


def query(name: str, qtype: str = "A", *, edns: int | None = None, version: int = 0,
          do: bool = False) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns, version=version, flags="do" if do else ""))
    return q


def ask(dns: InternalDns, name: str, qtype: str = "A", *, tcp: bool = False,
        edns: int | None = None, version: int = 0, do: bool = False) -> DNSRecord:
    message = query(name, qtype, edns=edns, version=version, do=do)
    out = dns.resolve(bytes(message.pack()), tcp=tcp)
    assert isinstance(out, bytes)
    return DNSRecord.parse(out)


def rdata(reply: DNSRecord) -> list[str]:
    return sorted(str(rr.rdata) for rr in reply.rr)


def ptr(address: str) -> str:
    return ipaddress.ip_address(address).reverse_pointer


def negative(reply: DNSRecord, rcode: int, apex: str) -> None:
    """An authoritative negative answer: no records, the zone's SOA for negative caching."""
    assert (reply.header.rcode, reply.header.aa, reply.rr) == (rcode, 1, [])
    assert [(str(rr.rname), rr.rtype, rr.ttl) for rr in reply.auth] == [(apex, QTYPE.SOA, 10)]


# -- the zones (pure) -------------------------------------------------------------------------


def test_a_resource_name_answers_its_address_of_each_family(dns):
    reply = ask(dns, "web-1.web.internal")
    assert (reply.header.rcode, reply.header.aa, reply.header.ra) == (RCODE.NOERROR, 1, 0)
    assert rdata(reply) == ["10.0.0.5"] and reply.rr[0].ttl == 60
    assert rdata(ask(dns, "web-1.web.internal", "AAAA")) == ["fd00:1::5"]
    # Case-insensitive, and the answer echoes the name as asked (0x20 randomisation).
    shouted = ask(dns, "WEB-1.Web.INTERNAL")
    assert rdata(shouted) == ["10.0.0.5"] and str(shouted.rr[0].rname) == "WEB-1.Web.INTERNAL."


def test_several_ips_under_one_name_answer_all_of_them(dns):
    assert [str(rr.rdata) for rr in ask(dns, "multi.web.internal").rr] == [
        "10.0.0.10", "10.0.0.11", "10.0.0.12"]  # in address order: agents agree byte for byte
    assert rdata(ask(dns, "web-1.web.internal", "ANY")) == ["10.0.0.5", "fd00:1::5"]


def test_ptr_is_the_reverse_when_set_else_the_generated_name(dns):
    assert rdata(ask(dns, ptr("10.0.0.6"), "PTR")) == ["db.example.com."]
    assert rdata(ask(dns, ptr("10.0.0.5"), "PTR")) == ["web-1.web.internal."]
    assert rdata(ask(dns, ptr("fd00:1::5"), "PTR")) == ["web-1.web.internal."]
    assert rdata(ask(dns, ptr("10.0.0.254"), "PTR")) == ["ns.web.internal."]
    assert rdata(ask(dns, ptr(WEB_SERVER_6), "PTR")) == ["ns.web.internal."]


def test_the_apex_answers_soa_and_ns_whose_addresses_are_the_servers(dns):
    soa = ask(dns, "web.internal", "SOA")
    assert rdata(soa) == ["ns.web.internal. hostmaster.web.internal. 41 1200 180 1209600 10"]
    ns = ask(dns, "web.internal", "NS")
    assert rdata(ns) == ["ns.web.internal."]
    assert sorted((str(rr.rname), str(rr.rdata)) for rr in ns.ar) == [
        ("ns.web.internal.", "10.0.0.254"), ("ns.web.internal.", WEB_SERVER_6)]
    assert rdata(ask(dns, "ns.web.internal")) == ["10.0.0.254"]
    assert rdata(ask(dns, "ns.web.internal", "AAAA")) == [WEB_SERVER_6]
    assert rdata(ask(dns, "0.0.10.in-addr.arpa", "SOA")) == [
        "ns.web.internal. hostmaster.web.internal. 41 1200 180 1209600 10"]
    assert rdata(ask(dns, "0.0.0.0.0.0.0.0.1.0.0.0.0.0.d.f.ip6.arpa", "NS")) == [
        "ns.web.internal."]


def test_an_unknown_name_is_nxdomain_with_the_soa(dns):
    negative(ask(dns, "nope.web.internal"), RCODE.NXDOMAIN, "web.internal.")
    negative(ask(dns, "a.web-1.web.internal"), RCODE.NXDOMAIN, "web.internal.")
    assert dns.counters.nxdomain == 2


def test_a_name_without_that_type_is_nodata(dns):
    negative(ask(dns, "db.web.internal", "AAAA"), RCODE.NOERROR, "web.internal.")
    negative(ask(dns, "web-1.web.internal", "MX"), RCODE.NOERROR, "web.internal.")
    negative(ask(dns, "web.internal", "A"), RCODE.NOERROR, "web.internal.")
    negative(ask(dns, ptr("10.0.0.5"), "A"), RCODE.NOERROR, "0.0.10.in-addr.arpa.")


def test_a_reverse_with_nothing_there_is_nxdomain(dns):
    for name in (ptr("10.0.0.99"), ptr("10.0.0.7"), "x." + ptr("10.0.0.5"),
                 "300.0.0.10.in-addr.arpa", "05.0.0.10.in-addr.arpa"):
        negative(ask(dns, name, "PTR"), RCODE.NXDOMAIN, "0.0.10.in-addr.arpa.")
    negative(ask(dns, ptr("fd00:1::99"), "PTR"), RCODE.NXDOMAIN,
             "0.0.0.0.0.0.0.0.1.0.0.0.0.0.d.f.ip6.arpa.")


def test_reverse_zones_sit_on_label_boundaries(dns):
    # A /16 is one zone; the names between its apex and its addresses exist, empty.
    assert rdata(ask(dns, "16.172.in-addr.arpa", "SOA"))[0].startswith("ns.wide.internal.")
    negative(ask(dns, "3.16.172.in-addr.arpa", "PTR"), RCODE.NOERROR, "16.172.in-addr.arpa.")
    assert rdata(ask(dns, ptr("172.16.3.4"), "PTR")) == ["w.wide.internal."]
    # A /22 is four /24 zones, nothing above them.
    for third in (4, 5, 6, 7):
        assert ask(dns, f"{third}.2.10.in-addr.arpa", "SOA").header.rcode == RCODE.NOERROR
    assert rdata(ask(dns, ptr("10.2.6.9"), "PTR")) == ["bench.lab.internal."]
    assert ask(dns, "2.10.in-addr.arpa", "SOA").header.rcode == RCODE.REFUSED
    assert ask(dns, "8.2.10.in-addr.arpa", "SOA").header.rcode == RCODE.REFUSED
    # A /28 is served by its /24: the classful convention.
    assert rdata(ask(dns, ptr("10.3.0.20"), "PTR")) == ["t.tiny.internal."]
    negative(ask(dns, ptr("10.3.0.99"), "PTR"), RCODE.NXDOMAIN, "0.3.10.in-addr.arpa.")


def test_a_dotted_resource_name_makes_its_parent_exist(dns):
    assert rdata(ask(dns, "App.EU.web.internal")) == ["10.0.0.20"]
    negative(ask(dns, "eu.web.internal"), RCODE.NOERROR, "web.internal.")
    negative(ask(dns, "us.web.internal"), RCODE.NXDOMAIN, "web.internal.")


def test_answers_follow_the_view_at_once(view, dns):
    negative(ask(dns, "new.web.internal"), RCODE.NXDOMAIN, "web.internal.")
    view.attach(lease(WEB, "10.0.0.50", "new"))
    assert rdata(ask(dns, "new.web.internal")) == ["10.0.0.50"]
    assert rdata(ask(dns, "web.internal", "SOA"))[0].split()[2] == "42"  # the serial


def test_names_outside_the_zones_are_refused_without_upstream(dns):
    for name in ("example.com", "internal", "other.internal", "0.10.in-addr.arpa"):
        reply = ask(dns, name)
        assert (reply.header.rcode, reply.header.aa, reply.rr) == (RCODE.REFUSED, 0, [])
    assert dns.counters.refused == 4


def test_names_outside_the_zones_are_forwarded_with_an_upstream(view):
    dns = InternalDns(view, DnsConfig(upstream="192.0.2.53:5353"))
    message = query("example.com").pack()
    outcome = dns.resolve(message, tcp=False)
    assert isinstance(outcome, Forward) and outcome.query.raw == message
    local = ask(dns, "web-1.web.internal")
    assert (rdata(local), local.header.ra) == (["10.0.0.5"], 1)


def test_an_upstream_is_read_from_host_and_port():
    assert Upstream.parse("192.0.2.53") == Upstream("192.0.2.53", 53)
    assert Upstream.parse("192.0.2.53:5353", timeout=1) == Upstream("192.0.2.53", 5353, 1)
    assert Upstream.parse("[2001:db8::53]:5353") == Upstream("2001:db8::53", 5353)
    assert Upstream.parse("2001:db8::53") == Upstream("2001:db8::53", 53)


def test_a_network_without_dhcp_answers_nothing(dns):
    assert ask(dns, "x.off.internal").header.rcode == RCODE.REFUSED
    assert ask(dns, "off.internal", "SOA").header.rcode == RCODE.REFUSED
    assert ask(dns, ptr("10.1.0.5"), "PTR").header.rcode == RCODE.REFUSED


def test_only_the_networks_given_are_served(view):
    dns = InternalDns(view, DnsConfig(networks=("pn-wide",)))
    assert ask(dns, "web-1.web.internal").header.rcode == RCODE.REFUSED
    assert rdata(ask(dns, "w.wide.internal")) == ["172.16.3.4"]


def test_zone_transfers_are_refused(dns):
    for name in ("web.internal", "0.0.10.in-addr.arpa"):
        reply = ask(dns, name, "AXFR", tcp=True)
        assert (reply.header.rcode, reply.header.aa) == (RCODE.REFUSED, 0)


def test_bad_messages_get_formerr_notimp_or_nothing(dns):
    def header(flags: int, qd: int) -> bytes:
        return struct.pack("!HHHHHH", 0x1234, flags, qd, 0, 0, 0)

    two = query("web.internal")
    two.add_question(DNSQuestion("db.web.internal"))
    status = query("web.internal")
    status.header.opcode = 2
    response = query("web.internal").reply()
    cases = [
        (b"\x12\x34\x01", None),  # not even a header
        (header(0x0100, 1), RCODE.FORMERR),  # a question announced, none there
        (header(0x0100, 1) + b"\xff" * 20, RCODE.FORMERR),  # garbage where the name goes
        (header(0x0100, 0), RCODE.FORMERR),  # no question
        (two.pack(), RCODE.FORMERR),
        (query("web.internal", "OPT").pack(), RCODE.FORMERR),
        (status.pack(), RCODE.NOTIMP),
        (response.pack(), None),  # never answer an answer
    ]
    for message, rcode in cases:
        out = dns.resolve(bytes(message), tcp=False)
        if rcode is None:
            assert out is None
        else:
            assert isinstance(out, bytes)
            reply = DNSRecord.parse(out)
            assert (reply.header.rcode, reply.header.qr) == (rcode, 1)
            assert reply.header.id == struct.unpack("!H", message[:2])[0]
    c = dns.counters
    assert (c.queries, c.malformed, c.dropped, c.answered) == (8, 6, 2, 0)


def test_no_mangled_message_breaks_the_resolver(dns):
    rng = random.Random(2131)
    seeds = [bytes(query(name, qtype, edns=edns).pack()) for name, qtype, edns in (
        ("web-1.web.internal", "A", None), (ptr("10.0.0.5"), "PTR", 1232),
        ("big.web.internal", "ANY", 4096), (ptr("fd00:1::5"), "PTR", None))]
    for _ in range(3000):
        message = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            if rng.random() < 0.7 and message:
                message[rng.randrange(len(message))] = rng.randrange(256)
            else:
                message = message[:rng.randrange(len(message) + 1)]
        out = dns.resolve(bytes(message), tcp=rng.random() < 0.5)
        assert out is None or DNSRecord.parse(out).header.qr == 1
    assert dns.counters.servfail == 0  # no message reached the internal-error path


def test_edns_is_echoed_and_the_clients_payload_bounds_the_udp_reply(dns):
    roomy = ask(dns, "big.web.internal", edns=4096, do=True)
    assert (roomy.header.tc, len(roomy.rr)) == (0, 60)
    (opt,) = roomy.ar
    assert (opt.rtype, opt.edns_len, opt.edns_do) == (QTYPE.OPT, 1232, 1)
    cramped = ask(dns, "big.web.internal", edns=600)
    assert (cramped.header.tc, cramped.rr, len(cramped.ar)) == (1, [], 1)
    # A payload below 512 is read as 512: the classic size always fits.
    assert len(ask(dns, "mid.web.internal", edns=100).rr) == 20
    assert ask(dns, "mid.web.internal", edns=300).header.tc == 0
    assert ask(dns, "web-1.web.internal").ar == []  # no OPT without one asked
    assert dns.counters.truncated == 1


def test_udp_truncates_to_header_and_question_and_tcp_gives_it_all(dns):
    cut = ask(dns, "big.web.internal")
    assert (cut.header.tc, cut.header.aa, cut.rr, cut.auth) == (1, 1, [], [])
    assert str(cut.q.qname) == "big.web.internal."
    full = ask(dns, "big.web.internal", tcp=True)
    assert (full.header.tc, sorted(rdata(full))) == (0, sorted(BIG))


def test_an_unknown_edns_version_is_badvers(dns):
    reply = ask(dns, "web-1.web.internal", edns=1232, version=1)
    (opt,) = reply.ar
    assert (reply.header.rcode, opt.edns_rcode, reply.rr) == (0, 1, [])  # 16 = 1 << 4
    assert dns.counters.malformed == 1


# -- the servers --------------------------------------------------------------------------


@asynccontextmanager
async def serving(dns: InternalDns, idle_timeout: float = 10.0
                  ) -> AsyncIterator[DnsServer]:
    server = await serve_dns(dns, "127.0.0.1", 0, idle_timeout=idle_timeout)
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def server(dns: InternalDns) -> AsyncIterator[DnsServer]:
    async with serving(dns) as running:
        yield running


async def over_udp(server: DnsServer, message: DNSRecord) -> DNSRecord:
    # dnslib's client blocks: in a thread, so that the server on this loop can answer.
    raw = await asyncio.to_thread(message.send, "127.0.0.1", server.port, timeout=5)
    return DNSRecord.parse(raw)


async def over_tcp(port: int, *messages: bytes) -> list[DNSRecord]:
    """Send every message on one connection, then read as many replies."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"".join(struct.pack("!H", len(m)) + m for m in messages))
        replies = []
        for _ in messages:
            (size,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 5))
            replies.append(DNSRecord.parse(await reader.readexactly(size)))
        return replies
    finally:
        writer.close()


async def test_udp_and_tcp_listeners_answer(server):
    assert rdata(await over_udp(server, query("web-1.web.internal"))) == ["10.0.0.5"]
    (reply,) = await over_tcp(server.port, query("web-1.web.internal", "AAAA").pack())
    assert rdata(reply) == ["fd00:1::5"]


async def test_one_tcp_connection_carries_several_queries(server):
    asked = [query("web-1.web.internal"), query("db.web.internal"), query("nope.web.internal")]
    replies = await over_tcp(server.port, *(q.pack() for q in asked))
    assert [r.header.id for r in replies] == [q.header.id for q in asked]
    assert [rdata(r) for r in replies] == [["10.0.0.5"], ["10.0.0.6"], []]
    assert replies[2].header.rcode == RCODE.NXDOMAIN


async def test_udp_truncates_and_tcp_then_gives_the_whole_answer(server):
    cut = await over_udp(server, query("big.web.internal"))
    assert (cut.header.tc, cut.rr) == (1, [])
    (full,) = await over_tcp(server.port, query("big.web.internal").pack())
    assert (full.header.tc, len(full.rr)) == (0, 60)
    assert server.dns.counters.truncated == 1


async def test_an_idle_tcp_connection_is_closed(dns):
    async with serving(dns, idle_timeout=0.2) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            assert await asyncio.wait_for(reader.read(), 5) == b""  # EOF from the server
        finally:
            writer.close()


async def test_garbage_is_formerr_and_a_headless_datagram_is_dropped(server):
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", server.port))
        await loop.sock_sendall(sock, b"\x01\x02\x03")  # dropped: no header
        await loop.sock_sendall(sock, struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
                                + b"\xff" * 20)
        # The first reply is the garbage's: the headless datagram got none.
        reply = DNSRecord.parse(await asyncio.wait_for(loop.sock_recv(sock, 512), 5))
    assert (reply.header.id, reply.header.rcode) == (0x4242, RCODE.FORMERR)
    c = server.dns.counters
    assert (c.queries, c.dropped, c.malformed) == (2, 1, 1)


@asynccontextmanager
async def upstream(answers: tuple[str, ...] | None = ("192.0.2.1",)
                   ) -> AsyncIterator[tuple[int, list[str]]]:
    """A tiny resolver on 127.0.0.1 (UDP and TCP) answering every A with `answers`;
    with None, one that never answers. Yields its port and the names it was asked."""
    asked: list[str] = []

    def reply_to(data: bytes) -> bytes | None:
        q = DNSRecord.parse(data)
        asked.append(str(q.q.qname))
        if answers is None:
            return None
        r = q.reply()
        r.add_answer(*(RR(q.q.qname, QTYPE.A, ttl=30, rdata=A(a)) for a in answers))
        return bytes(r.pack())

    class Datagrams(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            out = reply_to(data)
            if out is not None:
                self.transport.sendto(out, addr)  # type: ignore[attr-defined]

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        (size,) = struct.unpack("!H", await reader.readexactly(2))
        out = reply_to(await reader.readexactly(size))
        if out is not None:
            writer.write(struct.pack("!H", len(out)) + out)
            await writer.drain()
        writer.close()

    loop = asyncio.get_running_loop()
    for attempt in range(10):  # the UDP port picked may be taken for TCP: try another
        udp, _ = await loop.create_datagram_endpoint(Datagrams, local_addr=("127.0.0.1", 0))
        port = udp.get_extra_info("sockname")[1]
        try:
            tcp = await asyncio.start_server(stream, "127.0.0.1", port)
            break
        except OSError:
            udp.close()
            if attempt == 9:
                raise
    try:
        yield port, asked
    finally:
        udp.close()
        tcp.close()


async def test_names_outside_the_zones_are_relayed_to_the_upstream(view):
    async with upstream() as (port, asked):
        dns = InternalDns(view, DnsConfig(upstream=f"127.0.0.1:{port}", upstream_timeout=5))
        async with serving(dns) as server:
            by_udp = await over_udp(server, query("example.com"))
            (by_tcp,) = await over_tcp(server.port, query("example.org").pack())
            local = await over_udp(server, query("web-1.web.internal"))
    assert (rdata(by_udp), rdata(by_tcp), rdata(local)) == (
        ["192.0.2.1"], ["192.0.2.1"], ["10.0.0.5"])
    assert asked == ["example.com.", "example.org."]  # the zones' names never leave
    assert (dns.counters.forwarded, dns.counters.answered) == (2, 1)


async def test_an_upstream_that_does_not_answer_is_servfail(view):
    async with upstream(answers=None) as (port, asked):
        dns = InternalDns(view, DnsConfig(upstream=f"127.0.0.1:{port}", upstream_timeout=0.3))
        async with serving(dns) as server:
            reply = await over_udp(server, query("example.com"))
    assert (reply.header.rcode, asked) == (RCODE.SERVFAIL, ["example.com."])
    assert (dns.counters.servfail, dns.counters.forwarded) == (1, 0)


async def test_an_upstream_that_is_not_there_is_servfail(view):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    dns = InternalDns(view, DnsConfig(upstream=f"127.0.0.1:{closed_port}", upstream_timeout=5))
    async with serving(dns) as server:
        by_udp = await over_udp(server, query("example.com"))
        (by_tcp,) = await over_tcp(server.port, query("example.com").pack())
    assert (by_udp.header.rcode, by_tcp.header.rcode) == (RCODE.SERVFAIL, RCODE.SERVFAIL)


async def test_an_upstream_answer_too_big_for_the_client_is_truncated(view):
    async with upstream(answers=tuple(BIG)) as (port, _):
        dns = InternalDns(view, DnsConfig(upstream=f"127.0.0.1:{port}", upstream_timeout=5))
        async with serving(dns) as server:
            # The upstream ignores the client's 512 bytes; the relay does not.
            cut = await over_udp(server, query("example.com"))
            (full,) = await over_tcp(server.port, query("example.com").pack())
    assert (cut.header.tc, cut.rr, str(cut.q.qname)) == (1, [], "example.com.")
    assert (full.header.tc, len(full.rr)) == (0, 60)
    assert (dns.counters.forwarded, dns.counters.truncated) == (2, 1)


# -- dig ------------------------------------------------------------------------------------

needs_dig = pytest.mark.skipif(shutil.which("dig") is None,
                               reason="Debian's dig (package bind9-dnsutils) is not installed")


async def dig(server: DnsServer, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "dig", "@127.0.0.1", "-p", str(server.port), "+time=3", "+tries=1", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    return out.decode()


def lines(text: str) -> list[str]:
    return sorted(line for line in text.splitlines() if line)


@needs_dig
async def test_dig_reads_names_and_reverses(server):
    assert lines(await dig(server, "+short", "web-1.web.internal")) == ["10.0.0.5"]
    assert lines(await dig(server, "+short", "web-1.web.internal", "AAAA")) == ["fd00:1::5"]
    assert lines(await dig(server, "+short", "MULTI.web.internal")) == [
        "10.0.0.10", "10.0.0.11", "10.0.0.12"]
    assert lines(await dig(server, "+short", "-x", "10.0.0.6")) == ["db.example.com."]
    assert lines(await dig(server, "+short", "-x", "10.0.0.5")) == ["web-1.web.internal."]
    assert lines(await dig(server, "+short", "-x", "fd00:1::5")) == ["web-1.web.internal."]


@needs_dig
async def test_dig_sees_soa_ns_nxdomain_and_nodata(server):
    assert lines(await dig(server, "+short", "web.internal", "SOA")) == [
        "ns.web.internal. hostmaster.web.internal. 41 1200 180 1209600 10"]
    assert lines(await dig(server, "+short", "web.internal", "NS")) == ["ns.web.internal."]
    missing = await dig(server, "nope.web.internal")
    assert "status: NXDOMAIN" in missing and "flags: qr aa rd;" in missing
    assert "ANSWER: 0, AUTHORITY: 1" in missing
    assert "web.internal.\t\t10\tIN\tSOA\tns.web.internal. hostmaster.web.internal." in missing
    nodata = await dig(server, "db.web.internal", "AAAA")
    assert "status: NOERROR" in nodata and "ANSWER: 0, AUTHORITY: 1" in nodata
    assert "status: NXDOMAIN" in await dig(server, "-x", "10.0.0.99")


@needs_dig
async def test_dig_truncation_over_udp_then_the_whole_answer_over_tcp(server):
    cut = await dig(server, "+noedns", "+ignore", "big.web.internal")
    assert "flags: qr aa tc rd;" in cut and "ANSWER: 0" in cut
    assert lines(await dig(server, "+tcp", "+short", "big.web.internal")) == sorted(BIG)
    # Without +ignore, dig retries over TCP by itself on TC.
    assert lines(await dig(server, "+noedns", "+short", "big.web.internal")) == sorted(BIG)


@needs_dig
async def test_dig_edns_payload_is_honoured(server):
    small = await dig(server, "+bufsize=600", "+ignore", "big.web.internal")
    assert "flags: qr aa tc rd;" in small and "udp: 1232" in small
    roomy = await dig(server, "+bufsize=4096", "big.web.internal")
    assert "flags: qr aa rd;" in roomy and "ANSWER: 60" in roomy and "udp: 1232" in roomy


@needs_dig
async def test_dig_is_refused_outside_the_zones_and_on_networks_without_dhcp(server):
    assert "status: REFUSED" in await dig(server, "example.com")
    assert "status: REFUSED" in await dig(server, "x.off.internal")
    assert "status: REFUSED" in await dig(server, "-x", "10.1.0.5")


@needs_dig
async def test_dig_through_the_upstream(view):
    async with upstream() as (port, _):
        dns = InternalDns(view, DnsConfig(upstream=f"127.0.0.1:{port}", upstream_timeout=5))
        async with serving(dns) as server:
            assert lines(await dig(server, "+short", "example.com")) == ["192.0.2.1"]
            assert lines(await dig(server, "+tcp", "+short", "example.com")) == ["192.0.2.1"]


# -- a real view ----------------------------------------------------------------------------


MAC = "02:00:00:00:00:5a"


async def test_a_real_network_view_answers_names_and_reverses(ipam: IPAM, project):
    pn = await make_pn(ipam, project, "10.77.0.0/24")
    view = await ipam.network_view([pn.id])
    try:
        ip = await ipam.book(book_in(pn, project, resource=Resource.custom(MAC, "Web-1")))
        address = ip.address.split("/")[0]
        for _ in range(40):  # the watch brings the attachment, one change at a time
            if view.named(pn.id, "web-1"):
                break
            await view.changed(view.revision, 0.25)
        dns = InternalDns(view)
        assert rdata(ask(dns, "web-1.pn.internal")) == [address]
        assert rdata(ask(dns, ptr(address), "PTR")) == ["Web-1.pn.internal."]
        soa = ask(dns, "pn.internal", "SOA").rr[0].rdata
        assert soa.times[0] == view.revision and str(soa.mname) == "ns.pn.internal."
    finally:
        await view.close()


def test_a_repeated_question_is_answered_from_the_cache_until_the_view_changes(view):
    dns = InternalDns(view)
    first = ask(dns, "web-1.web.internal")
    again = ask(dns, "web-1.web.internal")  # a new id, the same answer, counted again
    assert rdata(again) == rdata(first) and again.header.id != first.header.id
    assert dns.counters.answered == 2 and len(dns._answers) == 1
    view.revision += 1  # any change of the view empties the cache
    ask(dns, "web-1.web.internal")
    assert dns.counters.answered == 3 and len(dns._answers) == 1


# -- the fast path answers as the full path does ------------------------------------------------


def _wire(name: str, qtype: str, *, edns: int | None, do: bool, rd: bool) -> bytes:
    message = query(name, qtype, edns=edns, do=do)
    message.header.rd = int(rd)
    return bytes(message.pack())


def _fast_and_full(dns: InternalDns, wire: bytes, tcp: bool) -> tuple[bytes | None, bytes]:
    full = dns._resolve(wire, tcp)  # the dnslib path, cache and fast path bypassed
    assert isinstance(full, bytes)
    return dns.fast.answer(wire, tcp), full


@pytest.mark.parametrize("upstream", [None, "127.0.0.1:9"])
def test_the_fast_path_answers_byte_for_byte_as_the_full_path(view, upstream):
    dns = InternalDns(view, DnsConfig(upstream=upstream))
    names = ["web-1.web.internal", "WEB-1.Web.Internal", "multi.web.internal",
             "app.eu.web.internal", "w.wide.internal", "bench.lab.internal", "t.tiny.internal",
             "mid.web.internal", "big.web.internal"]
    questions = [(n, t) for n in names for t in ("A", "AAAA")] + [
        (ptr(a), "PTR") for a in ("10.0.0.5", "10.0.0.6", "10.0.0.12", "172.16.3.4",
                                  "10.2.6.9", "10.3.0.20")]
    taken = 0
    for name, qtype in questions:
        for edns, do, rd, tcp in [(None, False, True, False), (1232, True, False, False),
                                  (4096, False, True, True), (512, False, True, False)]:
            wire = _wire(name, qtype, edns=edns, do=do, rd=rd)
            fast, full = _fast_and_full(dns, wire, tcp)
            if fast is not None:
                taken += 1
                assert fast == full, (name, qtype, edns, do, tcp)
    # Every name with records of the asked type, but the answers too big for the client.
    assert taken >= 50


@pytest.mark.parametrize("name,qtype", [
    ("nothing.web.internal", "A"),  # NXDOMAIN
    ("web.internal", "A"), ("web.internal", "SOA"), ("ns.web.internal", "A"),  # apex, server
    ("eu.web.internal", "A"),  # an empty non-terminal: NODATA
    ("db.web.internal", "AAAA"),  # no record of the type: NODATA
    ("web-1.web.internal", "MX"), ("web-1.web.internal", "ANY"),
    ("x.off.internal", "A"),  # DHCP off: not served
    ("example.com", "A"),  # not ours
    (ptr("10.0.0.7"), "PTR"), (ptr("10.0.0.99"), "PTR"),  # no name, nobody
    (ptr("fd00:1::5"), "PTR"),  # IPv6 reverse: the full path
    ("0.0.10.in-addr.arpa", "PTR"),  # between the apex and the addresses
])
def test_the_fast_path_leaves_every_other_question_to_the_full_path(dns, name, qtype):
    assert dns.fast.answer(_wire(name, qtype, edns=1232, do=False, rd=True), False) is None


def test_the_fast_path_leaves_unusual_messages_to_the_full_path(dns):
    plain = _wire("web-1.web.internal", "A", edns=None, do=False, rd=True)
    assert dns.fast.answer(plain, False) is not None
    compressed = plain[:12] + b"\xc0\x0c" + plain[-4:]  # a pointer where a name belongs
    answer_ = plain[:2] + bytes([plain[2] | 0x80]) + plain[3:]  # QR set: an answer
    notify = plain[:2] + bytes([(plain[2] & 0x87) | (4 << 3)]) + plain[3:]  # opcode NOTIFY
    trailing = plain + b"\x00"
    two_questions = plain[:4] + b"\x00\x02" + plain[6:]
    newer_edns = _wire("web-1.web.internal", "A", edns=1232, do=False, rd=True)
    newer_edns = newer_edns[:-5] + b"\x01" + newer_edns[-4:]  # EDNS version 1: BADVERS
    chaos = plain[:-2] + b"\x00\x03"  # class CH
    for message in (compressed, answer_, notify, trailing, two_questions, newer_edns, chaos,
                    plain[:16]):
        assert dns.fast.answer(message, False) is None
        dns.resolve(message, tcp=False)  # and the full path still answers (or drops) it


def test_a_change_in_the_view_reaches_the_fast_path_at_once(view, dns):
    wire = _wire("new.web.internal", "A", edns=None, do=False, rd=True)
    assert dns.fast.answer(wire, False) is None
    view.attach(lease(WEB, "10.0.0.77", "new"))
    assert DNSRecord.parse(dns.resolve(wire, tcp=False)).short() == "10.0.0.77"


# -- whose names a listener's clients see ----------------------------------------------------

# A new-user trial: one agent, Private Networks of two projects both named "lab-two"; the
# first's clients got the second's addresses and names. Project A's network has the higher
# id, which the lowest-id choice between equal zones passed over.
LAB_A = NetworkInfo("pn-lab-two-a", "lab-two", True, (SubnetInfo.of("s-a", "10.91.0.0/24"),),
                    project_id="project-a")
LAB_B = NetworkInfo("pn-lab-two-b", "lab-two", True, (SubnetInfo.of("s-b", "10.93.0.0/24"),),
                    project_id="project-b")
ONE_A = NetworkInfo("pn-lab-one-a", "lab-one", True, (SubnetInfo.of("s-c", "10.92.0.0/24"),),
                    project_id="project-a")  # project A's other network
AGAIN = NetworkInfo("pn-again", "again", True, (SubnetInfo.of("s-d", "10.93.0.0/24"),),
                    project_id="project-c")  # project B's range, reused in another VPC
LAB_A_SERVER, LAB_B_SERVER, ONE_A_SERVER = "10.91.0.254", "10.93.0.254", "10.92.0.254"
OFF_SERVER, WEB_SERVER = "10.1.0.254", "10.0.0.254"


def tenants_view() -> FakeView:
    return FakeView([LAB_A, LAB_B, ONE_A, WEB, OFF], [
        lease(LAB_A, "10.91.0.5", "web-moved"), lease(LAB_A, "10.91.0.6", "only-a"),
        lease(LAB_B, "10.93.0.5", "web-moved"), lease(LAB_B, "10.93.0.7", "only-b"),
        lease(LAB_B, "10.93.0.8", "named-b", reverses=("b.example.com",)),
        lease(ONE_A, "10.92.0.5", "one"), lease(WEB, "10.0.0.5", "web-1"),
        lease(OFF, "10.1.0.5", "x"),
    ])


def ask_at(dns: InternalDns, listener: str, name: str, qtype: str = "A") -> DNSRecord:
    """`name` asked at the listener on `listener`, by the fast path when it takes it; the
    full path must give the same bytes."""
    wire = bytes(query(name, qtype).pack())
    out = dns.resolve(wire, tcp=False, listener=listener)
    assert isinstance(out, bytes)
    assert dns._resolve(wire, False, listener) == out
    return DNSRecord.parse(out)


def not_ours(reply: DNSRecord) -> None:
    """What a name of no served network gets without an upstream."""
    assert (reply.header.rcode, reply.header.aa, reply.rr, reply.auth) == (
        RCODE.REFUSED, 0, [], [])


def test_same_named_networks_of_two_projects_each_answer_their_own_at_their_listener():
    dns = InternalDns(tenants_view())
    for _ in range(2):  # the second time from the answer cache, kept per listener
        assert rdata(ask_at(dns, LAB_A_SERVER, "web-moved.lab-two.internal")) == ["10.91.0.5"]
        assert rdata(ask_at(dns, LAB_B_SERVER, "web-moved.lab-two.internal")) == ["10.93.0.5"]
    assert rdata(ask_at(dns, LAB_A_SERVER, "only-a.lab-two.internal")) == ["10.91.0.6"]
    negative(ask_at(dns, LAB_A_SERVER, "only-b.lab-two.internal"), RCODE.NXDOMAIN,
             "lab-two.internal.")
    assert rdata(ask_at(dns, LAB_A_SERVER, "ns.lab-two.internal")) == [LAB_A_SERVER]
    assert rdata(ask_at(dns, LAB_B_SERVER, "ns.lab-two.internal")) == [LAB_B_SERVER]


def test_another_projects_reverse_is_not_answered_at_a_listener():
    dns = InternalDns(tenants_view())
    for address in ("10.93.0.5", "10.93.0.8", LAB_B_SERVER):
        not_ours(ask_at(dns, LAB_A_SERVER, ptr(address), "PTR"))
    not_ours(ask_at(dns, LAB_A_SERVER, "93.10.in-addr.arpa", "SOA"))
    assert rdata(ask_at(dns, LAB_B_SERVER, ptr("10.93.0.8"), "PTR")) == ["b.example.com."]
    assert rdata(ask_at(dns, LAB_A_SERVER, ptr("10.91.0.5"), "PTR")) == [
        "web-moved.lab-two.internal."]
    forwarding = InternalDns(tenants_view(), DnsConfig(upstream="192.0.2.53:5353"))
    outcome = forwarding.resolve(query(ptr("10.93.0.5"), "PTR").pack(), tcp=False,
                                 listener=LAB_A_SERVER)
    assert isinstance(outcome, Forward)  # as a name of no served network: to the upstream


def test_another_network_of_the_same_project_is_not_seen_at_a_listener():
    dns = InternalDns(tenants_view())
    not_ours(ask_at(dns, LAB_A_SERVER, "one.lab-one.internal"))
    not_ours(ask_at(dns, LAB_A_SERVER, ptr("10.92.0.5"), "PTR"))
    not_ours(ask_at(dns, ONE_A_SERVER, "only-a.lab-two.internal"))
    assert rdata(ask_at(dns, ONE_A_SERVER, "one.lab-one.internal")) == ["10.92.0.5"]


def test_a_listener_that_cannot_tell_whose_client_asks_answers_no_network():
    # A network without DHCP, a range two networks share, a wildcard, an address of none.
    view = tenants_view()
    view._networks.append(AGAIN)
    dns = InternalDns(view)
    for listener in (OFF_SERVER, LAB_B_SERVER, "0.0.0.0", "192.0.2.1"):
        not_ours(ask_at(dns, listener, "web-1.web.internal"))
        not_ours(ask_at(dns, listener, "web-moved.lab-two.internal"))
        not_ours(ask_at(dns, listener, ptr("10.93.0.5"), "PTR"))
    assert rdata(ask_at(dns, WEB_SERVER, "web-1.web.internal")) == ["10.0.0.5"]
    # The host itself (loopback) and a caller that names no listener see every network.
    assert rdata(ask_at(dns, "127.0.0.1", "one.lab-one.internal")) == ["10.92.0.5"]
    assert rdata(ask(dns, "web-1.web.internal")) == ["10.0.0.5"]


def test_the_networks_a_listener_sees_follow_the_view():
    view = tenants_view()
    dns = InternalDns(view)
    assert [n.id for n in dns.zones.visible(LAB_A_SERVER)] == [LAB_A.id]
    view._networks[0] = NetworkInfo(LAB_A.id, LAB_A.name, False, LAB_A.subnets,
                                    LAB_A.project_id)
    view.revision += 1  # its DHCP turned off: its listener answers nothing, nor B's names
    assert dns.zones.visible(LAB_A_SERVER) == []
    not_ours(ask_at(dns, LAB_A_SERVER, "web-moved.lab-two.internal"))


needs_lab = pytest.mark.skipif(
    (netlab.available() or (None if shutil.which("dig") else "dig is not installed"))
    is not None, reason="network namespaces cannot be made here, or dig is missing")


@needs_lab
async def test_an_agent_of_two_projects_same_named_networks_answers_each_client_its_own(
        ipam: IPAM, etcd_single: EtcdCluster, key_prefix: str):
    """The trial's setup: `ipam dhcp --interface br0=PN1 --interface br2=PN3`, both named
    lab-two, of two projects; each client asks its own network's server address."""
    networks, addresses = [], []
    for n, cidr in enumerate(("10.91.0.0/24", "10.93.0.0/24")):
        project = str(uuid.uuid4())
        pn = await ipam.create_private_network(REGION, project, None, "lab-two", subnets=[cidr])
        ip = await ipam.book(book_in(pn, project, resource=Resource.custom(
            f"02:00:00:91:00:0{n}", "web-moved")))
        networks.append(pn.id)
        addresses.append(ip.address.split("/")[0])
    servers = "10.91.0.254", "10.93.0.254"
    with NetLab() as lab:
        bridges = lab.add_bridge(), lab.add_bridge()
        for bridge, server in zip(bridges, servers, strict=True):
            lab.exec_in(lab.namespace, ["ip", "addr", "add", f"{server}/24", "dev", bridge])
        clients = (lab.add_host(bridges[0], "10.91.0.100/24"),
                   lab.add_host(bridges[1], "10.93.0.100/24"))

        def dig_from(side: int, *args: str) -> list[str]:
            return lines(lab.exec_in(clients[side].namespace, [
                "dig", f"@{servers[side]}", "+time=3", "+tries=1", *args]).stdout)

        async def agent_answers() -> list[list[str]]:
            # In the lab's thread, so that the agent's sockets are the lab's; etcd is
            # reached through gRPC's threads, which the host's `ipam` started on the host.
            async with connected(etcd_single.endpoints, key_prefix) as own:
                agent = Agent(own, AgentConfig(interfaces=tuple(zip(bridges, networks,
                                                                    strict=True))))
                await agent.start()
                try:
                    view = agent.view
                    assert view is not None
                    for _ in range(40):  # the watch brings the attachments
                        if all(view.named(pn, "web-moved") for pn in networks):
                            break
                        await view.changed(view.revision, 0.25)
                    asked: list[tuple[int, tuple[str, ...]]] = [
                        (0, ("+short", "web-moved.lab-two.internal")),
                        (1, ("+short", "web-moved.lab-two.internal")),
                        (0, ("-x", addresses[1])),
                        (0, ("+short", "-x", addresses[0]))]
                    return list(await asyncio.gather(*(asyncio.to_thread(dig_from, side, *args)
                                                       for side, args in asked)))
                finally:
                    await agent.close()

        at_a, at_b, b_reverse_at_a, a_reverse_at_a = await asyncio.to_thread(
            lab.call, lambda: asyncio.run(agent_answers()))
    assert (at_a, at_b) == ([addresses[0]], [addresses[1]])
    assert any("status: REFUSED" in line for line in b_reverse_at_a)
    assert not any("web-moved" in line for line in b_reverse_at_a)
    assert a_reverse_at_a == ["web-moved.lab-two.internal."]
