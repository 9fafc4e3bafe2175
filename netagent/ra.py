"""Router Advertisements (RFC 4861) that send the hosts of a Private Network to DHCPv6.

Hosts take an IPv6 address from DHCPv6 only when a Router Advertisement says so. The
agent is not the network's router, so its RAs carry configuration and nothing else:

    M=1, O=1        managed: addresses and other configuration come from DHCPv6
    router lifetime 0 unless configured: hosts do not make the agent a default router
    prefix (PIO)    the subnet's prefix with L=1 (on-link) and A=0 (no SLAAC: the only
                    address a host may use is the one IPAM attached to its MAC)
    source link-layer address, RDNSS (RFC 8106) = the subnet's server address, where the
    agent serves the network's DNS, and DNSSL = the network's domain

`router_advertisement` builds the message (pure); `RouterAdvertiser` sends it on one
interface from a raw ICMPv6 socket: on start, then every `interval` seconds with the
jitter of RFC 4861 6.2.4, and in answer to each Router Solicitation (6.2.6).

    advertiser = RouterAdvertiser("eth1", lambda: view.network(pn_id), RaConfig())
    await advertiser.start()     # OSError naming the interface if it cannot
    ...
    await advertiser.close()

The socket needs CAP_NET_RAW. The kernel fills the ICMPv6 checksum (RFC 3542 3.1) and
picks the interface's link-local address as source, which hosts require (RFC 4861 6.1.2):
an interface whose link-local address is still tentative sends nothing until it is not
(counted in `send_errors`, retried at the next advertisement).
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import logging
import random
import socket
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass

from allocator.contract import NetworkInfo

from .dhcp6 import encode_domain_name

log = logging.getLogger(__name__)

ROUTER_SOLICITATION, ROUTER_ADVERTISEMENT = 133, 134
ALL_NODES, ALL_ROUTERS = "ff02::1", "ff02::2"
# RFC 4861 6.1: neighbour discovery is link-local; 255 proves nobody forwarded it.
LINK_HOP_LIMIT = 255
# RFC 4861 section 10, router constants.
MAX_INITIAL_RTR_ADVERT_INTERVAL = 16.0
MAX_INITIAL_RTR_ADVERTISEMENTS = 3
MIN_DELAY_BETWEEN_RAS = 3.0
MAX_RA_DELAY_TIME = 0.5
# RFC 4861 6.2.1: the bounds of MaxRtrAdvInterval and MinRtrAdvInterval, and AdvDefaultLifetime.
MAX_INTERVAL_FLOOR, MAX_INTERVAL_CEILING = 4.0, 1800.0
MIN_INTERVAL_FLOOR = 3.0
MAX_ROUTER_LIFETIME = 9000
INFINITY = 0xFFFFFFFF
# Solicited answers waiting for their random delay, at most: a flood of solicitations
# from made-up addresses cannot grow the timers without bound.
MAX_PENDING_ANSWERS = 64
# Datagrams read per wakeup of the socket, at most: the loop gets its turn back.
MAX_READS_PER_WAKEUP = 64

# Option types (RFC 4861 4.6, RFC 8106 5).
OPTION_SOURCE_LINK_LAYER = 1
OPTION_PREFIX_INFORMATION = 3
OPTION_RDNSS = 25
OPTION_DNSSL = 31
FLAG_MANAGED, FLAG_OTHER = 0x80, 0x40
PREFIX_ON_LINK, PREFIX_AUTONOMOUS = 0x80, 0x40  # A is never set: no SLAAC

# Linux socket constants Python does not name.
ICMP6_FILTER = 1  # <netinet/icmp6.h>, level IPPROTO_ICMPV6
SIOCGIFHWADDR = 0x8927
ARPHRD_ETHER = 1


class InvalidSolicitation(ValueError):
    """An ICMPv6 message that is not a valid Router Solicitation (RFC 4861 6.1.1)."""


@dataclass(frozen=True)
class RaConfig:
    """What the advertisements say, and how often they are sent.

    `interval` is MaxRtrAdvInterval: unsolicited RAs go out after a random delay between
    `min_interval` (MinRtrAdvInterval, by default three quarters of `interval`, the most
    RFC 4861 allows, so that they come about every `interval`) and `interval`.

    The prefix lifetimes say how long hosts keep the subnet on-link without hearing an RA
    (A=0: no address is formed from it); they are long so that an agent restart does not
    cut neighbours off. The DNS lifetime defaults to 3 x `interval` (RFC 8106 5.1).
    """

    interval: float = 200.0
    min_interval: float | None = None
    router_lifetime: int = 0
    managed: bool = True
    other: bool = True
    prefix_valid_lifetime: int = 86400
    prefix_preferred_lifetime: int = 14400
    dns_lifetime: int | None = None

    def __post_init__(self) -> None:
        if not MAX_INTERVAL_FLOOR <= self.interval <= MAX_INTERVAL_CEILING:
            raise ValueError(f"RA interval {self.interval} s is not within 4-1800 s "
                             "(RFC 4861 6.2.1)")
        if self.min_interval is None:
            object.__setattr__(self, "min_interval",
                               max(MIN_INTERVAL_FLOOR, 0.75 * self.interval))
        assert self.min_interval is not None
        if not MIN_INTERVAL_FLOOR <= self.min_interval <= 0.75 * self.interval:
            raise ValueError(f"RA min_interval {self.min_interval} s is not within 3 s and "
                             f"0.75 x interval (RFC 4861 6.2.1)")
        if self.router_lifetime and not (self.interval <= self.router_lifetime
                                         <= MAX_ROUTER_LIFETIME):
            raise ValueError(f"router lifetime {self.router_lifetime} s is neither 0 nor "
                             f"within interval and {MAX_ROUTER_LIFETIME} s (RFC 4861 6.2.1)")
        if not 0 <= self.prefix_preferred_lifetime <= self.prefix_valid_lifetime <= INFINITY:
            raise ValueError("prefix lifetimes need 0 <= preferred <= valid <= 2**32 - 1, got "
                             f"{self.prefix_preferred_lifetime}/{self.prefix_valid_lifetime}")
        if self.dns_lifetime is None:
            object.__setattr__(self, "dns_lifetime", int(3 * self.interval))
        assert self.dns_lifetime is not None
        if not self.interval <= self.dns_lifetime <= INFINITY:
            # RFC 8106 5.1: shorter than the interval, the servers expire between RAs.
            raise ValueError(f"DNS lifetime {self.dns_lifetime} s is shorter than the "
                             f"interval or longer than 2**32 - 1")


# -- the messages (pure) ------------------------------------------------------------------


def router_advertisement(network: NetworkInfo | None, mac: str | None, config: RaConfig,
                         *, final: bool = False) -> bytes | None:
    """The RA for `network`'s IPv6 subnet, sent from an interface whose MAC is `mac` (None:
    no source link-layer address option); None when the network is not served (missing,
    DHCP off, no IPv6 subnet). `final`: the last RA before stopping, router lifetime 0
    (RFC 4861 6.2.5). The checksum is left 0: the kernel computes it."""
    subnet = None if network is None or not network.dhcp_enabled else network.subnet(True)
    if network is None or subnet is None:
        return None
    flags = (FLAG_MANAGED if config.managed else 0) | (FLAG_OTHER if config.other else 0)
    lifetime = 0 if final else config.router_lifetime
    # Cur hop limit, reachable time and retrans timer 0: unspecified, the hosts keep theirs.
    header = struct.pack("!BBHBBHII", ROUTER_ADVERTISEMENT, 0, 0, 0, flags, lifetime, 0, 0)
    options = []
    if mac is not None:
        options.append(_option(OPTION_SOURCE_LINK_LAYER, bytes.fromhex(mac.replace(":", ""))))
    prefix = ipaddress.IPv6Network(subnet.cidr)
    options.append(_option(OPTION_PREFIX_INFORMATION, struct.pack(
        "!BBIII16s", prefix.prefixlen, PREFIX_ON_LINK, config.prefix_valid_lifetime,
        config.prefix_preferred_lifetime, 0, prefix.network_address.packed)))
    assert config.dns_lifetime is not None
    options.append(_option(OPTION_RDNSS, struct.pack("!HI", 0, config.dns_lifetime)
                           + ipaddress.IPv6Address(subnet.server).packed))
    domain = encode_domain_name(network.domain)
    if domain is not None:
        options.append(_option(OPTION_DNSSL, struct.pack("!HI", 0, config.dns_lifetime)
                               + domain))
    return header + b"".join(options)


@dataclass(frozen=True)
class RouterSolicitation:
    """A valid Router Solicitation: who sent it, and its MAC when it said."""

    source: str
    source_mac: str | None


def router_solicitation(data: bytes, source: str, hop_limit: int | None) -> RouterSolicitation:
    """`data` (an ICMPv6 message, without the IPv6 header) from `source`, received with
    `hop_limit`, checked as RFC 4861 6.1.1 asks; InvalidSolicitation if it is not a valid
    Router Solicitation (the kernel has checked its checksum)."""
    if hop_limit != LINK_HOP_LIMIT:
        raise InvalidSolicitation(f"hop limit {hop_limit}: it was forwarded")
    if len(data) < 8:
        raise InvalidSolicitation(f"{len(data)} bytes, a Router Solicitation takes 8")
    if data[0] != ROUTER_SOLICITATION or data[1] != 0:
        raise InvalidSolicitation(f"ICMPv6 type {data[0]} code {data[1]}")
    try:
        address = ipaddress.IPv6Address(source)
    except ValueError:
        raise InvalidSolicitation(f"source {source!r} is not an IPv6 address") from None
    options = _options(data, 8)
    link_layer = [value for kind, value in options if kind == OPTION_SOURCE_LINK_LAYER]
    if link_layer and address == ipaddress.IPv6Address("::"):
        raise InvalidSolicitation("a source link-layer address from the unspecified address")
    mac = link_layer[0] if link_layer and len(link_layer[0]) == 6 else None
    return RouterSolicitation(source, None if mac is None else
                              ":".join(f"{b:02x}" for b in mac))


def next_advertisement_delay(config: RaConfig, sent: int, rng: random.Random) -> float:
    """Seconds until the next unsolicited RA, `sent` of them sent so far (RFC 4861 6.2.4):
    uniform in [min_interval, interval], at most 16 s for the first three."""
    assert config.min_interval is not None
    delay = rng.uniform(config.min_interval, config.interval)
    if sent < MAX_INITIAL_RTR_ADVERTISEMENTS:
        delay = min(delay, MAX_INITIAL_RTR_ADVERT_INTERVAL)
    return delay


def solicited_answer_delay(now: float, last_multicast: float | None, multicast: bool,
                           rng: random.Random) -> float:
    """Seconds until the answer to a solicitation received at `now` (RFC 4861 6.2.6): a
    random delay up to 0.5 s and, for a multicast answer, no sooner than 3 s after the
    last multicast RA."""
    delay = rng.uniform(0, MAX_RA_DELAY_TIME)
    if multicast and last_multicast is not None:
        delay = max(delay, last_multicast + MIN_DELAY_BETWEEN_RAS - now)
    return delay


def _option(kind: int, body: bytes) -> bytes:
    """One ND option: type, length in units of 8 bytes, body padded with zeros."""
    size = -(-(2 + len(body)) // 8) * 8
    return bytes((kind, size // 8)) + body.ljust(size - 2, b"\x00")


def _options(data: bytes, start: int) -> list[tuple[int, bytes]]:
    options = []
    cursor = start
    while cursor < len(data):  # each turn moves the cursor by 8 bytes at least
        if cursor + 2 > len(data) or data[cursor + 1] == 0:
            raise InvalidSolicitation("an option of length 0 or cut short")
        end = cursor + 8 * data[cursor + 1]
        if end > len(data):
            raise InvalidSolicitation(f"option {data[cursor]} runs past the end")
        options.append((data[cursor], bytes(data[cursor + 2:end])))
        cursor = end
    return options


# -- the sender -------------------------------------------------------------------------------


@dataclass
class RaCounters:
    """What the advertiser did, for a metrics endpoint to read (`as_dict`)."""

    advertisements: int = 0  # RAs sent
    solicitations: int = 0  # valid RSs, answered (several from one host may share an answer)
    shed: int = 0  # valid RSs not answered: MAX_PENDING_ANSWERS were waiting already
    dropped: int = 0  # ICMPv6 messages that were not a valid RS
    unserved: int = 0  # RAs not sent: the network is not served (see router_advertisement)
    send_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class RouterAdvertiser:
    """Sends the RAs of one network on one interface (see the module docstring).

    `network` is called before each RA, so the RA follows the view: a network that stops
    being served (DHCP off, IPv6 subnet removed) gets no more RAs.
    """

    def __init__(self, interface: str, network: Callable[[], NetworkInfo | None],
                 config: RaConfig | None = None, rng: random.Random | None = None) -> None:
        self.interface = interface
        self.network = network
        self.config = config or RaConfig()
        self.counters = RaCounters()
        self.mac: str | None = None
        self._rng = rng or random.Random()
        self._sock: socket.socket | None = None
        self._index = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._periodic: asyncio.TimerHandle | None = None
        self._multicast_answer: asyncio.TimerHandle | None = None
        self._unicast_answers: dict[str, asyncio.TimerHandle] = {}
        self._last_multicast: float | None = None
        self._unsolicited = 0

    async def start(self) -> None:
        """Open the socket on the interface, send the first RA, schedule the next ones.
        OSError naming the interface if the socket cannot be made."""
        self._loop = asyncio.get_running_loop()
        sock, self._index = router_socket(self.interface)
        try:
            self.mac = interface_mac(sock, self.interface)
        except OSError as err:  # the interface went away since the socket was bound
            sock.close()
            raise OSError(err.errno, f"cannot read the MAC of interface {self.interface}: "
                                     f"{err.strerror}") from None
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._readable)
        self._advertise_unsolicited()
        log.info("ra: advertising on %s (every %.0f s at most)", self.interface,
                 self.config.interval)

    async def close(self) -> None:
        """Stop advertising: a last RA with router lifetime 0 if hosts may hold the agent
        as a router (RFC 4861 6.2.5), then the socket is closed. Idempotent."""
        for handle in (self._periodic, self._multicast_answer, *self._unicast_answers.values()):
            if handle is not None:
                handle.cancel()
        self._periodic = self._multicast_answer = None
        self._unicast_answers.clear()
        if self._sock is None:
            return
        if self.config.router_lifetime:
            self._send(ALL_NODES, final=True)
        assert self._loop is not None
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None

    # -- sending ---------------------------------------------------------------------------

    def _advertise_unsolicited(self) -> None:
        self._periodic = None
        if self._multicast_answer is not None:  # this RA answers it
            self._multicast_answer.cancel()
            self._multicast_answer = None
        self._send(ALL_NODES)
        delay = next_advertisement_delay(self.config, self._unsolicited, self._rng)
        self._unsolicited += 1
        assert self._loop is not None
        self._periodic = self._loop.call_later(delay, self._advertise_unsolicited)

    def _answer_multicast(self) -> None:
        self._multicast_answer = None
        self._send(ALL_NODES)

    def _answer_unicast(self, destination: str) -> None:
        self._unicast_answers.pop(destination, None)
        self._send(destination)

    def _send(self, destination: str, final: bool = False) -> None:
        advertisement = router_advertisement(self.network(), self.mac, self.config, final=final)
        if advertisement is None:
            self.counters.unserved += 1
            return
        assert self._sock is not None and self._loop is not None
        try:
            self._sock.sendto(advertisement, (destination, 0, 0, self._index))
        except OSError as err:
            self.counters.send_errors += 1
            log.warning("ra: cannot send on %s to %s: %s", self.interface, destination, err)
            return
        self.counters.advertisements += 1
        if destination == ALL_NODES:
            self._last_multicast = self._loop.time()

    # -- solicitations -------------------------------------------------------------------------

    def _readable(self) -> None:
        assert self._sock is not None
        for _ in range(MAX_READS_PER_WAKEUP):
            try:
                data, ancillary, _flags, address = self._sock.recvmsg(1500, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                log.warning("ra: receiving on %s: %s", self.interface, err)
                return
            try:
                solicitation = router_solicitation(data, address[0], _hop_limit(ancillary))
            except InvalidSolicitation as problem:
                self.counters.dropped += 1
                log.debug("ra: dropped an ICMPv6 message from %s: %s", address[0], problem)
                continue
            self._solicited(solicitation)

    def _solicited(self, solicitation: RouterSolicitation) -> None:
        """Schedule the answer: by unicast to a host that has an address (RFC 7772 says
        why: multicast wakes every host), else by multicast, rate limited."""
        assert self._loop is not None
        source = solicitation.source.split("%")[0]
        multicast = ipaddress.IPv6Address(source) == ipaddress.IPv6Address("::")
        if (multicast and self._multicast_answer is not None) or (
                source in self._unicast_answers):
            self.counters.solicitations += 1  # an answer is on its way already
            return
        if len(self._unicast_answers) >= MAX_PENDING_ANSWERS and not multicast:
            self.counters.shed += 1
            return
        self.counters.solicitations += 1
        delay = solicited_answer_delay(self._loop.time(), self._last_multicast, multicast,
                                       self._rng)
        if multicast:
            self._multicast_answer = self._loop.call_later(delay, self._answer_multicast)
        else:
            self._unicast_answers[source] = self._loop.call_later(
                delay, self._answer_unicast, source)


def router_socket(interface: str) -> tuple[socket.socket, int]:
    """A raw ICMPv6 socket on `interface` only, sending with hop limit 255, hearing only
    Router Solicitations (ff02::2 joined) with their hop limit; and the interface's index.
    OSError naming the interface if it cannot be made."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        index = socket.if_nametoindex(interface)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, LINK_HOP_LIMIT)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, LINK_HOP_LIMIT)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                        ipaddress.IPv6Address(ALL_ROUTERS).packed + struct.pack("@I", index))
        # The kernel passes only RSs up: each bit set blocks that ICMPv6 type.
        blocked = [0xFFFFFFFF] * 8
        blocked[ROUTER_SOLICITATION >> 5] &= ~(1 << (ROUTER_SOLICITATION & 31))
        sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("@8I", *blocked))
        sock.setblocking(False)
    except OSError as err:
        sock.close()
        raise OSError(err.errno, f"cannot send Router Advertisements on interface "
                                 f"{interface}: {err.strerror}") from None
    return sock, index


def interface_mac(sock: socket.socket, interface: str) -> str | None:
    """The MAC of `interface`, in the network namespace of `sock` (SIOCGIFHWADDR; not
    /sys, which shows the namespace it was mounted in); None if it is not Ethernet."""
    request = struct.pack("16s16x", interface.encode()[:15])
    answer = fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, request)
    family = struct.unpack_from("@H", answer, 16)[0]
    if family != ARPHRD_ETHER:
        return None
    return ":".join(f"{b:02x}" for b in answer[18:24])


def _hop_limit(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT and len(data) >= 4:
            return int(struct.unpack("@i", data[:4])[0])
    return None
