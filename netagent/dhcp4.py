"""DHCPv4 (RFC 2131/2132) for Private Networks: the offer is the IP attached to the client's MAC.

There is no lease database (DESIGN.md section 2b). A DISCOVER is offered exactly
the IPv4 address IPAM holds for the client's MAC now; a REQUEST is ACKed only for
that address and NAKed otherwise, so a move or a detach takes the address back at
the client's next renewal (T1 is short). A DECLINE is recorded in IPAM, and every
agent withholds the address from that MAC (`netagent.declines`). Pure protocol logic:
the socket layer hands `Dhcp4Responder.handle` a datagram and sends the `Reply` it gets
back, if any.

    responder = Dhcp4Responder(view, Dhcp4Config(unknown_mac={pn_id: UnknownMac.BOOK}),
                               book_unknown=book, record_decline=ipam.record_decline)
    reply = await responder.handle(datagram, pn_id)   # -> Reply | None
    if reply: sock.sendto(reply.payload, (reply.address, reply.port))

The codec is our own (`decode`, `encode`), not `dpkt.dhcp`: dpkt 1.9.8 accepts a wrong
magic cookie, silently truncates an option whose length runs past the packet, raises
IndexError on a lone option code and cannot build its own default packet, so every
check would have to be redone around it anyway.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import re
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

from allocator.contract import Lease, NetworkInfo, SubnetInfo

from .declines import DeclineRecorder, RecordDecline

log = logging.getLogger(__name__)

SERVER_PORT = 67
CLIENT_PORT = 68
BOOTREQUEST, BOOTREPLY = 1, 2
ETHERNET, ETHERNET_ADDRESS_LENGTH = 1, 6
MAGIC_COOKIE = b"\x63\x82\x53\x63"
BROADCAST_FLAG = 0x8000
UNSPECIFIED = "0.0.0.0"
LIMITED_BROADCAST = "255.255.255.255"

# The fixed BOOTP header: op htype hlen hops xid secs flags ciaddr yiaddr siaddr giaddr
# chaddr sname file (RFC 2131 section 2), then the magic cookie and the options.
_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
_OPTIONS_START = _HEADER.size + len(MAGIC_COOKIE)  # 240
# Nothing a client sends is larger than an Ethernet frame's payload; a bigger datagram
# is not a DHCP request and is not worth parsing.
MAX_PACKET_SIZE = 1500
# RFC 1542 section 2.1: some relays and clients drop BOOTP messages shorter than this.
MIN_REPLY_SIZE = 300
# RFC 1542 section 4.1.1: past 16 relay hops the packet is looping between relays.
MAX_HOPS = 16


class MessageType(enum.IntEnum):
    """Option 53, the DHCP message type (RFC 2132 section 9.6)."""

    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


class Option(enum.IntEnum):
    """The option codes this agent reads or writes (RFC 2132)."""

    PAD = 0
    SUBNET_MASK = 1
    ROUTER = 3
    DNS_SERVER = 6
    HOST_NAME = 12
    DOMAIN_NAME = 15
    REQUESTED_ADDRESS = 50
    LEASE_TIME = 51
    OVERLOAD = 52
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    RENEWAL_TIME = 58
    REBINDING_TIME = 59
    END = 255


# Options whose value has one legal length; a repeated one concatenates (RFC 3396) to a
# wrong length, so a packet naming two message types or two addresses is dropped.
_FIXED_LENGTHS = {  # plain int keys: an IntEnum key costs a slow hash per lookup
    int(Option.MESSAGE_TYPE): 1,
    int(Option.REQUESTED_ADDRESS): 4,
    int(Option.SERVER_ID): 4,
}
_MESSAGE_TYPES = {int(kind): kind for kind in MessageType}
_OVERLOAD, _MESSAGE_TYPE = int(Option.OVERLOAD), int(Option.MESSAGE_TYPE)
_CLIENT_MESSAGES = frozenset({MessageType.DISCOVER, MessageType.REQUEST, MessageType.DECLINE,
                              MessageType.RELEASE, MessageType.INFORM})
# One DNS label (RFC 1123): the resource name is the first label of its DNS name.
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class MalformedPacket(ValueError):
    """A datagram that is not a DHCP message this agent serves; `str()` says why."""


# -- the codec ----------------------------------------------------------------------------


class Dhcp4Packet(NamedTuple):
    """One DHCP message, decoded (RFC 2131 section 2).

    Addresses are dotted strings ("0.0.0.0" when unset); `options` maps the codes other
    than the message type to their raw values, in wire order, repeated codes joined
    (RFC 3396). Only Ethernet clients exist here, so `chaddr` is a 6-byte MAC.
    A named tuple, not a frozen dataclass: two are built per exchange, and a frozen
    dataclass's constructor costs microseconds a server answering thousands a second feels.
    """

    op: int
    message_type: MessageType
    xid: int
    chaddr: bytes
    flags: int = 0
    secs: int = 0
    hops: int = 0
    ciaddr: str = UNSPECIFIED
    yiaddr: str = UNSPECIFIED
    siaddr: str = UNSPECIFIED
    giaddr: str = UNSPECIFIED
    options: Mapping[int, bytes] = MappingProxyType({})

    @property
    def mac(self) -> str:
        """The client's MAC as IPAM spells it: lowercase, colon-separated."""
        return self.chaddr[:ETHERNET_ADDRESS_LENGTH].hex(":")

    @property
    def requested_address(self) -> str | None:
        """Option 50, the address the client asks for."""
        return _address_option(self.options, Option.REQUESTED_ADDRESS)

    @property
    def server_id(self) -> str | None:
        """Option 54, the server the client talks to."""
        return _address_option(self.options, Option.SERVER_ID)

    @property
    def relayed(self) -> bool:
        return self.giaddr != UNSPECIFIED


