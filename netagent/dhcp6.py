"""DHCPv6 (RFC 8415) for Private Networks: the address is the IPv6 attached to the client's MAC.

Stateful DHCPv6 for the IPv6 subnet of a dual-stack network, with no lease database
(DESIGN.md section 2b): a SOLICIT is advertised exactly the IPv6 address IPAM holds for
the client's MAC now, a REQUEST, RENEW or REBIND is answered with that address, and an
address the client holds that IPAM no longer gives it is handed back with lifetimes 0,
so a move or a detach takes the address back at the client's next renewal (T1 is short).
A Decline is recorded in IPAM, and every agent withholds the address from that MAC
(`netagent.declines`). Pure protocol logic: the socket layer hands `Dhcp6Responder.handle` a datagram and sends
the `Reply` it gets back, if any.

    responder = Dhcp6Responder(view, Dhcp6Config(), record_decline=ipam.record_decline)
    reply = await responder.handle(datagram, pn_id, source)   # -> Reply | None
    if reply: sock.sendto(reply.payload, (reply.address, reply.port))

What the socket layer does: a UDP socket on port 547 of each interface of a served network
(SO_BINDTODEVICE), joined to ff02::1:2 (All_DHCP_Relay_Agents_and_Servers) on it; `source`
is the address a datagram came from (a link-local client's, with its `%scope`, or a
relay's), and the reply goes to `reply.address` on `reply.port`: the client on 546, a relay
(RELAY-REPL) on 547, out of the interface the request came in on.

DHCPv6 clients identify themselves by a DUID, not a MAC, while IPAM attaches an IP to a
MAC. The MAC is found from, in order: a DUID-LL or DUID-LLT of an Ethernet interface; the
client link-layer address a relay saw (RFC 6939); a link-local address in modified EUI-64
form (RFC 4291 appendix A). The first of those MACs IPAM holds an IPv6 address for in the
network is the client's: a machine's DUID-LLT may name another of its NICs.

The codec is our own (`decode`, `encode`): options repeat (IA_NA, IAADDR), nest (IA
options, relay messages) and are read from attacker-chosen bytes, so every length is
checked once here rather than around a library.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import logging
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

from allocator.contract import Lease, NetworkInfo, SubnetInfo

from .declines import DeclineRecorder, RecordDecline
from .dhcp4 import LeaseView, MalformedPacket

log = logging.getLogger(__name__)

SERVER_PORT = 547
CLIENT_PORT = 546
ALL_DHCP_RELAY_AGENTS_AND_SERVERS = "ff02::1:2"
# RFC 8415 section 7.6: a relay forwards nothing with a hop count at this limit, so no
# honest message nests deeper than this many relays plus the last one's.
HOP_COUNT_LIMIT = 8
# A client's message fits an Ethernet frame; each relay adds its 34-byte header and its
# options, so a relayed one may be larger on a path with a bigger MTU. Past this it is not
# a DHCPv6 message worth parsing.
MAX_MESSAGE_SIZE = 4096
# RFC 8415 section 11.1: a DUID is at most 128 octets after its 2-octet type code.
MAX_DUID_LENGTH = 130
DUID_LLT, DUID_EN, DUID_LL = 1, 2, 3
ETHERNET, ETHERNET_ADDRESS_LENGTH = 1, 6  # hardware type 1 (RFC 826)
INFINITY = 0xFFFFFFFF  # a lifetime or a timer that never runs out


class MessageType(enum.IntEnum):
    """The DHCPv6 message types (RFC 8415 section 7.3)."""

    SOLICIT = 1
    ADVERTISE = 2
    REQUEST = 3
    CONFIRM = 4
    RENEW = 5
    REBIND = 6
    REPLY = 7
    RELEASE = 8
    DECLINE = 9
    RECONFIGURE = 10
    INFORMATION_REQUEST = 11
    RELAY_FORW = 12
    RELAY_REPL = 13


class Option(enum.IntEnum):
    """The option codes this agent reads or writes (RFC 8415 section 21, RFC 3646, 4704, 6939)."""

    CLIENTID = 1
    SERVERID = 2
    IA_NA = 3
    IA_TA = 4
    IAADDR = 5
    ORO = 6
    PREFERENCE = 7
    ELAPSED_TIME = 8
    RELAY_MSG = 9
    STATUS_CODE = 13
    RAPID_COMMIT = 14
    INTERFACE_ID = 18
    DNS_SERVERS = 23
    DOMAIN_LIST = 24
    IA_PD = 25
    IAPREFIX = 26
    CLIENT_FQDN = 39
    CLIENT_LINKLAYER_ADDR = 79


class StatusCode(enum.IntEnum):
    """Option 13's status codes (RFC 8415 section 21.13)."""

    SUCCESS = 0
    UNSPEC_FAIL = 1
    NO_ADDRS_AVAIL = 2
    NO_BINDING = 3
    NOT_ON_LINK = 4
    USE_MULTICAST = 5
    NO_PREFIX_AVAIL = 6


