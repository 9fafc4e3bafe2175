"""Idempotency keys: a retried request gets the first answer, never a second booking.

The key is written in the same transaction as the change it guards (guarded by
`create_revision == 0`), with the first result in its value, so the key and the
change are committed together or not at all. Keys live on a lease that expires
between 24 and 25 hours after they were written: one lease is shared by every key
written within the same hour.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

from .errors import Conflict, CredentialRevoked, InvalidArgument
from .records import IPRecord
from .store import Store

RETENTION = 24 * 3600
_ROTATE = 3600
_MAX_KEY = 256


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


def entry(fp: str, record: IPRecord) -> bytes:
    """The value stored under an idempotency key: the request's digest and the result."""
    return json.dumps({"fingerprint": fp, "result": record.to_json()}).encode()


async def replay(store: Store, keys: Any, value: bytes, fp: str,
                 credential: str | None = None) -> IPRecord:
    """The first result stored under a key, if the request is the same one.

    A replay must not hand out an IP that no longer exists as if it were held: when
    the IP of the first answer was released since, the retry is refused.
    """
    data = json.loads(value)
    if data.get("fingerprint") != fp:
        raise Conflict("this idempotency key was already used for a different request")
    first = IPRecord.from_json(data["result"])
    found = await store.get_many([keys.ip(first.id), *([credential] if credential else [])])
    if credential and credential not in found:
        raise CredentialRevoked()
    if keys.ip(first.id) not in found:
        raise Conflict(f"the IP {first.id} ({first.address}) of the first request with this "
                       "idempotency key has been released since")
    return first


class LeaseClock:
    """Hands out the shared lease of the current hour, granting a new one when it rotates."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lease = 0
        self._granted = 0.0
        self._lock = asyncio.Lock()

    async def lease(self) -> int:
        if self._lease and time.monotonic() - self._granted < _ROTATE:
            return self._lease
        async with self._lock:
            if not self._lease or time.monotonic() - self._granted >= _ROTATE:
                self._lease = await self._store.lease_grant(RETENTION + _ROTATE)
                self._granted = time.monotonic()
        return self._lease
