"""Every (role, action, ownership) row of `allocator.access.RULES`, tried on a real IPAM on etcd.

What each row expects is read from the table (and from the column definitions of
access.py's docstring, restated here in `column`), never from the code that applies it:
allowed, PermissionDenied, NotFound (a key that does not read the project), or the
precondition an allowed change still meets (412). A refusal of any kind must leave
etcd's revision where it was; an allowed change must move it.
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from allocator_support import REGION, connected, make_pn, new_project, revision

from allocator import access
from allocator.access import (
    ANY,
    ATTACH_CUSTOM,
    ATTACH_PRODUCT,
    BOOK,
    BOOK_ZONAL,
    BOOKED_BY_ME,
    BOOKED_BY_OTHER,
    DETACH,
    NONE,
    ON_MY_RESOURCE,
    ON_OTHER_PRODUCT,
    OPERATE,
    OTHER_PROJECT,
    OWN,
    OWN_PROJECT,
    PROJECT_IP,
    READ,
    RELEASE,
    RULES,
    UPDATE,
    WRITE_NETWORKS,
    Caller,
)
from allocator.contract import CUSTOM, IPAM, AddressAsk, IPFilter, IPRecord, Resource
from allocator.errors import NotFound, PermissionDenied, PreconditionFailed
from allocator.networks import PrivateNetwork

X, Y = "instance_server", "lb_server"
ZONE = "fr-par-1"
PROJECT, ELSEWHERE = new_project(), new_project()

ROLES: dict[str, Caller] = {
    "admin": Caller(),
    "member": Caller(role="project_member", projects=frozenset({PROJECT})),
    "other_member": Caller(role="project_member", projects=frozenset({ELSEWHERE})),
    "reader": Caller(role="project_reader", projects=frozenset({PROJECT})),
    "product_x": Caller(role="product", product_types=frozenset({X})),
    "product_y": Caller(role="product", product_types=frozenset({Y})),
}


@dataclass(frozen=True)
class Ownership:
    """How an IP of PROJECT was booked and what it is attached to (None: nothing)."""

    booked_by: str | None  # the product type that booked it; None: the project's member
    attached: str | None  # CUSTOM, a product type, or None
    zonal: bool = False


OWNERSHIPS: dict[str, Ownership] = {
    "unattached_booked_by_member": Ownership(None, None),
    "unattached_booked_by_x": Ownership(X, None),
    "zonal_booked_by_x": Ownership(X, None, zonal=True),
    "on_custom_booked_by_member": Ownership(None, CUSTOM),
    "on_custom_booked_by_x": Ownership(X, CUSTOM),
    "on_resource_of_x": Ownership(None, X),  # booked by the member, handed over to X
    "on_resource_of_y": Ownership(None, Y),
}


def column(o: Ownership, caller: Caller) -> str:
    """The table's IP column that an IP of ownership `o` is to `caller`."""
    if o.attached not in (None, CUSTOM):
        return ON_MY_RESOURCE if o.attached in caller.product_types else ON_OTHER_PRODUCT
    if o.booked_by is None:
        return PROJECT_IP
    return BOOKED_BY_ME if o.booked_by in caller.product_types else BOOKED_BY_OTHER


def cell(caller: Caller, action: str) -> frozenset[str]:
    return RULES[caller.role].get(action, NONE)


def reads(caller: Caller) -> bool:
    """Whether the table lets `caller` read PROJECT's objects."""
    scope = cell(caller, READ)
    return OTHER_PROJECT in scope or (OWN_PROJECT in scope and PROJECT in caller.projects)


def may(caller: Caller, action: str, o: Ownership) -> bool:
    return column(o, caller) in cell(caller, action)


def may_attach(caller: Caller, target: str, o: Ownership) -> bool:
    if target == CUSTOM:
        return may(caller, ATTACH_CUSTOM, o)
    return target in caller.product_types and may(caller, ATTACH_PRODUCT, o)


def may_move(caller: Caller, target: str, o: Ownership) -> bool:
    """A move: a detach of the IP as it is, an attach of the target to it once detached."""
    return may(caller, DETACH, o) and may_attach(caller, target, replace(o, attached=None))


# -- the world: one IPAM, one Private Network and one zonal pool for the module ---------

@dataclass
class World:
    ipam: IPAM
    pn: PrivateNetwork


_macs = itertools.count(1)


def custom() -> Resource:
    n = next(_macs)
    return Resource.custom(f"02:70:00:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}")


def product(type_: str) -> Resource:
    return Resource.product(type_, str(uuid.uuid4()))


@pytest.fixture(scope="module")
async def world(etcd_single):
    async with connected(etcd_single.endpoints, f"/t/{uuid.uuid4().hex[:12]}/") as ipam:
        pn = await make_pn(ipam, PROJECT, "10.70.0.0/20")
        await ipam.create_zonal_pool(REGION, ZONE, "51.70.0.0/20")
        yield World(ipam, pn)


