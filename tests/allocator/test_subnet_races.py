"""Subnets deleted under bookings, and the engines of deleted subnets, on real etcd.

A booking that resolved its Private Network to a subnet deleted before its commit
(its `source` guard fails) goes on to the network's other subnets of its family,
resolving the network again once: "not found" only when the network is gone, never
for a network that still has room. A booking that named its address in that subnet
gets what a booking a moment later gets: InvalidArgument (the address is in no
subnet of the network).

The engine (free-set cache and watch) of a deleted subnet goes: at once on the node
that deleted it, and on every other node when its watch (or a reload) finds the
source's meta key gone.

The moment "between resolution and commit" is made exact with a store that runs a
step of the test right before a chosen etcd call (real etcd underneath, always).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import pytest
from aetcd import rpc
from allocator_support import SIGNING_KEY, book_in, clean_audit, connected, make_pn

from allocator.contract import IPAM, AddressAsk, IPFilter, IPRecord, PrivateNetwork
from allocator.engine import SourceEngine
from allocator.errors import InvalidArgument, NotFound, PoolExhausted, PreconditionFailed
from allocator.store import EtcdStore
from devcluster.faults import FaultyStore

# Bound on how long another node may take to learn of a delete (its watch's delivery).
LEARN_DEADLINE = 10.0


class SteppedStore(FaultyStore):
    """A real etcd store that runs a step of the test right before one chosen call:
    `before_write(marker, step)` before the first write that names `marker` (a key
    prefix), `before_scan(prefix, step)` / `before_count(prefix, step)` before the first
    scan / count of exactly `prefix`. Each step runs once."""

    def __init__(self, store: EtcdStore) -> None:
        super().__init__(store)
        self._writes: list[tuple[bytes, Callable[[], Awaitable[Any]]]] = []
        self._reads: dict[tuple[str, str], Callable[[], Awaitable[Any]]] = {}

    def before_write(self, marker: str, step: Callable[[], Awaitable[Any]]) -> None:
        self._writes.append((marker.encode(), step))

    def before_scan(self, prefix: str, step: Callable[[], Awaitable[Any]]) -> None:
        self._reads["scan", prefix] = step

    def before_count(self, prefix: str, step: Callable[[], Awaitable[Any]]) -> None:
        self._reads["count", prefix] = step

    async def txn(self, compare: Sequence[rpc.Compare], success: Sequence[rpc.RequestOp],
                  failure: Sequence[rpc.RequestOp] = (), *, retry: bool = False
                  ) -> rpc.TxnResponse:
        sent = b"".join(op.SerializeToString() for op in success)
        for armed in list(self._writes):
            if armed[0] in sent:
                self._writes.remove(armed)
                await armed[1]()
        return await super().txn(compare, success, failure, retry=retry)

    async def scan(self, prefix: str, *, keys_only: bool = False, revision: int = 0,
                   page: int = 5000) -> Any:
        step = self._reads.pop(("scan", prefix), None)
        if step is not None:
            await step()
        return await super().scan(prefix, keys_only=keys_only, revision=revision, page=page)

    async def count(self, prefix: str) -> tuple[int, int]:
        step = self._reads.pop(("count", prefix), None)
        if step is not None:
            await step()
        return await super().count(prefix)


@pytest.fixture
async def other(etcd_single, key_prefix):
    """A second node on the same etcd and prefix: the one that deletes."""
    async with connected(etcd_single.endpoints, key_prefix) as node:
        yield node


@pytest.fixture
async def stepped(etcd_single, key_prefix):
    """(a node whose etcd calls the test can step into, its store)."""
    store = SteppedStore(EtcdStore(etcd_single.endpoints))
    node = IPAM(store, key_prefix, signing_key=SIGNING_KEY)
    try:
        yield node, store
    finally:
        await node.close()


def _subnet(pn: PrivateNetwork, cidr: str) -> str:
    return next(s.id for s in pn.subnets if s.subnet == cidr)


def _cidr(pn: PrivateNetwork, subnet_id: str) -> str:
    return next(s.subnet for s in pn.subnets if s.id == subnet_id)


def _delete_the_one_booked_in(node: IPAM, deleter: IPAM, pn: PrivateNetwork,
                              store: SteppedStore, among: Iterable[str]) -> list[str]:
    """Arm `store`: the first booking commit into one of the subnets `among` first has
    that subnet deleted through `deleter`. Returns the list the deleted id lands in."""
    deleted: list[str] = []
    for sid in among:
        async def delete(sid: str = sid) -> None:
            if deleted:
                return
            deleted.append(sid)
            await deleter.delete_subnets(pn.id, [_cidr(pn, sid)])
        store.before_write(node.keys.addresses(sid), delete)
    return deleted


async def _engine_gone(node: IPAM, engine: SourceEngine) -> None:
    """Wait, bounded, until `engine` is closed and gone from the node's map (woken by the
    engine's cache, which signals when it closes)."""
    async with asyncio.timeout(LEARN_DEADLINE):
        while not engine.closed:
            await engine.cache.changed(engine.cache.generation, LEARN_DEADLINE)
    assert node.lifecycle.engines.get(engine.source.id) is not engine


