"""The role table of allocator.access, checked cell by cell (pure)."""

from __future__ import annotations

import pytest

from allocator.access import ANY, OWN, RULES, Caller
from allocator.errors import NotFound, PermissionDenied
from allocator.records import IPRecord, Resource

MINE, OTHER = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
ACTIONS = sorted({a for rules in RULES.values() for a in rules})
CELLS = [(role, action) for role in RULES for action in ACTIONS]


def _allowed(caller: Caller, action: str, project: str | None) -> bool:
    try:
        caller.require(action, "thing", project)
        return True
    except PermissionDenied:
        return False


@pytest.mark.parametrize(("role", "action"), CELLS, ids=[f"{r}-{a}" for r, a in CELLS])
def test_each_cell_of_the_table_is_what_require_decides(role, action):
    caller = Caller(role=role, projects=frozenset({MINE}))
    scope = RULES[role].get(action)
    assert _allowed(caller, action, MINE) == (scope in (ANY, OWN))
    assert _allowed(caller, action, OTHER) == (scope == ANY)


@pytest.mark.parametrize("role", list(RULES))
def test_an_object_of_another_project_is_not_found_unless_the_role_reads_any(role):
    caller = Caller(role=role, projects=frozenset({MINE}))
    caller.require_visible("ip", "x", MINE)
    if RULES[role][("read")] == ANY:
        caller.require_visible("ip", "x", OTHER)
    else:
        with pytest.raises(NotFound):
            caller.require_visible("ip", "x", OTHER)


def test_only_a_product_of_that_type_attaches_a_product_resource():
    server = Resource.product("instance_server", MINE)
    fresh = IPRecord(id=MINE, address="10.0.0.2/24", project_id=MINE, is_ipv6=False,
                     region="fr-par", source_id=MINE, source_kind="subnet", created_at="",
                     updated_at="")
    Caller(role="product", product_types=frozenset({"instance_server"})).require_attach(
        fresh, server)
    for caller in (Caller(role="product", product_types=frozenset({"lb_server"})),
                   Caller(role="admin", product_types=frozenset({"instance_server"})),
                   Caller(role="project_member", projects=frozenset({MINE}))):
        with pytest.raises(PermissionDenied):
            caller.require_attach(fresh, server)
