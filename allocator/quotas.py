"""Per-project quotas: how many VPCs, Private Networks, subnets and IPs a tenant may hold,
and how many API keys an organization may hold.

One project could otherwise fill etcd for everyone (1,500 VPCs with 64 long tags each
took 1.2 s) and slow every other tenant's lists. Each quota is a `Quotas` field (None:
no quota); a create beyond it is refused with `QuotaExceeded` (Scaleway's 403
`quotas_exceeded`, naming the resource, the quota and what is held), having written
nothing. Deleting one frees a slot. Tags per object (64) and their length (128) are
limits of every tagged object already (`records.check_tags`), not quotas.

How each is enforced, and why:

- VPCs and Private Networks of a project: counted over the project's own index
  (`Keys.project_vpcs`, `Keys.project_private_networks`), which the create writes in
  its transaction. The create is guarded by "no key created under that index since the
  count was read" (`within_quota`), so creates racing on two nodes cannot both take the
  last slot: the loser counts again and is refused. No counter key: the index is the
  count, and a delete (which only lowers it) never fails a guard. The price: creates
  racing in one project retry on the guard, each lost race meaning another create won,
  as Private Networks of one VPC always have: a node runs one project's creates in turn,
  so only other nodes' race it (`network_registry`, `retry.NETWORK_CREATES`).
- Subnets of a Private Network: counted in its record, whose every change is guarded
  on its revision already: exact for free.
- IPs of a project: not on the same footing. A booking is the hot path, and a counter
  key every booking writes would serialise all of a project's bookings on one key (the
  committer never puts two writes of one key in one request), the per-source
  bottleneck DESIGN.md section 3 forbids. Instead a booking is admitted against a
  count-only read of the project's IP index (`Keys.by_project`), without a guard
  (`IPQuota`). Far from the quota, a count up to `IP_COUNT_SECONDS` old plus this
  node's own admissions since is trusted, so a project well under its quota costs no
  read per booking; "far" is more than `CLUSTER_BOOKINGS_PER_SECOND` x
  `IP_COUNT_SECONDS` away, more than the whole cluster can book in that time, so the
  other nodes cannot reach the quota behind a cached count. Near it, every booking waits
  for a fresh count (concurrent bookings of a project on one node share one read, and
  are admitted in turn against it). The overshoot that remains is bounded: bookings
  admitted on counts that did not see each other, at most the bookings in flight on
  all nodes at that moment. The IP quota is off by default: a project booking a /16
  full is a normal load (the bench books several), and the count read costs etcd a walk
  over the project's index.
- API keys of an organization: the project keys (member, reader) naming it, counted over
  the signed key records themselves (`credentials.Credentials.create`) at one revision,
  and the create guarded on "no key record written under `auth/secret/` since", so two
  nodes never both take the last slot. No index of keys per organization: the records
  are the count, keys written by any earlier version included, with no migration; the
  price is a read of every key record per key created (an operator's act, seldom) and
  creates racing in the whole deployment retrying on one guard. Admin and product keys
  act for no organization's projects (`gateway.auth.Principal.organization_claim`):
  they are not counted, even when created naming one. Revoking a key frees its slot.

Per-project overrides (`QuotaOverrides`): an operator may give one project other quotas
of VPCs, Private Networks, subnets per Private Network and IPs than the nodes' defaults
(`Keys.quota_override`: JSON of the quotas that differ; absent: the defaults). A quota
of an override is a number (0 and up: 0 lets the project create none); null in a change
gives the field back to the default. Lowering a quota below what the project holds
deletes nothing: its creates are refused until it holds less than the quota. A change
holds on every node at once, this way:

- VPC, Private Network and subnet creates read the override linearizably (creates are
  rare) and guard it in their transaction (`OVERRIDE_GUARD`, the override's mod
  revision, or its absence), next to the count's guard: a change committed on one node
  is the quota of the very next create on any node, and a create racing the change
  either committed before it or counts again under it.
- Bookings read no override of their own: each node keeps every override in a cache fed
  by a watch of the `quota/` prefix (reloaded on compaction), so a booking in a project
  with no IP quota at all costs a dict lookup. When an IP quota applies, the count read
  near the quota (`IPQuota`) reads the override in the same request, at the count's
  revision: as exact as the count, with no extra round trip. What remains is the watch's
  lag, for a project whose IP quota the cache does not know yet (an override set a moment
  ago on another node, on a project that had none, or far under the old quota): measured
  on a three-member cluster on loopback, a few milliseconds (README, "Quotas"). The
  booking transaction itself does not guard the override: that needs a field of
  `engine.Booking`, which this module does not own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aetcd import rpc

from . import retry
from .errors import Conflict, InvalidArgument, IPAMError, QuotaExceeded, StoreError
from .keys import Keys
from .records import check_uuid
from .store import KV, Store, kv_of, prefix_end
from .txn import GuardedTxn, commit, get

log = logging.getLogger(__name__)

# The guard `within_quota` adds: its failure means another create took a slot meanwhile.
QUOTA_GUARD = "quota"
# Far from its quota, a project's IP count is read again after this long (seconds).
IP_COUNT_SECONDS = 1.0
# More than one etcd cluster commits in a second (DESIGN.md section 4: thousands).
CLUSTER_BOOKINGS_PER_SECOND = 20_000
# Projects whose last IP count a node keeps before it drops the old ones.
_COUNTS_KEPT = 4096
# The guard on a project's override that creates add: its failure means the override
# changed since it was read (read it again, count again).
OVERRIDE_GUARD = "quota_override"
# The quotas an override may set, each with the `Quotas` default it stands for.
OVERRIDABLE = {"vpcs": "vpcs_per_project",
               "private_networks": "private_networks_per_project",
               "subnets_per_private_network": "subnets_per_private_network",
               "ips": "ips_per_project"}
# The largest quota an override takes: a 32-bit count, far beyond what etcd can hold.
MAX_OVERRIDE = 2**31 - 1


@dataclass(frozen=True)
class Quotas:
    """What one project may hold (None: no quota of that resource)."""

    vpcs_per_project: int | None = 100
    private_networks_per_project: int | None = 500
    subnets_per_private_network: int | None = 16
    # Off by default: see the module docstring.
    ips_per_project: int | None = None
    # Project keys naming the organization (admin and product keys: not counted).
    keys_per_organization: int | None = 100

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value is not None and (type(value) is not int or value < 1):
                raise ValueError(f"quota {name} must be a positive integer or None, "
                                 f"not {value!r}")

    @classmethod
    def none(cls) -> Quotas:
        """No quota at all (tests and benches that fill a project on purpose)."""
        return cls(None, None, None, None, None)


DEFAULT_QUOTAS = Quotas()


async def within_quota(store: Store, txn: GuardedTxn, index: str, quota: int | None,
                       resource: str, holder: str) -> None:
    """Refuse (QuotaExceeded) when `index` holds `quota` keys already; else guard `txn`
    (QUOTA_GUARD) on no key created under `index` since it was counted, so that two
    creates never both take the last slot. `holder` names who holds them, in the message.
    """
    if quota is None:
        return
    held, revision = await store.count(index)
    if held >= quota:
        raise QuotaExceeded(resource, quota, held,
                            f"{holder} holds {held} {resource}s, its quota: delete one first")
    txn.prefix_unchanged_since(QUOTA_GUARD, index, revision)


def refuse_subnets(quota: int | None, held: int, asked: int, pn_id: str) -> None:
    """QuotaExceeded when a Private Network holding `held` subnets cannot take `asked` more."""
    if quota is not None and held + asked > quota:
        raise QuotaExceeded("subnet", quota, held,
                            f"private network {pn_id or '(new)'} holds {held} subnets and "
                            f"{asked} more were asked: its quota is {quota}")


def refuse_api_keys(quota: int | None, held: int, organization_id: str) -> None:
    """QuotaExceeded when an organization holding `held` API keys may hold no more."""
    if quota is not None and held >= quota:
        raise QuotaExceeded("api_key", quota, held,
                            f"organization {organization_id} holds {held} API keys, its "
                            "quota: revoke one first")


@dataclass
class _Count:
    """A project's IPs as last counted on this node."""

    held: int  # the count etcd answered
    read_at: float  # monotonic time the read began
    quota: int | None  # the project's IP quota, read at the count's revision
    admitted: int = 0  # bookings this node let through on this count


