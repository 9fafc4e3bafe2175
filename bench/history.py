"""What the clients were told, and when: a history of operations, to check against etcd.

A fault test or a bench run records every client-visible operation into a `History`:
its kind (book, release, attach, detach, move), what was asked (the Private Network or
source, the IPs, the resource, a specific address, the Idempotency-Key), when it was
invoked and when its answer came back, the outcome and the answer. Afterwards
`bench.history_check.check(history.operations, final)` reads the whole history against
`FinalState`, etcd's state read once at the end (`read_final_state`).

    history = History()
    ip = await history.call("book", ipam.book(ask), pool=pn.id, idempotency_key=key)
    ...
    verdict = check(history.operations, await read_final_state(ipam.store, ipam.keys))
    assert verdict.ok, verdict

Outcomes, as a client must read its answers:

    ok       it happened: the call returned, or the gateway answered 2xx
    fail     it did not happen: an `IPAMError` other than `OutcomeUnknown` (a request
             that fails writes nothing, DESIGN.md section 5), a 4xx answer, or the
             503 of a full datastore (its message says so: refused whole)
    unknown  the client cannot tell: `OutcomeUnknown`, a cancelled or timed-out call,
             any other 503 or 5xx, a broken connection. It took effect once or not at all;
             retries with the same Idempotency-Key are one request.

Timestamps are `time.monotonic()` of the recording process: every recorder of one
history must share that clock (threads of one process do).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from allocator.audit import audit
from allocator.errors import IPAMError, OutcomeUnknown
from allocator.keys import Keys
from allocator.store import Store
from gateway.errors import STORAGE_FULL

OK, FAIL, UNKNOWN = "ok", "fail", "unknown"
# What a client looks for at the start of a 503's message (docs/operations.md).
STORAGE_FULL_PREFIX = STORAGE_FULL.partition(":")[0]
KINDS = ("book", "release", "attach", "detach", "move")

T = TypeVar("T")


@dataclass(slots=True)
class Operation:
    """One attempt a client made, and what it was told (slots: a soak keeps millions)."""

    kind: str
    invoked: float
    client: str = ""
    # -- what was asked
    pool: str | None = None  # book: the Private Network (or subnet, zonal pool) asked from
    ip_ids: tuple[str, ...] = ()  # release (one, or a set), attach, detach, move: the IPs
    resource: str | None = None  # book, attach: the resource id; move: the target (None: none)
    address: str | None = None  # book: a specific address asked for
    idempotency_key: str | None = None
    # -- what came back
    completed: float | None = None  # None while in flight: checked as unknown
    outcome: str | None = None
    answer_id: str | None = None  # book: the IP answered
    answer_address: str | None = None  # book: its address
    error: str | None = None  # fail or unknown: the error type or HTTP status and type

    @property
    def settled(self) -> str:
        """The outcome; an operation still in flight counts as unknown."""
        return self.outcome or UNKNOWN

    def describe(self) -> str:
        what = self.pool if self.kind == "book" else ",".join(self.ip_ids)
        extra = f" key={self.idempotency_key}" if self.idempotency_key else ""
        told = self.answer_id and f" -> {self.answer_id} {self.answer_address}" or ""
        err = f" ({self.error})" if self.error else ""
        end = f"{self.completed:.3f}" if self.completed is not None else "..."
        return (f"{self.client or '-'} {self.kind} {what}{extra} [{self.invoked:.3f}, {end}] "
                f"{self.settled}{told}{err}")


def outcome_of_error(err: BaseException) -> str:
    """How a client must read an exception raised by the allocator (see the docstring)."""
    if isinstance(err, OutcomeUnknown):
        return UNKNOWN
    if isinstance(err, IPAMError):
        return FAIL
    return UNKNOWN  # cancelled, timed out, or anything unexpected: it may have applied


def outcome_of_status(status: int, body: Any = None) -> str:
    """How a client must read an HTTP status and its body (0: no answer at all)."""
    if 200 <= status < 300:
        return OK
    if 400 <= status < 500 or (status == 503 and _storage_full(body)):
        return FAIL  # the quota refused a change whole: nothing of it applied
    return UNKNOWN  # another 503 or 5xx, a timeout, a broken connection


def _storage_full(body: Any) -> bool:
    return isinstance(body, dict) and str(body.get("message", "")).startswith(
        STORAGE_FULL_PREFIX)


def _answer_of(result: Any) -> tuple[str | None, str | None]:
    """(IP id, address) of an answer: an `IPRecord`, a JSON IP, or nothing."""
    if isinstance(result, dict):
        return result.get("id"), result.get("address")
    return getattr(result, "id", None), getattr(result, "address", None)


class History:
    """Every operation of a run, in the order they were invoked."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.operations: list[Operation] = []

    def invoke(self, kind: str, *, client: str = "", pool: str | None = None,
               ip_ids: Iterable[str] = (), ip_id: str | None = None,
               resource: str | None = None, address: str | None = None,
               idempotency_key: str | None = None) -> Operation:
        """Note that an operation starts now; settle it with `ok`, `failed` or `answered`."""
        if kind not in KINDS:
            raise ValueError(f"unknown operation kind {kind!r}")
        ips = tuple(ip_ids) + ((ip_id,) if ip_id else ())
        op = Operation(kind, self.clock(), client, pool, ips, resource, address,
                       idempotency_key)
        self.operations.append(op)
        return op

    def ok(self, op: Operation, result: Any = None) -> None:
        """The operation succeeded with `result` (an `IPRecord`, a JSON IP, or None)."""
        op.completed, op.outcome = self.clock(), OK
        op.answer_id, op.answer_address = _answer_of(result)

    def failed(self, op: Operation, err: BaseException) -> None:
        """The operation raised `err`: failed or unknown, as `outcome_of_error` reads it."""
        op.completed, op.outcome = self.clock(), outcome_of_error(err)
        op.error = type(err).__name__

    def answered(self, op: Operation, status: int, body: Any = None) -> str:
        """The gateway answered `status` with `body` (0: no answer); the outcome."""
        op.completed, op.outcome = self.clock(), outcome_of_status(status, body)
        if op.outcome == OK:
            op.answer_id, op.answer_address = _answer_of(body)
        else:
            kind = body.get("type", "?") if isinstance(body, dict) else "?"
            op.error = f"{status}:{kind}"
        return op.outcome

    def record(self, kind: str, invoked: float, completed: float, status: int,
               body: Any = None, **request: Any) -> Operation:
        """An operation its recorder timed itself: the load generator keeps bare tuples
        while it measures and hands them over afterwards. `invoked` and `completed` must
        be `time.monotonic()` readings (one clock for every process of a machine)."""
        op = self.invoke(kind, **request)
        self.answered(op, status, body)
        op.invoked, op.completed = invoked, completed
        return op

    async def call(self, kind: str, call: Awaitable[T], **request: Any) -> T:
        """Await `call`, recorded as one operation; its result, or its exception re-raised."""
        op = self.invoke(kind, **request)
        try:
            result = await call
        except BaseException as err:
            self.failed(op, err)
            raise
        self.ok(op, result)
        return result

    def counts(self) -> dict[str, dict[str, int]]:
        """Operations by kind and outcome."""
        out: dict[str, Counter[str]] = {}
        for op in self.operations:
            out.setdefault(op.kind, Counter())[op.settled] += 1
        return {k: dict(v) for k, v in out.items()}



