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
  racing in one project retry on the guard, each lost race meaning another create won
  (`retry.NETWORK_RACES` bounds them, so more than about eight at once in one project
  may answer Conflict, to be retried), as Private Networks of one VPC always have.
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
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from .errors import QuotaExceeded
from .keys import Keys
from .store import Store
from .txn import GuardedTxn

# The guard `within_quota` adds: its failure means another create took a slot meanwhile.
QUOTA_GUARD = "quota"
# Far from its quota, a project's IP count is read again after this long (seconds).
IP_COUNT_SECONDS = 1.0
# More than one etcd cluster commits in a second (DESIGN.md section 4: thousands).
CLUSTER_BOOKINGS_PER_SECOND = 20_000
# Projects whose last IP count a node keeps before it drops the old ones.
_COUNTS_KEPT = 4096


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
    admitted: int = 0  # bookings this node let through on this count


class IPQuota:
    """Admits a project's bookings against its IP quota, on one node (module docstring)."""

    def __init__(self, store: Store, keys: Keys, quota: int,
                 count_seconds: float = IP_COUNT_SECONDS) -> None:
        self.store, self.keys, self.quota = store, keys, quota
        self.count_seconds = count_seconds
        self.margin = CLUSTER_BOOKINGS_PER_SECOND * count_seconds
        self.reads = 0  # count reads sent (tests)
        self._counts: dict[str, _Count] = {}
        self._reading: dict[str, asyncio.Future[_Count]] = {}

    async def admit(self, project_id: str) -> None:
        """Let one booking of the project through, or refuse it (QuotaExceeded)."""
        count = self._counts.get(project_id)
        if (count is not None and time.monotonic() - count.read_at < self.count_seconds
                and count.held + count.admitted + self.margin < self.quota):
            count.admitted += 1
            return
        count = await asyncio.shield(self._read(project_id))
        current = count.held + count.admitted
        if current >= self.quota:
            raise QuotaExceeded("ip", self.quota, current,
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
        held, _ = await self.store.count(self.keys.by_project(project_id))
        if len(self._counts) >= _COUNTS_KEPT:
            self._counts = {p: c for p, c in self._counts.items()
                            if started - c.read_at < self.count_seconds}
        count = self._counts[project_id] = _Count(held, started)
        return count