def decode(data: bytes) -> Dhcp4Packet:
    """Parse one DHCP message of an Ethernet client, or raise MalformedPacket.

    Nothing else escapes: every length is checked before it is read, and the option
    cursor moves forward at each step, so no input can make the parser loop.
    """
    if len(data) < _OPTIONS_START:
        raise MalformedPacket(f"truncated: {len(data)} bytes, a header takes {_OPTIONS_START}")
    if len(data) > MAX_PACKET_SIZE:
        raise MalformedPacket(f"oversized: {len(data)} bytes")
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr,
     _sname, _file) = _HEADER.unpack_from(data)
    if data[_HEADER.size:_OPTIONS_START] != MAGIC_COOKIE:
        raise MalformedPacket("wrong magic cookie")
    if htype != ETHERNET or hlen != ETHERNET_ADDRESS_LENGTH:
        raise MalformedPacket(f"hardware type {htype}/length {hlen} is not Ethernet")
    options = _decode_options(data, _OPTIONS_START)
    if _OVERLOAD in options:
        # Options hidden in sname/file: no client needs it for a request, and reading
        # them would double the surface that attacker-chosen bytes reach.
        raise MalformedPacket("option overload is not served")
    for code, length in _FIXED_LENGTHS.items():
        if code in options and len(options[code]) != length:
            raise MalformedPacket(f"option {code} has {len(options[code])} bytes, not {length}")
    kind = options.pop(_MESSAGE_TYPE, None)
    if kind is None:
        raise MalformedPacket("no message type: BOOTP is not served")
    message_type = _MESSAGE_TYPES.get(kind[0])
    if message_type is None:
        raise MalformedPacket(f"unknown message type {kind[0]}")
    return Dhcp4Packet(op, message_type, xid, chaddr[:ETHERNET_ADDRESS_LENGTH], flags, secs,
                       hops, _dotted(ciaddr), _dotted(yiaddr), _dotted(siaddr),
                       _dotted(giaddr), options)


