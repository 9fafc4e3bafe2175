"""The schema version of the data under one prefix, and the steps that migrate it.

One key says what shape the data under a prefix has:

    {p}schema   {"version": N}
                {"version": N, "restoring": {"sha256": ..., "count": C, "written": W}}
                (a restore wrote W of the C keys of a backup and has not finished: see `backup`)

No key and no data: an empty prefix, stamped with `CURRENT_SCHEMA` by the first node
that starts on it (create-if-absent, guarded by "the prefix is empty", so nodes
starting together agree). No key but data: version 0, data written before versions
existed.

A node that finds an older version runs the registered steps in order. Step `v`
migrates version v to v + 1 and must be idempotent: run twice, or stopped midway and
run again, it leaves the same data. Progress is the version itself, advanced by a
compare-and-swap after each step, so an interrupted migration resumes at the step it
stopped in. A step writes through `MigrationContext.commit`, whose writes hold only
while the version is still the step's own: once any node has advanced the version,
a slower node still running the same step can write nothing more, and nodes racing
through one migration never interleave two steps.

Some steps need what only the node knows: the credential signing key (steps 2 -> 3 and
4 -> 5) comes in `MigrationContext.signing_key`, given to `ensure_schema` by the node.

Errors (all `PreconditionFailed`, so the gateway maps them like any other):

    SchemaTooNew        etcd holds a version this node does not understand
    SchemaUnreadable    the schema key holds something that is not a schema record
    RestoreInProgress   a restore into the prefix has not finished
    NoSigningKey        API key records must be signed (or read, to map projects to their
                        organizations) and this node has no signing key
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import credentials
from .errors import Conflict, PreconditionFailed
from .keys import Keys
from .organizations import mapping_of_keys
from .retry import RACES
from .store import KV, Store
from .txn import GuardedTxn, TxnOutcome, commit

# 2: the tag index (`_index_tags`); 3: signed API keys (`_sign_api_keys`); 4: the
# project indexes of VPCs and Private Networks (`index_projects`); 5: the
# organizations of projects (`_map_project_organizations`)
CURRENT_SCHEMA = 5

log = logging.getLogger(__name__)

# The guard name `MigrationContext.commit` adds to a step's transaction.
_SCHEMA_GUARD = "schema version"


class SchemaTooNew(PreconditionFailed):
    """The data was written by a newer node: this one must not read or change it."""

    def __init__(self, found: int, understood: int) -> None:
        super().__init__("schema_too_new",
                         f"etcd holds schema {found}, this node understands up to "
                         f"{understood}: upgrade this node")
        self.found = found
        self.understood = understood


class SchemaUnreadable(PreconditionFailed):
    """The schema key holds something that is not a schema record."""

    def __init__(self, key: str, value: bytes) -> None:
        super().__init__("schema_unreadable",
                         f"the schema key {key} holds {value[:80]!r}, which is not a schema "
                         "record: repair it by hand before starting a node on this prefix")
        self.key = key


class NoSigningKey(PreconditionFailed):
    """API key records wait to be signed, and this node was given no signing key."""

    def __init__(self, count: int, why: str = "written before schema 3 must be signed") -> None:
        super().__init__("no_signing_key",
                         f"{count} API key records {why}, and this node has no credential "
                         "signing key: start a gateway node")
        self.count = count


@dataclass(frozen=True)
class RestoreProgress:
    """How far a restore into the prefix went: `written` of the backup's `count` keys."""

    sha256: str
    count: int
    written: int


class RestoreInProgress(PreconditionFailed):
    """A restore into the prefix has not finished: the data there is incomplete."""

    def __init__(self, prefix: str, progress: RestoreProgress) -> None:
        super().__init__("restore_in_progress",
                         f"a restore into {prefix} wrote {progress.written} of "
                         f"{progress.count} keys and has not finished: run the restore again "
                         "with the same file to complete it, or delete everything under the "
                         "prefix")
        self.prefix = prefix
        self.progress = progress


@dataclass(frozen=True)
class SchemaRecord:
    """The value of the schema key."""

    version: int
    restoring: RestoreProgress | None = None

    def encode(self) -> bytes:
        data: dict[str, Any] = {"version": self.version}
        if self.restoring is not None:
            data["restoring"] = {"sha256": self.restoring.sha256,
                                 "count": self.restoring.count,
                                 "written": self.restoring.written}
        return json.dumps(data).encode()

    @classmethod
    def decode(cls, key: str, value: bytes) -> SchemaRecord:
        """The record stored under `key`; SchemaUnreadable if it is not one."""
        try:
            data = json.loads(value)
            version = data["version"]
            restoring = data.get("restoring")
            if type(version) is not int or version < 0:
                raise ValueError(version)
            progress = None if restoring is None else RestoreProgress(
                str(restoring["sha256"]), int(restoring["count"]), int(restoring["written"]))
        except (ValueError, TypeError, KeyError, AttributeError):
            raise SchemaUnreadable(key, value) from None
        return cls(version, progress)