# The status messages sent with each code: short, for a client's log.
STATUS_MESSAGES = {
    StatusCode.SUCCESS: "success",
    StatusCode.NO_ADDRS_AVAIL: "no address for this client",
    StatusCode.NO_BINDING: "no binding for this IA",
    StatusCode.NOT_ON_LINK: "not this client's address",
    StatusCode.NO_PREFIX_AVAIL: "no prefix delegation here",
}

# Client FQDN flags (RFC 4704 section 4.1).
FQDN_S, FQDN_O, FQDN_N = 0x01, 0x02, 0x04

_RELAYS = frozenset({MessageType.RELAY_FORW, MessageType.RELAY_REPL})
_SERVER_MESSAGES = frozenset({MessageType.ADVERTISE, MessageType.REPLY, MessageType.RECONFIGURE})
_IA_KINDS = frozenset({Option.IA_NA, Option.IA_TA, Option.IA_PD})
# RFC 8415 section 16: which client messages must, and which must not, name a server.
_NAMES_A_SERVER = frozenset({MessageType.REQUEST, MessageType.RENEW, MessageType.DECLINE,
                             MessageType.RELEASE})
_NAMES_NO_SERVER = frozenset({MessageType.SOLICIT, MessageType.CONFIRM, MessageType.REBIND})
_RENEWING = frozenset({MessageType.RENEW, MessageType.REBIND})
# One DNS label (RFC 1123): the resource name is the first label of its DNS name.
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_UNSPECIFIED = ipaddress.IPv6Address("::")

Options = tuple[tuple[int, bytes], ...]
"""Options in wire order as (code, value) pairs: DHCPv6 repeats codes (IA_NA, IAADDR)."""


# -- the codec ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Dhcp6Message:
    """One client/server message (RFC 8415 section 8): type, transaction id, options."""

    message_type: MessageType
    transaction_id: int
    options: Options = ()

    def first(self, code: int) -> bytes | None:
        """The value of the first option `code`, or None."""
        return next((value for c, value in self.options if c == code), None)


@dataclass(frozen=True)
class RelayMessage:
    """A RELAY-FORW or RELAY-REPL (RFC 8415 section 9) and the message it carries.

    `options` are the relay's own, without the Relay Message option, whose content is
    `relayed`: the client's message or the next relay's.
    """

    message_type: MessageType
    hop_count: int
    link_address: str
    peer_address: str
    relayed: Dhcp6Message | RelayMessage
    options: Options = ()

    def first(self, code: int) -> bytes | None:
        """The value of the first option `code`, or None."""
        return next((value for c, value in self.options if c == code), None)


def decode(data: bytes) -> Dhcp6Message | RelayMessage:
    """Parse one DHCPv6 message, relayed or not, or raise MalformedPacket.

    Nothing else escapes: every length is checked before it is read, the option cursor
    moves forward at each step and relays nest at most HOP_COUNT_LIMIT + 1 deep, so no
    input can make the parser loop or recurse without end.
    """
    if len(data) > MAX_MESSAGE_SIZE:
        raise MalformedPacket(f"oversized: {len(data)} bytes")
    return _decode(data, depth=0)


def encode(message: Dhcp6Message | RelayMessage) -> bytes:
    """The wire form of `message`; ValueError if an option is longer than 65535 bytes."""
    if isinstance(message, RelayMessage):
        header = struct.pack("!BB16s16s", message.message_type, message.hop_count,
                             ipaddress.IPv6Address(message.link_address).packed,
                             ipaddress.IPv6Address(message.peer_address).packed)
        return header + encode_options(
            (*message.options, (Option.RELAY_MSG, encode(message.relayed))))
    if not 0 <= message.transaction_id < 1 << 24:
        raise ValueError(f"transaction id {message.transaction_id} is not 24 bits")
    return (struct.pack("!I", message.message_type << 24 | message.transaction_id)
            + encode_options(message.options))


def encode_options(options: Iterable[tuple[int, bytes]]) -> bytes:
    """Options in their wire form: code, length, value (RFC 8415 section 21.1)."""
    wire = []
    for code, value in options:
        if len(value) > 0xFFFF:
            raise ValueError(f"option {code} is {len(value)} bytes, more than one option holds")
        wire.append(struct.pack("!HH", code, len(value)) + value)
    return b"".join(wire)


def decode_options(data: bytes, start: int = 0) -> Options:
    """The options in `data` from `start` to its end, or MalformedPacket."""
    options: list[tuple[int, bytes]] = []
    cursor, end = start, len(data)
    while cursor < end:  # each turn moves the cursor by 4 bytes at least
        if cursor + 4 > end:
            raise MalformedPacket(f"{end - cursor} stray bytes after the last option")
        code, length = struct.unpack_from("!HH", data, cursor)
        value_end = cursor + 4 + length
        if value_end > end:
            raise MalformedPacket(f"option {code} runs past the end of its message")
        options.append((code, bytes(data[cursor + 4:value_end])))
        cursor = value_end
    return tuple(options)