# -- (a) a booking whose subnet is deleted under it --------------------------------------


async def test_a_booking_whose_subnet_is_deleted_before_its_commit_lands_in_the_other(
        stepped, other, project):
    node, store = stepped
    pn = await make_pn(other, project, "10.100.0.0/24", "10.101.0.0/24")
    ids = [s.id for s in pn.subnets]
    deleted = _delete_the_one_booked_in(node, other, pn, store, ids)
    ip = await node.book(book_in(pn, project))
    assert len(deleted) == 1  # the commit into the first subnet tried met the delete
    kept = next(i for i in ids if i not in deleted)
    assert ip.source_id == kept
    assert [s.id for s in (await node.get_private_network(pn.id)).subnets] == [kept]
    # The engine that met the failed guard let itself go.
    assert deleted[0] not in node.lifecycle.engines
    await clean_audit(node)


async def test_an_address_asked_for_in_a_subnet_deleted_under_its_booking_is_invalid(
        stepped, other, project):
    node, store = stepped
    pn = await make_pn(other, project, "10.102.0.0/24", "10.103.0.0/24")
    doomed = _subnet(pn, "10.102.0.0/24")
    deleted = _delete_the_one_booked_in(node, other, pn, store, [doomed])
    with pytest.raises(InvalidArgument) as exc:
        await node.book(book_in(pn, project, address="10.102.0.7"))
    assert deleted == [doomed]
    assert [p.argument_name for p in exc.value.problems] == ["address"]
    assert "10.102.0.7 is outside the subnet 10.103.0.0/24" in exc.value.message
    # The same answer as a booking that comes after the delete.
    with pytest.raises(InvalidArgument) as later:
        await node.book(book_in(pn, project, address="10.102.0.7"))
    assert later.value.message == exc.value.message
    await clean_audit(node)


async def test_a_booking_whose_only_subnet_of_its_family_is_deleted_is_told_so(
        stepped, other, project):
    node, store = stepped
    pn = await make_pn(other, project, "10.104.0.0/24", "fd00:104::/64")
    doomed = _subnet(pn, "10.104.0.0/24")
    deleted = _delete_the_one_booked_in(node, other, pn, store, [doomed])
    with pytest.raises(InvalidArgument) as exc:
        await node.book(book_in(pn, project))
    assert deleted == [doomed]
    assert [p.argument_name for p in exc.value.problems] == ["is_ipv6"]
    assert "no IPv4 subnet" in exc.value.message


async def test_a_booking_whose_subnet_is_deleted_while_the_other_is_full_is_exhausted(
        stepped, other, project):
    node, store = stepped
    pn = await make_pn(other, project, "10.105.0.0/24", "10.106.0.0/29")
    doomed, full = _subnet(pn, "10.105.0.0/24"), _subnet(pn, "10.106.0.0/29")
    src = await other.source(full)
    for _ in range(src.bookable_count):
        await other.book(AddressAsk(region="fr-par", project_id=project, subnet_id=full))
    deleted = _delete_the_one_booked_in(node, other, pn, store, [doomed])
    with pytest.raises(PoolExhausted) as exc:
        await node.book(book_in(pn, project))
    assert deleted == [doomed]
    assert exc.value.source_id == pn.id
    await clean_audit(node)


