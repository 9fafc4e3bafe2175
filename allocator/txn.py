"""Guarded transactions whose guards carry names, so a failure says which guard failed.

Every change of the allocator is one etcd transaction: guards (compares), the
writes to apply when they all hold, and, when one does not, reads of every
guarded key in the same round trip. `GuardedTxn` builds such a transaction with
a name on each guard; `TxnOutcome` decodes the answer by name:

    txn = GuardedTxn()
    txn.absent("address", addr_key).absent("ip", ip_key).present("source", meta_key)
    txn.put(addr_key, ip_id).put(ip_key, record_json)
    outcome = txn.outcome(response)
    if "address" in outcome.failed: ...          # someone else holds it
    outcome.found("ip")                          # the KV the failure branch read

A guard's failure read is taken at the transaction's own revision, so `failed` is
exact: it names the guards that did not hold, and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Self

from aetcd import rpc

from .store import KV, MAX_TXN_OPS, Store, kv_of, prefix_end

# The kinds of guard, and how a failure read tells whether each held.
_ABSENT, _PRESENT, _UNCHANGED, _EMPTY, _QUIET = "absent", "present", "unchanged", "empty", "quiet"
_EQUAL, _GREATER = rpc.Compare.EQUAL, rpc.Compare.GREATER
_CREATE, _VERSION = rpc.Compare.CREATE, rpc.Compare.VERSION
# Bytes a write or a guard adds to a request beyond its key and value (field tags and
# lengths, nested three deep): a bound, for packing requests under etcd's size limit.
_WRITE_OVERHEAD, _GUARD_OVERHEAD = 32, 48


def _b(key: str | bytes) -> bytes:
    return key.encode() if isinstance(key, str) else key


def put(key: str, value: str | bytes, lease: int = 0) -> rpc.RequestOp:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=_b(key), value=_b(value), lease=lease))


def get(key: str) -> rpc.RequestOp:
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=_b(key)))


def delete(key: str) -> rpc.RequestOp:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=_b(key)))


def nested(compare: Sequence[rpc.Compare], success: Sequence[rpc.RequestOp],
           failure: Sequence[rpc.RequestOp] = ()) -> rpc.RequestOp:
    """A transaction as one operation of an outer one (etcd >= 3.3)."""
    return rpc.RequestOp(request_txn=rpc.TxnRequest(
        compare=list(compare), success=list(success), failure=list(failure)))


class _Guard:
    """One named guard (a plain slotted class: a booking builds several, on the hot path)."""

    __slots__ = ("key", "kind", "name", "revision")

    def __init__(self, name: str, kind: str, key: str, revision: int = 0) -> None:
        self.name, self.kind, self.key, self.revision = name, kind, key, revision

    def compare(self) -> rpc.Compare:
        key = _b(self.key)
        if self.kind == _ABSENT:
            return rpc.Compare(key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE,
                               create_revision=0)
        if self.kind == _PRESENT:
            return rpc.Compare(key=key, result=rpc.Compare.GREATER,
                               target=rpc.Compare.VERSION, version=0)
        if self.kind == _UNCHANGED:
            return rpc.Compare(key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.MOD,
                               mod_revision=self.revision)
        if self.kind == _EMPTY:  # a range compare: no key under the prefix
            return rpc.Compare(key=key, range_end=prefix_end(key), result=rpc.Compare.EQUAL,
                               target=rpc.Compare.CREATE, create_revision=0)
        # _QUIET: nothing under the prefix was created or modified after `revision`
        return rpc.Compare(key=key, range_end=prefix_end(key), result=rpc.Compare.LESS,
                           target=rpc.Compare.MOD, mod_revision=self.revision + 1)

    def fill(self, txn: rpc.TxnRequest) -> None:
        """Add this guard's compare and failure read to `txn`, in place (the hot path:
        no message built to be copied)."""
        key = self.key.encode()
        kind = self.kind
        if kind == _ABSENT:
            txn.compare.add(key=key, result=_EQUAL, target=_CREATE, create_revision=0)
            txn.failure.add().request_range.key = key
        elif kind == _PRESENT:
            txn.compare.add(key=key, result=_GREATER, target=_VERSION, version=0)
            txn.failure.add().request_range.key = key
        else:
            txn.compare.append(self.compare())
            txn.failure.append(self.read())

    def read(self) -> rpc.RequestOp:
        if self.kind in (_EMPTY, _QUIET):
            return rpc.RequestOp(request_range=rpc.RangeRequest(
                key=_b(self.key), range_end=prefix_end(self.key), keys_only=True))
        return get(self.key)

    def held(self, kvs: list[KV]) -> bool:
        """Whether the guard held, judged from what its failure read found."""
        if self.kind == _ABSENT:
            return not kvs
        if self.kind == _PRESENT:
            return bool(kvs)
        if self.kind == _UNCHANGED:
            return (kvs[0].mod_revision if kvs else 0) == self.revision
        if self.kind == _EMPTY:
            return not kvs
        return all(kv.mod_revision <= self.revision for kv in kvs)


@dataclass(frozen=True)
class TxnOutcome:
    """What a guarded transaction did: applied, or which guards failed and what they read."""

    succeeded: bool
    failed: frozenset[str] = frozenset()
    reads: dict[str, list[KV]] = field(default_factory=dict)
    # The revision etcd gave the request: the mod revision of every key it wrote (0: unknown).
    revision: int = 0

    def found(self, name: str) -> KV | None:
        """The key a failed transaction read under `name` (a guard's or an extra read)."""
        kvs = self.reads.get(name)
        return kvs[0] if kvs else None



class GuardedTxn:
    """One guarded etcd transaction, built by name; see the module docstring.

    It holds plain data until it is sent: the committer builds every change of a request
    into that request's own message (`fill`), not one message per change to be copied
    into it (a booking's ten operations cost more to build as messages than the rest of
    its packing)."""

    def __init__(self) -> None:
        self._guards: list[_Guard] = []
        self._reads: list[tuple[str, str]] = []
        # (key, value, lease) of a put; (key, None, 0) of a delete.
        self._writes: list[tuple[str, bytes | None, int]] = []
        # Markers: {key: (value, the key that must exist for it to be written)}.
        self.marks: dict[str, tuple[str, str]] = {}

    # -- guards -------------------------------------------------------------------

    def absent(self, name: str, key: str) -> Self:
        """Guard `name`: `key` does not exist."""
        return self._guard(_Guard(name, _ABSENT, key))

    def present(self, name: str, key: str) -> Self:
        """Guard `name`: `key` exists."""
        return self._guard(_Guard(name, _PRESENT, key))

    def unchanged(self, name: str, key: str, mod_revision: int) -> Self:
        """Guard `name`: `key` was last modified at `mod_revision` (0: it does not exist)."""
        return self._guard(_Guard(name, _UNCHANGED, key, mod_revision))

    def prefix_empty(self, name: str, prefix: str) -> Self:
        """Guard `name`: no key starts with `prefix`."""
        return self._guard(_Guard(name, _EMPTY, prefix))

    def prefix_unchanged_since(self, name: str, prefix: str, revision: int) -> Self:
        """Guard `name`: no key under `prefix` was created or modified after `revision`."""
        return self._guard(_Guard(name, _QUIET, prefix, revision))

    def _guard(self, guard: _Guard) -> Self:
        self._guards.append(guard)
        return self

    def without(self, keys: set[str]) -> Self:
        """Drop the guards and writes on `keys` (a key both deleted and written in one
        transaction is refused by etcd: what stays the same keeps its key as it is)."""
        self._guards = [g for g in self._guards if g.key not in keys]
        self._writes = [w for w in self._writes if w[0] not in keys]
        return self

    # -- writes and extra reads -----------------------------------------------------

    def put(self, key: str, value: str | bytes, lease: int = 0) -> Self:
        self._writes.append((key, value.encode() if isinstance(value, str) else value, lease))
        return self

    def delete(self, key: str) -> Self:
        self._writes.append((key, None, 0))
        return self

    def mark(self, key: str, value: str, while_present: str) -> Self:
        """Write the marker `key`, whose revision alone means something ("a change may
        have happened here since"), so long as `while_present` exists.

        Markers are shared: a request that carries several changes writes each marker
        once, beside them, whether or not each change's guards hold (a marker written
        for nothing only costs its reader one more look). Without sharing, every release
        of a source would write its one `freed` key, and no two of them could ride one
        request."""
        self.marks[key] = (value, while_present)
        return self

    def read(self, name: str, key: str) -> Self:
        """On failure, also read `key` under `name` (no guard on it)."""
        self._reads.append((name, key))
        return self

    # -- the request and its answer -------------------------------------------------

    @property
    def guard_names(self) -> list[str]:
        return [g.name for g in self._guards]

    @property
    def written_keys(self) -> frozenset[str]:
        """Every key this transaction writes but its markers: changes sharing one must not
        share a request."""
        return frozenset(w[0] for w in self._writes)

    @property
    def writes(self) -> list[rpc.RequestOp]:
        """The writes, as operations (for a transaction sent by hand)."""
        return [put(k, v, lease) if v is not None else delete(k)
                for k, v, lease in self._writes]

    @property
    def write_count(self) -> int:
        return len(self._writes)

    @property
    def size(self) -> int:
        """A bound on the bytes this transaction adds to a request (`request().ByteSize()`
        or a little more), without building it."""
        return (sum(len(k) + len(v or b"") + _WRITE_OVERHEAD for k, v, _ in self._writes)
                + sum(2 * len(g.key) + _GUARD_OVERHEAD for g in self._guards)
                + sum(len(k) + _GUARD_OVERHEAD for _, k in self._reads))

    def fill(self, txn: rpc.TxnRequest) -> None:
        """Build this transaction into `txn` (a nested one of a request), in place, its
        markers left to the request (`marker_ops`)."""
        for g in self._guards:
            g.fill(txn)
        for _, k in self._reads:
            txn.failure.add().request_range.key = k.encode()
        success = txn.success
        for k, v, lease in self._writes:
            if v is None:
                success.add().request_delete_range.key = k.encode()
            elif lease:
                success.add(request_put=rpc.PutRequest(key=k.encode(), value=v, lease=lease))
            else:
                w = success.add().request_put
                w.key, w.value = k.encode(), v

    def compares(self) -> list[rpc.Compare]:
        return [g.compare() for g in self._guards]

    def failure_reads(self) -> list[rpc.RequestOp]:
        """Every guard's failure read, in guard order, then the extra reads."""
        return [g.read() for g in self._guards] + [get(k) for _, k in self._reads]

    def request(self) -> rpc.RequestOp:
        """This transaction as one nested operation of a larger request, its markers left
        to that request (`marker_ops`)."""
        op = rpc.RequestOp()
        self.fill(op.request_txn)
        return op

    def outcome(self, resp: rpc.TxnResponse, revision: int | None = None) -> TxnOutcome:
        """Decode etcd's answer: which guards failed, by name, and what each read.

        `revision`: the request's, for a nested answer (etcd heads only the top level)."""
        if revision is None:
            revision = resp.header.revision
        if resp.succeeded:
            return TxnOutcome(True, revision=revision)
        names = [g.name for g in self._guards] + [n for n, _ in self._reads]
        reads = {name: [kv_of(kv) for kv in r.response_range.kvs]
                 for name, r in zip(names, resp.responses, strict=True)}
        failed = frozenset(g.name for g in self._guards if not g.held(reads[g.name]))
        return TxnOutcome(False, failed, reads, revision)


def marker_ops(marks: dict[str, tuple[str, str]]) -> list[rpc.RequestOp]:
    """The operations that write `marks` (`GuardedTxn.mark`) in a request: one nested
    transaction each, guarded on the key the marker needs (a marker must not outlive
    what it marks: a source deleted meanwhile keeps no `freed` key)."""
    return [nested([_Guard("", _PRESENT, needed).compare()], [put(key, value)])
            for key, (value, needed) in marks.items()]


async def commit(store: Store, txn: GuardedTxn) -> TxnOutcome:
    """Send `txn` alone, as a top-level transaction (rare writers: networks, keys, release
    sets), its writes nested as deep as etcd's --max-txn-ops needs (a release set of IPs
    with many tags: thousands of index keys).

    etcd counts a transaction's operations as the most of its guards, writes and failure
    reads, and lets each nested transaction use what its parent left.

    One put stays at the top level: etcd 3.4 weighs a request against its backend quota
    by its top-level puts alone, and one of nested puts only would slip past a full
    quota, its NOSPACE alarm raised or not (store.py, `_quota_probe`).
    """
    compares, failure = txn.compares(), txn.failure_reads()
    # Alone, a change writes its markers only when it applies.
    writes = txn.writes + [put(key, value) for key, (value, _) in txn.marks.items()]
    guards = max(len(compares), len(failure))
    if len(writes) > MAX_TXN_OPS - guards:
        weighed = next((op for op in writes if op.HasField("request_put")), None)
        rest = [op for op in writes if op is not weighed]
        width = max(guards, MAX_TXN_OPS // 2)  # at most `width` chunks, and that put
        size = -(-len(rest) // width)
        writes = [nested([], _packed(rest[i:i + size], MAX_TXN_OPS - width - 1))
                  for i in range(0, len(rest), size)]
        if weighed is not None:
            writes.insert(0, weighed)
    return txn.outcome(await store.txn(compares, writes, failure))


def _packed(ops: list[rpc.RequestOp], room: int) -> list[rpc.RequestOp]:
    """`ops` as at most `room` operations of an unguarded nested transaction (at most
    3,456 in a room of 27, what a release set's hundred guards leave each chunk)."""
    if len(ops) <= room or room < 4:  # more than that: etcd refuses it, and says so
        return ops
    width = max(2, room // 3)  # few and deep: each level keeps most of its room
    size = -(-len(ops) // width)
    return [nested([], _packed(ops[i:i + size], room - width))
            for i in range(0, len(ops), size)]
