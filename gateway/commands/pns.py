"""`ipam pns`: list, create, show and delete Private Networks (VPC API v2)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from .output import confirm, show
from .params import UUID
from .session import Session, pass_session
from .settings import common_options

COLUMNS = ("id", "name", "project_id", "vpc_id", "subnets", "created_at")


def row(pn: Mapping[str, Any]) -> dict[str, Any]:
    """The key columns of a Private Network, its subnets as CIDRs."""
    return {**pn, "subnets": [s["subnet"] for s in pn.get("subnets") or []]}


def show_pns(session: Session, answer: Any) -> None:
    """Print one Private Network or a list of them."""
    pns = answer if isinstance(answer, list) else [answer]
    show(answer, session.output, [row(pn) for pn in pns], COLUMNS)


@click.group("pns")
@common_options()
def pns() -> None:
    """List, create and delete Private Networks."""


@pns.command("list")
@click.option("--project", type=UUID, help="only those of this project")
@click.option("--vpc", type=UUID, help="only those of this VPC")
@common_options()
@pass_session()
def list_pns(session: Session, project: str | None, vpc: str | None) -> None:
    """List the Private Networks, all pages of them, oldest first."""
    show_pns(session, session.collect(f"{session.vpc_path}/private-networks",
                                      "private_networks", {"project_id": project,
                                                           "vpc_id": vpc}))


@pns.command("create")
@click.option("--name", required=True, metavar="NAME")
@click.option("--subnet", "subnets", multiple=True, metavar="CIDR",
              help="a private CIDR, /16 to /29 or /48 to /125 (repeat for more) "
                   "[default: a free IPv4 /22 and IPv6 /64]")
@click.option("--project", type=UUID,
              help="its project (required with an admin key, which has none of its own)")
@click.option("--vpc", type=UUID, help="its VPC [default: the project's default VPC]")
@common_options()
@pass_session()
def create_pn(session: Session, name: str, subnets: tuple[str, ...], project: str | None,
              vpc: str | None) -> None:
    """Create a Private Network."""
    body: dict[str, Any] = {"name": name}
    for key, value in (("subnets", list(subnets)), ("project_id", project), ("vpc_id", vpc)):
        if value:
            body[key] = value
    show_pns(session, session.call("POST", f"{session.vpc_path}/private-networks", body))


@pns.command("get")
@click.argument("pn_id", metavar="ID", type=UUID)
@common_options()
@pass_session()
def get_pn(session: Session, pn_id: str) -> None:
    """Show one Private Network and its subnets."""
    show_pns(session, session.call("GET", f"{session.vpc_path}/private-networks/{pn_id}"))


@pns.command("delete")
@click.argument("pn_id", metavar="ID", type=UUID)
@common_options()
@pass_session()
def delete_pn(session: Session, pn_id: str) -> None:
    """Delete a Private Network that holds no IP."""
    session.call("DELETE", f"{session.vpc_path}/private-networks/{pn_id}")
    confirm(session.output, f"deleted {pn_id}")