def encode_domain_name(name: str) -> bytes | None:
    """`name` as an uncompressed, fully qualified DNS name (RFC 1035 section 3.1), as DHCPv6
    (RFC 8415 section 10) and RA options carry it; None when it is not a host name."""
    labels = name.rstrip(".").split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return None
    wire = b"".join(bytes((len(label),)) + label.encode("ascii") for label in labels) + b"\x00"
    return wire if len(wire) <= 255 else None


def _decode(data: bytes, depth: int) -> Dhcp6Message | RelayMessage:
    if len(data) < 4:
        raise MalformedPacket(f"truncated: {len(data)} bytes, a header takes 4")
    if not MessageType.SOLICIT <= data[0] <= MessageType.RELAY_REPL:
        raise MalformedPacket(f"message type {data[0]} is not served")
    kind = MessageType(data[0])
    if kind not in _RELAYS:
        return Dhcp6Message(kind, int.from_bytes(data[1:4], "big"), decode_options(data, 4))
    if depth > HOP_COUNT_LIMIT:
        raise MalformedPacket(f"relays nested more than {HOP_COUNT_LIMIT + 1} deep: a loop")
    if len(data) < 34:
        raise MalformedPacket(f"truncated relay message: {len(data)} bytes, a header takes 34")
    hop_count, link, peer = struct.unpack_from("!B16s16s", data, 1)
    options = decode_options(data, 34)
    carried = [value for code, value in options if code == Option.RELAY_MSG]
    if len(carried) != 1:
        raise MalformedPacket(f"a relay message carries {len(carried)} messages, not one")
    return RelayMessage(kind, hop_count, str(ipaddress.IPv6Address(link)),
                        str(ipaddress.IPv6Address(peer)), _decode(carried[0], depth + 1),
                        tuple((code, value) for code, value in options
                              if code != Option.RELAY_MSG))


# -- one client request, read once ------------------------------------------------------------


@dataclass(frozen=True)
class IdentityAssociation:
    """One IA of a client's message (RFC 8415 sections 21.4, 21.5, 21.21): its kind, its IAID
    and the addresses the client names in it (none for an IA_PD: no prefix is delegated)."""

    kind: Option
    iaid: int
    addresses: tuple[ipaddress.IPv6Address, ...] = ()


@dataclass(frozen=True)
class ClientRequest:
    """A client's message as the responder serves it, decoded and checked once.

    `relays` lists the relays it came through, outermost (the one that sent it here)
    first; `source` is where the datagram came from: the client, or the outermost relay.
    """

    message: Dhcp6Message
    relays: tuple[RelayMessage, ...]
    source: str
    client_duid: bytes | None
    server_duid: bytes | None
    ias: tuple[IdentityAssociation, ...]
    rapid_commit: bool
    client_fqdn: bytes | None

    @property
    def message_type(self) -> MessageType:
        return self.message.message_type

    @property
    def link_address(self) -> ipaddress.IPv6Address | None:
        """The address naming the client's link: the link-address of the relay nearest the
        client that set one (RFC 8415 section 13.1); None when not relayed."""
        return next((address for address in (ipaddress.IPv6Address(r.link_address)
                                              for r in reversed(self.relays))
                     if address != _UNSPECIFIED), None)

    @property
    def addresses(self) -> tuple[ipaddress.IPv6Address, ...]:
        """Every address the client names in its IAs."""
        return tuple(address for ia in self.ias for address in ia.addresses)

    @property
    def macs(self) -> tuple[str, ...]:
        """The client's MAC candidates, most trusted first (see the module docstring)."""
        found = [_duid_mac(self.client_duid)]
        if self.relays:
            nearest = self.relays[-1]
            found.append(_link_layer_mac(nearest.first(Option.CLIENT_LINKLAYER_ADDR)))
            found.append(_eui64_mac(ipaddress.IPv6Address(nearest.peer_address)))
        else:
            found.append(_eui64_mac(ipaddress.IPv6Address(self.source)))
        return tuple(dict.fromkeys(mac for mac in found if mac is not None))


