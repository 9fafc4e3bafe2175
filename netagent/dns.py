"""The internal DNS of Private Networks: `<resource-name>.<network-name>.internal` and the reverse.

Authoritative, for every served network whose DHCP is enabled, for

    <network-name>.internal           SOA; NS ns.<domain>, whose A/AAAA are the subnets' servers
    <resource-name>.<domain>          A / AAAA: every IP attached to a resource of that name
    the reverse zones of its subnets  PTR: the IP's reverses when set, else <resource-name>.<domain>

and nothing else: other names are relayed to the upstream resolver when one is configured,
REFUSED otherwise. The records are read from the view on every query (DESIGN.md 2b: the
attachment is the lease), so a move or a detach shows at the next query; the TTLs are short
for the same reason.

Reverse zones sit on label boundaries: an IPv4 subnet of /N is served as the /ceil8(N) zones
it spans (a /22 as four /24 zones) and a subnet smaller than a /24 as its enclosing /24, the
usual practice; IPv6 the same on nibbles (a /64 is one zone).

    Query       one message, parsed once at the edge (question, EDNS, transport)
    Zones       pure lookups over the view: which zone, which records, which rcode
    InternalDns bytes in, bytes out (pure), plus relaying to the upstream (its only I/O)
    DnsServer   UDP and TCP listeners on one (host, port)

    dns = InternalDns(view, DnsConfig(upstream="192.0.2.53:53"))
    server = await serve_dns(dns, "10.0.0.254", 53)    # or: async with DnsServer(...)
    ...
    await server.close()
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Protocol, Self

from dnslib import (
    AAAA,
    CLASS,
    EDNS0,
    NS,
    PTR,
    QTYPE,
    RCODE,
    RR,
    SOA,
    A,
    DNSHeader,
    DNSLabel,
    DNSQuestion,
    DNSRecord,
)

from allocator.contract import Lease, NetworkInfo

RECEIVE_BUFFER = 4 * 1024 * 1024  # the UDP socket's receive buffer
ANSWER_CACHE = 65_536  # cached answers at most; the cache starts over beyond

log = logging.getLogger(__name__)

DEFAULT_TTL = 60  # attachments move: a cached answer must not outlive the move for long
NEGATIVE_TTL = 10  # a VM that just booted should be reachable by name within seconds
UDP_PAYLOAD = 1232  # the most we send over UDP (DNS flag day 2020: no IP fragmentation)
CLASSIC_UDP = 512  # RFC 1035: what a client without EDNS can take
TCP_MAX = 65535  # the two-byte length prefix of DNS over TCP
BADVERS = 16  # RFC 6891: an EDNS version we do not speak (extended rcode)

# The 16-bit flags word of the header (RFC 1035 4.1.1).
_QR, _OPCODE, _AA, _TC, _RD, _RA, _CD = 0x8000, 0x7800, 0x0400, 0x0200, 0x0100, 0x0080, 0x0010

# SOA timers after dnsmasq's: nobody transfers these zones, but resolvers read `minimum`.
_REFRESH, _RETRY, _EXPIRE = 1200, 180, 1209600

_REVERSE_SUFFIXES: dict[tuple[bytes, ...], int] = {(b"in-addr", b"arpa"): 4, (b"ip6", b"arpa"): 6}
_TRANSFERS = frozenset({QTYPE.AXFR, QTYPE.IXFR})
_CLASS_ANY = 255  # dnslib spells it '*'


@dataclass(frozen=True)
class DnsConfig:
    """How the internal DNS answers; the agent's flags fill it."""

    upstream: str | None = None  # host:port for names outside the zones; None: REFUSED
    upstream_timeout: float = 2.0  # after which the client gets SERVFAIL
    ttl: int = DEFAULT_TTL
    negative_ttl: int = NEGATIVE_TTL
    udp_payload: int = UDP_PAYLOAD  # the most we send over UDP, whatever the client takes
    networks: tuple[str, ...] | None = None  # the networks answered for; None: the view's


class DnsView(Protocol):
    """What the DNS reads of IPAM: `allocator.contract.NetworkView` is one."""

    revision: int  # the etcd revision of the newest change: the zones' SOA serial

    def networks(self) -> list[NetworkInfo]: ...

    def named(self, pn_id: str, name: str) -> list[Lease]: ...

    def at(self, address: str) -> Lease | None: ...

    def leases(self, pn_id: str) -> list[Lease]: ...


