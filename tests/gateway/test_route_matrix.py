"""The tenancy and privilege matrix, generated from the gateway's own router: every route
× every caller × every target, each cell's status taken from a table written here (from
`allocator.access.RULES` and the authentication rules of `gateway.auth`), never from
what the server answered; and etcd's revision unmoved by every refusal.

Callers: an admin key, a member and a reader of project A, product keys of type X
(instance_server) and Y (lb_server), no key, a revoked key, an expired key. Targets: the
request's object (or the project its body or query names) in A, in another project B, or
absent; for IP routes, IPs of A unattached, on a custom resource, on X's resource, on
Y's, booked by X, an IP of B, and an absent IP.

The table decides in the order the gateway and the allocator apply their rules:
1. public paths (probes, the OpenAPI document, /metrics, the docs pages): 200, key or not;
2. no key, a revoked or an expired one: 401 denied_authentication;
3. operator routes (`OPERATE`): 403 for every key but an admin's, before anything is read;
4. a role that changes no IP (the reader): 403 on every IP change, before the IP is read;
5. an object of a project the key does not read, or an absent one: 404, never 403;
6. a cell of RULES that does not hold (role, action, ownership or project): 403;
7. the IP's state: releasing an attached IP, attaching an attached one, detaching or
   moving an unattached one: 412;
8. else the route's success.

Phase one sends every cell expected to write nothing (refusals and reads), concurrently,
and reads etcd's revision after each: none may move it. Phase two sends the changes
expected to succeed, each on objects made for it. A route of the router without a row
here fails `test_every_route_of_the_router_has_a_row...`, so a new route cannot escape.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from allocator_support import revision
from gateway_fixtures import ADMIN_SECRET, REGION, ApiKeys, GatewayNode

from allocator.access import (
    ATTACH_CUSTOM,
    ATTACH_PRODUCT,
    BOOK,
    BOOKED_BY_ME,
    BOOKED_BY_OTHER,
    DETACH,
    IP_ACTIONS,
    ON_MY_RESOURCE,
    ON_OTHER_PRODUCT,
    OPERATE,
    OTHER_PROJECT,
    OWN_PROJECT,
    PROJECT_IP,
    READ,
    RELEASE,
    RULES,
    UPDATE,
    WRITE_NETWORKS,
)
from allocator.credentials import ADMIN, PRODUCT, PROJECT_MEMBER, PROJECT_READER, ApiKey
from gateway.context import CREDENTIALS_KEY

X, Y = "instance_server", "lb_server"
IPAM_BASE, VPC_BASE = f"/ipam/v1/regions/{REGION}", f"/vpc/v2/regions/{REGION}"
ADMIN_BASE = "/ipam/admin/v1"

# -- callers ---------------------------------------------------------------------------------

CALLERS = ("admin", "member", "reader", "product_x", "product_y",
           "no_key", "revoked_key", "expired_key")
ROLE = {"admin": ADMIN, "member": PROJECT_MEMBER, "reader": PROJECT_READER,
        "product_x": PRODUCT, "product_y": PRODUCT}
PRODUCT_TYPES: dict[str, frozenset[str]] = {"product_x": frozenset({X}),
                                            "product_y": frozenset({Y})}
UNAUTHENTICATED = frozenset({"no_key", "revoked_key", "expired_key"})

# -- targets ---------------------------------------------------------------------------------

OWN, OTHER, ABSENT, NONE = "own", "other", "absent", "-"
# IP targets: (project, what it is attached to, the product type that booked it)
IP_TARGETS: dict[str, tuple[str, str | None, str | None]] = {
    "ip_unattached": ("A", None, None),
    "ip_custom": ("A", "custom", None),
    "ip_on_x": ("A", X, None),
    "ip_on_y": ("A", Y, None),
    "ip_booked_by_x": ("A", None, X),
    "ip_other": ("B", None, None),
}
IP_ABSENT = "ip_absent"
ALL_IPS = (*IP_TARGETS, IP_ABSENT)
OBJECTS = (OWN, OTHER, ABSENT)
PROJECTS = (OWN, OTHER)


def project_of(target: str) -> str | None:
    """The project ("A" or "B") the target's object is in; None: it does not exist."""
    if target in IP_TARGETS:
        return IP_TARGETS[target][0]
    return {OWN: "A", OTHER: "B"}.get(target)