def encode(packet: Dhcp4Packet) -> bytes:
    """The wire form of `packet`: message type first, END last, padded to 300 bytes.

    ValueError if an option value is longer than the 255 bytes one option holds."""
    header = _HEADER.pack(packet.op, ETHERNET, ETHERNET_ADDRESS_LENGTH, packet.hops, packet.xid,
                          packet.secs, packet.flags, _packed(packet.ciaddr),
                          _packed(packet.yiaddr), _packed(packet.siaddr),
                          _packed(packet.giaddr), packet.chaddr, b"", b"")
    body = [header, MAGIC_COOKIE, bytes((Option.MESSAGE_TYPE, 1, packet.message_type))]
    for code, value in packet.options.items():
        if len(value) > 255:
            raise ValueError(f"option {code} is {len(value)} bytes, more than one option holds")
        body.append(bytes((code, len(value))) + value)
    body.append(bytes((Option.END,)))
    wire = b"".join(body)
    return wire.ljust(MIN_REPLY_SIZE, b"\x00")


def _decode_options(data: bytes, start: int) -> dict[int, bytes]:
    options: dict[int, bytes] = {}
    cursor, end = start, len(data)
    while cursor < end:
        code = data[cursor]
        if code == Option.PAD:
            cursor += 1
            continue
        if code == Option.END:
            break  # what follows END is padding
        if cursor + 1 >= end:
            raise MalformedPacket(f"option {code} has no length")
        value_end = cursor + 2 + data[cursor + 1]
        if value_end > end:
            raise MalformedPacket(f"option {code} runs past the end of the packet")
        options[code] = options.get(code, b"") + bytes(data[cursor + 2:value_end])
        cursor = value_end
    # A missing END is tolerated, as Kea and dnsmasq do: the datagram's end bounds it.
    return options


def _address_option(options: Mapping[int, bytes], code: Option) -> str | None:
    value = options.get(code)
    return None if value is None else _dotted(value)


def _dotted(packed: bytes) -> str:
    # socket's C conversions: ipaddress costs ~10 us an address, and a DORA has ~15.
    return socket.inet_ntoa(packed)


def _packed(address: str) -> bytes:
    return socket.inet_aton(address)


# -- what the responder is given ------------------------------------------------------------


class UnknownMac(enum.StrEnum):
    """What a network does with a MAC that IPAM holds no IPv4 address for."""

    IGNORE = "ignore"  # no answer: the MAC gets an address once someone attaches one
    BOOK = "book"  # book and attach one through the allocator, then offer it


@dataclass(frozen=True)
class Dhcp4Config:
    """Timers and policies of the DHCPv4 responder.

    T1 is short on purpose: the client renews within a minute, and the renewal is when a
    move or a detach takes an address back. `unknown_mac` maps a Private Network id to
    its policy; a network it does not name ignores unknown MACs.
    """

    lease_time: int = 3600
    renewal_time: int = 30  # T1
    rebinding_time: int = 52  # T2
    unknown_mac: Mapping[str, UnknownMac] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Policies may come from flags as plain strings: a misspelt one fails here, once.
        object.__setattr__(self, "unknown_mac",
                           {pn_id: UnknownMac(p) for pn_id, p in self.unknown_mac.items()})
        # RFC 2131 4.4.5: T1 < T2 < lease; 0xffffffff would mean "forever".
        if not 0 < self.renewal_time < self.rebinding_time < self.lease_time < 0xFFFFFFFF:
            raise ValueError("DHCPv4 timers need 0 < T1 < T2 < lease time < 2**32 - 1, got "
                             f"T1={self.renewal_time} T2={self.rebinding_time} "
                             f"lease={self.lease_time}")

    def policy(self, pn_id: str) -> UnknownMac:
        """The unknown-MAC policy of the Private Network `pn_id`."""
        return self.unknown_mac.get(pn_id, UnknownMac.IGNORE)


