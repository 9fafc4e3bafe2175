"""All etcd I/O of the project: endpoints, deadlines, ejection, reads, transactions, watches.

Built on aetcd's generated gRPC stubs (`aetcd.rpc`) rather than its `Client`,
because the client takes one endpoint, ignores `limit`/`revision`/`count_only`,
has no nested transactions and does not re-create watches after errors. This
module fills those gaps and nothing else; it knows no domain.

Endpoint policy: calls go round-robin over the endpoints in use. An endpoint that
times out or is unavailable is taken out of use for `eject_seconds`, then tried
again. A hung member (alive, not answering) is the case this exists for: without
ejection gRPC keeps sending to it.

With several endpoints, a prober also asks each one a linearizable read (what every
call needs: the member answers and has a quorum) every `probe_interval`, with a
`probe_timeout` deadline. An endpoint whose probe goes unanswered is out of use until
one is answered, however long its ejection was, and the calls waiting on it are
abandoned at once: they fail as a deadline would (`ABANDONED`), and go elsewhere
(reads) or come back unknown (writes), instead of waiting out their deadline. Measured
on a real partition (tests/devcluster/test_partitions.py): without the prober, a member
cut off held every commit in flight for the full 3 s deadline (the committer sends two
at a time, and round-robin puts both on it within milliseconds), and was taken back
after its 5 s ejection while still cut, for another 3 s: bookings stopped twice.

Silence, not slowness: when every member has lately been answering probes slowly (a
saturated machine, a slow disk everywhere), the deadline grows to PROBE_SLOWNESS times
what the fastest member's slowest recent answer took (up to PROBE_TIMEOUT_MAX), so a
cluster-wide stall abandons nothing. One member slower than the others gains nothing by
it (the others set the pace, and it is still avoided), and a member that answered in
milliseconds until it was cut off still goes out after `probe_timeout`.

A new leader, seen as a higher raft term in any answer (a probe's, or a serializable
read's from a follower that voted), ends the calls sent before it that are still waiting
one probe deadline later: a follower forwards a write to the leader it knows, and a
proposal the old leader never received is never answered (etcd 3.4 lets it wait out the
caller's deadline), so those calls fail as abandoned ones do.

Writes are never retried here: when a transaction errors its outcome is unknown,
and only the caller can tell (by reading back the token it wrote). Transactions are
built in `txn` (guards with names); this module only sends them.

A full backend quota is the exception: etcd refuses the write whole before applying
it, with its NOSPACE alarm raised, and `StorageFull` says so (never retried: only an
operator clears it). etcd 3.4 counts only the puts at the top level of a transaction
against the quota, so a request whose puts are all nested (every commit of the
allocator's committer) would slip past a full quota unseen; `txn` adds a put to a
branch that never runs, which etcd weighs but never applies (`_quota_probe`).

Maintenance, for `compactor` and for alarms: `compact`, leases (`lease_keep_alive`,
`lease_revoke`) and `storage_usage` (each member's backend size against the quota).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from aetcd import rpc

from .errors import StorageFull, StoreError
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
MIN_SCAN_PAGE = 100  # a scan's pages shrink no further when etcd is slow to send them
# etcd's default --quota-backend-bytes. etcd does not tell a member's own over gRPC
# (its /metrics does: etcd_server_quota_backend_bytes).
DEFAULT_QUOTA_BYTES = 2 * 1024**3
# The prober's cadence and patience: a member on a LAN answers a linearizable read in
# milliseconds, so a probe left unanswered 0.4 s means the member is cut off, hung or
# without a quorum; cut off, its calls are abandoned at most 0.6 s after the cut.
PROBE_INTERVAL = 0.2
PROBE_TIMEOUT = 0.4
# A slow cluster is not a silent one: a probe's deadline is PROBE_SLOWNESS times the
# cluster's pace, the slowest of the last PROBE_MEMORY answers (about two seconds of
# probes) of the member that answered fastest (so one slow member does not set it), at
# least `probe_timeout`, at most PROBE_TIMEOUT_MAX (below a call's 3 s deadline, or the
# prober would abandon nothing a deadline does not). Measured under the booking bench on
# a saturated 2-core machine (load 12-16): every member answered probes in 0.1-0.5 s
# and they were taken out of use, their writes coming back unknown (503), while nothing
# was cut off.
PROBE_SLOWNESS = 4.0
PROBE_MEMORY = 10
PROBE_TIMEOUT_MAX = 2.0
ABANDONED = "endpoint stopped answering probes"
SUPERSEDED = "sent before etcd elected a new leader"
# Calls whose answer shows that a quorum answers (but a serializable read: the member's).
_QUORUM_SERVICES = frozenset({"kv", "lease"})
_PROBE_KEY = b"\0"  # any key: the read is the point, not what it finds
_NO_SPACE = "database space exceeded"
_ALREADY_COMPACTED = "required revision has been compacted"


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


def _no_space(err: grpc.aio.AioRpcError) -> bool:
    """etcd refused a write because its backend quota is full (the NOSPACE alarm)."""
    return err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and _NO_SPACE in (
        err.details() or "")


def _auth_expired(err: grpc.aio.AioRpcError) -> bool:
    """etcd refused the token (expired, unknown, or older than an auth change)."""
    details = (err.details() or "").lower()
    return err.code() == grpc.StatusCode.UNAUTHENTICATED or (
        "invalid auth token" in details or "revision in header is old" in details)


class DeadlineExceeded(StoreError):
    """Every attempt of a call ran out of its deadline: etcd was slow, or the answer
    large (a scan's page of full records on a busy member)."""


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


def _nested_put_key(ops: Iterable[rpc.RequestOp]) -> bytes | None:
    """The key of the first put inside the nested transactions of `ops`, or None."""
    for op in ops:
        if op.HasField("request_txn"):
            inner = op.request_txn
            for branch in (inner.success, inner.failure):
                for o in branch:
                    if o.HasField("request_put"):
                        return bytes(o.request_put.key)
                key = _nested_put_key(branch)
                if key is not None:
                    return key
    return None


def _quota_probe(request: rpc.TxnRequest) -> rpc.RequestOp | None:
    """A put that makes etcd check its quota for an unguarded `request`, when etcd would not.

    etcd 3.4 weighs a transaction by its top-level puts alone (the larger branch's):
    one whose puts are all nested weighs nothing, passes a full quota and even an
    active NOSPACE alarm, and the database grows past its quota (measured). A put of
    a key the request writes anyway (so etcd's auth allows it), in the failure branch
    of a request with no guard (a branch that never runs), gives it weight. None when
    etcd weighs the request already or it puts nothing.

    A guarded request has no branch that never runs: `txn.commit`, which nests the writes
    of big ones (release sets), keeps one of their puts at the top level instead.
    """
    if any(op.HasField("request_put") for op in (*request.success, *request.failure)):
        return None
    key = _nested_put_key((*request.success, *request.failure))
    if key is None:
        return None
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key))


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
class StorageUsage:
    """One member's backend against the quota, as its Status call reports it."""

    endpoint: str
    db_size: int  # bytes of the backend file: what etcd compares with its quota
    db_size_in_use: int  # bytes holding data; the rest are free pages a defrag gives back
    quota: int  # the --quota-backend-bytes the members were said to run with
    alarms: tuple[str, ...]  # this member's active alarms: "NOSPACE", "CORRUPT"

    @property
    def used(self) -> float:
        """The share of the quota the backend file takes (NOSPACE comes near 1.0)."""
        return self.db_size / self.quota if self.quota else 0.0


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
    answering: bool = True  # its last probe was answered (the prober's view)
    answers: deque[float] = field(  # seconds its last answered probes took, newest last
        default_factory=lambda: deque(maxlen=PROBE_MEMORY))
    # Unary calls waiting on it, each with the raft term known when it was sent.
    calls: dict[grpc.aio.Call, int] = field(default_factory=dict)
    # Those the prober gave up, each with the error it ends with (`_abandon`).
    abandoned: dict[grpc.aio.Call, tuple[grpc.StatusCode, str]] = field(default_factory=dict)


