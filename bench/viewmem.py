"""The memory of a NetworkView, in a process of its own: `python -m bench.viewmem < job.json`.

The process imports what the agent imports, connects to etcd and reads once (so gRPC's
channel is up), notes its resident memory, loads a `NetworkView` of `pn_ids`, collects
garbage and notes it again. The difference is what the view holds; the total is what
an agent serving that network needs. It prints one JSON result on stdout.
"""

from __future__ import annotations

import asyncio
import gc
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import netagent.agent  # noqa: F401 - the agent's own imports count in its footprint
from allocator.contract import IPAM

LOAD_TIMEOUT = 300.0


def rss_mib() -> float:
    """This process's resident memory in MiB (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def measure(job: dict[str, Any]) -> dict[str, Any]:
    """Load the view of `job['pn_ids']` and report the memory it takes."""
    ipam = await IPAM.connect(job["endpoints"], prefix=job["prefix"])
    try:
        await ipam.store.count(ipam.keys.private_network())
        gc.collect()
        before = rss_mib()
        t0 = time.perf_counter()
        view = await asyncio.wait_for(ipam.network_view(job["pn_ids"]), LOAD_TIMEOUT)
        load_s = time.perf_counter() - t0
        gc.collect()
        after = rss_mib()
        leases = sum(len(view.leases(pn)) for pn in job["pn_ids"])
        await view.close()
    finally:
        await ipam.close()
    return {
        "leases": leases, "load_s": round(load_s, 3),
        "rss_before_mib": round(before, 1), "rss_with_view_mib": round(after, 1),
        "view_mib": round(after - before, 1),
        "bytes_per_ip": round((after - before) * 1024 * 1024 / leases) if leases else None,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> int:
    job = json.load(sys.stdin)
    json.dump(asyncio.run(measure(job)), sys.stdout)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