def ownership(project: str | None) -> str:
    return OWN_PROJECT if project == "A" else OTHER_PROJECT


def may(caller: str, action: str, target: str) -> bool:
    """Whether RULES lets the caller do `action` on the target's project (A: own)."""
    return ownership(project_of(target)) in RULES[ROLE[caller]].get(action, frozenset())


def visible(caller: str, target: str) -> bool:
    """Whether the caller reads the target's object (an absent one: never)."""
    return project_of(target) is not None and may(caller, READ, target)


def column(caller: str, target: str) -> str:
    """The IP column of RULES the target is to the caller (the definitions of
    `allocator.access`'s docstring)."""
    attached = IP_TARGETS[target][1]
    types = PRODUCT_TYPES.get(caller, frozenset())
    if attached in (X, Y):
        return ON_MY_RESOURCE if attached in types else ON_OTHER_PRODUCT
    return detached_column(caller, target)


def detached_column(caller: str, target: str) -> str:
    """The column of the target once detached (what a move's attach is judged on)."""
    booked_by = IP_TARGETS[target][2]
    if booked_by is None:
        return PROJECT_IP
    return BOOKED_BY_ME if booked_by in PRODUCT_TYPES.get(caller, frozenset()) else BOOKED_BY_OTHER


# -- the expectation table ----------------------------------------------------------------

PUBLIC, OPERATOR, LIST, BOOKING, CREATE_NETWORK, READ_OBJECT, WRITE_NETWORK = (
    "public", "operator", "list", "booking", "create_network", "read_object", "write_network")
IP_UPDATE, IP_RELEASE, IP_ATTACH, IP_DETACH, IP_MOVE = (
    "ip_update", "ip_release", "ip_attach", "ip_detach", "ip_move")


def ip_change(rule: str, variant: str, caller: str, target: str) -> int:
    """Steps 4 to 8 of the module docstring for a change of an IP."""
    cells = RULES[ROLE[caller]]
    if not any(cells.get(a) for a in IP_ACTIONS):
        return 403
    if target == IP_ABSENT or not visible(caller, target):
        return 404
    col, attached = column(caller, target), IP_TARGETS[target][1] is not None

    def holds(action: str, ownership_: str = col) -> bool:
        return ownership_ in cells.get(action, frozenset())

    if rule == IP_UPDATE:
        return 200 if holds(UPDATE) else 403
    if rule == IP_RELEASE:
        return 403 if not holds(RELEASE) else 412 if attached else 204
    if rule == IP_ATTACH:
        if variant == "to_x":  # a product's resource: its own product only, never another's
            allowed = X in PRODUCT_TYPES.get(caller, frozenset()) and holds(ATTACH_PRODUCT)
        else:
            allowed = holds(ATTACH_CUSTOM)
        return 403 if not allowed else 412 if attached else 200
    if rule == IP_DETACH:
        return 403 if not holds(DETACH) else 200 if attached else 412
    assert rule == IP_MOVE  # a detach, then an attach (to a custom resource) of the IP detached
    if not holds(DETACH) or not holds(ATTACH_CUSTOM, detached_column(caller, target)):
        return 403
    return 200 if attached else 412


def expected(row: Row, variant: str, caller: str, target: str) -> int:
    """The status of one cell (the module docstring's steps)."""
    if row.rule == PUBLIC:
        return 200
    if caller in UNAUTHENTICATED:
        return 401
    if row.rule == OPERATOR:
        return row.ok if RULES[ROLE[caller]].get(OPERATE) else 403
    if row.rule == LIST:
        return 200  # a list shows what the key reads: another project's objects are left out
    if row.rule == BOOKING:
        return row.ok if may(caller, BOOK, target) else 403
    if row.rule == CREATE_NETWORK:
        return row.ok if may(caller, WRITE_NETWORKS, target) else 403
    if row.rule == READ_OBJECT:
        return row.ok if visible(caller, target) else 404
    if row.rule == WRITE_NETWORK:
        if not visible(caller, target):
            return 404
        return row.ok if may(caller, WRITE_NETWORKS, target) else 403
    return ip_change(row.rule, variant, caller, target)


# -- the world the requests act on ------------------------------------------------------------


@dataclass
class Req:
    path: str
    body: Any = None
    params: dict[str, str] | None = None