class Store(Protocol):
    """What the allocator needs from etcd. `EtcdStore` is the store; a wrapper that
    injects faults (`devcluster.faults.FaultyStore`) implements the same protocol.

    `answered_at`: `time.monotonic()` of the latest answer that took a quorum (a
    transaction, a linearizable read, a lease), 0.0 before the first: whether etcd
    answers at all, for the node's availability gate."""

    answered_at: float

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
                 eject_seconds: float = 5.0, security: EtcdSecurity | None = None,
                 probe_interval: float = PROBE_INTERVAL,
                 probe_timeout: float = PROBE_TIMEOUT) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.timeout = timeout
        self.eject_seconds = eject_seconds
        self.probe_interval, self.probe_timeout = probe_interval, probe_timeout
        self.abandoned_calls = 0  # calls given up because their endpoint went silent
        self.answered_at = 0.0  # time.monotonic() of the latest answer that took a quorum
        self.term = 0  # the highest raft term an answer carried (0: none yet)
        self._term_watch: asyncio.Task[None] | None = None  # ends the calls of an old term
        self._prober: asyncio.Task[None] | None = None
        self.requests = 0
        self.security = security or EtcdSecurity()
        self._endpoints = [self._connect(a.strip()) for a in endpoints]
        self._rr = itertools.count()
        # Told (called) whenever an endpoint goes out of use: each watch stream checks
        # whether it was its own.
        self._eject_listeners: list[Callable[[], None]] = []
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
        for task in (self._prober, self._term_watch):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._prober = self._term_watch = None
        await asyncio.gather(*(e.channel.close(None) for e in self._endpoints),
                             return_exceptions=True)

    # -- endpoint choice ----------------------------------------------------------

    def _pick(self, avoid: set[str] | None = None) -> _Endpoint:
        if self._prober is None and len(self._endpoints) > 1:
            self._prober = asyncio.ensure_future(self._probe_forever())
        now = time.monotonic()
        n = len(self._endpoints)
        start = next(self._rr)
        candidates = [self._endpoints[(start + i) % n] for i in range(n)]
        for ep in candidates:
            if ep.answering and ep.ejected_until <= now and not (avoid and ep.address in avoid):
                return ep
        # Everything is out of use (or avoided): take the one that comes back first.
        return min(candidates, key=lambda e: (avoid is not None and e.address in avoid,
                                              not e.answering, e.ejected_until))

    def _eject(self, ep: _Endpoint, err: grpc.aio.AioRpcError) -> None:
        if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            if ep.ejected_until <= time.monotonic():
                log.warning("etcd endpoint %s out of use for %.1fs: %s", ep.address,
                            self.eject_seconds, err.code().name)
            ep.ejected_until = time.monotonic() + self.eject_seconds
            self._tell_ejected()

    def _tell_ejected(self) -> None:
        """Call each watch stream's listener, once an endpoint is out of use."""
        for listener in list(self._eject_listeners):
            listener()

    def healthy_endpoints(self) -> list[str]:
        now = time.monotonic()
        return [e.address for e in self._endpoints if e.answering and e.ejected_until <= now]

    # -- probing ----------------------------------------------------------------------

    async def _probe_forever(self) -> None:
        # One loop per endpoint: a slow one's long probe delays no other's.
        await asyncio.gather(*(self._probe_one_forever(ep) for ep in self._endpoints))

    async def _probe_one_forever(self, ep: _Endpoint) -> None:
        while True:  # ends with the store (cancelled by close)
            await asyncio.sleep(self.probe_interval)
            await self._probe(ep)

    async def probe_endpoints(self) -> list[tuple[str, bool]]:
        """Probe every endpoint once, now (the prober does it every `probe_interval`):
        (endpoint, answered) each. One that does not answer is out of use and its calls
        are abandoned; one that answers again is back (once its ejection, if any, ran out).
        """
        return list(await asyncio.gather(*(self._probe(ep) for ep in self._endpoints)))

    def probe_deadline(self) -> float:
        """How long the prober waits for an endpoint before it counts as silent:
        `probe_timeout`, or more while every member answers slowly (PROBE_SLOWNESS)."""
        pace = min((max(e.answers) for e in self._endpoints if e.answering and e.answers),
                   default=0.0)
        return min(max(self.probe_timeout, PROBE_SLOWNESS * pace),
                   max(self.probe_timeout, PROBE_TIMEOUT_MAX))

    async def _probe(self, ep: _Endpoint) -> tuple[str, bool]:
        answered = True
        # The token the calls use, if one was fetched: a probe never fetches one itself.
        metadata = (("token", self._token),) if self._token else None
        deadline = self.probe_deadline()
        started = time.monotonic()
        try:
            resp = await ep.kv.Range(rpc.RangeRequest(key=_PROBE_KEY, count_only=True),
                                     timeout=deadline, metadata=metadata)
        except grpc.aio.AioRpcError as err:
            # Refused (auth, permission) is an answer; only silence or no connection is not.
            answered = err.code() not in (grpc.StatusCode.UNAVAILABLE,
                                          grpc.StatusCode.DEADLINE_EXCEEDED)
        else:
            self._saw_term(int(resp.header.raft_term))
        if answered:
            ep.answers.append(time.monotonic() - started)
        if ep.answering and not answered:
            log.warning("etcd endpoint %s out of use: no answer to a probe within %.1fs; "
                        "abandoning its %d call(s)", ep.address, deadline, len(ep.calls))
            # As a deadline would: the endpoint is out of use (`_eject`).
            self._abandon(ep, ep.calls, grpc.StatusCode.DEADLINE_EXCEEDED, ABANDONED)
            ep.answering = False
            self._tell_ejected()  # once it is out of use: each watch checks its own
        elif answered and not ep.answering:
            log.info("etcd endpoint %s answers probes again", ep.address)
        ep.answering = answered
        return ep.address, answered

    def _abandon(self, ep: _Endpoint, calls: Iterable[grpc.aio.Call],
                 code: grpc.StatusCode, why: str) -> None:
        """End `calls` now: each fails with `code` and `why` (`_call`)."""
        for call in list(calls):
            ep.abandoned[call] = (code, why)
            call.cancel()

    def _saw_term(self, term: int) -> None:
        """An answer carried raft term `term`: a higher one than known means an election
        (with pre-vote, one a majority joined), and the calls sent before it get one probe
        deadline to be answered."""
        if term <= self.term:
            return
        known, self.term = self.term, term
        if known and self._term_watch is None:
            self._term_watch = asyncio.ensure_future(self._end_older_calls())

    async def _end_older_calls(self) -> None:
        try:
            await asyncio.sleep(self.probe_deadline())
            for ep in self._endpoints:
                older = [call for call, term in ep.calls.items() if term < self.term]
                if older:
                    log.warning("etcd elected a leader (term %d): abandoning %d call(s) "
                                "sent to %s before it", self.term, len(older), ep.address)
                    # Cancelled, not timed out: the endpoint answers (no `_eject`);
                    # reads go again, writes come back unknown.
                    self._abandon(ep, older, grpc.StatusCode.CANCELLED, SUPERSEDED)
        finally:
            self._term_watch = None

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
                answer = await self._call(ep, getattr(getattr(ep, service), method)(
                    request, timeout=timeout or self.timeout, metadata=metadata))
            except grpc.aio.AioRpcError as err:
                last = err
                if not renewed and metadata and _auth_expired(err):
                    # Refused before it was applied: safe to send again, writes too.
                    renewed = True
                    metadata = await self._metadata(renew=True)
                    attempts += 1
                    continue
                if _no_space(err):
                    # Refused whole, and every member would say the same: not transient.
                    raise StorageFull(f"etcd {method} refused: {err.details()}") from None
                self._eject(ep, err)
                if err.code() not in _RETRYABLE:
                    break
            else:
                if service in _QUORUM_SERVICES and not (
                        method == "Range" and getattr(request, "serializable", False)):
                    self.answered_at = time.monotonic()
                self._saw_term(int(answer.header.raft_term))  # type: ignore[attr-defined]
                return answer
        assert last is not None
        failed = (DeadlineExceeded if last.code() is grpc.StatusCode.DEADLINE_EXCEEDED
                  else StoreError)
        raise failed(f"etcd {method} failed: {last.code().name}: {last.details()}")

    async def _call(self, ep: _Endpoint, call: grpc.aio.UnaryUnaryCall) -> object:
        """Await `call` on `ep`; abandoned by the prober, it fails as `_abandon` said."""
        ep.calls[call] = self.term
        try:
            return await call
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if call not in ep.abandoned or (task is not None and task.cancelling()):
                raise  # our caller was cancelled, not the call
            self.abandoned_calls += 1
            code, why = ep.abandoned[call]
            raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                       why) from None
        finally:
            ep.calls.pop(call, None)
            ep.abandoned.pop(call, None)

    async def txn(self, compare: Sequence[rpc.Compare], success: Sequence[rpc.RequestOp],
                  failure: Sequence[rpc.RequestOp] = (), *, retry: bool = False
                  ) -> rpc.TxnResponse:
        """One transaction. `retry=True` only for transactions that write nothing.

        Raises StorageFull when etcd's backend quota is full: nothing applied, except for
        the write that crossed the quota, which etcd applies and answers "full" all the
        same (callers that can tell read back; see `errors.StorageFull`).
        """
        request = rpc.TxnRequest(compare=list(compare), success=list(success),
                                 failure=list(failure))
        if not request.compare:  # with no guard, the failure branch never runs
            probe = _quota_probe(request)
            if probe is not None:
                request.failure.append(probe)
        return await self._unary("kv", "Txn", request, retry=retry)  # type: ignore[return-value]

    async def range(self, key: str, range_end: bytes | None = None, *, limit: int = 0,
                    revision: int = 0, keys_only: bool = False, count_only: bool = False,
                    serializable: bool = False, descending: bool = False,
                    min_mod_revision: int = 0, max_mod_revision: int = 0,
                    sort_by_mod: bool = False) -> rpc.RangeResponse:
        """A range read, linearizable unless `serializable`; retried on another endpoint.

        `descending` returns keys in reverse order (with `limit`: the last ones).
        `min_mod_revision`/`max_mod_revision` keep the keys last modified in those bounds
        (0: none); `sort_by_mod` orders them by mod revision, oldest first (ties in no
        set order). etcd reads the whole range for either, then filters, sorts and cuts
        at `limit`: their cost is the range's, not the answer's.
        """
        request = rpc.RangeRequest(key=_b(key), range_end=range_end or b"", limit=limit,
                                   revision=revision, keys_only=keys_only,
                                   count_only=count_only, serializable=serializable,
                                   min_mod_revision=min_mod_revision,
                                   max_mod_revision=max_mod_revision)
        if descending:
            request.sort_order = rpc.RangeRequest.DESCEND
            request.sort_target = rpc.RangeRequest.KEY
        elif sort_by_mod:
            request.sort_order = rpc.RangeRequest.ASCEND
            request.sort_target = rpc.RangeRequest.MOD
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
        """Every key under `prefix` at one revision, read in pages. Returns (kvs, revision).

        A page that runs out of its deadline is asked again four times smaller, down to
        `MIN_SCAN_PAGE` (the same revision: nothing is read twice or missed): a busy
        member may take longer than a deadline to send 5,000 full records, and failing
        a whole backup or audit for it would help nobody."""
        out: list[KV] = []
        start = _b(prefix)
        end = prefix_end(prefix)
        while True:
            try:
                resp = await self.range(start.decode(), end, limit=page, revision=revision,
                                        keys_only=keys_only)
            except DeadlineExceeded:
                if page <= MIN_SCAN_PAGE:
                    raise
                page = max(MIN_SCAN_PAGE, page // 4)
                log.warning("etcd scan of %s: a page ran out of its deadline; reading "
                            "%d keys a page from now on", prefix, page)
                continue
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

    async def lease_keep_alive(self, lease_id: int) -> int:
        """Renew a lease once: its TTL in seconds from now, 0 if it has expired."""
        request = rpc.LeaseKeepAliveRequest(ID=lease_id)
        last: grpc.aio.AioRpcError | None = None
        for _ in range(len(self._endpoints) + 1):
            ep = self._pick()
            self.requests += 1
            call = ep.lease.LeaseKeepAlive(iter([request]), timeout=self.timeout,
                                           metadata=await self._metadata())
            try:
                resp = await call.read()
            except grpc.aio.AioRpcError as err:
                last = err
                self._eject(ep, err)
                if err.code() not in _RETRYABLE:
                    break
                continue
            finally:
                call.cancel()
            return 0 if resp is grpc.aio.EOF else int(resp.TTL)
        assert last is not None
        raise StoreError(f"etcd LeaseKeepAlive failed: {last.code().name}: {last.details()}")

    async def lease_revoke(self, lease_id: int) -> None:
        """Revoke a lease now, deleting its keys; a lease already gone is no error."""
        try:
            await self._unary("lease", "LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease_id),
                              retry=True)
        except StoreError as err:
            if "lease not found" not in str(err):
                raise

    async def compact(self, revision: int, *, physical: bool = False) -> bool:
        """Drop etcd's history before `revision`: True, or False if it was dropped already.

        Watches still behind `revision` end with Compacted. `physical` waits until the
        backend has freed the space too (the file shrinks only with a defragmentation).
        """
        try:
            await self._unary("kv", "Compact", rpc.CompactionRequest(
                revision=revision, physical=physical), retry=True)
        except StoreError as err:
            if _ALREADY_COMPACTED in str(err):
                return False
            raise
        return True

    async def storage_usage(self, quota: int = DEFAULT_QUOTA_BYTES) -> list[StorageUsage]:
        """Each answering member's backend size against `quota` (the --quota-backend-bytes
        the members run with), with its active alarms; a member silent for a second is
        left out."""
        metadata = await self._metadata()

        async def one(ep: _Endpoint) -> tuple[str, rpc.StatusResponse] | None:
            try:
                return ep.address, await ep.maintenance.Status(
                    rpc.StatusRequest(), timeout=min(1.0, self.timeout), metadata=metadata)
            except grpc.aio.AioRpcError:
                return None

        answers = [a for a in await asyncio.gather(*(one(e) for e in self._endpoints)) if a]
        alarms: dict[int, list[str]] = {}
        if answers:
            resp = await self._unary("maintenance", "Alarm", rpc.AlarmRequest(
                action=rpc.AlarmRequest.GET), retry=True)
            for a in resp.alarms:  # type: ignore[attr-defined]
                alarms.setdefault(a.memberID, []).append(rpc.AlarmType.Name(a.alarm))
        return [StorageUsage(address, s.dbSize, s.dbSizeInUse, quota,
                             tuple(alarms.get(s.header.member_id, ())))
                for address, s in answers]

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

    async def watch(self, prefix: str, start_revision: int, *, deletes_only: bool = False
                    ) -> AsyncIterator[tuple[list[WatchEvent], int]]:
        """Events under `prefix` from `start_revision` on, as (events, revision) batches
        (`deletes_only`: etcd sends deletions alone).

        Survives member failures: the stream moves to another endpoint and resumes
        after the last revision it delivered. Raises Compacted when the history it
        needs is gone. Runs until cancelled.
        """
        next_rev = start_revision
        backoff = WATCH_RESUME.delay
        auth_failed = False
        while True:
            ep = self._pick()
            queue: asyncio.Queue[rpc.WatchRequest | None] = asyncio.Queue()
            queue.put_nowait(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
                key=_b(prefix), range_end=prefix_end(prefix), start_revision=next_rev,
                progress_notify=True,
                filters=[rpc.WatchCreateRequest.NOPUT] if deletes_only else [])))

            async def requests(queue: asyncio.Queue = queue) -> AsyncIterator[rpc.WatchRequest]:
                while (req := await queue.get()) is not None:
                    yield req

            call = ep.watch.Watch(requests(), metadata=await self._metadata(renew=auth_failed))
            auth_failed = False
            moved = False

            def move_if_ours(call: grpc.aio.StreamStreamCall = call,
                             address: str = ep.address) -> None:
                # Some endpoint went out of use: if it is this stream's, end the stream
                # (its read raises CancelledError) and resume on another. A callback, not
                # a task raced against every read: an event costs the watch one await.
                nonlocal moved
                if not moved and address not in self.healthy_endpoints():
                    moved = True
                    call.cancel()

            self._eject_listeners.append(move_if_ours)
            move_if_ours()  # it may have gone out of use while the metadata was awaited
            try:
                while True:
                    try:
                        resp = await call.read()
                    except asyncio.CancelledError:
                        task = asyncio.current_task()
                        if moved and task is not None and not task.cancelling():
                            break  # the stream's endpoint went out of use
                        raise
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
                        # Resume after it, so that a quiet prefix whose stream breaks
                        # does not ask for history a compaction may have dropped.
                        next_rev = resp.header.revision + 1
                        yield [], resp.header.revision
            except grpc.aio.AioRpcError as err:
                if _auth_expired(err):
                    auth_failed = True
                else:
                    self._eject(ep, err)
                log.info("watch on %s broke (%s); resuming at %d", ep.address,
                         err.code().name, next_rev)
            finally:
                self._eject_listeners.remove(move_if_ours)
                queue.put_nowait(None)
                call.cancel()
            await asyncio.sleep(backoff)
            backoff = min(backoff * WATCH_RESUME.factor, WATCH_RESUME.max_delay)
