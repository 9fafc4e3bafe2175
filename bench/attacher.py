"""The allocator's side of the watch lag, a process of its own: `python -m bench.attacher < job.json`.

It attaches each detached IP of the job (`ips`: [IP id, MAC, name]) to a new resource
with that MAC and name, one after the other, `pause` seconds apart, and reports the
moment each attach was acknowledged, by `time.monotonic()`: CLOCK_MONOTONIC on Linux,
one clock for every process of the machine, so the bench subtracts it from the moment
its own view showed the change. Like a gateway, it is not the process holding the view:
the lag measured is etcd's watch, not one event loop's order of wake-ups.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from typing import Any

from allocator.contract import IPAM, Caller, Resource

PRODUCT = "instance_server"
ATTACH_TIMEOUT = 30.0


async def attach_all(job: dict[str, Any]) -> dict[str, Any]:
    """Attach every IP of the job in turn; [MAC, acknowledged at, seconds the call took]."""
    ipam = await IPAM.connect(job["endpoints"], prefix=job["prefix"])
    caller = Caller(role="product", product_types=frozenset({PRODUCT}))
    acks: list[list[Any]] = []
    errors: list[str] = []
    deadline = time.monotonic() + float(job["seconds"])
    try:
        await ipam.store.count(ipam.keys.private_network())  # the channel up before timing
        for ip_id, mac, name in job["ips"]:
            if time.monotonic() >= deadline:
                errors.append(f"out of time after {len(acks)} attaches")
                break
            res = Resource.product(PRODUCT, str(uuid.uuid4()), mac, name)
            t0 = time.monotonic()
            try:
                await asyncio.wait_for(ipam.attach(ip_id, res, caller), ATTACH_TIMEOUT)
            except Exception as err:  # noqa: BLE001 - reported; the bench's check fails
                errors.append(f"{ip_id}: {type(err).__name__}: {err}")
                continue
            t_ack = time.monotonic()
            acks.append([mac, t_ack, t_ack - t0])
            await asyncio.sleep(float(job["pause"]))
    finally:
        await ipam.close()
    return {"acks": acks, "errors": errors}


def main() -> int:
    job = json.load(sys.stdin)
    json.dump(asyncio.run(attach_all(job)), sys.stdout)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