class IPQuota:
    """Admits a project's bookings against its IP quota, on one node (module docstring).

    `quota`: the nodes' default (None: none); `overrides`: the projects' own, when they
    may have some (None: `quota` for every project)."""

    def __init__(self, store: Store, keys: Keys, quota: int | None,
                 count_seconds: float = IP_COUNT_SECONDS,
                 overrides: QuotaOverrides | None = None) -> None:
        self.store, self.keys, self.quota = store, keys, quota
        self.overrides = overrides
        self.count_seconds = count_seconds
        self.margin = CLUSTER_BOOKINGS_PER_SECOND * count_seconds
        self.reads = 0  # count reads sent (tests)
        self._counts: dict[str, _Count] = {}
        self._reading: dict[str, asyncio.Future[_Count]] = {}

    async def admit(self, project_id: str) -> None:
        """Let one booking of the project through, or refuse it (QuotaExceeded)."""
        quota = self.quota
        overrides = self.overrides
        if overrides is not None:
            if not overrides.loaded:
                with contextlib.suppress(StoreError):  # not loaded: read etcd, below
                    await overrides.ready()
            if not overrides.loaded:
                # No cache to trust (it could not load, or its watch ended and it loads
                # again): the count, which reads the project's override with it, decides.
                await self._admit_counted(project_id)
                return
            quota = overrides.cached_ips(project_id, quota)
        if quota is None:
            return  # no IP quota known here: no read (module docstring: the watch's lag)
        count = self._counts.get(project_id)
        if (count is not None and time.monotonic() - count.read_at < self.count_seconds
                and count.held + count.admitted + self.margin < quota):
            count.admitted += 1
            return
        await self._admit_counted(project_id)

    async def _admit_counted(self, project_id: str) -> None:
        """Admit against a count read now (shared with the bookings that wait for one)."""
        count = await asyncio.shield(self._read(project_id))
        current = count.held + count.admitted
        if count.quota is not None and current >= count.quota:
            raise QuotaExceeded("ip", count.quota, current,
                                f"project {project_id} holds {current} IPs, its quota: "
                                "release one first")
        count.admitted += 1

    def _read(self, project_id: str) -> asyncio.Future[_Count]:
        """The project's count being read, or a new read (concurrent bookings share one)."""
        reading = self._reading.get(project_id)
        if reading is None:
            reading = self._reading[project_id] = asyncio.ensure_future(
                self._count(project_id))
            reading.add_done_callback(lambda f: self._read_done(project_id, f))
        return reading

    def _read_done(self, project_id: str, reading: asyncio.Future[_Count]) -> None:
        self._reading.pop(project_id, None)
        if not reading.cancelled():
            reading.exception()  # each waiter got it; none left unretrieved

    async def _count(self, project_id: str) -> _Count:
        started = time.monotonic()
        self.reads += 1
        index = self.keys.by_project(project_id)
        if self.overrides is None:
            held, _ = await self.store.count(index)
            quota = self.quota
        else:
            # The override rides the count's request, read at its revision: a quota
            # changed on another node counts here as soon as the count does.
            resp = await self.store.txn([], [
                rpc.RequestOp(request_range=rpc.RangeRequest(
                    key=index.encode(), range_end=prefix_end(index), count_only=True)),
                get(self.keys.quota_override(project_id))], retry=True)
            held = resp.responses[0].response_range.count
            found = resp.responses[1].response_range.kvs
            override = _stored(kv_of(found[0]).value) if found else {}
            quota = override.get("ips", self.quota)
        if len(self._counts) >= _COUNTS_KEPT:
            self._counts = {p: c for p, c in self._counts.items()
                            if started - c.read_at < self.count_seconds}
        count = self._counts[project_id] = _Count(held, started, quota)
        return count


