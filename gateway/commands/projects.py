"""`ipam projects`: which organization a project belongs to (admin API, admin keys only).

`ipam serve` refuses a write into a project whose organization nobody set
(allocator.organizations): a project key naming its organization sets it, and so does
an admin, for a project its first objects are made in by an admin or a product:

    ipam projects set-organization PROJECT_ID ORGANIZATION_ID
    ipam projects get PROJECT_ID
"""

from __future__ import annotations

import click

from .output import show
from .params import UUID
from .session import Session, pass_session
from .settings import common_options

COLUMNS = ("project_id", "organization_id")


def _project_path(session: Session, project_id: str) -> str:
    return f"{session.admin_path}/projects/{project_id}"


@click.group("projects")
@common_options()
def projects() -> None:
    """Show and set the organization of a project."""


@projects.command("get")
@click.argument("project_id", metavar="PROJECT_ID", type=UUID)
@common_options()
@pass_session()
def get_project(session: Session, project_id: str) -> None:
    """Show the organization a project belongs to (an error while none is set)."""
    answer = session.call("GET", _project_path(session, project_id))
    show(answer, session.output, [answer], COLUMNS)


@projects.command("set-organization")
@click.argument("project_id", metavar="PROJECT_ID", type=UUID)
@click.argument("organization_id", metavar="ORGANIZATION_ID", type=UUID)
@common_options()
@pass_session()
def set_organization(session: Session, project_id: str, organization_id: str) -> None:
    """Map a project to its organization, for good (the same again changes nothing;
    another organization is refused)."""
    answer = session.call("PUT", _project_path(session, project_id),
                          {"organization_id": organization_id})
    show(answer, session.output, [answer], COLUMNS)
