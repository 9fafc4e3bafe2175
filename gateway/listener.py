"""The node's listening socket: what aiohttp leaves unbounded, bounded.

aiohttp (3.14) closes a connection idle between requests after its `keepalive_timeout`,
but waits as long for the rest of a request's headers (a client sending them a byte at a
time holds a connection), and accepts any number of connections. `listen` serves the
application through `Connections`, which wraps each of aiohttp's per-connection
protocols and adds a header deadline (`--header-timeout`) and a cap
(`--max-connections`); `allow_open_files` raises the process's open-file limit to fit.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import ssl
import time
from typing import Any

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler

from . import config as cfg
from .errors import ApiError
from .models.errors import InvalidRequest

log = logging.getLogger("ipam")

BACKLOG = 128  # connections the kernel queues before the node accepts them (aiohttp's)
FILES_BESIDES_CONNECTIONS = 256  # etcd channels, logs, the data dir: not connections
REFUSAL_LOG_SECONDS = 60.0  # at most one warning this often while connections are refused


async def listen(runner: web.AppRunner, sock: socket.socket, tls: ssl.SSLContext | None,
                 config: cfg.GatewayConfig) -> asyncio.AbstractServer:
    """Serve `runner`'s application on `sock` (bound by the preflight), over TLS when
    `tls`, each connection bounded by `Connections`. Closing the returned server stops
    accepting."""
    assert runner.server is not None, "runner.setup() first"
    connections = Connections(runner.server, config.header_timeout, config.max_connections)
    return await asyncio.get_running_loop().create_server(
        connections.protocol, sock=sock, ssl=tls, backlog=BACKLOG,
        # a TLS handshake comes before any header: the same deadline bounds it
        ssl_handshake_timeout=config.header_timeout if tls else None)


class Connections:
    """The open connections of a node, with the two bounds aiohttp lacks.

    aiohttp (3.14) closes a connection idle between requests after its
    `keepalive_timeout`, but waits as long for the rest of a request's headers (a client
    sending them a byte at a time holds the connection), and accepts any number of
    connections. Each of aiohttp's per-connection protocols is wrapped in a `_Connection`:

    - headers: from the first byte of a request until its handler starts (its headers
      parsed), at most `header_timeout`; then the connection is closed, unanswered, as
      haproxy's `timeout http-request` does;
    - count: at `max_connections`, a new connection closes the one idle the longest
      (between requests: keep-alive would close it anyway, and clients expect it); when
      none is idle, the new connection is closed at once, unread.

    A request is in progress from its handler's start until its task ends: aiohttp runs
    each request in a task of its own that also writes the answer.
    """

    def __init__(self, server: web.Server, header_timeout: float, max_connections: int
                 ) -> None:
        self.header_timeout = header_timeout
        self._server = server
        self._max = max_connections
        self._open: dict[RequestHandler, _Connection] = {}
        self._handler = server.request_handler
        server.request_handler = self._handle  # each connection's protocol copies it
        self._last_refusal_log = -REFUSAL_LOG_SECONDS
        self._refused = 0

    def protocol(self) -> asyncio.Protocol:
        """A new connection's protocol (the factory given to `loop.create_server`)."""
        http = self._server()
        # aiohttp's handler, answering what its parser refuses as Scaleway does (its class
        # is slotted: a subclass adding no field is the one way to change one method).
        http.__class__ = _ScalewayRefusals
        return _Connection(self, http)

    def admit(self, connection: _Connection) -> bool:
        """Count `connection` in, closing the longest idle one to make room; False when
        every connection is busy."""
        if len(self._open) >= self._max:
            idle = [c for c in self._open.values() if c.idle_since is not None]
            if not idle:
                self._log_refusal()
                return False
            oldest = min(idle, key=lambda c: c.idle_since or 0.0)
            self.forget(oldest)
            oldest.http.force_close()
        self._open[connection.http] = connection
        return True

    def forget(self, connection: _Connection) -> None:
        self._open.pop(connection.http, None)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        connection = self._open.get(request.protocol)
        task = asyncio.current_task()
        if connection is not None and task is not None:
            connection.request_started(task)
        return await self._handler(request)

    def _log_refusal(self) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._last_refusal_log >= REFUSAL_LOG_SECONDS:
            log.warning("%d connection(s) closed unread: --max-connections %d are open and "
                        "none is idle", self._refused, self._max)
            self._last_refusal_log, self._refused = now, 0


