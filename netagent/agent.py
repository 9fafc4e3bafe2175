"""The agent: one asyncio process serving DHCPv4, DHCPv6, Router Advertisements and DNS
for Private Networks.

Each served network is reached on one network interface (`--interface IFACE=PN_ID`).
The interface carries the server's own address in each subnet: the address Scaleway
reserves "for the provider", the subnet's second-to-last (10.0.0.254 in 10.0.0.0/24),
which DHCP hands out as the DNS server; the router option is the subnet's gateway
(its second address). The DHCP socket of an interface is bound to it
(SO_BINDTODEVICE), so a broadcast reply leaves by the interface its request came in on.
DNS listens on `dns_port` of each subnet's server address (at start, the IPv4 one
must be on the interface; an IPv6 one that is not is a warning).

The agent follows the networks while it runs (subnets added or deleted, a network
created after the agent started): on each change of the view's networks it reconciles
its listeners with them, one reconciliation at a time: a DNS listener on each server
address, DHCPv6 and RAs on each interface whose network has an IPv6 subnet; the ones
no longer wanted are closed. The agent does not configure addresses: a server address
not (yet) on the interface is a warning, and is tried again at the next change and
every `RELISTEN_FIRST` s, doubling up to `RELISTEN_MAX` s, until it can be had or is
no longer wanted. Only at start is a missing IPv4 server address fatal: there it is
a configuration error the operator should hear about at once.

Unknown MACs, per network: `ignore` (default) or `book`: the agent books a free IPv4
of the network and attaches it to a resource of type `unknown_dhcp_client` whose id
is derived from (network, MAC), in one transaction: the MAC's index in IPAM (one IP per
MAC and family in a network) is what keeps retransmits, two agents and an attach
through the API from giving a MAC two addresses. No idempotency key: its replay would
offer, for an hour, the IP of a first booking that was detached, moved to another MAC or
released since (a new-user trial saw both).

A DECLINE is recorded through the allocator, in the agent's name (`agent_id`, the host
name unless told), and withholds the address from that MAC on every agent whose view
shows it (`netagent.declines`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from allocator.contract import (
    IPAM,
    PRODUCT,
    AddressAsk,
    Caller,
    Decline,
    Lease,
    NetworkInfo,
    NetworkView,
    Resource,
    errors,
)

from .dhcp4 import Dhcp4Config, Dhcp4Responder, Reply, UnknownMac
from .dhcp6 import Dhcp6Config, Dhcp6Responder
from .dns import DnsConfig, DnsServer, InternalDns, serve_dns
from .ra import RouterAdvertiser
from .udp import Answer, DatagramServer

log = logging.getLogger("ipam.dhcp")

DHCP_SERVER_PORT = 67
DHCP6_SERVER_PORT = 547
UNKNOWN_CLIENT = "unknown_dhcp_client"
IGNORE, BOOK = UnknownMac.IGNORE.value, UnknownMac.BOOK.value
# How long, at most, the agent answers from a booking of its own that the view does not
# show yet (it normally shows it within a millisecond).
VIEW_CATCH_UP = 2.0
# Receive buffers of the DHCP sockets: a burst of clients must not overflow them.
RECEIVE_BUFFER = 4 * 1024 * 1024
# A listener the view wants that cannot be opened (its address not yet on the interface)
# is tried again after this many seconds, doubling up to the maximum, until it opens.
RELISTEN_FIRST, RELISTEN_MAX = 1.0, 30.0

T = TypeVar("T")


@dataclass(frozen=True)
class AgentConfig:
    """What one agent serves, and how."""

    interfaces: tuple[tuple[str, str], ...]  # (interface name, Private Network id)
    unknown_mac: dict[str, str] = field(default_factory=dict)  # network -> ignore|book
    unknown_mac_default: str = IGNORE
    lease_time: int = 3600
    t1: int = 30
    t2: int = 52
    dns_port: int = 53
    dns_upstream: str | None = None
    metrics_listen: tuple[str, int] | None = None
    agent_id: str = field(default_factory=socket.gethostname)  # who recorded a decline

    @property
    def networks(self) -> list[str]:
        return list(dict.fromkeys(pn for _, pn in self.interfaces))

    def policy(self, pn_id: str) -> str:
        return self.unknown_mac.get(pn_id, self.unknown_mac_default)


class Agent:
    """Serves DHCP (v4, and v6 with RAs on dual-stack networks) on each configured
    interface, and DNS on each network's server address for that network alone
    (`zones.Zones.visible`), following the networks' subnets."""

    def __init__(self, ipam: IPAM, config: AgentConfig) -> None:
        self.ipam, self.config = ipam, config
        self.view: NetworkView | None = None
        self.leases: BookedLeases | None = None
        self.dhcp: Dhcp4Responder | None = None
        self.dns: InternalDns | None = None
        self.dhcp6: Dhcp6Responder | None = None
        self._sockets: list[DatagramServer] = []  # DHCPv4, one per interface, for good
        self._dns_servers: dict[str, DnsServer] = {}  # server address -> its listener
        self._ipv6: dict[tuple[str, str], Ipv6Service] = {}  # (interface, network) -> it
        # Listeners wanted but not open: warned about once, tried again until they open
        # or are no longer wanted.
        self._dns_unavailable: set[str] = set()
        self._ipv6_unavailable: set[tuple[str, str]] = set()
        self._reconciling = asyncio.Lock()
        self._following: asyncio.Task[None] | None = None

    @property
    def advertisers(self) -> list[RouterAdvertiser]:
        return [service.advertiser for service in self._ipv6.values()]

    @property
    def dns_addresses(self) -> list[str]:
        """The addresses DNS listens on now."""
        return list(self._dns_servers)

    @property
    def ipv6_interfaces(self) -> list[str]:
        """The interfaces DHCPv6 and RAs are served on now."""
        return [interface for interface, _ in self._ipv6]

    @property
    def unavailable(self) -> list[str]:
        """The listeners the networks want that could not be opened (yet)."""
        return sorted(self._dns_unavailable) + [f"DHCPv6 on {interface}"
                                               for interface, _ in self._ipv6_unavailable]

    async def start(self) -> None:
        """Load the view, open every socket (errors name the interface or port), then
        follow the networks (see the module docstring)."""
        view = await self.ipam.network_view(self.config.networks)
        missing = [pn for pn in self.config.networks if view.network(pn) is None]
        if missing:
            log.warning("not (yet) in IPAM, answering nothing for: %s", ", ".join(missing))
        self.dhcp = self.dhcp4_responder(view)
        for interface, pn_id in self.config.interfaces:
            self._serve(dhcp_socket(interface), partial(_dhcp4_answer, self.dhcp, pn_id))
        self._build_ipv6_and_dns(view)
        seen = view.network_changes  # before reading the networks: see `_follow`
        complete = await self.reconcile(strict=True)
        self._following = asyncio.ensure_future(self._follow(view, seen, complete))
        log.info("serving DHCP on %s and DNS on port %d",
                 ", ".join(f"{i}={p}" for i, p in self.config.interfaces), self.config.dns_port)

    def _build_ipv6_and_dns(self, view: NetworkView) -> None:
        """The DHCPv6 responder and the DNS over `view`; `reconcile` opens their sockets."""
        valid = self.config.lease_time
        self.dhcp6 = Dhcp6Responder(view, Dhcp6Config(
            preferred_lifetime=valid, valid_lifetime=valid, renewal_time=self.config.t1,
            rebinding_time=self.config.t2), record_decline=self.record_decline)
        self.dns = InternalDns(view, DnsConfig(upstream=self.config.dns_upstream,
                                               networks=tuple(self.config.networks)))

    async def reconcile(self, *, strict: bool = False) -> bool:
        """Open the listeners the view's networks now want and close the others; whether
        every wanted one is open. One reconciliation at a time.

        DNS answers on each subnet's server address (the one DHCP hands out): a reply
        from a wildcard socket could leave from another address, which resolvers reject.
        `strict` (at start): an IPv4 server address that cannot be had raises OSError;
        otherwise it is a warning, and the caller tries again later.
        """
        async with self._reconciling:
            dns_open = await self._reconcile_dns(strict)
            ipv6_open = await self._reconcile_ipv6()
            return dns_open and ipv6_open

    async def _reconcile_dns(self, strict: bool) -> bool:
        assert self.dns is not None
        port = self.config.dns_port
        wanted = self._server_addresses()
        for address in [a for a in self._dns_servers if a not in wanted]:
            await self._dns_servers.pop(address).close()
            log.info("dns: stopped serving on %s port %d (no served subnet has it)",
                     address, port)
        self._dns_unavailable &= set(wanted)
        complete = True
        for address in wanted:
            if address in self._dns_servers:
                continue
            try:
                self._dns_servers[address] = await serve_dns(self.dns, address, port)
            except OSError as err:
                if strict and ":" not in address:
                    raise OSError(err.errno, f"cannot serve DNS on {address} port {port} (is "
                                             f"the address on the network's interface?): "
                                             f"{err.strerror}") from None
                complete = False
                _warn_once(self._dns_unavailable, address,
                           "dns: cannot serve on %s port %d yet: %s (put the address on the "
                           "interface)", address, port, err.strerror)
                continue
            self._dns_unavailable.discard(address)
            log.info("dns: serving on %s port %d", address, port)
        return complete

    async def _reconcile_ipv6(self) -> bool:
        """DHCPv6 and Router Advertisements on the interfaces of dual-stack networks.

        IPv4 is the service a network cannot do without: an interface where IPv6 cannot
        be served (disabled, no link-local address yet) is logged, not fatal.
        """
        assert self.view is not None and self.dhcp6 is not None
        wanted = [(interface, pn_id) for interface, pn_id in self.config.interfaces
                  if _has_ipv6(self.view.network(pn_id))]
        for key in [k for k in self._ipv6 if k not in wanted]:
            await self._ipv6.pop(key).close()
            log.info("dhcp6: stopped DHCPv6 and RAs on %s (%s has no IPv6 subnet)", *key)
        self._ipv6_unavailable &= set(wanted)
        complete = True
        for interface, pn_id in wanted:
            if (interface, pn_id) in self._ipv6:
                continue
            try:
                self._ipv6[interface, pn_id] = await Ipv6Service.start(
                    interface, partial(_dhcp6_answer, self.dhcp6, pn_id),
                    partial(self.view.network, pn_id))
            except OSError as err:
                complete = False
                _warn_once(self._ipv6_unavailable, (interface, pn_id),
                           "dhcp6: no DHCPv6/RA on %s yet: %s", interface, err.strerror or err)
                continue
            self._ipv6_unavailable.discard((interface, pn_id))
            log.info("dhcp6: serving DHCPv6 and RAs on %s for %s", interface, pn_id)
        return complete

    async def _follow(self, view: NetworkView, seen: int, complete: bool) -> None:
        """Reconcile at each change of the networks after `seen` (`network_changes` when
        the last reconciliation began) and, while a wanted listener is not open (not
        `complete`), every RELISTEN_FIRST..RELISTEN_MAX s (doubling)."""
        delay = RELISTEN_FIRST
        while True:
            if await view.networks_changed(seen, None if complete else delay):
                delay = RELISTEN_FIRST
            else:
                delay = min(delay * 2, RELISTEN_MAX)
            seen = view.network_changes  # before reading them: nothing made meanwhile is missed
            try:
                complete = await self.reconcile()
            except Exception:  # a bug: logged, and tried again rather than never again
                log.exception("reconciling the listeners with the networks failed")
                complete = False

    def dhcp4_responder(self, view: NetworkView) -> Dhcp4Responder:
        """The DHCPv4 responder over `view` (which the agent then owns and closes), with
        this agent's booking path for unknown MACs. `start` uses it; so can a caller that
        opens its own sockets (the bench)."""
        self.view = view
        self.leases = BookedLeases(view)
        return Dhcp4Responder(
            self.leases, Dhcp4Config(lease_time=self.config.lease_time,
                                     renewal_time=self.config.t1,
                                     rebinding_time=self.config.t2,
                                     unknown_mac={pn: UnknownMac(self.config.policy(pn))
                                                  for pn in self.config.networks}),
            book_unknown=self._book_unknown, record_decline=self.record_decline)

    async def close(self) -> None:
        """Stop following the networks, then close every socket and the view."""
        if self._following is not None:
            async with self._reconciling:  # not in the middle of opening a socket
                self._following.cancel()
            await asyncio.gather(self._following, return_exceptions=True)
        if self.leases is not None:
            await self.leases.close()
        for service in self._ipv6.values():
            await service.close()
        self._ipv6.clear()
        for socket_server in self._sockets:
            await socket_server.close()
        for dns_server in self._dns_servers.values():
            await dns_server.close()
        self._dns_servers.clear()
        if self.view is not None:
            await self.view.close()

    def _serve(self, sock: socket.socket, answer: Answer) -> None:
        server = DatagramServer(sock, answer)
        server.start()
        self._sockets.append(server)

    def _server_addresses(self) -> list[str]:
        assert self.view is not None
        infos = [self.view.network(pn) for pn in self.config.networks]
        return list(dict.fromkeys(subnet.server for info in infos if info is not None
                                  for subnet in info.subnets))

    async def record_decline(self, pn_id: str, mac: str, address: str) -> Decline:
        """Keep, in IPAM, that `mac` declined `address` in `pn_id`, in this agent's name."""
        return await self.ipam.record_decline(pn_id, mac, address, agent=self.config.agent_id)

    async def _book_unknown(self, pn_id: str, mac: str) -> Lease | None:
        """Book and attach a free IPv4 of `pn_id` to `mac`, through the allocator."""
        if self.config.policy(pn_id) != BOOK or self.view is None or self.leases is None:
            return None
        info = self.view.network(pn_id)
        if info is None:
            return None
        resource = Resource.product(UNKNOWN_CLIENT, str(uuid.uuid5(uuid.NAMESPACE_URL,
                                                                   f"{pn_id}/{mac}")), mac)
        ask = AddressAsk(region=info.region, project_id=info.project_id,
                         private_network_id=pn_id, resource=resource)
        try:
            record = await self.ipam.book(ask, Caller(role=PRODUCT,
                                                      product_types=frozenset({UNKNOWN_CLIENT})))
        except errors.AlreadyExists:
            # The MAC got an IP meanwhile (this agent's booking of a retransmit, another
            # agent's, or an attach through the API): the client's next retransmit finds
            # it, held or in the view.
            return None
        except errors.IPAMError as err:
            log.warning("booking for unknown MAC %s in %s failed: %s", mac, pn_id, err)
            return None
        lease = Lease.of(record)
        # The REQUEST that answers our OFFER is judged against the view, a moment behind
        # the commit: the acknowledged booking stands in for it until the view shows it.
        self.leases.hold(lease)
        return lease


