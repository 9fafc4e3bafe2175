"""A booking cancelled while its commit is in flight (what the availability gate does to
every request when etcd goes away) leaves no address "in flight" behind it, on real etcd:
the source still books its free addresses and answers "exhausted" promptly when full."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from allocator_support import book_in, make_pn

from allocator.contract import IPAM
from allocator.errors import PoolExhausted, StoreError
from allocator.store import EtcdStore

PROMPT = 10.0  # far below the 30 s a booking waits for an address in flight


class Held(EtcdStore):
    """Real etcd, but a write sent while `hold` is set waits for `release`, then fails
    unapplied (its booking was cancelled meanwhile)."""

    def __init__(self, endpoints: Sequence[str]) -> None:
        super().__init__(endpoints)
        self.hold = False
        self.entered, self.release = asyncio.Event(), asyncio.Event()

    async def txn(self, compare: Any, success: Any, failure: Any = (), *,
                  retry: bool = False) -> Any:
        if self.hold and any(op.HasField("request_put") or op.HasField("request_txn")
                             for op in success):
            self.hold = False
            self.entered.set()
            await self.release.wait()
            raise StoreError("held, then lost (test)")
        return await super().txn(compare, success, failure, retry=retry)


async def test_a_booking_cancelled_mid_commit_leaves_the_source_bookable_and_exhaustible(
        etcd_single):
    store = Held(etcd_single.endpoints)
    ipam = IPAM(store, f"/t/{uuid.uuid4().hex[:12]}/")
    project = str(uuid.uuid4())
    try:
        pn = await make_pn(ipam, project, "10.9.0.0/29")  # 4 bookable addresses
        booked = [await ipam.book(book_in(pn, project)) for _ in range(3)]
        store.hold = True
        cancelled = asyncio.ensure_future(ipam.book(book_in(pn, project)))
        await asyncio.wait_for(store.entered.wait(), PROMPT)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        store.release.set()  # its commit fails now: nothing of it applied
        last = await asyncio.wait_for(ipam.book(book_in(pn, project)), PROMPT)
        assert last.address not in {ip.address for ip in booked}
        with pytest.raises(PoolExhausted):
            await asyncio.wait_for(ipam.book(book_in(pn, project)), PROMPT)
    finally:
        await ipam.close()
