"""`python -m bench lists`: list pages without scans, as ratios to a raw etcd read of one
page in the same run.

One run starts one etcd member (devcluster) and works through `allocator.contract.IPAM`
in this process (no HTTP: what is measured is the allocator's reading):

  1  fill: book `fill` IPs in one IPv4 /16 of one project's Private Network (C=256),
     untimed; `needles` of them carry the tag "needle", one in ten the tag "common",
     `attached` are booked attached to a custom resource (a MAC)
  2  raw: one etcd range read of 100 IP records (`limit`), `repeat` times: the ceiling
     a page is compared with
  3  walks: every page at page_size 100, page 1, 2, 3... until a short page (what the
     SDK's `list_i_ps_all` does), on one node: by project (the default order), by
     Private Network (default order, and oldest first), an admin's whole region
  4  afresh: the first, middle and last page of the project walk, each on a node
     without its walk (a page asked on another node: the cost every page had before
     walks, (N-1)*100 + 100 keys)
  5  filters, `repeat` times each: tag "needle", tag "common" (first page),
     mac_address, resource_id

Reported: each walk's total seconds, per-page latency and per-page / raw; each
filter's median and median / raw. Targets: paging every page by project <= 1 s; the
"needle" filter (10 of 20k IPs) <= 10 ms, median.

Self-checks (exit status 1 if one fails): every walk returns every IP exactly once and
the same total on every page; each filter returns exactly the IPs it should; an audit
of the whole prefix (the tag index included) at the end.
Result: `lists[-quick]-<time>.json` under `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from allocator.contract import IPAM, AddressAsk, IPFilter, IPRecord, Resource
from allocator.store import EtcdStore, prefix_end
from devcluster.etcd import EtcdCluster

from . import results
from .rig import ROOT
from .stats import summary
from .verify import full_audit

REGION = "fr-par"
PAGE_SIZE = 100
TARGET_WALK_S = 1.0
TARGET_TAG_MS = 10.0


@dataclass
class Plan:
    """Counts of one run; --quick shrinks them, never the checks."""

    quick: bool
    fill: int
    needles: int = 10
    attached: int = 10
    repeat: int = 50
    fill_concurrency: int = 256

    @classmethod
    def make(cls, quick: bool) -> Plan:
        return cls(True, fill=1_000, repeat=10) if quick else cls(False, fill=20_000)


@dataclass
class World:
    ipam: IPAM
    project_id: str
    pn_id: str
    ids: set[str]
    needles: set[str]
    common: set[str]
    macs: dict[str, str]  # mac -> ip id
    resources: dict[str, str]  # resource id -> ip id


def _log(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, flush=True)


async def fill(ipam: IPAM, plan: Plan) -> World:
    project = str(uuid.uuid4())
    pn = await ipam.create_private_network(REGION, project, None, "lists",
                                           subnets=["10.40.0.0/16"])
    w = World(ipam, project, pn.id, set(), set(), set(), {}, {})
    issued = 0

    async def worker() -> None:
        nonlocal issued
        while issued < plan.fill:
            i = issued
            issued += 1
            tags = ("needle",) if i < plan.needles else ("common",) if i % 10 == 0 else ()
            mac = f"02:00:00:00:{i // 256:02x}:{i % 256:02x}" if (
                plan.needles <= i < plan.needles + plan.attached) else None
            r = await ipam.book(AddressAsk(
                region=REGION, project_id=project, private_network_id=pn.id, tags=tags,
                resource=Resource.custom(mac) if mac else None))
            w.ids.add(r.id)
            if "needle" in tags:
                w.needles.add(r.id)
            if "common" in tags:
                w.common.add(r.id)
            if mac and r.resource:
                w.macs[mac] = r.id
                w.resources[r.resource.id] = r.id

    await asyncio.gather(*(worker() for _ in range(plan.fill_concurrency)))
    return w


async def timed(repeat: int, call: Callable[[], Awaitable[Any]]) -> tuple[list[float], Any]:
    """`repeat` runs of `call`: (durations, the last result)."""
    durations, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = await call()
        durations.append(time.perf_counter() - t0)
    return durations, result


async def raw_page(store: EtcdStore, ipam: IPAM, repeat: int) -> dict[str, Any]:
    """Raw etcd reads of one page of IP records: the ceiling a page is compared with.

    `bounded`, the ratios' denominator: a range over exactly PAGE_SIZE records (start and
    end keys known). `limit`: the prefix with a limit, which etcd 3.4 answers after
    walking its in-memory index over the whole prefix (to count it): what a read from a
    cursor to the end of an index costs there.
    """
    prefix = ipam.keys.ip()
    first = await store.range(prefix, prefix_end(prefix), limit=PAGE_SIZE + 1, keys_only=True)
    start, end = first.kvs[0].key, first.kvs[-1].key
    bounded, resp = await timed(repeat, lambda: store.range(start.decode(), end))
    limited, _ = await timed(repeat, lambda: store.range(prefix, prefix_end(prefix),
                                                         limit=PAGE_SIZE))
    return {"what": f"etcd range of {len(resp.kvs)} IP records", "keys": len(resp.kvs),
            "bounded": summary(bounded), "limit": summary(limited),
            "p50_ms": summary(bounded)["p50_ms"]}


async def walk(ipam: IPAM, flt: IPFilter, order_by: str, expected: set[str]
               ) -> dict[str, Any]:
    """Every page, 1, 2, 3... until a short one, as the SDK's `list_i_ps_all` does."""
    seen: list[str] = []
    totals: set[int] = set()
    latencies: list[float] = []
    resumed0 = ipam.queries.walks.resumed
    page = 1
    t_start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        got, total = await ipam.list_ips(flt, order_by, page, PAGE_SIZE)
        latencies.append(time.perf_counter() - t0)
        totals.add(total)
        seen += [r.id for r in got]
        if len(got) < PAGE_SIZE:
            break
        page += 1
    elapsed = time.perf_counter() - t_start
    problems = []
    if len(seen) != len(set(seen)):
        problems.append(f"{len(seen) - len(set(seen))} IPs came twice")
    if set(seen) != expected:
        problems.append(f"{len(expected - set(seen))} missing, {len(set(seen) - expected)} "
                        "unexpected")
    if totals != {len(expected)}:
        problems.append(f"totals {sorted(totals)[:5]}, expected {len(expected)}")
    return {"order_by": order_by, "pages": page, "ips": len(seen), "total_s": round(elapsed, 3),
            "page": summary(latencies), "resumed": ipam.queries.walks.resumed - resumed0,
            "ok": not problems, "problems": problems}