@dataclass
class World:
    """Projects A and B with their objects, the callers' secrets, and fresh-object makers."""

    node: GatewayNode
    org: str
    projects: dict[str, str]  # "A", "B" -> project id
    secrets: dict[str, str] = field(default_factory=dict)  # caller -> secret key
    vpcs: dict[str, str] = field(default_factory=dict)  # "A", "B" -> VPC id
    pns: dict[str, str] = field(default_factory=dict)  # "A", "B" -> Private Network id
    pn_subnets: dict[str, list[str]] = field(default_factory=dict)
    ips: dict[str, tuple[str, dict[str, Any] | None]] = field(default_factory=dict)
    spare_key: str = ""  # an access key the refused revocations name
    pool: str = ""  # a zonal pool the refused operator requests name
    _numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def number(self) -> int:
        return next(self._numbers)

    def send(self, caller: str | None, method: str, path: str, body: Any = None,
             params: dict[str, str] | None = None) -> requests.Response:
        headers = {}
        if caller == "bootstrap":
            headers["X-Auth-Token"] = ADMIN_SECRET
        elif caller is not None and caller in self.secrets:
            headers["X-Auth-Token"] = self.secrets[caller]
        return requests.request(method, self.node.url + path, json=body, params=params,
                                headers=headers, timeout=30)

    def made(self, method: str, path: str, body: Any = None, caller: str = "bootstrap"
             ) -> dict[str, Any]:
        """A setup request that must succeed; its JSON."""
        resp = self.send(caller, method, path, body)
        assert resp.status_code in (200, 204), f"{method} {path}: {resp.text}"
        return resp.json() if resp.content else {}

    def revision(self) -> int:
        assert self.node.ipam is not None
        return int(self.node.call(revision(self.node.ipam)))

    # fresh values and objects

    def cidr(self) -> str:
        n = self.number()
        return f"10.{64 + n // 256}.{n % 256}.0/24"

    def mac(self) -> dict[str, Any]:
        n = self.number()
        return {"mac_address": f"02:7a:00:00:{n >> 8 & 255:02x}:{n & 255:02x}"}

    def vpc(self, project: str) -> str:
        return str(self.made("POST", f"{VPC_BASE}/vpcs", {
            "project_id": self.projects[project], "name": f"v{self.number()}"})["id"])

    def pn(self, project: str, subnets: int = 1) -> tuple[str, list[str]]:
        cidrs = [self.cidr() for _ in range(subnets)]
        pn = self.made("POST", f"{VPC_BASE}/private-networks", {
            "project_id": self.projects[project], "name": f"p{self.number()}",
            "subnets": cidrs})
        return str(pn["id"]), cidrs

    def ip(self, target: str) -> tuple[str, dict[str, Any] | None]:
        """A new IP of `target` (IP_TARGETS), and the resource it is attached to."""
        project, attached, booked_by = IP_TARGETS[target]
        body: dict[str, Any] = {"project_id": self.projects[project], "is_ipv6": False,
                                "source": {"private_network_id": self.pns[project]}}
        resource = None
        if attached == "custom":
            resource = body["resource"] = self.mac()
        booker = "product_x" if booked_by == X else "bootstrap"
        ip_id = str(self.made("POST", f"{IPAM_BASE}/ips", body, booker)["id"])
        if attached in (X, Y):
            resource = {"type": attached, "id": str(uuid.uuid4())}
            self.made("POST", f"{IPAM_BASE}/ips/{ip_id}/attach", {"resource": resource},
                      "product_x" if attached == X else "product_y")
        return ip_id, resource

    def key(self) -> str:
        return str(self.made("POST", f"{ADMIN_BASE}/api-keys", {
            "role": "project_reader", "project_ids": [self.projects["A"]],
            "organization_id": self.org})["access_key"])

    def zonal_pool(self) -> str:
        n = self.number()
        return str(self.made("POST", f"{ADMIN_BASE}/regions/{REGION}/zonal-pools", {
            "zone": f"{REGION}-1", "subnet": f"100.{64 + n // 256}.{n % 256}.0/28",
            "allow_private": True})["id"])


Make = Callable[[World, str, str, bool], Req]  # (world, target, variant, fresh) -> request


@dataclass(frozen=True)
class Row:
    """One route of the router: its rule, its targets (and body variants), its success
    status and how to make a valid request for a target (on fresh objects when `fresh`)."""

    rule: str
    make: Make
    targets: tuple[str, ...] = (NONE,)
    ok: int = 200
    variants: tuple[str, ...] = ("",)