class BookedLeases:
    """The view, and the leases this agent booked that the view does not show yet.

    A booking the allocator acknowledged is in etcd; the view shows it a moment later
    (its watch). Offering only once the view shows it cost a view round trip per new
    client; answering from the acknowledged booking meanwhile costs nothing and changes
    nothing: each held lease is dropped as soon as the view shows it (the view is the
    authority again from then on, a detach right after included) or after
    `VIEW_CATCH_UP` seconds.
    """

    def __init__(self, view: NetworkView) -> None:
        self.view = view
        self._held: dict[tuple[str, str, bool], Lease] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Declines are the view's alone (an offer asks for each: no frame of ours).
        self.declined = view.declined
        self.decline_count = view.decline_count

    def networks(self) -> list[NetworkInfo]:
        return self.view.networks()

    def network(self, pn_id: str) -> NetworkInfo | None:
        return self.view.network(pn_id)

    def lease(self, pn_id: str, mac: str, is_ipv6: bool) -> Lease | None:
        """The held booking of `mac`, else what the view holds for it."""
        if self._held:
            held = self._held.get((pn_id, mac.lower(), is_ipv6))
            if held is not None:
                return held
        return self.view.lease(pn_id, mac, is_ipv6)

    @property
    def held(self) -> int:
        """How many bookings are answered for while the view does not show them yet."""
        return len(self._held)

    def hold(self, lease: Lease) -> None:
        """Answer for `lease` until the view shows it (at most `VIEW_CATCH_UP` s)."""
        if lease.mac is None:
            return
        key = (lease.private_network_id, lease.mac, lease.is_ipv6)
        if self.view.lease(*key) == lease:
            return
        self._held[key] = lease
        task = asyncio.ensure_future(self._release_when_shown(key, lease))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _release_when_shown(self, key: tuple[str, str, bool], lease: Lease) -> None:
        try:
            await self.view.leased(*key, lease.address, VIEW_CATCH_UP)
        finally:
            if self._held.get(key) is lease:
                del self._held[key]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass
