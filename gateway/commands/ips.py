"""`ipam ips`: list, get, book, release, attach, detach and move IPs, and one IP's
history (from the event feed).

A resource is named the way the API names it: a custom resource by its MAC
(`--resource-type custom`, the default, with `--mac`), a product's resource by its type
and id (`--resource-type instance_server --resource-id UUID`); the allocator lets only a
product key of that type attach, detach or move a product's resource.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click

from .output import confirm, show
from .params import UUID
from .session import Session, pass_session
from .settings import common_options

COLUMNS = ("id", "address", "source", "resource_type", "resource_name", "mac", "tags")
HISTORY_COLUMNS = ("at", "kind", "address", "resource_type", "resource_name", "mac", "actor")
HISTORY_PAGE = 1000
CUSTOM = "custom"

F = TypeVar("F", bound=Callable[..., Any])


def row(ip: Mapping[str, Any]) -> dict[str, Any]:
    """The key columns of an IP: where it comes from and what holds it."""
    source = ip.get("source") or {}
    resource = ip.get("resource") or {}
    return {"id": ip["id"], "address": ip["address"],
            # The one field Scaleway sets: the subnet of a Private Network's IP, or the zone.
            "source": (source.get("subnet_id") or source.get("private_network_id")
                       or source.get("zonal")),
            "resource_type": resource.get("type"), "resource_name": resource.get("name"),
            "mac": resource.get("mac_address"), "tags": ip.get("tags")}


def show_ips(session: Session, answer: Any) -> None:
    """Print one IP or a list of them."""
    ips = answer if isinstance(answer, list) else [answer]
    show(answer, session.output, [row(ip) for ip in ips], COLUMNS)


def resource(kind: str | None, resource_id: str | None, mac: str | None, name: str | None,
             flags: str = "") -> dict[str, Any]:
    """A resource's JSON, from the options `--{flags}resource-type` and the rest: a custom
    one is known by its MAC (its id is derived from it), a product's by its type and id."""
    if kind is None or kind == CUSTOM:
        if resource_id is not None:
            raise click.UsageError(f"--{flags}resource-id names a product's resource; a custom "
                                   f"resource is known by its --{flags}mac")
        if mac is None:
            raise click.UsageError(f"a custom resource is known by its MAC: give --{flags}mac")
        body: dict[str, Any] = {"type": CUSTOM, "mac_address": mac}
    else:
        if resource_id is None:
            raise click.UsageError(f"a resource of type {kind} is known by its id: give "
                                   f"--{flags}resource-id")
        body = {"type": kind, "id": resource_id}
        if mac is not None:
            body["mac_address"] = mac
    if name is not None:
        body["name"] = name
    return body


def resource_options(flags: str = "") -> Callable[[F], F]:
    """The options naming a resource; with `flags` (`from-`, `to-`) both the options and
    the parameters they fill are prefixed (`--from-mac` fills `from_mac`)."""
    prefix = flags.replace("-", "_")

    def decorate(f: F) -> F:
        options = [
            click.option(f"--{flags}resource-type", f"{prefix}kind", metavar="TYPE",
                         help="custom (known by its MAC) or a product's resource type "
                              "[default: custom]"),
            click.option(f"--{flags}resource-id", f"{prefix}resource_id", type=UUID,
                         help="the id of a product's resource"),
            click.option(f"--{flags}mac", f"{prefix}mac", metavar="MAC",
                         help="its MAC address (required for a custom resource)"),
            click.option(f"--{flags}name", f"{prefix}name", metavar="NAME", help="its name"),
        ]
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


@click.group("ips")
@common_options()
def ips() -> None:
    """List, book, attach and release IPs."""


@ips.command("list")
@click.option("--pn", type=UUID, help="only those of this Private Network")
@click.option("--project", type=UUID, help="only those of this project")
@click.option("--tag", "tags", multiple=True, metavar="TAG",
              help="only those with this tag (repeat: with any of them)")
@click.option("--mac", metavar="MAC", help="only the one attached to this MAC address")
@click.option("--resource-id", type=UUID, help="only those attached to this resource")
@click.option("--attached/--detached", default=None,
              help="only those attached to a resource, or only the free-standing ones")
@click.option("--ipv6/--ipv4", "ipv6", default=None, help="only IPv6, or only IPv4")
@click.option("--zonal", metavar="ZONE", help="only the public IPs of this zone")
@common_options()
@pass_session()
def list_ips(session: Session, pn: str | None, project: str | None, tags: tuple[str, ...],
             mac: str | None, resource_id: str | None, attached: bool | None,
             ipv6: bool | None, zonal: str | None) -> None:
    """List the IPs matching every filter given, all pages of them, oldest first."""
    flags = {None: None, True: "true", False: "false"}
    answer = session.collect(f"{session.ipam_path}/ips", "ips", {
        "private_network_id": pn, "project_id": project, "tags": list(tags),
        "mac_address": mac, "resource_id": resource_id, "attached": flags[attached],
        "is_ipv6": flags[ipv6], "zonal": zonal, "order_by": "created_at_asc"})
    show_ips(session, answer)