async def test_a_booking_by_a_subnet_deleted_under_it_is_told_the_subnet_is_not_found(
        stepped, other, project):
    node, store = stepped
    pn = await make_pn(other, project, "10.107.0.0/24", "10.108.0.0/24")
    doomed = _subnet(pn, "10.107.0.0/24")
    deleted = _delete_the_one_booked_in(node, other, pn, store, [doomed])
    with pytest.raises(NotFound) as exc:
        await node.book(AddressAsk(region="fr-par", project_id=project, subnet_id=doomed))
    assert deleted == [doomed]
    assert (exc.value.resource, exc.value.resource_id) == ("subnet", doomed)


async def test_a_subnet_deleted_since_the_node_read_its_network_is_left_out(
        ipam, other, project):
    pn = await make_pn(ipam, project, "10.109.0.0/24")
    _, (added,) = await ipam.add_subnets(pn.id, ["10.109.128.0/25"])
    # The other node keeps the network with both subnets, and has never read the new
    # subnet's source; it is deleted before that node books.
    assert len((await other.cached_private_network(pn.id)).subnets) == 2
    await ipam.delete_subnets(pn.id, ["10.109.128.0/25"])
    ips = [await other.book(book_in(pn, project)) for _ in range(3)]
    assert {ip.source_id for ip in ips} == {pn.subnets[0].id}
    assert added.id not in other.lifecycle.engines


async def test_bookings_while_subnets_come_and_go_never_hear_not_found(
        etcd_single, key_prefix, project):
    rng = random.Random()
    async with connected(etcd_single.endpoints, key_prefix) as one, \
            connected(etcd_single.endpoints, key_prefix) as two:
        pn = await make_pn(one, project, "10.110.0.0/22")  # kept all along, with room
        for node in (one, two):  # both warm: they keep the network for a moment
            await node.release((await node.book(book_in(pn, project))).id)
        deletes = {"done": 0, "refused": 0}
        running = True

        async def churn() -> None:
            n = 0
            while running and n < 10_000:  # bounded: the bookings end it long before
                n += 1
                cidr = f"10.{111 + n % 100}.{n // 100}.0/26"
                await one.add_subnets(pn.id, [cidr])
                await asyncio.sleep(rng.uniform(0, 0.02))  # let some bookings land in it
                try:
                    await one.delete_subnets(pn.id, [cidr])
                    deletes["done"] += 1
                except PreconditionFailed:
                    deletes["refused"] += 1  # it holds an IP: it stays

        async def book(i: int) -> IPRecord | BaseException:
            await asyncio.sleep(rng.uniform(0, 0.5))
            try:
                return await (one, two)[i % 2].book(book_in(pn, project))
            except Exception as err:  # noqa: BLE001 - the assertion names it
                return err

        churning = asyncio.ensure_future(churn())
        try:
            answers = await asyncio.gather(*(book(i) for i in range(300)))
        finally:
            running = False
            await churning
        assert [a for a in answers if not isinstance(a, IPRecord)] == []
        assert deletes["done"] > 0, deletes
        now = {s.id for s in (await one.get_private_network(pn.id)).subnets}
        assert all(a.source_id in now for a in answers if isinstance(a, IPRecord))
        _, total = await one.list_ips(IPFilter(private_network_id=pn.id), page_size=1)
        assert total == len(answers)
        await clean_audit(one)


# -- (b) the engine of a deleted subnet ---------------------------------------------------


async def test_the_deleting_node_closes_the_engine_of_a_deleted_subnet_at_once(ipam, project):
    pn = await make_pn(ipam, project, "10.120.0.0/24", "10.121.0.0/24")
    doomed = _subnet(pn, "10.120.0.0/24")
    await ipam.release((await ipam.book(book_in(pn, project, address="10.120.0.9"))).id)
    engine = ipam.lifecycle.engines[doomed]
    await ipam.delete_subnets(pn.id, ["10.120.0.0/24"])
    assert engine.closed and doomed not in ipam.lifecycle.engines
    # A later booking decides afresh: no engine for the deleted subnet comes back.
    ip = await ipam.book(book_in(pn, project))
    assert ip.source_id == _subnet(pn, "10.121.0.0/24")
    with pytest.raises(NotFound) as exc:
        await ipam.book(AddressAsk(region="fr-par", project_id=project, subnet_id=doomed))
    assert (exc.value.resource, exc.value.resource_id) == ("subnet", doomed)
    assert doomed not in ipam.lifecycle.engines


