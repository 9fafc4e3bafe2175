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
  is not copied (a conflict): it would act for another organization's project.

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
    already, and the conflicts (the etcd key, and why), none of which was written."""

    copied: int = 0
    same: int = 0
    conflicts: list[tuple[str, str]] = field(default_factory=list)


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
    for index in indexes:
        record = by_digest.get(index.value.decode())
        if record is None:  # revoked while we read: nothing to copy
            continue
        why = await _foreign_projects(target, keys, record)
        if why:
            done.conflicts.append((record.key, why))
            continue
        await _copy(target, [index, record], done)
    return done


async def _copy(target: Store, kvs: list[KV], done: IdentityCopied, tries: int = 3) -> None:
    """Write `kvs` into `target` together, if it holds none of them; count them as the
    same if it holds them all as they are; else a conflict, and nothing written."""
    held = await target.get_many(kv.key for kv in kvs)
    if all(kv.key in held and held[kv.key].value == kv.value for kv in kvs):
        done.same += len(kvs)
        return
    if held:
        for kv in kvs:
            if kv.key in held and held[kv.key].value != kv.value:
                done.conflicts.append((kv.key, "the target holds another value"))
        return
    txn = GuardedTxn()
    for n, kv in enumerate(kvs):
        txn.absent(str(n), kv.key).put(kv.key, kv.value)
    if (await commit(target, txn)).succeeded:
        done.copied += len(kvs)
    elif tries > 1:  # written meanwhile by someone else: judge what is there now
        await _copy(target, kvs, done, tries - 1)
    else:
        done.conflicts.extend((kv.key, "kept changing in the target") for kv in kvs)


async def _foreign_projects(target: Store, keys: Keys, record: KV) -> str | None:
    """Why a key record must not be copied to `target` (a project it names maps to
    another organization there), or None."""
    try:
        fields = json.loads(record.value)
        organization, projects = fields.get("organization_id"), fields.get("project_ids")
    except (ValueError, AttributeError):
        return None  # not ours to judge: the target refuses it as the source does
    if not organization or not isinstance(projects, list):
        return None
    mapped = await target.get_many(keys.project_organization(str(p)) for p in projects)
    other = sorted(keys.last_segment(k) for k, kv in mapped.items()
                   if kv.value.decode() != organization)
    if other:
        return (f"its project(s) {', '.join(other)} belong to another organization there "
                f"than the key's {organization}")
    return None