class Ipv6Service:
    """DHCPv6 and Router Advertisements on one interface, for one network: started and
    stopped together (an RA sends hosts to a DHCPv6 server that must be there)."""

    interface: str
    server: DatagramServer
    advertiser: RouterAdvertiser

    @classmethod
    async def start(cls, interface: str, answer: Answer,
                    network: Callable[[], NetworkInfo | None]) -> Ipv6Service:
        """Both started; OSError naming the interface (and nothing left open) if not."""
        server = DatagramServer(dhcp6_socket(interface), answer)
        server.start()
        advertiser = RouterAdvertiser(interface, network)
        try:
            await advertiser.start()
        except OSError:
            await server.close()
            raise
        return cls(interface, server, advertiser)

    async def close(self) -> None:
        await self.advertiser.close()
        await self.server.close()


def _has_ipv6(info: NetworkInfo | None) -> bool:
    return info is not None and info.subnet(is_ipv6=True) is not None


def _warn_once(unavailable: set[T], what: T, message: str, *args: Any) -> None:
    """A wanted listener did not open: a warning the first time, debug after (it is tried
    again every few seconds until it opens or is no longer wanted)."""
    log.log(logging.DEBUG if what in unavailable else logging.WARNING, message, *args)
    unavailable.add(what)


def _dhcp4_answer(dhcp: Dhcp4Responder, pn_id: str, data: bytes, _sender: Any
                  ) -> Reply | None | Coroutine[Any, Any, Reply | None]:
    return dhcp.respond(data, pn_id)


