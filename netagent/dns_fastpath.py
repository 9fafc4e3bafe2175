"""The questions a Private Network asks most, answered without dnslib.

Nearly every query a network's machines send is an A, AAAA or PTR question for a name
that has records: `web-1.prod.internal A`, `5.0.0.10.in-addr.arpa PTR`. Parsing and
packing each with dnslib costs ~60 us; reading the wire by hand and writing the answer
from precomputed pieces costs a few. `FastPath.answer` does that for exactly those
questions, by the zones' own rules (`zones.Zones`), and says None for everything else
(an apex, a name without records, another type, IPv6 reverse names, an unusual message),
which `dns.InternalDns` then answers in full. A test compares the two on every kind of
question the fast path takes, so they cannot drift apart. What a listener's clients see
(`Zones.visible`) is built once per listener and view revision: a query costs a dict
lookup for it.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from functools import lru_cache

from allocator.contract import Lease, NetworkInfo

from .zones import Zones, address_order, dns_name, domain_labels

_HEADER = struct.Struct("!HHHHHH")
_QR, _OPCODE, _AA, _TC, _RD, _RA, _CD = 0x8000, 0x7800, 0x0400, 0x0200, 0x0100, 0x0080, 0x0010
_A, _PTR, _AAAA, _OPT, _IN = 1, 12, 28, 41, 1
_POINTER_TO_QUESTION = b"\xc0\x0c"  # the answer's owner is the question's name, at offset 12
_DO = 0x8000  # EDNS flags: DNSSEC OK, echoed
_IN_ADDR_ARPA = (b"in-addr", b"arpa")


@dataclass
class _Scope:
    """The zones one listener's clients see, in the shapes the two questions read."""

    apexes: dict[tuple[bytes, ...], NetworkInfo] = field(default_factory=dict)
    # (first address, mask, owner) of each IPv4 subnet
    ipv4: list[tuple[int, int, NetworkInfo]] = field(default_factory=list)


