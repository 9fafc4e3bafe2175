"""`python -m bench compaction`: booking speed right after a bulk release, without and with
the compactor, as ratios to the speed right before it.

On etcd 3.4.23, deleting many keys slows later create-if-absent writes until the next
compaction (DESIGN.md section 4), and releases delete keys. One run starts one etcd
member (devcluster) and makes two passes, each on a fresh IPv4 /16 source, both through
`allocator.contract.IPAM` in this process:

  1  fill: book `fill` IPs (C=256), untimed
  2  before: book `measure` IPs at C=64, timed
  3  release `release` of the filled IPs with `release_set`, 100 IPs a call (what
     POST .../ip-sets/release does), a few calls at a time
  4  after: book `measure` IPs at C=64 at once, timed
  5  the same probe of raw etcd as in step 2 (see below)

Beside each measurement of bookings: etcd's CPU time per booking and per etcd request
(the committer packs many bookings into one request). And before and after, a probe of
raw etcd (`probe` create-if-absent transactions of one key each at C=64, keys left in
place, outside the prefix), what DESIGN.md's measurement used: on this machine the
slowdown after deletes is etcd CPU per request, which group commit spreads over many
bookings, and the probe shows it where bookings/s hardly can.

The first pass runs without a compactor (etcd's own is hourly: none happens); the
second with `allocator.compactor.Compactor` running from its start, with its deployment
defaults (`--retain-revisions`, `--compact-interval`, `--every-deletes`). Reported:
bookings/s before and after, after/before for each pass, with the counts.
Target: with the compactor, after/before >= 0.8.

Self-checks (exit status 1 if one fails): every booking and release acknowledged; etcd
holds exactly the expected addresses of each source, none twice, none released still
there (`bench.verify.check_run`); no compaction during the first pass, at least one
during the second and no compactor error; an audit of the whole prefix at the end.
Result: `compaction[-quick]-<time>.json` under `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import os
import platform
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from allocator.compactor import CHECK_INTERVAL, EVERY_DELETES, INTERVAL, RETAIN_REVISIONS, Compactor
from allocator.contract import IPAM, AddressAsk, PrivateNetwork
from allocator.errors import StoreError
from allocator.lifecycle import MAX_RELEASE_SET
from allocator.store import EtcdStore
from allocator.txn import GuardedTxn
from devcluster.etcd import EtcdCluster

from . import results
from .ceiling import RECORD_SIZE
from .rig import ROOT, cpu_seconds
from .stats import summary
from .verify import check_run, full_audit

REGION = "fr-par"
TARGET = 0.8  # after / before, with the compactor
PROBE_VALUE = b"x" * RECORD_SIZE


@dataclass
class Plan:
    """Counts of one run; --quick and --scale shrink them, never the checks."""

    quick: bool
    fill: int  # IPs booked before the first measurement; the released ones are among them
    release: int
    measure: int  # bookings per measurement
    probe: int  # raw create-if-absent transactions per probe
    concurrency: int = 64
    fill_concurrency: int = 256
    release_concurrency: int = 4  # release_set calls in flight
    # The compactor of the second pass: as deployed, unless told otherwise.
    retain_revisions: int = RETAIN_REVISIONS
    compact_interval: float = INTERVAL
    every_deletes: int = EVERY_DELETES
    compact_check: float = CHECK_INTERVAL

    @classmethod
    def make(cls, quick: bool, scale: float) -> Plan:
        def n(x: int) -> int:
            return max(MAX_RELEASE_SET, int(x * scale))

        if quick:  # a tenth of the work: a tenth of the thresholds, so that they are met
            return cls(True, fill=n(2_500), release=n(2_000), measure=n(800), probe=n(800),
                       retain_revisions=100, every_deletes=EVERY_DELETES // 10)
        return cls(False, fill=n(25_000), release=n(20_000), measure=n(8_000), probe=n(8_000))


@dataclass
class Bench:
    plan: Plan
    ipam: IPAM
    cluster: EtcdCluster
    project_id: str
    quiet: bool
    _next_slash16: int = 20

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)

    @property
    def store(self) -> EtcdStore:
        assert isinstance(self.ipam.store, EtcdStore)  # IPAM.connect makes one
        return self.ipam.store

    def etcd_cpu(self) -> float:
        return sum(cpu_seconds(m.process.pid) for m in self.cluster.members if m.process)

    async def network(self, name: str) -> PrivateNetwork:
        """A Private Network of one fresh /16 (10.N.0.0/16)."""
        cidr = f"10.{self._next_slash16}.0.0/16"
        self._next_slash16 += 1
        return await self.ipam.create_private_network(REGION, self.project_id, None, name,
                                                      subnets=[cidr])

    async def book(self, pn: PrivateNetwork, count: int, c: int) -> dict[str, Any]:
        """`count` bookings in `pn` at concurrency `c`: rate, latency, the IPs, errors."""
        latencies: list[float] = []
        acked: list[list[str]] = []
        errors: list[str] = []
        issued = 0

        async def worker() -> None:
            nonlocal issued
            while issued < count:
                issued += 1
                t0 = time.perf_counter()
                try:
                    r = await self.ipam.book(AddressAsk(region=REGION, project_id=self.project_id,
                                                        private_network_id=pn.id))
                except Exception as err:  # noqa: BLE001 - counted, and the run fails its check
                    errors.append(f"{type(err).__name__}: {err}")
                    continue
                latencies.append(time.perf_counter() - t0)
                acked.append([r.id, r.address, pn.id])

        cpu0, requests0 = self.etcd_cpu(), self.ipam.committer.requests
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(c)))
        elapsed = time.perf_counter() - t0
        cpu, requests = self.etcd_cpu() - cpu0, self.ipam.committer.requests - requests0
        return {"count": count, "concurrency": c, "ok": len(acked), "errors": len(errors),
                "error_examples": errors[:3], "elapsed_s": round(elapsed, 3),
                "per_s": round(len(acked) / elapsed, 1), "latency": summary(latencies),
                "etcd_requests": requests,
                "etcd_cpu_ms_per_booking": round(1000 * cpu / max(1, len(acked)), 4),
                "etcd_cpu_ms_per_request": round(1000 * cpu / max(1, requests), 4),
                "acked": acked}

    async def probe(self) -> dict[str, Any]:
        """Raw etcd: create-if-absent transactions of one fresh key each, at C=64."""
        run = f"/bench-compaction-probe/{uuid.uuid4().hex}/"
        count, failed, issued = self.plan.probe, 0, 0

        async def worker() -> None:
            nonlocal issued, failed
            while issued < count:
                key = f"{run}{issued:09d}"
                issued += 1
                txn = GuardedTxn().absent("key", key).put(key, PROBE_VALUE)
                try:
                    if not (await self.store.txn(txn.compares(), txn.writes)).succeeded:
                        failed += 1
                except StoreError:
                    failed += 1

        cpu0 = self.etcd_cpu()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(self.plan.concurrency)))
        elapsed, cpu = time.perf_counter() - t0, self.etcd_cpu() - cpu0
        return {"count": count, "failed": failed, "elapsed_s": round(elapsed, 3),
                "per_s": round((count - failed) / elapsed, 1),
                "etcd_cpu_ms_per_request": round(1000 * cpu / count, 4)}

    async def release(self, ip_ids: list[str]) -> dict[str, Any]:
        """Release `ip_ids` in sets of MAX_RELEASE_SET, a few sets in flight."""
        batches = [ip_ids[i:i + MAX_RELEASE_SET] for i in range(0, len(ip_ids), MAX_RELEASE_SET)]
        errors: list[str] = []
        _, rev0 = await self.store.count(self.ipam.keys.prefix)

        async def worker() -> None:
            while batches:
                batch = batches.pop()
                try:
                    await self.ipam.release_set(batch)
                except Exception as err:  # noqa: BLE001 - counted, and the run fails its check
                    errors.append(f"{type(err).__name__}: {err}")

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(self.plan.release_concurrency)))
        elapsed = time.perf_counter() - t0
        _, rev1 = await self.store.count(self.ipam.keys.prefix)
        return {"count": len(ip_ids), "errors": len(errors), "error_examples": errors[:3],
                "elapsed_s": round(elapsed, 3), "per_s": round(len(ip_ids) / elapsed, 1),
                "revisions": rev1 - rev0}

    async def never_compacted(self) -> bool:
        """Whether etcd still has its first revision (no compaction ever)."""
        try:
            await self.store.range(self.ipam.keys.prefix, revision=1)
        except StoreError:
            return False
        return True


async def one_pass(b: Bench, name: str, compactor: Compactor | None) -> dict[str, Any]:
    """Fill, measure, release in bulk, measure again, check: one pass's result."""
    p = b.plan
    pn = await b.network(f"compaction-{name}")
    await b.book(pn, 1, 1)  # the source's first booking loads its cache: not timed
    b.log(f"  {name}: filling {p.fill} IPs")
    fill = await b.book(pn, p.fill, p.fill_concurrency)
    probe_before = await b.probe()
    before = await b.book(pn, p.measure, p.concurrency)
    b.log(f"  {name}: before {before['per_s']:,.0f} bookings/s; releasing {p.release} IPs")
    done = compactor.compactions if compactor else 0
    released_ids = [ip for ip, _, _ in fill["acked"][:p.release]]
    release = await b.release(released_ids)
    at_after = compactor.compactions if compactor else 0
    after = await b.book(pn, p.measure, p.concurrency)
    probe_after = await b.probe()
    ratio = round(after["per_s"] / before["per_s"], 3) if before["per_s"] else None
    probe_ratio = (round(probe_after["per_s"] / probe_before["per_s"], 3)
                   if probe_before["per_s"] else None)
    b.log(f"  {name}: after {after['per_s']:,.0f} bookings/s: after/before {ratio} "
          f"(raw etcd probe: {probe_ratio})")
    alive = fill["acked"][p.release:] + before["acked"] + after["acked"]
    check = await check_run(b.store, b.ipam.keys, [s.id for s in pn.subnets], alive,
                            released_ids, len(alive) + 1)  # + the warm-up booking
    problems = [f"{r['errors']} {what} failed, e.g. {r['error_examples']}"
                for what, r in (("bookings", fill), ("bookings", before),
                                ("releases", release), ("bookings", after)) if r["errors"]]
    problems += [f"{r['failed']} probe transactions failed" for r in (probe_before, probe_after)
                 if r["failed"]]
    if not check["ok"]:
        problems.append(f"etcd check: {check}")
    out: dict[str, Any] = {
        "name": name, "compactor": compactor is not None, "private_network_id": pn.id,
        "fill": _public(fill), "before": _public(before), "release": release,
        "after": _public(after), "after_over_before": ratio,
        "probe_before": probe_before, "probe_after": probe_after,
        "probe_after_over_before": probe_ratio, "etcd_check": check}
    if compactor is None:
        if not await b.never_compacted():
            problems.append("etcd was compacted during the pass without a compactor")
    else:
        out["compactions"] = {"during_pass": compactor.compactions,
                              "during_release": at_after - done,
                              "during_after": compactor.compactions - at_after,
                              "compacted_revision": compactor.compacted_revision,
                              "errors": compactor.errors}
        if compactor.compactions == 0:
            problems.append("the compactor never compacted")
        if compactor.errors:
            problems.append(f"compactor errors: {compactor.last_error}")
    out["verify"] = {"ok": not problems, "problems": problems}
    return out