@ips.command("get")
@click.argument("ip_id", metavar="ID", type=UUID)
@common_options()
@pass_session()
def get_ip(session: Session, ip_id: str) -> None:
    """Show one IP."""
    show_ips(session, session.call("GET", f"{session.ipam_path}/ips/{ip_id}"))


@ips.command("book")
@click.option("--pn", required=True, type=UUID, help="the Private Network to book in")
@click.option("--project", type=UUID,
              help="the project the IP belongs to [default: the Private Network's]")
@click.option("--address", metavar="ADDRESS", help="this address rather than any free one")
@click.option("--ipv6", is_flag=True, help="an IPv6 address (default IPv4)")
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="a tag (repeat for more)")
@common_options()
@pass_session()
def book_ip(session: Session, pn: str, project: str | None, address: str | None, ipv6: bool,
            tags: tuple[str, ...]) -> None:
    """Book an IP in a Private Network.

    Without --project the IP goes to the Private Network's own project (read first):
    an admin key has no project of its own, and an IP of a network belongs with it.
    """
    if project is None:
        project = session.call("GET", f"{session.vpc_path}/private-networks/{pn}")["project_id"]
    body: dict[str, Any] = {"source": {"private_network_id": pn}, "is_ipv6": ipv6,
                            "project_id": project}
    if address is not None:
        body["address"] = address
    if tags:
        body["tags"] = list(tags)
    show_ips(session, session.call("POST", f"{session.ipam_path}/ips", body))


@ips.command("release")
@click.argument("ip_id", metavar="ID", type=UUID)
@common_options()
@pass_session()
def release_ip(session: Session, ip_id: str) -> None:
    """Release a detached IP: its address is free again."""
    session.call("DELETE", f"{session.ipam_path}/ips/{ip_id}")
    confirm(session.output, f"released {ip_id}")


@ips.command("attach")
@click.argument("ip_id", metavar="ID", type=UUID)
@resource_options()
@common_options()
@pass_session()
def attach_ip(session: Session, ip_id: str, kind: str | None, resource_id: str | None,
              mac: str | None, name: str | None) -> None:
    """Attach a detached IP to a resource."""
    body = {"resource": resource(kind, resource_id, mac, name)}
    show_ips(session, session.call("POST", f"{session.ipam_path}/ips/{ip_id}/attach", body))


@ips.command("detach")
@click.argument("ip_id", metavar="ID", type=UUID)
@resource_options()
@common_options()
@pass_session()
def detach_ip(session: Session, ip_id: str, kind: str | None, resource_id: str | None,
              mac: str | None, name: str | None) -> None:
    """Detach an IP from the resource it is attached to (named to be sure)."""
    body = {"resource": resource(kind, resource_id, mac, name)}
    show_ips(session, session.call("POST", f"{session.ipam_path}/ips/{ip_id}/detach", body))


@ips.command("move")
@click.argument("ip_id", metavar="ID", type=UUID)
@resource_options("from-")
@resource_options("to-")
@common_options()
@pass_session()
def move_ip(session: Session, ip_id: str, from_kind: str | None, from_resource_id: str | None,
            from_mac: str | None, from_name: str | None, to_kind: str | None,
            to_resource_id: str | None, to_mac: str | None, to_name: str | None) -> None:
    """Move an IP from the resource it is attached to, to another one (none: detached)."""
    body: dict[str, Any] = {"from_resource": resource(
        from_kind, from_resource_id, from_mac, from_name, "from-")}
    if any(v is not None for v in (to_kind, to_resource_id, to_mac, to_name)):
        body["to_resource"] = resource(to_kind, to_resource_id, to_mac, to_name,
                                       "to-")
    show_ips(session, session.call("POST", f"{session.ipam_path}/ips/{ip_id}/move", body))


@ips.command("history")
@click.argument("ip_id", metavar="ID", type=UUID)
@common_options()
@pass_session()
def ip_history(session: Session, ip_id: str) -> None:
    """Show one IP's life, oldest first: booked, attached, moved, ... released, from the
    event feed (what it still keeps: see --event-retention)."""
    events: list[dict[str, Any]] = []
    cursor = "0"
    while True:
        page = session.call("GET", f"{session.ipam_path}/events", query={
            "after": cursor, "ip_id": ip_id, "page_size": str(HISTORY_PAGE)})
        events += page["events"]
        if not page["events"]:
            break
        cursor = page["cursor"]
    rows = [{"at": e["at"], "kind": e["kind"], "address": e["address"],
             "resource_type": (e["resource"] or {}).get("type"),
             "resource_name": (e["resource"] or {}).get("name"),
             "mac": (e["resource"] or {}).get("mac_address"), "actor": e["actor"]}
            for e in events]
    show(events, session.output, rows, HISTORY_COLUMNS)