async def afresh(ipam: IPAM, flt: IPFilter, pages: list[int]) -> list[dict[str, Any]]:
    """Single pages read without a walk (as on a node that served no earlier page)."""
    out = []
    for page in pages:
        durations = []
        for _ in range(3):
            ipam.queries.walks = type(ipam.queries.walks)()
            t0 = time.perf_counter()
            await ipam.list_ips(flt, "created_at_desc", page, PAGE_SIZE)
            durations.append(time.perf_counter() - t0)
        out.append({"page": page, "p50_ms": round(1000 * statistics.median(durations), 3)})
    return out


async def filters(w: World, plan: Plan) -> list[dict[str, Any]]:
    """Each indexed filter, `repeat` times: median latency and whether it is exact."""
    ipam = w.ipam
    mac, mac_ip = next(iter(w.macs.items()))
    rid, rid_ip = next(iter(w.resources.items()))
    visible = frozenset({w.project_id})
    cases: list[tuple[str, IPFilter, set[str]]] = [
        (f"tag 'needle' ({len(w.needles)} IPs), project-scoped caller",
         IPFilter(tags=("needle",), region=REGION, project_ids=visible), w.needles),
        (f"tag 'needle' ({len(w.needles)} IPs), admin",
         IPFilter(tags=("needle",), region=REGION), w.needles),
        (f"tag 'common' ({len(w.common)} IPs), first page",
         IPFilter(tags=("common",), region=REGION, project_ids=visible), w.common),
        ("mac_address", IPFilter(mac_address=mac, region=REGION), {mac_ip}),
        ("resource_id", IPFilter(resource_id=rid, region=REGION), {rid_ip}),
    ]
    out = []
    for name, flt, expected in cases:
        async def call(flt: IPFilter = flt) -> tuple[list[IPRecord], int]:
            return await ipam.list_ips(flt, "created_at_desc", 1, PAGE_SIZE)

        durations, (got, total) = await timed(plan.repeat, call)
        ok = total == len(expected) and {r.id for r in got} <= expected and (
            len(got) == min(PAGE_SIZE, len(expected)))
        out.append({"filter": name, "matches": total, "ok": ok, **summary(durations)})
    return out


