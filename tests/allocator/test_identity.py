"""`allocator.identity`: the identity copied to a region's new cluster, on two real etcd
clusters: what the target half holds, and a key revoked while the copy runs."""

from __future__ import annotations

from typing import Any

from allocator_support import connected, new_project

from allocator.contract import check_key_spec
from allocator.identity import copy_identity
from allocator.txn import GuardedTxn, commit
from devcluster.etcd import EtcdCluster


def _spec(project: str, organization: str) -> Any:
    return check_key_spec(role="project_member", organization_id=organization,
                          project_ids=[project], resource_types=None, description="t",
                          expires_at=None)


class _RevokedWhileRead:
    """The source store, whose key `revoke` is revoked right after the copy scanned the
    access-key index (a revocation on another node while the copy runs)."""

    def __init__(self, store: Any, index_prefix: str, revoke: list[str]) -> None:
        self._store, self._prefix, self._revoke = store, index_prefix, revoke

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def scan(self, prefix: str, **kwargs: Any) -> Any:
        found = await self._store.scan(prefix, **kwargs)
        if prefix == self._prefix:
            txn = GuardedTxn()
            for key in self._revoke:
                txn.delete(key)
            await commit(self._store, txn)
        return found


async def test_a_key_revoked_while_the_copy_runs_is_taken_back_and_a_half_key_completed(
        key_prefix: str) -> None:
    project, organization = new_project(), new_project()
    with EtcdCluster(1, name_prefix="cpa") as par, EtcdCluster(1, name_prefix="cpb") as ams:
        async with connected(par.endpoints, key_prefix) as source, \
                connected(ams.endpoints, key_prefix) as target:
            await source.set_project_organization(project, organization)
            kept, kept_secret = await source.credentials().create(_spec(project, organization))
            gone, gone_secret = await source.credentials().create(_spec(project, organization))
            keys = source.keys
            # The target holds half of `kept` already (its index), as a copy cut short.
            index = await source.store.get(keys.api_key_by_access(kept.access_key))
            assert index is not None
            await commit(target.store, GuardedTxn().put(index.key, index.value))
            gone_index = await source.store.get(keys.api_key_by_access(gone.access_key))
            assert gone_index is not None
            revoking = _RevokedWhileRead(
                source.store, keys.api_key_by_access(""),
                [gone_index.key, keys.api_key_by_secret(gone_index.value.decode())])

            done = await copy_identity(revoking, target.store, keys)  # type: ignore[arg-type]

            assert (done.revoked, done.conflicts) == (1, [])
            assert await target.credentials().lookup(gone_secret) is None
            found = await target.credentials().lookup(kept_secret)
            assert found is not None and found.access_key == kept.access_key
            # Written: the mapping and kept's record; its index was there already.
            assert (done.copied, done.same) == (2, 1)