# -- the state at the end -----------------------------------------------------------------


@dataclass(frozen=True)
class StoredIP:
    """One IP record as etcd holds it at the end."""

    address: str
    pools: frozenset[str]  # its Private Network (if any) and its source
    resource: str | None  # the id of the resource it is attached to


@dataclass
class FinalState:
    """etcd's state once every client stopped: IP records, idempotency keys, the audit."""

    ips: dict[str, StoredIP] = field(default_factory=dict)
    idempotency: dict[str, str] = field(default_factory=dict)  # client key -> IP id
    problems: list[str] = field(default_factory=list)  # what `allocator.audit` found
    revision: int = 0


async def read_final_state(store: Store, keys: Keys) -> FinalState:
    """Every IP record and idempotency key under `keys.prefix` at one revision, and what
    `allocator.audit` finds wrong there (an address held twice, an index pointing nowhere).

    Idempotency keys are indexed by the client's key alone, whatever their scope: a
    history must not reuse one key for two requests.
    """
    kvs, revision = await store.scan(keys.prefix)
    final = FinalState(revision=revision)
    for kv in kvs:
        kind, parts = keys.kind(kv.key)
        if kind == "ip":
            rec = json.loads(kv.value)
            res = rec.get("resource")
            final.ips[rec["id"]] = StoredIP(
                rec["address"],
                frozenset(p for p in (rec.get("private_network_id"), rec["source_id"]) if p),
                res["id"] if res else None)
        elif kind == "idem" and len(parts) >= 3:
            result = json.loads(kv.value).get("result") or {}
            final.idempotency["/".join(parts[2:])] = result.get("id", "")
    report = await audit(store, keys)
    for name in ("duplicate_addresses", "addresses_without_record", "records_without_address",
                 "bad_index_keys", "records_missing_index", "reserved_held"):
        final.problems += [f"{name}: {item}" for item in getattr(report, name)]
    return final

