"""Who may do what: every rule of every role in one table, `RULES`, and the `Caller` that
applies it.

A cell of the table is the set of *ownerships* a role may do an action on: what the
object is to the caller. A project's objects (VPCs, Private Networks, the project a
booking goes to, what a key reads) are `own` (in one of the key's projects) or `other`.
An IP is judged by who manages it now (`Caller.ip_ownership`):

    project          unattached or on a custom resource, and booked by no product key
                     (booked by a member or an admin, or before the booking was recorded)
    booked_by_me     unattached or on a custom resource, booked by a product key sharing
                     a resource type with the caller
    booked_by_other  unattached or on a custom resource, booked by another product
    on_my_resource   attached to a resource of one of the caller's product types
    on_other_product attached to a resource of a product type not the caller's

                     read   book   networks  book zonal  operate (keys, pools)
    admin            any    any    any       yes         yes
    project_member   own    own    own       -           -
    project_reader   own    -      -         -           -
    product          any    any    -         yes         -

    IP changes       project  booked_by_me  booked_by_other  on_my_resource  on_other_product
    admin            U C D R  -             U C D R          -               R
    project_member   U C D R  -             U C D R          -               R
    project_reader   -        -             -                -               -
    product          P        U C P D R     -                U P D R         -

    U update tags and reverses    C attach to a custom resource    D detach
    P attach to a resource of one of the caller's own product types (a resource of
      another product type: never)    R release, alone or in a set

- A move is a detach and an attach in one step: it needs D on the IP as it is and,
  unless it moves to no resource, the attach of the target (C or P) on the IP as it
  would be once detached.
- R on an attached IP answers "still attached" (412), not 403: the rule is who may
  release it once it is detached.
- P on `project` is the hand-over: a product takes a project's IP onto its own
  resource (how Instances attaches the IP its user booked); from then on only that
  product changes it, until it detaches it.
- The IP columns apply to the IPs the role reads; an object of a project the key does
  not read answers NotFound, exactly like an absent one, never 403.

Both rooms ask the same `Caller`: the gateway before it reads what a route needs
(VPCs, Private Networks, keys, pools), the allocator inside every IP operation.
"""

from __future__ import annotations

from dataclasses import dataclass

from .credentials import ADMIN, PRODUCT, PROJECT_MEMBER, PROJECT_READER
from .errors import NotFound, PermissionDenied
from .records import CUSTOM, IPRecord, Resource

# Ownerships of a project's objects.
OWN_PROJECT, OTHER_PROJECT = "own", "other"
# Ownerships of an IP, as the caller sees it.
PROJECT_IP, BOOKED_BY_ME, BOOKED_BY_OTHER, ON_MY_RESOURCE, ON_OTHER_PRODUCT = (
    "project", "booked_by_me", "booked_by_other", "on_my_resource", "on_other_product")
IP_OWNERSHIPS = (PROJECT_IP, BOOKED_BY_ME, BOOKED_BY_OTHER, ON_MY_RESOURCE, ON_OTHER_PRODUCT)

READ, BOOK, WRITE_NETWORKS, BOOK_ZONAL, OPERATE = (
    "read", "book", "write_networks", "book_zonal", "operate")
UPDATE, ATTACH_CUSTOM, ATTACH_PRODUCT, DETACH, RELEASE = (
    "update", "attach_custom", "attach_product", "detach", "release")
IP_ACTIONS = (UPDATE, ATTACH_CUSTOM, ATTACH_PRODUCT, DETACH, RELEASE)

Ownerships = frozenset[str]
ANY: Ownerships = frozenset({OWN_PROJECT, OTHER_PROJECT})
OWN: Ownerships = frozenset({OWN_PROJECT})
NONE: Ownerships = frozenset()


def _ips(*ownerships: str) -> Ownerships:
    return frozenset(ownerships)


