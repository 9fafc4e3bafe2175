"""`ipam usage`: how full each subnet of a Private Network is.

One request: our `usage` extension counts every subnet at one etcd revision (the held
addresses from etcd, the reserved ones by the allocator's own rule: the first two and
the last two of each subnet today). The command shapes its rows from those counts.
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
    how many are held, how many are free, and the percentage held (one decimal)."""
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
    counted = session.call("GET", f"{session.ipam_path}/private-networks/{pn}/usage")
    answer = [subnet_usage(s["subnet_id"], s["subnet"], s["reserved"], s["held"])
              for s in counted["subnets"]]
    rows = [{**u, "used": f"{u['used_percent']:.1f}%"} for u in answer]
    show(answer, session.output, rows, COLUMNS)
