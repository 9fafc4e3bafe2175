"""Idempotency keys: a retried request gets the first answer, never a second booking.

The key is written in the same transaction as the change it guards (guarded by
`create_revision == 0`), with what a replay needs to give the first answer in its value,
so the key and the change are committed together or not at all. Keys live on a lease
that expires between `retention` and `retention` + `rotation(retention)` seconds after
they were written: one lease is shared by every key written within a rotation.

What an entry holds (format 2, `entry`): the request's digest, the IP's id, and only the
fields of the first answer that a later change can alter (`updated_at`, the resource,
tags, reverses, expiry...), in short names, nulls and empties left out. The fields an IP
keeps for its whole life (`_FIXED`: address, project, source, created_at...) are taken
from the IP's record, which a replay reads anyway to refuse an IP released since; so the
replay is the first answer exactly, in about a quarter of the bytes of the whole record
(etcd's database holds every entry for the whole retention). Entries written before
(format 1: `{"fingerprint", "result": <whole record>}`) still replay: a retry across an
upgrade gets its answer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from typing import Any

from .errors import Conflict, CredentialRevoked, InvalidArgument
from .records import IPRecord
from .store import Store

# How long a retry gets the first answer. One hour covers every client retry loop seen
# (SDKs and Terraform retry within minutes; an orchestrator replaying a lost answer
# after a node restart, within its own timeout); a day of keys at a high booking rate
# would not fit in etcd's quota (README, "Capacity").
RETENTION = 3600
MIN_RETENTION = 60
MAX_RETENTION = 7 * 24 * 3600
_MAX_KEY = 256
_FORMAT = 2

# The fields of an IP set at booking and never changed after: taken from the current
# record on a replay. A field missing here is stored in the entry (the safe default for
# a field added later).
_FIXED = frozenset({"id", "address", "project_id", "organization_id", "is_ipv6", "region",
                    "zone", "source_id", "source_kind", "vpc_id", "private_network_id",
                    "created_at", "booked_by_product"})
_SHORT = {"updated_at": "u", "attached_at": "a", "resource": "r", "tags": "t",
          "reverses": "rv", "expires_at": "e"}
_LONG = {short: name for name, short in _SHORT.items()}
# Entry fields of format 2 that are not record fields.
_VERSION, _DIGEST, _IP = "v", "f", "i"


def rotation(retention: int) -> int:
    """Seconds one shared lease takes new keys: an hour for a day's retention, less for
    shorter ones, so that a key outlives its retention by at most a 24th of it."""
    return max(1, min(3600, retention // 24))


def check_retention(seconds: Any, argument: str = "idempotency_retention") -> int:
    """A retention in whole seconds, from a minute to a week."""
    if (not isinstance(seconds, int) or isinstance(seconds, bool)
            or not MIN_RETENTION <= seconds <= MAX_RETENTION):
        raise InvalidArgument(argument, f"must be {MIN_RETENTION} to {MAX_RETENTION} seconds")
    return seconds


def check_key(key: Any) -> str:
    """A client idempotency key: 1 to 256 printable characters."""
    if not isinstance(key, str) or not 0 < len(key) <= _MAX_KEY or not key.isprintable():
        raise InvalidArgument("idempotency_key", "must be 1 to 256 printable characters",
                              "format")
    return key


def fingerprint(operation: str, payload: dict[str, Any]) -> str:
    """A digest of what was asked, so a key reused for another request is caught."""
    canonical = json.dumps({"op": operation, **payload}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _short_digest(fp: str) -> str:
    """The hex digest in base64url (43 characters instead of 64)."""
    return base64.urlsafe_b64encode(bytes.fromhex(fp)).rstrip(b"=").decode()


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def entry(fp: str, record: IPRecord) -> bytes:
    """The value stored under an idempotency key: the request's digest and what a
    replay needs, with the IP's record, to give `record` back as it is now."""
    first = record.to_json()
    stored: dict[str, Any] = {_VERSION: _FORMAT, _DIGEST: _short_digest(fp), _IP: record.id}
    for name, value in first.items():
        if name in _FIXED or value is None or value == []:
            continue
        if name == "updated_at" and value == first["created_at"]:
            continue  # a booking's answer: the replay takes it from created_at
        stored[_SHORT.get(name, name)] = _without_nulls(value)
    return json.dumps(stored, separators=(",", ":")).encode()


def _first_answer(stored: dict[str, Any], current: dict[str, Any]) -> IPRecord:
    """The first answer of a format-2 entry, from the IP's record as it is now."""
    first = {name: value for name, value in current.items() if name in _FIXED}
    first["updated_at"] = current["created_at"]
    for short, value in stored.items():
        if short not in (_VERSION, _DIGEST, _IP):
            first[_LONG.get(short, short)] = value
    return IPRecord.from_json(first)


async def replay(store: Store, keys: Any, value: bytes, fp: str,
                 credential: str | None = None) -> IPRecord:
    """The first answer to the request stored under a key, if the request is the same one.

    A replay must not hand out an IP that no longer exists as if it were held: when
    the IP of the first answer was released since, the retry is refused.
    """
    data = json.loads(value)
    if data.get(_VERSION) == _FORMAT:
        same, ip_id, named = data.get(_DIGEST) == _short_digest(fp), data.get(_IP), ""
        old = None
    else:  # format 1, written before: the whole first record
        same = data.get("fingerprint") == fp
        old = IPRecord.from_json(data["result"]) if same else None
        ip_id, named = (old.id, f" ({old.address})") if old else ("", "")
    if not same:
        raise Conflict("this idempotency key was already used for a different request")
    found = await store.get_many([keys.ip(ip_id), *([credential] if credential else [])])
    if credential and credential not in found:
        raise CredentialRevoked()
    kv = found.get(keys.ip(ip_id))
    if kv is None:
        raise Conflict(f"the IP {ip_id}{named} of the first request with this "
                       "idempotency key has been released since")
    if old is not None:
        return old
    return _first_answer(data, json.loads(kv.value))


class LeaseClock:
    """Hands out the shared lease of the current rotation, granting a new one when it
    rotates; every key on it lives at least `retention` seconds. The idempotency records'
    and the event feed's (`events`): `argument` names the setting a bad retention is."""

    def __init__(self, store: Store, retention: int = RETENTION,
                 argument: str = "idempotency_retention") -> None:
        self._store = store
        self.retention = check_retention(retention, argument)
        self._rotate = rotation(self.retention)
        self._lease = 0
        self._granted = 0.0
        self._lock = asyncio.Lock()

    async def lease(self) -> int:
        if self._lease and time.monotonic() - self._granted < self._rotate:
            return self._lease
        async with self._lock:
            if not self._lease or time.monotonic() - self._granted >= self._rotate:
                self._lease = await self._store.lease_grant(self.retention + self._rotate)
                self._granted = time.monotonic()
        return self._lease
