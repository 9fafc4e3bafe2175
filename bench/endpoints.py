"""What the DHCP bench serves on 127.0.0.1: the agent's DHCP responder as a relay reaches it,
and the echo endpoints its baselines are measured on.

`ipam dhcp` binds its DHCP socket to an interface (SO_BINDTODEVICE, port 67) and sends a
relayed answer to giaddr:67; on loopback, without namespaces, the bench can do neither
(and must send nothing to a 10.x address). So it serves the agent's own pieces on a
socket of its own: `netagent.dhcp4.Dhcp4Responder` over the real, etcd-backed
`NetworkView`, unknown MACs booked by `netagent.agent.Agent`'s own booking path. Each
datagram is answered in a task, as the agent's socket layer does; the answer the
responder addresses to the relay (giaddr:67) goes back to the sender's loopback socket
instead: the load generator is the relay. An answer addressed anywhere else is counted
`misaddressed` and not sent.

The raw echo endpoint is the baselines' server: the same kind of socket, each datagram
sent back as it arrives, in the receiving callback.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from allocator.contract import IPAM, NetworkView
from netagent.agent import BOOK, Agent, AgentConfig
from netagent.dhcp4 import SERVER_PORT, Dhcp4Config, Dhcp4Responder, UnknownMac

SOCKET_BUFFER = 4 * 1024 * 1024

Answer = Callable[[bytes], Awaitable[bytes | None]]


@dataclass
class EndpointCounters:
    """Datagrams one endpoint received and answered; compared with the client's own."""

    received: int = 0
    replied: int = 0
    silent: int = 0  # the answer was nothing
    failed: int = 0  # the answer raised

    def snapshot(self) -> dict[str, int]:
        return asdict(self)


class UdpEndpoint(asyncio.DatagramProtocol):
    """A UDP socket on 127.0.0.1 that sends each datagram's answer back to its sender.

    With `answer`, each datagram is answered in a task of its own (as the agent's DHCP
    socket does); without, it is echoed as it arrives, in the receiving callback.
    """

    def __init__(self, answer: Answer | None = None) -> None:
        self.answer = answer
        self.counters = EndpointCounters()
        self.port = 0
        self.transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()

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
        sock.setblocking(False)
        endpoint = cls(answer)
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: endpoint, sock=sock)
        endpoint.port = sock.getsockname()[1]
        return endpoint

    def counts(self) -> dict[str, int]:
        """Its counters, and the datagrams the kernel dropped before they reached it."""
        return {**self.counters.snapshot(), "kernel_drops": kernel_drops(self.port)}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.counters.received += 1
        if self.answer is None:
            self._send(data, addr)
            return
        task = asyncio.ensure_future(self._answer(data, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.answer is not None
        try:
            reply = await self.answer(data)
        except Exception:  # noqa: BLE001 - counted: the run's checks fail on it
            self.counters.failed += 1
            return
        if reply is None:
            self.counters.silent += 1
            return
        self._send(reply, addr)

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)
            self.counters.replied += 1

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        for task in self._tasks:
            task.cancel()


class RelayedDhcp:
    """The responder's answer to a relayed request, if it is addressed to the relay;
    `misaddressed` counts those that are not (and are not sent)."""

    def __init__(self, responder: Dhcp4Responder) -> None:
        self.responder = responder
        self.misaddressed = 0

    async def __call__(self, data: bytes) -> bytes | None:
        # None: a relay-only listener, the network is the one holding giaddr.
        reply = await self.responder.handle(data, None)
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
    agent = Agent(ipam, config)
    # `Agent.start` would bind port 67 on an interface: the bench opens no such socket, so
    # it hands the agent the view itself, which is all its booking path reads.
    agent.view = view
    return Dhcp4Responder(
        view, Dhcp4Config(lease_time=config.lease_time, renewal_time=config.t1,
                          rebinding_time=config.t2,
                          unknown_mac={pn: UnknownMac(config.policy(pn)) for pn in networks}),
        book_unknown=agent._book_unknown)


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