RULES: dict[str, dict[str, Ownerships]] = {
    ADMIN: {
        READ: ANY, BOOK: ANY, WRITE_NETWORKS: ANY, BOOK_ZONAL: ANY, OPERATE: ANY,
        UPDATE: _ips(PROJECT_IP, BOOKED_BY_OTHER),
        ATTACH_CUSTOM: _ips(PROJECT_IP, BOOKED_BY_OTHER),
        DETACH: _ips(PROJECT_IP, BOOKED_BY_OTHER),
        RELEASE: _ips(PROJECT_IP, BOOKED_BY_OTHER, ON_OTHER_PRODUCT),
    },
    PROJECT_MEMBER: {
        READ: OWN, BOOK: OWN, WRITE_NETWORKS: OWN,
        UPDATE: _ips(PROJECT_IP, BOOKED_BY_OTHER),
        ATTACH_CUSTOM: _ips(PROJECT_IP, BOOKED_BY_OTHER),
        DETACH: _ips(PROJECT_IP, BOOKED_BY_OTHER),
        RELEASE: _ips(PROJECT_IP, BOOKED_BY_OTHER, ON_OTHER_PRODUCT),
    },
    PROJECT_READER: {
        READ: OWN,
    },
    PRODUCT: {
        READ: ANY, BOOK: ANY, BOOK_ZONAL: ANY,
        UPDATE: _ips(BOOKED_BY_ME, ON_MY_RESOURCE),
        ATTACH_CUSTOM: _ips(BOOKED_BY_ME),
        ATTACH_PRODUCT: _ips(PROJECT_IP, BOOKED_BY_ME, ON_MY_RESOURCE),
        DETACH: _ips(BOOKED_BY_ME, ON_MY_RESOURCE),
        RELEASE: _ips(BOOKED_BY_ME, ON_MY_RESOURCE),
    },
}

# The action a refusal by `require` names in Scaleway's `permissions_denied` details. An
# IP change refused on an IP names the operation asked for (update, attach, detach, move,
# release) and the product's resource type when it is about one ("ip" when not).
_WIRE_ACTION = {READ: "read", BOOK: "write", WRITE_NETWORKS: "write", BOOK_ZONAL: "book",
                OPERATE: "admin", **{a: "write" for a in IP_ACTIONS}}

# Why an IP change was refused, in the caller's terms.
_IS = {PROJECT_IP: "of a project that no product booked",
       BOOKED_BY_ME: "booked by this product", BOOKED_BY_OTHER: "booked by another product",
       ON_MY_RESOURCE: "attached to a resource of this product",
       ON_OTHER_PRODUCT: "attached to another product's resource"}