def fixed(path: str, body: Any = None) -> Make:
    return lambda w, t, v, fresh: Req(path, body)


def listing(path: str) -> Make:
    return lambda w, t, v, fresh: Req(path, params={"project_id": w.projects[project_of(t)
                                                                             or "A"]})


def _vpc(w: World, t: str, fresh: bool) -> str:
    if t == ABSENT:
        return str(uuid.uuid4())
    project = project_of(t)
    assert project is not None
    return w.vpc(project) if fresh else w.vpcs[project]


def _pn(w: World, t: str, fresh: bool, subnets: int = 1) -> tuple[str, list[str]]:
    if t == ABSENT:
        return str(uuid.uuid4()), ["10.0.0.0/24"]
    project = project_of(t)
    assert project is not None
    return w.pn(project, subnets) if fresh else (w.pns[project], w.pn_subnets[project])


def on_vpc(suffix: str = "", body: Any = None) -> Make:
    return lambda w, t, v, fresh: Req(f"{VPC_BASE}/vpcs/{_vpc(w, t, fresh)}{suffix}", body)


def on_pn(base: str, suffix: str = "", body: Any = None) -> Make:
    return lambda w, t, v, fresh: Req(f"{base}/private-networks/{_pn(w, t, fresh)[0]}{suffix}",
                                      body)


def add_subnets(w: World, t: str, v: str, fresh: bool) -> Req:
    return Req(f"{VPC_BASE}/private-networks/{_pn(w, t, fresh)[0]}/subnets",
               {"subnets": [w.cidr()]})


def delete_subnets(w: World, t: str, v: str, fresh: bool) -> Req:
    pn, cidrs = _pn(w, t, fresh, 2)
    return Req(f"{VPC_BASE}/private-networks/{pn}/subnets", {"subnets": [cidrs[-1]]})


def create_vpc(w: World, t: str, v: str, fresh: bool) -> Req:
    return Req(f"{VPC_BASE}/vpcs", {"project_id": w.projects[project_of(t) or "A"],
                                    "name": f"v{w.number()}"})


def create_pn(w: World, t: str, v: str, fresh: bool) -> Req:
    return Req(f"{VPC_BASE}/private-networks", {"project_id": w.projects[project_of(t) or "A"],
                                                "name": f"p{w.number()}",
                                                "subnets": [w.cidr()]})


def book(w: World, t: str, v: str, fresh: bool) -> Req:
    project = project_of(t) or "A"
    return Req(f"{IPAM_BASE}/ips", {"project_id": w.projects[project], "is_ipv6": False,
                                    "source": {"private_network_id": w.pns[project]}})


def _ip(w: World, t: str, fresh: bool) -> tuple[str, dict[str, Any] | None]:
    if t == IP_ABSENT:
        return str(uuid.uuid4()), None
    return w.ip(t) if fresh else w.ips[t]


def on_ip(suffix: str = "", body: Any = None) -> Make:
    return lambda w, t, v, fresh: Req(f"{IPAM_BASE}/ips/{_ip(w, t, fresh)[0]}{suffix}", body)


def release_set(w: World, t: str, v: str, fresh: bool) -> Req:
    return Req(f"{IPAM_BASE}/ip-sets/release", {"ip_ids": [_ip(w, t, fresh)[0]]})


def attach(w: World, t: str, v: str, fresh: bool) -> Req:
    ip_id, _ = _ip(w, t, fresh)
    resource = w.mac() if v == "to_custom" else {"type": X, "id": str(uuid.uuid4())}
    return Req(f"{IPAM_BASE}/ips/{ip_id}/attach", {"resource": resource})


def detach(w: World, t: str, v: str, fresh: bool) -> Req:
    ip_id, resource = _ip(w, t, fresh)
    return Req(f"{IPAM_BASE}/ips/{ip_id}/detach", {"resource": resource or w.mac()})


def move(w: World, t: str, v: str, fresh: bool) -> Req:
    ip_id, resource = _ip(w, t, fresh)
    return Req(f"{IPAM_BASE}/ips/{ip_id}/move", {"from_resource": resource or w.mac(),
                                                 "to_resource": w.mac()})


