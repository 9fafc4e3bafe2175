"""After each run, from etcd itself: no address held twice, every 2xx booking present.

`check_run` is cheap enough to run after every run (it reads the address keys of
the sources involved and the records of the acknowledged IPs); `allocator.audit`
reads the whole prefix and runs once per scenario.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

from allocator.audit import audit
from allocator.keys import Keys
from allocator.store import EtcdStore


async def check_run(store: EtcdStore, keys: Keys, source_ids: Iterable[str],
                    acked: list[list[str]], released: Iterable[str] = (),
                    expected_held: int | None = None) -> dict[str, Any]:
    """Check the bookings answered 2xx (`acked`: [ip id, address, pn]) against etcd.

    - duplicates: two acknowledged bookings with one address of one Private Network,
      or one address key claimed by two records;
    - lost: an acknowledged IP whose record or address key is missing, or whose
      stored address differs from the one answered;
    - resurrected: an IP acknowledged as released that still exists;
    - count_exact: the sources hold exactly `expected_held` addresses (when given).
    """
    source_ids = list(source_ids)
    held: dict[str, str] = {}  # ip id -> address key
    held_count = 0
    for sid in source_ids:
        kvs, _ = await store.scan(keys.addresses(sid))
        held_count += len(kvs)
        for kv in kvs:
            ip_id = kv.value.decode()
            if ip_id in held:  # one record behind two address keys
                held[ip_id] = "DUPLICATE"
            else:
                held[ip_id] = kv.key
    answered = Counter((pn, addr) for _, addr, pn in acked)
    duplicates = [f"{pn} {addr}" for (pn, addr), n in answered.items() if n > 1]
    duplicates += [i for i, k in held.items() if k == "DUPLICATE"]
    records = await store.get_many(keys.ip(i) for i, _, _ in acked)
    lost: list[str] = []
    for ip_id, address, _ in acked:
        rec = records.get(keys.ip(ip_id))
        if rec is None or ip_id not in held:
            lost.append(ip_id)
        elif json.loads(rec.value)["address"] != address:
            lost.append(f"{ip_id} stored as {json.loads(rec.value)['address']} "
                        f"answered as {address}")
    released = list(released)
    still = await store.get_many(keys.ip(i) for i in released) if released else {}
    return {
        "acked": len(acked), "lost": len(lost), "duplicates": len(duplicates),
        "resurrected": len(still), "held": held_count, "expected_held": expected_held,
        "count_exact": expected_held is None or held_count == expected_held,
        "examples": (lost + duplicates + list(still))[:5],
        "ok": not lost and not duplicates and not still and
        (expected_held is None or held_count == expected_held),
    }


async def full_audit(store: EtcdStore, keys: Keys) -> dict[str, Any]:
    """`allocator.audit.audit` over the whole prefix, summarised."""
    r = await audit(store, keys)
    return {"ok": r.ok, "records": r.records, "held_addresses": r.held_addresses,
            "duplicate_addresses": len(r.duplicate_addresses),
            "addresses_without_record": len(r.addresses_without_record),
            "records_without_address": len(r.records_without_address),
            "bad_index_keys": len(r.bad_index_keys),
            "records_missing_index": len(r.records_missing_index),
            "reserved_held": len(r.reserved_held),
            "examples": (r.duplicate_addresses + r.addresses_without_record
                         + r.records_without_address + r.bad_index_keys)[:5]}