def client_request(data: bytes, source: str) -> ClientRequest:
    """`data`, received from `source`, decoded and checked as RFC 8415 section 16 asks of
    the message type; MalformedPacket if a server must discard it."""
    try:
        ipaddress.IPv6Address(source)
    except ValueError:
        raise MalformedPacket(f"source {source!r} is not an IPv6 address") from None
    outer = decode(data)
    relays: list[RelayMessage] = []
    message = outer
    while isinstance(message, RelayMessage):  # as deep as `decode` allowed, no deeper
        if message.message_type is not MessageType.RELAY_FORW:
            raise MalformedPacket("a RELAY-REPL is a server's message")
        relays.append(message)
        message = message.relayed
    kind = message.message_type
    if kind in _SERVER_MESSAGES:
        raise MalformedPacket(f"{kind.name} is a server's message")
    singles = {code: [v for c, v in message.options if c == code]
               for code in (Option.CLIENTID, Option.SERVERID, Option.RAPID_COMMIT,
                            Option.CLIENT_FQDN)}
    for code, values in singles.items():
        if len(values) > 1:
            raise MalformedPacket(f"option {code} appears {len(values)} times")
    client_duid = _duid(singles[Option.CLIENTID], "client")
    server_duid = _duid(singles[Option.SERVERID], "server")
    if singles[Option.RAPID_COMMIT] and singles[Option.RAPID_COMMIT][0]:
        raise MalformedPacket("a rapid commit option with a value")
    if singles[Option.CLIENT_FQDN] and not singles[Option.CLIENT_FQDN][0]:
        raise MalformedPacket("an empty client FQDN option")
    for relay in relays:
        linklayer = [v for c, v in relay.options if c == Option.CLIENT_LINKLAYER_ADDR]
        if len(linklayer) > 1 or (linklayer and len(linklayer[0]) < 2):
            raise MalformedPacket("a relay's client link-layer address is malformed")
    ias = tuple(_identity_association(Option(code), value) for code, value in message.options
                if code in _IA_KINDS)
    if kind is not MessageType.INFORMATION_REQUEST and client_duid is None:
        raise MalformedPacket(f"{kind.name} without a client identifier")
    if kind in _NAMES_A_SERVER and server_duid is None:
        raise MalformedPacket(f"{kind.name} without a server identifier")
    if kind in _NAMES_NO_SERVER and server_duid is not None:
        raise MalformedPacket(f"{kind.name} with a server identifier")
    if kind is MessageType.INFORMATION_REQUEST and ias:
        raise MalformedPacket("INFORMATION-REQUEST with an IA")
    request = ClientRequest(message, tuple(relays), source, client_duid, server_duid, ias,
                            bool(singles[Option.RAPID_COMMIT]),
                            singles[Option.CLIENT_FQDN][0] if singles[Option.CLIENT_FQDN]
                            else None)
    if kind is MessageType.CONFIRM and not request.addresses:
        # RFC 8415 18.3.3: with no address to check, the server must not reply.
        raise MalformedPacket("CONFIRM names no address")
    return request


def _duid(values: list[bytes], whose: str) -> bytes | None:
    if not values:
        return None
    if not 2 <= len(values[0]) <= MAX_DUID_LENGTH:
        raise MalformedPacket(f"a {whose} DUID of {len(values[0])} bytes")
    return values[0]


def _identity_association(kind: Option, value: bytes) -> IdentityAssociation:
    fixed = 4 if kind is Option.IA_TA else 12  # IAID, then T1 and T2 but in an IA_TA
    if len(value) < fixed:
        raise MalformedPacket(f"{kind.name} of {len(value)} bytes")
    addresses = []
    for code, sub in decode_options(value, fixed):
        if code == Option.IAADDR and kind is not Option.IA_PD:
            if len(sub) < 24:
                raise MalformedPacket(f"an IAADDR of {len(sub)} bytes")
            decode_options(sub, 24)  # its own options must be well-formed too
            addresses.append(ipaddress.IPv6Address(sub[:16]))
    return IdentityAssociation(kind, int.from_bytes(value[:4], "big"), tuple(addresses))


def _duid_mac(duid: bytes | None) -> str | None:
    """The MAC in a DUID-LLT or DUID-LL of an Ethernet interface (RFC 8415 11.2, 11.4)."""
    if duid is None or len(duid) < 4:
        return None
    kind, hardware = struct.unpack_from("!HH", duid)
    if hardware != ETHERNET:
        return None
    if kind == DUID_LLT and len(duid) == 8 + ETHERNET_ADDRESS_LENGTH:
        return _mac(duid[8:])
    if kind == DUID_LL and len(duid) == 4 + ETHERNET_ADDRESS_LENGTH:
        return _mac(duid[4:])
    return None


def _link_layer_mac(value: bytes | None) -> str | None:
    """The MAC of RFC 6939's client link-layer address option: type 1, then 6 bytes."""
    if value is None or len(value) != 2 + ETHERNET_ADDRESS_LENGTH:
        return None
    return _mac(value[2:]) if int.from_bytes(value[:2], "big") == ETHERNET else None


def _eui64_mac(address: ipaddress.IPv6Address) -> str | None:
    """The MAC behind a link-local address in modified EUI-64 form (RFC 4291 appendix A):
    ff:fe in the middle of the interface id, the universal/local bit flipped."""
    packed = address.packed
    if not address.is_link_local or packed[11:13] != b"\xff\xfe":
        return None
    return _mac(bytes((packed[8] ^ 0x02,)) + packed[9:11] + packed[13:16])