def key_path(w: World, t: str, v: str, fresh: bool) -> Req:
    return Req(f"{ADMIN_BASE}/api-keys/{w.key() if fresh else w.spare_key}")


def project_path(w: World, t: str, v: str, fresh: bool) -> Req:
    project = str(uuid.uuid4()) if fresh else w.projects["A"]
    return Req(f"{ADMIN_BASE}/projects/{project}", {"organization_id": w.org})


def quotas_path(body: Any = None) -> Make:
    def make(w: World, t: str, v: str, fresh: bool) -> Req:
        project = str(uuid.uuid4()) if fresh else w.projects["A"]
        return Req(f"{ADMIN_BASE}/projects/{project}/quotas", body)
    return make


def create_key(w: World, t: str, v: str, fresh: bool) -> Req:
    return Req(f"{ADMIN_BASE}/api-keys", {"role": "project_reader", "organization_id": w.org,
                                          "project_ids": [w.projects["A"]]})


def create_pool(w: World, t: str, v: str, fresh: bool) -> Req:
    n = w.number()
    return Req(f"{ADMIN_BASE}/regions/{REGION}/zonal-pools", {
        "zone": f"{REGION}-1", "subnet": f"100.{96 + n // 256}.{n % 256}.0/28",
        "allow_private": True})


def pool_path(suffix: str = "") -> Make:
    return lambda w, t, v, fresh: Req(
        f"{ADMIN_BASE}/regions/{REGION}/zonal-pools/{w.zonal_pool() if fresh else w.pool}"
        f"{suffix}")


