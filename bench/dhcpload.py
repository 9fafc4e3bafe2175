"""The DHCP and DNS load generator, a process of its own: `python -m bench.dhcpload < job.json`.

It reads one job (JSON) on stdin, keeps up to C exchanges in flight over one UDP socket
on 127.0.0.1 (a window: a new exchange starts when one ends), prints progress on stderr
about once a second and writes one JSON result on stdout. An exchange whose answer does
not come within `timeout` is sent again, at most `retries` times, then counted lost.
New exchanges start until `count` were started or `seconds` passed; those in flight then
get `grace` seconds to finish. Every loop is bounded by a count and a deadline.

Jobs (`mode`):
- `dora`: a DHCP relay agent (RFC 2131 DORA, relayed: giaddr set, hops 1). Each exchange
  is DISCOVER -> OFFER, then REQUEST (same xid, option 50 = the offered address, option
  54 = the offering server) -> ACK, for the MACs of `macs` in turn. With `expect`, each
  MAC must be offered and ACKed exactly its address; without, any address of the
  served `subnets`, the same in the OFFER and the ACK. A NAK restarts the exchange with
  a new xid, at most `restarts` times.
- `dns`: `queries` ([qtype, name, expected]) packed with dnslib; each answer must be an
  authoritative NOERROR with one record, ending with the expected address (A) or name
  (PTR); every `parse_every`-th answer is also parsed in full with dnslib.
- `echo`: the packets of `packets` (`dhcp`: DISCOVERs of `macs`; `dns`: `queries`) to an
  echo server: each answer must be the datagram sent. The baseline of the other two.

The wire is built and read here with `struct`, not with the agent's codec, so a codec
bug cannot cancel itself out.
"""

from __future__ import annotations

import ipaddress
import json
import random
import resource
import select
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dnslib import DNSLabel, DNSRecord

from .stats import summary

PROGRESS_SECONDS = 1.0
SELECT_SECONDS = 0.01  # how long one wait for answers lasts: timeouts are checked after it
SOCKET_BUFFER = 4 * 1024 * 1024  # room for every datagram of a large window at once
MAX_DATAGRAM = 4096
PROBLEMS_KEPT = 10

# -- DHCPv4 on the wire (RFC 2131 section 2, RFC 2132) ----------------------------------------

_BOOTP = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
_COOKIE = b"\x63\x82\x53\x63"
_OPTIONS_AT = _BOOTP.size + len(_COOKIE)  # 240
DISCOVER, OFFER, REQUEST, ACK, NAK = 1, 2, 3, 5, 6
_MASK, _ROUTER, _LEASE_TIME, _REQUESTED, _TYPE, _SERVER_ID = 1, 3, 51, 50, 53, 54
_PARAMETERS = bytes((55, 4, 1, 3, 6, 15))  # ask for mask, router, DNS, domain
_ZERO4 = bytes(4)


def dhcp_request(kind: int, xid: int, mac: bytes, giaddr: bytes, requested: bytes = b"",
                 server: bytes = b"") -> bytes:
    """A relayed client message (hops 1, giaddr set): DISCOVER, or REQUEST naming the
    offered address (option 50) and the offering server (option 54)."""
    options = bytes((_TYPE, 1, kind)) + _PARAMETERS
    if requested:
        options += bytes((_REQUESTED, 4)) + requested
    if server:
        options += bytes((_SERVER_ID, 4)) + server
    header = _BOOTP.pack(1, 1, 6, 1, xid, 0, 0, _ZERO4, _ZERO4, _ZERO4, giaddr,
                         mac.ljust(16, b"\x00"), b"", b"")
    return header + _COOKIE + options + b"\xff"


def dhcp_options(data: bytes) -> dict[int, bytes] | None:
    """The options of a DHCP message, or None when they run past its end."""
    options: dict[int, bytes] = {}
    at, end = _OPTIONS_AT, len(data)
    while at < end:  # bounded: `at` moves forward at each step
        code = data[at]
        if code == 0:
            at += 1
            continue
        if code == 255:
            return options
        if at + 1 >= end or at + 2 + data[at + 1] > end:
            return None
        options[code] = data[at + 2:at + 2 + data[at + 1]]
        at += 2 + data[at + 1]
    return options


@dataclass(frozen=True)
class Subnet:
    """A served subnet as the client checks answers against it."""

    network: int
    netmask: int
    mask: bytes
    router: bytes
    server: bytes

    @classmethod
    def of(cls, spec: dict[str, str]) -> Subnet:
        net = ipaddress.IPv4Network(spec["cidr"])
        return cls(int(net.network_address), int(net.netmask), net.netmask.packed,
                   ipaddress.IPv4Address(spec["gateway"]).packed,
                   ipaddress.IPv4Address(spec["server"]).packed)

    def holds(self, address: bytes) -> bool:
        return int.from_bytes(address, "big") & self.netmask == self.network