def _mac(octets: bytes) -> str:
    """A MAC as IPAM spells it: lowercase, colon-separated."""
    return ":".join(f"{b:02x}" for b in octets)


# -- what the responder is given ----------------------------------------------------------------


@dataclass(frozen=True)
class Dhcp6Config:
    """Timers and options of the DHCPv6 responder.

    T1 and T2 are short on purpose, as for DHCPv4: the client renews within a minute, and
    the renewal is when a move or a detach takes an address back. The preferred lifetime
    is shorter than the valid one so that an address whose renewals stopped is deprecated
    (no new connection starts from it) before it goes.

    `rapid_commit`: answer a SOLICIT that asks for it with the REPLY at once; safe here,
    since committing books nothing (the attachment is the lease). `preference` (0-255) is
    sent in ADVERTISEs: 255 tells the client not to wait for other servers. `server_duid`
    replaces the DUID derived from each network (`network_duid`).
    """

    preferred_lifetime: int = 1800
    valid_lifetime: int = 3600
    renewal_time: int = 30  # T1
    rebinding_time: int = 52  # T2
    rapid_commit: bool = True
    preference: int = 255
    server_duid: bytes | None = None

    def __post_init__(self) -> None:
        # RFC 8415 21.4 and 21.6: T1 <= T2, preferred <= valid; and renewing after the
        # address is deprecated would leave the client without one for a while.
        if not (0 < self.renewal_time < self.rebinding_time < self.preferred_lifetime
                <= self.valid_lifetime < INFINITY):
            raise ValueError("DHCPv6 timers need 0 < T1 < T2 < preferred <= valid lifetime "
                             f"< 2**32 - 1, got T1={self.renewal_time} "
                             f"T2={self.rebinding_time} preferred={self.preferred_lifetime} "
                             f"valid={self.valid_lifetime}")
        if not 0 <= self.preference <= 255:
            raise ValueError(f"preference {self.preference} is not 0-255")
        if self.server_duid is not None and not 2 <= len(self.server_duid) <= MAX_DUID_LENGTH:
            raise ValueError(f"a server DUID of {len(self.server_duid)} bytes: DUIDs have "
                             f"2 to {MAX_DUID_LENGTH}")


@lru_cache(maxsize=4096)
def network_duid(pn_id: str) -> bytes:
    """The server DUID the agents use on the Private Network `pn_id`: a DUID-LL (RFC 8415
    11.4) of a locally administered MAC derived from the network id.

    Stable across restarts and the same on every agent serving the network, so a client
    renewing with one agent's DUID is answered by any of them (they read the same state);
    derived rather than an interface's MAC because the agent's interfaces may change, and
    not a DUID-EN because that needs an enterprise number of our own.
    """
    digest = hashlib.sha256(f"ipam-dhcp6-server/{pn_id}".encode()).digest()
    mac = bytes(((digest[0] & 0xFC) | 0x02,)) + digest[1:6]  # unicast, locally administered
    return struct.pack("!HH", DUID_LL, ETHERNET) + mac


@dataclass
class Dhcp6Counters:
    """What the responder did, for a metrics endpoint to read (`as_dict`). Each datagram
    counts once, but for the declines that could not be recorded, counted again as such."""

    advertises: int = 0
    replies: int = 0  # REPLYs giving the client its address (REQUEST/RENEW/REBIND/rapid SOLICIT)
    refusals: int = 0  # REPLYs giving no address: NoAddrsAvail, NoBinding, lifetimes 0
    confirms: int = 0  # CONFIRMs answered Success
    not_on_link: int = 0  # CONFIRMs answered NotOnLink
    releases: int = 0
    declines: int = 0
    declines_over_limit: int = 0  # the network holds the most declines it may: not recorded
    decline_failed: int = 0  # IPAM could not record a decline (unreachable, no longer held)
    informs: int = 0  # INFORMATION-REQUESTs answered
    unknown_mac: int = 0  # a SOLICIT from MACs IPAM holds no IPv6 address for: not answered
    unidentified: int = 0  # no MAC could be found for the client: not answered
    withheld: int = 0  # a SOLICIT for an address its MAC declined (any agent's record)
    other_server: int = 0  # a message naming another server
    unserved: int = 0  # a network not served, with DHCP off or no IPv6 subnet; a stray lease
    dropped: int = 0  # not a DHCPv6 client message this agent can read

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Reply:
    """A datagram to send, and where (RFC 8415 section 18.3, 19.3): the client's address
    on port 546, or for a relayed request the relay's on port 547 (a RELAY-REPL).

    `address` is the `source` the request came from as it was given (a link-local one
    keeps its `%scope`): send it out of the interface the request came in on.
    """

    payload: bytes
    address: str
    port: int

    @property
    def destination(self) -> tuple[str, int]:
        return self.address, self.port


# -- the responder ------------------------------------------------------------------------------