# What aiohttp's parser refuses, in a few words of our own: its messages may echo the
# request (a bare-LF request came back whole, its X-Auth-Token included) or name a
# package to install.
_REFUSALS: tuple[tuple[type[Exception], int, str], ...] = (
    (http_exceptions.ContentEncodingError, 415,
     "this Content-Encoding is not supported: send gzip, deflate or none"),
    (http_exceptions.LineTooLong, 400, "the request line or a header is too long"),
    (http_exceptions.BadHttpMethod, 400, "the method is not one HTTP/1.1 knows"),
    (http_exceptions.InvalidURLError, 400, "the request target is not a valid URL"),
    (http_exceptions.InvalidHeader, 400, "a header is not valid HTTP/1.1"),
)
_REFUSED = "the request is not valid HTTP/1.1"


class _ScalewayRefusals(RequestHandler):
    """aiohttp's per-connection handler, answering a request its parser refused with a
    Scaleway error body and a debug line, not a text body and an error's traceback (one
    per bad request: anyone could fill the log)."""

    __slots__ = ()

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None
                     ) -> web.StreamResponse:
        if status >= 500 or not isinstance(exc, http_exceptions.HttpProcessingError):
            return super().handle_error(request, status, exc, message)  # a bug: logged
        status, said = next(((code, words) for kind, code, words in _REFUSALS
                             if isinstance(exc, kind)), (status, _REFUSED))
        log.debug("refused a request from %s: %s (%s)", request.remote, said,
                  type(exc).__name__)
        answer = ApiError(status, InvalidRequest(message=said)).response()
        answer.force_close()
        return answer


class _Connection(asyncio.Protocol):
    """One connection: aiohttp's protocol `http`, which it forwards every event to, and
    the deadline of the headers it waits for."""

    def __init__(self, connections: Connections, http: RequestHandler) -> None:
        self.http = http
        self.idle_since: float | None = None  # set while waiting for a request's first byte
        self._connections = connections
        self._deadline: asyncio.TimerHandle | None = None
        self._admitted = False
        self._requests = 0  # in progress: a pipelined one may start before the last ends

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._connections.admit(self):
            transport.close()
            return
        self._admitted = True
        self.idle_since = time.monotonic()
        self.http.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        if self._admitted:
            self._connections.forget(self)
            self.http.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.idle_since is not None and data:
            self.idle_since = None
            self._deadline = asyncio.get_running_loop().call_later(
                self._connections.header_timeout, self._headers_too_slow)
        self.http.data_received(data)

    def eof_received(self) -> None:  # None: the transport closes, as aiohttp's does
        self.http.eof_received()

    def pause_writing(self) -> None:
        self.http.pause_writing()

    def resume_writing(self) -> None:
        self.http.resume_writing()

    def request_started(self, task: asyncio.Task[Any]) -> None:
        self._stop_deadline()
        self.idle_since = None
        self._requests += 1
        task.add_done_callback(self._request_done)

    def _request_done(self, _: asyncio.Task[Any]) -> None:
        self._requests -= 1
        if not self._requests:
            # Part of a next request sent during this one starts no deadline: the
            # connection counts as idle, so keep-alive or a new connection closes it.
            self.idle_since = time.monotonic()

    def _headers_too_slow(self) -> None:
        self._deadline = None
        log.debug("closed a connection whose request headers took over %.1f s",
                  self._connections.header_timeout)
        self.http.force_close()

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


def allow_open_files(connections: int) -> None:
    """Raise this process's soft limit of open files so that `connections` fit (often
    1024 by default), up to the hard limit; warn when even that is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + FILES_BESIDES_CONNECTIONS
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    allowed = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (allowed, hard))
    if allowed < wanted:
        log.warning("--max-connections %d: only %d open files are allowed (ulimit -n); "
                    "beyond, connections wait in the kernel's queue", connections, allowed)
