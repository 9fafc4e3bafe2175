"""All etcd I/O of the project: endpoints, deadlines, ejection, reads, transactions, watches.

Built on aetcd's generated gRPC stubs (`aetcd.rpc`) rather than its `Client`,
because the client takes one endpoint, ignores `limit`/`revision`/`count_only`,
has no nested transactions and does not re-create watches after errors. This
module fills those gaps and nothing else; it knows no domain.

Endpoint policy: calls go round-robin over the endpoints in use. An endpoint that
times out or is unavailable is taken out of use for `eject_seconds`, then tried
again. A hung member (alive, not answering) is the case this exists for: without
ejection gRPC keeps sending to it.

Writes are never retried here: when a transaction errors its outcome is unknown,
and only the caller can tell (by reading back the token it wrote). Transactions are
built in `txn` (guards with names); this module only sends them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
from aetcd import rpc

from .errors import StoreError
from .retry import WATCH_RESUME

log = logging.getLogger(__name__)

_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    # etcd answers pings more often than every 5 s (--grpc-keepalive-min-time) with
    # GOAWAY "too_many_pings", which breaks watches: stay above it.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    # etcd's enforcement policy refuses pings on a connection with no open stream.
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]

# etcd's default --max-txn-ops; nested transactions share it with their parent.
MAX_TXN_OPS = 128


@dataclass(frozen=True)
class EtcdSecurity:
    """How to reach a secured etcd: TLS files (PEM) and/or a user and password.

    `ca_file` alone: server-authenticated TLS. With `cert_file` and `key_file`: mutual
    TLS (etcd's `--client-cert-auth`). `username`/`password`: etcd's own auth; the
    token is fetched on first use and fetched again whenever etcd says it is invalid
    (simple tokens expire after five idle minutes).
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = None

    @property
    def tls(self) -> bool:
        return bool(self.ca_file or self.cert_file)

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            if not path:
                return None
            with open(path, "rb") as f:
                return f.read()

        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file),
                                            read(self.cert_file))


def _auth_expired(err: grpc.aio.AioRpcError) -> bool:
    """etcd refused the token (expired, unknown, or older than an auth change)."""
    details = (err.details() or "").lower()
    return err.code() == grpc.StatusCode.UNAUTHENTICATED or (
        "invalid auth token" in details or "revision in header is old" in details)