class Dhcp6Responder:
    """Answers DHCPv6 requests from the view of IPAM's state (see the module docstring).

    `counters` are for operators. Declined addresses are read from the view; operators
    list and clear them through the admin API (`ipam dhcp-declines`). Without
    `record_decline` a Decline is logged and counted only.
    """

    def __init__(self, view: LeaseView, config: Dhcp6Config | None = None,
                 record_decline: RecordDecline | None = None) -> None:
        self.view = view
        self.config = config or Dhcp6Config()
        self.counters = Dhcp6Counters()
        self.declines = DeclineRecorder(view, record_decline, self.counters, "dhcp6")

    # -- operators ------------------------------------------------------------------------

    def server_duid(self, pn_id: str) -> bytes:
        """The DUID this responder answers with on the network `pn_id`."""
        return self.config.server_duid or network_duid(pn_id)

    # -- requests ---------------------------------------------------------------------------

    async def handle(self, data: bytes, pn_id: str | None, source: str) -> Reply | None:
        """The reply to one datagram from `source` received on the interface of network
        `pn_id` (None on a relay-only listener), or None when nothing is to be sent.
        Never raises for what a client sends."""
        try:
            request = client_request(data, source)
        except MalformedPacket as problem:
            self.counters.dropped += 1
            log.debug("dhcp6: dropped a datagram from %s: %s", source, problem)
            return None
        served = self._network_of(request, pn_id)
        if served is None:
            self.counters.unserved += 1
            return None
        network, subnet = served
        if request.server_duid not in (None, self.server_duid(network.id)):
            # The client chose another server (RFC 8415 16): only that one answers.
            self.counters.other_server += 1
            return None
        match request.message_type:
            case MessageType.SOLICIT:
                return self._solicit(request, network, subnet)
            case MessageType.REQUEST | MessageType.RENEW | MessageType.REBIND:
                return self._assign(request, network, subnet)
            case MessageType.CONFIRM:
                return self._confirm(request, network, subnet)
            case MessageType.RELEASE:
                # The IPAM booking is not a lease: the address stays attached to the NIC.
                self.counters.releases += 1
                return self._reply(request, network, MessageType.REPLY,
                                   [_status(StatusCode.SUCCESS)])
            case MessageType.DECLINE:
                return await self._decline(request, network, subnet)
            case _:  # INFORMATION-REQUEST: configuration only, to any client of the link
                self.counters.informs += 1
                return self._reply(request, network, MessageType.REPLY,
                                   _configuration(network, subnet))

    def _solicit(self, request: ClientRequest, network: NetworkInfo,
                 subnet: SubnetInfo) -> Reply | None:
        mac, lease = self._lease_of(request, network)
        if mac is None:
            self.counters.unidentified += 1
            return None
        if lease is None:
            self.counters.unknown_mac += 1
            return None
        if not _holds(subnet, lease.address):
            log.error("dhcp6: %s holds %s outside the IPv6 subnet %s of %s", mac, lease.address,
                      subnet.cidr, network.id)
            self.counters.unserved += 1
            return None
        if self._is_declined(network, mac, lease):
            self.counters.withheld += 1
            return None
        ias, granted = self._answered_ias(request, lease)
        if not granted:
            # RFC 8415 18.3.9: no IA_NA to give an address in; say so, with no IA at all.
            self.counters.advertises += 1
            return self._reply(request, network, MessageType.ADVERTISE,
                               [_status(StatusCode.NO_ADDRS_AVAIL)])
        options = [*ias, *_configuration(network, subnet),
                   *_fqdn(request, network, lease)]
        if request.rapid_commit and self.config.rapid_commit:
            self.counters.replies += 1
            return self._reply(request, network, MessageType.REPLY,
                               [(Option.RAPID_COMMIT, b""), *options])
        self.counters.advertises += 1
        if self.config.preference:
            options.insert(0, (Option.PREFERENCE, bytes((self.config.preference,))))
        return self._reply(request, network, MessageType.ADVERTISE, options)

    def _assign(self, request: ClientRequest, network: NetworkInfo,
                subnet: SubnetInfo) -> Reply | None:
        """REQUEST, RENEW, REBIND: the address IPAM holds for the MAC now, and lifetimes 0
        for any other the client names (RFC 8415 18.3.2, 18.3.4, 18.3.5)."""
        mac, lease = self._lease_of(request, network)
        if mac is None:
            self.counters.unidentified += 1
            return None
        grantable = self._grantable(network, subnet, mac, lease)
        ias, granted = self._answered_ias(request, grantable)
        options = list(ias)
        if granted and grantable is not None:
            self.counters.replies += 1
            options += [*_configuration(network, subnet), *_fqdn(request, network, grantable)]
        else:
            self.counters.refusals += 1
            log.info("dhcp6: %s of %s in %s refused: IPAM holds %s for it",
                     request.message_type.name, mac, network.id,
                     lease.address if lease else "nothing")
        return self._reply(request, network, MessageType.REPLY, options)

    def _confirm(self, request: ClientRequest, network: NetworkInfo,
                 subnet: SubnetInfo) -> Reply | None:
        """Success only if every address the client names is the one IPAM holds for its MAC:
        stricter than RFC 8415 18.3.3 (on-link only), so a moved address is given up."""
        mac, lease = self._lease_of(request, network)
        if mac is None:
            self.counters.unidentified += 1
            return None
        grantable = self._grantable(network, subnet, mac, lease)
        ours = grantable is not None and all(
            address == ipaddress.IPv6Address(grantable.address)
            for address in request.addresses)
        if ours:
            self.counters.confirms += 1
        else:
            self.counters.not_on_link += 1
        code = StatusCode.SUCCESS if ours else StatusCode.NOT_ON_LINK
        return self._reply(request, network, MessageType.REPLY, [_status(code)])

    async def _decline(self, request: ClientRequest, network: NetworkInfo,
                       subnet: SubnetInfo) -> Reply | None:
        self.counters.declines += 1
        mac, lease = self._lease_of(request, network)
        if (mac is not None and lease is not None and _holds(subnet, lease.address)
                and ipaddress.IPv6Address(lease.address) in request.addresses):
            if not await self.declines.record(network.id, mac, lease.address):
                # IPAM could not be asked: no Reply, so the client retransmits its
                # Decline (RFC 8415 18.2.8) and the next one may be recorded.
                return None
        else:
            # Nothing IPAM gives this MAC to withhold; recording it would only let a
            # flood of made-up declines grow etcd.
            log.debug("dhcp6: a client declined %s in %s, which IPAM does not hold for it",
                      ", ".join(map(str, request.addresses)), network.id)
        return self._reply(request, network, MessageType.REPLY, [_status(StatusCode.SUCCESS)])

    # -- whose address, which network ------------------------------------------------------------

    def _lease_of(self, request: ClientRequest, network: NetworkInfo
                  ) -> tuple[str | None, Lease | None]:
        """(the client's MAC, the IPv6 lease IPAM holds for it in `network`): the first MAC
        candidate with a lease, else the first candidate and None."""
        macs = request.macs
        for mac in macs:  # three candidates at most
            lease = self.view.lease(network.id, mac, True)
            if lease is not None:
                return mac, lease
        return (macs[0] if macs else None), None

    def _grantable(self, network: NetworkInfo, subnet: SubnetInfo, mac: str,
                   lease: Lease | None) -> Lease | None:
        """`lease` if it may be handed out now: in the subnet, and not declined by `mac`."""
        if lease is None:
            return None
        if not _holds(subnet, lease.address):
            log.error("dhcp6: %s holds %s outside the IPv6 subnet %s of %s", mac, lease.address,
                      subnet.cidr, network.id)
            return None
        return None if self._is_declined(network, mac, lease) else lease

    def _is_declined(self, network: NetworkInfo, mac: str, lease: Lease) -> bool:
        """Whether `mac` declined `lease`'s address (any agent's record, in the view)."""
        return self.view.declined(network.id, mac, lease.address)

    def _network_of(self, request: ClientRequest, pn_id: str | None
                    ) -> tuple[NetworkInfo, SubnetInfo] | None:
        """The served network with DHCP on that `request` comes from, and its IPv6 subnet:
        the one holding the relay's link-address when relayed, else the network of the
        receiving interface."""
        network: NetworkInfo | None
        if request.relays:
            link = request.link_address
            network = None if link is None else self._relayed_network(link, pn_id)
        else:
            network = None if pn_id is None else self.view.network(pn_id)
        subnet = None if network is None else network.subnet(True)
        if network is None or not network.dhcp_enabled or subnet is None:
            return None
        return network, subnet

    def _relayed_network(self, link: ipaddress.IPv6Address, pn_id: str | None
                         ) -> NetworkInfo | None:
        # Private Networks of different VPCs may reuse a range: the receiving interface's
        # network wins, and a link-address that several other networks hold is refused.
        own = None if pn_id is None else self.view.network(pn_id)
        if own is not None and _holds(own.subnet(True), str(link)):
            return own
        holders = [n for n in self.view.networks() if _holds(n.subnet(True), str(link))]
        if len(holders) > 1:
            log.warning("dhcp6: relay link %s is in several served networks (%s); not answered",
                        link, ", ".join(sorted(n.id for n in holders)))
        return holders[0] if len(holders) == 1 else None

    # -- what is answered ---------------------------------------------------------------------

    def _answered_ias(self, request: ClientRequest, lease: Lease | None
                      ) -> tuple[list[tuple[int, bytes]], bool]:
        """The IA options of the answer, and whether the lease was given in one of them.

        One MAC has one IPv6 address in IPAM: the client's first IA_NA gets it; the other
        IAs get none (an IA_PD never does). Addresses the client names that are not its
        address now get lifetimes 0 (RFC 8415 18.3.4: not appropriate for the link), except
        in a SOLICIT, where they are only hints.
        """
        config = self.config
        kind = request.message_type
        renewing = kind in _RENEWING
        granted = None if lease is None else ipaddress.IPv6Address(lease.address)
        primary = None if granted is None else next(
            (ia for ia in request.ias if ia.kind is Option.IA_NA), None)
        answered = []
        for ia in request.ias:
            stale = [_iaaddr(address, 0, 0) for address in ia.addresses if address != granted]
            if ia is primary and granted is not None:
                given = [_iaaddr(granted, config.preferred_lifetime, config.valid_lifetime)]
                if kind is not MessageType.SOLICIT:
                    given += stale
                answered.append(_ia(ia, config.renewal_time, config.rebinding_time, given))
            elif ia.kind is Option.IA_PD:
                code = StatusCode.NO_BINDING if renewing else StatusCode.NO_PREFIX_AVAIL
                answered.append(_ia(ia, 0, 0, [_status(code)]))
            elif renewing:
                answered.append(_ia(ia, 0, 0, stale or [_status(StatusCode.NO_BINDING)]))
            else:
                answered.append(_ia(ia, 0, 0, [_status(StatusCode.NO_ADDRS_AVAIL)]))
        return answered, primary is not None

    def _reply(self, request: ClientRequest, network: NetworkInfo, kind: MessageType,
               options: Sequence[tuple[int, bytes]]) -> Reply:
        head: list[tuple[int, bytes]] = []
        if request.client_duid is not None:
            head.append((Option.CLIENTID, request.client_duid))
        head.append((Option.SERVERID, self.server_duid(network.id)))
        answer: Dhcp6Message | RelayMessage = Dhcp6Message(
            kind, request.message.transaction_id, (*head, *options))
        for relay in reversed(request.relays):  # innermost first: each wraps the last
            # RFC 8415 19.3: the RELAY-REPL copies the header and the Interface-ID.
            echoed = tuple((c, v) for c, v in relay.options if c == Option.INTERFACE_ID)
            answer = RelayMessage(MessageType.RELAY_REPL, relay.hop_count, relay.link_address,
                                  relay.peer_address, answer, echoed)
        port = SERVER_PORT if request.relays else CLIENT_PORT
        return Reply(encode(answer), request.source, port)