@dataclass(frozen=True)
class Caller:
    """Who asks, as far as the allocator cares.

    `role`: one of the table's rows. `projects`: the key's own projects (ignored by
    roles that read any project). `product_types`: a product key's resource types.
    `region`: the region the request is served in (None: any). `credential`: an etcd
    key that must still exist for a change to apply (the caller's API key): a key
    revoked on any node stops every change made with it, in the same transaction.
    `access_key`: the API key's public id, recorded as the actor of each change in the
    event feed (`events`; None: `admin`).
    """

    role: str = ADMIN
    projects: frozenset[str] = frozenset()
    product_types: frozenset[str] = frozenset()
    region: str | None = None
    credential: str | None = None
    access_key: str | None = None

    def _cell(self, action: str) -> Ownerships:
        return RULES[self.role].get(action, NONE)

    @property
    def visible_projects(self) -> frozenset[str] | None:
        """The projects this caller may see; None: all of them."""
        return None if OTHER_PROJECT in self._cell(READ) else self.projects

    def sees_project(self, project_id: str | None) -> bool:
        visible = self.visible_projects
        return visible is None or project_id in visible

    def sees(self, record: IPRecord) -> bool:
        return self.sees_project(record.project_id) and (
            self.region is None or record.region == self.region)

    def require(self, action: str, resource: str, project_id: str | None = None) -> None:
        """PermissionDenied unless the table lets this caller do `action` (on `project_id`,
        when given; without it, only the role is judged: some cell of its row allows it)."""
        cell = self._cell(action)
        if OTHER_PROJECT in cell or (cell and project_id is None) or (
                OWN_PROJECT in cell and project_id in self.projects):
            return
        raise PermissionDenied(_WIRE_ACTION[action], resource, "insufficient permissions")

    def require_visible(self, resource: str, resource_id: str, project_id: str | None) -> None:
        """NotFound (never PermissionDenied) for an object this caller may not see."""
        if not self.sees_project(project_id):
            raise NotFound(resource, resource_id)

    # -- IPs --------------------------------------------------------------------------

    @property
    def booked_by_product(self) -> tuple[str, ...]:
        """What an IP this caller books records of its booker: a product key's types."""
        return tuple(sorted(self.product_types)) if self.role == PRODUCT else ()

    def ip_ownership(self, record: IPRecord) -> str:
        """What `record` is to this caller: one of the table's IP columns."""
        return self._ownership(record.resource, record.booked_by_product)

    def _ownership(self, resource: Resource | None, booked_by: tuple[str, ...]) -> str:
        if resource is not None and resource.type != CUSTOM:
            return ON_MY_RESOURCE if resource.type in self.product_types else ON_OTHER_PRODUCT
        if not booked_by:
            return PROJECT_IP
        return BOOKED_BY_ME if self.product_types.intersection(booked_by) else BOOKED_BY_OTHER

    def require_any_ip_change(self) -> None:
        """PermissionDenied, before anything is read, for a role that changes no IP."""
        if not any(self._cell(a) for a in IP_ACTIONS):
            raise PermissionDenied("write", "ip", "insufficient permissions")

    def require_ip(self, action: str, record: IPRecord) -> None:
        """PermissionDenied unless the table lets this caller do `action` (UPDATE, DETACH
        or RELEASE; an attach or a move: see below) to `record`."""
        self._judge(action, action, record.resource, self.ip_ownership(record))

    def require_attach(self, record: IPRecord, target: Resource) -> None:
        """PermissionDenied unless this caller may attach `record` to `target`."""
        self._judge_attach("attach", record.resource, self.ip_ownership(record), target)

    def require_move(self, record: IPRecord, target: Resource | None) -> None:
        """A move is a detach and an attach in one step: both must be allowed, the attach
        judged on the IP as it would be once detached."""
        self._judge(DETACH, "move", record.resource, self.ip_ownership(record))
        if target is not None:
            self._judge_attach("move", None, self._ownership(None, record.booked_by_product),
                               target)

    def require_book(self, project_id: str, zonal: bool, resource: Resource | None) -> None:
        """PermissionDenied unless this caller may book in `project_id` (a zonal IP: when
        `zonal`), attached at once to `resource` when one is named."""
        self.require(BOOK, "ip", project_id)
        if zonal:  # zonal IPs are products' to book
            self.require(BOOK_ZONAL, "zonal_ip")
        if resource is not None:
            self._judge_attach("attach", None,
                               self._ownership(None, self.booked_by_product), resource)

    def _judge_attach(self, op: str, held: Resource | None, ownership: str,
                      target: Resource) -> None:
        if target.type == CUSTOM:
            self._judge(ATTACH_CUSTOM, op, held, ownership)
        elif target.type not in self.product_types:
            raise PermissionDenied(op, target.type, f"only the product managing "
                                                    f"{target.type} resources may {op} them")
        else:
            self._judge(ATTACH_PRODUCT, op, held, ownership)

    def _judge(self, action: str, op: str, held: Resource | None, ownership: str) -> None:
        """`op`: the operation asked for; `held`: the resource the IP is attached to."""
        if ownership in self._cell(action):
            return
        if ownership == ON_OTHER_PRODUCT and held is not None:
            raise PermissionDenied(op, held.type, f"only the product managing {held.type} "
                                                  f"resources may {op} this IP")
        raise PermissionDenied(op, "ip", f"{self.role} keys may not {op} an IP {_IS[ownership]}")