@dataclass
class DnsCounters:
    """What the DNS did with the messages it received; each message counts once, except
    `truncated`, which also counts under its rcode."""

    queries: int = 0  # every message received
    answered: int = 0  # authoritative NOERROR, with records or without (NODATA)
    nxdomain: int = 0  # authoritative: the name does not exist
    refused: int = 0  # not ours and no upstream, a network without DHCP, a zone transfer
    forwarded: int = 0  # relayed to the upstream, and its answer relayed back
    servfail: int = 0  # the upstream did not answer in time, or an internal error
    malformed: int = 0  # FORMERR, NOTIMP or BADVERS
    dropped: int = 0  # no answer at all: no header, a response, too many relays at once
    truncated: int = 0  # UDP answers cut down to the header and question, TC set


# -- one message --------------------------------------------------------------------------


@dataclass(frozen=True)
class EDNS:
    """The OPT record of a query (RFC 6891)."""

    payload: int  # the UDP payload size the client can take
    version: int
    do: bool  # DNSSEC OK: echoed, though these zones are unsigned


@dataclass(frozen=True)
class Query:
    """A well-formed query, as parsed once at the edge."""

    raw: bytes  # relayed as is to the upstream
    id: int
    flags: int
    question: DNSQuestion
    edns: EDNS | None
    tcp: bool


@dataclass(frozen=True)
class Forward:
    """The decision that a query is not ours: relay it (`InternalDns.forward`)."""

    query: Query


@dataclass(frozen=True)
class Answer:
    """What the zones say about one question; `InternalDns` makes the message of it."""

    rcode: int
    answer: tuple[RR, ...] = ()
    authority: tuple[RR, ...] = ()
    additional: tuple[RR, ...] = ()


# -- the zones ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Zone:
    network: NetworkInfo  # whose name server and hostmaster the SOA names
    apex: DNSLabel


@dataclass(frozen=True)
class _Reverse:
    """A served subnet whose reverse zone a query name falls in."""

    network: NetworkInfo
    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network
    server: ipaddress.IPv4Address | ipaddress.IPv6Address  # its own: PTR ns.<domain>
    apex_bits: int


