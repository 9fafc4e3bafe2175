"""The `freed` marker every release writes is shared, on real etcd: the releases of one
source ride one request together (they used to go one request each, the marker being a
key they all write), "exhausted" still sees every release, and a marker never outlives
its source."""

from __future__ import annotations

import asyncio

import pytest
from allocator_support import book_in, clean_audit, make_pn

from allocator.contract import IPAM
from allocator.errors import PoolExhausted
from allocator.txn import GuardedTxn


async def test_releases_of_one_source_share_requests(ipam: IPAM, project: str):
    pn = await make_pn(ipam, project, "10.31.0.0/24")
    ips = await asyncio.gather(*(ipam.book(book_in(pn, project)) for _ in range(40)))
    before = ipam.committer.requests
    await asyncio.gather(*(ipam.release(ip.id) for ip in ips))
    # Two requests in flight at most, everything else waiting rides the next one: one
    # request per release (40) before markers were shared.
    assert ipam.committer.requests - before <= 10
    marker = await ipam.store.get(ipam.keys.freed(ips[0].source_id))
    assert marker is not None and marker.value.decode() in {ip.id for ip in ips}
    assert (await clean_audit(ipam)).ok


async def test_a_full_source_sees_releases_that_shared_a_request(ipam: IPAM, project: str):
    pn = await make_pn(ipam, project, "10.31.1.0/29")  # 4 bookable addresses
    ips = [await ipam.book(book_in(pn, project)) for _ in range(4)]
    with pytest.raises(PoolExhausted):
        await ipam.book(book_in(pn, project))  # the engine remembers "full at R"
    await asyncio.gather(*(ipam.release(ip.id) for ip in ips[:3]))
    again = await asyncio.gather(*(ipam.book(book_in(pn, project)) for _ in range(3)))
    assert {ip.address for ip in again} == {ip.address for ip in ips[:3]}
    with pytest.raises(PoolExhausted):
        await ipam.book(book_in(pn, project))


async def test_a_marker_is_written_even_when_its_change_loses_but_never_without_source(
        ipam: IPAM, project: str):
    pn = await make_pn(ipam, project, "10.31.2.0/29")
    ip = await ipam.book(book_in(pn, project))
    freed, meta = ipam.keys.freed(ip.source_id), ipam.keys.source(ip.source_id)
    # A change whose guard fails still leaves its marker: a reader only looks once more.
    lost = GuardedTxn().absent("ip", ipam.keys.ip(ip.id)).mark(freed, "lost", meta)
    outcome = await ipam.committer.commit(lost)
    assert not outcome.succeeded and outcome.failed == {"ip"}
    marker = await ipam.store.get(freed)
    assert marker is not None and marker.value == b"lost"
    # Once the source is gone, a late marker (a stale release) writes nothing.
    await ipam.release(ip.id)
    await ipam.delete_private_network(pn.id)
    assert await ipam.store.get(meta) is None
    await ipam.committer.commit(GuardedTxn().absent("ip", ipam.keys.ip(ip.id))
                                .mark(freed, "late", meta))
    assert await ipam.store.get(freed) is None
    assert (await clean_audit(ipam)).ok
