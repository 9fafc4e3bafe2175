"""`python -m bench storage`: bytes of etcd per booked and per attached IP, with and
without idempotency records, and how many IPs one cluster holds at etcd's quota.

One etcd member (devcluster), `allocator.contract.IPAM` in this process, the default
prefix (`/ipam/`: key sizes as deployed). Two passes, each in a fresh Private Network
of one IPv4 /16 of its own:

  1  without keys: book `ips` IPs, then attach each to a custom resource (a MAC and
     a name, what a VM's NIC is)
  2  with keys: the same, every book and attach with an Idempotency-Key (a UUID, in
     the scope of a 20-character access key, as the gateway sends them)

Before the first pass and after each step, etcd is compacted at its current revision
and defragmented, so its database holds exactly the live keys: what is measured is
what the data costs, not history a compactor would drop anyway. Per step, divided by
the IPs: the keyspace bytes (a full range of the prefix, key + value of each key, by
kind of key) and the growth of etcd's reported database size (`Status.dbSize`, and
`dbSizeInUse`). The idempotency records are also measured alone (bytes per record),
next to what the whole first record costed them before format 2 (computed from the
same records: `allocator.idempotency`).

Capacity: etcd's default quota (2 GiB) and its recommended maximum (8 GiB) over the
database bytes per attached IP without keys; idempotency records come on top, one per
keyed request still in its retention, so the capacity left for records is given as
keyed requests per second sustained over the default retention.

Self-checks (exit status 1 if one fails): every booking and attach acknowledged; etcd
holds exactly the IPs booked, and one record per keyed request; an audit of the whole
prefix at the end. Result: `storage[-quick]-<time>.json` under `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aetcd import rpc

from allocator.audit import audit
from allocator.contract import IDEMPOTENCY_RETENTION, IPAM, AddressAsk, IPRecord, Resource
from allocator.idempotency import fingerprint
from allocator.store import DEFAULT_QUOTA_BYTES, EtcdStore, prefix_end
from devcluster.etcd import EtcdCluster

from . import results
from .rig import ROOT

REGION = "fr-par"
PREFIX = "/ipam/"
SCOPE = "SCW" + "B" * 17  # an access key: the gateway's idempotency scope
RECOMMENDED_MAX_QUOTA = 8 * 1024**3  # etcd's documented suggested maximum
MIB = 1024**2
# Kinds of keys on a lease: they last as long as their retention whatever the IPs do,
# so they are measured per operation, and taken out for the bytes of the IPs held.
LEASED_KINDS = ("idem", "ev")
SETTLE_TIMEOUT = 120.0  # seconds, etcd's calls from this bench


@dataclass
class Plan:
    """Counts of one run; --quick and --ips shrink them, never the checks."""

    quick: bool
    ips: int  # IPs booked, then attached, in each pass
    book_concurrency: int = 256
    attach_concurrency: int = 64

    @classmethod
    def make(cls, quick: bool, ips: int | None) -> Plan:
        return cls(quick, ips or (1_000 if quick else 20_000))


@dataclass
class Bench:
    plan: Plan
    ipam: IPAM
    cluster: EtcdCluster
    project_id: str
    quiet: bool

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)

    @property
    def store(self) -> EtcdStore:
        assert isinstance(self.ipam.store, EtcdStore)  # IPAM.connect makes one
        return self.ipam.store

    async def settle(self) -> dict[str, int]:
        """Compact at the current revision, defragment, and read the database's size."""
        _, rev = await self.store.count(PREFIX)
        await self.store.compact(rev, physical=True)
        for member in self.cluster.members:  # etcd's JSON gateway: no client call for it
            await asyncio.to_thread(_post, f"http://{member.endpoint}/v3/maintenance/defragment")
        [usage] = await self.store.storage_usage()
        return {"db_size": usage.db_size, "db_size_in_use": usage.db_size_in_use}

    async def keyspace(self) -> dict[str, dict[str, int]]:
        """Keys and key + value bytes under the prefix, by kind (the key's first segment)."""
        kvs, _ = await self.store.scan(PREFIX)
        out: dict[str, dict[str, int]] = {}
        for kv in kvs:
            kind = kv.key[len(PREFIX):].split("/", 1)[0]
            row = out.setdefault(kind, {"keys": 0, "bytes": 0})
            row["keys"] += 1
            row["bytes"] += len(kv.key.encode()) + len(kv.value)
        return out

    async def drop_leased(self) -> None:
        """Delete the leased kinds of keys (this bench's own etcd): what stays is the
        state of the IPs held."""
        ops = [rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(
            key=f"{PREFIX}{kind}/".encode(), range_end=prefix_end(f"{PREFIX}{kind}/")))
            for kind in LEASED_KINDS]
        await self.store.txn([], ops)

    async def measure(self, step: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        db = await self.settle()
        return {"step": step, **db, "keyspace": await self.keyspace(),
                "settle_s": round(time.perf_counter() - t0, 2)}

    async def run_all(self, count: int, c: int, one: Any) -> dict[str, Any]:
        """`one(i)` for i in range(count), `c` at a time: the answers and the errors."""
        answers: dict[int, IPRecord] = {}
        errors: list[str] = []
        issued = 0

        async def worker() -> None:
            nonlocal issued
            while issued < count:
                i, issued = issued, issued + 1
                try:
                    answers[i] = await one(i)
                except Exception as err:  # noqa: BLE001 - counted, and the run fails its check
                    errors.append(f"{type(err).__name__}: {err}")

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(c)))
        elapsed = time.perf_counter() - t0
        return {"answers": answers, "ok": len(answers), "errors": len(errors),
                "error_examples": errors[:3], "elapsed_s": round(elapsed, 2),
                "per_s": round(len(answers) / elapsed, 1)}


