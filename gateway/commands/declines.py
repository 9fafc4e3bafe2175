"""`ipam dhcp-declines`: the addresses DHCP withholds from the MACs that declined them
(found in use by another machine), and clearing them once the conflict is resolved
(admin API, admin keys only)."""

from __future__ import annotations

from typing import Any

import click

from .output import show
from .params import UUID
from .session import Session, pass_session
from .settings import common_options

COLUMNS = ("private_network_id", "mac_address", "address", "declined_at", "declined_by")


def _declines_path(session: Session) -> str:
    return f"{session.admin_path}/regions/{session.region_segment}/dhcp-declines"


def _filters(pn_id: str | None, mac: str | None) -> dict[str, str | None]:
    return {"private_network_id": pn_id, "mac_address": mac}


def _filter_options(f: Any) -> Any:
    f = click.option("--mac", metavar="MAC", help="declines of this MAC only")(f)
    return click.option("--pn", "pn_id", metavar="ID", type=UUID,
                        help="declines of this Private Network only")(f)


@click.group("dhcp-declines")
@common_options()
def dhcp_declines() -> None:
    """List and clear the addresses DHCP withholds after a DECLINE."""


@dhcp_declines.command("list")
@_filter_options
@common_options()
@pass_session()
def list_declines(session: Session, pn_id: str | None, mac: str | None) -> None:
    """List the addresses withheld from the MACs that declined them."""
    answer = session.call("GET", _declines_path(session), query=_filters(pn_id, mac))
    rows = answer["dhcp_declines"]
    show(rows, session.output, rows, COLUMNS)


@dhcp_declines.command("clear")
@_filter_options
@common_options()
@pass_session()
def clear_declines(session: Session, pn_id: str | None, mac: str | None) -> None:
    """Clear declines (every one, or those of --pn and/or --mac): the addresses are
    offered to those MACs again."""
    answer = session.call("DELETE", _declines_path(session), query=_filters(pn_id, mac))
    rows = answer["dhcp_declines"]
    if session.output == "table":
        click.echo(f"cleared {len(rows)} decline{'' if len(rows) == 1 else 's'}")
    else:
        show(rows, session.output, rows, COLUMNS)
