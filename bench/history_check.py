"""The rules a history of operations must keep, read against etcd's state at the end.

Attempts that share an Idempotency-Key (same kind, same IPs) are one request: it is
`ok` if one attempt was answered with success, else `unknown` if one attempt was left
unknown (or never answered), else `fail`. Time is the recorders' monotonic clock.

(a) No address held twice. An IP certainly holds its address from the moment its
    booking was acknowledged until its release was invoked (for ever if it was not):
    the commit happened before the one answer and the delete after the other request.
    Two IPs of one pool with one address whose spans overlap held it at the same
    instant. (Counting from the booking's invoke to the release's completion would
    flag a booking that wins the address of a release still in flight, a correct
    history: see `test_a_release_and_a_booking_of_its_address_racing...`.)
(b) An acknowledged release frees the address: the IP is gone from etcd, and no
    operation on it invoked after the release was acknowledged succeeds. A later
    booking may get the address: (a) lets it, and `reused_addresses` counts how often.
(c) An answer is the truth, or says it does not know. The successful answers of one
    request name one IP. A request answered unknown took effect once or not at all:
    with a key, etcd's idempotency key names the one IP it made (settled: applied),
    and that IP is still there unless a release was asked; without a key, a pool
    holds no more IPs that no acknowledged booking explains than it had such unknown
    bookings. A booking answered as failed took effect not at all: its key is absent.
(d) Nothing acknowledged is lost: every acknowledged booking with no release asked
    (acknowledged or unknown) is in etcd, in its pool, with the address answered.
(e) An IP's attachment in etcd is one that its last acknowledged attach, detach or
    move, or a change overlapping that one, or a change answered unknown, may have
    left (the booking's own resource when none was acknowledged).
(audit) What `allocator.audit` found in the final state.

The checker is strict on purpose: every write under the prefix must be recorded (an
IP nobody booked is a violation of (c)), and one pool must be named one way.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .history import FAIL, OK, UNKNOWN, FinalState, Operation

SHOWN = 30  # violations written out by str(verdict); all are kept


@dataclass(frozen=True)
class Violation:
    """One broken rule, with the operations that show it."""

    rule: str  # a, b, c, d, e, audit
    text: str

    def __str__(self) -> str:
        return f"({self.rule}) {self.text}"


@dataclass
class Verdict:
    """What the checker found; `ok` when no rule was broken."""

    violations: list[Violation] = field(default_factory=list)
    operations: int = 0
    requests: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> outcome -> n
    unknown_bookings: dict[str, int] = field(default_factory=dict)  # applied, not_applied, ...
    reused_addresses: int = 0  # bookings that got an address an earlier IP had released

    @property
    def ok(self) -> bool:
        return not self.violations

    def add(self, rule: str, text: str) -> None:
        self.violations.append(Violation(rule, text))

    def summary(self) -> dict[str, Any]:
        """The verdict as JSON: counts, and the first violations."""
        return {"ok": self.ok, "operations": self.operations, "requests": self.requests,
                "unknown_bookings": self.unknown_bookings,
                "reused_addresses": self.reused_addresses,
                "violations": len(self.violations),
                "examples": [str(v) for v in self.violations[:SHOWN]]}

    def __str__(self) -> str:
        head = (f"history of {self.operations} operations: "
                f"{'clean' if self.ok else f'{len(self.violations)} violations'}; "
                f"requests {self.requests}; unknown bookings {self.unknown_bookings}; "
                f"addresses booked again after a release: {self.reused_addresses}")
        lines = [head, *(f"  {v}" for v in self.violations[:SHOWN])]
        if len(self.violations) > SHOWN:
            lines.append(f"  ... and {len(self.violations) - SHOWN} more")
        return "\n".join(lines)


@dataclass
class _Request:
    """The attempts of one request (several when retried with one Idempotency-Key)."""

    attempts: list[Operation]

    @property
    def first(self) -> Operation:
        return self.attempts[0]

    @property
    def kind(self) -> str:
        return self.first.kind

    @property
    def key(self) -> str | None:
        return self.first.idempotency_key

    @property
    def ip_ids(self) -> tuple[str, ...]:
        return self.first.ip_ids

    @property
    def outcome(self) -> str:
        outcomes = {a.settled for a in self.attempts}
        return OK if OK in outcomes else UNKNOWN if UNKNOWN in outcomes else FAIL

    @property
    def invoked(self) -> float:
        return min(a.invoked for a in self.attempts)

    @property
    def acked(self) -> float:
        """When it was first acknowledged (infinity if never)."""
        return min((a.completed for a in self.attempts
                    if a.outcome == OK and a.completed is not None), default=math.inf)

    def answers(self) -> set[tuple[str | None, str | None]]:
        return {(a.answer_id, a.answer_address) for a in self.attempts if a.outcome == OK}

    def effect(self) -> str | None:
        """The resource an attach, detach or move leaves the IP attached to."""
        return None if self.kind == "detach" else self.first.resource

    def describe(self) -> str:
        return " / ".join(a.describe() for a in self.attempts)


def requests_of(ops: Iterable[Operation]) -> list[_Request]:
    """Attempts grouped into requests: one per Idempotency-Key (per kind and IPs)."""
    grouped: dict[Any, _Request] = {}
    for op in ops:
        group: Any = ((op.kind, op.idempotency_key, op.ip_ids) if op.idempotency_key
                      else id(op))
        if group in grouped:
            grouped[group].attempts.append(op)
        else:
            grouped[group] = _Request([op])
    return list(grouped.values())


@dataclass
class _Booked:
    request: _Request
    ip_id: str
    address: str
    pool: str


def check(ops: Sequence[Operation], final: FinalState) -> Verdict:
    """Every rule of the module docstring, over `ops` against `final`."""
    verdict = Verdict(operations=len(ops))
    requests = requests_of(ops)
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for r in requests:
        counts[r.kind][r.outcome] += 1
    verdict.requests = {k: dict(v) for k, v in sorted(counts.items())}
    books = [r for r in requests if r.kind == "book"]
    changes: dict[str, list[_Request]] = defaultdict(list)  # IP -> its other requests
    for r in requests:
        for ip in r.ip_ids if r.kind != "book" else ():
            changes[ip].append(r)

    booked = _acknowledged_bookings(books, verdict)
    made = _unknown_bookings(books, final, verdict)
    gone_from: dict[str, float] = {}  # IP -> when its first release (not failed) was asked
    released_at: dict[str, float] = {}  # IP -> when a release of it was first acknowledged
    for ip, rs in changes.items():
        for r in rs:
            if r.kind == "release" and r.outcome != FAIL:
                gone_from[ip] = min(gone_from.get(ip, math.inf), r.invoked)
                if r.outcome == OK:
                    released_at[ip] = min(released_at.get(ip, math.inf), r.acked)
    end = max((a.completed or a.invoked for a in ops), default=0.0)

    _held_twice(booked, made, final, gone_from, end, verdict)
    _release_frees(released_at, changes, final, verdict)
    _unknown_once(books, booked, made, final, gone_from, verdict)
    _nothing_lost(booked, final, gone_from, verdict)
    _attachments(booked, made, changes, final, verdict)
    for problem in final.problems:
        verdict.add("audit", problem)
    return verdict


def _acknowledged_bookings(books: list[_Request], verdict: Verdict) -> dict[str, _Booked]:
    """IP -> its acknowledged booking; (c) one request, one IP; one IP, one request."""
    booked: dict[str, _Booked] = {}
    for r in books:
        if r.outcome != OK:
            continue
        answers = sorted(r.answers(), key=str)
        if len(answers) > 1:
            verdict.add("c", f"one Idempotency-Key answered with {len(answers)} IPs: "
                             f"{r.describe()}")
        ip, address = answers[0]
        if ip is None or address is None:
            verdict.add("c", f"a booking acknowledged without an IP: {r.describe()}")
            continue
        if ip in booked:
            verdict.add("c", f"two booking requests answered with IP {ip}: "
                             f"{booked[ip].request.describe()} and {r.describe()}")
            continue
        booked[ip] = _Booked(r, ip, address, r.first.pool or "")
    return booked


def _unknown_bookings(books: list[_Request], final: FinalState,
                      verdict: Verdict) -> dict[str, _Request]:
    """IP -> the unknown booking etcd's idempotency key says made it; (c) a failed
    booking whose key is in etcd took effect. Counts how unknown bookings settled."""
    made: dict[str, _Request] = {}
    settled: Counter[str] = Counter()
    for r in books:
        if r.outcome == OK:
            continue
        ip = final.idempotency.get(r.key) if r.key else None
        if r.outcome == FAIL:
            if ip is not None:  # flagged once here, then checked as made like any other
                verdict.add("c", f"a booking answered as failed made IP {ip}: {r.describe()}")
                made[ip] = r
            continue
        if not r.key:
            settled["undecided_without_key"] += 1
        elif ip is None:
            settled["not_applied"] += 1
        else:
            settled["applied"] += 1
            made[ip] = r
    verdict.unknown_bookings = dict(settled)
    return made


def _held_twice(booked: dict[str, _Booked], made: dict[str, _Request], final: FinalState,
                gone_from: dict[str, float], end: float, verdict: Verdict) -> None:
    """(a) no two IPs of one pool hold one address over overlapping certain spans."""
    spans: dict[tuple[str, str], list[tuple[float, float, str]]] = defaultdict(list)
    for ip, b in booked.items():
        spans[(b.pool, b.address)].append((b.request.acked, gone_from.get(ip, math.inf), ip))
    for ip, r in made.items():  # made by an unknown booking: certainly held at the end
        stored = final.ips.get(ip)
        if stored is not None and ip not in gone_from:
            spans[(r.first.pool or "", stored.address)].append((end, math.inf, ip))
    for (pool, address), held in spans.items():
        held.sort()
        verdict.reused_addresses += len(held) - 1
        reach, holder = -math.inf, ""
        for start, stop, ip in held:
            if start >= stop:  # released before it was acknowledged: no certain span
                continue
            if start < reach:
                verdict.add("a", f"{address} in {pool} held by {holder} and {ip} at once "
                                 f"(from {start:.3f})")
            if stop > reach:
                reach, holder = stop, ip


def _release_frees(released_at: dict[str, float], changes: dict[str, list[_Request]],
                   final: FinalState, verdict: Verdict) -> None:
    """(b) a released IP is gone, and nothing done to it afterwards succeeds."""
    for ip, t in released_at.items():
        if ip in final.ips:
            verdict.add("b", f"IP {ip} ({final.ips[ip].address}) was released, acknowledged "
                             f"at {t:.3f}, and is still in etcd")
        for r in changes[ip]:
            late = [a for a in r.attempts if a.outcome == OK and a.invoked > t]
            if late:
                verdict.add("b", f"IP {ip} was released at {t:.3f}, then "
                                 f"{late[0].describe()}")


def _unknown_once(books: list[_Request], booked: dict[str, _Booked],
                  made: dict[str, _Request], final: FinalState, gone_from: dict[str, float],
                  verdict: Verdict) -> None:
    """(c) an unknown booking took effect once or not at all."""
    for ip, r in made.items():
        if ip not in final.ips and ip not in gone_from:
            verdict.add("c", f"IP {ip} was made by an unknown booking and vanished, with no "
                             f"release asked: {r.describe()}")
    pools = {r.first.pool for r in books if r.first.pool}
    allowance: Counter[str] = Counter(r.first.pool for r in books
                                      if r.outcome == UNKNOWN and not r.key and r.first.pool)
    unexplained: dict[str, list[str]] = defaultdict(list)
    for ip, stored in final.ips.items():
        hit = stored.pools & pools
        if hit and ip not in booked and ip not in made:
            unexplained[min(hit)].append(ip)
    for pool, ips in sorted(unexplained.items()):
        if len(ips) > allowance[pool]:
            verdict.add("c", f"{len(ips)} IPs in {pool} that no acknowledged booking made, "
                             f"for {allowance[pool]} unknown bookings without a key: "
                             f"{', '.join(sorted(ips)[:5])}")


def _nothing_lost(booked: dict[str, _Booked], final: FinalState,
                  gone_from: dict[str, float], verdict: Verdict) -> None:
    """(d) every acknowledged booking that nobody released is in etcd, as answered."""
    for ip, b in booked.items():
        if ip in gone_from:
            continue
        stored = final.ips.get(ip)
        if stored is None:
            verdict.add("d", f"acknowledged IP {ip} ({b.address}) is not in etcd: "
                             f"{b.request.describe()}")
        elif stored.address != b.address or (b.pool and b.pool not in stored.pools):
            verdict.add("d", f"IP {ip} was answered as {b.address} in {b.pool} and is stored "
                             f"as {stored.address} in {sorted(stored.pools)}")


def _attachments(booked: dict[str, _Booked], made: dict[str, _Request],
                 changes: dict[str, list[_Request]], final: FinalState,
                 verdict: Verdict) -> None:
    """(e) each IP's resource in etcd is one a change not superseded may have left."""
    for ip, stored in final.ips.items():
        origin = booked[ip].request if ip in booked else made.get(ip)
        if origin is None:
            continue
        lifecycle = [r for r in changes.get(ip, ()) if r.kind in ("attach", "detach", "move")
                     and r.outcome != FAIL]
        acked = [r for r in lifecycle if r.outcome == OK]
        if acked:
            last = max(acked, key=lambda r: r.acked)
            # What completed before the last acknowledged change began is behind it.
            allowed = {r.effect() for r in lifecycle
                       if r.outcome == UNKNOWN or r.acked >= last.invoked}
        else:
            allowed = {origin.first.resource} | {r.effect() for r in lifecycle}
        if stored.resource not in allowed:
            told = "; ".join(r.describe() for r in lifecycle) or "no change"
            verdict.add("e", f"IP {ip} is attached to {stored.resource} in etcd, but only "
                             f"{sorted(map(str, allowed))} could be left by: {told}")
