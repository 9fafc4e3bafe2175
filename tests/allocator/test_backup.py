"""Logical backup and restore of an IPAM prefix, against real etcd."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence

import pytest
from aetcd import rpc
from allocator_support import REGION, book_in, clean_audit, connected, make_pn, new_project

from allocator.contract import (
    IPAM,
    AddressAsk,
    BackupInvalid,
    BackupSummary,
    IPFilter,
    Resource,
    RestoreInProgress,
    RestoreInterrupted,
    SchemaTooNew,
    TargetNotEmpty,
    check_key_spec,
    CURRENT_SCHEMA,
    ensure_schema,
    export_state,
    import_state,
)
from allocator.errors import StoreError
from allocator.store import EtcdStore
from devcluster.faults import FaultyStore

# --- helpers -------------------------------------------------------------------------


@pytest.fixture
def target_prefix() -> str:
    """A second prefix of this test, disjoint from `key_prefix`."""
    return f"/t/{uuid.uuid4().hex[:12]}/"


@pytest.fixture
async def target(etcd_single, target_prefix):
    async with connected(etcd_single.endpoints, target_prefix) as ipam:
        yield ipam


async def state(ipam: IPAM) -> dict[str, bytes]:
    """Every key under the IPAM's prefix (relative) and its value."""
    kvs, _ = await ipam.store.scan(ipam.keys.prefix)
    return {kv.key[len(ipam.keys.prefix):]: kv.value for kv in kvs}


async def cluster_revision(ipam: IPAM) -> int:
    _, rev = await ipam.store.count("/")
    return rev


async def backup_of(ipam: IPAM, **kwargs) -> tuple[bytes, BackupSummary]:
    out = io.BytesIO()
    summary = await export_state(ipam.store, ipam.keys, out, **kwargs)
    return out.getvalue(), summary


def vm(n: int) -> Resource:
    return Resource.custom(f"02:00:00:00:01:{n:02x}", f"vm{n}")


async def populate(ipam: IPAM) -> dict[str, object]:
    """A VPC, Private Networks with several subnets, IPs in every state, a zonal pool and
    API keys; what the tests check again after a restore."""
    project = new_project()
    vpc = await ipam.create_vpc(REGION, project, None, "prod", tags=["env=prod"])
    web = await ipam.create_private_network(
        REGION, project, None, "web", vpc_id=vpc.id,
        subnets=["10.40.0.0/24", "10.40.1.0/24", "fd00:40::/64"])
    db = await make_pn(ipam, project, "10.41.0.0/28")
    plain = await ipam.book(book_in(web, project))
    tagged = await ipam.book(book_in(web, project, tags=["a", "b"]))
    attached = await ipam.book(book_in(web, project, resource=vm(1)))
    six = await ipam.book(book_in(web, project, is_ipv6=True, resource=vm(1)))
    await ipam.update_ip(attached.id, reverses=[{"hostname": "web1.example.com"}])
    idem = await ipam.book(book_in(db, project, idempotency_key="retry-1"))
    gone = await ipam.book(book_in(db, project))
    await ipam.release(gone.id)  # leaves the source's `freed` key
    await ipam.attach(idem.id, vm(2), idempotency_key="attach-1")
    pool = await ipam.create_zonal_pool(REGION, "fr-par-1", "51.40.0.0/29")
    zonal = await ipam.book(AddressAsk(region=REGION, project_id=project, zonal="fr-par-1"))
    creds = ipam.credentials()
    _, secret = await creds.create(check_key_spec("project_member", None, [project], None,
                                                  "ci", None))
    await creds.create(check_key_spec("admin", None, None, None, "ops", None))
    return {"project": project, "web": web, "db": db, "pool": pool, "secret": secret,
            "ips": [plain, tagged, attached, six, idem, zonal]}


# --- round trip ----------------------------------------------------------------------


