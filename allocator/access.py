"""Who may do what: the rules of every role, in one table, and the `Caller` that applies them.

    role             read      change IPs   change VPCs/PNs   book zonal   operate (keys, pools)
    admin            any       any          any               yes          yes
    project_member   own       own          own               -            -
    project_reader   own       -            -                 -            -
    product          any       any          -                 yes          -

"own": objects of the key's projects; outside them a key sees nothing (an object of
another project answers NotFound, exactly like an absent one, never 403). On top of
the table, a resource of a product type (anything but `custom`) can be attached,
detached or moved only by a product key of that type (`Caller.may_manage`).

Both rooms ask the same `Caller`: the gateway before it reads what a route needs
(VPCs, Private Networks, keys, pools), the allocator inside every IP operation.
"""

from __future__ import annotations

from dataclasses import dataclass

from .credentials import ADMIN, PRODUCT, PROJECT_MEMBER, PROJECT_READER
from .errors import NotFound, PermissionDenied
from .records import CUSTOM, IPRecord

ANY, OWN = "any", "own"

READ, WRITE_IPS, WRITE_NETWORKS, BOOK_ZONAL, OPERATE = (
    "read", "write_ips", "write_networks", "book_zonal", "operate")

RULES: dict[str, dict[str, str]] = {
    ADMIN: {READ: ANY, WRITE_IPS: ANY, WRITE_NETWORKS: ANY, BOOK_ZONAL: ANY, OPERATE: ANY},
    PROJECT_MEMBER: {READ: OWN, WRITE_IPS: OWN, WRITE_NETWORKS: OWN},
    PROJECT_READER: {READ: OWN},
    PRODUCT: {READ: ANY, WRITE_IPS: ANY, BOOK_ZONAL: ANY},
}

# The action a refusal names in Scaleway's `permissions_denied` details.
_WIRE_ACTION = {READ: "read", WRITE_IPS: "write", WRITE_NETWORKS: "write",
                BOOK_ZONAL: "book", OPERATE: "admin"}


@dataclass(frozen=True)
class Caller:
    """Who asks, as far as the allocator cares.

    `role`: one of the table's rows. `projects`: the key's own projects (ignored by
    roles whose scope is `any`). `product_types`: a product key's resource types.
    `region`: the region the request is served in (None: any). `credential`: an etcd
    key that must still exist for a change to apply (the caller's API key): a key
    revoked on any node stops every change made with it, in the same transaction.
    """

    role: str = ADMIN
    projects: frozenset[str] = frozenset()
    product_types: frozenset[str] = frozenset()
    region: str | None = None
    credential: str | None = None

    @property
    def visible_projects(self) -> frozenset[str] | None:
        """The projects this caller may see; None: all of them."""
        return None if RULES[self.role].get(READ) == ANY else self.projects

    def sees_project(self, project_id: str | None) -> bool:
        visible = self.visible_projects
        return visible is None or project_id in visible

    def sees(self, record: IPRecord) -> bool:
        return self.sees_project(record.project_id) and (
            self.region is None or record.region == self.region)

    def require(self, action: str, resource: str, project_id: str | None = None) -> None:
        """PermissionDenied unless the table lets this caller do `action` (on `project_id`,
        when given; without it, only the role is judged)."""
        scope = RULES[self.role].get(action)
        if scope == ANY or (scope == OWN and (project_id is None or project_id in self.projects)):
            return
        raise PermissionDenied(_WIRE_ACTION[action], resource, "insufficient permissions")

    def require_visible(self, resource: str, resource_id: str, project_id: str | None) -> None:
        """NotFound (never PermissionDenied) for an object this caller may not see."""
        if not self.sees_project(project_id):
            raise NotFound(resource, resource_id)

    def may_manage(self, resource_type: str) -> bool:
        """Custom resources are anyone's; product resources only their product's."""
        return resource_type == CUSTOM or (
            self.role == PRODUCT and resource_type in self.product_types)