class Zones:
    """The zones of the served networks over the view: pure lookups, no I/O."""

    def __init__(self, view: DnsView, networks: Collection[str] | None = None, *,
                 ttl: int = DEFAULT_TTL, negative_ttl: int = NEGATIVE_TTL) -> None:
        self.view = view
        self.pn_ids = frozenset(networks) if networks is not None else None
        self.ttl, self.negative_ttl = ttl, negative_ttl
        # network id -> (view revision, names that exist only as parents of dotted names)
        self._parents: dict[str, tuple[int, frozenset[str]]] = {}

    def served(self) -> list[NetworkInfo]:
        """The networks answered for: DHCP enabled and, when a set was given, in it."""
        return sorted((n for n in self.view.networks() if n.dhcp_enabled
                       and (self.pn_ids is None or n.id in self.pn_ids)), key=lambda n: n.id)

    def lookup(self, question: DNSQuestion) -> Answer | None:
        """The authoritative answer to `question`, or None when no served zone holds it."""
        if question.qclass not in (CLASS.IN, _CLASS_ANY):
            return None
        qname: DNSLabel = question.qname
        labels = tuple(label.lower() for label in qname.label)
        served = self.served()
        if labels[-2:] in _REVERSE_SUFFIXES:
            return self._reverse(qname, labels, question.qtype, served)
        return self._forward(qname, labels, question.qtype, served)

    # -- <name>.<network>.internal ---------------------------------------------------------

    def _forward(self, qname: DNSLabel, labels: tuple[bytes, ...], qtype: int,
                 served: list[NetworkInfo]) -> Answer | None:
        best: tuple[NetworkInfo, tuple[bytes, ...]] | None = None
        for network in served:
            apex = _domain_labels(network.domain)
            # The longest apex wins: `a.b.internal` is its own zone inside `b.internal`.
            if (apex is not None and len(apex) <= len(labels)
                    and labels[len(labels) - len(apex):] == apex
                    and (best is None or len(apex) > len(best[1]))):
                best = (network, apex)
        if best is None:
            return None
        network, apex = best
        zone = _Zone(network, DNSLabel(apex))
        if qtype in _TRANSFERS:
            return Answer(RCODE.REFUSED)
        relative = labels[:len(labels) - len(apex)]
        additional: tuple[RR, ...] = ()
        if not relative:
            records = {QTYPE.SOA: [self._soa(zone, qname, self.ttl)],
                       QTYPE.NS: [self._ns(zone, qname)]}
            if qtype in (QTYPE.NS, QTYPE.ANY):
                additional = tuple(self._servers(network, _ns_name(network)))
        elif relative == (b"ns",):
            # The zone's name server is the network's own: its name is reserved.
            records = _by_type(self._servers(network, qname))
        else:
            name = b".".join(relative).decode("utf-8", "replace")
            leases = self.view.named(network.id, name)
            if not leases:
                if name in self._parent_names(network):
                    return self._nodata(zone)
                return self._nxdomain(zone)
            records = _by_type(self._address(qname, lease.address, lease.is_ipv6)
                               for lease in sorted(leases, key=_address_order))
        return self._select(zone, records, qtype, additional)

    def _parent_names(self, network: NetworkInfo) -> frozenset[str]:
        """Names that exist only as parents of dotted resource names (`b` of `a.b`): empty
        non-terminals answer NODATA, not NXDOMAIN, or resolvers would drop `a.b` with them."""
        cached = self._parents.get(network.id)
        if cached is not None and cached[0] == self.view.revision:
            return cached[1]
        parents: set[str] = set()
        for lease in self.view.leases(network.id):
            parts = (lease.name or "").lower().split(".")
            parents.update(".".join(parts[i:]) for i in range(1, len(parts)))
        self._parents[network.id] = (self.view.revision, frozenset(parents))
        return self._parents[network.id][1]

    # -- the reverse zones -----------------------------------------------------------------

    def _reverse(self, qname: DNSLabel, labels: tuple[bytes, ...], qtype: int,
                 served: list[NetworkInfo]) -> Answer | None:
        version = _REVERSE_SUFFIXES[labels[-2:]]
        unit, width = (8, 32) if version == 4 else (4, 128)
        digits = labels[:-2][::-1]  # most significant first
        value = count = 0
        for label in digits[:width // unit]:
            digit = _digit(label, version)
            if digit is None:
                break
            value, count = (value << unit) | digit, count + 1
        bits = count * unit
        candidates = [r for r in _reverses(served, version)
                      if bits >= r.apex_bits
                      and _block(value, bits, r.apex_bits, width).overlaps(r.subnet)]
        if not candidates:
            return None
        # Subnets of different networks may share an apex (two /28s of one /24): the most
        # specific zone, then the first network, names the SOA.
        owner = max(candidates, key=lambda r: r.apex_bits)
        apex = _reverse_apex(_block(value, bits, owner.apex_bits, width), unit)
        zone = _Zone(owner.network, apex)
        if qtype in _TRANSFERS:
            return Answer(RCODE.REFUSED)
        if count < len(digits):  # a label that is no digit, or deeper than an address
            return self._nxdomain(zone)
        if bits == owner.apex_bits:
            records = {QTYPE.SOA: [self._soa(zone, qname, self.ttl)],
                       QTYPE.NS: [self._ns(zone, qname)]}
            additional: tuple[RR, ...] = ()
            if qtype in (QTYPE.NS, QTYPE.ANY):
                additional = tuple(self._servers(owner.network, _ns_name(owner.network)))
            return self._select(zone, records, qtype, additional)
        if bits < width:
            # Between the apex and the addresses: an empty non-terminal if it covers any
            # of the subnet. Saying so for a block without records costs a NODATA; saying
            # NXDOMAIN for one with records would hide them from qname-minimising resolvers.
            block = _block(value, bits, bits, width)
            if any(block.overlaps(r.subnet) for r in candidates):
                return self._nodata(zone)
            return self._nxdomain(zone)
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = (
            ipaddress.IPv6Address(value) if version == 6 else ipaddress.IPv4Address(value))
        targets = next((self._ptr_targets(r, address) for r in candidates
                        if address in r.subnet), [])
        if not targets:
            return self._nxdomain(zone)
        records = {QTYPE.PTR: [RR(qname, QTYPE.PTR, ttl=self.ttl, rdata=PTR(t)) for t in targets]}
        return self._select(zone, records, qtype)

    def _ptr_targets(self, reverse: _Reverse,
                     address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[DNSLabel]:
        network = reverse.network
        lease = self.view.at(str(address))
        if lease is not None and lease.private_network_id != network.id:
            # `at` keys on the address alone, and networks of different VPCs may share one.
            lease = next((x for x in self.view.leases(network.id) if x.address == str(address)),
                         None)
        if lease is None:
            return [_ns_name(network)] if address == reverse.server else []
        if lease.reverses:
            names: Iterable[str] = lease.reverses
        elif lease.name:
            names = (f"{lease.name}.{network.domain}",)
        else:
            names = ()
        return [label for label in map(_dns_name, names) if label is not None]

    # -- records ---------------------------------------------------------------------------

    def _select(self, zone: _Zone, records: dict[int, list[RR]], qtype: int,
                additional: tuple[RR, ...] = ()) -> Answer:
        if qtype == QTYPE.ANY:
            answer = [rr for rrs in records.values() for rr in rrs]
        else:
            answer = records.get(qtype, [])
        if not answer:
            return self._nodata(zone)
        return Answer(RCODE.NOERROR, tuple(answer), additional=additional)

    def _nodata(self, zone: _Zone) -> Answer:
        return Answer(RCODE.NOERROR, authority=(self._negative_soa(zone),))

    def _nxdomain(self, zone: _Zone) -> Answer:
        return Answer(RCODE.NXDOMAIN, authority=(self._negative_soa(zone),))

    def _negative_soa(self, zone: _Zone) -> RR:
        # RFC 2308: a negative answer is cached for min(SOA TTL, SOA minimum).
        return self._soa(zone, zone.apex, min(self.ttl, self.negative_ttl))

    def _soa(self, zone: _Zone, rname: DNSLabel, ttl: int) -> RR:
        domain = zone.network.domain
        times = (self.view.revision % 2**32, _REFRESH, _RETRY, _EXPIRE, self.negative_ttl)
        return RR(rname, QTYPE.SOA, ttl=ttl,
                  rdata=SOA(_ns_name(zone.network), f"hostmaster.{domain}.", times))

    def _ns(self, zone: _Zone, rname: DNSLabel) -> RR:
        return RR(rname, QTYPE.NS, ttl=self.ttl, rdata=NS(_ns_name(zone.network)))

    def _servers(self, network: NetworkInfo, rname: DNSLabel) -> list[RR]:
        return [self._address(rname, s.server, s.is_ipv6) for s in network.subnets]

    def _address(self, rname: DNSLabel, address: str, is_ipv6: bool) -> RR:
        if is_ipv6:
            return RR(rname, QTYPE.AAAA, ttl=self.ttl, rdata=AAAA(address))
        return RR(rname, QTYPE.A, ttl=self.ttl, rdata=A(address))


def _by_type(records: Iterable[RR]) -> dict[int, list[RR]]:
    out: dict[int, list[RR]] = {}
    for rr in records:
        out.setdefault(rr.rtype, []).append(rr)
    return out


def _address_order(lease: Lease) -> tuple[bool, int]:
    # A stable order, so that two agents give byte-identical answers.
    return lease.is_ipv6, int(ipaddress.ip_address(lease.address))


@lru_cache(maxsize=1024)
def _domain_labels(domain: str) -> tuple[bytes, ...] | None:
    """The lowercase labels of a zone, or None when the network's name is no DNS name."""
    label = _dns_name(domain)
    return None if label is None else tuple(x.lower() for x in label.label)


def _dns_name(name: str) -> DNSLabel | None:
    """`name` as an absolute DNS name, or None when it cannot be one (it is then skipped
    rather than let one bad hostname fail the whole answer)."""
    try:
        label = DNSLabel(name.strip().rstrip(".") + ".")
    except (UnicodeError, ValueError):
        return None
    parts = label.label
    if not parts or len(label) > 253 or any(not 0 < len(p) <= 63 for p in parts):
        return None
    return label


def _ns_name(network: NetworkInfo) -> DNSLabel:
    return DNSLabel(f"ns.{network.domain}.")


def _digit(label: bytes, version: int) -> int | None:
    """One label of a reverse name as a number: an octet (canonical decimal, no leading
    zero) under in-addr.arpa, a nibble under ip6.arpa."""
    if version == 6:
        return int(label, 16) if len(label) == 1 and label in b"0123456789abcdef" else None
    if not label.isdigit() or len(label) > 3 or (len(label) > 1 and label[:1] == b"0"):
        return None
    octet = int(label)
    return octet if octet < 256 else None


def _block(value: int, bits: int, keep: int, width: int
           ) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The address block named by the first `keep` of the `bits` leading bits in `value`."""
    prefix = value >> (bits - keep)
    if width == 32:
        return ipaddress.IPv4Network((prefix << (32 - keep), keep))
    return ipaddress.IPv6Network((prefix << (128 - keep), keep))


def _reverse_apex(block: ipaddress.IPv4Network | ipaddress.IPv6Network, unit: int) -> DNSLabel:
    if block.version == 4:
        octets = str(block.network_address).split(".")[:block.prefixlen // 8]
        return DNSLabel(".".join([*reversed(octets), "in-addr", "arpa"]))
    nibbles = block.network_address.exploded.replace(":", "")[:block.prefixlen // unit]
    return DNSLabel(".".join([*reversed(nibbles), "ip6", "arpa"]))


def _reverses(served: list[NetworkInfo], version: int) -> list[_Reverse]:
    out = []
    for network in served:
        for subnet in network.subnets:
            block = ipaddress.ip_network(subnet.cidr, strict=False)
            if block.version == version:
                out.append(_Reverse(network, block, ipaddress.ip_address(subnet.server),
                                    _apex_bits(block)))
    return out


def _apex_bits(block: ipaddress.IPv4Network | ipaddress.IPv6Network) -> int:
    """The prefix length of the reverse zones serving `block`: rounded up to a label
    boundary, but never past the last label above the addresses (a /28 is served by its /24)."""
    unit = 8 if block.version == 4 else 4
    width = block.max_prefixlen
    return min(-(-block.prefixlen // unit) * unit, width - unit)


# -- the internal DNS -------------------------------------------------------------------------


@dataclass(frozen=True)
class Upstream:
    """The resolver that names outside every served zone are relayed to."""

    host: str
    port: int = 53
    timeout: float = 2.0  # after which the client gets SERVFAIL

    @classmethod
    def parse(cls, text: str, timeout: float = 2.0) -> Upstream:
        """`host`, `host:port`, `[v6]:port` or a bare IPv6 address."""
        text = text.strip()
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            return cls(host, int(rest[1:]) if rest.startswith(":") else 53, timeout)
        if text.count(":") == 1:
            host, port = text.split(":")
            return cls(host, int(port), timeout)
        return cls(text, 53, timeout)

    async def exchange(self, query: bytes, *, tcp: bool) -> bytes:
        """The upstream's answer to `query`, over the client's transport; TimeoutError
        after `timeout`, OSError when it cannot be reached."""
        async with asyncio.timeout(self.timeout):
            return await (self._tcp(query) if tcp else self._udp(query))

    async def _udp(self, query: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[bytes] = loop.create_future()
        # A fresh socket per relay: a random source port, and only the upstream's datagrams.
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UpstreamAnswer(query[:2], answer), remote_addr=(self.host, self.port))
        try:
            transport.sendto(query)
            return await answer
        finally:
            transport.close()

    async def _tcp(self, query: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(struct.pack("!H", len(query)) + query)
            await writer.drain()
            (size,) = struct.unpack("!H", await reader.readexactly(2))
            return await reader.readexactly(size)
        finally:
            writer.close()


class _UpstreamAnswer(asyncio.DatagramProtocol):
    def __init__(self, query_id: bytes, answer: asyncio.Future[bytes]) -> None:
        self.query_id, self.answer = query_id, answer

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # Only a response to this query: anything else is ignored until the timeout.
        if (not self.answer.done() and len(data) >= 12 and data[:2] == self.query_id
                and data[2] & 0x80):
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():  # ICMP port unreachable: fail now, not at the timeout
            self.answer.set_exception(exc)


class InternalDns:
    """Answers DNS messages from the zones of the served networks, relays the rest.

    `resolve` is pure (no I/O): bytes in; bytes, a `Forward` decision or None (drop) out.
    `forward` relays one `Forward` to the upstream; `handle` does both.
    """

    def __init__(self, view: DnsView, config: DnsConfig | None = None,
                 counters: DnsCounters | None = None) -> None:
        self.config = config = config if config is not None else DnsConfig()
        self.zones = Zones(view, config.networks, ttl=config.ttl,
                           negative_ttl=config.negative_ttl)
        self.upstream = (Upstream.parse(config.upstream, config.upstream_timeout)
                         if config.upstream else None)
        self.udp_payload = max(CLASSIC_UDP, config.udp_payload)
        self.counters = counters if counters is not None else DnsCounters()
        self.view = view
        # Answers by (the message but its id, TCP or not), valid while the view stays at
        # one revision: parsing and packing cost ~100 us a query, a hit costs a slice.
        self._answers: dict[tuple[bytes, bool], tuple[bytes, dict[str, int]]] = {}
        self._answers_revision = -1

    async def handle(self, data: bytes, *, tcp: bool) -> bytes | None:
        """The reply to one message (relayed through the upstream when not ours), or None."""
        outcome = self.resolve(data, tcp=tcp)
        if isinstance(outcome, Forward):
            return await self.forward(outcome)
        return outcome

    def resolve(self, data: bytes, *, tcp: bool) -> bytes | Forward | None:
        """The reply to one message from the served zones, without I/O: the reply's bytes,
        a `Forward` when the name is not ours and an upstream is set, or None to drop it."""
        self.counters.queries += 1
        if self.view.revision != self._answers_revision or len(self._answers) > ANSWER_CACHE:
            self._answers.clear()
            self._answers_revision = self.view.revision
        key = (bytes(data[2:]), tcp)
        hit = self._answers.get(key)
        if hit is not None and len(data) >= 12:
            reply, counted = hit
            for name, n in counted.items():  # count it as the first one was counted
                setattr(self.counters, name, getattr(self.counters, name) + n)
            return bytes(data[:2]) + reply[2:]
        before = asdict(self.counters)
        try:
            outcome = self._resolve(data, tcp)
        except Exception:  # a bug costs one answer, never the server
            log.exception("dns: cannot answer a %d-byte message", len(data))
            msg_id, flags = struct.unpack_from("!HH", data)  # _resolve checked the length
            return self._bare(msg_id, flags, RCODE.SERVFAIL)
        if isinstance(outcome, bytes):
            after = asdict(self.counters)
            self._answers[key] = (outcome, {k: after[k] - v for k, v in before.items()
                                            if k != "queries" and after[k] != v})
        return outcome

    async def forward(self, forward: Forward) -> bytes:
        """Relay a query to the upstream; its answer, or SERVFAIL when it has none in time."""
        query = forward.query
        try:
            if self.upstream is None:
                raise OSError("no upstream")
            answer = await self.upstream.exchange(query.raw, tcp=query.tcp)
            if len(answer) < 12 or answer[:2] != query.raw[:2]:
                raise OSError("the upstream answered another query")
        except (OSError, TimeoutError, EOFError) as err:  # the client's SERVFAIL
            log.info("dns: upstream %s failed for %s: %r", self.upstream,
                     query.question.qname, err)
            return self._reply(query, RCODE.SERVFAIL)
        self.counters.forwarded += 1
        limit = self._limit(query)
        if len(answer) <= limit:
            return answer
        self.counters.truncated += 1
        # The client may take less than the upstream sent (it may ignore EDNS, or we relay
        # over UDP with a smaller payload): send what fits, and the client retries over TCP.
        (flags,) = struct.unpack_from("!H", answer, 2)
        return self._fit(query, DNSRecord(DNSHeader(id=query.id, bitmap=flags | _TC),
                                          [query.question]), flags & 0xF)

    # -- one message -----------------------------------------------------------------------

    def _resolve(self, data: bytes, tcp: bool) -> bytes | Forward | None:
        if len(data) < 12:
            self.counters.dropped += 1  # not even a header to answer to
            return None
        msg_id, flags = struct.unpack_from("!HH", data)
        if flags & _QR:
            self.counters.dropped += 1  # never answer an answer: no loops, no reflection
            return None
        if flags & _OPCODE:
            return self._bare(msg_id, flags, RCODE.NOTIMP)
        query = self._parse(data, msg_id, flags, tcp)
        if query is None:
            return self._bare(msg_id, flags, RCODE.FORMERR)
        if query.edns is not None and query.edns.version > 0:
            return self._reply(query, BADVERS)
        answer = self.zones.lookup(query.question)
        if answer is None:
            if self.upstream is not None:
                return Forward(query)
            return self._reply(query, RCODE.REFUSED)
        # A refusal (a zone transfer) is no statement about the zone's data: no AA.
        return self._reply(query, answer.rcode, answer,
                           authoritative=answer.rcode != RCODE.REFUSED)

    @staticmethod
    def _parse(data: bytes, msg_id: int, flags: int, tcp: bool) -> Query | None:
        """The query in `data`, or None when it is no well-formed query of one question."""
        try:
            record = DNSRecord.parse(data)
        except Exception:  # noqa: BLE001 - dnslib raises more than DNSError on bad input
            return None
        opts = [rr for rr in record.ar if rr.rtype == QTYPE.OPT]
        if len(record.questions) != 1 or len(opts) > 1:
            return None
        question = record.questions[0]
        labels = question.qname.label
        # The wire allows names dnslib cannot write back (long labels, more than 255 bytes).
        if question.qtype == QTYPE.OPT or len(question.qname) > 253 or any(
                len(label) > 63 for label in labels):
            return None
        edns = None
        if opts:
            opt = opts[0]
            edns = EDNS(opt.rclass, (opt.ttl >> 16) & 0xFF, bool(opt.ttl & 0x8000))
        return Query(data, msg_id, flags, question, edns, tcp)

    def _limit(self, query: Query) -> int:
        """How many bytes the reply may take: a UDP client's advertised payload (at least
        512, at most ours), or what a TCP length prefix can carry."""
        if query.tcp:
            return TCP_MAX
        if query.edns is None:
            return CLASSIC_UDP
        return max(CLASSIC_UDP, min(query.edns.payload, self.udp_payload))

    def _reply(self, query: Query, rcode: int, answer: Answer | None = None,
               authoritative: bool = False) -> bytes:
        flags = _QR | (query.flags & (_OPCODE | _RD | _CD)) | (rcode & 0xF)
        if authoritative:
            flags |= _AA
        if self.upstream is not None:
            flags |= _RA  # recursion is what relaying to the upstream offers
        sections = answer or Answer(rcode)
        reply = DNSRecord(DNSHeader(id=query.id, bitmap=flags), [query.question],
                          list(sections.answer), auth=list(sections.authority),
                          ar=list(sections.additional))
        self._count(rcode)
        return self._fit(query, reply, rcode)

    def _fit(self, query: Query, reply: DNSRecord, rcode: int) -> bytes:
        """The reply's bytes, with an OPT when the query had one; cut to the header and
        question with TC set when they exceed what the client can take."""
        opt = None
        if query.edns is not None:
            opt = EDNS0(udp_len=self.udp_payload, ext_rcode=rcode >> 4,
                        flags="do" if query.edns.do else "")
            reply.add_ar(opt)
        packed = bytes(reply.pack())
        if len(packed) <= self._limit(query):
            return packed
        self.counters.truncated += 1
        reply.header.tc = 1
        short = DNSRecord(reply.header, [query.question], ar=[opt] if opt is not None else [])
        return bytes(short.pack())

    def _bare(self, msg_id: int, flags: int, rcode: int) -> bytes:
        """A header-only error reply, for messages whose question cannot be trusted."""
        self._count(rcode)
        bitmap = _QR | (flags & (_OPCODE | _RD | _CD)) | rcode
        return bytes(DNSRecord(DNSHeader(id=msg_id, bitmap=bitmap)).pack())

    def _count(self, rcode: int) -> None:
        counters = self.counters
        if rcode == RCODE.NOERROR:
            counters.answered += 1
        elif rcode == RCODE.NXDOMAIN:
            counters.nxdomain += 1
        elif rcode == RCODE.REFUSED:
            counters.refused += 1
        elif rcode == RCODE.SERVFAIL:
            counters.servfail += 1
        else:
            counters.malformed += 1


# -- the listeners ----------------------------------------------------------------------------


class DnsServer:
    """The internal DNS on one (host, port), over UDP and TCP (RFC 7766: two-byte length prefix,
    several queries per connection, closed after `idle_timeout` without one).

    Port 0 picks a port free for both transports. Use `async with`, or `start` and `close`.
    """

    def __init__(self, dns: InternalDns, host: str, port: int = 53, *,
                 idle_timeout: float = 10.0, max_connections: int = 128,
                 max_relays: int = 256) -> None:
        self.dns = dns
        self.host, self.port = host, port
        self.idle_timeout = idle_timeout
        self.max_connections, self.max_relays = max_connections, max_relays
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._relays: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Bind UDP and TCP on (host, port); OSError when the address cannot be had."""
        loop = asyncio.get_running_loop()
        # With port 0, UDP picks a port that TCP may find taken: try a few others.
        attempts = 10 if self.port == 0 else 1
        for attempt in range(attempts):
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _Datagrams(self), local_addr=(self.host, self.port))
            # A burst of queries must not overflow the default buffer: a dropped query
            # costs its client a retry seconds later (seen at 256 concurrent clients).
            udp.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                                    RECEIVE_BUFFER)
            port = udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._connection, self.host, port)
            except OSError:
                udp.close()
                if attempt == attempts - 1:
                    raise
                continue
            self._udp, self.port = udp, port
            return

    async def close(self) -> None:
        """Stop listening, end open connections and relays."""
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        tasks = [*self._connections, *self._relays]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._tcp is not None:
            await self._tcp.wait_closed()

    def _datagram(self, data: bytes, addr: Any) -> None:
        outcome = self.dns.resolve(data, tcp=False)
        if isinstance(outcome, Forward):
            if len(self._relays) >= self.max_relays:
                self.dns.counters.dropped += 1  # the client retries; memory stays bounded
                return
            task = asyncio.ensure_future(self._relay(outcome, addr))
            self._relays.add(task)
            task.add_done_callback(self._relays.discard)
        elif outcome is not None and self._udp is not None:
            self._udp.sendto(outcome, addr)

    async def _relay(self, forward: Forward, addr: Any) -> None:
        reply = await self.dns.forward(forward)
        if self._udp is not None and not self._udp.is_closing():
            self._udp.sendto(reply, addr)

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._connections) >= self.max_connections:
            writer.close()
            return
        self._connections.add(task)
        try:
            while True:
                prefix = await asyncio.wait_for(reader.readexactly(2), self.idle_timeout)
                (size,) = struct.unpack("!H", prefix)
                data = await asyncio.wait_for(reader.readexactly(size), self.idle_timeout)
                reply = await self.dns.handle(data, tcp=True)
                if reply is None:
                    continue
                writer.write(struct.pack("!H", len(reply)) + reply)
                await asyncio.wait_for(writer.drain(), self.idle_timeout)
        except (asyncio.IncompleteReadError, TimeoutError, OSError):
            pass  # the client left, went idle, or the network broke: nothing to answer
        finally:
            self._connections.discard(task)
            writer.close()


async def serve_dns(dns: InternalDns, host: str, port: int = 53, **options: Any) -> DnsServer:
    """`dns` listening on (host, port) over UDP and TCP, started; `close()` it when done.
    `options` are `DnsServer`'s (idle_timeout, max_connections, max_relays)."""
    server = DnsServer(dns, host, port, **options)
    await server.start()
    return server


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.server._datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # An ICMP error for an earlier reply: the client is gone, nothing to do.
        log.debug("dns: udp error %r", exc)


__all__ = [
    "BADVERS", "DEFAULT_TTL", "EDNS", "NEGATIVE_TTL", "UDP_PAYLOAD", "Answer", "DnsConfig",
    "DnsCounters", "DnsServer", "DnsView", "Forward", "InternalDns", "Query", "Upstream",
    "Zones", "serve_dns",
]
