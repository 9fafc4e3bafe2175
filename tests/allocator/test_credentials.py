"""API keys in etcd: create, find, list, revoke, the node cache and its watch; bad specs;
signed records (a record etcd write access alone could mint is refused)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from allocator_support import SIGNING_KEY, connected

from allocator.contract import export_state, import_state
from allocator.credentials import (
    SIGNATURE,
    ApiKey,
    Credentials,
    check_key_spec,
    is_access_key,
    secret_hash,
)
from allocator.errors import InvalidArgument, NotFound, PreconditionFailed
from allocator.keys import Keys
from allocator.store import EtcdStore
from allocator.txn import GuardedTxn, commit
from devcluster.faults import FaultyStore

PROJECT = str(uuid.uuid4())
OTHER_KEY = b"another deployment's signing key"
FORGED = "SCW" + "F" * 17


def spec(**changes):
    base = {"role": "project_member", "organization_id": None, "project_ids": [PROJECT],
            "resource_types": None, "description": "test", "expires_at": None}
    return check_key_spec(**{**base, **changes})


@pytest.fixture
async def credentials(etcd_single, key_prefix):
    store = FaultyStore(EtcdStore(etcd_single.endpoints))
    creds = Credentials(store, Keys(key_prefix), SIGNING_KEY)
    await creds.start()
    try:
        yield creds
    finally:
        await creds.close()
        await store.close()


async def _cached(creds: Credentials, secret: str, present: bool) -> None:
    """Wait (bounded: 10 s of round trips, for a loaded machine) until the node cache
    agrees with etcd about `secret`."""
    deadline = asyncio.get_running_loop().time() + 10.0
    while asyncio.get_running_loop().time() < deadline:
        if (creds.cached(secret) is not None) == present:
            return
        await creds.store.get(creds.guard(secret))  # a round trip lets the watch deliver
    raise AssertionError("the cache never caught up")


async def test_a_key_is_found_by_secret_and_by_access_key_then_revoked_everywhere(
        credentials):
    key, secret = await credentials.create(spec())
    assert is_access_key(key.access_key) and uuid.UUID(secret)
    assert (await credentials.lookup(secret)).access_key == key.access_key
    assert (await credentials.get(key.access_key)).project_ids == (PROJECT,)
    assert [k.access_key for k in await credentials.list()] == [key.access_key]
    await _cached(credentials, secret, True)
    await credentials.revoke(key.access_key)
    assert await credentials.lookup(secret) is None
    with pytest.raises(NotFound):
        await credentials.get(key.access_key)
    with pytest.raises(NotFound):
        await credentials.revoke(key.access_key)
    await _cached(credentials, secret, False)


async def test_a_compacted_key_watch_reloads_the_cache(credentials):
    credentials.store.compact_watches()
    _, secret = await credentials.create(spec())
    await _cached(credentials, secret, True)


def test_an_expiry_in_the_past_is_expired_and_none_never_is():
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    assert ApiKey("SCW" + "A" * 17, "admin", expires_at=past).is_expired()
    assert not ApiKey("SCW" + "A" * 17, "admin").is_expired()


def test_an_expiry_spelled_in_lower_case_is_kept_as_one_the_key_can_check():
    """RFC 3339 allows "t" and "z"; fromisoformat, which is_expired uses, does not: a key
    so created answered 500 to every request."""
    key = spec(expires_at="2099-01-01t00:00:00z")
    assert key.expires_at == "2099-01-01T00:00:00Z" and not key.is_expired()


@pytest.mark.parametrize(("changes", "argument"), [
    ({"role": "owner"}, "role"),
    ({"role": None}, "role"),
    ({"organization_id": "nope"}, "organization_id"),
    ({"project_ids": "one"}, "project_ids"),
    ({"project_ids": []}, "project_ids"),
    ({"role": "admin"}, "project_ids"),
    ({"resource_types": ["custom"]}, "resource_types"),
    ({"role": "product", "project_ids": []}, "resource_types"),
    ({"resource_types": ["instance_server"]}, "resource_types"),
    ({"description": "x" * 256}, "description"),
    ({"expires_at": "tomorrow"}, "expires_at"),
    ({"expires_at": "2099-01-01T00:00:00"}, "expires_at"),
    ({"expires_at": "2000-01-01T00:00:00+00:00"}, "expires_at"),
    ({"expires_at": "2099-W01-1T00:00:00+00:00"}, "expires_at"),
    ({"expires_at": "20990101T000000Z"}, "expires_at"),
    ({"expires_at": "2099-01-01 00:00:00+00:00"}, "expires_at"),
    ({"expires_at": "2099-01-01T00+00:00"}, "expires_at"),
    ({"expires_at": "2099-01-01T00:00:00+00:00:30"}, "expires_at"),
    ({"expires_at": 4102444800}, "expires_at"),
], ids=lambda v: str(v))
def test_a_bad_key_spec_names_its_argument(changes, argument):
    with pytest.raises(InvalidArgument) as err:
        spec(**changes)
    assert err.value.problems[0].argument_name == argument


# --- signed records --------------------------------------------------------------------


def forged_admin(secret: str) -> dict:
    """An admin record for a secret of the forger's choosing, as an etcd writer would put
    it: every field right, the hash of the secret right, no signing key."""
    return {"access_key": FORGED, "role": "admin", "organization_id": None,
            "project_ids": [], "resource_types": [], "description": "forged",
            "created_at": "2026-01-01T00:00:00+00:00", "expires_at": None,
            "secret_hash": secret_hash(secret)}


def etcdctl_put(endpoints, key: str, value: str) -> None:
    """Write with etcd's own client, as whoever holds an etcd client certificate could."""
    done = subprocess.run(["etcdctl", f"--endpoints={','.join(endpoints)}", "put", key, value],
                          env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout) == (0, "OK\n"), done.stderr


