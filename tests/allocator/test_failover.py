"""Bookings keep flowing while members die or hang, and every answer tells the truth.

With bookings running on two nodes (each connected to all three members):
SIGKILL a member in use, then the leader, then SIGSTOP a member for 10 s.
After each fault, bookings must succeed again within a few seconds. Afterwards,
read from etcd: every booking answered as booked is there with its address, every
booking answered as failed left nothing, nothing is held twice, and an
"outcome unknown" answer is settled by retrying with the same idempotency key.
Every attempt is recorded in a history, checked against etcd at the end
(`bench.history_check`): what each client was told, not only the final state.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import pytest
from allocator_support import book_in, clean_audit, connected, make_pn, new_project
from recording import RecordingIPAM, clean_history

from allocator.contract import IPRecord
from allocator.errors import IPAMError, OutcomeUnknown
from bench.history import History

RECOVERY_SECONDS = 5.0
WORKERS = 12


@dataclass
class Ledger:
    """What the clients were told, kept to compare with etcd afterwards."""

    booked: dict[str, IPRecord] = field(default_factory=dict)  # idempotency key -> record
    failed: dict[str, IPAMError] = field(default_factory=dict)
    unknown_retries: int = 0
    success_times: list[float] = field(default_factory=list)
    history: History = field(default_factory=History)  # every attempt, with its times
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def record(self, key: str, ip: IPRecord) -> None:
        self.booked[key] = ip
        self.success_times.append(time.monotonic())
        async with self.changed:
            self.changed.notify_all()

    async def wait_for(self, predicate, timeout: float) -> bool:
        """Await `predicate()` (checked at each success), at most `timeout` seconds."""
        try:
            async with self.changed:
                await asyncio.wait_for(self.changed.wait_for(predicate), timeout)
            return True
        except TimeoutError:
            return False

    def first_success_after(self, t: float) -> float | None:
        later = [s for s in self.success_times if s > t]
        return min(later) - t if later else None


async def _client(
    ipam, pn, project, ledger: Ledger, name: str, stop: asyncio.Event, limit: int
) -> None:
    node = RecordingIPAM(ipam, ledger.history, name)
    for n in range(limit):
        if stop.is_set():
            return
        key = f"{name}-{n}"
        req = book_in(pn, project, idempotency_key=key, idempotency_scope="failover")
        for _ in range(20):  # an unknown outcome is settled by retrying the same key
            try:
                await ledger.record(key, await node.book(req))
                break
            except OutcomeUnknown:
                ledger.unknown_retries += 1
                await asyncio.sleep(0.2)
            except IPAMError as err:
                ledger.failed[key] = err
                await asyncio.sleep(0.05)
                break


async def _fault(cluster, ledger: Ledger, action, undo, hold: float = 0.0) -> float:
    t = time.monotonic()
    await asyncio.to_thread(action)
    await ledger.wait_for(lambda: ledger.first_success_after(t) is not None,
                          max(RECOVERY_SECONDS, hold))
    recovered = ledger.first_success_after(t)
    if hold:
        await asyncio.sleep(max(0.0, t + hold - time.monotonic()))
    await asyncio.to_thread(undo)
    await asyncio.to_thread(cluster.wait_healthy, 30)
    assert recovered is not None and recovered < RECOVERY_SECONDS, (action, recovered)
    return recovered


@pytest.mark.cluster
@pytest.mark.slow
def loses_writes_when_killed(cluster) -> bool:
    """etcd 3.5.0 to 3.5.2 did not save the consistent index atomically with the data: a
    member killed mid-apply restarts behind its peers for good (etcd-io/etcd#13766, fixed
    by PR 13908 in 3.5.3), and a read pinned to a revision it lost says "future revision".
    The README tells operators never to run them; CI's 3.5 run uses 3.5.1 for the rest."""
    version = cluster.members[0].version()
    assert version is not None
    major, minor, patch = (int(part) for part in version.split(".")[:3])
    return (major, minor) == (3, 5) and patch < 3


async def test_bookings_survive_kill_leader_kill_and_hang(etcd_cluster3_fresh, key_prefix):
    cluster = etcd_cluster3_fresh
    if loses_writes_when_killed(cluster):
        pytest.skip("etcd 3.5.0-3.5.2 lose applied writes on a member killed mid-apply "
                    "(etcd-io/etcd#13766): the kills of this test would test etcd's bug")
    ledger = Ledger()
    stop = asyncio.Event()
    async with (
        connected(cluster.endpoints, key_prefix, timeout=1.0, eject_seconds=3.0) as a,
        connected(
            list(reversed(cluster.endpoints)), key_prefix, timeout=1.0, eject_seconds=3.0
        ) as b,
    ):
        project = new_project()
        pn = await make_pn(a, project, "10.50.0.0/16")
        clients = [
            asyncio.ensure_future(_client((a, b)[i % 2], pn, project, ledger, f"c{i}", stop, 5000))
            for i in range(WORKERS)
        ]
        try:
            assert await ledger.wait_for(lambda: len(ledger.booked) >= 50, 30)
            m0 = cluster.members[0]
            kill_any = await _fault(cluster, ledger, m0.kill, m0.start)
            leader = cluster.members[cluster.wait_healthy(30)]
            kill_leader = await _fault(cluster, ledger, leader.kill, leader.start)
            leader_index = cluster.wait_healthy(30)
            hung = cluster.members[(leader_index + 1) % 3]
            hang = await _fault(cluster, ledger, hung.pause, hung.resume, hold=10.0)
            booked_before_end = len(ledger.booked)
            assert await ledger.wait_for(lambda: len(ledger.booked) > booked_before_end + 20,
                                         RECOVERY_SECONDS)  # still flowing at the end
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*clients), 60)

        print(
            f"recovery: kill {kill_any:.2f}s, leader kill {kill_leader:.2f}s, "
            f"hang {hang:.2f}s; booked {len(ledger.booked)}, failed {len(ledger.failed)}, "
            f"unknown retried {ledger.unknown_retries}; engines {a.engine_stats()} "
            f"{b.engine_stats()}"
        )
        # Compare with etcd itself.
        report = await clean_audit(a)
        assert report.records == len(ledger.booked)
        idem_kvs, _ = await a.store.scan(a.keys.idempotency("failover", ""))
        # Each entry names its IP (`allocator.idempotency`: the rest is the IP's record).
        stored = {kv.key.rsplit("/", 1)[1]: json.loads(kv.value)["i"] for kv in idem_kvs}
        assert set(stored) == set(ledger.booked)  # booked answers present, failed absent
        for key, record in ledger.booked.items():
            assert stored[key] == record.id
            got = await a.get_ip(record.id)
            assert got.address == record.address
        assert not set(ledger.failed) & set(stored)
        verdict = await clean_history(a, ledger.history)
        print(verdict)