class LeaseView(Protocol):
    """What the responders read of `allocator.contract.NetworkView`."""

    def networks(self) -> list[NetworkInfo]: ...

    def network(self, pn_id: str) -> NetworkInfo | None: ...

    def lease(self, pn_id: str, mac: str, is_ipv6: bool) -> Lease | None: ...

    def declined(self, pn_id: str, mac: str, address: str) -> bool: ...

    def decline_count(self, pn_id: str) -> int: ...


BookUnknown = Callable[[str, str], Awaitable[Lease | None]]
"""`book_unknown(pn_id, mac)`: book and attach an IPv4 address for `mac` in `pn_id`, and
return its lease once committed (None when it could not). It must be idempotent per
(network, MAC): a client retransmitting while a booking is in flight calls it again."""


@dataclass
class Dhcp4Counters:
    """What the responder did, for a metrics endpoint to read (`as_dict`)."""

    offers: int = 0
    acks: int = 0
    naks: int = 0
    declines: int = 0
    declines_over_limit: int = 0  # the network holds the most declines it may: not recorded
    decline_failed: int = 0  # IPAM could not record a decline (unreachable, no longer held)
    releases: int = 0
    informs: int = 0
    unknown_booked: int = 0
    unknown_ignored: int = 0
    booking_failed: int = 0  # `book_unknown` raised or returned no IPv4 lease of the network
    withheld: int = 0  # the MAC declined its address (any agent's record): not offered
    other_server: int = 0  # a REQUEST or DECLINE addressed to another server
    unserved: int = 0  # a network not served, with DHCP off, or an address not in it
    dropped: int = 0  # not a DHCP request this agent can read

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Reply:
    """A datagram to send, and where (RFC 2131 section 4.1).

    `broadcast`: send to 255.255.255.255 out of the interface the request came in on
    (a socket layer able to write an ARP entry may unicast to yiaddr at the client's
    MAC instead, unless the request's broadcast flag is set).
    """

    payload: bytes
    address: str
    port: int
    broadcast: bool

    @property
    def destination(self) -> tuple[str, int]:
        return self.address, self.port


# -- the responder --------------------------------------------------------------------------