_REGION = "{region}"
ROWS: dict[tuple[str, str], Row] = {
    # IPAM API v1
    ("POST", f"/ipam/v1/regions/{_REGION}/ips"): Row(BOOKING, book, PROJECTS),
    ("GET", f"/ipam/v1/regions/{_REGION}/ips"): Row(LIST, listing(f"{IPAM_BASE}/ips"), PROJECTS),
    ("GET", "/ipam/v1/regions/{region}/ips/{ip_id}"): Row(READ_OBJECT, on_ip(), ALL_IPS),
    ("PATCH", "/ipam/v1/regions/{region}/ips/{ip_id}"):
        Row(IP_UPDATE, on_ip("", {"tags": ["matrix"]}), ALL_IPS),
    ("DELETE", "/ipam/v1/regions/{region}/ips/{ip_id}"): Row(IP_RELEASE, on_ip(), ALL_IPS, 204),
    ("POST", "/ipam/v1/regions/{region}/ip-sets/release"):
        Row(IP_RELEASE, release_set, ALL_IPS, 204),
    ("POST", "/ipam/v1/regions/{region}/ips/{ip_id}/attach"):
        Row(IP_ATTACH, attach, ALL_IPS, variants=("to_custom", "to_x")),
    ("POST", "/ipam/v1/regions/{region}/ips/{ip_id}/detach"): Row(IP_DETACH, detach, ALL_IPS),
    ("POST", "/ipam/v1/regions/{region}/ips/{ip_id}/move"): Row(IP_MOVE, move, ALL_IPS),
    ("GET", "/ipam/v1/regions/{region}/private-networks/{private_network_id}/reserved-ips"):
        Row(READ_OBJECT, on_pn(IPAM_BASE, "/reserved-ips"), OBJECTS),
    ("GET", "/ipam/v1/regions/{region}/private-networks/{private_network_id}/usage"):
        Row(READ_OBJECT, on_pn(IPAM_BASE, "/usage"), OBJECTS),
    ("GET", "/ipam/v1/regions/{region}/events"):
        Row(LIST, listing(f"{IPAM_BASE}/events"), PROJECTS),
    # VPC API v2
    ("POST", "/vpc/v2/regions/{region}/vpcs"): Row(CREATE_NETWORK, create_vpc, PROJECTS),
    ("GET", "/vpc/v2/regions/{region}/vpcs"): Row(LIST, listing(f"{VPC_BASE}/vpcs"), PROJECTS),
    ("GET", "/vpc/v2/regions/{region}/vpcs/{vpc_id}"): Row(READ_OBJECT, on_vpc(), OBJECTS),
    ("PATCH", "/vpc/v2/regions/{region}/vpcs/{vpc_id}"):
        Row(WRITE_NETWORK, on_vpc("", {"name": "renamed"}), OBJECTS),
    ("POST", "/vpc/v2/regions/{region}/vpcs/{vpc_id}/enable-routing"):
        Row(WRITE_NETWORK, on_vpc("/enable-routing", {}), OBJECTS),
    ("DELETE", "/vpc/v2/regions/{region}/vpcs/{vpc_id}"):
        Row(WRITE_NETWORK, on_vpc(), OBJECTS, 204),
    ("POST", "/vpc/v2/regions/{region}/private-networks"):
        Row(CREATE_NETWORK, create_pn, PROJECTS),
    ("GET", "/vpc/v2/regions/{region}/private-networks"):
        Row(LIST, listing(f"{VPC_BASE}/private-networks"), PROJECTS),
    ("GET", "/vpc/v2/regions/{region}/private-networks/{private_network_id}"):
        Row(READ_OBJECT, on_pn(VPC_BASE), OBJECTS),
    ("PATCH", "/vpc/v2/regions/{region}/private-networks/{private_network_id}"):
        Row(WRITE_NETWORK, on_pn(VPC_BASE, "", {"name": "renamed"}), OBJECTS),
    ("POST", "/vpc/v2/regions/{region}/private-networks/{private_network_id}/enable-dhcp"):
        Row(WRITE_NETWORK, on_pn(VPC_BASE, "/enable-dhcp", {}), OBJECTS),
    ("DELETE", "/vpc/v2/regions/{region}/private-networks/{private_network_id}"):
        Row(WRITE_NETWORK, on_pn(VPC_BASE), OBJECTS, 204),
    ("POST", "/vpc/v2/regions/{region}/private-networks/{private_network_id}/subnets"):
        Row(WRITE_NETWORK, add_subnets, OBJECTS),
    ("DELETE", "/vpc/v2/regions/{region}/private-networks/{private_network_id}/subnets"):
        Row(WRITE_NETWORK, delete_subnets, OBJECTS),
    ("GET", "/vpc/v2/regions/{region}/subnets"):
        Row(LIST, listing(f"{VPC_BASE}/subnets"), PROJECTS),
    # operators
    ("POST", "/ipam/admin/v1/api-keys"): Row(OPERATOR, create_key),
    ("GET", "/ipam/admin/v1/api-keys"): Row(OPERATOR, fixed(f"{ADMIN_BASE}/api-keys")),
    ("GET", "/ipam/admin/v1/api-keys/{access_key}"): Row(OPERATOR, key_path),
    ("DELETE", "/ipam/admin/v1/api-keys/{access_key}"): Row(OPERATOR, key_path, ok=204),
    ("PUT", "/ipam/admin/v1/projects/{project_id}"): Row(OPERATOR, project_path),
    ("GET", "/ipam/admin/v1/projects/{project_id}"): Row(OPERATOR, project_path),
    ("GET", "/ipam/admin/v1/projects/{project_id}/quotas"): Row(OPERATOR, quotas_path()),
    # The nodes' default VPC quota: whatever order the cells run in, nothing changes.
    ("PUT", "/ipam/admin/v1/projects/{project_id}/quotas"):
        Row(OPERATOR, quotas_path({"vpcs": 100})),
    ("DELETE", "/ipam/admin/v1/projects/{project_id}/quotas"):
        Row(OPERATOR, quotas_path(), ok=204),
    ("POST", "/ipam/admin/v1/regions/{region}/zonal-pools"): Row(OPERATOR, create_pool),
    ("GET", "/ipam/admin/v1/regions/{region}/zonal-pools"):
        Row(OPERATOR, fixed(f"{ADMIN_BASE}/regions/{REGION}/zonal-pools")),
    ("DELETE", "/ipam/admin/v1/regions/{region}/zonal-pools/{pool_id}"):
        Row(OPERATOR, pool_path(), ok=204),
    ("GET", "/ipam/admin/v1/regions/{region}/zonal-pools/{pool_id}/usage"):
        Row(OPERATOR, pool_path("/usage")),
    ("GET", "/ipam/admin/v1/regions/{region}/dhcp-declines"):
        Row(OPERATOR, fixed(f"{ADMIN_BASE}/regions/{REGION}/dhcp-declines")),
    ("DELETE", "/ipam/admin/v1/regions/{region}/dhcp-declines"):
        Row(OPERATOR, fixed(f"{ADMIN_BASE}/regions/{REGION}/dhcp-declines")),
    # public: the listed exception, answered without a key
    ("GET", "/healthz"): Row(PUBLIC, fixed("/healthz")),
    ("GET", "/readyz"): Row(PUBLIC, fixed("/readyz")),
    ("GET", "/openapi.json"): Row(PUBLIC, fixed("/openapi.json")),
    ("GET", "/metrics"): Row(PUBLIC, fixed("/metrics")),
    ("GET", "/docs"): Row(PUBLIC, fixed("/docs")),
    ("GET", "/docs/{name}"): Row(PUBLIC, fixed("/docs/swagger-initializer.js")),
}
# aiohttp answers HEAD for each GET by itself: each HEAD is a row of its own, the GET's.
SAFE = frozenset({"GET", "HEAD"})