async def record_of(creds: Credentials, secret: str) -> dict:
    kv = await creds.store.get(creds.guard(secret))
    assert kv is not None
    return json.loads(kv.value)


async def rewrite(creds: Credentials, key: str, record: dict) -> None:
    await commit(creds.store, GuardedTxn().put(key, json.dumps(record)))


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "allocator.credentials" and "refused" in r.getMessage()]


async def test_a_created_record_carries_a_signature_and_no_secret(credentials):
    _, secret = await credentials.create(spec())
    record = await record_of(credentials, secret)
    assert len(record[SIGNATURE]) == 64 and secret not in json.dumps(record)
    assert record["secret_hash"] == secret_hash(secret)


async def test_a_forged_admin_put_with_etcdctl_authenticates_nobody_and_is_logged_once(
        credentials, etcd_single, caplog):
    caplog.set_level(logging.WARNING, "allocator.credentials")
    secret = str(uuid.uuid4())
    where = credentials.guard(secret)
    etcdctl_put(etcd_single.endpoints, where, json.dumps(forged_admin(secret)))
    etcdctl_put(etcd_single.endpoints, credentials.keys.api_key_by_access(FORGED),
                secret_hash(secret))
    assert await credentials.lookup(secret) is None
    assert await credentials.lookup(secret) is None
    with pytest.raises(NotFound):
        await credentials.get(FORGED)
    assert await credentials.list() == []
    await _cached(credentials, secret, False)
    assert refusals(caplog) == [(f"API key {FORGED} refused: its record in etcd carries no "
                                 "signature; it authenticates nobody")]
    logged = caplog.text
    assert secret_hash(secret) not in logged and secret not in logged
    await credentials.revoke(FORGED)  # an operator still removes it by its access key
    assert await credentials.store.get(where) is None


