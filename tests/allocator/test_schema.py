"""The schema version key and its migrations, against real etcd."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import pytest
from allocator_support import SIGNING_KEY, book_in, clean_audit, connected, make_pn, new_project

from allocator.contract import (
    CURRENT_SCHEMA,
    IPAM,
    RestoreInProgress,
    SchemaState,
    SchemaTooNew,
    SchemaUnreadable,
    ensure_schema,
)
from allocator.credentials import (
    SIGNATURE,
    SIGNED_AT_UPGRADE,
    check_key_spec,
    secret_hash,
    sign_record,
)
from allocator.errors import Conflict
from allocator.schema import MIGRATIONS, Migration, MigrationContext, NoSigningKey
from allocator.txn import GuardedTxn


async def schema_value(ipam: IPAM) -> dict | None:
    kv = await ipam.store.get(ipam.keys.schema())
    return None if kv is None else json.loads(kv.value)


async def put(ipam: IPAM, key: str, value: bytes) -> None:
    assert (await ipam.store.txn([], [GuardedTxn().put(key, value).writes[0]])).succeeded


async def revision(ipam: IPAM) -> int:
    _, rev = await ipam.store.count("/")
    return rev


async def with_ips(ipam: IPAM, n: int = 6) -> list[str]:
    project = new_project()
    pn = await make_pn(ipam, project, "10.50.0.0/24")
    return [(await ipam.book(book_in(pn, project))).id for _ in range(n)]


class Interrupted(Exception):
    """A migration step stopped midway (the node died, say)."""


def mark_records(*, stop_after: int | None = None) -> Migration:
    """A test step 1 -> 2 that changes data: every IP record gains `"v2": 1`. Idempotent:
    a record already marked is left alone, and each write is guarded by the record's
    revision; `v2` counts the writes, so applying it twice would show. After `stop_after`
    writes it fails."""
    async def step(ctx: MigrationContext) -> None:
        kvs, _ = await ctx.store.scan(ctx.keys.ip())
        done = 0
        for kv in kvs:
            record = json.loads(kv.value)
            if "v2" in record:
                continue
            if done == stop_after:
                raise Interrupted()
            record["v2"] = record.get("v2", 0) + 1  # a second application would show
            await ctx.commit(GuardedTxn().unchanged("record", kv.key, kv.mod_revision)
                             .put(kv.key, json.dumps(record)))
            done += 1
    return step


async def marks(ipam: IPAM) -> dict[str, int | None]:
    kvs, _ = await ipam.store.scan(ipam.keys.ip())
    return {json.loads(kv.value)["id"]: json.loads(kv.value).get("v2") for kv in kvs}


# The machinery's own tests stop at version 1 (`V1`) and register their own step 1,
# whatever the real steps after it are.
V1 = {0: MIGRATIONS[0]}
TO_2 = {**V1, 1: mark_records()}


async def stamp_1(ipam) -> SchemaState:
    return await ensure_schema(ipam.store, ipam.keys, current=1, migrations=V1)


# --- stamping ------------------------------------------------------------------------


async def test_an_empty_prefix_is_stamped_with_the_current_schema(ipam):
    assert await ensure_schema(ipam.store, ipam.keys) == SchemaState(
        CURRENT_SCHEMA, found=None, stamped=True)
    assert await schema_value(ipam) == {"version": CURRENT_SCHEMA}
    assert await ensure_schema(ipam.store, ipam.keys) == SchemaState(CURRENT_SCHEMA,
                                                                     found=CURRENT_SCHEMA)


async def test_nodes_starting_at_once_agree_on_one_stamp(etcd_single, key_prefix):
    nodes = [await IPAM.connect(etcd_single.endpoints, prefix=key_prefix) for _ in range(5)]
    try:
        states = await asyncio.gather(*(ensure_schema(n.store, n.keys) for n in nodes))
        assert [s.version for s in states] == [CURRENT_SCHEMA] * 5
        assert sum(s.stamped for s in states) == 1
        kv = await nodes[0].store.get(nodes[0].keys.schema())
        assert kv is not None and kv.mod_revision == kv.create_revision  # written once
    finally:
        for n in nodes:
            await n.close()


async def test_a_newer_schema_is_refused_with_what_to_do(ipam):
    newer = CURRENT_SCHEMA + 1
    await put(ipam, ipam.keys.schema(), json.dumps({"version": newer}).encode())
    rev = await revision(ipam)
    with pytest.raises(SchemaTooNew) as err:
        await ensure_schema(ipam.store, ipam.keys)
    assert err.value.message == (f"etcd holds schema {newer}, this node understands up to "
                                 f"{CURRENT_SCHEMA}: upgrade this node")
    assert (err.value.found, err.value.understood) == (newer, CURRENT_SCHEMA)
    assert await revision(ipam) == rev


@pytest.mark.parametrize("value", [b"garbage", b"2", b'{"version": "1"}', b'{"version": -1}',
                                   b'{"version": 1, "restoring": {"count": 3}}'])
async def test_an_unreadable_schema_key_is_refused(ipam, value):
    await put(ipam, ipam.keys.schema(), value)
    with pytest.raises(SchemaUnreadable) as err:
        await ensure_schema(ipam.store, ipam.keys)
    assert ipam.keys.schema() in err.value.message


async def test_a_prefix_under_restore_is_refused(ipam):
    marker = {"version": 1, "restoring": {"sha256": "ab", "count": 10, "written": 4}}
    await put(ipam, ipam.keys.schema(), json.dumps(marker).encode())
    with pytest.raises(RestoreInProgress) as err:
        await ensure_schema(ipam.store, ipam.keys)
    assert err.value.message.startswith(f"a restore into {ipam.keys.prefix} wrote 4 of 10 keys")


# --- migrations ----------------------------------------------------------------------


async def test_data_without_a_schema_key_is_version_0_and_is_stamped(ipam):
    ips = await with_ips(ipam)
    assert await ensure_schema(ipam.store, ipam.keys) == SchemaState(
        CURRENT_SCHEMA, found=0, migrated=tuple(range(CURRENT_SCHEMA)))
    assert await schema_value(ipam) == {"version": CURRENT_SCHEMA}
    await clean_audit(ipam)
    assert (await ipam.get_ip(ips[0])).id == ips[0]


async def test_an_older_schema_runs_its_steps_in_order(ipam):
    await with_ips(ipam)
    ran: list[int] = []

    def recording(version: int, inner: Migration | None = None) -> Migration:
        async def step(ctx: MigrationContext) -> None:
            assert ctx.version == version
            ran.append(version)
            if inner is not None:
                await inner(ctx)
        return step

    steps = {0: recording(0), 1: recording(1, mark_records()), 2: recording(2)}
    state = await ensure_schema(ipam.store, ipam.keys, current=3, migrations=steps)
    assert state == SchemaState(3, found=0, migrated=(0, 1, 2))
    assert ran == [0, 1, 2]
    assert set((await marks(ipam)).values()) == {1}
    assert await schema_value(ipam) == {"version": 3}
    # The records stay readable by this node's code, and the invariants hold.
    await clean_audit(ipam)


async def test_a_data_changing_step_run_twice_changes_the_data_once(ipam):
    await with_ips(ipam)
    await stamp_1(ipam)
    kv = await ipam.store.get(ipam.keys.schema())
    ctx = MigrationContext(ipam.store, ipam.keys, 1, kv.mod_revision)
    await mark_records()(ctx)
    once = await marks(ipam)
    rev = await revision(ipam)
    await mark_records()(ctx)
    assert await marks(ipam) == once
    assert set(once.values()) == {1}
    assert await revision(ipam) == rev  # the second run wrote nothing


async def test_an_interrupted_migration_resumes_where_it_stopped(ipam):
    await with_ips(ipam, 6)
    await stamp_1(ipam)
    with pytest.raises(Interrupted):
        await ensure_schema(ipam.store, ipam.keys, current=2,
                            migrations={**V1, 1: mark_records(stop_after=2)})
    assert await schema_value(ipam) == {"version": 1}  # the step did not finish
    assert sorted(v or 0 for v in (await marks(ipam)).values()) == [0, 0, 0, 0, 1, 1]

    state = await ensure_schema(ipam.store, ipam.keys, current=2, migrations=TO_2)

    assert state == SchemaState(2, found=1, migrated=(1,))
    assert set((await marks(ipam)).values()) == {1}
    assert await schema_value(ipam) == {"version": 2}


async def test_nodes_migrating_at_once_agree(etcd_single, key_prefix):
    nodes = [await IPAM.connect(etcd_single.endpoints, prefix=key_prefix) for _ in range(4)]
    try:
        await with_ips(nodes[0], 12)
        await stamp_1(nodes[0])
        states = await asyncio.gather(*(ensure_schema(n.store, n.keys, current=2,
                                                      migrations=TO_2) for n in nodes))
        assert {s.version for s in states} == {2}
        assert sum(s.migrated == (1,) for s in states) == 1  # one advanced the version
        assert set((await marks(nodes[0])).values()) == {1}
        await clean_audit(nodes[0])
    finally:
        for n in nodes:
            await n.close()


async def test_a_slow_node_writes_nothing_once_the_version_moved_on(etcd_single, key_prefix):
    async with connected(etcd_single.endpoints, key_prefix) as fast, \
            connected(etcd_single.endpoints, key_prefix) as slow:
        await with_ips(fast)
        await stamp_1(fast)
        reached, go_on = asyncio.Event(), asyncio.Event()
        late_key = f"{key_prefix}late-write"

        async def slow_step(ctx: MigrationContext) -> None:
            reached.set()
            await go_on.wait()
            await ctx.commit(GuardedTxn().put(late_key, "written by the slow node"))

        slowly = asyncio.ensure_future(ensure_schema(
            slow.store, slow.keys, current=2, migrations={**V1, 1: slow_step}))
        await reached.wait()
        assert (await ensure_schema(fast.store, fast.keys, current=2,
                                    migrations=TO_2)).migrated == (1,)
        go_on.set()
        assert await slowly == SchemaState(2, found=1)
        assert await fast.store.get(late_key) is None


async def test_a_missing_step_is_a_programming_error(ipam):
    await stamp_1(ipam)
    with pytest.raises(LookupError, match="no migration registered from schema 1"):
        await ensure_schema(ipam.store, ipam.keys, current=2, migrations=V1)
    assert await schema_value(ipam) == {"version": 1}


async def test_a_schema_key_that_never_settles_ends_in_conflict(ipam):
    await stamp_1(ipam)

    async def meddling(ctx: MigrationContext) -> None:
        # Another writer keeps rewriting the schema key while the step runs.
        await put(ipam, ipam.keys.schema(), b'{"version": 1}')
        await ctx.commit(GuardedTxn().put(f"{ipam.keys.prefix}x", "1"))

    with pytest.raises(Conflict, match="schema key kept changing"):
        await ensure_schema(ipam.store, ipam.keys, current=2,
                            migrations={**V1, 1: meddling})
    assert await ipam.store.get(f"{ipam.keys.prefix}x") is None


# --- 2 -> 3: API key records are signed --------------------------------------------------


async def unsigned_key(ipam: IPAM, role: str = "project_reader", n: int = 0) -> str:
    """An API key as a node of schema 2 wrote it (no signature); its secret."""
    secret = str(uuid.uuid4())
    digest = secret_hash(secret)
    access = f"SCW{n:017d}"
    record = {"access_key": access, "role": role, "organization_id": None,
              "project_ids": [] if role == "admin" else [new_project()],
              "resource_types": [], "description": "before signatures",
              "created_at": "2025-06-01T00:00:00+00:00", "expires_at": None,
              "secret_hash": digest}
    await put(ipam, ipam.keys.api_key_by_access(access), digest.encode())
    await put(ipam, ipam.keys.api_key_by_secret(digest), json.dumps(record).encode())
    return secret


async def at_schema_2(ipam: IPAM) -> None:
    await put(ipam, ipam.keys.schema(), b'{"version": 2}')


async def stored(ipam: IPAM, secret: str) -> dict:
    kv = await ipam.store.get(ipam.keys.api_key_by_secret(secret_hash(secret)))
    assert kv is not None
    return json.loads(kv.value)


async def test_api_keys_written_at_schema_2_are_signed_once_by_the_step_to_3(ipam):
    await at_schema_2(ipam)
    secrets = [await unsigned_key(ipam, n=n) for n in range(60)]  # more than one batch
    credentials = ipam.credentials()
    assert await credentials.lookup(secrets[0]) is None  # refused until signed

    assert await ipam.ensure_schema() == SchemaState(5, found=2, migrated=(2, 3, 4))

    for secret in secrets:
        assert (await credentials.lookup(secret)).role == "project_reader"
        assert (await stored(ipam, secret))[SIGNED_AT_UPGRADE] is True
    rev = await revision(ipam)
    assert await ipam.ensure_schema() == SchemaState(5, found=5)
    assert await revision(ipam) == rev


async def test_a_record_with_a_wrong_signature_stays_refused_after_the_step(ipam):
    await at_schema_2(ipam)
    secret = await unsigned_key(ipam, role="admin")
    where = ipam.keys.api_key_by_secret(secret_hash(secret))
    await put(ipam, where, json.dumps({**await stored(ipam, secret),
                                       SIGNATURE: "0" * 64}).encode())
    await ipam.ensure_schema()
    assert (await stored(ipam, secret))[SIGNATURE] == "0" * 64
    assert await ipam.credentials().lookup(secret) is None


async def test_keys_waiting_for_a_signature_stop_a_node_without_a_signing_key(
        etcd_single, key_prefix):
    async with connected(etcd_single.endpoints, key_prefix, signing_key=None) as unkeyed:
        await at_schema_2(unkeyed)
        await unsigned_key(unkeyed)
        rev = await revision(unkeyed)
        with pytest.raises(NoSigningKey) as err:
            await unkeyed.ensure_schema()
        assert (err.value.precondition, err.value.message) == (
            "no_signing_key", ("1 API key records written before schema 3 must be signed, "
                               "and this node has no credential signing key: start a gateway "
                               "node"))
        assert await schema_value(unkeyed) == {"version": 2}
        assert await revision(unkeyed) == rev


async def test_a_schema_set_back_to_2_gets_no_planted_key_signed(ipam, caplog):
    caplog.set_level(logging.ERROR, "allocator.schema")
    await ipam.ensure_schema()
    _, genuine = await ipam.credentials().create(check_key_spec(
        "admin", None, None, None, "ops", None))
    planted = await unsigned_key(ipam, role="admin")
    await at_schema_2(ipam)  # an etcd writer sets the version back

    assert (await ipam.ensure_schema()).version == 5

    assert SIGNATURE not in await stored(ipam, planted)
    assert await ipam.credentials().lookup(planted) is None
    assert await ipam.credentials().lookup(genuine) is not None
    assert [r.getMessage() for r in caplog.records] == [
        (f"1 unsigned API key records found under {ipam.keys.prefix}, which holds keys "
         "created signed: the schema was set back by a writer of etcd; none is signed, they "
         "authenticate nobody")]


async def test_a_signing_step_stopped_midway_signs_the_rest_when_run_again(ipam):
    await at_schema_2(ipam)
    secrets = [await unsigned_key(ipam, n=n) for n in range(4)]
    for secret in secrets[:2]:  # what the interrupted run signed
        where = ipam.keys.api_key_by_secret(secret_hash(secret))
        signed = sign_record(SIGNING_KEY, where.removeprefix(ipam.keys.prefix),
                             {**await stored(ipam, secret), SIGNED_AT_UPGRADE: True})
        await put(ipam, where, json.dumps(signed).encode())

    assert (await ipam.ensure_schema()).migrated == (2, 3, 4)

    assert all([await ipam.credentials().lookup(s) for s in secrets])