def router_routes(node: GatewayNode) -> set[tuple[str, str]]:
    """(method, canonical path) of every route of the running node's router."""
    assert node.runner is not None
    return {(r.method, r.resource.canonical) for r in node.runner.app.router.routes()
            if r.resource is not None}


def row_of(method: str, path: str) -> Row:
    return ROWS[("GET" if method == "HEAD" else method, path)]


# -- the cells ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    method: str
    path: str  # the route's canonical path
    variant: str
    caller: str
    target: str
    status: int  # expected

    @property
    def name(self) -> str:
        variant = f" ({self.variant})" if self.variant else ""
        return f"{self.method} {self.path}{variant} by {self.caller} on {self.target}"

    @property
    def writes(self) -> bool:
        """Whether the cell is expected to change etcd (phase two, on fresh objects)."""
        return self.method not in SAFE and self.status < 300 and row_of(
            self.method, self.path).rule != PUBLIC


def cells(routes: set[tuple[str, str]]) -> list[Cell]:
    out = []
    for method, path in sorted(routes):
        row = row_of(method, path)
        for variant, caller, target in itertools.product(row.variants, CALLERS, row.targets):
            out.append(Cell(method, path, variant, caller, target,
                            expected(row, variant, caller, target)))
    return out


# Cells whose observed status disagrees with the table for a reason reported but not yet
# fixed: cell name -> why. None at present.
KNOWN: dict[str, str] = {}

_ERROR_TYPES = {401: "denied_authentication", 403: "permissions_denied", 404: "not_found",
                412: "precondition_failed"}


def run(world: World, cell: Cell, start: int | None) -> str | None:
    """Send one cell; why it failed (None: as the table says). `start`: the revision etcd
    must still be at after it (phase one)."""
    row = row_of(cell.method, cell.path)
    req = row.make(world, cell.target, cell.variant, cell.writes)
    resp = world.send(cell.caller, cell.method, req.path, req.body, req.params)
    problems = []
    if resp.status_code != cell.status:
        problems.append(f"answered {resp.status_code}, the table says {cell.status}: "
                        f"{resp.text[:200]}")
    elif cell.status in _ERROR_TYPES and cell.method != "HEAD" and \
            resp.json().get("type") != _ERROR_TYPES[cell.status]:
        problems.append(f"answered a {resp.json().get('type')} body, not "
                        f"{_ERROR_TYPES[cell.status]}")
    if start is not None and world.revision() != start:
        problems.append("etcd's revision moved: a refusal or a read wrote")
    return "; ".join(problems) or None


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node(etcd_single: Any) -> Iterator[GatewayNode]:
    """One gateway for the module, under its own prefix; no compactor and no expirer, so
    that nothing but the requests writes etcd."""
    gateway = GatewayNode(etcd_single.endpoints, f"/t/{uuid.uuid4().hex[:12]}/",
                          compact_retain_revisions=0, expiry_check_interval=0).start()
    yield gateway
    gateway.stop()
    gateway.assert_conformant()


async def _forgotten(node: GatewayNode, secret: str) -> bool:
    """Whether the node's key cache dropped `secret` (its watch follows a revocation
    within milliseconds; bounded at 10 s)."""
    assert node.runner is not None
    credentials = node.runner.app[CREDENTIALS_KEY]
    for _ in range(1000):
        if credentials.cached(secret) is None:
            return True
        await asyncio.sleep(0.01)
    return False