# -- the exchanges -----------------------------------------------------------------------------

# What an answer means to its exchange, besides the next packet to send or an error text.
DONE = "done"
DUPLICATE = "duplicate"  # an answer to an earlier step, sent again: ignored
NAKED = "nak"  # the server refused the address: start over


@dataclass
class Pending:
    """One exchange in flight: what was last sent, when, how often."""

    key: int
    item: int  # the index of its MAC or query
    packet: bytes
    first_sent: float
    sent_at: float
    tries: int = 0
    step: int = 0  # dora: 0 DISCOVER sent, 1 REQUEST sent
    offered: bytes = b""
    restarts: int = 0


@dataclass
class Tally:
    """What the client sent, received and found; `problems` keeps the first few."""

    started: int = 0
    done: int = 0
    sent: int = 0
    received: int = 0
    retransmits: int = 0
    lost: int = 0
    wrong: int = 0
    stale: int = 0  # an answer to no exchange in flight (a retransmit answered twice)
    duplicates: int = 0  # an answer to an earlier step of an exchange in flight
    naks: int = 0
    send_errors: int = 0
    problems: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.wrong += 1
        if len(self.problems) < PROBLEMS_KEPT:
            self.problems.append(text)


# Each job's exchanges: `start(item, key)` builds the first packet; `answer(p, data)`
# returns DONE, DUPLICATE, NAKED, the next packet to send (same key), or an error text.
Answer = str | bytes


class Dora:
    """DISCOVER/OFFER then REQUEST/ACK as a relay agent, for each MAC of the job."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.macs = [bytes.fromhex(m.replace(":", "")) for m in job["macs"]]
        expect = job.get("expect")
        self.expect = ([ipaddress.IPv4Address(a).packed for a in expect]
                       if expect is not None else None)
        self.giaddr = ipaddress.IPv4Address(job["giaddr"]).packed
        self.subnets = [Subnet.of(s) for s in job["subnets"]]
        self.restarts = int(job.get("restarts", 3))
        self.bound: dict[int, bytes] = {}  # MAC index -> the address ACKed

    def start(self, item: int, key: int) -> bytes:
        return dhcp_request(DISCOVER, key, self.macs[item % len(self.macs)], self.giaddr)

    def key_of(self, data: bytes) -> int | None:
        return int.from_bytes(data[4:8], "big") if len(data) >= 8 else None

    def answer(self, p: Pending, data: bytes) -> Answer:
        mac = self.macs[p.item % len(self.macs)]
        if len(data) < _OPTIONS_AT or data[_BOOTP.size:_OPTIONS_AT] != _COOKIE:
            return "not a DHCP message"
        options = dhcp_options(data)
        if options is None or len(options.get(_TYPE, b"")) != 1:
            return "options unreadable or no message type"
        kind = options[_TYPE][0]
        expected = OFFER if p.step == 0 else ACK
        if kind == OFFER and p.step == 1:
            return DUPLICATE  # the OFFER to a retransmitted DISCOVER
        if kind == NAK and p.step == 1:
            return NAKED
        if kind != expected:
            return f"message type {kind}, expected {expected}"
        if data[0] != 2 or data[28:34] != mac or data[24:28] != self.giaddr:
            return "op, chaddr or giaddr not echoed"
        yiaddr = data[16:20]
        subnet = next((s for s in self.subnets if s.holds(yiaddr)), None)
        if subnet is None:
            return f"address {ipaddress.IPv4Address(yiaddr)} in no served subnet"
        if self.expect is not None:
            want = self.expect[p.item % len(self.macs)]
            if yiaddr != want:
                return (f"{mac.hex(':')} given {ipaddress.IPv4Address(yiaddr)}, IPAM holds "
                        f"{ipaddress.IPv4Address(want)}")
        if (options.get(_SERVER_ID) != subnet.server or options.get(_MASK) != subnet.mask
                or options.get(_ROUTER) != subnet.router
                or len(options.get(_LEASE_TIME, b"")) != 4):
            return "server id, mask, router or lease time wrong"
        if p.step == 0:
            p.step, p.offered = 1, yiaddr
            return dhcp_request(REQUEST, p.key, mac, self.giaddr, yiaddr, subnet.server)
        if yiaddr != p.offered:
            return (f"ACKed {ipaddress.IPv4Address(yiaddr)}, offered "
                    f"{ipaddress.IPv4Address(p.offered)}")
        self.bound[p.item % len(self.macs)] = yiaddr
        return DONE

    def restart(self, p: Pending, key: int) -> bytes | None:
        """After a NAK: DISCOVER again with a new xid (RFC 2131 3.1.5), if restarts remain."""
        if p.restarts >= self.restarts:
            return None
        p.restarts += 1
        p.step, p.offered = 0, b""
        return self.start(p.item, key)

    def extra(self) -> dict[str, Any]:
        macs = [m.hex(":") for m in self.macs]
        return {"bound": [[macs[i], str(ipaddress.IPv4Address(a))]
                          for i, a in sorted(self.bound.items())]}


class Dns:
    """One query per exchange, answered by the internal DNS."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.queries: list[bytes] = []
        self.tails: list[bytes] = []
        self.expected: list[str] = []
        for qtype, name, expected in job["queries"]:
            self.queries.append(bytes(DNSRecord.question(name, qtype).pack()))
            self.expected.append(expected)
            if qtype == "A":
                self.tails.append(ipaddress.IPv4Address(expected).packed)
            else:  # PTR: the target, uncompressed (it shares no suffix with the question)
                self.tails.append(b"".join(bytes((len(label),)) + label
                                           for label in DNSLabel(expected).label) + b"\x00")
        self.parse_every = max(1, int(job.get("parse_every", 20)))
        self.parsed = 0

    def start(self, item: int, key: int) -> bytes:
        query = self.queries[item % len(self.queries)]
        return struct.pack("!H", key) + query[2:]

    def key_of(self, data: bytes) -> int | None:
        return int.from_bytes(data[:2], "big") if len(data) >= 2 else None

    def answer(self, p: Pending, data: bytes) -> Answer:
        index = p.item % len(self.queries)
        if len(data) < 12:
            return "shorter than a header"
        flags, ancount = struct.unpack_from("!H", data, 2)[0], struct.unpack_from("!H", data, 6)[0]
        if not flags & 0x8000 or not flags & 0x0400 or flags & 0xF:
            return f"flags {flags:#06x}: not an authoritative NOERROR answer"
        if ancount != 1 or not data.endswith(self.tails[index]):
            return f"{ancount} answers, not the one expected: {self.expected[index]}"
        if p.item % self.parse_every == 0:
            self.parsed += 1
            record = DNSRecord.parse(data)
            got = str(record.rr[0].rdata).rstrip(".")
            if got != self.expected[index].rstrip("."):
                return f"parsed answer {got}, expected {self.expected[index]}"
        return DONE

    def restart(self, p: Pending, key: int) -> bytes | None:
        return None

    def extra(self) -> dict[str, Any]:
        return {"parsed_in_full": self.parsed}


