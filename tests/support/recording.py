"""An allocator whose changes are recorded into a `bench.history.History`, for fault tests.

`RecordingIPAM` wraps an `IPAM`: book, release, release_set, attach, detach and move go
through `History.call` (what was asked, when, and what came back); everything else is
the wrapped IPAM's. `clean_history` reads etcd's final state under the IPAM's prefix
and fails the test with every violation listed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from allocator.contract import IPAM, AddressAsk, Caller, IPRecord, Resource
from bench.history import History, read_final_state
from bench.history_check import Verdict, check

ANYONE = Caller()  # the IPAM's own default caller


class RecordingIPAM:
    """`ipam` with its changes recorded into `history` as client `client`."""

    def __init__(self, ipam: IPAM | RecordingIPAM, history: History, client: str = "") -> None:
        self.ipam: IPAM = ipam.ipam if isinstance(ipam, RecordingIPAM) else ipam
        self.history = history
        self.client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ipam, name)

    async def book(self, ask: AddressAsk, caller: Caller = ANYONE) -> IPRecord:
        return await self.history.call(
            "book", self.ipam.book(ask, caller), client=self.client,
            pool=ask.private_network_id or ask.subnet_id or ask.zonal, address=ask.address,
            resource=ask.resource.id if ask.resource else None,
            idempotency_key=ask.idempotency_key)

    async def release(self, ip_id: str, caller: Caller = ANYONE) -> None:
        await self.history.call("release", self.ipam.release(ip_id, caller),
                                client=self.client, ip_id=ip_id)

    async def release_set(self, ip_ids: Sequence[str], caller: Caller = ANYONE) -> None:
        await self.history.call("release", self.ipam.release_set(ip_ids, caller),
                                client=self.client, ip_ids=ip_ids)

    async def attach(self, ip_id: str, resource: Resource, caller: Caller = ANYONE,
                     idempotency_key: str | None = None, idempotency_scope: str = ""
                     ) -> IPRecord:
        return await self.history.call(
            "attach", self.ipam.attach(ip_id, resource, caller, idempotency_key,
                                       idempotency_scope),
            client=self.client, ip_id=ip_id, resource=resource.id,
            idempotency_key=idempotency_key)

    async def detach(self, ip_id: str, resource: Resource, caller: Caller = ANYONE,
                     idempotency_key: str | None = None, idempotency_scope: str = ""
                     ) -> IPRecord:
        return await self.history.call(
            "detach", self.ipam.detach(ip_id, resource, caller, idempotency_key,
                                       idempotency_scope),
            client=self.client, ip_id=ip_id, resource=resource.id,
            idempotency_key=idempotency_key)

    async def move(self, ip_id: str, from_resource: Resource, to_resource: Resource | None,
                   caller: Caller = ANYONE, idempotency_key: str | None = None,
                   idempotency_scope: str = "") -> IPRecord:
        return await self.history.call(
            "move", self.ipam.move(ip_id, from_resource, to_resource, caller,
                                   idempotency_key, idempotency_scope),
            client=self.client, ip_id=ip_id, resource=to_resource.id if to_resource else None,
            idempotency_key=idempotency_key)


async def clean_history(ipam: IPAM | RecordingIPAM, history: History) -> Verdict:
    """`history` checked against etcd under `ipam`'s prefix; fails listing the violations."""
    verdict: Verdict = check(history.operations,
                             await read_final_state(ipam.store, ipam.keys))
    assert verdict.ok, str(verdict)
    return verdict