# -- options ------------------------------------------------------------------------------------


def _ia(ia: IdentityAssociation, t1: int, t2: int,
        options: Iterable[tuple[int, bytes]]) -> tuple[int, bytes]:
    """The answer's IA of the same kind and IAID as the client's `ia`."""
    head = struct.pack("!I", ia.iaid) if ia.kind is Option.IA_TA else struct.pack(
        "!III", ia.iaid, t1, t2)
    return ia.kind, head + encode_options(options)


def _iaaddr(address: ipaddress.IPv6Address, preferred: int, valid: int) -> tuple[int, bytes]:
    return Option.IAADDR, address.packed + struct.pack("!II", preferred, valid)


def _status(code: StatusCode) -> tuple[int, bytes]:
    return Option.STATUS_CODE, struct.pack("!H", code) + STATUS_MESSAGES[code].encode()


def _configuration(network: NetworkInfo, subnet: SubnetInfo) -> list[tuple[int, bytes]]:
    """DNS server and search list (RFC 3646): the agent serves the network's DNS on the
    subnet's server address."""
    options = [(int(Option.DNS_SERVERS), ipaddress.IPv6Address(subnet.server).packed)]
    domain = encode_domain_name(network.domain)
    if domain is not None:
        options.append((Option.DOMAIN_LIST, domain))
    return options