# -- per-project overrides ------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectQuotas:
    """The quotas in force for one project: its override's, else the nodes' defaults
    (None: no quota of that resource)."""

    project_id: str
    vpcs: int | None
    private_networks: int | None
    subnets_per_private_network: int | None
    ips: int | None
    overridden: tuple[str, ...] = ()  # the fields the override sets, in OVERRIDABLE order
    revision: int = 0  # the override's mod revision (0: the project has none)

    @classmethod
    def of(cls, project_id: str, defaults: Quotas, override: Mapping[str, int],
           revision: int = 0) -> ProjectQuotas:
        values = {name: override.get(name, getattr(defaults, default))
                  for name, default in OVERRIDABLE.items()}
        return cls(project_id, **values,
                   overridden=tuple(n for n in OVERRIDABLE if n in override),
                   revision=revision)


def check_override(changes: Any) -> dict[str, int | None]:
    """The changes of an override, checked: each a known quota (`OVERRIDABLE`), set to an
    integer from 0 to MAX_OVERRIDE, or None (back to the default). InvalidArgument names
    the first field that is not."""
    if not isinstance(changes, Mapping):
        raise InvalidArgument("quotas", "must be an object of quotas", "format")
    out: dict[str, int | None] = {}
    for name, value in changes.items():
        if name not in OVERRIDABLE:
            raise InvalidArgument(str(name), "is not a quota of a project; one of: "
                                  + ", ".join(OVERRIDABLE), "unknown")
        if value is not None and (type(value) is not int or not 0 <= value <= MAX_OVERRIDE):
            raise InvalidArgument(name, f"must be an integer from 0 to {MAX_OVERRIDE}, or "
                                        "null for the default", "constraint")
        out[name] = value
    return out


