"""The raw etcd ceiling: create-if-absent transactions per second, straight to etcd.

Same client as the allocator (`allocator.store.EtcdStore`), same concurrency as
the gateway run it is compared with. Each transaction creates one fresh key with
a value the size of an IP record, guarded by `create_revision == 0`: the least
a booking must do. The keys live outside the service's prefix and are deleted
after each measurement.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from allocator import store as st
from allocator.store import EtcdStore
from allocator.txn import GuardedTxn

from .stats import summary

PREFIX = "/bench-ceiling/"
RECORD_SIZE = 600  # bytes: an IPv4 IP record with its tags is about this long


async def measure(store: EtcdStore, concurrency: int, count: int, seconds: float,
                  value_size: int = RECORD_SIZE) -> dict[str, Any]:
    """Transactions per second and latency at `concurrency`, bounded by count and time."""
    run = f"{PREFIX}{uuid.uuid4().hex}/"
    value = b"x" * value_size
    latencies: list[float] = []
    failed = 0
    issued = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal issued, failed
        while issued < count and time.perf_counter() < deadline:
            key = f"{run}{issued:09d}"
            issued += 1
            t0 = time.perf_counter()
            try:
                txn = GuardedTxn().absent("key", key).put(key, value)
                resp = await store.txn(txn.compares(), txn.writes)
            except st.StoreError:
                failed += 1
                continue
            if resp.succeeded:
                latencies.append(time.perf_counter() - t0)
            else:
                failed += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    await store.txn([], [st.rpc.RequestOp(request_delete_range=st.rpc.DeleteRangeRequest(
        key=run.encode(), range_end=st.prefix_end(run)))])
    return {"concurrency": concurrency, "ok": len(latencies), "failed": failed,
            "elapsed_s": round(elapsed, 4),
            "per_s": round(len(latencies) / elapsed, 2) if elapsed else 0.0,
            "latency": summary(latencies)}


async def read_latency(store: EtcdStore, count: int, seconds: float) -> dict[str, Any]:
    """One client's linearizable single-key reads: what an extra read per request costs."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    for i in range(count):
        if time.perf_counter() >= deadline:
            break
        t0 = time.perf_counter()
        await store.get(f"{PREFIX}absent/{i}")
        latencies.append(time.perf_counter() - t0)
    return summary(latencies)


async def sweep(store: EtcdStore, plan: dict[int, int], seconds: float,
                log: Any = print, cpu: Any = None) -> dict[int, dict[str, Any]]:
    """`measure` at every concurrency of `plan` ({C: count}), in order.

    `cpu()` returns etcd's CPU seconds so far; each entry then says how much etcd
    CPU one transaction cost (to compare with the same figure per booking).
    """
    out = {}
    for c, n in plan.items():
        before = cpu() if cpu else 0.0
        out[c] = r = await measure(store, c, n, seconds)
        if cpu and r["ok"]:
            r["etcd_cpu_ms_per_txn"] = round(1000 * (cpu() - before) / r["ok"], 3)
        log(f"    ceiling C={c}: {r['per_s']:,.0f} txn/s p50 {r['latency']['p50_ms']} ms "
            f"p99 {r['latency']['p99_ms']} ms ({r['ok']} txns)")
    return out
