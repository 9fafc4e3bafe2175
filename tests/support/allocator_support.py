"""Shared pieces of the allocator tests: a connected IPAM, a project, a PN, etcd checks."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from allocator.audit import AuditReport, audit
from allocator.contract import IPAM, AddressAsk
from allocator.networks import PrivateNetwork

REGION = "fr-par"
# The credential signing key of the tests' allocators (a gateway derives its own).
SIGNING_KEY = b"the tests' credential signing key"


def new_project() -> str:
    return str(uuid.uuid4())


@asynccontextmanager
async def connected(endpoints: Sequence[str], prefix: str, **kwargs) -> AsyncIterator[IPAM]:
    kwargs.setdefault("signing_key", SIGNING_KEY)
    ipam = await IPAM.connect(list(endpoints), prefix=prefix, **kwargs)
    try:
        yield ipam
    finally:
        await ipam.close()


async def make_pn(ipam: IPAM, project: str, *subnets: str) -> PrivateNetwork:
    return await ipam.create_private_network(
        REGION, project, None, "pn", subnets=list(subnets) or None
    )


def book_in(pn: PrivateNetwork, project: str, **kwargs) -> AddressAsk:
    return AddressAsk(region=REGION, project_id=project, private_network_id=pn.id, **kwargs)


async def revision(ipam: IPAM) -> int:
    """The cluster's current revision: unchanged means nothing was written."""
    _, rev = await ipam.store.count(ipam.keys.prefix)
    return rev


async def clean_audit(ipam: IPAM) -> AuditReport:
    report = await audit(ipam.store, ipam.keys)
    assert report.ok, report
    return report


async def view_until(view, check, rounds: int = 40) -> None:
    """Wait (bounded: `rounds` view changes of at most 0.25 s each) until `check()` holds."""
    for _ in range(rounds):
        if check():
            return
        await view.changed(view.revision, 0.25)
    assert check()