def _stored(value: bytes) -> dict[str, int]:
    """An override as stored; what is not a quota this version knows is left out (an
    override written by hand, or by a later version)."""
    try:
        fields = json.loads(value)
    except ValueError:
        fields = None
    if not isinstance(fields, dict):
        log.warning("a quota override in etcd is not a JSON object; the defaults hold")
        return {}
    return {n: v for n, v in fields.items()
            if n in OVERRIDABLE and type(v) is int and 0 <= v <= MAX_OVERRIDE}


class QuotaOverrides:
    """The per-project overrides of the nodes' default quotas (`defaults`), in etcd, and
    this node's watch-fed cache of them for the booking path (module docstring)."""

    def __init__(self, store: Store, keys: Keys, defaults: Quotas = DEFAULT_QUOTAS) -> None:
        self.store, self.keys, self.defaults = store, keys, defaults
        self.reloads = 0  # cache loads (tests)
        self._cache: dict[str, dict[str, int]] | None = None
        self.revision = 0  # the etcd revision the cache is current at
        self._loading: asyncio.Task[None] | None = None
        self._follow: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._closed = False
        self._reloading = False  # the watch ended: `_reload_with_backoff` runs

    # -- read and change, linearizable ----------------------------------------------------

    def _of(self, project_id: str, kv: KV | None) -> ProjectQuotas:
        if kv is None:
            return ProjectQuotas.of(project_id, self.defaults, {})
        return ProjectQuotas.of(project_id, self.defaults, _stored(kv.value), kv.mod_revision)

    async def get(self, project_id: str) -> ProjectQuotas:
        """The quotas in force for the project, read linearizably."""
        check_uuid(project_id, "project_id")
        return self._of(project_id, await self.store.get(self.keys.quota_override(project_id)))

    async def set(self, project_id: str, changes: Any) -> ProjectQuotas:
        """Change the project's override: each field named takes its value (None: back to
        the default); the others keep theirs. Checked whole before anything is written
        (InvalidArgument). An override left with no field is deleted."""
        check_uuid(project_id, "project_id")
        wanted = check_override(changes)
        key = self.keys.quota_override(project_id)
        async for _ in retry.NETWORK_RACES.attempts():
            kv = await self.store.get(key)
            current = _stored(kv.value) if kv is not None else {}
            merged = {**current, **wanted}
            override: dict[str, int] = {n: v for n in OVERRIDABLE
                                        if (v := merged.get(n)) is not None}
            if override == current:
                return self._of(project_id, kv)  # nothing changes: nothing written
            txn = GuardedTxn().unchanged(OVERRIDE_GUARD, key, kv.mod_revision if kv else 0)
            if override:
                txn.put(key, json.dumps(override))
            else:
                txn.delete(key)
            outcome = await commit(self.store, txn)
            if outcome.succeeded:
                return ProjectQuotas.of(project_id, self.defaults, override,
                                        outcome.revision if override else 0)
        raise Conflict(f"the quotas of project {project_id} kept changing; try again")

    async def reset(self, project_id: str) -> ProjectQuotas:
        """Delete the project's override: the defaults hold again (no override: unchanged)."""
        check_uuid(project_id, "project_id")
        await commit(self.store, GuardedTxn().delete(self.keys.quota_override(project_id)))
        return ProjectQuotas.of(project_id, self.defaults, {})

    def guard(self, txn: GuardedTxn, quotas: ProjectQuotas) -> None:
        """Guard `txn` (OVERRIDE_GUARD) on the override being as `quotas` was read."""
        txn.unchanged(OVERRIDE_GUARD, self.keys.quota_override(quotas.project_id),
                      quotas.revision)

    # -- the booking path's cache ---------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._cache is not None

    async def ready(self) -> None:
        """Load the cache and start its watch, once (concurrent callers share the load).
        A load again after the watch ended is not waited for (it retries for as long as
        etcd fails): callers find the cache not `loaded`, and read etcd instead."""
        if self._cache is not None or self._closed:
            return
        if self._loading is None or self._loading.done():
            self._loading = asyncio.ensure_future(self._load())
        elif self._reloading:
            return
        await asyncio.shield(self._loading)

    def cached_ips(self, project_id: str, default: int | None) -> int | None:
        """The project's IP quota as this node's cache has it (`ready` first); `default`
        when its override sets none."""
        assert self._cache is not None
        override = self._cache.get(project_id)
        if override is None:
            return default
        return override.get("ips", default)

    async def seen(self, revision: int, timeout: float = 5.0) -> bool:
        """Wait (at most `timeout` s) until this node's cache is current at `revision`;
        whether it is. Lets a test await the watch instead of sleeping."""
        await self.ready()
        deadline = time.monotonic() + timeout
        while self.revision < revision:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return False
        return True

    def close(self) -> None:
        """Stop the watch; the cache is of no further use."""
        self._closed = True
        for task in (self._follow, self._loading):
            if task is not None:
                task.cancel()
        self._cache = None

    async def _load(self) -> None:
        kvs, revision = await self.store.scan(self.keys.quota_override())
        self._cache = {self.keys.last_segment(kv.key): _stored(kv.value) for kv in kvs}
        self.reloads += 1
        if self._follow is not None:
            self._follow.cancel()
        self._follow = asyncio.ensure_future(self._watch(revision + 1))
        self._advance(revision)

    def _advance(self, revision: int) -> None:
        self.revision = max(self.revision, revision)
        self._changed.set()
        self._changed = asyncio.Event()

    async def _watch(self, start: int) -> None:
        try:
            async for events, revision in self.store.watch(self.keys.quota_override(), start):
                cache = self._cache
                if cache is None:
                    return
                for ev in events:
                    project_id = self.keys.last_segment(ev.key)
                    if ev.deleted:
                        cache.pop(project_id, None)
                    else:
                        cache[project_id] = _stored(ev.value)
                self._advance(revision)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - whatever ended it, load again
            # Compaction, or a watch that could not be re-established: until the cache is
            # loaded again, bookings read etcd (the count, with the project's override)
            # rather than trust what it had.
            log.warning("quota overrides: watch ended (%s), reloading", err)
            self._cache = None
            self._reloading = True
            self._loading = asyncio.ensure_future(self._reload_with_backoff())

    async def _reload_with_backoff(self) -> None:
        async for _ in retry.RELOAD.attempts():
            if self._closed:
                return
            try:
                await self._load()
                self._reloading = False
                return
            except IPAMError as err:  # etcd still failing: try again later
                log.info("quota overrides: reload failed (%s)", err)