class Dhcp4Responder:
    """Answers DHCPv4 requests from the view of IPAM's state (see the module docstring).

    `counters` are for operators. Declined addresses are read from the view; operators
    list and clear them through the admin API (`ipam dhcp-declines`). Without
    `record_decline` a DECLINE is logged and counted only.
    """

    def __init__(self, view: LeaseView, config: Dhcp4Config | None = None,
                 book_unknown: BookUnknown | None = None,
                 record_decline: RecordDecline | None = None) -> None:
        self.view = view
        self.config = config or Dhcp4Config()
        if book_unknown is None and UnknownMac.BOOK in self.config.unknown_mac.values():
            raise ValueError("an unknown-MAC policy says book, but no book_unknown was given")
        self.book_unknown = book_unknown
        self.counters = Dhcp4Counters()
        self.declines = DeclineRecorder(view, record_decline, self.counters, "dhcp4")

    # -- requests ---------------------------------------------------------------------------

    async def handle(self, data: bytes, pn_id: str | None) -> Reply | None:
        """The reply to one datagram received on the interface of network `pn_id` (None
        on a relay-only listener), or None when nothing is to be sent. Never raises for
        what a client sends."""
        outcome = self.respond(data, pn_id)
        if isinstance(outcome, Coroutine):
            return await outcome
        return outcome

    def respond(self, data: bytes, pn_id: str | None
                ) -> Reply | None | Coroutine[Any, Any, Reply | None]:
        """`handle` without a task where none is needed: the reply (or None) at once when
        the view holds the answer, a coroutine to await only when an unknown MAC is booked.
        A server answering thousands of known clients a second pays no task for each."""
        try:
            request = _client_request(data)
        except MalformedPacket as problem:
            self.counters.dropped += 1
            log.debug("dhcp4: dropped a datagram: %s", problem)
            return None
        served = self._network_of(request, pn_id)
        if served is None:
            self.counters.unserved += 1
            return None
        match request.message_type:
            case MessageType.DISCOVER:
                lease = self.view.lease(served.id, request.mac, False)
                if lease is None:
                    return self._discover_unknown(request, served)
                return self._offer(request, served, lease)
            case MessageType.REQUEST:
                return self._request(request, served)
            case MessageType.DECLINE:
                return self._decline(request, served)
            case MessageType.RELEASE:
                # The IPAM booking is not a lease: the address stays attached to the NIC.
                self.counters.releases += 1
                return None
            case _:  # INFORM, the last message a client sends
                return self._inform(request, served)

    async def _discover_unknown(self, request: Dhcp4Packet, network: NetworkInfo
                                ) -> Reply | None:
        lease = await self._book(network, request.mac)
        return None if lease is None else self._offer(request, network, lease)

    def _offer(self, request: Dhcp4Packet, network: NetworkInfo, lease: Lease) -> Reply | None:
        if self.view.declined(network.id, request.mac, lease.address):
            self.counters.withheld += 1
            return None
        subnet = _subnet_holding(network, lease.address)
        if subnet is None:
            log.error("dhcp4: %s holds %s outside the subnets of %s", request.mac,
                      lease.address, network.id)
            self.counters.unserved += 1
            return None
        self.counters.offers += 1
        return self._reply(request, MessageType.OFFER, lease.address,
                           _lease_options(self.config, network, subnet, lease))

    async def _book(self, network: NetworkInfo, mac: str) -> Lease | None:
        if self.config.policy(network.id) is UnknownMac.IGNORE or self.book_unknown is None:
            self.counters.unknown_ignored += 1
            return None
        try:
            lease = await self.book_unknown(network.id, mac)
        except Exception:  # the allocator failing (etcd down) must not stop the agent
            self.counters.booking_failed += 1
            log.warning("dhcp4: booking for %s in %s failed", mac, network.id, exc_info=True)
            return None
        if (lease is None or lease.is_ipv6 or lease.private_network_id != network.id
                or lease.mac != mac):
            self.counters.booking_failed += 1
            log.warning("dhcp4: booking for %s in %s gave no IPv4 lease of it: %r", mac,
                        network.id, lease)
            return None
        self.counters.unknown_booked += 1
        return lease

    def _request(self, request: Dhcp4Packet, network: NetworkInfo) -> Reply | None:
        if not self._is_ours(request, network):
            # The client chose another server's offer (RFC 2131 4.3.2): stay silent.
            self.counters.other_server += 1
            return None
        # RENEWING and REBINDING clients name their address in ciaddr, others in option 50.
        # Authoritative, like Kea's and dnsmasq's authoritative modes: IPAM is the only
        # record, so a client it holds nothing for was detached and is NAKed, not ignored.
        asked = request.requested_address or request.ciaddr
        lease = self.view.lease(network.id, request.mac, False)
        subnet = _subnet_holding(network, asked)
        if (lease is None or lease.address != asked or subnet is None
                or self.view.declined(network.id, request.mac, asked)):
            self.counters.naks += 1
            log.info("dhcp4: NAK %s for %s in %s: IPAM holds %s for it", request.mac, asked,
                     network.id, lease.address if lease else "nothing")
            return self._reply(request, MessageType.NAK, UNSPECIFIED,
                               _nak_options(subnet or _ipv4_subnets(network)[0]))
        self.counters.acks += 1
        return self._reply(request, MessageType.ACK, lease.address,
                           _lease_options(self.config, network, subnet, lease))

    def _decline(self, request: Dhcp4Packet, network: NetworkInfo
                 ) -> Coroutine[Any, Any, None] | None:
        """Nothing to answer (RFC 2131 4.3.3); a coroutine recording the decline when it
        names the address IPAM holds for the MAC."""
        if not self._is_ours(request, network):
            self.counters.other_server += 1
            return None
        self.counters.declines += 1
        address = request.requested_address
        lease = self.view.lease(network.id, request.mac, False)
        if lease is None or lease.address != address:
            # Nothing IPAM gives this MAC to withhold; recording it would only let a
            # flood of made-up declines grow etcd.
            log.debug("dhcp4: %s declined %s in %s, which IPAM does not hold for it",
                      request.mac, address, network.id)
            return None
        return self._record_decline(network.id, request.mac, lease.address)

    async def _record_decline(self, pn_id: str, mac: str, address: str) -> None:
        await self.declines.record(pn_id, mac, address)

    def _inform(self, request: Dhcp4Packet, network: NetworkInfo) -> Reply | None:
        subnet = _subnet_holding(network, request.ciaddr)
        if subnet is None:
            self.counters.unserved += 1
            return None
        self.counters.informs += 1
        # RFC 2131 4.3.5: configuration only, no address and no lease time.
        return self._reply(request, MessageType.ACK, UNSPECIFIED,
                           _network_options(network, subnet))

    # -- where a request belongs, where its reply goes ----------------------------------------

    def _network_of(self, request: Dhcp4Packet, pn_id: str | None) -> NetworkInfo | None:
        """The served network with DHCP on that `request` comes from: the one holding the
        relay's address when relayed, else the network of the receiving interface."""
        network: NetworkInfo | None
        if request.relayed:
            network = self._relayed_network(request.giaddr, pn_id)
        else:
            network = None if pn_id is None else self.view.network(pn_id)
        if network is None or not network.dhcp_enabled or not _ipv4_subnets(network):
            return None
        return network

    def _relayed_network(self, giaddr: str, pn_id: str | None) -> NetworkInfo | None:
        # Private Networks of different VPCs may reuse a range: the receiving interface's
        # network wins, and a relay address that several other networks hold is refused.
        own = None if pn_id is None else self.view.network(pn_id)
        if own is not None and _subnet_holding(own, giaddr) is not None:
            return own
        holders = [n for n in self.view.networks() if _subnet_holding(n, giaddr) is not None]
        if len(holders) > 1:
            log.warning("dhcp4: relay %s is in several served networks (%s); not answered",
                        giaddr, ", ".join(sorted(n.id for n in holders)))
        return holders[0] if len(holders) == 1 else None

    def _is_ours(self, request: Dhcp4Packet, network: NetworkInfo) -> bool:
        server_id = request.server_id
        return server_id is None or any(s.server == server_id for s in _ipv4_subnets(network))

    def _reply(self, request: Dhcp4Packet, message_type: MessageType, yiaddr: str,
               options: dict[int, bytes]) -> Reply:
        flags = request.flags
        if message_type is MessageType.NAK and request.relayed:
            flags |= BROADCAST_FLAG  # RFC 2131 4.3.2: the relay broadcasts a NAK
        # RFC 2131 table 3: ciaddr is echoed in an ACK only.
        ciaddr = request.ciaddr if message_type is MessageType.ACK else UNSPECIFIED
        payload = encode(Dhcp4Packet(op=BOOTREPLY, message_type=message_type, xid=request.xid,
                                     chaddr=request.chaddr, flags=flags, ciaddr=ciaddr,
                                     yiaddr=yiaddr, giaddr=request.giaddr, options=options))
        address, port, broadcast = _destination(request, message_type)
        return Reply(payload, address, port, broadcast)


