"""Copy a deployment's identity from one etcd cluster to another: what a region's new
cluster needs before a node serves it.

A node serving several regions, each on its own cluster, writes every identity change
(API keys, projects' organizations, quota overrides) to every cluster (docs/operations.md,
"Identity is in every cluster"). A cluster added later holds none of what came before:
`copy_identity` copies it, as stored:

- project -> organization mappings first, then quota overrides, then each API key (its
  signed record and its access-key index, in one transaction: a key is copied whole or
  not at all). A record is signed over its path below the prefix, so it verifies in the
  target as it is; nothing is verified or signed here (no signing key needed);
- only what the target lacks is written, each key guarded on being absent still; what
  the target holds already, the same, is counted; what it holds otherwise is a
  conflict, named and left as it is (nothing is overwritten, nothing deleted: a key
  revoked in the source stays wherever it is held);
- a project key whose projects the target maps to another organization than the key's
  is not copied (a conflict): it would act for another organization's project; the copy
  of a key is guarded on those mappings being as read;
- a key revoked in the source while the copy runs is taken back from the target once
  the copy is done (guarded on being as written): a revocation is never undone.

Run it again at will: a second run writes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .keys import Keys
from .store import KV, Store
from .txn import GuardedTxn, commit


@dataclass
class IdentityCopied:
    """What a copy did: the records (etcd keys) written, those the target held the same
    already, the conflicts (the etcd key, and why), none of which was written, and the
    API keys revoked in the source meanwhile, written and taken back."""

    copied: int = 0
    same: int = 0
    conflicts: list[tuple[str, str]] = field(default_factory=list)
    revoked: int = 0  # keys revoked in the source while the copy ran: taken back


async def copy_identity(source: Store, target: Store, keys: Keys) -> IdentityCopied:
    """Copy the identity under `keys.prefix` from `source`'s cluster to `target`'s (see
    the module docstring)."""
    done = IdentityCopied()
    organizations, _ = await source.scan(keys.project_organization())
    for kv in organizations:
        await _copy(target, [kv], done)
    overrides, _ = await source.scan(keys.quota_override())
    for kv in overrides:
        await _copy(target, [kv], done)
    records, _ = await source.scan(keys.api_key_by_secret())
    by_digest = {keys.last_segment(kv.key): kv for kv in records}
    indexes, _ = await source.scan(keys.api_key_by_access(""))
    written: dict[str, tuple[KV, KV, int]] = {}  # index key -> (index, record, revision)
    for index in indexes:
        record = by_digest.get(index.value.decode())
        if record is None:  # revoked while we read: nothing to copy
            continue
        mapped = await _mappings(target, keys, record)
        why = _foreign(keys, record, mapped)
        if why:
            done.conflicts.append((record.key, why))
            continue
        revision = await _copy(target, [index, record], done, mapped)
        if revision:
            written[index.key] = (index, record, revision)
    await _take_back_revoked(source, target, written, done)
    return done


async def _copy(target: Store, kvs: list[KV], done: IdentityCopied,
                unchanged: dict[str, KV | None] | None = None, tries: int = 3) -> int:
    """Write into `target` those of `kvs` it lacks, together, if it holds the others as
    they are (else a conflict, nothing written), guarded on the keys of `unchanged`
    being as read; the revision written at (0: nothing written)."""
    held = await target.get_many(kv.key for kv in kvs)
    differing = [kv for kv in kvs if kv.key in held and held[kv.key].value != kv.value]
    if differing:
        done.conflicts.extend((kv.key, "the target holds another value") for kv in differing)
        return 0
    missing = [kv for kv in kvs if kv.key not in held]
    done.same += len(kvs) - len(missing)
    if not missing:
        return 0
    txn = GuardedTxn()
    for n, kv in enumerate(missing):
        txn.absent(f"copy {n}", kv.key).put(kv.key, kv.value)
    for n, (key, seen) in enumerate((unchanged or {}).items()):
        txn.unchanged(f"mapping {n}", key, seen.mod_revision if seen else 0)
    out = await commit(target, txn)
    if out.succeeded:
        done.copied += len(missing)
        return out.revision
    done.same -= len(kvs) - len(missing)
    if tries > 1:  # written meanwhile by someone else: judge what is there now
        return await _copy(target, kvs, done, unchanged, tries - 1)
    done.conflicts.extend((kv.key, "kept changing in the target") for kv in missing)
    return 0


async def _mappings(target: Store, keys: Keys, record: KV) -> dict[str, KV | None]:
    """The target's organization of each project a project key's record names (None:
    none), read to judge the key and to guard its copy on."""
    try:
        fields = json.loads(record.value)
        projects = fields.get("project_ids") if fields.get("organization_id") else None
    except (ValueError, AttributeError):
        return {}  # not ours to judge: the target refuses it as the source does
    if not isinstance(projects, list):
        return {}
    wanted = [keys.project_organization(str(p)) for p in projects]
    found = await target.get_many(wanted)
    return {key: found.get(key) for key in wanted}


def _foreign(keys: Keys, record: KV, mapped: dict[str, KV | None]) -> str | None:
    """Why a key record must not be copied (a project it names belongs to another
    organization in the target), or None."""
    organization = json.loads(record.value)["organization_id"] if mapped else None
    other = sorted(keys.last_segment(k) for k, kv in mapped.items()
                   if kv is not None and kv.value.decode() != organization)
    if other:
        return (f"its project(s) {', '.join(other)} belong to another organization there "
                f"than the key's {organization}")
    return None


async def _take_back_revoked(source: Store, target: Store,
                             written: dict[str, tuple[KV, KV, int]],
                             done: IdentityCopied) -> None:
    """Delete from `target` the keys this copy wrote that `source` no longer holds (revoked
    while it ran), each guarded on being as written: a revocation is never undone."""
    if not written:
        return
    still = await source.get_many(written)
    for key, (index, record, revision) in written.items():
        if key in still and still[key].value == index.value:
            continue
        txn = (GuardedTxn().unchanged("index", index.key, revision)
               .unchanged("record", record.key, revision)
               .delete(index.key).delete(record.key))
        if (await commit(target, txn)).succeeded:
            done.copied -= 2
            done.revoked += 1