async def test_a_populated_ipam_restores_into_an_empty_prefix_key_for_key(ipam, target):
    await ensure_schema(ipam.store, ipam.keys)
    await populate(ipam)
    before = await state(ipam)
    data, exported = await backup_of(ipam, page=7)  # many pages

    restored = await import_state(target.store, target.keys, io.BytesIO(data))

    assert await state(target) == before
    assert exported.count == restored.count == len(before) - 1  # the schema key is the header
    assert exported.schema_version == restored.schema_version == CURRENT_SCHEMA
    # The two idempotency records, and the event feed's (`allocator.events`).
    events = sum(key.startswith("ev/") for key in before)
    assert restored.leased == exported.leased == 2 + events
    assert (restored.prefix, restored.source_prefix) == (target.keys.prefix, ipam.keys.prefix)
    assert (restored.resumed_from, restored.written) == (0, restored.count)
    assert restored.transactions == -(-restored.count // 125)
    report = await clean_audit(target)
    assert report.records == 6


async def test_a_restored_ipam_is_usable(ipam, target):
    made = await populate(ipam)
    data, _ = await backup_of(ipam)
    await import_state(target.store, target.keys, io.BytesIO(data))
    project, web, db = made["project"], made["web"], made["db"]
    ips = made["ips"]

    listed, total = await target.list_ips(IPFilter(project_id=project), page_size=100)
    assert total == 6
    assert {ip.id for ip in listed} == {ip.id for ip in ips}
    assert (await target.get_ip(ips[2].id)).reverses[0].hostname == "web1.example.com"
    # A retried booking gets its first answer on the restored prefix, not a second IP.
    again = await target.book(book_in(db, project, idempotency_key="retry-1"))
    assert again.id == ips[4].id
    # New bookings never take an address a restored IP holds.
    fresh = [await target.book(book_in(web, project)) for _ in range(5)]
    assert not {f.address for f in fresh} & {ip.address for ip in ips}
    await target.detach(ips[2].id, vm(1))
    await target.release(ips[2].id)
    assert await target.credentials().lookup(made["secret"]) is not None
    await clean_audit(target)


async def test_leased_keys_are_restored_on_a_new_lease(ipam, target):
    await populate(ipam)
    data, _ = await backup_of(ipam)
    await import_state(target.store, target.keys, io.BytesIO(data))
    for ipam_ in (ipam, target):
        resp = await ipam_.store.range(ipam_.keys.idempotency("", "retry-1"))
        assert resp.kvs[0].lease != 0
    source_lease = (await ipam.store.range(ipam.keys.idempotency("", "retry-1"))).kvs[0].lease
    target_lease = (await target.store.range(target.keys.idempotency("", "retry-1"))).kvs[0].lease
    assert source_lease != target_lease


async def test_a_backup_in_a_text_stream_restores_like_a_binary_one(ipam, target):
    await populate(ipam)
    out = io.StringIO()
    summary = await export_state(ipam.store, ipam.keys, out)
    restored = await import_state(target.store, target.keys, io.StringIO(out.getvalue()))
    assert restored.count == summary.count
    assert await state(target) == await state(ipam)


async def test_data_without_a_schema_key_restores_as_version_0_and_migrates(ipam, target):
    await populate(ipam)
    data, exported = await backup_of(ipam)
    assert exported.schema_version == 0
    await import_state(target.store, target.keys, io.BytesIO(data))
    assert "schema" not in await state(target)
    schema = await ensure_schema(target.store, target.keys)
    assert (schema.found, schema.migrated, schema.version) == (
        0, tuple(range(CURRENT_SCHEMA)), CURRENT_SCHEMA)


@pytest.mark.parametrize("stamped", [False, True])
async def test_an_empty_prefix_round_trips(ipam, target, stamped):
    if stamped:
        await ensure_schema(ipam.store, ipam.keys)
    data, exported = await backup_of(ipam)
    restored = await import_state(target.store, target.keys, io.BytesIO(data))
    assert exported.count == restored.count == 0
    assert await state(target) == await state(ipam)


# --- the target ----------------------------------------------------------------------


async def test_a_target_holding_data_is_refused_and_unchanged(ipam, target):
    await populate(ipam)
    data, _ = await backup_of(ipam)
    await make_pn(target, new_project(), "10.9.0.0/24")
    before, rev = await state(target), await cluster_revision(target)
    with pytest.raises(TargetNotEmpty) as err:
        await import_state(target.store, target.keys, io.BytesIO(data))
    assert err.value.message.startswith(f"cannot restore into {target.keys.prefix}: it holds ")
    assert await state(target) == before
    assert await cluster_revision(target) == rev


async def test_a_target_holding_only_its_schema_key_takes_a_backup_of_that_version(
        ipam, target):
    await ensure_schema(ipam.store, ipam.keys)
    await populate(ipam)
    data, _ = await backup_of(ipam)
    await ensure_schema(target.store, target.keys)  # a node started on the new prefix first
    await import_state(target.store, target.keys, io.BytesIO(data))
    assert await state(target) == await state(ipam)


async def test_a_target_stamped_with_another_schema_is_refused(ipam, target):
    await populate(ipam)  # schema 0: no schema key
    data, _ = await backup_of(ipam)
    await ensure_schema(target.store, target.keys)
    rev = await cluster_revision(target)
    with pytest.raises(TargetNotEmpty) as err:
        await import_state(target.store, target.keys, io.BytesIO(data))
    assert (f"stamped with schema {CURRENT_SCHEMA} and the backup is schema 0"
            in err.value.message)
    assert await cluster_revision(target) == rev


# --- damaged files -------------------------------------------------------------------


def lines_of(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def resealed(lines: Sequence[bytes]) -> bytes:
    """The lines (header and keys) with a trailer that matches them again."""
    digest = hashlib.sha256(b"".join(lines)).hexdigest()
    return b"".join(lines) + json.dumps({"count": len(lines) - 1, "sha256": digest}).encode() \
        + b"\n"


def edit_json(line: bytes, **changes) -> bytes:
    return json.dumps({**json.loads(line), **changes}).encode() + b"\n"


def flip_value(line: bytes) -> bytes:
    data = json.loads(line)
    data["v"] = base64.b64encode(base64.b64decode(data["v"]) + b" ").decode()
    return json.dumps(data).encode() + b"\n"


DAMAGE: dict[str, tuple[Callable[[list[bytes]], bytes], str]] = {
    "empty file": (lambda ls: b"", "the file is empty"),
    "not json": (lambda ls: b"hello\n" + b"".join(ls[1:]), "line 1: not JSON"),
    "another format": (lambda ls: edit_json(ls[0], format="tar") + b"".join(ls[1:]),
                       "not an ipam-backup file"),
    "a newer format version": (lambda ls: edit_json(ls[0], version=2) + b"".join(ls[1:]),
                               "backup format version 2 is not supported"),
    "a header without prefix": (
        lambda ls: resealed([edit_json(ls[0], prefix=None), *ls[1:-1]]),
        "header: prefix missing"),
    "no trailer": (lambda ls: b"".join(ls[:-1]), "ends before its trailer"),
    "cut in the middle of a line": (lambda ls: b"".join(ls[:4]) + ls[4][:20],
                                    "line 5: not JSON"),
    "a key line dropped": (lambda ls: b"".join(ls[:3] + ls[4:]), "the trailer counts"),
    "a value edited": (lambda ls: b"".join([*ls[:3], flip_value(ls[3]), *ls[4:]]),
                       "checksum mismatch"),
    "the header edited": (lambda ls: edit_json(ls[0], revision=1) + b"".join(ls[1:]),
                          "checksum mismatch"),
    "lines swapped": (lambda ls: b"".join([ls[0], ls[2], ls[1], *ls[3:]]),
                      "line 3: key"),
    "a line repeated": (lambda ls: b"".join([*ls[:3], ls[2], *ls[3:]]), "out of order"),
    "a value that is not base64": (
        lambda ls: b"".join([*ls[:2], edit_json(ls[2], v="%%%"), *ls[3:]]),
        "line 3: value is not base64"),
    "a line of another kind": (lambda ls: b"".join([*ls[:2], b"[1, 2]\n", *ls[2:]]),
                               "line 3: not a JSON object"),
    "a key line with an unknown field": (
        lambda ls: b"".join([*ls[:2], edit_json(ls[2], ttl=5), *ls[3:]]),
        "line 3: not a key line"),
    "the schema key among the keys": (
        lambda ls: resealed([ls[0], *ls[1:-1], b'{"k":"schema","v":""}\n']),
        "the schema key belongs in the header"),
    "data after the trailer": (lambda ls: b"".join(ls) + b'{"k":"zzz","v":""}\n',
                               "data after the trailer"),
    "a trailer with extra fields": (lambda ls: b"".join(ls[:-1]) + edit_json(ls[-1], more=1),
                                    "unexpected trailer"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
async def test_a_damaged_file_is_refused_before_any_write(ipam, target, damage):
    await populate(ipam)
    data, _ = await backup_of(ipam)
    spoil, message = DAMAGE[damage]
    rev = await cluster_revision(target)
    with pytest.raises(BackupInvalid) as err:
        await import_state(target.store, target.keys, io.BytesIO(spoil(lines_of(data))))
    assert message in err.value.message
    assert await state(target) == {}
    assert await cluster_revision(target) == rev


async def test_a_backup_of_a_newer_schema_is_refused_before_any_write(ipam, target):
    await populate(ipam)
    data, _ = await backup_of(ipam)
    ls = lines_of(data)
    newer = resealed([edit_json(ls[0], schema_version=CURRENT_SCHEMA + 1), *ls[1:-1]])
    rev = await cluster_revision(target)
    with pytest.raises(SchemaTooNew) as err:
        await import_state(target.store, target.keys, io.BytesIO(newer))
    assert err.value.message == (f"etcd holds schema {CURRENT_SCHEMA + 1}, this node "
                                 f"understands up to {CURRENT_SCHEMA}: upgrade this node")
    assert await cluster_revision(target) == rev


# --- consistency under load ----------------------------------------------------------


async def test_an_export_during_bookings_is_the_prefix_at_one_revision(ipam, target):
    project = new_project()
    pn = await make_pn(ipam, project, "10.42.0.0/22")
    started = asyncio.Event()
    exported = asyncio.Event()
    booked: list[str] = []

    async def book_until_exported() -> None:
        while not exported.is_set():
            booked.append((await ipam.book(book_in(pn, project, tags=["x"]))).id)
            if len(booked) >= 20:
                started.set()

    bookers = [asyncio.ensure_future(book_until_exported()) for _ in range(4)]
    await started.wait()
    data, summary = await backup_of(ipam, page=3)
    exported.set()
    await asyncio.gather(*bookers)

    at_export, _ = await ipam.store.scan(ipam.keys.prefix, revision=summary.revision)
    assert max(kv.mod_revision for kv in at_export) <= summary.revision
    restored = await import_state(target.store, target.keys, io.BytesIO(data))
    assert restored.count == len(at_export)
    report = await clean_audit(target)
    assert 20 <= report.records < len(booked)  # bookings went on during the export
    assert await state(target) == {kv.key[len(ipam.keys.prefix):]: kv.value
                                   for kv in at_export}


# --- interruptions -------------------------------------------------------------------


class MeddledStore(FaultyStore):
    """Real etcd; before write number `at`, runs `before` (another client's change), then,
    with `lose` set, loses that write's answer (after applying it, or instead)."""

    def __init__(self, store: EtcdStore, at: int, *, lose: bool | None = None,
                 before: Callable[[], Awaitable[object]] | None = None) -> None:
        super().__init__(store)
        self.at, self.lose, self.before = at, lose, before

    async def txn(self, compare, success, failure=(), *, retry=False):
        writes = any(op.HasField("request_put") or op.HasField("request_delete_range")
                     for op in success)
        if writes and self.writes_seen + 1 == self.at:
            if self.before is not None:
                await self.before()
            if self.lose is not None:
                self.lose_answers(1, applied=self.lose)
        return await super().txn(compare, success, failure, retry=retry)


async def many_keys(ipam: IPAM) -> None:
    """More than two restore transactions' worth of keys."""
    project = new_project()
    pn = await make_pn(ipam, project, "10.43.0.0/24")
    await asyncio.gather(*(ipam.book(book_in(pn, project)) for _ in range(70)))


@pytest.mark.parametrize("applied", [False, True])
async def test_a_restore_cut_short_is_refused_by_nodes_and_resumes(
        ipam, etcd_single, target_prefix, applied):
    await ensure_schema(ipam.store, ipam.keys)
    await many_keys(ipam)
    data, _ = await backup_of(ipam)
    store = MeddledStore(EtcdStore(etcd_single.endpoints), at=2, lose=applied)
    async with connected(etcd_single.endpoints, target_prefix) as target:
        with pytest.raises(StoreError):
            await import_state(store, target.keys, io.BytesIO(data))
        # Half a prefix: no node serves it, nobody backs it up.
        with pytest.raises(RestoreInProgress) as err:
            await ensure_schema(target.store, target.keys)
        written = 250 if applied else 125
        assert err.value.progress.written == written
        assert f"wrote {written} of " in err.value.message
        with pytest.raises(RestoreInProgress):
            await backup_of(target)

        resumed = await import_state(store, target.keys, io.BytesIO(data))

        assert resumed.resumed_from == written
        assert resumed.written == resumed.count - written
        assert await state(target) == await state(ipam)
        await clean_audit(target)
        assert (await ensure_schema(target.store, target.keys)).version == CURRENT_SCHEMA
    await store.close()


async def test_an_unfinished_restore_refuses_another_backup(ipam, etcd_single, target_prefix):
    await many_keys(ipam)
    data, _ = await backup_of(ipam)
    other = lines_of(data)
    other_data = resealed([*other[:3], *other[4:-1]])
    store = MeddledStore(EtcdStore(etcd_single.endpoints), at=2, lose=False)
    async with connected(etcd_single.endpoints, target_prefix) as target:
        with pytest.raises(StoreError):
            await import_state(store, target.keys, io.BytesIO(data))
        before = await state(target)
        with pytest.raises(TargetNotEmpty) as err:
            await import_state(store, target.keys, io.BytesIO(other_data))
        assert "unfinished restore of another backup" in err.value.message
        assert await state(target) == before
    await store.close()


async def test_a_writer_racing_the_first_restore_write_stops_it_before_any_write(
        ipam, etcd_single, target_prefix):
    await many_keys(ipam)
    data, _ = await backup_of(ipam)
    async with connected(etcd_single.endpoints, target_prefix) as target:
        async def intrude() -> None:
            await make_pn(target, new_project(), "10.8.0.0/24")

        store = MeddledStore(EtcdStore(etcd_single.endpoints), at=1, before=intrude)
        try:
            with pytest.raises(TargetNotEmpty) as err:
                await import_state(store, target.keys, io.BytesIO(data))
            assert "something wrote under it as the restore began" in err.value.message
            intruded = await state(target)
            assert not any(k.startswith("src/") and "/a/" in k for k in intruded)
            assert "schema" not in intruded
        finally:
            await store.close()


async def test_a_writer_during_the_restore_stops_it_and_leaves_it_refused(
        ipam, etcd_single, target_prefix):
    await many_keys(ipam)
    data, _ = await backup_of(ipam)
    async with connected(etcd_single.endpoints, target_prefix) as target:
        async def intrude() -> None:
            await target.store.txn([], [rpc.RequestOp(request_put=rpc.PutRequest(
                key=f"{target.keys.prefix}vpc/intruder".encode(), value=b"{}"))])

        store = MeddledStore(EtcdStore(etcd_single.endpoints), at=2, before=intrude)
        try:
            with pytest.raises(RestoreInterrupted) as err:
                await import_state(store, target.keys, io.BytesIO(data))
            assert err.value.written == 125
            assert "delete everything under it" in err.value.message
            # The prefix keeps saying what it is, and a resume is refused too.
            with pytest.raises(RestoreInProgress):
                await ensure_schema(target.store, target.keys)
            with pytest.raises(RestoreInterrupted):
                await import_state(store, target.keys, io.BytesIO(data))
        finally:
            await store.close()