def _client_request(data: bytes) -> Dhcp4Packet:
    """`data` decoded, with what each message type requires of a client checked."""
    request = decode(data)
    if request.op != BOOTREQUEST:
        raise MalformedPacket(f"op {request.op} is not BOOTREQUEST")
    if request.message_type not in _CLIENT_MESSAGES:
        raise MalformedPacket(f"{request.message_type.name} is a server's message")
    if request.hops > MAX_HOPS:
        raise MalformedPacket(f"{request.hops} relay hops: a relay loop")
    missing = {
        MessageType.REQUEST: request.requested_address is None
        and request.ciaddr == UNSPECIFIED,
        MessageType.DECLINE: request.requested_address is None,
        MessageType.INFORM: request.ciaddr == UNSPECIFIED,
    }
    if missing.get(request.message_type, False):
        raise MalformedPacket(f"{request.message_type.name} names no address")
    return request


def _destination(request: Dhcp4Packet, message_type: MessageType) -> tuple[str, int, bool]:
    """(address, port, broadcast) of the reply, RFC 2131 section 4.1."""
    if request.relayed:
        return request.giaddr, SERVER_PORT, False
    if message_type is not MessageType.NAK and request.ciaddr != UNSPECIFIED:
        return request.ciaddr, CLIENT_PORT, False
    return LIMITED_BROADCAST, CLIENT_PORT, True