def _dhcp6_answer(dhcp6: Dhcp6Responder, pn_id: str, data: bytes, sender: Any
                  ) -> Coroutine[Any, Any, Any]:
    return dhcp6.handle(data, pn_id, sender[0])


def dhcp6_socket(interface: str) -> socket.socket:
    """A UDP socket on [::]:547 of `interface` only, in the All_DHCP_Relay_Agents_and_Servers
    group (ff02::1:2) there."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        index = socket.if_nametoindex(interface)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                        socket.inet_pton(socket.AF_INET6, "ff02::1:2") + struct.pack("@I", index))
        sock.bind(("::", DHCP6_SERVER_PORT))
        sock.setblocking(False)
    except OSError as err:
        sock.close()
        raise OSError(err.errno, f"cannot serve DHCPv6 on interface {interface}: "
                                 f"{err.strerror}") from None
    return sock


def dhcp_socket(interface: str) -> socket.socket:
    """A UDP socket on port 67 of `interface` only, able to broadcast."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        sock.bind(("0.0.0.0", DHCP_SERVER_PORT))
        sock.setblocking(False)
    except OSError as err:
        sock.close()
        raise OSError(err.errno, f"cannot serve DHCP on interface {interface}: "
                                 f"{err.strerror}") from None
    return sock