async def test_another_node_closes_its_engine_when_its_watch_sees_the_subnet_deleted(
        ipam, other, project):
    pn = await make_pn(ipam, project, "10.122.0.0/24", "10.123.0.0/24")
    doomed = _subnet(pn, "10.122.0.0/24")
    await other.release((await other.book(book_in(pn, project, address="10.122.0.9"))).id)
    engine = other.lifecycle.engines[doomed]
    await ipam.delete_subnets(pn.id, ["10.122.0.0/24"])
    await _engine_gone(other, engine)
    # Its node forgot the subnet: the next bookings decide afresh, from etcd.
    with pytest.raises(NotFound) as exc:
        await other.book(AddressAsk(region="fr-par", project_id=project, subnet_id=doomed))
    assert (exc.value.resource, exc.value.resource_id) == ("subnet", doomed)
    ips = [await other.book(book_in(pn, project)) for _ in range(5)]
    assert {ip.source_id for ip in ips} == {_subnet(pn, "10.123.0.0/24")}
    assert doomed not in other.lifecycle.engines


async def test_a_node_whose_watch_was_down_during_the_delete_closes_on_its_reload(
        etcd_single, key_prefix, ipam, project):
    faults = FaultyStore(EtcdStore(etcd_single.endpoints))
    node = IPAM(faults, key_prefix, signing_key=SIGNING_KEY)
    try:
        pn = await make_pn(ipam, project, "10.124.0.0/24", "10.125.0.0/24")
        doomed = _subnet(pn, "10.124.0.0/24")
        await node.release((await node.book(book_in(pn, project, address="10.124.0.9"))).id)
        engine = node.lifecycle.engines[doomed]
        reloads = engine.cache.reloads
        faults.outage()  # the reloads fail until healed
        faults.break_watches()  # the watch ends: the cache reloads, with backoff
        await ipam.delete_subnets(pn.id, ["10.124.0.0/24"])  # unseen by any watch
        faults.heal()
        await _engine_gone(node, engine)
        assert engine.cache.reloads == reloads  # found gone: no free set was loaded
    finally:
        await node.close()


async def test_a_booking_waiting_for_the_load_of_a_subnet_deleted_meanwhile_goes_on(
        stepped, project):
    node, store = stepped
    pn = await make_pn(node, project, "10.126.0.0/24", "10.127.0.0/24")
    ids = [s.id for s in pn.subnets]
    first: list[str] = []
    for sid in ids:  # the first load of a subnet's free set waits while it is deleted
        async def delete(sid: str = sid) -> None:
            if first:
                return
            first.append(sid)
            # Deleted by this very node, from another task: it closes the engine, whose
            # load (this scan's caller) is cancelled while the booking waits on it.
            await asyncio.shield(node.delete_subnets(pn.id, [_cidr(pn, sid)]))
        store.before_scan(node.keys.addresses(sid), delete)
    ip = await node.book(book_in(pn, project))
    assert len(first) == 1 and ip.source_id == next(i for i in ids if i not in first)
    assert first[0] not in node.lifecycle.engines
    await clean_audit(node)


async def test_a_booking_waiting_on_a_count_its_engine_stopped_is_answered(stepped, project):
    node, store = stepped
    pn = await make_pn(node, project, "10.128.0.0/29")
    sid = pn.subnets[0].id
    ask = AddressAsk(region="fr-par", project_id=project, subnet_id=sid)
    for _ in range((await node.source(sid)).bookable_count):
        await node.book(ask)
    counting, go_on = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        counting.set()
        await go_on.wait()
    store.before_count(node.keys.addresses(sid), hold)
    booking = asyncio.ensure_future(node.book(ask))  # the cache is full: it counts
    await counting.wait()
    engine = node.lifecycle.engines[sid]
    engine.close()  # as the node does when it closes
    go_on.set()
    with pytest.raises(NotFound) as exc:
        await booking
    assert (exc.value.resource, exc.value.resource_id) == ("subnet", sid)