def _public(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k != "acked"}


async def run(cluster: EtcdCluster, plan: Plan, quiet: bool) -> dict[str, Any]:
    t_start = time.monotonic()
    prefix = f"/bench-compaction/{uuid.uuid4().hex[:8]}/"
    ipam = await IPAM.connect(cluster.endpoints, prefix=prefix)
    b = Bench(plan, ipam, cluster, str(uuid.uuid4()), quiet)
    compactor = Compactor(b.store, ipam.keys, retain_revisions=plan.retain_revisions,
                          interval=plan.compact_interval, every_deletes=plan.every_deletes,
                          check_interval=plan.compact_check)
    try:
        b.log("pass 1, without a compactor:")
        without = await one_pass(b, "without compactor", None)
        b.log(f"pass 2, with the compactor (keeps {plan.retain_revisions} revisions; compacts "
              f"every {plan.compact_interval:g}s, {plan.retain_revisions} revisions or "
              f"{plan.every_deletes} deleted keys):")
        await compactor.start()
        try:
            with_ = await one_pass(b, "with compactor", compactor)
        finally:
            await compactor.close()
        t0 = time.perf_counter()
        audit = await full_audit(b.store, ipam.keys)
        audit["seconds"] = round(time.perf_counter() - t0, 1)
    finally:
        await ipam.close()
    passes = [without, with_]
    checks = [{"name": p["name"], **p["verify"]} for p in passes]
    checks.append({"name": "audit", "ok": audit["ok"],
                   "problems": [] if audit["ok"] else [str(audit)]})
    ratio = with_["after_over_before"]
    return {
        "bench": "compaction", "quick": plan.quick,
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "plan": dataclasses.asdict(plan), "passes": passes, "audit": audit, "checks": checks,
        "verified": all(c["ok"] for c in checks),
        "targets": [{"target": "after/before with the compactor", "measured": ratio,
                     "bound": f">= {TARGET}", "met": None if ratio is None else ratio >= TARGET,
                     "detail": f"without it: {without['after_over_before']}; raw etcd probe "
                               f"{without['probe_after_over_before']} without, "
                               f"{with_['probe_after_over_before']} with"}],
        "wall_s": round(time.monotonic() - t_start, 1),
    }