def _post(url: str) -> None:
    request = urllib.request.Request(url, data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=SETTLE_TIMEOUT) as resp:
        resp.read()


def _mac(pass_no: int, i: int) -> str:
    return f"02:{pass_no:02x}:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}:01"


def _delta(after: dict[str, Any], before: dict[str, Any], n: int) -> dict[str, Any]:
    """Bytes per IP between two measurements: database (file, in use) and keyspace."""
    kinds = set(after["keyspace"]) | set(before["keyspace"])
    by_kind = {k: round((after["keyspace"].get(k, {}).get("bytes", 0)
                         - before["keyspace"].get(k, {}).get("bytes", 0)) / n, 1)
               for k in sorted(kinds)}
    keys = sum(v["keys"] for v in after["keyspace"].values()) - \
        sum(v["keys"] for v in before["keyspace"].values())
    return {"db_bytes": round((after["db_size"] - before["db_size"]) / n, 1),
            "db_in_use_bytes": round((after["db_size_in_use"] - before["db_size_in_use"]) / n, 1),
            "keyspace_bytes": round(sum(by_kind.values()), 1),
            "keys": round(keys / n, 2), "keyspace_by_kind": {k: v for k, v in by_kind.items()
                                                             if v}}


async def one_pass(b: Bench, pass_no: int, keyed: bool, start: dict[str, Any]
                   ) -> dict[str, Any]:
    """Book then attach `ips` IPs in a fresh /16, measuring after each step."""
    n = b.plan.ips
    name = "with keys" if keyed else "without keys"
    pn = await b.ipam.create_private_network(REGION, b.project_id, None, f"storage-{pass_no}",
                                             subnets=[f"10.{100 + pass_no}.0.0/16"])
    keys = [str(uuid.uuid4()) for _ in range(n)] if keyed else []

    async def book(i: int) -> IPRecord:
        return await b.ipam.book(AddressAsk(
            region=REGION, project_id=b.project_id, private_network_id=pn.id,
            idempotency_key=keys[i] if keyed else None, idempotency_scope=SCOPE))

    b.log(f"  {name}: booking {n:,} IPs")
    booked = await b.run_all(n, b.plan.book_concurrency, book)
    after_book = await b.measure(f"{name}: booked")
    records = booked.pop("answers")
    ids = [records[i].id for i in sorted(records)]

    async def attach(i: int) -> IPRecord:
        return await b.ipam.attach(ids[i], Resource.custom(_mac(pass_no, i), f"vm-{i:06d}"),
                                   idempotency_key=f"{keys[i]}-a" if keyed else None,
                                   idempotency_scope=SCOPE)

    b.log(f"  {name}: attaching them")
    attached = await b.run_all(len(ids), b.plan.attach_concurrency, attach)
    after_attach = await b.measure(f"{name}: attached")
    answers = attached.pop("answers")
    out: dict[str, Any] = {
        "name": name, "keyed": keyed, "private_network_id": pn.id,
        "book": booked, "attach": attached,
        "per_booked_ip": _delta(after_book, start, n),
        "per_attached_ip": _delta(after_attach, start, n),
        "attach_adds_per_ip": _delta(after_attach, after_book, n),
        "measurements": [after_book, after_attach]}
    if keyed:
        out["idempotency"] = await _records(b, pn.id, records, answers)
    return out


