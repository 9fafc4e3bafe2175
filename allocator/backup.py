"""A logical backup of everything under one IPAM prefix, and its restore into an empty one.

The file is JSON lines, plain ASCII:

    {"format": "ipam-backup", "version": 1, "schema_version": 1, "revision": 812,
     "prefix": "/ipam/", "created_at": "2025-01-31T10:00:00.000000+00:00"}
    {"k": "ip/9f0c...", "v": "<base64 of the value>"}            one line per key, key order
    {"k": "idem/.../retry-1", "v": "...", "leased": true}         a key that was on a lease
    {"count": 2, "sha256": "<hex>"}

Keys are relative to the prefix, so a backup restores under any prefix. `sha256` is
the digest of every line before the trailer, header included, byte for byte: a
truncated, reordered or edited file is refused before anything is written. The schema
key is not among the key lines: the header's `schema_version` stands for it (0: the
data had no schema key) and the restore writes it back.

Export reads in bounded pages, every page pinned to the revision of the first, so the
file is the prefix as it was at that one revision however long the export takes and
whatever is written meanwhile (an export slower than etcd's compaction fails rather
than mixing revisions).

Leased keys: the idempotency records (`idem/`), the only keys the allocator puts on a
lease, are exported. Without them a client that retries a booking across a restore
would get a second IP instead of its first answer. A lease itself cannot be carried to
another cluster, so the restore puts them on one new lease of `RETENTION` (an hour by
default): a record lives at least as long as it had left, never less.

Restore: the target prefix must be empty, or hold nothing but a schema key at the
backup's version (a node stamped it on start-up). The file is read and checked whole
before the first write. Keys go in transactions of at most `MAX_TXN_OPS` operations
and about 1 MiB. The first one is guarded by "the target is still as we read it", each
later one by "nothing under the prefix was written since our previous transaction", so
a concurrent writer makes the restore stop (RestoreInterrupted) instead of
interleaving with it. Every transaction also writes the schema key with the progress
(`{"version": N, "restoring": {"sha256", "count", "written"}}`) and the last one writes
the plain version, so the prefix always says what it holds: while the marker is there,
`ensure_schema` and `export_state` refuse the prefix (RestoreInProgress). After a
failure (etcd unreachable, an answer lost), running `import_state` again with the same
file resumes after the last key written; a different file is refused; delete the prefix
to start over. The whole file is held in memory during a restore.

Errors raised here, besides StoreError and those of `schema`:

    BackupInvalid        (InvalidArgument)     the file is not a complete, intact backup
    TargetNotEmpty       (PreconditionFailed)  the target prefix holds data
    RestoreInterrupted   (Conflict)            something else wrote under the prefix
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO, TextIO

from aetcd import rpc

from .errors import Conflict, InvalidArgument, PreconditionFailed
from .idempotency import RETENTION
from .keys import Keys
from .schema import CURRENT_SCHEMA, RestoreInProgress, RestoreProgress, SchemaRecord, SchemaTooNew
from .store import MAX_TXN_OPS, Store, prefix_end
from .txn import delete, put

FORMAT = "ipam-backup"
FORMAT_VERSION = 1
EXPORT_PAGE = 1000
# Room for the restore's guards and schema write, and well under etcd's 1.5 MiB request.
_BATCH_KEYS = MAX_TXN_OPS - 3
_BATCH_BYTES = 1 << 20
_OP_OVERHEAD = 16
LEASE_TTL = RETENTION
# The schema key relative to any prefix: never a key line.
_SCHEMA_NAME = Keys("").schema()


class BackupInvalid(InvalidArgument):
    """The file is not a complete, intact ipam backup; nothing was written."""

    def __init__(self, problem: str) -> None:
        super().__init__("backup", problem, "format")
        self.problem = problem


class TargetNotEmpty(PreconditionFailed):
    """A restore goes into an empty prefix only; nothing was written."""

    def __init__(self, prefix: str, why: str) -> None:
        super().__init__("target_not_empty", f"cannot restore into {prefix}: {why}")
        self.prefix = prefix


class RestoreInterrupted(Conflict):
    """Something else wrote under the prefix while it was being restored."""

    def __init__(self, prefix: str, written: int, count: int) -> None:
        super().__init__(
            f"something else wrote under {prefix} during the restore ({written} of {count} "
            "keys were written): the prefix mixes both, delete everything under it and "
            "restore again with no node running on it")
        self.prefix = prefix
        self.written = written
        self.count = count


@dataclass(frozen=True)
class BackupSummary:
    """What `export_state` wrote: `count` keys (`leased` of them on a lease) of `prefix`
    as they were at `revision`, at `schema_version`; `sha256` is the file's digest."""

    prefix: str
    revision: int
    schema_version: int
    count: int
    leased: int
    sha256: str


