"""API keys: who may call the service, stored in etcd under the `auth/` prefix.

Keys look like Scaleway's: an access key `SCW` + 17 uppercase letters or digits
(public, names the key) and a secret key that is a UUID (shown once, at
creation). Only a SHA-256 of the secret is stored: a secret is 122 random bits,
so a fast hash is as safe as a slow one and costs nothing per request.

    {p}auth/secret/{sha256 of secret}   the key record (JSON), found by the secret
    {p}auth/key/{access_key}            the hash of its secret, found by access key

Both keys are written and deleted in one transaction.

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
import hashlib
import json
import logging
import re
import secrets
import string
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import retry
from . import store as st
from .errors import AlreadyExists, InvalidArgument, NotFound
from .keys import Keys
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


def secret_hash(secret_key: str) -> str:
    """The stored form of a secret key (canonical UUID, SHA-256, hex)."""
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
    if expires_at is not None:
        try:
            parsed = datetime.fromisoformat(str(expires_at))
        except ValueError:
            raise InvalidArgument("expires_at", "must be an RFC 3339 time", "format") from None
        if parsed.tzinfo is None:
            raise InvalidArgument("expires_at", "must carry a time zone", "format")
        if parsed <= datetime.now(UTC):
            raise InvalidArgument("expires_at", "must be in the future")
    return ApiKey(access_key="", role=role, organization_id=org, project_ids=projects,
                  resource_types=tuple(dict.fromkeys(resource_types)), description=description,
                  expires_at=expires_at)


class Credentials:
    """The API keys of one deployment, stored in etcd."""

    def __init__(self, store: st.Store, keys: Keys) -> None:
        self.store = store
        self.keys = keys
        self._cache: dict[str, ApiKey] | None = None
        self._follow: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load every key into this node's cache and follow changes with a watch."""
        kvs, revision = await self.store.scan(self.keys.api_key_by_secret())
        self._cache = {self.keys.last_segment(kv.key): ApiKey.from_json(json.loads(kv.value))
                       for kv in kvs}
        self._follow = asyncio.ensure_future(self._watch(revision + 1))

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
                    if ev.deleted:
                        cache.pop(digest, None)
                    else:
                        cache[digest] = ApiKey.from_json(json.loads(ev.value))
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
        """Store a new key for `spec` (from `check_key_spec`); returns (key, secret)."""
        async for _ in retry.NETWORK_RACES.attempts():
            key = ApiKey(**{**asdict(spec), "access_key": new_access_key(), "created_at": now()})
            secret = str(uuid.uuid4())
            digest = secret_hash(secret)
            record = json.dumps({**key.to_json(), "secret_hash": digest})
            txn = (GuardedTxn().absent("access_key", self._by_access(key.access_key))
                   .absent("secret", self._by_secret(digest))
                   .put(self._by_access(key.access_key), digest)
                   .put(self._by_secret(digest), record))
            if (await commit(self.store, txn)).succeeded:
                return key, secret
        raise AlreadyExists("api_key", key.access_key)

    async def lookup(self, secret_key: str) -> ApiKey | None:
        """The key whose secret this is, or None; one linearizable read."""
        kv = await self.store.get(self._by_secret(secret_hash(secret_key)))
        return ApiKey.from_json(json.loads(kv.value)) if kv else None

    async def get(self, access_key: str) -> ApiKey:
        kv = await self.store.get(self._by_access(access_key))
        if kv is None:
            raise NotFound("api_key", access_key)
        rec = await self.store.get(self._by_secret(kv.value.decode()))
        if rec is None:
            raise NotFound("api_key", access_key)
        return ApiKey.from_json(json.loads(rec.value))

    async def list(self) -> list[ApiKey]:
        """Every key, oldest first, without secrets."""
        kvs, _ = await self.store.scan(self.keys.api_key_by_secret())
        found = [ApiKey.from_json(json.loads(kv.value)) for kv in kvs]
        return sorted(found, key=lambda k: (k.created_at, k.access_key))

    async def revoke(self, access_key: str) -> None:
        """Delete the key; every later lookup of its secret, on any node, finds nothing."""
        async for _ in retry.NETWORK_RACES.attempts():
            kv = await self.store.get(self._by_access(access_key))
            if kv is None:
                raise NotFound("api_key", access_key)
            txn = (GuardedTxn().unchanged("access_key", kv.key, kv.mod_revision)
                   .delete(kv.key).delete(self._by_secret(kv.value.decode())))
            if (await commit(self.store, txn)).succeeded:
                return
        raise NotFound("api_key", access_key)