def table(doc: dict[str, Any]) -> str:
    plan = doc["plan"]
    lines = [(f"right before / right after releasing {plan['release']:,} IPs of one /16, "
              f"C={plan['concurrency']}:")]
    for p in doc["passes"]:
        b, a, r = p["before"], p["after"], p["release"]
        pb, pa = p["probe_before"], p["probe_after"]
        lines += [
            f"  {p['name']}:",
            (f"    bookings/s      {b['per_s']:>8,.0f} ({b['ok']:,} in {b['elapsed_s']}s)"
             f" -> {a['per_s']:>8,.0f} ({a['ok']:,} in {a['elapsed_s']}s)"
             f"   after/before {p['after_over_before']}"),
            (f"    etcd CPU ms per booking {b['etcd_cpu_ms_per_booking']} -> "
             f"{a['etcd_cpu_ms_per_booking']}, per request {b['etcd_cpu_ms_per_request']} -> "
             f"{a['etcd_cpu_ms_per_request']} ({b['etcd_requests']} -> {a['etcd_requests']} "
             f"requests)"),
            (f"    raw etcd txns/s {pb['per_s']:>8,.0f} ({pb['count']:,} in {pb['elapsed_s']}s)"
             f" -> {pa['per_s']:>8,.0f} ({pa['count']:,} in {pa['elapsed_s']}s)"
             f"   after/before {p['probe_after_over_before']}; etcd CPU ms per txn "
             f"{pb['etcd_cpu_ms_per_request']} -> {pa['etcd_cpu_ms_per_request']}"),
            f"    release: {r['count']:,} IPs in {r['elapsed_s']}s, {r['revisions']} revisions"]
        if p["compactor"]:
            c = p["compactions"]
            lines[-1] += (f"; {c['during_pass']} compactions ({c['during_release']} during the "
                          f"release, {c['during_after']} during 'after')")
    lines += [results.target_line(t) for t in doc["targets"]]
    lines.append(results.self_checks_line(doc["checks"]))
    return "\n".join(lines)