def _lease_options(config: Dhcp4Config, network: NetworkInfo, subnet: SubnetInfo,
                   lease: Lease) -> dict[int, bytes]:
    options = _network_options(network, subnet)
    options[Option.LEASE_TIME] = config.lease_time.to_bytes(4, "big")
    options[Option.RENEWAL_TIME] = config.renewal_time.to_bytes(4, "big")
    options[Option.REBINDING_TIME] = config.rebinding_time.to_bytes(4, "big")
    # One label, as the DNS serves it: `<name>.<network>.internal`. A name that is not
    # a label (spaces, 255 characters) is not sent rather than mangled. A label also
    # keeps the reply within the 312 bytes of options every client accepts.
    if lease.name and _LABEL.fullmatch(lease.name):
        options[Option.HOST_NAME] = lease.name.encode("ascii")
    return options


def _network_options(network: NetworkInfo, subnet: SubnetInfo) -> dict[int, bytes]:
    return dict(_network_options_of(network, subnet))


@lru_cache(maxsize=1024)
def _network_options_of(network: NetworkInfo, subnet: SubnetInfo) -> tuple[tuple[int, bytes], ...]:
    # The same for every client of a subnet, while the network is unchanged (a change
    # makes a new NetworkInfo, hence a new key): built once, not once per packet.
    mask = _ipv4_network(subnet.cidr).netmask
    options: dict[int, bytes] = {
        Option.SERVER_ID: _packed(subnet.server),
        Option.SUBNET_MASK: mask.packed,
        Option.ROUTER: _packed(subnet.gateway),
        # The agent serves the network's DNS on the same reserved address.
        Option.DNS_SERVER: _packed(subnet.server),
    }
    if _is_domain_name(network.domain):
        options[Option.DOMAIN_NAME] = network.domain.encode("ascii")
    return tuple(options.items())


def _nak_options(subnet: SubnetInfo) -> dict[int, bytes]:
    return {Option.SERVER_ID: _packed(subnet.server)}


def _is_domain_name(name: str) -> bool:
    return all(_LABEL.fullmatch(label) for label in name.split("."))


def _ipv4_subnets(network: NetworkInfo) -> list[SubnetInfo]:
    return [s for s in network.subnets if not s.is_ipv6]


def _subnet_holding(network: NetworkInfo, address: str) -> SubnetInfo | None:
    """The IPv4 subnet of `network` that contains `address`."""
    try:
        host = int.from_bytes(socket.inet_aton(address), "big")
    except OSError:
        return None
    for subnet, first, mask in _ipv4_ranges(network.subnets):
        if host & mask == first:
            return subnet
    return None


@lru_cache(maxsize=1024)
def _ipv4_ranges(subnets: tuple[SubnetInfo, ...]) -> tuple[tuple[SubnetInfo, int, int], ...]:
    # (subnet, network address, mask) as integers: a test per packet costs two operations.
    return tuple((s, int(net.network_address), int(net.netmask))
                 for s in subnets if not s.is_ipv6 for net in [_ipv4_network(s.cidr)])


@lru_cache(maxsize=4096)
def _ipv4_network(cidr: str) -> ipaddress.IPv4Network:
    # Subnets never change: parse each CIDR once, not once per packet.
    return ipaddress.IPv4Network(cidr)