class Echo:
    """The packets of a `dora` or `dns` job, to an echo server: the answer is the packet."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.inner: Dora | Dns = (Dora if job["packets"] == "dhcp" else Dns)(job)

    def start(self, item: int, key: int) -> bytes:
        return self.inner.start(item, key)

    def key_of(self, data: bytes) -> int | None:
        return self.inner.key_of(data)

    def answer(self, p: Pending, data: bytes) -> Answer:
        return DONE if data == p.packet else "the echo differs from the datagram sent"

    def restart(self, p: Pending, key: int) -> bytes | None:
        return None

    def extra(self) -> dict[str, Any]:
        return {}


# -- the window ---------------------------------------------------------------------------------


def open_socket() -> socket.socket:
    """A non-blocking UDP socket on 127.0.0.1 with room for a large window."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for forced, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):
        try:  # SO_RCVBUFFORCE / SO_SNDBUFFORCE pass rmem_max as root; else the capped size
            sock.setsockopt(socket.SOL_SOCKET, forced, SOCKET_BUFFER)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


class Keys:
    """Transaction ids: unique among exchanges in flight, `bits` wide (DNS ids are 16)."""

    def __init__(self, bits: int) -> None:
        self.mask = (1 << bits) - 1
        self.next = random.getrandbits(bits)

    def take(self, inflight: dict[int, Pending]) -> int:
        for _ in range(len(inflight) + 1):  # bounded: one of these is free
            key, self.next = self.next, (self.next + 1) & self.mask
            if key not in inflight:
                return key
        raise RuntimeError("no free transaction id")


