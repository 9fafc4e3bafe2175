"""`ipam quotas`: a project's own quotas, instead of the nodes' defaults (admin API, admin
keys only).

    ipam quotas get --project P
    ipam quotas set --project P --vpcs 10 --ips 5000   # the others keep what they are
    ipam quotas set --project P --ips default          # that one back to the default
    ipam quotas reset --project P                      # every one back to the defaults

A change holds on every node from its next create; lowering a quota below what the
project holds deletes nothing (its creates are refused until it holds less).
"""

from __future__ import annotations

from typing import Any

import click

from .output import confirm, show
from .params import UUID
from .session import Session, pass_session
from .settings import common_options

COLUMNS = ("quota", "value", "from")
# The API's fields, in the order the table shows them, each with its option.
QUOTAS = ("vpcs", "private_networks", "subnets_per_private_network", "ips")
DEFAULT = "default"


class QuotaValue(click.ParamType):
    """A quota typed on the command line: an integer from 0, or `default` (None)."""

    name = "quota"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int | None:
        if value is None or value == DEFAULT:
            return None
        try:
            number = int(str(value))
        except ValueError:
            number = -1
        if number < 0:
            self.fail(f"{value!r} is not an integer from 0, nor {DEFAULT!r}.", param, ctx)
        return number


QUOTA = QuotaValue()


def rows(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per quota: its value (`none`: no quota) and whether the project's override
    or the nodes' default sets it."""
    return [{"quota": name, "value": "none" if answer[name] is None else answer[name],
             "from": "override" if name in answer["overridden"] else "default"}
            for name in QUOTAS]


def _path(session: Session, project: str) -> str:
    return f"{session.admin_path}/projects/{project}/quotas"


@click.group("quotas")
@common_options()
def quotas() -> None:
    """Show, override and reset a project's quotas."""


@quotas.command("get")
@click.option("--project", required=True, type=UUID, help="the project")
@common_options()
@pass_session()
def get_quotas(session: Session, project: str) -> None:
    """The quotas in force for a project, and where each comes from."""
    answer = session.call("GET", _path(session, project))
    show(answer, session.output, rows(answer), COLUMNS)


@quotas.command("set")
@click.option("--project", required=True, type=UUID, help="the project")
@click.option("--vpcs", type=QUOTA, metavar="N|default", help="VPCs, every region counted")
@click.option("--private-networks", type=QUOTA, metavar="N|default",
              help="Private Networks, every region counted")
@click.option("--subnets-per-private-network", type=QUOTA, metavar="N|default",
              help="subnets of each Private Network")
@click.option("--ips", type=QUOTA, metavar="N|default", help="IPs booked")
@common_options()
@pass_session()
def set_quotas(session: Session, project: str, **values: int | None) -> None:
    """Override some of a project's quotas (`default`: back to the nodes' default); the
    quotas not named keep what they are."""
    given = click.get_current_context()
    body = {name: values[name] for name in QUOTAS
            if given.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE}
    if not body:
        raise click.UsageError("name at least one quota: --vpcs, --private-networks, "
                               "--subnets-per-private-network or --ips")
    answer = session.call("PUT", _path(session, project), body)
    show(answer, session.output, rows(answer), COLUMNS)


@quotas.command("reset")
@click.option("--project", required=True, type=UUID, help="the project")
@common_options()
@pass_session()
def reset_quotas(session: Session, project: str) -> None:
    """Give a project the nodes' default quotas back."""
    session.call("DELETE", _path(session, project))
    confirm(session.output, f"project {project}: the default quotas")
