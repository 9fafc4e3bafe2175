"""`ipam vpcs`: list the VPCs (VPC API v2)."""

from __future__ import annotations

import click

from .output import show
from .params import UUID
from .session import Session, pass_session
from .settings import common_options

COLUMNS = ("id", "name", "project_id", "is_default", "private_network_count", "created_at")


@click.group("vpcs")
@common_options()
def vpcs() -> None:
    """List VPCs."""


@vpcs.command("list")
@click.option("--project", type=UUID, help="only those of this project")
@common_options()
@pass_session()
def list_vpcs(session: Session, project: str | None) -> None:
    """List the VPCs, all pages of them, oldest first."""
    answer = session.collect(f"{session.vpc_path}/vpcs", "vpcs", {"project_id": project})
    show(answer, session.output, answer, COLUMNS)