class FastPath:
    """Answers A/AAAA/PTR questions that have records (see the module docstring)."""

    def __init__(self, zones: Zones, udp_payload: int, recursion_available: bool) -> None:
        self.zones = zones
        self.udp_payload = udp_payload
        self.flags = _QR | _AA | (_RA if recursion_available else 0)
        self._revision = -1
        self._scopes: dict[str | None, _Scope] = {}  # listener -> its scope, at `_revision`

    def answer(self, data: bytes, tcp: bool, listener: str | None = None) -> bytes | None:
        """The reply to `data` asked at the address `listener` (`Zones.visible`), or None
        when the full path must answer it."""
        if len(data) < 17:
            return None
        data = bytes(data)  # a TCP stream hands a bytearray
        msg_id, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
        if flags & (_QR | _OPCODE) or qdcount != 1 or ancount or nscount or arcount > 1:
            return None
        labels, end = _question_labels(data)
        if end < 0 or end + 4 > len(data):
            return None
        qtype, qclass = struct.unpack_from("!HH", data, end)
        question_end = end + 4
        payload = None  # the client's EDNS payload size, when it sent an OPT
        do = 0
        if arcount:
            # The OPT record: root name, type 41, class = payload size, ttl = extended rcode,
            # version and flags, then its options (ignored, as the full path ignores them).
            if len(data) < question_end + 11 or data[question_end] != 0:
                return None
            rtype, payload, ttl, rdlength = struct.unpack_from("!HHIH", data, question_end + 1)
            if rtype != _OPT or (ttl >> 16) & 0xFF or question_end + 11 + rdlength != len(data):
                return None
            do = ttl & _DO
        elif question_end != len(data):
            return None
        if qclass != _IN:
            return None
        scope = self._scope(listener)
        if qtype in (_A, _AAAA):
            records = self._addresses(scope, labels, qtype)
        elif qtype == _PTR:
            records = self._pointers(scope, labels)
        else:
            return None
        if not records:
            return None
        ttl_bytes = struct.pack("!I", self.zones.ttl)
        answers = b"".join(_POINTER_TO_QUESTION + struct.pack("!HH", qtype, _IN) + ttl_bytes
                           + struct.pack("!H", len(rdata)) + rdata for rdata in records)
        reply_flags = self.flags | (flags & (_OPCODE | _RD | _CD))
        header = _HEADER.pack(msg_id, reply_flags, 1, len(records), 0, 1 if arcount else 0)
        opt = b""
        if arcount:
            opt = b"\x00" + struct.pack("!HHIH", _OPT, self.udp_payload, do, 0)
        reply = header + data[12:question_end] + answers + opt
        limit = 65535 if tcp else (512 if payload is None
                                   else max(512, min(payload, self.udp_payload)))
        if len(reply) > limit:
            return None  # the full path truncates
        return reply

    # -- what the zones hold, for the two kinds of questions -----------------------------------

    def _scope(self, listener: str | None) -> _Scope:
        revision = self.zones.view.revision
        if revision != self._revision:
            self._scopes.clear()
            self._revision = revision
        scope = self._scopes.get(listener)
        if scope is None:
            scope = self._scopes[listener] = _Scope()
            for network in self.zones.visible(listener):
                apex = domain_labels(network.domain)
                if apex is not None:
                    scope.apexes.setdefault(apex, network)  # the first, as `Zones` picks
                for subnet in network.subnets:
                    if not subnet.is_ipv6:
                        first, mask = _ipv4_range(subnet.cidr)
                        scope.ipv4.append((first, mask, network))
        return scope

    def _addresses(self, scope: _Scope, labels: list[bytes], qtype: int) -> list[bytes]:
        # The longest apex that ends the name wins, as in `Zones`: try the longest first.
        for cut in range(1, len(labels)):
            network = scope.apexes.get(tuple(labels[cut:]))
            if network is not None:
                break
        else:
            return []
        relative = labels[:cut]
        if relative == [b"ns"]:
            return []
        name = b".".join(relative).decode("utf-8", "replace")
        want_ipv6 = qtype == _AAAA
        family = socket.AF_INET6 if want_ipv6 else socket.AF_INET
        leases = [x for x in self.zones.view.named(network.id, name) if x.is_ipv6 == want_ipv6]
        return [socket.inet_pton(family, x.address) for x in sorted(leases, key=address_order)]

    def _pointers(self, scope: _Scope, labels: list[bytes]) -> list[bytes]:
        if len(labels) != 6 or tuple(labels[4:]) != _IN_ADDR_ARPA:
            return []
        octets = []
        for label in reversed(labels[:4]):
            if not label.isdigit() or len(label) > 3 or (len(label) > 1 and label[:1] == b"0"):
                return []
            octet = int(label)
            if octet > 255:
                return []
            octets.append(octet)
        value = int.from_bytes(bytes(octets), "big")
        owners = [n for first, mask, n in scope.ipv4 if value & mask == first]
        if len(owners) != 1:
            return []  # not ours, or several networks share the range: the full path
        address = socket.inet_ntoa(bytes(octets))
        lease = self.zones.view.at(address)
        if lease is None or lease.private_network_id != owners[0].id:
            return []
        return [wire for wire in _targets(lease, owners[0].domain) if wire is not None]


def _question_labels(data: bytes) -> tuple[list[bytes], int]:
    """The question's name, lowercased, and where it ends (-1 when it is not a plain name:
    a compression pointer, a label of more than 63 bytes, a name of more than 253)."""
    labels: list[bytes] = []
    at, size = 12, len(data)
    while at < size:
        length = data[at]
        if length == 0:
            if not labels:
                return labels, -1  # the root: the full path
            return labels, at + 1
        if length > 63 or at + 1 + length > size:
            return labels, -1
        labels.append(data[at + 1:at + 1 + length].lower())
        at += 1 + length
        if at - 12 > 254:
            return labels, -1
    return labels, -1


def _targets(lease: Lease, domain: str) -> list[bytes | None]:
    if lease.reverses:
        return [_name_wire(name) for name in lease.reverses]
    if lease.name:
        return [_name_wire(f"{lease.name}.{domain}")]
    return []


@lru_cache(maxsize=65536)
def _name_wire(name: str) -> bytes | None:
    label = dns_name(name)
    if label is None:
        return None
    return b"".join(bytes((len(part),)) + part for part in label.label) + b"\x00"


@lru_cache(maxsize=1024)
def _ipv4_range(cidr: str) -> tuple[int, int]:
    address, length = cidr.split("/")
    mask = (0xFFFFFFFF << (32 - int(length))) & 0xFFFFFFFF
    return int.from_bytes(socket.inet_aton(address), "big") & mask, mask
