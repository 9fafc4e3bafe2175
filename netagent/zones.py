"""The zones of the internal DNS: which zone a name is in, which records it has, which rcode.

Pure lookups over the view (no I/O, no wire format): `Zones.lookup` takes a parsed question
and gives an `Answer` (rcode and sections as dnslib records), which `dns.InternalDns`
packs; `dns_fastpath` answers the common questions from the same rules without dnslib.
See `dns` for what the zones hold.

Whose names a client sees depends on where it asks: one agent may serve Private Networks
of several projects, and two of them may share a name (`lab-two.internal` in each). A
listener on a network's server address (the DNS server DHCP hands out) is that network's:
its clients see its zones, forward and reverse, and no other network's; the names of the
others are not ours there, exactly as a name of no served network (`Zones.visible`).
Private Networks are the boundary, as for DHCP: nothing says that the networks of one
VPC can reach each other, and the view does not say which VPC a network is in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from dnslib import AAAA, CLASS, NS, PTR, QTYPE, RCODE, RR, SOA, A, DNSLabel, DNSQuestion

from allocator.contract import Lease, NetworkInfo

DEFAULT_TTL = 60  # attachments move: a cached answer must not outlive the move for long
NEGATIVE_TTL = 10  # a VM that just booted should be reachable by name within seconds

# SOA timers after dnsmasq's: nobody transfers these zones, but resolvers read `minimum`.
_REFRESH, _RETRY, _EXPIRE = 1200, 180, 1209600

_REVERSE_SUFFIXES: dict[tuple[bytes, ...], int] = {(b"in-addr", b"arpa"): 4, (b"ip6", b"arpa"): 6}
_TRANSFERS = frozenset({QTYPE.AXFR, QTYPE.IXFR})
_CLASS_ANY = 255  # dnslib spells it '*'


class DnsView(Protocol):
    """What the DNS reads of IPAM: `allocator.contract.NetworkView` is one."""

    revision: int  # the etcd revision of the newest change: the zones' SOA serial

    def networks(self) -> list[NetworkInfo]: ...

    def named(self, pn_id: str, name: str) -> list[Lease]: ...

    def at(self, address: str) -> Lease | None: ...

    def leases(self, pn_id: str) -> list[Lease]: ...


@dataclass(frozen=True)
class Answer:
    """What the zones say about one question; `InternalDns` makes the message of it."""

    rcode: int
    answer: tuple[RR, ...] = ()
    authority: tuple[RR, ...] = ()
    additional: tuple[RR, ...] = ()



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
        # listener -> the networks its clients see, at `_visible_revision`
        self._visible: dict[str | None, list[NetworkInfo]] = {}
        self._visible_revision = -1

    def served(self) -> list[NetworkInfo]:
        """The networks answered for: DHCP enabled and, when a set was given, in it."""
        return sorted((n for n in self._given() if n.dhcp_enabled), key=lambda n: n.id)

    def visible(self, listener: str | None = None) -> list[NetworkInfo]:
        """The served networks whose names a client asking at the address `listener` sees:
        the one network whose subnet's server address it is; every served network when
        no listener is named or it is a loopback address (only this host can ask there:
        tests, the bench, an operator's `dig`); none on any other address, a wildcard,
        or one that several networks share (ranges reused across VPCs): it cannot tell
        whose client asks."""
        if self._visible_revision != self.view.revision:
            self._visible.clear()
            self._visible_revision = self.view.revision
        networks = self._visible.get(listener)
        if networks is None:
            networks = self._visible[listener] = self._networks_seen_at(listener)
        return networks

    def _networks_seen_at(self, listener: str | None) -> list[NetworkInfo]:
        if listener is None:
            return self.served()
        try:
            address = ipaddress.ip_address(listener)
        except ValueError:
            return []
        if address.is_loopback:
            return self.served()
        # Among every network given, DHCP or not: a network whose DHCP is off still owns
        # its server address, and its listener must not start answering for another.
        owners = [n for n in self._given()
                  if any(ipaddress.ip_address(s.server) == address for s in n.subnets)]
        return owners if len(owners) == 1 and owners[0].dhcp_enabled else []

    def _given(self) -> list[NetworkInfo]:
        return [n for n in self.view.networks() if self.pn_ids is None or n.id in self.pn_ids]

    def lookup(self, question: DNSQuestion, listener: str | None = None) -> Answer | None:
        """The authoritative answer to `question` asked at `listener` (see `visible`), or
        None when no zone its client sees holds it."""
        if question.qclass not in (CLASS.IN, _CLASS_ANY):
            return None
        qname: DNSLabel = question.qname
        labels = tuple(label.lower() for label in qname.label)
        served = self.visible(listener)
        if labels[-2:] in _REVERSE_SUFFIXES:
            return self._reverse(qname, labels, question.qtype, served)
        return self._forward(qname, labels, question.qtype, served)

    # -- <name>.<network>.internal ---------------------------------------------------------

    def _forward(self, qname: DNSLabel, labels: tuple[bytes, ...], qtype: int,
                 served: list[NetworkInfo]) -> Answer | None:
        best: tuple[NetworkInfo, tuple[bytes, ...]] | None = None
        for network in served:
            apex = domain_labels(network.domain)
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
                               for lease in sorted(leases, key=address_order))
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
        return [label for label in map(dns_name, names) if label is not None]

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


def address_order(lease: Lease) -> tuple[bool, int]:
    # A stable order, so that two agents give byte-identical answers.
    return lease.is_ipv6, int(ipaddress.ip_address(lease.address))


@lru_cache(maxsize=1024)
def domain_labels(domain: str) -> tuple[bytes, ...] | None:
    """The lowercase labels of a zone, or None when the network's name is no DNS name."""
    label = dns_name(domain)
    return None if label is None else tuple(x.lower() for x in label.label)


def dns_name(name: str) -> DNSLabel | None:
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