@dataclass(frozen=True)
class SchemaState:
    """What `ensure_schema` found and did.

    `found` is the version the prefix had (None: it was empty), `stamped` says this call
    wrote the version on an empty prefix, `migrated` lists the versions this call
    advanced from (steps another node finished first are not in it).
    """

    version: int
    found: int | None
    stamped: bool = False
    migrated: tuple[int, ...] = ()


class _Superseded(Exception):
    """Another node advanced the version while a step ran here: read it again."""


@dataclass(frozen=True)
class MigrationContext:
    """What a migration step gets: the store, the keys, and a commit bound to its version.

    `schema_revision` is the mod revision of the schema key when the step began (0: the
    key is absent, version 0). `signing_key`: the node's credential signing key (None:
    it has none), for the step that signs API keys.
    """

    store: Store
    keys: Keys
    version: int
    schema_revision: int
    signing_key: bytes | None = None

    async def commit(self, txn: GuardedTxn) -> TxnOutcome:
        """Commit `txn` only if the schema is still at this step's version.

        Returns the outcome of the step's own guards; when the version moved on, the
        step is over (another node finished it) and ensure_schema takes it from there.
        """
        txn.unchanged(_SCHEMA_GUARD, self.keys.schema(), self.schema_revision)
        outcome = await commit(self.store, txn)
        if _SCHEMA_GUARD in outcome.failed:
            raise _Superseded()
        return outcome


Migration = Callable[[MigrationContext], Awaitable[None]]


async def _stamp_unversioned(ctx: MigrationContext) -> None:
    """0 -> 1: data written before versions existed has version 1's shape already; the
    version written after this step is the whole migration."""


async def _index_tags(ctx: MigrationContext) -> None:
    """1 -> 2: the tag index (`{p}ix/tag/...`, written with every IP since version 2) for
    the IPs tagged before it existed. Idempotent: a key already there is written again
    with the same empty value. Each batch is guarded by its records' revisions; a record
    changed meanwhile was written by a version-2 node, with its index: it is skipped.

    Nodes of version 1 still running would go on writing tags without the index: stop
    them before starting the first node of version 2 (it migrates before it serves)."""
    kvs, _ = await ctx.store.scan(ctx.keys.ip())
    batch: list[tuple[KV, dict[str, Any]]] = []

    async def flush() -> None:
        txn = GuardedTxn()
        for n, (kv, record) in enumerate(batch):
            txn.unchanged(f"record {n}", kv.key, kv.mod_revision)
            for tag in record["tags"]:
                txn.put(ctx.keys.by_tag(tag, record["project_id"], record["id"]), "")
        outcome = await ctx.commit(txn)
        if not outcome.succeeded:  # some changed since the scan: index the others
            unchanged = [(kv, r) for n, (kv, r) in enumerate(batch)
                         if f"record {n}" not in outcome.failed]
            batch[:] = unchanged
            if unchanged:
                await flush()
                return
        batch.clear()

    ops = 0
    for kv in kvs:
        record = json.loads(kv.value)
        if not record.get("tags"):
            continue
        batch.append((kv, record))
        ops += 1 + len(record["tags"])
        if ops >= _TAG_BATCH_OPS:
            await flush()
            ops = 0
    if batch:
        await flush()


_TAG_BATCH_OPS = 100  # guards and writes per transaction, under etcd's 128 ops