class Compacted(StoreError):
    """A watch asked for a revision etcd has compacted away; reload and watch again."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted (oldest available {compact_revision})")
        self.compact_revision = compact_revision


# --- request builders --------------------------------------------------------


def _b(key: str | bytes) -> bytes:
    return key.encode() if isinstance(key, str) else key


def _read(key: str) -> rpc.RequestOp:
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=_b(key)))


def prefix_end(prefix: str | bytes) -> bytes:
    """The range end that covers every key starting with `prefix`."""
    p = bytearray(_b(prefix))
    for i in range(len(p) - 1, -1, -1):
        if p[i] < 0xFF:
            p[i] += 1
            return bytes(p[: i + 1])
    return b"\0"


# --- results -------------------------------------------------------------------


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int


def kv_of(kv: rpc.KeyValue) -> KV:
    return KV(kv.key.decode(), kv.value, kv.mod_revision, kv.create_revision)


@dataclass(frozen=True)
class WatchEvent:
    key: str
    value: bytes
    deleted: bool
    revision: int


# --- the store -------------------------------------------------------------------


@dataclass
class _Endpoint:
    address: str
    channel: grpc.aio.Channel
    kv: rpc.KVStub
    watch: rpc.WatchStub
    lease: rpc.LeaseStub
    maintenance: rpc.MaintenanceStub
    auth: rpc.AuthStub
    ejected_until: float = 0.0


class Store(Protocol):
    """What the allocator needs from etcd. `EtcdStore` is the store; a wrapper that
    injects faults (`devcluster.faults.FaultyStore`) implements the same protocol."""

    async def txn(self, compare: Sequence[rpc.Compare], success: Sequence[rpc.RequestOp],
                  failure: Sequence[rpc.RequestOp] = (), *, retry: bool = False
                  ) -> rpc.TxnResponse: ...

    async def get(self, key: str) -> KV | None: ...

    async def get_many(self, keys: Iterable[str]) -> dict[str, KV]: ...

    async def first_keys(self, prefix: str, limit: int, *, descending: bool = False,
                         keys_only: bool = True) -> list[KV]: ...

    async def count(self, prefix: str) -> tuple[int, int]: ...

    async def scan(self, prefix: str, *, keys_only: bool = False, revision: int = 0,
                   page: int = 5000) -> tuple[list[KV], int]: ...

    async def lease_grant(self, ttl: int) -> int: ...

    async def status(self) -> list[tuple[str, bool]]: ...

    def watch(self, prefix: str, start_revision: int
              ) -> AsyncIterator[tuple[list[WatchEvent], int]]: ...

    async def close(self) -> None: ...


class EtcdStore:
    """A connection to an etcd cluster over several endpoints, with deadlines and ejection.

    `requests` counts every RPC sent (round trips), for tests and the bench.
    """

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 3.0,
                 eject_seconds: float = 5.0, security: EtcdSecurity | None = None) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.timeout = timeout
        self.eject_seconds = eject_seconds
        self.requests = 0
        self.security = security or EtcdSecurity()
        self._endpoints = [self._connect(a.strip()) for a in endpoints]
        self._rr = itertools.count()
        self._eject_listeners: list[asyncio.Event] = []
        self._token: str | None = None
        self._token_lock = asyncio.Lock()
        self.auth_renewals = 0

    def _connect(self, address: str) -> _Endpoint:
        tls = self.security.tls or address.startswith("https://")
        address = address.removeprefix("http://").removeprefix("https://")
        if tls:
            channel = grpc.aio.secure_channel(address, self.security.credentials(),
                                              options=_CHANNEL_OPTIONS)
        else:
            channel = grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
        return _Endpoint(address, channel, rpc.KVStub(channel), rpc.WatchStub(channel),
                         rpc.LeaseStub(channel), rpc.MaintenanceStub(channel),
                         rpc.AuthStub(channel))

    async def _metadata(self, renew: bool = False) -> tuple[tuple[str, str], ...] | None:
        """The auth token as call metadata (None without auth), fetched once and on expiry."""
        sec = self.security
        if not sec.username:
            return None
        stale = self._token
        async with self._token_lock:
            if self._token is None or (renew and self._token == stale):
                self.auth_renewals += renew
                self._token = await self._authenticate(sec.username, sec.password or "")
        return (("token", self._token),)

    async def _authenticate(self, username: str, password: str) -> str:
        last: grpc.aio.AioRpcError | None = None
        for _ in range(len(self._endpoints) + 1):
            ep = self._pick()
            self.requests += 1
            try:
                resp = await ep.auth.Authenticate(
                    rpc.AuthenticateRequest(name=username, password=password),
                    timeout=self.timeout)
                return str(resp.token)
            except grpc.aio.AioRpcError as err:
                last = err
                self._eject(ep, err)
                if err.code() not in _RETRYABLE:
                    break
        assert last is not None
        raise StoreError(f"etcd authentication failed: {last.code().name}: {last.details()}")

    @property
    def endpoints(self) -> list[str]:
        return [e.address for e in self._endpoints]

    async def close(self) -> None:
        """Close every channel; pending calls fail."""
        await asyncio.gather(*(e.channel.close(None) for e in self._endpoints),
                             return_exceptions=True)

    # -- endpoint choice ----------------------------------------------------------

    def _pick(self, avoid: set[str] | None = None) -> _Endpoint:
        now = time.monotonic()
        n = len(self._endpoints)
        start = next(self._rr)
        candidates = [self._endpoints[(start + i) % n] for i in range(n)]
        for ep in candidates:
            if ep.ejected_until <= now and not (avoid and ep.address in avoid):
                return ep
        # Everything is ejected (or avoided): take the one that comes back first.
        return min(candidates, key=lambda e: (avoid is not None and e.address in avoid,
                                              e.ejected_until))

    def _eject(self, ep: _Endpoint, err: grpc.aio.AioRpcError) -> None:
        if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            if ep.ejected_until <= time.monotonic():
                log.warning("etcd endpoint %s out of use for %.1fs: %s", ep.address,
                            self.eject_seconds, err.code().name)
            ep.ejected_until = time.monotonic() + self.eject_seconds
            for event in self._eject_listeners:
                event.set()

    def healthy_endpoints(self) -> list[str]:
        now = time.monotonic()
        return [e.address for e in self._endpoints if e.ejected_until <= now]

    # -- unary calls ----------------------------------------------------------------

    async def _unary(self, service: str, method: str, request: object, *, retry: bool,
                     timeout: float | None = None) -> object:
        attempts = len(self._endpoints) + 1 if retry else 1
        tried: set[str] = set()
        last: grpc.aio.AioRpcError | None = None
        renewed = False
        metadata = await self._metadata()
        attempt = 0
        while attempt < attempts:
            attempt += 1
            ep = self._pick(tried if len(tried) < len(self._endpoints) else None)
            tried.add(ep.address)
            self.requests += 1
            try:
                return await getattr(getattr(ep, service), method)(
                    request, timeout=timeout or self.timeout, metadata=metadata)
            except grpc.aio.AioRpcError as err:
                last = err
                if not renewed and metadata and _auth_expired(err):
                    # Refused before it was applied: safe to send again, writes too.
                    renewed = True
                    metadata = await self._metadata(renew=True)
                    attempts += 1
                    continue
                self._eject(ep, err)
                if err.code() not in _RETRYABLE:
                    break
        assert last is not None
        raise StoreError(f"etcd {method} failed: {last.code().name}: {last.details()}")

    async def txn(self, compare: Sequence[rpc.Compare], success: Sequence[rpc.RequestOp],
                  failure: Sequence[rpc.RequestOp] = (), *, retry: bool = False
                  ) -> rpc.TxnResponse:
        """One transaction. `retry=True` only for transactions that write nothing."""
        request = rpc.TxnRequest(compare=list(compare), success=list(success),
                                 failure=list(failure))
        return await self._unary("kv", "Txn", request, retry=retry)  # type: ignore[return-value]

    async def range(self, key: str, range_end: bytes | None = None, *, limit: int = 0,
                    revision: int = 0, keys_only: bool = False, count_only: bool = False,
                    serializable: bool = False, descending: bool = False
                    ) -> rpc.RangeResponse:
        """A range read, linearizable unless `serializable`; retried on another endpoint.

        `descending` returns keys in reverse order (with `limit`: the last ones).
        """
        request = rpc.RangeRequest(key=_b(key), range_end=range_end or b"", limit=limit,
                                   revision=revision, keys_only=keys_only,
                                   count_only=count_only, serializable=serializable)
        if descending:
            request.sort_order = rpc.RangeRequest.DESCEND
            request.sort_target = rpc.RangeRequest.KEY
        return await self._unary("kv", "Range", request, retry=True)  # type: ignore

    async def get(self, key: str) -> KV | None:
        """The key's current value, or None."""
        resp = await self.range(key)
        return kv_of(resp.kvs[0]) if resp.kvs else None

    async def get_many(self, keys: Iterable[str]) -> dict[str, KV]:
        """Several keys in as few round trips as the op limit allows (one snapshot per txn)."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, KV] = {}

        async def chunk(part: list[str]) -> None:
            resp = await self.txn([], [_read(k) for k in part], retry=True)
            for r in resp.responses:
                for kv in r.response_range.kvs:
                    found[kv.key.decode()] = kv_of(kv)

        await asyncio.gather(*(chunk(keys[i:i + MAX_TXN_OPS])
                               for i in range(0, len(keys), MAX_TXN_OPS)))
        return found

    async def first_keys(self, prefix: str, limit: int, *, descending: bool = False,
                         keys_only: bool = True) -> list[KV]:
        """The first (or, `descending`, the last) `limit` keys under `prefix`, in key order."""
        resp = await self.range(prefix, prefix_end(prefix), limit=limit, keys_only=keys_only,
                                descending=descending)
        return [kv_of(kv) for kv in resp.kvs]

    async def count(self, prefix: str) -> tuple[int, int]:
        """(number of keys under `prefix`, revision), linearizable."""
        resp = await self.range(prefix, prefix_end(prefix), count_only=True)
        return resp.count, resp.header.revision

    async def scan(self, prefix: str, *, keys_only: bool = False, revision: int = 0,
                   page: int = 5000) -> tuple[list[KV], int]:
        """Every key under `prefix` at one revision, read in pages. Returns (kvs, revision)."""
        out: list[KV] = []
        start = _b(prefix)
        end = prefix_end(prefix)
        while True:
            resp = await self.range(start.decode(), end, limit=page, revision=revision,
                                    keys_only=keys_only)
            revision = revision or resp.header.revision
            out.extend(kv_of(kv) for kv in resp.kvs)
            if not resp.more or not resp.kvs:
                return out, revision
            start = resp.kvs[-1].key + b"\0"

    async def lease_grant(self, ttl: int) -> int:
        """A new lease of `ttl` seconds (no keep-alive: it is meant to expire)."""
        resp = await self._unary("lease", "LeaseGrant", rpc.LeaseGrantRequest(TTL=ttl),
                                 retry=True)
        return resp.ID  # type: ignore[attr-defined]

    async def status(self) -> list[tuple[str, bool]]:
        """(endpoint, answered) for every endpoint, asked directly with a short deadline."""
        async def one(ep: _Endpoint) -> tuple[str, bool]:
            try:
                await ep.maintenance.Status(rpc.StatusRequest(), timeout=min(1.0, self.timeout),
                                            metadata=await self._metadata())
                return ep.address, True
            except grpc.aio.AioRpcError:
                return ep.address, False
        return list(await asyncio.gather(*(one(e) for e in self._endpoints)))

    # -- watches --------------------------------------------------------------------

    async def watch(self, prefix: str, start_revision: int
                    ) -> AsyncIterator[tuple[list[WatchEvent], int]]:
        """Events under `prefix` from `start_revision` on, as (events, revision) batches.

        Survives member failures: the stream moves to another endpoint and resumes
        after the last revision it delivered. Raises Compacted when the history it
        needs is gone. Runs until cancelled.
        """
        next_rev = start_revision
        backoff = WATCH_RESUME.delay
        auth_failed = False
        while True:
            ep = self._pick()
            ejected = asyncio.Event()
            self._eject_listeners.append(ejected)
            queue: asyncio.Queue[rpc.WatchRequest | None] = asyncio.Queue()
            queue.put_nowait(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
                key=_b(prefix), range_end=prefix_end(prefix), start_revision=next_rev,
                progress_notify=True)))

            async def requests(queue: asyncio.Queue = queue) -> AsyncIterator[rpc.WatchRequest]:
                while (req := await queue.get()) is not None:
                    yield req

            call = ep.watch.Watch(requests(), metadata=await self._metadata(renew=auth_failed))
            auth_failed = False
            watched_address = ep.address
            reader: asyncio.Future | None = None
            stop: asyncio.Future | None = None
            try:
                reader = asyncio.ensure_future(call.read())
                while True:
                    stop = asyncio.ensure_future(ejected.wait())
                    done, _ = await asyncio.wait({reader, stop},
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if reader not in done:
                        # Some endpoint was ejected: if it is ours, move elsewhere.
                        ejected.clear()
                        if watched_address not in self.healthy_endpoints():
                            reader.cancel()
                            break
                        continue
                    stop.cancel()
                    resp = reader.result()
                    if resp is grpc.aio.EOF:
                        break
                    if resp.compact_revision:
                        raise Compacted(resp.compact_revision)
                    if resp.canceled:
                        # etcd cancels a watch whose auth token it no longer accepts
                        # (instead of failing the call): renew before resuming.
                        auth_failed = bool(self.security.username)
                        break
                    backoff = WATCH_RESUME.delay
                    if resp.events:
                        events = [WatchEvent(e.kv.key.decode(), e.kv.value,
                                             e.type == rpc.Event.DELETE, e.kv.mod_revision)
                                  for e in resp.events]
                        next_rev = resp.events[-1].kv.mod_revision + 1
                        yield events, resp.header.revision
                    elif not resp.created and resp.header.revision >= next_rev:
                        # A progress notice: every event up to this revision was sent.
                        yield [], resp.header.revision
                    reader = asyncio.ensure_future(call.read())
            except grpc.aio.AioRpcError as err:
                if _auth_expired(err):
                    auth_failed = True
                else:
                    self._eject(ep, err)
                log.info("watch on %s broke (%s); resuming at %d", ep.address,
                         err.code().name, next_rev)
            finally:
                for pending in (reader, stop):
                    if pending is not None and not pending.done():
                        pending.cancel()
                self._eject_listeners.remove(ejected)
                queue.put_nowait(None)
                call.cancel()
            await asyncio.sleep(backoff)
            backoff = min(backoff * WATCH_RESUME.factor, WATCH_RESUME.max_delay)
