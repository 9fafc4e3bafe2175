"""The agent's UDP serving: read every waiting datagram at each wake-up, answer in place.

asyncio's datagram transport reads one datagram per turn of the event loop. When the loop
is busy (bookings in flight, an etcd watch delivering), a turn takes milliseconds, and
DHCP and DNS requests wait in the socket's queue behind one another: measured, new DHCP
clients took 120 ms for a DORA whose booking took 14 ms. A `DatagramServer` drains the
socket (up to `BATCH` datagrams per wake-up), answers what the view answers at once, and
starts a task only for an answer that needs I/O (a booking, a relayed DNS query).

An answer is `None` (nothing to send), `bytes` (sent back to the sender), an object with
`payload` and `destination` (sent there: DHCP replies go to a relay, a broadcast address
or the client's port), or a coroutine that ends with one of those.

A reply the kernel cannot take at once (send buffer full) is dropped and counted, as
every UDP server does: the client sends again, and a blocked server would stall all.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("ipam.dhcp")

BATCH = 256  # datagrams read per wake-up at most: other work gets its turn in between
MAX_DATAGRAM = 65535


class Addressed(Protocol):
    """A reply that says where it goes."""

    @property
    def payload(self) -> bytes: ...

    @property
    def destination(self) -> tuple[Any, ...]: ...


Outcome = bytes | Addressed | None
Answer = Callable[[bytes, Any], "Outcome | Coroutine[Any, Any, Outcome]"]


@dataclass
class DatagramCounters:
    """What one socket received and sent; the kernel's own drops are in /proc/net/udp."""

    received: int = 0
    sent: int = 0
    send_dropped: int = 0  # the send buffer was full: the client will ask again
    failed: int = 0  # the answer raised (a bug): logged, the datagram unanswered


class DatagramServer:
    """Serves `answer` on a bound, non-blocking UDP socket (see the module docstring).

    `max_pending` bounds the answers in flight as tasks: past it a datagram needing I/O is
    dropped (and counted in `failed`), so a flood cannot grow memory without bound.
    """

    def __init__(self, sock: socket.socket, answer: Answer, *, max_pending: int = 4096) -> None:
        sock.setblocking(False)
        self.sock, self.answer = sock, answer
        self.max_pending = max_pending
        self.counters = DatagramCounters()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def start(self) -> None:
        """Begin serving (on the running loop)."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)

    async def close(self) -> None:
        """Stop reading, end the answers in flight, close the socket."""
        if self._loop is not None and self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.sock.close()

    def _readable(self) -> None:
        for _ in range(BATCH):
            try:
                data, sender = self.sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # an ICMP error for an earlier reply: the client left
                log.debug("udp: receive error %r", err)
                return
            self.counters.received += 1
            try:
                outcome = self.answer(data, sender)
            except Exception:  # one datagram must never stop the socket
                self.counters.failed += 1
                log.exception("udp: unexpected error answering a datagram")
                continue
            if isinstance(outcome, Coroutine):
                if len(self._tasks) >= self.max_pending:
                    outcome.close()
                    self.counters.failed += 1
                    continue
                task = asyncio.ensure_future(self._later(outcome, sender))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                self._send(outcome, sender)

    async def _later(self, pending: Coroutine[Any, Any, Outcome], sender: Any) -> None:
        try:
            outcome = await pending
        except Exception:
            self.counters.failed += 1
            log.exception("udp: unexpected error answering a datagram")
            return
        self._send(outcome, sender)

    def _send(self, outcome: Outcome, sender: Any) -> None:
        if outcome is None or self.sock.fileno() < 0:
            return
        if isinstance(outcome, bytes):
            payload, destination = outcome, sender
        else:
            payload, destination = outcome.payload, outcome.destination
        try:
            self.sock.sendto(payload, destination)
        except (BlockingIOError, InterruptedError):
            self.counters.send_dropped += 1
            return
        except OSError as err:  # unreachable, no route: the client is gone
            log.debug("udp: cannot send to %s: %r", destination, err)
            self.counters.send_dropped += 1
            return
        self.counters.sent += 1
