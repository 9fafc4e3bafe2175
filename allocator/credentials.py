"""API keys: who may call the service, stored in etcd under the `auth/` prefix.

Keys look like Scaleway's: an access key `SCW` + 17 uppercase letters or digits
(public, names the key) and a secret key that is a UUID (shown once, at
creation). Only a SHA-256 of the secret is stored: a secret is 122 random bits,
so a fast hash is as safe as a slow one and costs nothing per request.

    {p}auth/secret/{sha256 of secret}   the key record (JSON), found by the secret
    {p}auth/key/{access_key}            the hash of its secret, found by access key

Both keys are written and deleted in one transaction. A project key (member or reader)
that names an organization maps its projects to it in the same transaction
(`organizations`): a project belongs to one organization, so a key naming another
organization for a project mapped already is refused (AlreadyExists), and nothing is
written. Such a key also takes a slot of its organization's key quota (`quotas`): beyond
it, QuotaExceeded, and nothing is written; a revocation frees the slot.

Each key record is signed: its `signature` is an HMAC-SHA256, with a signing key that
is never written to etcd (the gateway derives it from its configuration, see
`gateway.config`), over a canonical encoding of every other field of the record and of
the etcd key it is stored under (relative to the prefix, so a backup restores into
another prefix). Whoever can write etcd but lacks the signing key cannot mint a key: a
record without a signature, or with a wrong one, authenticates nobody, as if it were
absent; each such record is logged once (its access key, never its secret or hash).
The etcd key binds a record to its secret's hash, so a genuine record copied under the
hash of another secret is refused too. A node built without a signing key creates no
key and accepts none. Records written before signatures existed are signed once by
the schema step 2 -> 3 (`allocator.schema`).

Revocation holds on every node at once, two ways:
- a lookup (`lookup`) is one linearizable read: reads and administration use it;
- changes (book, attach, release, ...) take the key from this node's cache, kept
  fresh by an etcd watch (`cached`), and carry the key's etcd key as a guard of
  their own transaction (`guard`): a change made with a key revoked a moment ago
  on another node fails in etcd itself, before the watch even tells this node.
  That saves the booking path one etcd read per request.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import logging
import re
import secrets
import string
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import retry
from . import store as st
from .errors import AlreadyExists, Conflict, InvalidArgument, NotFound, PreconditionFailed
from .expiry import rfc3339
from .keys import Keys
from .organizations import ProjectOrganizations
from .quotas import QUOTA_GUARD, refuse_api_keys
from .reads import CoalescedReads
from .records import check_uuid, now
from .txn import GuardedTxn, commit

log = logging.getLogger(__name__)

ADMIN = "admin"
PROJECT_MEMBER = "project_member"
PROJECT_READER = "project_reader"
PRODUCT = "product"
ROLES = (ADMIN, PROJECT_MEMBER, PROJECT_READER, PRODUCT)

_ACCESS_KEY = re.compile(r"^SCW[A-Z0-9]{17}$")
_ALPHABET = string.ascii_uppercase + string.digits
_RESOURCE_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# A project key's creation maps each of its projects to its organization in one
# transaction (a guard and a write each): bounded under etcd's 128 operations.
MAX_KEY_PROJECTS = 100


SIGNATURE = "signature"  # the field of a key record that holds its HMAC
# Set (and signed) on the records the schema step 2 -> 3 signed; any signed record
# without it was written by `create`, which tells that step the prefix was signed before.
SIGNED_AT_UPGRADE = "signed_at_upgrade"
# The first bytes of what is signed: a record can never pass for another kind of message.
_SIGNED_LABEL = b"ipam api key record v1\n"
_REFUSALS_REMEMBERED = 10_000  # records whose refusal was logged; beyond, forgotten
_VERDICTS_REMEMBERED = 4096  # stored key records whose signature check is remembered


def sign_record(signing_key: bytes, where: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """`record` with its `signature` for storage under `where` (its etcd key, relative to
    the prefix): an HMAC-SHA256 over every other field and `where`."""
    fields = {k: v for k, v in record.items() if k != SIGNATURE}
    return {**fields, SIGNATURE: _signature(signing_key, where, fields)}


def signature_is_valid(signing_key: bytes, where: str, record: Mapping[str, Any]) -> bool:
    """Whether `record`, stored under `where`, carries its signature by `signing_key`."""
    given = record.get(SIGNATURE)
    if not isinstance(given, str):
        return False
    fields = {k: v for k, v in record.items() if k != SIGNATURE}
    return hmac.compare_digest(given, _signature(signing_key, where, fields))


def _signature(signing_key: bytes, where: str, fields: Mapping[str, Any]) -> str:
    # Sorted keys, no spaces, ASCII only: one encoding per record, whoever wrote its JSON.
    canonical = json.dumps({"key": where, "record": fields}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=True)
    return hmac.new(signing_key, _SIGNED_LABEL + canonical.encode(), hashlib.sha256).hexdigest()


@functools.lru_cache(maxsize=4096)
def secret_hash(secret_key: str) -> str:
    """The stored form of a secret key (canonical UUID, SHA-256, hex).

    Remembered for the last few thousand secrets: every request hashes its caller's up
    to three times (the admin check, the cache, the guard), and a client sends the same
    one again and again. The process holds those secrets while it serves them anyway."""
    return hashlib.sha256(str(uuid.UUID(secret_key)).encode()).hexdigest()


def new_access_key() -> str:
    return "SCW" + "".join(secrets.choice(_ALPHABET) for _ in range(17))


def access_key_for_secret(secret_key: str) -> str:
    """A stable access key derived from a secret (for a bootstrap key given only a secret)."""
    digest = hashlib.sha256(b"access:" + secret_key.encode()).digest()
    return "SCW" + "".join(_ALPHABET[b % len(_ALPHABET)] for b in digest[:17])


def is_access_key(value: str) -> bool:
    return bool(_ACCESS_KEY.match(value))


@dataclass(frozen=True)
class ApiKey:
    """One API key without its secret: what it is allowed to do, and for whom."""

    access_key: str
    role: str
    organization_id: str | None = None
    project_ids: tuple[str, ...] = ()
    resource_types: tuple[str, ...] = ()
    description: str = ""
    created_at: str = field(default_factory=now)
    expires_at: str | None = None

    def is_expired(self, at: datetime | None = None) -> bool:
        if not self.expires_at:
            return False
        expiry = datetime.fromisoformat(self.expires_at)
        return (at or datetime.now(expiry.tzinfo)) >= expiry

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["project_ids"] = list(self.project_ids)
        d["resource_types"] = list(self.resource_types)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ApiKey:
        return cls(access_key=d["access_key"], role=d["role"],
                   organization_id=d.get("organization_id"),
                   project_ids=tuple(d.get("project_ids") or ()),
                   resource_types=tuple(d.get("resource_types") or ()),
                   description=d.get("description") or "", created_at=d["created_at"],
                   expires_at=d.get("expires_at"))


def check_key_spec(role: Any, organization_id: Any, project_ids: Any, resource_types: Any,
                   description: Any, expires_at: Any) -> ApiKey:
    """A validated ApiKey (without access key yet) from untrusted input; InvalidArgument.

    Fields that a role would ignore are refused rather than stored: an admin key with
    projects, or a project key with resource types, reads as narrower than it is.
    """
    if role not in ROLES:
        raise InvalidArgument("role", f"must be one of {', '.join(ROLES)}",
                              "required" if role is None else "constraint")
    org = None if organization_id is None else check_uuid(organization_id, "organization_id")
    if project_ids is None:
        project_ids = []
    if not isinstance(project_ids, list):
        raise InvalidArgument("project_ids", "must be a list of UUIDs", "format")
    projects = tuple(dict.fromkeys(check_uuid(p, "project_ids") for p in project_ids))
    if len(projects) > MAX_KEY_PROJECTS:
        raise InvalidArgument("project_ids", f"at most {MAX_KEY_PROJECTS} projects per key")
    if role in (PROJECT_MEMBER, PROJECT_READER) and not projects:
        raise InvalidArgument("project_ids", f"a {role} key needs at least one project",
                              "required")
    if role == ADMIN and projects:
        raise InvalidArgument("project_ids", "an admin key acts on every project: give no "
                                             "project_ids, or use a project_member key")
    if resource_types is None:
        resource_types = []
    if not isinstance(resource_types, list) or not all(
            isinstance(t, str) and _RESOURCE_TYPE.match(t) and t != "custom"
            for t in resource_types):
        raise InvalidArgument("resource_types", "must be a list of product resource types "
                              "like instance_server", "format")
    if role == PRODUCT and not resource_types:
        raise InvalidArgument("resource_types", "a product key needs its resource types",
                              "required")
    if role != PRODUCT and resource_types:
        raise InvalidArgument("resource_types", f"only a product key has resource types; "
                                                f"give none for a {role} key")
    if description is None:
        description = ""
    if not isinstance(description, str) or len(description) > 255:
        raise InvalidArgument("description", "must be a string of at most 255 characters",
                              "format")
    # RFC 3339, as an IP's: fromisoformat alone took week dates, a space for the T,
    # "2027-01-01T00+00:00", and stored them as sent. Stored upper-cased: RFC 3339 allows
    # a "t" and a "z", which `is_expired`'s fromisoformat does not.
    if expires_at is not None:
        if rfc3339(expires_at) <= datetime.now(UTC):
            raise InvalidArgument("expires_at", "must be in the future")
        expires_at = expires_at.upper()
    return ApiKey(access_key="", role=role, organization_id=org, project_ids=projects,
                  resource_types=tuple(dict.fromkeys(resource_types)), description=description,
                  expires_at=expires_at)


def _counted(key: ApiKey | None, organization_id: str) -> bool:
    """Whether `key` takes a slot of `organization_id`'s key quota: a validly signed
    project key naming it (admin and product keys act for no organization's projects)."""
    return (key is not None and key.role in (PROJECT_MEMBER, PROJECT_READER)
            and key.organization_id == organization_id)


class Credentials:
    """The API keys of one deployment, stored in etcd and signed with `signing_key`
    (None: this node creates no key and accepts none). `organizations`: the project ->
    organization mapping a project key writes to (this node's, to share its cache).
    `keys_per_organization`: the project keys one organization may hold (None: no quota;
    `quotas.Quotas.keys_per_organization`)."""

    def __init__(self, store: st.Store, keys: Keys, signing_key: bytes | None = None,
                 organizations: ProjectOrganizations | None = None,
                 reads: CoalescedReads | None = None,
                 keys_per_organization: int | None = None) -> None:
        self.store = store
        self.keys = keys
        self.keys_per_organization = keys_per_organization
        # A lookup per request: concurrent ones share the node's reads (still linearizable,
        # so a revocation anywhere is seen by the next request anywhere).
        self._reads = reads or CoalescedReads(store)
        self._signing_key = signing_key
        self.organizations = organizations or ProjectOrganizations(store, keys)
        self._cache: dict[str, ApiKey] | None = None
        self._follow: asyncio.Task[None] | None = None
        self._refusals: set[tuple[str, str]] = set()  # (etcd key, signature) logged
        self._verdicts: dict[tuple[str, bytes], ApiKey | None] = {}

    async def start(self) -> None:
        """Load every valid key into this node's cache and follow changes with a watch."""
        kvs, revision = await self.store.scan(self.keys.api_key_by_secret())
        cache = {}
        for kv in kvs:
            key = self._verified(kv.key, kv.value)
            if key is not None:
                cache[self.keys.last_segment(kv.key)] = key
        self._cache = cache
        self._follow = asyncio.ensure_future(self._watch(revision + 1))

    def _verified(self, etcd_key: str, value: bytes) -> ApiKey | None:
        """The key a stored record grants, or None when its signature is missing or wrong
        (logged once per record).

        Verdicts are remembered by the exact bytes read (a record changed in any way is
        checked again): a read of a key, once per request, costs no JSON parse and no
        HMAC."""
        seen = (etcd_key, value)
        if seen in self._verdicts:
            return self._verdicts[seen]
        verdict = self._verify(etcd_key, value)
        if len(self._verdicts) >= _VERDICTS_REMEMBERED:
            self._verdicts.clear()
        self._verdicts[seen] = verdict
        return verdict

    def _verify(self, etcd_key: str, value: bytes) -> ApiKey | None:
        try:
            record = json.loads(value)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            self._refuse(etcd_key, {}, "is not a key record")
            return None
        where = etcd_key.removeprefix(self.keys.prefix)
        if self._signing_key is None:
            self._refuse(etcd_key, record, "cannot be checked: this node has no signing key")
            return None
        if not signature_is_valid(self._signing_key, where, record):
            why = ("carries no signature" if SIGNATURE not in record else
                   "has a wrong signature (changed since it was signed, or signed with "
                   "another key)")
            self._refuse(etcd_key, record, why)
            return None
        try:
            return ApiKey.from_json(record)
        except (KeyError, TypeError):
            self._refuse(etcd_key, record, "is not a key record")
            return None

    def _refuse(self, etcd_key: str, record: Mapping[str, Any], why: str) -> None:
        """Log a refused record once: the access key it names, never its secret's hash."""
        seen = (etcd_key, str(record.get(SIGNATURE)))
        if seen in self._refusals:
            return
        if len(self._refusals) >= _REFUSALS_REMEMBERED:
            self._refusals.clear()
        self._refusals.add(seen)
        access = record.get("access_key")
        named = access if isinstance(access, str) and is_access_key(access) else "(none)"
        log.warning("API key %s refused: its record in etcd %s; it authenticates nobody",
                    named, why)

    async def close(self) -> None:
        if self._follow is not None:
            self._follow.cancel()
        self._cache = None

    async def _watch(self, start: int) -> None:
        try:
            async for events, _ in self.store.watch(self.keys.api_key_by_secret(), start):
                cache = self._cache
                if cache is None:
                    return
                for ev in events:
                    digest = self.keys.last_segment(ev.key)
                    key = None if ev.deleted else self._verified(ev.key, ev.value)
                    if key is None:
                        cache.pop(digest, None)
                    else:
                        cache[digest] = key
        except st.Compacted:
            self._cache = None  # lookups fall back to etcd until restarted
            await self.start()
        except asyncio.CancelledError:
            raise
        except Exception:  # pragma: no cover - logged; lookups fall back to etcd
            log.exception("API key watch failed; every request reads etcd from now on")
            self._cache = None

    def cached(self, secret_key: str) -> ApiKey | None:
        """The key from this node's cache (None: unknown here, ask `lookup`).

        Only for changes that carry `guard(secret_key)` in their transaction.
        """
        if self._cache is None:
            return None
        return self._cache.get(secret_hash(secret_key))

    def guard(self, secret_key: str) -> str:
        """The etcd key that exists exactly as long as this API key is valid."""
        return self._by_secret(secret_hash(secret_key))

    def _by_secret(self, digest: str) -> str:
        return self.keys.api_key_by_secret(digest)

    def _by_access(self, access_key: str) -> str:
        return self.keys.api_key_by_access(access_key)

    async def create(self, spec: ApiKey) -> tuple[ApiKey, str]:
        """Store a new key for `spec` (from `check_key_spec`), signed; returns (key, secret).

        A project key naming an organization maps its projects to it, in the same
        transaction; AlreadyExists when one of them belongs to another organization;
        QuotaExceeded when its organization holds its quota of keys already.
        PreconditionFailed when this node has no signing key."""
        if self._signing_key is None:
            raise PreconditionFailed("no_signing_key", "this node has no credential signing "
                                                       "key: it cannot create API keys")
        failed: frozenset[str] = frozenset()
        async for _ in retry.NETWORK_RACES.attempts():
            key = ApiKey(**{**asdict(spec), "access_key": new_access_key(), "created_at": now()})
            secret = str(uuid.uuid4())
            digest = secret_hash(secret)
            where = self._by_secret(digest).removeprefix(self.keys.prefix)
            record = json.dumps(sign_record(self._signing_key, where,
                                            {**key.to_json(), "secret_hash": digest}))
            txn = (GuardedTxn().absent("access_key", self._by_access(key.access_key))
                   .absent("secret", self._by_secret(digest))
                   .put(self._by_access(key.access_key), digest)
                   .put(self._by_secret(digest), record))
            mapped = key.role in (PROJECT_MEMBER, PROJECT_READER) and key.organization_id
            if mapped:
                await self._within_key_quota(txn, mapped)
                await self.organizations.write_once(txn, key.project_ids, mapped)
            out = await commit(self.store, txn)
            if out.succeeded:
                if mapped:
                    self.organizations.remember(key.project_ids, mapped)
                return key, secret
            failed = out.failed
        if QUOTA_GUARD in failed:
            raise Conflict("API keys kept being created meanwhile; try again")
        raise AlreadyExists("api_key", key.access_key)

    async def _within_key_quota(self, txn: GuardedTxn, organization_id: str) -> None:
        """Refuse (QuotaExceeded) a project key of an organization holding its quota of
        keys; else guard `txn` on no key record written since they were counted, so that
        two creates never both take the last slot (`quotas`: why no index)."""
        if self.keys_per_organization is None:
            return
        kvs, revision = await self.store.scan(self.keys.api_key_by_secret())
        held = sum(1 for kv in kvs if _counted(self._verified(kv.key, kv.value),
                                               organization_id))
        refuse_api_keys(self.keys_per_organization, held, organization_id)
        txn.prefix_unchanged_since(QUOTA_GUARD, self.keys.api_key_by_secret(), revision)

    async def lookup(self, secret_key: str) -> ApiKey | None:
        """The key whose secret this is, or None (also for a record whose signature is
        missing or wrong); one linearizable read."""
        kv = await self._reads.get(self._by_secret(secret_hash(secret_key)))
        return self._verified(kv.key, kv.value) if kv else None

    async def get(self, access_key: str) -> ApiKey:
        """The key named `access_key`; NotFound also when its record is not validly signed."""
        kv = await self.store.get(self._by_access(access_key))
        if kv is None:
            raise NotFound("api_key", access_key)
        rec = await self.store.get(self._by_secret(kv.value.decode()))
        key = self._verified(rec.key, rec.value) if rec else None
        if key is None or key.access_key != access_key:  # the index may point elsewhere
            raise NotFound("api_key", access_key)
        return key

    async def list(self) -> list[ApiKey]:
        """Every validly signed key, oldest first, without secrets."""
        kvs, _ = await self.store.scan(self.keys.api_key_by_secret())
        found = [k for k in (self._verified(kv.key, kv.value) for kv in kvs) if k is not None]
        return sorted(found, key=lambda k: (k.created_at, k.access_key))

    async def copy_to(self, target: Credentials, access_key: str) -> ApiKey:
        """Write this cluster's API key `access_key` into `target`'s cluster, as it is
        signed, with the project -> organization mapping a project key makes; the key.

        A gateway serving several regions keeps each region on its own cluster and every key
        in all of them (so a region authenticates while another's cluster is down): it
        creates a key in one cluster and copies it to the others. The record is signed over
        its path below the prefix, so it verifies in `target` as it is. A copy already there
        (a retry) writes nothing; NotFound if this cluster lacks the key; AlreadyExists if
        `target` holds another key under its names, or maps one of its projects to another
        organization (nothing written)."""
        key = await self.get(access_key)  # NotFound unless validly signed there
        index = await self.store.get(self.keys.api_key_by_access(access_key))
        record = index and await self.store.get(
            self.keys.api_key_by_secret(index.value.decode()))
        if index is None or record is None:  # revoked meanwhile
            raise NotFound("api_key", access_key)
        by_access = target.keys.api_key_by_access(access_key)
        by_secret = target.keys.api_key_by_secret(index.value.decode())
        txn = (GuardedTxn().absent("access_key", by_access).absent("secret", by_secret)
               .put(by_access, index.value).put(by_secret, record.value))
        mapped = key.role in (PROJECT_MEMBER, PROJECT_READER) and key.organization_id
        if mapped:
            await target.organizations.write_once(txn, key.project_ids, mapped)
        if (await commit(target.store, txn)).succeeded:
            if mapped:
                target.organizations.remember(key.project_ids, mapped)
            return key
        held = await target.store.get(by_secret)
        if held is not None and held.value == record.value:
            return key
        raise AlreadyExists("api_key", access_key)

    async def revoke(self, access_key: str) -> None:
        """Delete the key (signed or not); every later lookup of its secret, on any node,
        finds nothing."""
        async for _ in retry.NETWORK_RACES.attempts():
            kv = await self.store.get(self._by_access(access_key))
            if kv is None:
                raise NotFound("api_key", access_key)
            txn = (GuardedTxn().unchanged("access_key", kv.key, kv.mod_revision)
                   .delete(kv.key).delete(self._by_secret(kv.value.decode())))
            if (await commit(self.store, txn)).succeeded:
                return
        raise NotFound("api_key", access_key)
