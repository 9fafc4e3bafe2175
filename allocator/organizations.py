"""Which organization each project belongs to: the organization of everything created in it.

    {p}projorg/{project_id}   the project's organization id

An object's `organization_id` (VPC, Private Network, IP) is its project's organization,
whoever creates it: a project member, an admin or a product. Scaleway's bodies name only
a project, and an SDK client filters by its `default_organization_id`, so an object that
carried anything else would vanish from its owner's lists.

The mapping is written three ways, each set-once (create-if-absent, or guarded on the
value already there being the same):
- with a project key (member or reader) that names an organization, in the key's own
  transaction (`credentials.Credentials.create`): a project belongs to one
  organization, so a key naming another is refused, and nothing is written;
- by an admin (`PUT /ipam/admin/v1/projects/{project_id}`, `set`);
- for the keys created before the mapping existed, by the schema step 4 -> 5
  (`build_from_keys`).

Once set, a mapping never changes (a different organization is refused with
AlreadyExists, 409): objects already carry it, and changing it would split a project's
objects between two organizations. So this node keeps every mapping it read for good;
a project it found unmapped is read again after `UNKNOWN_SECONDS`, and always before a
write is refused for it.

A node that requires organizations (`IPAM.require_organizations`, the service's rule)
refuses a write into a project with no known organization: PreconditionFailed
`project_organization_unknown` (412), before anything is written. A library user that
does not (tests, tools without tenancy) keeps the organization it names, or none.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from .errors import AlreadyExists, Conflict, PreconditionFailed
from .keys import Keys
from .records import check_uuid
from .retry import NETWORK_RACES
from .store import Store
from .txn import GuardedTxn, commit

UNKNOWN = "project_organization_unknown"  # the precondition of the refusal
UNKNOWN_SECONDS = 1.0  # how long this node trusts "no organization" for a project


class OrganizationUnknown(PreconditionFailed):
    """A write into a project whose organization nobody set; nothing was written."""

    def __init__(self, project_id: str) -> None:
        super().__init__(UNKNOWN, (
            f"project {project_id} has no known organization: create a project key naming "
            f"its organization_id, or set it with PUT /ipam/admin/v1/projects/{project_id}"))
        self.project_id = project_id


def refuse_other(project_id: str, mapped: str, asked: str) -> AlreadyExists:
    """The refusal of a second organization for a project (409)."""
    return AlreadyExists("project_organization", project_id,
                         f"project {project_id} belongs to organization {mapped}, not {asked}: "
                         "a project belongs to one organization, for good")


class ProjectOrganizations:
    """The project -> organization mapping, read through this node's cache.

    `required`: a write into a project with no known organization is refused (see the
    module docstring); otherwise it keeps the organization its caller names.
    """

    def __init__(self, store: Store, keys: Keys, required: bool = False) -> None:
        self.store, self.keys, self.required = store, keys, required
        self._known: dict[str, str] = {}
        self._unknown: dict[str, float] = {}  # project -> monotonic time it was read absent

    async def of(self, project_id: str, fresh: bool = False) -> str | None:
        """The project's organization, or None; `fresh`: read etcd unless it is known."""
        known = self._known.get(project_id)
        if known is not None:
            return known
        seen = self._unknown.get(project_id)
        if not fresh and seen is not None and time.monotonic() - seen < UNKNOWN_SECONDS:
            return None
        kv = await self.store.get(self.keys.project_organization(project_id))
        if kv is None:
            self._unknown[project_id] = time.monotonic()
            return None
        return self._learn(project_id, kv.value.decode())

    def remember(self, project_ids: Iterable[str], organization_id: str) -> None:
        """These projects were mapped to `organization_id` by a transaction that committed
        (`write_once`): this node knows it from now on."""
        for project_id in project_ids:
            self._learn(project_id, organization_id)

    def _learn(self, project_id: str, organization_id: str) -> str:
        self._unknown.pop(project_id, None)
        self._known[project_id] = organization_id
        return organization_id

    async def settle(self, project_id: str, named: str | None = None) -> str | None:
        """The organization of an object created in `project_id`: the project's, whoever
        creates it. Unknown: refused when required (OrganizationUnknown), else `named`
        (what a library caller gives; nothing is recorded)."""
        organization = await self.of(project_id)
        if organization is None and self.required:
            organization = await self.of(project_id, fresh=True)
            if organization is None:
                raise OrganizationUnknown(project_id)
        return organization if organization is not None else named

    async def set(self, project_id: str, organization_id: str) -> str:
        """Map `project_id` to `organization_id`, once: the same again changes nothing;
        another organization is refused (AlreadyExists naming both)."""
        check_uuid(project_id, "project_id")
        check_uuid(organization_id, "organization_id")
        async for _ in NETWORK_RACES.attempts():
            txn = GuardedTxn()
            if not await self.write_once(txn, {project_id}, organization_id):
                return organization_id
            outcome = await commit(self.store, txn)
            if outcome.succeeded:
                return self._learn(project_id, organization_id)
            # Another writer set it meanwhile: read what it wrote.
        raise Conflict(f"the organization of project {project_id} kept changing; try again")

    async def write_once(self, txn: GuardedTxn, project_ids: Iterable[str],
                         organization_id: str) -> bool:
        """Add to `txn` the writes mapping each of `project_ids` to `organization_id`, each
        guarded on being absent still; True when there is one to write. AlreadyExists
        (nothing added) when one maps to another organization already. Once `txn`
        committed, `remember` them.

        Read linearizably: a key created for a project must never map it to a second
        organization, whatever this node cached."""
        ids = sorted(set(project_ids))
        found = await self.store.get_many(self.keys.project_organization(p) for p in ids)
        writes = False
        for project_id in ids:
            key = self.keys.project_organization(project_id)
            kv = found.get(key)
            if kv is not None:
                mapped = self._learn(project_id, kv.value.decode())
                if mapped != organization_id:
                    raise refuse_other(project_id, mapped, organization_id)
                continue
            txn.absent(f"organization of {project_id}", key).put(key, organization_id)
            writes = True
        return writes


def mapping_of_keys(keys: Iterable[tuple[Iterable[str], str]]
                    ) -> tuple[dict[str, str], set[str]]:
    """(project -> organization, projects named with two organizations) from the
    (project ids, organization id) of project keys: what the schema step 4 -> 5 writes,
    and what it leaves to an admin (no key can say which of the two is right)."""
    mapping: dict[str, str] = {}
    torn: set[str] = set()
    for project_ids, organization_id in keys:
        for project_id in project_ids:
            if mapping.setdefault(project_id, organization_id) != organization_id:
                torn.add(project_id)
    for project_id in torn:
        del mapping[project_id]
    return mapping, torn
