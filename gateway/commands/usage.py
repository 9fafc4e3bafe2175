"""`ipam usage`: how full each subnet of a Private Network is.

Everything comes from the public API: the subnets from the Private Network, the
addresses never handed out from our `reserved-ips` extension (so the allocator's own
rule is used, not a copy of it: the first two and the last two of each subnet
today), and the held ones from the `total_count` of the IP list of each subnet.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import click

from .output import show
from .params import UUID
from .session import Session, pass_session
from .settings import common_options

COLUMNS = ("subnet", "held", "free", "used")


def subnet_usage(subnet_id: str, cidr: str, reserved: int, held: int) -> dict[str, Any]:
    """The usage of one subnet: its bookable addresses (all but the `reserved` ones),
    how many are held, how many are free, and the percentage held."""
    bookable = ipaddress.ip_network(cidr).num_addresses - reserved
    return {"subnet_id": subnet_id, "subnet": cidr, "bookable": bookable, "held": held,
            "free": bookable - held,
            "used_percent": round(100 * held / bookable, 1) if bookable else 0.0}


@click.command("usage")
@click.option("--pn", required=True, type=UUID, help="the Private Network")
@common_options()
@pass_session()
def usage(session: Session, pn: str) -> None:
    """Per subnet of a Private Network: addresses held, free, and the share used."""
    network = session.call("GET", f"{session.vpc_path}/private-networks/{pn}")
    reserved = session.call("GET", f"{session.ipam_path}/private-networks/{pn}/reserved-ips")
    reserved_count = {s["subnet_id"]: len(s["reserved"]) for s in reserved["subnets"]}
    answer = []
    for subnet in network["subnets"]:
        held = session.call("GET", f"{session.ipam_path}/ips", query={
            "private_network_id": pn, "subnet_id": subnet["id"], "page_size": "1"})
        answer.append(subnet_usage(subnet["id"], subnet["subnet"],
                                   reserved_count.get(subnet["id"], 0), held["total_count"]))
    rows = [{**u, "used": f"{u['used_percent']:.1f}%"} for u in answer]
    show(answer, session.output, rows, COLUMNS)