async def _sign_api_keys(ctx: MigrationContext) -> None:
    """2 -> 3: sign the API key records written before signatures existed (every node of
    version 3 refuses an unsigned one), with the signing key of the node that migrates.

    Only records without a signature are signed: one with a wrong signature was changed
    by someone without the key, and stays refused. Idempotent: a record signed already
    is skipped; each write is guarded by the record's revision (a record revoked or
    changed meanwhile is left alone).

    A rollback guard: whoever can write etcd could set the schema key back to 2 and plant
    an unsigned admin record for the next node start to sign. The records this step signs
    carry `signed_at_upgrade`; a validly signed record without it was created by a node of
    version 3, so the prefix was at 3 already: then nothing is signed (logged as an
    error). An attacker who also deletes every key created since the upgrade is not
    caught: each record this step signs is logged (its access key and role)."""
    kvs, _ = await ctx.store.scan(ctx.keys.api_key_by_secret())
    unsigned: list[tuple[KV, dict[str, Any]]] = []
    created_signed = 0
    for kv in kvs:
        try:
            record = json.loads(kv.value)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        if credentials.SIGNATURE not in record:
            unsigned.append((kv, record))
        elif (ctx.signing_key is not None and not record.get(credentials.SIGNED_AT_UPGRADE)
              and credentials.signature_is_valid(
                  ctx.signing_key, kv.key.removeprefix(ctx.keys.prefix), record)):
            created_signed += 1
    if not unsigned:
        return
    if ctx.signing_key is None:
        raise NoSigningKey(len(unsigned))
    if created_signed:
        log.error("%d unsigned API key records found under %s, which holds keys created "
                  "signed: the schema was set back by a writer of etcd; none is signed, "
                  "they authenticate nobody", len(unsigned), ctx.keys.prefix)
        return
    signing_key = ctx.signing_key
    for start in range(0, len(unsigned), _SIGN_BATCH):
        batch = unsigned[start:start + _SIGN_BATCH]
        while batch:
            txn = GuardedTxn()
            for n, (kv, record) in enumerate(batch):
                signed = credentials.sign_record(
                    signing_key, kv.key.removeprefix(ctx.keys.prefix),
                    {**record, credentials.SIGNED_AT_UPGRADE: True})
                txn.unchanged(f"record {n}", kv.key, kv.mod_revision).put(
                    kv.key, json.dumps(signed))
            outcome = await ctx.commit(txn)
            if outcome.succeeded:
                for _, record in batch:
                    log.warning("signed API key %r (role %r), written before schema 3",
                                record.get("access_key"), record.get("role"))
                break
            # Some were revoked or changed since the scan: sign the others.
            batch = [item for n, item in enumerate(batch) if f"record {n}" not in outcome.failed]


_SIGN_BATCH = 50  # records per transaction: a guard and a write each, under etcd's 128 ops

async def _map_project_organizations(ctx: MigrationContext) -> None:
    """4 -> 5: map each project to its organization (`organizations`, written with every
    project key since) from the project keys created before: every write into a project
    needs it from version 5 on.

    Only validly signed records count (a forged one maps nothing). A project that keys
    name with two different organizations is left unmapped and logged: no key can say
    which is right, so an admin sets it (`PUT /ipam/admin/v1/projects/{id}`); until then
    writes into it are refused. Idempotent: a project mapped already (by a run before,
    an admin, or a key created by a node of version 5) is left as it is; each write is
    guarded on the mapping being absent still."""
    kvs, _ = await ctx.store.scan(ctx.keys.api_key_by_secret())
    records = []
    for kv in kvs:
        try:
            record = json.loads(kv.value)
        except ValueError:
            continue
        if (isinstance(record, dict) and record.get("organization_id")
                and record.get("role") in (credentials.PROJECT_MEMBER,
                                           credentials.PROJECT_READER)):
            records.append((kv, record))
    if not records:
        return
    if ctx.signing_key is None:
        raise NoSigningKey(len(records), "must be read to map their projects to their "
                                         "organizations (schema 5)")
    signing_key = ctx.signing_key
    mapping, torn = mapping_of_keys(
        ([str(p) for p in record.get("project_ids") or ()], str(record["organization_id"]))
        for kv, record in records
        if credentials.signature_is_valid(signing_key, kv.key.removeprefix(ctx.keys.prefix),
                                          record))
    for project_id in sorted(torn):
        log.warning("project %s is named with two organizations by its API keys: left "
                    "unmapped; set it with PUT /ipam/admin/v1/projects/%s", project_id,
                    project_id)
    mapped, _ = await ctx.store.scan(ctx.keys.project_organization())
    present = {ctx.keys.last_segment(kv.key) for kv in mapped}
    todo = sorted(p for p in mapping if p not in present)
    for start in range(0, len(todo), _SIGN_BATCH):
        batch = todo[start:start + _SIGN_BATCH]
        while batch:
            txn = GuardedTxn()
            for project_id in batch:
                key = ctx.keys.project_organization(project_id)
                txn.absent(project_id, key).put(key, mapping[project_id])
            outcome = await ctx.commit(txn)
            if outcome.succeeded:
                break
            # Some were mapped since the scan (by a new key or an admin): map the others.
            batch = [p for p in batch if p not in outcome.failed]


# -- the project indexes of data written before them -----------------------------------------

_INDEX_BATCH = 50  # records per transaction: a guard and a write each, under etcd's 128 ops