async def _records(b: Bench, pn_id: str, booked: dict[int, IPRecord],
                   attached: dict[int, IPRecord]) -> dict[str, Any]:
    """The idempotency records of a keyed pass, alone: bytes each, against what the whole
    first record costed (format 1), computed for the same answers."""
    kvs, _ = await b.store.scan(b.ipam.keys.idempotency(SCOPE, ""))
    value = sum(len(kv.value) for kv in kvs)
    key = sum(len(kv.key.encode()) for kv in kvs)
    fp = fingerprint("book", {"any": "digest"})  # every digest has the same length
    old = sum(len(json.dumps({"fingerprint": fp, "result": r.to_json()}).encode())
              for r in [*booked.values(), *attached.values()])
    n = max(1, len(kvs))
    return {"records": len(kvs), "expected": len(booked) + len(attached),
            "key_bytes": round(key / n, 1), "value_bytes": round(value / n, 1),
            "format1_value_bytes": round(old / max(1, len(booked) + len(attached)), 1)}


def capacity(per_ip: float, per_record: float, retention: int) -> dict[str, Any]:
    """IPs that fit in the default and the recommended maximum quota; keyed requests per
    second the same space holds over the retention instead."""
    out = {}
    for label, quota in (("2GiB", DEFAULT_QUOTA_BYTES), ("8GiB", RECOMMENDED_MAX_QUOTA)):
        out[label] = {"attached_ips": int(quota / per_ip) if per_ip > 0 else None,
                      "keyed_requests_per_s_over_retention":
                          round(quota / per_record / retention, 1) if per_record > 0 else None}
    return out


async def run(cluster: EtcdCluster, plan: Plan, quiet: bool) -> dict[str, Any]:
    t_start = time.monotonic()
    # A physical compaction and a defragmentation of 100,000s of keys take seconds.
    ipam = await IPAM.connect(cluster.endpoints, prefix=PREFIX, timeout=SETTLE_TIMEOUT)
    b = Bench(plan, ipam, cluster, str(uuid.uuid4()), quiet)
    try:
        start = await b.measure("start")
        b.log(f"start: etcd database {start['db_size'] / MIB:.2f} MiB")
        without = await one_pass(b, 1, False, start)
        middle = without["measurements"][-1]
        with_ = await one_pass(b, 2, True, middle)
        await b.drop_leased()
        held = await b.measure("IPs held, without leased keys")
        report = await audit(b.store, ipam.keys)
        ips = (await b.store.count(ipam.keys.ip()))[0]
    finally:
        await ipam.close()
    passes = [without, with_]
    problems = [f"{p['name']}: {p[op]['errors']} {op} failed, e.g. {p[op]['error_examples']}"
                for p in passes for op in ("book", "attach") if p[op]["errors"]]
    checks = [{"name": "every booking and attach acknowledged", "ok": not problems,
               "problems": problems}]
    expected = 2 * plan.ips
    checks.append({"name": "etcd holds exactly the IPs booked", "ok": ips == expected,
                   "problems": [] if ips == expected else [f"{ips} IP records, not {expected}"]})
    rec = with_["idempotency"]
    checks.append({"name": "one idempotency record per keyed request",
                   "ok": rec["records"] == rec["expected"],
                   "problems": [] if rec["records"] == rec["expected"] else [str(rec)]})
    checks.append({"name": "audit", "ok": report.ok,
                   "problems": [] if report.ok else [str(report)]})
    per_held_ip = _delta(held, start, 2 * plan.ips)
    per_ip = per_held_ip["db_in_use_bytes"]
    per_record = (with_["per_attached_ip"]["db_in_use_bytes"]
                  - without["per_attached_ip"]["db_in_use_bytes"]) / 2  # 2 a keyed IP
    return {
        "bench": "storage", "quick": plan.quick,
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "plan": dataclasses.asdict(plan), "start": start, "passes": passes,
        "per_held_ip": per_held_ip, "held": held,
        "db_bytes_per_idempotency_record": round(per_record, 1),
        "idempotency_retention_s": IDEMPOTENCY_RETENTION,
        "capacity": capacity(per_ip, per_record, IDEMPOTENCY_RETENTION),
        "checks": checks, "verified": all(c["ok"] for c in checks),
        "wall_s": round(time.monotonic() - t_start, 1),
    }