def ask(world: World, zonal: bool = False, resource: Resource | None = None,
        project: str = PROJECT) -> AddressAsk:
    return AddressAsk(region=REGION, project_id=project, zonal=ZONE if zonal else None,
                      private_network_id=None if zonal else world.pn.id, resource=resource)


async def place(world: World, o: Ownership) -> IPRecord:
    """An IP of PROJECT in ownership `o`, made through the API by those the table allows."""
    booker = ROLES["product_x"] if o.booked_by == X else ROLES["member"]
    ip = await world.ipam.book(ask(world, o.zonal, custom() if o.attached == CUSTOM else None),
                               booker)
    if o.attached in (X, Y):
        manager = ROLES["product_x" if o.attached == X else "product_y"]
        ip = await world.ipam.attach(ip.id, product(o.attached), manager)
    return ip


# -- the actions, and what the table says of each --------------------------------------

OK, DENIED, HIDDEN = "allowed", "PermissionDenied", "NotFound"
Run = Callable[[IPAM, IPRecord, Caller], Awaitable[object]]


@dataclass(frozen=True)
class Action:
    run: Run
    allowed: Callable[[Caller, Ownership], bool]
    precondition: Callable[[Ownership], str | None] = lambda o: None
    writes: bool = True


async def _get(ipam: IPAM, ip: IPRecord, caller: Caller) -> IPRecord:
    found = await ipam.get_ip(ip.id)
    caller.require_visible("ip", ip.id, found.project_id)  # as the gateway's GET does
    return found


async def _list(ipam: IPAM, ip: IPRecord, caller: Caller) -> None:
    got, total = await ipam.list_ips(IPFilter(project_ids=caller.visible_projects,
                                              ip_ids=(ip.id,)))
    if total == 0:
        raise NotFound("ip", ip.id)
    assert [g.id for g in got] == [ip.id]


def _current(ip: IPRecord) -> Resource:
    return ip.resource or custom()


def _attached(o: Ownership) -> str | None:
    return "resource_already_attached" if o.attached else None


def _unattached(o: Ownership) -> str | None:
    return None if o.attached else "ip_not_attached"


def _still_attached(o: Ownership) -> str | None:
    return "resource_still_in_use" if o.attached else None


ACTIONS: dict[str, Action] = {
    "get": Action(_get, lambda c, o: True, writes=False),
    "list": Action(_list, lambda c, o: True, writes=False),
    "update": Action(
        lambda ipam, ip, c: ipam.update_ip(ip.id, tags=["changed"],
                                           reverses=[{"hostname": "h.example.com"}], caller=c),
        lambda c, o: may(c, UPDATE, o)),
    "attach_custom": Action(lambda ipam, ip, c: ipam.attach(ip.id, custom(), c),
                            lambda c, o: may_attach(c, CUSTOM, o), _attached),
    "attach_x": Action(lambda ipam, ip, c: ipam.attach(ip.id, product(X), c),
                       lambda c, o: may_attach(c, X, o), _attached),
    "detach": Action(lambda ipam, ip, c: ipam.detach(ip.id, _current(ip), c),
                     lambda c, o: may(c, DETACH, o), _unattached),
    "move_to_custom": Action(lambda ipam, ip, c: ipam.move(ip.id, _current(ip), custom(), c),
                             lambda c, o: may_move(c, CUSTOM, o), _unattached),
    "move_to_x": Action(lambda ipam, ip, c: ipam.move(ip.id, _current(ip), product(X), c),
                        lambda c, o: may_move(c, X, o), _unattached),
    "release": Action(lambda ipam, ip, c: ipam.release(ip.id, c),
                      lambda c, o: may(c, RELEASE, o), _still_attached),
    "release_set": Action(lambda ipam, ip, c: ipam.release_set([ip.id], c),
                          lambda c, o: may(c, RELEASE, o), _still_attached),
}


def expected(caller: Caller, action: Action, o: Ownership) -> str:
    if not reads(caller):
        return HIDDEN  # another project's IP is absent to this key, never forbidden
    if not action.allowed(caller, o):
        return DENIED
    return action.precondition(o) or OK


async def outcome(call: Awaitable[object]) -> str:
    try:
        await call
    except PermissionDenied:
        return DENIED
    except NotFound:
        return HIDDEN
    except PreconditionFailed as refused:
        return refused.precondition
    return OK


ROWS = list(itertools.product(ROLES, ACTIONS, OWNERSHIPS))


@pytest.mark.parametrize(("role", "action", "ownership"), ROWS,
                         ids=["-".join(row) for row in ROWS])
async def test_each_row_of_the_table_holds_on_etcd(world, role, action, ownership):
    caller, act, o = ROLES[role], ACTIONS[action], OWNERSHIPS[ownership]
    ip = await place(world, o)
    want = expected(caller, act, o)
    before = await revision(world.ipam)
    got = await outcome(act.run(world.ipam, ip, caller))
    assert got == want
    after = await revision(world.ipam)
    if got != OK or not act.writes:
        assert after == before, "a refused request wrote to etcd"
    else:
        assert after > before


