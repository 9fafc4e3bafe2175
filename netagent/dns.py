"""The internal DNS of Private Networks: `<resource-name>.<network-name>.internal` and the reverse.

Authoritative, for every served network whose DHCP is enabled (on a listener, for the one
network whose server address it listens on: `zones.Zones.visible`), for

    <network-name>.internal           SOA; NS ns.<domain>, whose A/AAAA are the subnets' servers
    <resource-name>.<domain>          A / AAAA: every IP attached to a resource of that name
    the reverse zones of its subnets  PTR: the IP's reverses when set, else <resource-name>.<domain>

and nothing else: other names, another network's among them, are relayed to the upstream
resolver when one is configured, REFUSED otherwise. The records are read from the view on
every query (DESIGN.md 2b: the attachment is the lease), so a move or a detach shows at the
next query; the TTLs are short for the same reason.

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
import logging
import socket
import struct
from collections.abc import Coroutine
from dataclasses import asdict, dataclass
from typing import Any, Self

from dnslib import (
    EDNS0,
    QTYPE,
    RCODE,
    DNSHeader,
    DNSQuestion,
    DNSRecord,
)

from .dns_fastpath import FastPath
from .udp import DatagramServer
from .zones import DEFAULT_TTL, NEGATIVE_TTL, Answer, DnsView, Zones

RECEIVE_BUFFER = 4 * 1024 * 1024  # the UDP socket's receive buffer
ANSWER_CACHE = 65_536  # cached answers at most; the cache starts over beyond

log = logging.getLogger(__name__)

UDP_PAYLOAD = 1232  # the most we send over UDP (DNS flag day 2020: no IP fragmentation)
CLASSIC_UDP = 512  # RFC 1035: what a client without EDNS can take
TCP_MAX = 65535  # the two-byte length prefix of DNS over TCP
BADVERS = 16  # RFC 6891: an EDNS version we do not speak (extended rcode)

# The 16-bit flags word of the header (RFC 1035 4.1.1).
_QR, _OPCODE, _AA, _TC, _RD, _RA, _CD = 0x8000, 0x7800, 0x0400, 0x0200, 0x0100, 0x0080, 0x0010


@dataclass(frozen=True)
class DnsConfig:
    """How the internal DNS answers; the agent's flags fill it."""

    upstream: str | None = None  # host:port for names outside the zones; None: REFUSED
    upstream_timeout: float = 2.0  # after which the client gets SERVFAIL
    ttl: int = DEFAULT_TTL
    negative_ttl: int = NEGATIVE_TTL
    udp_payload: int = UDP_PAYLOAD  # the most we send over UDP, whatever the client takes
    networks: tuple[str, ...] | None = None  # the networks answered for; None: the view's


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
        self.fast = FastPath(self.zones, self.udp_payload, self.upstream is not None)
        # Answers by (the message but its id, TCP or not, the listener), valid while the view
        # stays at one revision: parsing and packing cost ~100 us a query, a hit a slice.
        self._answers: dict[tuple[bytes, bool, str | None], tuple[bytes, dict[str, int]]] = {}
        self._answers_revision = -1

    async def handle(self, data: bytes, *, tcp: bool, listener: str | None = None
                     ) -> bytes | None:
        """The reply to one message asked at the address `listener` (relayed through the
        upstream when not ours), or None."""
        outcome = self.resolve(data, tcp=tcp, listener=listener)
        if isinstance(outcome, Forward):
            return await self.forward(outcome)
        return outcome

    def resolve(self, data: bytes, *, tcp: bool, listener: str | None = None
                ) -> bytes | Forward | None:
        """The reply to one message from the zones seen at the address `listener` (every
        served one when None: `Zones.visible`), without I/O: the reply's bytes, a `Forward`
        when the name is not ours and an upstream is set, or None to drop it."""
        self.counters.queries += 1
        if self.view.revision != self._answers_revision or len(self._answers) > ANSWER_CACHE:
            self._answers.clear()
            self._answers_revision = self.view.revision
        key = (bytes(data[2:]), tcp, listener)  # one question, another answer elsewhere
        hit = self._answers.get(key)
        if hit is not None and len(data) >= 12:
            reply, counted = hit
            for name, n in counted.items():  # count it as the first one was counted
                setattr(self.counters, name, getattr(self.counters, name) + n)
            return bytes(data[:2]) + reply[2:]
        fast = self.fast.answer(data, tcp, listener)
        if fast is not None:
            self.counters.answered += 1
            self._answers[key] = (fast, {"answered": 1})
            return fast
        before = asdict(self.counters)
        try:
            outcome = self._resolve(data, tcp, listener)
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

    def _resolve(self, data: bytes, tcp: bool, listener: str | None = None
                 ) -> bytes | Forward | None:
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
        answer = self.zones.lookup(query.question, listener)
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
    several queries per connection, closed after `idle_timeout` without one). Its clients
    see the zones of the network whose server address `host` is (`Zones.visible`).

    Port 0 picks a port free for both transports. Use `async with`, or `start` and `close`.
    """

    def __init__(self, dns: InternalDns, host: str, port: int = 53, *,
                 idle_timeout: float = 10.0, max_connections: int = 128,
                 max_relays: int = 256) -> None:
        self.dns = dns
        self.host, self.port = host, port
        self.idle_timeout = idle_timeout
        self.max_connections, self.max_relays = max_connections, max_relays
        self._udp: DatagramServer | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Bind UDP and TCP on (host, port); OSError when the address cannot be had."""
        # With port 0, UDP picks a port that TCP may find taken: try a few others.
        attempts = 10 if self.port == 0 else 1
        for attempt in range(attempts):
            udp = DatagramServer(_udp_socket(self.host, self.port), self._datagram,
                                 max_pending=self.max_relays)
            port = udp.port
            try:
                self._tcp = await asyncio.start_server(self._connection, self.host, port)
            except OSError:
                await udp.close()
                if attempt == attempts - 1:
                    raise
                continue
            udp.start()
            self._udp, self.port = udp, port
            return

    async def close(self) -> None:
        """Stop listening, end open connections and relays."""
        if self._udp is not None:
            await self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._tcp is not None:
            await self._tcp.wait_closed()

    def _datagram(self, data: bytes, _sender: Any) -> bytes | None | Coroutine[Any, Any, bytes]:
        """The answer to one UDP query: at once from the zones, or relayed (a coroutine;
        past `max_relays` in flight the socket drops it, and the client asks again)."""
        outcome = self.dns.resolve(data, tcp=False, listener=self.host)
        if isinstance(outcome, Forward):
            return self.dns.forward(outcome)
        return outcome

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
                reply = await self.dns.handle(data, tcp=True, listener=self.host)
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


def _udp_socket(host: str, port: int) -> socket.socket:
    """A UDP socket bound to (host, port), with room for a burst of queries: a dropped
    query costs its client a retry seconds later (seen at 256 concurrent clients)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


__all__ = [
    "BADVERS", "DEFAULT_TTL", "EDNS", "NEGATIVE_TTL", "UDP_PAYLOAD", "Answer", "DnsConfig",
    "DnsCounters", "DnsServer", "DnsView", "Forward", "InternalDns", "Query", "Upstream",
    "Zones", "serve_dns",
]