def table(doc: dict[str, Any]) -> str:
    n = doc["plan"]["ips"]
    lines = [f"etcd bytes per IP ({n:,} IPs a pass; after compaction + defragmentation):",
             f"  {'':<28}{'db (file)':>10}{'db in use':>11}{'keyspace':>10}{'keys':>6}"]
    for p in doc["passes"]:
        for label in ("per_booked_ip", "per_attached_ip"):
            d = p[label]
            lines.append(f"  {p['name'] + ', ' + label[4:].replace('_', ' '):<28}"
                         f"{d['db_bytes']:>10,.0f}{d['db_in_use_bytes']:>11,.0f}"
                         f"{d['keyspace_bytes']:>10,.0f}{d['keys']:>6}")
        lines.append(f"    keyspace by kind, attached: {p['per_attached_ip']['keyspace_by_kind']}")
        if "idempotency" in p:
            r = p["idempotency"]
            lines.append(f"    idempotency records: {r['records']:,}, key {r['key_bytes']} B + "
                         f"value {r['value_bytes']} B each (the whole first record, format 1: "
                         f"{r['format1_value_bytes']} B)")
    d = doc["per_held_ip"]
    lines.append(f"  {'attached IP held, no leased':<28}{d['db_bytes']:>10,.0f}"
                 f"{d['db_in_use_bytes']:>11,.0f}{d['keyspace_bytes']:>10,.0f}{d['keys']:>6}"
                 f"   ({'/'.join(LEASED_KINDS)} keys deleted)")
    lines.append(f"  etcd database per idempotency record: "
                 f"{doc['db_bytes_per_idempotency_record']:,.0f} B")
    for label, c in doc["capacity"].items():
        lines.append(f"capacity at {label}: {c['attached_ips']:,} attached IPs held, "
                     f"or {c['keyed_requests_per_s_over_retention']:,} keyed requests/s "
                     f"sustained over the {doc['idempotency_retention_s']} s retention")
    lines.append(results.self_checks_line(doc["checks"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench storage", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1,000 IPs a pass, seconds")
    ap.add_argument("--ips", type=int, default=None,
                    help="IPs booked then attached in each pass (default 20000)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"),
                    help="directory of the JSON result")
    ap.add_argument("--quiet", action="store_true", help="no progress, only the table")
    args = ap.parse_args(argv)
    plan = Plan.make(args.quick, args.ips)
    t0 = time.monotonic()
    print(f"bench storage{' --quick' if plan.quick else ''}: starting one etcd member",
          flush=True)
    with EtcdCluster(1, name_prefix="bench-storage") as cluster:
        doc = asyncio.run(run(cluster, plan, args.quiet))
    path = results.write("storage", doc["quick"], doc, Path(args.out))
    print(table(doc))
    print(f"\nwrote {path} in {time.monotonic() - t0:.0f}s")
    return 0 if doc["verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
