"""Expiring bookings: an unattached IP booked (or updated) with `expires_at` is released
once that time has passed, unless it was attached meanwhile.

Our extension; Scaleway's IPAM has no such field.

- The value: an RFC 3339 time with its offset, in the future and at most `MAX_EXPIRY`
  ahead (`check_expires_at`), stored in the record in UTC with microseconds like every
  other time. Only an unattached IP expires: booking with a resource and an expiry is
  refused, attaching clears the expiry, and a PATCH sets, changes (`expires_at`) or
  clears it (`expires_at: null`).
- The index: one key per expiring IP, `{p}expiry/{time}/{ip_id}` in time order, written
  in the transaction that sets the expiry and deleted in the one that clears it (attach,
  PATCH, release, release set, the expiry itself), so it never disagrees with the
  records (`keys.Keys.expiry`).
- The expirer: one node, elected (`election.ElectedLoop`, key `{p}expirer`), reads the
  index up to now every `check_interval` seconds, at most `batch` keys a look (a full
  batch looks again at once), and releases each due IP with the release's own deletion
  (`Lifecycle.expire`), guarded by the record's version as every change is. So an
  attach that commits first makes the release fail harmlessly (the expirer reads the
  record again, finds it attached and leaves it), and an attach that comes after finds
  no IP: no IP is ever released while attached, whoever wins, and with two expirers at
  once (a lease that ran out a moment ago) one release applies and the other finds
  nothing. A due IP is released within `check_interval` plus one commit of its time
  while a holder lives; when the holder dies, within its `lease_ttl` more.

Counters (plain attributes, for metrics and tests), besides the election's (`leader`,
`elections`, `looks`, `errors`, `last_error`): `expired` (IPs this node released),
`kept` (due keys whose IP was attached, given another expiry or released before the
release committed: the other change won), `last_lag` (seconds from the expiry of the last IP this
node released to the commit of its release, by this node's clock).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, Protocol

from aetcd import rpc

from .election import ElectedLoop, ElectionStore
from .errors import InvalidArgument
from .keys import Keys
from .records import now

log = logging.getLogger(__name__)

MAX_EXPIRY = timedelta(days=365)
CHECK_INTERVAL = 1.0
# A dead holder's due IPs wait for its lease: shorter than the compactor's, since a lag
# is what users see here.
LEASE_TTL = 6
BATCH = 100

# RFC 3339 (section 5.6) date-time: the offset is required; `fromisoformat` alone would
# take week dates, a missing offset and other ISO 8601 forms.
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")
_FORMAT = "must be an RFC 3339 time with its offset, like 2030-01-31T12:00:00Z"


class Unchanged(enum.Enum):
    """An argument a change leaves as the IP has it (None would clear it)."""

    UNCHANGED = "unchanged"


UNCHANGED: Final = Unchanged.UNCHANGED
# What a change does to an IP's expiry: set it (a time), clear it (None), or leave it.
ExpiryChange = str | None | Literal[Unchanged.UNCHANGED]


def rfc3339(value: Any, argument: str = "expires_at") -> datetime:
    """`value`, an RFC 3339 time with its offset; InvalidArgument on `argument` else."""
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise InvalidArgument(argument, _FORMAT, "format")
    try:
        return datetime.fromisoformat(value.upper())
    except ValueError:  # a 13th month, a 61st minute
        raise InvalidArgument(argument, _FORMAT, "format") from None


def check_expires_at(value: Any, at: datetime | None = None) -> str:
    """`value` as stored: UTC with microseconds (`records.now()`'s form); InvalidArgument
    unless it is an RFC 3339 time after `at` (now) and at most MAX_EXPIRY after it."""
    moment = rfc3339(value)
    at = at or datetime.now(UTC)
    if moment <= at:
        raise InvalidArgument("expires_at", "must be in the future")
    if moment > at + MAX_EXPIRY:
        raise InvalidArgument("expires_at", f"must be at most {MAX_EXPIRY.days} days ahead")
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def seconds_past(micros: int) -> float:
    """How long ago a time (microseconds since the epoch) was (negative: still to come)."""
    return time.time() - micros / 1_000_000


class ExpiryStore(ElectionStore, Protocol):
    """What the expirer needs from etcd (`store.EtcdStore` has it)."""

    async def range(self, key: str, range_end: bytes | None = None, *, limit: int = 0,
                    revision: int = 0, keys_only: bool = False, count_only: bool = False,
                    serializable: bool = False, descending: bool = False
                    ) -> rpc.RangeResponse: ...


class ExpiringIPs(Protocol):
    """What releases one due IP (`lifecycle.Lifecycle` is it): True if released."""

    async def expire(self, ip_id: str, index_key: str) -> bool: ...


class Expirer(ElectedLoop):
    """Releases due expiring IPs while this node holds the expirer key (see the module
    docstring)."""

    chore = "expirer"

    def __init__(self, store: ExpiryStore, keys: Keys, lifecycle: ExpiringIPs, *,
                 check_interval: float = CHECK_INTERVAL, lease_ttl: int = LEASE_TTL,
                 batch: int = BATCH, holder: str | None = None) -> None:
        if batch < 1:
            raise ValueError("batch >= 1 is needed")
        super().__init__(store, keys.expirer(), check_interval=check_interval,
                         lease_ttl=lease_ttl, holder=holder)
        self.store: ExpiryStore = store
        self.keys, self.lifecycle, self.batch = keys, lifecycle, batch
        # Counters (besides the election's): read by metrics and tests, written here only.
        self.expired = 0
        self.kept = 0
        self.last_lag = 0.0

    async def work(self, head: int) -> None:
        """Release what is due now, up to `batch` IPs (all at once: they share commits)."""
        resp = await self.store.range(self.keys.expiry(), self.keys.expiry_end(now()).encode(),
                                      limit=self.batch, keys_only=True)
        due = [kv.key.decode() for kv in resp.kvs]
        results = await asyncio.gather(*(self._expire(key) for key in due),
                                       return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            self.errors += len(failures)
            self.last_error = f"{type(failures[0]).__name__}: {failures[0]}"
            log.warning("expirer: %d of %d due IPs not released: %s", len(failures),
                        len(due), self.last_error)
        elif resp.more:
            self.wake()  # more are due: look again now, not a check interval later

    async def _expire(self, index_key: str) -> None:
        micros, ip_id = self.keys.expiry_entry(index_key)
        if await self.lifecycle.expire(ip_id, index_key):
            self.expired += 1
            self.last_lag = seconds_past(micros)
            log.info("expirer: released IP %s, due %.3f s ago", ip_id, self.last_lag)
        else:
            self.kept += 1