@pytest.mark.parametrize("tamper", [
    {"role": "admin", "project_ids": []},
    {"project_ids": [PROJECT, str(uuid.uuid4())]},
    {"expires_at": None, "description": "renewed"},
    {SIGNATURE: "0" * 64},
    {SIGNATURE: None},
], ids=["role", "projects", "description", "signature", "no-signature"])
async def test_a_record_changed_after_signing_is_refused(credentials, tamper, caplog):
    caplog.set_level(logging.WARNING, "allocator.credentials")
    key, secret = await credentials.create(spec(role="project_reader"))
    await _cached(credentials, secret, True)
    record = {k: v for k, v in {**await record_of(credentials, secret), **tamper}.items()
              if v is not None or k != SIGNATURE}
    await rewrite(credentials, credentials.guard(secret), record)
    assert await credentials.lookup(secret) is None
    with pytest.raises(NotFound):
        await credentials.get(key.access_key)
    assert await credentials.list() == []
    await _cached(credentials, secret, False)  # the watch dropped it from the cache too
    assert len(refusals(caplog)) == 1 and key.access_key in refusals(caplog)[0]


async def test_a_genuine_record_moved_under_another_secret_is_refused(credentials):
    _, secret = await credentials.create(spec(role="admin", project_ids=[]))
    chosen = str(uuid.uuid4())
    record = {**await record_of(credentials, secret), "secret_hash": secret_hash(chosen)}
    await rewrite(credentials, credentials.guard(chosen), record)
    assert await credentials.lookup(chosen) is None
    assert await credentials.lookup(secret) is not None


async def test_an_access_key_index_pointing_at_another_record_finds_nothing(credentials):
    first, _ = await credentials.create(spec())
    _, other_secret = await credentials.create(spec())
    await commit(credentials.store, GuardedTxn().put(
        credentials.keys.api_key_by_access(first.access_key), secret_hash(other_secret)))
    with pytest.raises(NotFound):
        await credentials.get(first.access_key)


async def test_a_node_with_another_signing_key_refuses_the_key_and_one_with_the_same_takes_it(
        credentials):
    key, secret = await credentials.create(spec())
    same = Credentials(credentials.store, credentials.keys, SIGNING_KEY)
    other = Credentials(credentials.store, credentials.keys, OTHER_KEY)
    assert (await same.lookup(secret)).access_key == key.access_key
    assert await other.lookup(secret) is None
    assert await other.list() == []


async def test_a_node_without_a_signing_key_creates_no_key_and_accepts_none(credentials):
    _, secret = await credentials.create(spec())
    unkeyed = Credentials(credentials.store, credentials.keys)
    with pytest.raises(PreconditionFailed) as err:
        await unkeyed.create(spec())
    assert (err.value.precondition, err.value.message) == (
        "no_signing_key", "this node has no credential signing key: it cannot create API keys")
    assert await unkeyed.lookup(secret) is None
    assert len(await credentials.list()) == 1  # nothing written


async def test_a_record_that_is_not_json_is_refused(credentials, caplog):
    caplog.set_level(logging.WARNING, "allocator.credentials")
    secret = str(uuid.uuid4())
    await commit(credentials.store, GuardedTxn().put(credentials.guard(secret), "not json"))
    assert await credentials.lookup(secret) is None
    assert refusals(caplog) == [("API key (none) refused: its record in etcd is not a key "
                                 "record; it authenticates nobody")]


async def test_a_restore_keeps_keys_under_the_same_signing_key_and_another_refuses_them(
        etcd_single, key_prefix):
    """A backup copies records byte for byte: the target's nodes accept its keys when they
    derive the same signing key (same admin secret, or the source's secret in
    --credential-signing-key-file), and refuse them otherwise."""
    target_prefix = key_prefix.rstrip("/") + "-restored/"
    async with connected(etcd_single.endpoints, key_prefix) as source:
        await source.ensure_schema()
        _, secret = await source.credentials().create(spec())
        out = io.BytesIO()
        await export_state(source.store, source.keys, out)
    async with connected(etcd_single.endpoints, target_prefix,
                         signing_key=OTHER_KEY) as other:
        await import_state(other.store, other.keys, io.BytesIO(out.getvalue()))
        assert (await other.ensure_schema()).migrated == ()
        assert await other.credentials().lookup(secret) is None
    async with connected(etcd_single.endpoints, target_prefix) as same:
        assert (await same.credentials().lookup(secret)).project_ids == (PROJECT,)
