"""The agent: one asyncio process serving DHCPv4, DHCPv6, Router Advertisements and DNS
for Private Networks.

Each served network is reached on one network interface (`--interface IFACE=PN_ID`).
The interface carries the server's own address in each subnet: the address Scaleway
reserves "for the provider", the subnet's second-to-last (10.0.0.254 in 10.0.0.0/24),
which DHCP hands out as the DNS server; the router option is the subnet's gateway
(its second address). The DHCP socket of an interface is bound to it
(SO_BINDTODEVICE), so a broadcast reply leaves by the interface its request came in on.
DNS listens on `dns_port` of each subnet's server address (the IPv4 one must be on
the interface; an IPv6 one that is not is skipped with a warning).

Unknown MACs, per network: `ignore` (default) or `book`: the agent books a free IPv4
of the network and attaches it to a resource of type `unknown_dhcp_client` whose id
is derived from (network, MAC), with an idempotency key derived from the same, so
retransmits, two agents and an attach through the API never give a MAC two addresses.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from allocator.contract import (
    IPAM,
    PRODUCT,
    AddressAsk,
    Caller,
    Lease,
    NetworkView,
    Resource,
    errors,
)

from .dhcp4 import Dhcp4Config, Dhcp4Responder, UnknownMac
from .dhcp6 import Dhcp6Config, Dhcp6Responder
from .dns import DnsConfig, DnsServer, InternalDns, serve_dns
from .ra import RouterAdvertiser

log = logging.getLogger("ipam.dhcp")

DHCP_SERVER_PORT = 67
DHCP6_SERVER_PORT = 547
UNKNOWN_CLIENT = "unknown_dhcp_client"
IGNORE, BOOK = UnknownMac.IGNORE.value, UnknownMac.BOOK.value
# The idempotency scope of the agent's own bookings: shared by every agent, so two
# agents booking for one unknown MAC get one IP.
IDEMPOTENCY_SCOPE = "netagent-dhcp"
# How long a booking for an unknown MAC waits, at most, for the view to show it.
VIEW_CATCH_UP = 2.0
# Receive buffers of the DHCP sockets: a burst of clients must not overflow them.
RECEIVE_BUFFER = 4 * 1024 * 1024


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

    @property
    def networks(self) -> list[str]:
        return list(dict.fromkeys(pn for _, pn in self.interfaces))

    def policy(self, pn_id: str) -> str:
        return self.unknown_mac.get(pn_id, self.unknown_mac_default)


class Agent:
    """Serves DHCP (v4, and v6 with RAs on dual-stack networks) on each configured
    interface and DNS for every served network."""

    def __init__(self, ipam: IPAM, config: AgentConfig) -> None:
        self.ipam, self.config = ipam, config
        self.view: NetworkView | None = None
        self.dhcp: Dhcp4Responder | None = None
        self.dns: InternalDns | None = None
        self.dhcp6: Dhcp6Responder | None = None
        self.advertisers: list[RouterAdvertiser] = []
        self._transports: list[asyncio.BaseTransport] = []
        self._dns_servers: list[DnsServer] = []

    async def start(self) -> None:
        """Load the view, then open every socket (errors name the interface or port)."""
        self.view = view = await self.ipam.network_view(self.config.networks)
        missing = [pn for pn in self.config.networks if view.network(pn) is None]
        if missing:
            log.warning("not (yet) in IPAM, answering nothing for: %s", ", ".join(missing))
        self.dhcp = Dhcp4Responder(
            view, Dhcp4Config(lease_time=self.config.lease_time,
                              renewal_time=self.config.t1, rebinding_time=self.config.t2,
                              unknown_mac={pn: UnknownMac(self.config.policy(pn))
                                           for pn in self.config.networks}),
            book_unknown=self._book_unknown)
        loop = asyncio.get_running_loop()
        for interface, pn_id in self.config.interfaces:
            sock = dhcp_socket(interface)
            dhcp = self.dhcp
            transport, _ = await loop.create_datagram_endpoint(
                lambda pn=pn_id: _DhcpProtocol(  # type: ignore[misc]
                    lambda data, _source: dhcp.handle(data, pn)), sock=sock)
            self._transports.append(transport)
        await self._start_ipv6()
        self.dns = InternalDns(view, DnsConfig(upstream=self.config.dns_upstream,
                                               networks=tuple(self.config.networks)))
        # DNS answers on each subnet's server address (the one DHCP hands out): a reply
        # from a wildcard socket could leave from another address, which resolvers reject.
        for address in self._server_addresses():
            try:
                self._dns_servers.append(await serve_dns(self.dns, address,
                                                         self.config.dns_port))
            except OSError as err:
                if ":" not in address:
                    raise OSError(err.errno, f"cannot serve DNS on {address} port "
                                             f"{self.config.dns_port} (is the address on the "
                                             f"network's interface?): {err.strerror}") from None
                log.warning("no DNS on %s: %s (put the address on the interface)", address,
                            err.strerror)
        log.info("serving DHCP on %s and DNS on port %d",
                 ", ".join(f"{i}={p}" for i, p in self.config.interfaces), self.config.dns_port)

    async def _start_ipv6(self) -> None:
        """DHCPv6 and Router Advertisements on the interfaces of dual-stack networks.

        IPv4 is the service a network cannot do without: an interface where IPv6 cannot
        be served (disabled, no link-local address yet) is logged, not fatal.
        """
        assert self.view is not None
        view = self.view
        valid = self.config.lease_time
        self.dhcp6 = Dhcp6Responder(view, Dhcp6Config(
            preferred_lifetime=valid, valid_lifetime=valid, renewal_time=self.config.t1,
            rebinding_time=self.config.t2))
        loop = asyncio.get_running_loop()
        for interface, pn_id in self.config.interfaces:
            info = view.network(pn_id)
            if info is None or info.subnet(is_ipv6=True) is None:
                continue
            try:
                dhcp6 = self.dhcp6
                transport, _ = await loop.create_datagram_endpoint(
                    lambda pn=pn_id: _DhcpProtocol(  # type: ignore[misc]
                        lambda data, source: dhcp6.handle(data, pn, source)),
                    sock=dhcp6_socket(interface))
                self._transports.append(transport)
                advertiser = RouterAdvertiser(interface, lambda pn=pn_id: view.network(pn))
                await advertiser.start()
                self.advertisers.append(advertiser)
            except OSError as err:
                log.warning("no DHCPv6/RA on %s: %s", interface, err.strerror or err)

    async def close(self) -> None:
        for advertiser in self.advertisers:
            await advertiser.close()
        for transport in self._transports:
            transport.close()
        for server in self._dns_servers:
            await server.close()
        if self.view is not None:
            await self.view.close()

    def _server_addresses(self) -> list[str]:
        assert self.view is not None
        infos = [self.view.network(pn) for pn in self.config.networks]
        return list(dict.fromkeys(subnet.server for info in infos if info is not None
                                  for subnet in info.subnets))

    async def _book_unknown(self, pn_id: str, mac: str) -> Lease | None:
        """Book and attach a free IPv4 of `pn_id` to `mac`, through the allocator."""
        if self.config.policy(pn_id) != BOOK or self.view is None:
            return None
        info = self.view.network(pn_id)
        if info is None:
            return None
        resource = Resource.product(UNKNOWN_CLIENT, str(uuid.uuid5(uuid.NAMESPACE_URL,
                                                                   f"{pn_id}/{mac}")), mac)
        ask = AddressAsk(region=info.region, project_id=info.project_id,
                         private_network_id=pn_id, resource=resource,
                         idempotency_key=f"{pn_id}/{mac}",
                         idempotency_scope=IDEMPOTENCY_SCOPE)
        try:
            record = await self.ipam.book(ask, Caller(role=PRODUCT,
                                                      product_types=frozenset({UNKNOWN_CLIENT})))
        except errors.AlreadyExists:
            # The MAC got an IP meanwhile (through the API): the client's next
            # retransmit finds it in the view.
            return None
        except errors.IPAMError as err:
            log.warning("booking for unknown MAC %s in %s failed: %s", mac, pn_id, err)
            return None
        lease = Lease.of(record)
        # The REQUEST that answers our OFFER is judged against the view: offer only once
        # the view shows the booking (its watch is a moment behind the commit), or the
        # client would be NAKed and start over.
        deadline = time.monotonic() + VIEW_CATCH_UP
        while time.monotonic() < deadline:  # bounded: every wait ends by the deadline
            shown = self.view.lease(pn_id, lease.mac or mac, False)
            if shown is not None and shown.address == lease.address:
                break
            await self.view.changed(self.view.revision, deadline - time.monotonic())
        return lease


class _DhcpProtocol(asyncio.DatagramProtocol):
    """One interface's DHCP socket (v4 or v6): each datagram answered in a task of its own."""

    def __init__(self, answer: Callable[[bytes, str], Awaitable[Any]]) -> None:
        self.answer = answer  # (datagram, source address) -> a reply with payload/address/port
        self.transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        task = asyncio.ensure_future(self._answer(data, addr[0]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, data: bytes, source: str) -> None:
        try:
            reply = await self.answer(data, source)
        except Exception:  # never let one packet stop the interface
            log.exception("DHCP: unexpected error answering a packet")
            return
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply.payload, (reply.address, reply.port))


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