async def index_projects(ctx: MigrationContext) -> None:
    """Schema step 3 -> 4: the project indexes of VPCs and Private Networks
    (`Keys.project_vpcs`, `Keys.project_private_networks`, written with every create
    since) for the ones created before them. Without it, a tenant's list would miss them
    and the quotas would not count them.

    Idempotent: a key there already is written again with the same value. Each key is
    guarded by its record being present, so a network deleted since the scan gets no
    index key pointing nowhere. Nodes of the previous version still running would create
    networks without the index: stop them first (a node migrates before it serves)."""
    keys = ctx.keys
    vpcs, _ = await ctx.store.scan(keys.vpc())
    pns, _ = await ctx.store.scan(keys.private_network())
    entries: list[tuple[str, str, str]] = []  # (record key, index key, index value)
    for kv in vpcs:
        v = json.loads(kv.value)
        entries.append((kv.key, keys.project_vpcs(v["project_id"], v["region"], v["id"]), ""))
    for kv in pns:
        p = json.loads(kv.value)
        entries.append((kv.key, keys.project_private_networks(p["project_id"], p["region"],
                                                              p["id"]), p["vpc_id"]))
    for start in range(0, len(entries), _INDEX_BATCH):
        batch = entries[start:start + _INDEX_BATCH]
        while batch:
            txn = GuardedTxn()
            for n, (record_key, index_key, value) in enumerate(batch):
                txn.present(f"record {n}", record_key).put(index_key, value)
            outcome = await ctx.commit(txn)
            if outcome.succeeded:
                break
            # Some were deleted since the scan: index the others.
            batch = [e for n, e in enumerate(batch) if f"record {n}" not in outcome.failed]


# Step v migrates version v to v + 1.
MIGRATIONS: Mapping[int, Migration] = {0: _stamp_unversioned, 1: _index_tags,
                                       2: _sign_api_keys, 3: index_projects,
                                       4: _map_project_organizations}


async def ensure_schema(store: Store, keys: Keys, *, current: int = CURRENT_SCHEMA,
                        migrations: Mapping[int, Migration] = MIGRATIONS,
                        signing_key: bytes | None = None) -> SchemaState:
    """Make the data under `keys.prefix` be at schema `current`, or refuse to go on.

    Stamps an empty prefix, migrates an older version step by step (resuming an
    interrupted migration), returns at once when the version is `current`. Raises
    SchemaTooNew for a newer version, RestoreInProgress while a restore is unfinished,
    SchemaUnreadable for a damaged schema key, Conflict when the schema key keeps
    changing under it, NoSigningKey when API keys must be signed and `signing_key` (the
    node's credential signing key) is None. `current` and `migrations` are for tests of
    the mechanism.
    """
    schema_key = keys.schema()
    found: int | None = None
    migrated: list[int] = []
    races = RACES.attempts()
    while True:
        kv = await store.get(schema_key)
        if kv is None and (await store.count(keys.prefix))[0] == 0:
            stamp = (GuardedTxn().prefix_empty("prefix", keys.prefix)
                     .put(schema_key, SchemaRecord(current).encode()))
            if (await commit(store, stamp)).succeeded:
                return SchemaState(current, found=None, stamped=True)
            await _lost_race(races)  # another node wrote first: read what it wrote
            continue
        version, revision = 0, 0
        if kv is not None:
            record = SchemaRecord.decode(schema_key, kv.value)
            if record.restoring is not None:
                raise RestoreInProgress(keys.prefix, record.restoring)
            version, revision = record.version, kv.mod_revision
        if found is None:
            found = version
        if version > current:
            raise SchemaTooNew(version, current)
        if version == current:
            return SchemaState(version, found=found, migrated=tuple(migrated))
        step = migrations.get(version)
        if step is None:
            raise LookupError(f"no migration registered from schema {version} "
                              f"(this node migrates up to {current})")
        try:
            await step(MigrationContext(store, keys, version, revision, signing_key))
        except _Superseded:
            await _lost_race(races)
            continue
        advance = (GuardedTxn().unchanged(_SCHEMA_GUARD, schema_key, revision)
                   .put(schema_key, SchemaRecord(version + 1).encode()))
        if (await commit(store, advance)).succeeded:
            migrated.append(version)
        else:  # another node finished the same step first
            await _lost_race(races)


async def _lost_race(races: Any) -> None:
    """Count one lost compare-and-swap on the schema key against the RACES policy."""
    try:
        await anext(races)
    except StopAsyncIteration:
        raise Conflict("the schema key kept changing under this node; try again") from None

