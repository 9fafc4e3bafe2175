"""What the DHCP bench serves on 127.0.0.1: the agent's DHCP responder as a relay reaches it,
and the echo endpoints its baselines are measured on.

`ipam dhcp` binds its DHCP socket to an interface (SO_BINDTODEVICE, port 67) and sends a
relayed answer to giaddr:67; on loopback, without namespaces, the bench can do neither
(and must send nothing to a 10.x address). So it serves the agent's own pieces on a
socket of its own, through the agent's socket layer (`netagent.udp.DatagramServer`):
`netagent.dhcp4.Dhcp4Responder` over the real, etcd-backed `NetworkView`, unknown MACs
booked by `netagent.agent.Agent`'s own booking path. The answer the
responder addresses to the relay (giaddr:67) goes back to the sender's loopback socket
instead: the load generator is the relay. An answer addressed anywhere else is counted
`misaddressed` and not sent.

The raw echo endpoint is the baselines' server: the same socket layer, each datagram
sent back as it arrives.
"""

from __future__ import annotations

import socket
from collections.abc import Coroutine
from typing import Any

from allocator.contract import IPAM, NetworkView
from netagent.agent import BOOK, Agent, AgentConfig
from netagent.dhcp4 import SERVER_PORT, Dhcp4Responder, Reply
from netagent.udp import Answer, DatagramServer

SOCKET_BUFFER = 4 * 1024 * 1024


class UdpEndpoint:
    """A UDP socket on 127.0.0.1 served by the agent's own socket layer
    (`netagent.udp.DatagramServer`): each datagram's answer goes back to its sender, or,
    without `answer`, the datagram itself (the echo the baselines are measured on)."""

    def __init__(self, server: DatagramServer) -> None:
        self.server = server
        self.port = server.port

    @classmethod
    async def open(cls, answer: Answer | None = None) -> UdpEndpoint:
        """Listening on a free port of 127.0.0.1 (`port`)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for forced, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):
            try:  # SO_RCVBUFFORCE / SO_SNDBUFFORCE exceed rmem_max as root
                sock.setsockopt(socket.SOL_SOCKET, forced, SOCKET_BUFFER)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
        sock.bind(("127.0.0.1", 0))
        server = DatagramServer(sock, answer if answer is not None else _echo)
        server.start()
        return cls(server)

    def counts(self) -> dict[str, int]:
        """Datagrams received and answered, and those the kernel dropped before they
        reached the socket."""
        c = self.server.counters
        return {"received": c.received, "replied": c.sent, "failed": c.failed,
                "send_dropped": c.send_dropped, "kernel_drops": kernel_drops(self.port)}

    async def close(self) -> None:
        await self.server.close()


def _echo(data: bytes, _sender: Any) -> bytes:
    return data


class RelayedDhcp:
    """The responder's answer to a relayed request, if it is addressed to the relay;
    `misaddressed` counts those that are not (and are not sent)."""

    def __init__(self, responder: Dhcp4Responder) -> None:
        self.responder = responder
        self.misaddressed = 0

    def __call__(self, data: bytes, _sender: Any = None
                 ) -> bytes | None | Coroutine[Any, Any, bytes | None]:
        # None: a relay-only listener, the network is the one holding giaddr.
        outcome = self.responder.respond(data, None)
        if isinstance(outcome, Coroutine):
            return self._after(outcome, data)
        return self._to_relay(outcome, data)

    async def _after(self, pending: Coroutine[Any, Any, Reply | None], data: bytes
                     ) -> bytes | None:
        return self._to_relay(await pending, data)

    def _to_relay(self, reply: Reply | None, data: bytes) -> bytes | None:
        if reply is None:
            return None
        giaddr = socket.inet_ntoa(data[24:28])
        if reply.port != SERVER_PORT or reply.address != giaddr or reply.broadcast:
            self.misaddressed += 1
            return None
        return reply.payload

    def counts(self) -> dict[str, int]:
        """The responder's counters, and the misaddressed answers."""
        return {"misaddressed": self.misaddressed, **{
            f"responder_{k}": v for k, v in self.responder.counters.as_dict().items()}}


def agent_responder(ipam: IPAM, view: NetworkView, networks: list[str],
                    book_unknown_in: list[str]) -> Dhcp4Responder:
    """The agent's DHCP responder over `view`, booking unknown MACs in `book_unknown_in`
    through `Agent`'s own booking path (same ask, resource type and idempotency key)."""
    config = AgentConfig(interfaces=tuple((f"bench{i}", pn) for i, pn in enumerate(networks)),
                         unknown_mac={pn: BOOK for pn in book_unknown_in})
    # `Agent.start` would bind port 67 on an interface: the bench opens no such socket and
    # takes the responder `start` would serve (the view, its bookings held until shown).
    return Agent(ipam, config).dhcp4_responder(view)


def kernel_drops(port: int) -> int:
    """Datagrams the kernel dropped for the UDP socket on 127.0.0.1:`port` because its
    receive queue was full (the `drops` column of /proc/net/udp): they never reach the
    server's counters, and the client sends them again at its timeout."""
    local = f"0100007F:{port:04X}"
    with open("/proc/net/udp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if len(fields) >= 13 and fields[1] == local:
                return int(fields[-1])
    return 0


def counters_delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, int]:
    """`after - before`, key by key (counters of a responder, a DNS or an endpoint)."""
    return {k: int(after[k]) - int(before.get(k, 0)) for k in after}
