"""`ipam keys`: create, list and revoke API keys (admin API, admin keys only).

`keys create -o env` prints the new key as shell lines for the official Scaleway SDK
(the variables `scaleway_core.profile.env` reads), so that

    eval "$(ipam keys create --role project_member --project-ids P --organization-id O -o env)"

prepares `scaleway.Client.from_env()` to talk to this gateway as that key.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

import click

from .output import confirm, show
from .params import split_commas
from .session import Session, pass_session
from .settings import OUTPUTS, Settings, common_options

COLUMNS = ("access_key", "role", "organization_id", "project_ids", "resource_types",
           "description", "created_at", "expires_at")
ROLES = ("admin", "project_member", "project_reader", "product")
CREATE_OUTPUTS = (*OUTPUTS, "env")


def sdk_environment(key: Mapping[str, Any], settings: Settings) -> list[str]:
    """`export SCW_...=value` lines giving the SDK this key, its first project, the
    region and the gateway; a variable without a value is left out (the SDK refuses
    empty ones)."""
    project_ids = key.get("project_ids") or [None]
    values = (("SCW_ACCESS_KEY", key["access_key"]), ("SCW_SECRET_KEY", key["secret_key"]),
              ("SCW_DEFAULT_ORGANIZATION_ID", key.get("organization_id")),
              ("SCW_DEFAULT_PROJECT_ID", project_ids[0]),
              ("SCW_DEFAULT_REGION", settings.region), ("SCW_API_URL", settings.url))
    return [f"export {name}={shlex.quote(value)}" for name, value in values if value]


@click.group("keys")
@common_options()
def keys() -> None:
    """Create, list and revoke API keys."""


@keys.command("create")
@click.option("--role", required=True, type=click.Choice(ROLES))
@click.option("--project-ids", metavar="P1,P2", help="comma-separated project ids")
@click.option("--resource-types", metavar="T1,T2",
              help="comma-separated resource types (product keys)")
@click.option("--organization-id", metavar="ID")
@click.option("--description", metavar="TEXT")
@click.option("--expires-at", metavar="TIME",
              help="when the key stops working, RFC 3339 with a time zone "
                   "(2027-01-01T00:00:00Z) [default: never]")
@common_options(CREATE_OUTPUTS)
@pass_session(CREATE_OUTPUTS)
def create_key(session: Session, role: str, project_ids: str | None,
               resource_types: str | None, organization_id: str | None,
               description: str | None, expires_at: str | None) -> None:
    """Create a key and print its secret, this once."""
    key = session.call("POST", f"{session.admin_path}/api-keys", {
        "role": role, "organization_id": organization_id,
        "project_ids": split_commas(project_ids), "resource_types": split_commas(resource_types),
        "description": description or "", "expires_at": expires_at})
    if session.output == "env":
        click.echo("\n".join(sdk_environment(key, session.settings)))
        return
    show(key, session.output, [key], COLUMNS)
    if session.output == "table":
        click.echo(f"\nsecret key (shown once): {key['secret_key']}")


@keys.command("list")
@common_options()
@pass_session()
def list_keys(session: Session) -> None:
    """List the keys, never their secrets."""
    answer = session.call("GET", f"{session.admin_path}/api-keys")["api_keys"]
    show(answer, session.output, answer, COLUMNS)


@keys.command("revoke")
@click.argument("access_key", metavar="ACCESS_KEY")
@common_options()
@pass_session()
def revoke_key(session: Session, access_key: str) -> None:
    """Revoke a key, at once on every node."""
    session.call("DELETE", f"{session.admin_path}/api-keys/{access_key}")
    confirm(session.output, f"revoked {access_key}")