def _fqdn(request: ClientRequest, network: NetworkInfo, lease: Lease) -> list[tuple[int, bytes]]:
    """The client FQDN option (RFC 4704) when the client sent one: `<name>.<domain>`, the
    name the internal DNS answers for it. S is set (the DNS already has the name: the
    client must not update it), O when that overrides the client's wish."""
    if request.client_fqdn is None or not lease.name or not _LABEL.fullmatch(lease.name):
        return []
    name = encode_domain_name(f"{lease.name}.{network.domain}")
    if name is None:
        return []
    flags = FQDN_S | (0 if request.client_fqdn[0] & FQDN_S else FQDN_O)
    return [(Option.CLIENT_FQDN, bytes((flags,)) + name)]


def _holds(subnet: SubnetInfo | None, address: str) -> bool:
    """Whether `address` (any text) is in the IPv6 `subnet`."""
    if subnet is None:
        return False
    try:
        return ipaddress.IPv6Address(address.split("%")[0]) in _ipv6_network(subnet.cidr)
    except ValueError:
        return False


@lru_cache(maxsize=4096)
def _ipv6_network(cidr: str) -> ipaddress.IPv6Network:
    # Subnets never change: parse each CIDR once, not once per packet.
    return ipaddress.IPv6Network(cidr)