def write(doc: dict[str, Any], out: Path) -> Path:
    """`compaction[-quick]-<time>.json` under `out`."""
    return results.write("compaction", doc["quick"], doc, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench compaction", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller counts, under a minute")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"),
                    help="directory of the JSON result")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every count")
    ap.add_argument("--retain-revisions", type=int, default=None,
                    help=f"the compactor's retained history in revisions (default "
                         f"{RETAIN_REVISIONS}, as deployed; --quick: 100)")
    ap.add_argument("--compact-interval", type=float, default=None,
                    help=f"the compactor's interval in seconds (default {INTERVAL:g})")
    ap.add_argument("--every-deletes", type=int, default=None,
                    help=f"the compactor's delete trigger (default {EVERY_DELETES}; "
                         "--quick: a tenth)")
    ap.add_argument("--quiet", action="store_true", help="no progress, only the table")
    args = ap.parse_args(argv)
    plan = Plan.make(args.quick, args.scale)
    if args.retain_revisions is not None:
        plan.retain_revisions = args.retain_revisions
    if args.compact_interval is not None:
        plan.compact_interval = args.compact_interval
    if args.every_deletes is not None:
        plan.every_deletes = args.every_deletes
    t0 = time.monotonic()
    print(f"bench compaction{' --quick' if plan.quick else ''}: starting one etcd member",
          flush=True)
    with EtcdCluster(1, name_prefix="bench-compaction") as cluster:
        doc = asyncio.run(run(cluster, plan, args.quiet))
    path = write(doc, Path(args.out))
    print(table(doc))
    print(f"\nwrote {path} in {time.monotonic() - t0:.0f}s")
    return 0 if doc["verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
