"""The role table of allocator.access, checked cell by cell (pure)."""

from __future__ import annotations

import pytest

from allocator.access import ANY, OWN, RULES, Caller
from allocator.errors import NotFound, PermissionDenied

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


def test_only_a_product_of_that_type_manages_a_product_resource():
    product = Caller(role="product", product_types=frozenset({"instance_server"}))
    assert product.may_manage("instance_server") and product.may_manage("custom")
    assert not product.may_manage("lb_server")
    assert not Caller(role="admin", product_types=frozenset({"instance_server"})).may_manage(
        "instance_server")