@pytest.fixture(scope="module")
def world(node: GatewayNode) -> World:
    org = str(uuid.uuid4())
    w = World(node, org, {"A": str(uuid.uuid4()), "B": str(uuid.uuid4())})
    keys = ApiKeys(node.url, org)
    w.secrets = {"admin": keys.create("admin")[1],
                 "member": keys.create("project_member", [w.projects["A"]])[1],
                 "reader": keys.create("project_reader", [w.projects["A"]])[1],
                 "product_x": keys.create("product", resource_types=[X])[1],
                 "product_y": keys.create("product", resource_types=[Y])[1]}
    # B belongs to another organization (the member key above mapped A to `org`).
    w.made("PUT", f"{ADMIN_BASE}/projects/{w.projects['B']}",
           {"organization_id": str(uuid.uuid4())})
    revoked_access, w.secrets["revoked_key"] = keys.create("project_member", [w.projects["A"]])
    w.made("DELETE", f"{ADMIN_BASE}/api-keys/{revoked_access}")
    assert node.runner is not None
    credentials = node.runner.app[CREDENTIALS_KEY]
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    _, w.secrets["expired_key"] = node.call(credentials.create(ApiKey(
        access_key="", role=PROJECT_MEMBER, organization_id=org,
        project_ids=(w.projects["A"],), expires_at=past)))
    for project in ("A", "B"):
        w.vpcs[project] = w.vpc(project)
        w.pns[project], w.pn_subnets[project] = w.pn(project, 2)
    w.ips = {target: w.ip(target) for target in IP_TARGETS}
    w.spare_key, w.pool = w.key(), w.zonal_pool()
    assert node.call(_forgotten(node, w.secrets["revoked_key"])), "the revocation was not seen"
    return w


# -- tests ------------------------------------------------------------------------------------


def test_every_route_of_the_router_has_a_row_and_the_openapi_document_agrees(
        node: GatewayNode) -> None:
    routes = router_routes(node)
    missing = sorted(r for r in routes if ("GET" if r[0] == "HEAD" else r[0], r[1]) not in ROWS)
    assert not missing, f"routes without a row in the matrix's table: {missing}"
    assert set(ROWS) <= routes, f"rows of no route: {sorted(set(ROWS) - routes)}"
    doc = requests.get(f"{node.url}/openapi.json", timeout=10).json()
    documented = {(method.upper(), path) for path, item in doc["paths"].items()
                  for method in item if method in ("get", "post", "put", "patch", "delete")}
    pages = {("GET", "/docs"), ("GET", "/docs/{name}")}  # for people, not API operations
    assert documented == {r for r in routes if r[0] != "HEAD"} - pages


def test_every_cell_of_the_matrix_answers_as_the_table_says(world: World) -> None:
    every = cells(router_routes(world.node))
    still, changes = [c for c in every if not c.writes], [c for c in every if c.writes]
    failures: dict[str, str] = {}
    # Phase one: nothing may write, so the revision read after each cell is the start's.
    start = world.revision()
    with ThreadPoolExecutor(8) as pool:
        for cell, why in zip(still, pool.map(lambda c: run(world, c, start), still),
                             strict=True):
            if why:
                failures[cell.name] = why
    # Phase two: each change that succeeds, on objects made for it.
    with ThreadPoolExecutor(8) as pool:
        for cell, why in zip(changes, pool.map(lambda c: run(world, c, None), changes),
                             strict=True):
            if why:
                failures[cell.name] = why
    statuses = Counter(c.status for c in every)
    refusals = sum(n for s, n in statuses.items() if s in (401, 403, 404))
    routes = {(c.method, c.path) for c in every}
    print(f"\nroute matrix: {len(routes)} routes (method x path, HEAD included) x "
          f"{len(CALLERS)} callers x their targets = {len(every)} cells; "
          f"refusals checked (401/403/404, revision unmoved): {refusals} "
          f"({', '.join(f'{s}: {statuses[s]}' for s in (401, 403, 404))}); "
          f"412 state refusals (revision unmoved): {statuses[412]}; "
          f"reads and public answers: {len(still) - refusals - statuses[412]}; "
          f"successful changes: {len(changes)}")
    unexpected = {name: why for name, why in failures.items() if name not in KNOWN}
    assert not unexpected, "\n".join(f"{n}: {w}" for n, w in sorted(unexpected.items()))
    fixed_meanwhile = set(KNOWN) - set(failures)
    assert not fixed_meanwhile, f"known cells that now pass (drop them): {fixed_meanwhile}"
    assert refusals > 0 and changes