@dataclass(frozen=True)
class RestoreSummary:
    """What `import_state` did: the backup's `count` keys are under `prefix` at
    `revision`; `resumed_from` were there already from an interrupted run, `written`
    were written by this call in `transactions` transactions."""

    prefix: str
    source_prefix: str
    source_revision: int
    schema_version: int
    count: int
    leased: int
    resumed_from: int
    written: int
    transactions: int
    revision: int


@dataclass(frozen=True)
class _Entry:
    key: str  # relative to the prefix
    value: bytes
    leased: bool


@dataclass(frozen=True)
class _Backup:
    """A backup file read and checked whole."""

    header: dict[str, Any]
    entries: list[_Entry]
    sha256: str

    @property
    def schema_version(self) -> int:
        return int(self.header["schema_version"])


# -- export ---------------------------------------------------------------------------


def _range(start: bytes, end: bytes = b"", *, limit: int = 0, revision: int = 0
           ) -> rpc.RequestOp:
    return rpc.RequestOp(request_range=rpc.RangeRequest(
        key=start, range_end=end, limit=limit, revision=revision))


def _line(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode("ascii") + b"\n"


async def export_state(store: Store, keys: Keys, out: BinaryIO | TextIO, *,
                       page: int = EXPORT_PAGE) -> BackupSummary:
    """Write everything under `keys.prefix`, as it is at one revision, to `out`.

    `out` is a binary or a text stream. Reads `page` keys per request, all at the
    revision of the first read. Raises RestoreInProgress on a prefix being restored.
    """
    if page < 1:
        raise ValueError("page must be at least 1")
    prefix = keys.prefix.encode()
    end = prefix_end(prefix)
    schema_key = keys.schema().encode()
    # The elected compactor's and expirer's keys are a node's lease, not data: never
    # carried over (restored on the records' lease, they would keep every node from taking over).
    elected_keys = (keys.compactor().encode(), keys.expirer().encode())
    # The schema key and the first page in one read: the same revision for both.
    first = await store.txn([], [_range(schema_key), _range(prefix, end, limit=page)],
                            retry=True)
    revision = first.header.revision
    found = first.responses[0].response_range.kvs
    record = SchemaRecord.decode(keys.schema(), found[0].value) if found else None
    if record is not None and record.restoring is not None:
        raise RestoreInProgress(keys.prefix, record.restoring)
    schema_version = record.version if record is not None else 0

    text = isinstance(out, io.TextIOBase)
    digest = hashlib.sha256()

    def emit(line: bytes, hashed: bool = True) -> None:
        if hashed:
            digest.update(line)
        out.write(line.decode("ascii") if text else line)  # type: ignore[arg-type]

    emit(_line({"format": FORMAT, "version": FORMAT_VERSION, "schema_version": schema_version,
                "revision": revision, "prefix": keys.prefix,
                "created_at": datetime.now(UTC).isoformat()}))
    count = leased = 0
    resp = first.responses[1].response_range
    while True:
        for kv in resp.kvs:
            if kv.key == schema_key or kv.key in elected_keys:
                continue
            line: dict[str, Any] = {"k": kv.key[len(prefix):].decode(),
                                    "v": base64.b64encode(kv.value).decode("ascii")}
            if kv.lease:
                line["leased"] = True
                leased += 1
            emit(_line(line))
            count += 1
        if not resp.more or not resp.kvs:
            break
        start = resp.kvs[-1].key + b"\0"
        nxt = await store.txn([], [_range(start, end, limit=page, revision=revision)],
                              retry=True)
        resp = nxt.responses[0].response_range
    sha = digest.hexdigest()
    emit(_line({"count": count, "sha256": sha}), hashed=False)
    return BackupSummary(keys.prefix, revision, schema_version, count, leased, sha)


# -- reading a backup -----------------------------------------------------------------


def _read(source: Iterable[bytes | str]) -> _Backup:
    """Read and check a whole backup (binary or text lines); BackupInvalid if it is not
    complete and intact."""
    digest = hashlib.sha256()
    lines = _numbered(source)
    header = _header(next(lines, None))
    digest.update(header[1])
    entries: list[_Entry] = []
    previous = b""
    trailer: dict[str, Any] | None = None
    for number, raw in lines:
        if trailer is not None:
            if raw.strip():
                raise BackupInvalid(f"line {number}: data after the trailer")
            continue
        data = _json(number, raw)
        if "k" not in data:
            trailer = data
            continue
        entry = _entry(number, data)
        key = entry.key.encode()
        if entry.key == _SCHEMA_NAME:
            raise BackupInvalid(f"line {number}: the schema key belongs in the header")
        if key <= previous:
            raise BackupInvalid(f"line {number}: key {entry.key!r} out of order or repeated")
        previous = key
        entries.append(entry)
        digest.update(raw)
    if trailer is None:
        raise BackupInvalid("the file is truncated: it ends before its trailer")
    if set(trailer) != {"count", "sha256"}:
        raise BackupInvalid(f"unexpected trailer {trailer}")
    if trailer["count"] != len(entries):
        raise BackupInvalid(f"the trailer counts {trailer['count']} keys, the file holds "
                            f"{len(entries)}")
    if trailer["sha256"] != digest.hexdigest():
        raise BackupInvalid("checksum mismatch: the file was changed after it was written")
    return _Backup(header[0], entries, digest.hexdigest())


def _numbered(source: Iterable[bytes | str]) -> Iterator[tuple[int, bytes]]:
    for number, raw in enumerate(source, 1):
        yield number, raw.encode() if isinstance(raw, str) else raw


def _json(number: int, raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        raise BackupInvalid(f"line {number}: not JSON (truncated or edited)") from None
    if not isinstance(data, dict):
        raise BackupInvalid(f"line {number}: not a JSON object")
    return data


def _header(first: tuple[int, bytes] | None) -> tuple[dict[str, Any], bytes]:
    if first is None:
        raise BackupInvalid("the file is empty")
    data = _json(*first)
    if data.get("format") != FORMAT:
        raise BackupInvalid(f"not an {FORMAT} file (format {data.get('format')!r})")
    if data.get("version") != FORMAT_VERSION or type(data.get("version")) is not int:
        raise BackupInvalid(f"backup format version {data.get('version')!r} is not "
                            f"supported (this node reads version {FORMAT_VERSION})")
    for name, kind in (("schema_version", int), ("revision", int), ("prefix", str)):
        if type(data.get(name)) is not kind:
            raise BackupInvalid(f"header: {name} missing or not {kind.__name__}")
    if data["schema_version"] < 0:
        raise BackupInvalid("header: negative schema_version")
    return data, first[1]


def _entry(number: int, data: dict[str, Any]) -> _Entry:
    key, value, leased = data.get("k"), data.get("v"), data.get("leased", False)
    if not set(data) <= {"k", "v", "leased"} or not isinstance(key, str) or not key \
            or not isinstance(value, str) or leased not in (True, False):
        raise BackupInvalid(f"line {number}: not a key line")
    try:
        decoded = base64.b64decode(value, validate=True)
    except binascii.Error:
        raise BackupInvalid(f"line {number}: value is not base64") from None
    return _Entry(key, decoded, leased)


# -- restore --------------------------------------------------------------------------


def _prefix_empty(prefix: str) -> rpc.Compare:
    return rpc.Compare(key=prefix.encode(), range_end=prefix_end(prefix),
                       result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE, create_revision=0)


def _prefix_quiet_since(prefix: str, revision: int) -> rpc.Compare:
    """Nothing under the prefix was created or modified after `revision`."""
    return rpc.Compare(key=prefix.encode(), range_end=prefix_end(prefix),
                       result=rpc.Compare.LESS, target=rpc.Compare.MOD,
                       mod_revision=revision + 1)


def _unchanged(key: str, mod_revision: int) -> rpc.Compare:
    return rpc.Compare(key=key.encode(), result=rpc.Compare.EQUAL, target=rpc.Compare.MOD,
                       mod_revision=mod_revision)


async def import_state(store: Store, keys: Keys, source: BinaryIO | TextIO) -> RestoreSummary:
    """Restore a backup written by `export_state` under `keys.prefix`, or resume one.

    Refuses before any write: a file that is not intact (BackupInvalid), a backup of a
    newer schema (SchemaTooNew), a target that holds data (TargetNotEmpty). Stops with
    RestoreInterrupted when something else writes under the prefix meanwhile. See the
    module docstring for what a failure leaves and how to resume.
    """
    schema_key = keys.schema()
    backup = _read(source)
    if backup.schema_version > CURRENT_SCHEMA:
        raise SchemaTooNew(backup.schema_version, CURRENT_SCHEMA)
    start, guards = await _starting_point(store, keys, backup)
    entries = backup.entries[start:]
    lease = 0
    if any(e.leased for e in entries):
        lease = await store.lease_grant(LEASE_TTL)
    batches = list(_batches(entries, len(keys.prefix))) or [[]]
    written, revision = start, 0
    for n, batch in enumerate(batches):
        written += len(batch)
        ops = [put(keys.prefix + e.key, e.value, lease if e.leased else 0) for e in batch]
        if n < len(batches) - 1:
            progress = RestoreProgress(backup.sha256, len(backup.entries), written)
            ops.append(put(schema_key, SchemaRecord(backup.schema_version, progress).encode()))
        elif backup.schema_version:
            ops.append(put(schema_key, SchemaRecord(backup.schema_version).encode()))
        else:
            ops.append(delete(schema_key))  # version 0: data without a schema key
        resp = await store.txn(guards, ops)
        if not resp.succeeded:
            if n == 0 and start == 0:
                raise TargetNotEmpty(keys.prefix, "something wrote under it as the restore "
                                                  "began")
            raise RestoreInterrupted(keys.prefix, written - len(batch), len(backup.entries))
        revision = resp.header.revision
        guards = [_unchanged(schema_key, revision),
                  _prefix_quiet_since(keys.prefix, revision)]
    leased = sum(e.leased for e in backup.entries)
    return RestoreSummary(
        prefix=keys.prefix, source_prefix=backup.header["prefix"],
        source_revision=backup.header["revision"], schema_version=backup.schema_version,
        count=len(backup.entries), leased=leased, resumed_from=start,
        written=written - start, transactions=len(batches), revision=revision)


async def _starting_point(store: Store, keys: Keys, backup: _Backup
                          ) -> tuple[int, list[rpc.Compare]]:
    """Where the restore starts (keys already written) and the guards of its first write.

    Read in one request, so the schema key and the count are of one revision.
    """
    schema_key = keys.schema()
    resp = await store.txn([], [
        _range(schema_key.encode()),
        rpc.RequestOp(request_range=rpc.RangeRequest(
            key=keys.prefix.encode(), range_end=prefix_end(keys.prefix), count_only=True)),
    ], retry=True)
    read_at = resp.header.revision
    found = resp.responses[0].response_range.kvs
    held = resp.responses[1].response_range.count
    if held == 0:
        return 0, [_prefix_empty(keys.prefix)]
    if not found:
        raise TargetNotEmpty(keys.prefix, f"it holds {held} keys")
    record = SchemaRecord.decode(schema_key, found[0].value)
    schema_rev = found[0].mod_revision
    progress = record.restoring
    if progress is not None:
        if progress.sha256 != backup.sha256 or progress.count != len(backup.entries):
            raise TargetNotEmpty(keys.prefix, "it holds an unfinished restore of another "
                                              "backup: resume it with that file, or delete "
                                              "everything under the prefix")
        if held != progress.written + 1:
            raise RestoreInterrupted(keys.prefix, progress.written, progress.count)
        return progress.written, [_unchanged(schema_key, schema_rev),
                                  _prefix_quiet_since(keys.prefix, read_at)]
    if held == 1:
        if record.version != backup.schema_version:
            raise TargetNotEmpty(keys.prefix, f"it is stamped with schema {record.version} "
                                              f"and the backup is schema "
                                              f"{backup.schema_version}: delete its schema "
                                              "key first")
        return 0, [_unchanged(schema_key, schema_rev),
                   _prefix_quiet_since(keys.prefix, read_at)]
    raise TargetNotEmpty(keys.prefix, f"it holds {held} keys")


def _batches(entries: Sequence[_Entry], prefix_length: int) -> Iterator[list[_Entry]]:
    """The entries in groups that fit one transaction (operations and bytes)."""
    batch: list[_Entry] = []
    size = 0
    for entry in entries:
        cost = prefix_length + len(entry.key.encode()) + len(entry.value) + _OP_OVERHEAD
        if batch and (len(batch) >= _BATCH_KEYS or size + cost > _BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += cost
    if batch:
        yield batch