BOOKINGS: dict[str, tuple[bool, str | None]] = {  # zonal, the resource attached at once
    "book": (False, None), "book_on_custom": (False, CUSTOM), "book_on_x": (False, X),
    "book_zonal": (True, None),
}


def booking_expected(caller: Caller, zonal: bool, target: str | None) -> str:
    scope = cell(caller, BOOK)
    if not (OTHER_PROJECT in scope or (OWN_PROJECT in scope and PROJECT in caller.projects)):
        return DENIED
    if zonal and not cell(caller, BOOK_ZONAL):
        return DENIED
    booked = Ownership(next(iter(sorted(caller.product_types)), None), None)
    if target is not None and not may_attach(caller, target, booked):
        return DENIED
    return OK


@pytest.mark.parametrize(("role", "booking"), list(itertools.product(ROLES, BOOKINGS)))
async def test_each_booking_row_holds_on_etcd(world, role, booking):
    caller, (zonal, target) = ROLES[role], BOOKINGS[booking]
    resource = None if target is None else custom() if target == CUSTOM else product(target)
    before = await revision(world.ipam)
    got = await outcome(world.ipam.book(ask(world, zonal, resource), caller))
    assert got == booking_expected(caller, zonal, target)
    after = await revision(world.ipam)
    assert (after > before) if got == OK else (after == before)


async def test_the_booking_product_is_recorded_and_kept_through_changes(world):
    x = ROLES["product_x"]
    ip = await world.ipam.book(ask(world), x)
    assert ip.booked_by_product == (X,)
    server, other = product(X), product(X)
    kept = [await world.ipam.update_ip(ip.id, tags=["t"], caller=x),
            await world.ipam.attach(ip.id, server, x),
            await world.ipam.move(ip.id, server, other, x),
            await world.ipam.detach(ip.id, other, x),
            await world.ipam.get_ip(ip.id)]
    assert [r.booked_by_product for r in kept] == [(X,)] * len(kept)
    # and it is still X's to release, and no one else's
    with pytest.raises(PermissionDenied):
        await world.ipam.release(ip.id, ROLES["product_y"])
    await world.ipam.release(ip.id, x)


def test_a_record_without_its_booker_counts_as_booked_by_no_product():
    old = {"id": PROJECT, "address": "10.70.0.9/20", "project_id": PROJECT, "is_ipv6": False,
           "region": REGION, "source_id": PROJECT, "source_kind": "subnet",
           "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z"}
    record = IPRecord.from_json(old)
    assert record.booked_by_product == ()
    assert "booked_by_product" not in record.to_json()  # stored as it always was
    assert ROLES["product_x"].ip_ownership(record) == PROJECT_IP
    with pytest.raises(PermissionDenied):
        ROLES["product_x"].require_ip(RELEASE, record)
    ROLES["member"].require_ip(RELEASE, record)


# -- the documented copies of the table are the table ----------------------------------

_SCOPES = {"any": ANY, "own": OWN, "yes": ANY, "-": NONE}
_PROJECT_COLUMNS = (READ, BOOK, WRITE_NETWORKS, BOOK_ZONAL, OPERATE)
_LETTERS = {"U": UPDATE, "C": ATTACH_CUSTOM, "P": ATTACH_PRODUCT, "D": DETACH, "R": RELEASE}
_IP_COLUMNS = access.IP_OWNERSHIPS


def _table(project_rows: dict[str, list[str]], ip_rows: dict[str, list[str]]
           ) -> dict[str, dict[str, frozenset[str]]]:
    table: dict[str, dict[str, set[str]]] = {role: {} for role in RULES}
    for role, cells in project_rows.items():
        for action, text in zip(_PROJECT_COLUMNS, cells, strict=True):
            if _SCOPES[text]:
                table[role][action] = set(_SCOPES[text])
    for role, cells in ip_rows.items():
        for ownership, text in zip(_IP_COLUMNS, cells, strict=True):
            for letter in text.split():
                if letter != "-":
                    table[role].setdefault(_LETTERS[letter], set()).add(ownership)
    return {role: {a: frozenset(s) for a, s in row.items()} for role, row in table.items()}


def test_readme_keys_table_is_the_table_of_access():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    rows = {cells[0]: cells[1:] for cells in (
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in readme.splitlines() if line.strip().startswith("|"))
        if cells[0] in RULES}
    assert set(rows) == set(RULES)
    assert _table({r: c[:5] for r, c in rows.items()},
                  {r: c[5:] for r, c in rows.items()}) == RULES


def test_access_docstring_table_is_the_table_of_access():
    doc = access.__doc__ or ""
    project_block, ip_block = doc.split("IP changes")
    found = []
    for block in (project_block, ip_block.split("\n\n")[0]):
        found.append({cells[0]: cells[1:] for cells in (
            re.split(r"\s{2,}", line.strip()) for line in block.splitlines())
            if cells[0] in RULES})
    assert _table(*found) == RULES