async def run(cluster: EtcdCluster, plan: Plan, quiet: bool) -> dict[str, Any]:
    t_start = time.monotonic()
    prefix = f"/bench-lists/{uuid.uuid4().hex[:8]}/"
    ipam = await IPAM.connect(cluster.endpoints, prefix=prefix)
    try:
        store = ipam.store
        assert isinstance(store, EtcdStore)  # IPAM.connect makes one
        _log(quiet, f"  filling {plan.fill:,} IPs")
        t0 = time.perf_counter()
        w = await fill(ipam, plan)
        fill_s = round(time.perf_counter() - t0, 1)
        raw = await raw_page(store, ipam, plan.repeat)
        raw_ms = raw["p50_ms"]
        _log(quiet, f"  raw etcd page read: {raw_ms} ms (median; {raw['limit']['p50_ms']} ms "
                    "as a prefix with a limit)")
        by_project = IPFilter(project_id=w.project_id, region=REGION,
                              project_ids=frozenset({w.project_id}))
        walk_cases = [
            ("by project", by_project, "created_at_desc"),
            ("by Private Network", IPFilter(private_network_id=w.pn_id, region=REGION),
             "created_at_desc"),
            ("by Private Network, oldest first",
             IPFilter(private_network_id=w.pn_id, region=REGION), "created_at_asc"),
            ("admin, whole region", IPFilter(region=REGION), "created_at_desc"),
        ]
        walks = []
        for name, flt, order in walk_cases:
            r = {"name": name, **await walk(ipam, flt, order, w.ids)}
            r["page_over_raw"] = round(r["page"]["mean_ms"] / raw_ms, 2) if raw_ms else None
            walks.append(r)
            _log(quiet, f"  walk {name}: {r['pages']} pages in {r['total_s']} s")
        last = -(-plan.fill // PAGE_SIZE)
        fresh = await afresh(ipam, by_project, [1, max(1, last // 2), last])
        for f in fresh:
            f["over_raw"] = round(f["p50_ms"] / raw_ms, 2) if raw_ms else None
        found = await filters(w, plan)
        for f in found:
            f["over_raw"] = round(f["p50_ms"] / raw_ms, 2) if raw_ms else None
        t0 = time.perf_counter()
        audit = await full_audit(store, ipam.keys)
        audit["seconds"] = round(time.perf_counter() - t0, 1)
    finally:
        await ipam.close()
    checks = [{"name": f"walk {r['name']}", "ok": r["ok"], "problems": r["problems"]}
              for r in walks]
    checks += [{"name": f"filter {f['filter']}", "ok": f["ok"], "problems":
                [] if f["ok"] else [f"{f['matches']} matches"]} for f in found]
    checks.append({"name": "audit", "ok": audit["ok"],
                   "problems": [] if audit["ok"] else [str(audit)]})
    project_walk, needle = walks[0], found[0]
    return {
        "bench": "lists", "quick": plan.quick,
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(),  # the machine may be shared: its load
                    "load": [round(x, 2) for x in os.getloadavg()]},
        "plan": dataclasses.asdict(plan), "fill_s": fill_s, "raw_page": raw,
        "walks": walks, "afresh": fresh, "filters": found, "audit": audit, "checks": checks,
        "verified": all(c["ok"] for c in checks),
        "targets": [
            {"target": f"every page by project, page_size {PAGE_SIZE}",
             "measured": project_walk["total_s"], "bound": f"<= {TARGET_WALK_S} s",
             "met": project_walk["total_s"] <= TARGET_WALK_S,
             "detail": f"{project_walk['pages']} pages of {plan.fill:,} IPs"},
            {"target": "tag filter matching the needles", "measured": needle["p50_ms"],
             "bound": f"<= {TARGET_TAG_MS} ms", "met": needle["p50_ms"] <= TARGET_TAG_MS,
             "detail": f"{needle['matches']} of {plan.fill:,} IPs, median of {plan.repeat}"},
        ],
        "wall_s": round(time.monotonic() - t_start, 1),
    }


def table(doc: dict[str, Any]) -> str:
    raw = doc["raw_page"]
    lines = [(f"{doc['plan']['fill']:,} IPs (filled in {doc['fill_s']} s); raw etcd read of "
              f"one page ({raw['what']}): p50 {raw['p50_ms']} ms (as the prefix with a "
              f"limit: {raw['limit']['p50_ms']} ms); load average {doc['machine']['load']}"),
             "walks, every page at page_size 100 (per page: mean, p99; mean / raw):"]
    for r in doc["walks"]:
        lines.append(f"  {r['name']:<34} {r['order_by']:<16} {r['pages']:>4} pages "
                     f"{r['total_s']:>7.3f} s   {r['page']['mean_ms']:>7.2f} ms "
                     f"p99 {r['page']['p99_ms']:>7.2f} ms   x{r['page_over_raw']}")
    lines.append("afresh (no walk on this node), by project: " + ", ".join(
        f"page {f['page']} {f['p50_ms']} ms (x{f['over_raw']})" for f in doc["afresh"]))
    lines.append("filters (first page; median, p99; median / raw):")
    for f in doc["filters"]:
        lines.append(f"  {f['filter']:<48} {f['p50_ms']:>7.2f} ms  p99 {f['p99_ms']:>7.2f} ms"
                     f"   x{f['over_raw']}")
    lines += [results.target_line(t) for t in doc["targets"]]
    lines.append(results.self_checks_line(doc["checks"]))
    return "\n".join(lines)


def write(doc: dict[str, Any], out: Path) -> Path:
    """`lists[-quick]-<time>.json` under `out`."""
    return results.write("lists", doc["quick"], doc, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench lists", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1,000 IPs, a few seconds")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"),
                    help="directory of the JSON result")
    ap.add_argument("--quiet", action="store_true", help="no progress, only the table")
    args = ap.parse_args(argv)
    plan = Plan.make(args.quick)
    t0 = time.monotonic()
    print(f"bench lists{' --quick' if plan.quick else ''}: starting one etcd member",
          flush=True)
    with EtcdCluster(1, name_prefix="bench-lists") as cluster:
        doc = asyncio.run(run(cluster, plan, args.quiet))
    path = write(doc, Path(args.out))
    print(table(doc))
    print(f"\nwrote {path} in {time.monotonic() - t0:.0f}s")
    return 0 if doc["verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
