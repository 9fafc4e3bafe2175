"""`ipam pools`: the zonal pools of public addresses (admin API, admin keys only)."""

from __future__ import annotations

import click

from .output import confirm, show
from .params import UUID
from .session import Session, pass_session
from .settings import common_options

COLUMNS = ("id", "zone", "subnet", "created_at")


def _pools_path(session: Session) -> str:
    return f"{session.admin_path}/regions/{session.region_segment}/zonal-pools"


@click.group("pools")
@common_options()
def pools() -> None:
    """Add, list and delete zonal pools."""


@pools.command("add")
@click.option("--zone", required=True, metavar="ZONE", help="a zone of the region (fr-par-1)")
@click.option("--subnet", required=True, metavar="CIDR", help="its public addresses")
@click.option("--allow-private", is_flag=True,
              help="for a lab: accept a private, shared (100.64.0.0/10), documentation or "
                   "benchmarking range as well as a global unicast one")
@common_options()
@pass_session()
def add_pool(session: Session, zone: str, subnet: str, allow_private: bool) -> None:
    """Add a pool of public addresses to a zone."""
    body: dict[str, object] = {"zone": zone, "subnet": subnet}
    if allow_private:  # sent only when asked, as a lab's explicit choice
        body["allow_private"] = True
    pool = session.call("POST", _pools_path(session), body)
    show(pool, session.output, [pool], COLUMNS)


@pools.command("list")
@common_options()
@pass_session()
def list_pools(session: Session) -> None:
    """List the zonal pools of the region."""
    answer = session.call("GET", _pools_path(session))["zonal_pools"]
    show(answer, session.output, answer, COLUMNS)


@pools.command("delete")
@click.argument("pool_id", metavar="POOL_ID", type=UUID)
@common_options()
@pass_session()
def delete_pool(session: Session, pool_id: str) -> None:
    """Delete a zonal pool that holds no IP."""
    session.call("DELETE", f"{_pools_path(session)}/{pool_id}")
    confirm(session.output, f"deleted {pool_id}")