def run_window(job: dict[str, Any], exchanges: Dora | Dns | Echo, tally: Tally,
               progress: Callable[[Tally], None]) -> float:
    """Run the job's exchanges, C at a time; the seconds from the first send to the end."""
    sock = open_socket()
    addr = (job["host"], int(job["port"]))
    concurrency, count = int(job["concurrency"]), int(job["count"])
    timeout, retries = float(job.get("timeout", 2.0)), int(job.get("retries", 2))
    keys = Keys(16 if job["mode"] == "dns" or job.get("packets") == "dns" else 32)
    inflight: dict[int, Pending] = {}
    t0 = time.perf_counter()
    stop_starting = t0 + float(job["seconds"])
    hard_stop = stop_starting + float(job.get("grace", 5.0))
    next_check = next_progress = t0

    def send(p: Pending, now: float) -> None:
        try:
            sock.sendto(p.packet, addr)
        except (BlockingIOError, OSError):
            tally.send_errors += 1  # sent again at its timeout
            return
        tally.sent += 1
        p.sent_at = now

    try:
        now = t0
        while now < hard_stop:
            if now < stop_starting:
                while tally.started < count and len(inflight) < concurrency:
                    key = keys.take(inflight)
                    p = Pending(key, tally.started, exchanges.start(tally.started, key), now,
                                now)
                    tally.started += 1
                    inflight[key] = p
                    send(p, now)
            if not inflight and (tally.started >= count or now >= stop_starting):
                break
            readable, _, _ = select.select([sock], [], [], SELECT_SECONDS)
            now = time.perf_counter()
            for _ in range(max(1, 4 * concurrency)):  # bounded drain of what arrived
                if not readable:
                    break
                try:
                    data = sock.recv(MAX_DATAGRAM)
                except BlockingIOError:
                    break
                tally.received += 1
                got = exchanges.key_of(data)
                found = inflight.get(got) if got is not None else None
                if got is None or found is None:
                    tally.stale += 1
                    continue
                key, p = got, found
                outcome = exchanges.answer(p, data)
                if outcome == DONE:
                    del inflight[key]
                    tally.done += 1
                    tally.latencies.append(now - p.first_sent)
                elif isinstance(outcome, bytes):
                    p.packet, p.tries = outcome, 0
                    send(p, now)
                elif outcome == DUPLICATE:
                    tally.duplicates += 1
                elif outcome == NAKED:
                    tally.naks += 1
                    del inflight[key]
                    new_key = keys.take(inflight)
                    packet = exchanges.restart(p, new_key)
                    if packet is None:
                        tally.problem(f"NAKed {p.restarts + 1} times")
                        continue
                    p.key, p.packet, p.tries = new_key, packet, 0
                    inflight[new_key] = p
                    send(p, now)
                else:
                    del inflight[key]
                    tally.problem(outcome)
            if now >= next_check:  # timeouts, checked every SELECT_SECONDS at most
                next_check = now + SELECT_SECONDS
                for p in [p for p in inflight.values() if now - p.sent_at > timeout]:
                    if p.tries >= retries:
                        del inflight[p.key]
                        tally.lost += 1
                        continue
                    p.tries += 1
                    tally.retransmits += 1
                    send(p, now)
            if now >= next_progress:
                next_progress = now + PROGRESS_SECONDS
                progress(tally)
        tally.lost += len(inflight)  # still unanswered at the hard stop
        return time.perf_counter() - t0
    finally:
        sock.close()


MODES: dict[str, type[Dora | Dns | Echo]] = {"dora": Dora, "dns": Dns, "echo": Echo}


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job and return its result (also usable in-process)."""
    tally = Tally()
    exchanges = MODES[job["mode"]](job)
    label, quiet = job.get("label", job["mode"]), bool(job.get("quiet"))
    last = [0, time.perf_counter()]

    def progress(t: Tally) -> None:
        now = time.perf_counter()
        if not quiet and now > last[1]:
            rate = (t.done - last[0]) / (now - last[1])
            print(f"    {label}: {t.done}/{job['count']} lost={t.lost} wrong={t.wrong} "
                  f"{rate:,.0f}/s", file=sys.stderr, flush=True)
        last[:] = [t.done, now]

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    elapsed = run_window(job, exchanges, tally, progress)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    return {
        "mode": job["mode"], "concurrency": int(job["concurrency"]), "count": int(job["count"]),
        "started": tally.started, "done": tally.done, "elapsed_s": round(elapsed, 4),
        "per_s": round(tally.done / elapsed, 2) if elapsed > 0 else 0.0,
        "latency": summary(tally.latencies), "sent": tally.sent, "received": tally.received,
        "retransmits": tally.retransmits, "lost": tally.lost, "wrong": tally.wrong,
        "stale": tally.stale, "duplicates": tally.duplicates, "naks": tally.naks,
        "send_errors": tally.send_errors, "problems": tally.problems,
        "client_cpu_s": round(cpu, 3),
        "client_busy": round(cpu / elapsed, 3) if elapsed > 0 else None,
        **exchanges.extra(),
    }


def main() -> int:
    job = json.load(sys.stdin)
    json.dump(run(job), sys.stdout)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
