"""API keys in etcd: create, find, list, revoke, the node cache and its watch; bad specs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from allocator.credentials import ApiKey, Credentials, check_key_spec, is_access_key
from allocator.errors import InvalidArgument, NotFound
from allocator.keys import Keys
from allocator.store import EtcdStore
from devcluster.faults import FaultyStore

PROJECT = str(uuid.uuid4())


def spec(**changes):
    base = dict(role="project_member", organization_id=None, project_ids=[PROJECT],
                resource_types=None, description="test", expires_at=None)
    return check_key_spec(**{**base, **changes})


@pytest.fixture
async def credentials(etcd_single, key_prefix):
    store = FaultyStore(EtcdStore(etcd_single.endpoints))
    creds = Credentials(store, Keys(key_prefix))
    await creds.start()
    try:
        yield creds
    finally:
        await creds.close()
        await store.close()


async def _cached(creds: Credentials, secret: str, present: bool) -> None:
    """Wait (bounded) until the node cache agrees with etcd about `secret`."""
    for _ in range(100):
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
    key, secret = await credentials.create(spec())
    await _cached(credentials, secret, True)


def test_an_expiry_in_the_past_is_expired_and_none_never_is():
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    assert ApiKey("SCW" + "A" * 17, "admin", expires_at=past).is_expired()
    assert not ApiKey("SCW" + "A" * 17, "admin").is_expired()


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
], ids=lambda v: str(v))
def test_a_bad_key_spec_names_its_argument(changes, argument):
    with pytest.raises(InvalidArgument) as err:
        spec(**changes)
    assert err.value.problems[0].argument_name == argument
