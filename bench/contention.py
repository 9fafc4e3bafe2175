"""`python -m bench contention`: booking under contention, as ratios to the etcd ceiling.

One run starts the reference topology (3 etcd members, 2 gateway nodes, haproxy),
measures the raw etcd ceiling at every concurrency, runs the scenarios of issue 4
through haproxy with the load generator in a process of its own, measures the
ceiling again, checks every run from etcd, evaluates the targets and writes
`contention-<time>.json` and `.png` under `--out`. Every write of the run (the load
generator's, the pre-fills', the cold start's) is recorded in one `bench.history`
History, checked against etcd after each scenario (`bench.history_check`: no address
held twice, nothing acknowledged lost, nothing made unanswered); `--no-history` leaves
it out, to measure what recording costs. Scenarios:

  a  empty IPv4 /16, C = 1, 16, 64, 256
  b  one /16 pre-filled to 0/50/90/99 %, booked at C=256, then until full;
     the latency of "exhausted" answers once it is
  c  pool size: uncontended (C=1) on a /24, a /16 and an IPv6 /64; the /64 under load
  d  100 Private Networks, the load spread across them
  e  lifecycle: book, attach, detach, release in a loop
  f  list: a region holding N IPs; one Private Network page by page (page_size 100),
     by mac_address and by resource_id
  g  cold start of a new gateway node on a source holding >= 60,000 IPs, and its
     memory with ten /16 sources warm
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from allocator import store as st
from allocator.contract import IPAM, AddressAsk, Caller, Resource
from allocator.errors import IPAMError

from . import ceiling, report, results
from .history import History, read_final_state
from .history_check import check
from .rig import ROOT, HttpError, Rig, http, rss_mib, stop_process
from .stats import summary
from .verify import check_run, full_audit

SCENARIOS = "abcdefg"
RUN_ORDER = "acdebfg"  # the big pre-fills last, so that early runs see a small etcd
REGION = "fr-par"
PRODUCT = "instance_server"


@dataclass
class Plan:
    """Counts and deadlines of one run; --quick shrinks counts, never the checks."""

    quick: bool
    concurrency: list[int]
    scenarios: str
    book_counts: dict[int, int]
    ceiling_counts: dict[int, int]
    run_seconds: float
    ceiling_seconds: float
    fill_levels: list[float]
    fill_measure: int
    exhausted_probes: int
    uncontended: int
    spread_concurrency: list[int]
    lifecycle: dict[int, int]
    region_ips: int
    list_pn_min: int
    list_samples: int
    list_pages: int
    fill_prefixlen: int = 16  # scenario b's pool
    cold_start_ips: int = 60_000  # scenario g's source holds at least this many
    audit_each_scenario: bool = True  # else once, at the end
    prefill_concurrency: int = 256
    bracket_seconds: float = 1.5
    record_history: bool = True  # record every write, check the history per scenario

    @classmethod
    def make(cls, quick: bool, scale: float, concurrency: list[int] | None,
             scenarios: str) -> Plan:
        cs = concurrency or [1, 16, 64, 256]

        def n(x: float) -> int:
            return max(1, int(x * scale))

        if quick:
            book = {1: 100, 16: 800, 64: 1500, 256: 2500}
            ceil = {1: 150, 16: 1500, 64: 3000, 256: 4000}
            p = cls(True, cs, scenarios, {}, {}, 8.0, 4.0, [0.0, 0.5, 0.9, 0.99], n(1000),
                    n(100), n(100), [max(cs)], {min(16, max(cs)): n(300)}, n(20_000),
                    n(2_000), n(50), 10)
            # Smaller pools for (b) and (g), one audit at the end: same checks, less time.
            p.fill_prefixlen, p.cold_start_ips, p.audit_each_scenario = 18, n(15_000), False
        else:
            book = {1: 400, 16: 4000, 64: 8000, 256: 12000}
            ceil = {1: 500, 16: 5000, 64: 10000, 256: 15000}
            p = cls(False, cs, scenarios, {}, {}, 30.0, 10.0, [0.0, 0.5, 0.9, 0.99], n(4000),
                    n(500), n(300), [c for c in cs if c >= 64] or [max(cs)],
                    {c: n(40 * c) for c in cs if c in (16, 64)} or {max(cs): n(1000)},
                    n(100_000), n(10_000), n(200), 100)
        p.book_counts = {c: n(book.get(c, 40 * c)) for c in cs}
        p.ceiling_counts = {c: n(ceil.get(c, 50 * c)) for c in cs}
        return p


@dataclass
class Context:
    """What every scenario shares: the rig, an IPAM for pre-fills, the tenant, results."""

    rig: Rig
    ipam: IPAM
    plan: Plan
    organization_id: str
    project_id: str
    token: str
    quiet: bool
    runs: list[dict[str, Any]] = field(default_factory=list)
    scenarios: dict[str, dict[str, Any]] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)  # pn id -> addresses held
    sources: dict[str, list[str]] = field(default_factory=dict)  # pn id -> source ids
    slash16: list[str] = field(default_factory=list)  # /16 Private Networks
    history: History | None = None  # every write of the run, when the plan records them
    checked: dict[str, dict[str, Any]] = field(default_factory=dict)  # scenario -> verdict
    _next16: int = 0

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)

    # -- the history ------------------------------------------------------------------

    def book_over_http(self, url: str, body: dict[str, Any]) -> Any:
        """`POST .../ips` to one node (not through haproxy), recorded; its JSON answer."""
        if self.history is None:
            return http(url, "POST", f"/ipam/v1/regions/{REGION}/ips", body, self.token)
        op = self.history.invoke("book", pool=body["source"]["private_network_id"])
        try:
            ip = http(url, "POST", f"/ipam/v1/regions/{REGION}/ips", body, self.token)
        except HttpError as err:
            self.history.answered(op, err.status)
            raise
        except OSError:
            self.history.answered(op, 0)
            raise
        self.history.answered(op, 200, ip)
        return ip

    async def check_history(self, scenario: str) -> None:
        """The whole history so far against etcd now (every rule of bench.history_check)."""
        if self.history is None:
            return
        t0 = time.monotonic()
        final = await read_final_state(self.ipam.store, self.ipam.keys)
        verdict = check(self.history.operations, final).summary()
        verdict["seconds"] = round(time.monotonic() - t0, 2)
        self.checked[scenario] = verdict
        self.log(f"  history after {scenario}: {'clean' if verdict['ok'] else 'VIOLATED'} "
                 f"({verdict['operations']} operations checked in {verdict['seconds']}s)"
                 + ("" if verdict["ok"] else f": {verdict['examples'][:3]}"))

    # -- Private Networks ------------------------------------------------------------

    def private_network(self, subnet: str, name: str) -> str:
        pn = self.rig.create_private_network(self.token, self.project_id, name, [subnet])
        self.held[pn["id"]] = 0
        self.sources[pn["id"]] = [s["id"] for s in pn["subnets"]]
        if subnet.endswith("/16"):
            self.slash16.append(pn["id"])
        return pn["id"]

    def new_slash16(self, name: str, prefixlen: int = 16) -> str:
        """A Private Network on the next free 10.N.0.0/16 slot (a /16, or a smaller block)."""
        subnet = f"10.{self._next16}.0.0/{prefixlen}"
        self._next16 += 1
        return self.private_network(subnet, name)

    def source_ids(self, pns: list[str]) -> list[str]:
        return [s for pn in pns for s in self.sources[pn]]

    async def bookable(self, pn: str) -> int:
        src = await self.ipam.networks.get_source(self.sources[pn][0])
        return int(src.bookable_count)

    # -- pre-fill through the allocator ---------------------------------------------------

    async def prefill(self, pn: str, count: int, *, attached: bool = False,
                      is_ipv6: bool = False) -> list[dict[str, str]]:
        """Book `count` IPs in `pn` through `allocator.IPAM` directly (no HTTP), fast."""
        made: list[dict[str, str]] = []
        errors = 0
        issued = 0
        caller = Caller(role="product", product_types=frozenset({PRODUCT}))
        deadline = time.monotonic() + max(60.0, count / 500)
        t0 = last = time.monotonic()

        async def worker() -> None:
            nonlocal issued, errors, last
            while issued < count and time.monotonic() < deadline:
                issued += 1
                res = None
                if attached:
                    mac = "02:" + ":".join(f"{random.randrange(256):02x}" for _ in range(5))
                    res = Resource.product(PRODUCT, str(uuid.uuid4()), mac)
                ask = AddressAsk(region=REGION, project_id=self.project_id, is_ipv6=is_ipv6,
                                 organization_id=self.organization_id, private_network_id=pn,
                                 resource=res)
                try:
                    if self.history is None:
                        r = await self.ipam.book(ask, caller)
                    else:
                        r = await self.history.call("book", self.ipam.book(ask, caller),
                                                    pool=pn, resource=res and res.id)
                except IPAMError as err:
                    errors += 1
                    if errors <= 3:
                        self.log(f"    pre-fill error: {type(err).__name__}: {err}")
                    continue
                made.append({"id": r.id, "address": r.address,
                             "mac": (res.mac_address or "") if res else "",
                             "resource_id": res.id if res else ""})
                if time.monotonic() - last > 2.0:
                    last = time.monotonic()
                    self.log(f"    pre-fill: {len(made)}/{count} "
                             f"({len(made) / (last - t0):,.0f}/s)")

        await asyncio.gather(*(worker() for _ in range(self.plan.prefill_concurrency)))
        self.held[pn] += len(made)
        self.log(f"    pre-filled {len(made)} in {time.monotonic() - t0:.1f}s"
                 f"{f' ({errors} errors)' if errors else ''}")
        if errors:
            raise RuntimeError(f"pre-fill of {pn}: {errors} bookings failed")
        return made

    # -- one gateway run ------------------------------------------------------------------

    async def bracket_ceiling(self, c: int) -> dict[str, Any]:
        """A short ceiling measurement at C, right before or after a run: the machine is
        shared and drifts, so each run is compared with the ceiling of its own minute."""
        n = min(self.plan.ceiling_counts.get(c, 50 * c), max(8 * c, 150))
        return await ceiling.measure(self.ipam.store, c, n, self.plan.bracket_seconds)

    async def gateway_run(self, scenario: str, label: str, job: dict[str, Any],
                          pns: list[str], **extra: Any) -> dict[str, Any]:
        """Run the load generator once, count etcd requests and CPU, verify from etcd."""
        job = {"url": self.rig.url, "token": self.token, "project_id": self.project_id,
               "region": REGION, "pns": pns, "label": f"{scenario} {label}",
               "quiet": self.quiet, "record": self.history is not None, **job}
        c = int(job.get("concurrency", 1))
        bracket = job["mode"] in ("book", "lifecycle") and not extra.get("exhausted_probe")
        before = await self.bracket_ceiling(c) if bracket else None
        m0, cpu0 = self.rig.etcd_requests(), self.rig.cpu()
        result = await run_loadgen(job, self.quiet)
        m1, cpu1 = self.rig.etcd_requests(), self.rig.cpu()
        after = await self.bracket_ceiling(c) if bracket else None
        if before and after:
            extra["ceiling_adjacent"] = {
                "before": before, "after": after,
                "per_s": round((before["per_s"] + after["per_s"]) / 2, 2),
                "p99_ms": round((before["latency"]["p99_ms"] + after["latency"]["p99_ms"]) / 2,
                                3)}
        cpu1["loadgen"] = result.pop("client_cpu_s", 0.0)
        cpu0["loadgen"] = 0.0
        if self.history is not None:
            record_loadgen_rows(self.history, result.pop("history", []))
        acked = result.pop("ips", [])
        released = result.pop("released", [])
        if job["mode"] == "book":
            for _, _, pn in acked:
                self.held[pn] += 1
        elif job["mode"] == "lifecycle":
            for pn in pns:
                self.held[pn] += sum(1 for x in acked if x[2] == pn)
        expected = sum(self.held[pn] for pn in pns) if job["mode"] != "list" else None
        verdict = await check_run(self.ipam.store, self.ipam.keys, self.source_ids(pns), acked,
                                  released, expected)
        booked = max(1, result.get("ok", 0)) if job["mode"] == "book" else None
        txn = m1.get("Txn", 0) - m0.get("Txn", 0)
        rng = m1.get("Range", 0) - m0.get("Range", 0)
        run = {
            "scenario": scenario, "label": label, "mode": job["mode"],
            "concurrency": job.get("concurrency", 1), **extra, **result,
            "etcd": {"txn": int(txn), "range": int(rng),
                     "txn_per_booking": round(txn / booked, 3) if booked else None,
                     "range_per_booking": round(rng / booked, 3) if booked else None},
            "client_retries": 0,
            "cpu_s": {k: round(cpu1[k] - cpu0[k], 2) for k in cpu1},
            "verify": verdict,
        }
        self.runs.append(run)
        self.log("  " + report.run_line(run))
        return run


def record_loadgen_rows(history: History, rows: list[list[Any]]) -> None:
    """The load generator's rows (`bench.loadgen.HISTORY_FIELDS`) into `history`."""
    for kind, subject, mac, t0, t1, status, error, answer_id, address in rows:
        body = ({"id": answer_id, "address": address} if answer_id
                else {"type": error.split(":", 1)[1]} if error else None)
        if kind == "book":
            history.record(kind, t0, t1, status, body, pool=subject)
        else:
            history.record(kind, t0, t1, status, body, ip_id=subject,
                           resource=Resource.custom(mac).id if mac else None)


async def run_loadgen(job: dict[str, Any], quiet: bool) -> dict[str, Any]:
    """`python -m bench.loadgen` with `job` on stdin; its JSON result (killed on timeout)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.loadgen", cwd=str(ROOT),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL if quiet else None)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(json.dumps(job).encode()),
                                        float(job.get("seconds", 30)) + 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator exited with {proc.returncode}")
    return json.loads(out)  # type: ignore[no-any-return]


# -- scenarios -----------------------------------------------------------------------------


async def empty_slash16(ctx: Context) -> None:
    """(a) an empty IPv4 /16, at every concurrency (a fresh /16 each)."""
    p = ctx.plan
    for c in p.concurrency:
        pn = ctx.new_slash16(f"a-c{c}")
        await ctx.gateway_run("a", f"/16 empty C={c}", {
            "mode": "book", "concurrency": c, "count": p.book_counts[c],
            "seconds": p.run_seconds}, [pn], pool="/16", fill=0.0)


async def slash16_filled_to_full(ctx: Context) -> None:
    """(b) one /16 filled to each level, booked at the top concurrency, then until full."""
    p = ctx.plan
    c = max(p.concurrency)
    pool = f"/{p.fill_prefixlen}"
    pn = ctx.new_slash16("b-fill", p.fill_prefixlen)
    ctx.scenarios["b"] = {"private_network_id": pn}
    size = await ctx.bookable(pn)
    for level in p.fill_levels:
        target = int(level * size)
        if target > ctx.held[pn]:
            ctx.log(f"  b: pre-filling to {level:.0%} ({target} of {size})")
            await ctx.prefill(pn, target - ctx.held[pn])
        # Measure without moving the fill level much: at most half of what is left
        # above the level, and at most `fill_measure`.
        room = size - ctx.held[pn]
        count = max(1, min(p.fill_measure, room // 2 if level > 0.9 else room))
        await ctx.gateway_run("b", f"{pool} at {level:.0%} C={c}", {
            "mode": "book", "concurrency": c, "count": count, "seconds": p.run_seconds},
            [pn], pool=pool, fill=round(ctx.held[pn] / size, 4), fill_level=level)
    ctx.log(f"  b: booking the last {size - ctx.held[pn]} addresses until exhausted")
    run = await ctx.gateway_run("b", f"{pool} until full C={c}", {
        "mode": "book", "concurrency": c, "count": size + p.exhausted_probes * 4,
        "seconds": max(p.run_seconds, 60.0), "until_exhausted": True,
        "exhausted_probes": p.exhausted_probes}, [pn], pool=pool,
        fill=round(ctx.held[pn] / size, 4), fill_level=1.0)
    ctx.scenarios["b"].update(held=ctx.held[pn], bookable=size,
                              full=run["verify"]["held"] == size)
    # What confirming "exhausted" costs etcd: one linearizable count of the source.
    lat = []
    for _ in range(20):
        t0 = time.perf_counter()
        await ctx.ipam.store.count(ctx.ipam.keys.addresses(ctx.sources[pn][0]))
        lat.append(time.perf_counter() - t0)
    ctx.scenarios["b"]["count_full_source"] = summary(lat)
    ctx.log(f"  b: one count of the full source: p50 {summary(lat)['p50_ms']} ms")
    # The same answer without 255 other clients queued in front of it.
    await ctx.gateway_run("b", f"{pool} full, probes C=1", {
        "mode": "book", "concurrency": 1, "count": p.exhausted_probes,
        "seconds": p.run_seconds, "until_exhausted": True,
        "exhausted_probes": p.exhausted_probes}, [pn], pool=pool, fill=1.0,
        exhausted_probe=True)


async def pool_sizes_and_ipv6(ctx: Context) -> None:
    """(c) uncontended cost on a /24, a /16 and a /64; then the /64 under load."""
    p = ctx.plan
    pools = {"/24": ctx.private_network("10.250.0.0/24", "c-24"),
             "/16": ctx.new_slash16("c-16"),
             "/64": ctx.private_network(f"fd{random.randrange(256):02x}:{random.randrange(65536):x}"
                                        ":1:2::/64", "c-64")}
    # One client, the three pools in turn: the same minutes of a drifting machine for all.
    each = min(p.uncontended, (await ctx.bookable(pools["/24"])) // 2)
    run = await ctx.gateway_run("c", "/24+/16+/64 interleaved C=1", {
        "mode": "book", "concurrency": 1, "count": 3 * each, "pick": "round_robin",
        "seconds": p.run_seconds, "ipv6_pns": {pools["/64"]: True}}, list(pools.values()),
        pool="/24+/16+/64", fill=0.0, uncontended=True,
        pools={pn: pool for pool, pn in pools.items()})
    ctx.log("  c: uncontended p50 by pool: " + ", ".join(
        f"{pool} {run['latency_by_pn'][pn]['p50_ms']} ms" for pool, pn in pools.items()))
    for c in p.concurrency:
        if c == 1:
            continue
        await ctx.gateway_run("c", f"/64 C={c}", {
            "mode": "book", "concurrency": c, "count": p.book_counts[c],
            "seconds": p.run_seconds, "is_ipv6": True}, [pools["/64"]], pool="/64", fill=0.0)


async def hundred_networks(ctx: Context) -> None:
    """(d) 100 Private Networks (/22 each), every booking from one picked at random."""
    p = ctx.plan
    t0 = time.monotonic()
    pns = [ctx.private_network(f"10.{64 + i // 64}.{(i % 64) * 4}.0/22", f"d-{i}")
           for i in range(100)]
    ctx.log(f"  d: 100 Private Networks created in {time.monotonic() - t0:.1f}s")
    for c in p.spread_concurrency:
        await ctx.gateway_run("d", f"100 x /22 C={c}", {
            "mode": "book", "concurrency": c, "count": p.book_counts[c],
            "seconds": p.run_seconds}, pns, pool="100x/22", fill=0.0)


async def lifecycle_loop(ctx: Context) -> None:
    """(e) book -> attach -> detach -> release, in a loop."""
    p = ctx.plan
    pn = ctx.new_slash16("e-lifecycle")
    for c, cycles in p.lifecycle.items():
        await ctx.gateway_run("e", f"lifecycle C={c}", {
            "mode": "lifecycle", "concurrency": c, "count": cycles,
            "seconds": p.run_seconds}, [pn], pool="/16")


async def region_listing(ctx: Context) -> None:
    """(f) list in a region of `region_ips` IPs: a PN page by page, by MAC, by resource."""
    p = ctx.plan
    present, _ = await ctx.ipam.store.count(ctx.ipam.keys.ip())
    need = max(p.list_pn_min, p.region_ips - present)
    ctx.log(f"  f: region holds {present} IPs; adding {need} attached IPs")
    made: list[dict[str, str]] = []
    list_pn = ""
    while need > 0:
        pn = ctx.new_slash16("f-list")
        list_pn = list_pn or pn
        part = min(need, await ctx.bookable(pn) - 1)
        made += await ctx.prefill(pn, part, attached=True)
        need -= part
    region_total, _ = await ctx.ipam.store.count(ctx.ipam.keys.ip())
    sample = random.sample(made, min(p.list_samples, len(made)))
    queries = ([{"kind": "mac_address", "query": f"mac_address={m['mac']}", "expect_total": 1}
                for m in sample]
               + [{"kind": "resource_id", "query": f"resource_id={m['resource_id']}",
                   "expect_total": 1} for m in sample])
    big = ctx.scenarios.get("b", {}).get("private_network_id")
    if big:  # first page of the full /16: the cost of one page on a large PN
        queries += [{"kind": "page_of_65k_pn",
                     "query": f"private_network_id={big}&page_size=100"}] * 3
    run = await ctx.gateway_run("f", f"list ({region_total} IPs in region)", {
        "mode": "list", "concurrency": 1, "queries": queries,
        "walk": {"query": f"private_network_id={list_pn}&page_size=100",
                 "max_pages": p.list_pages},
        "seconds": max(p.run_seconds, 120.0)}, [list_pn], pool="/16",
        region_ips=region_total, list_pn_ips=ctx.held[list_pn])
    run["verify"]["walk_total_exact"] = run.get("walk_total_count") == ctx.held[list_pn]
    # Data checks only: failed requests are reported under errors, not as lost data.
    run["verify"]["ok"] = (run["verify"]["ok"] and not run["mismatches"]
                           and run["verify"]["walk_total_exact"])


async def cold_start(ctx: Context) -> None:
    """(g) a new gateway node: time to its first booking on a source of >= 60,000 IPs."""
    big = ctx.scenarios.get("b", {}).get("private_network_id")
    if big is None or ctx.held[big] < ctx.plan.cold_start_ips:
        big = ctx.new_slash16("g-cold")
        await ctx.prefill(big, ctx.plan.cold_start_ips)
    # A full source would answer "exhausted": free a few addresses so that the first
    # booking is a real one (the source still holds well over 60,000 IPs).
    size = await ctx.bookable(big)
    if ctx.held[big] >= size:
        prefix = ctx.ipam.keys.addresses(ctx.sources[big][0])
        resp = await ctx.ipam.store.range(prefix, st.prefix_end(prefix), limit=10)
        for kv in resp.kvs:
            ip_id = kv.value.decode()
            if ctx.history is None:
                await ctx.ipam.release(ip_id)
            else:
                await ctx.history.call("release", ctx.ipam.release(ip_id), ip_id=ip_id)
            ctx.held[big] -= 1
    target = big if ctx.held[big] < size else None
    proc, url, t_spawn = ctx.rig.start_extra_gateway()
    out: dict[str, Any] = {"source_held": ctx.held[big]}
    acked: list[list[str]] = []
    try:
        deadline = time.perf_counter() + 30.0
        while True:  # bounded: 30 s
            try:
                http(url, "GET", "/readyz", timeout=1.0)
                break
            except (OSError, HttpError):
                if proc.poll() is not None or time.perf_counter() > deadline:
                    raise RuntimeError("the extra gateway node did not become ready")
                await asyncio.sleep(0.01)
        t_ready = time.perf_counter()
        body = {"project_id": ctx.project_id, "is_ipv6": False,
                "source": {"private_network_id": target or big}}
        status = "ok"
        try:
            ip = ctx.book_over_http(url, body)
            acked.append([ip["id"], ip["address"], target or big])
        except (HttpError, OSError) as err:  # out_of_stock on a full source: still an answer
            status = str(err)[:120]
        t_first = time.perf_counter()
        out.update(spawn_to_ready_s=round(t_ready - t_spawn, 3),
                   ready_to_first_booking_s=round(t_first - t_ready, 3),
                   spawn_to_first_booking_s=round(t_first - t_spawn, 3),
                   first_booking=status, answered_on_full_source=target is None)
        out["rss_after_first_mib"] = round(rss_mib(proc.pid), 1)
        warm = [pn for pn in ctx.slash16 if ctx.held[pn] < await ctx.bookable(pn)][:10]
        warm += [ctx.new_slash16(f"g-warm-{i}") for i in range(10 - len(warm))]
        t0 = time.perf_counter()
        warm_errors: list[str] = []
        for pn in warm:
            body["source"] = {"private_network_id": pn}
            try:
                ip = ctx.book_over_http(url, body)
            except HttpError as err:
                warm_errors.append(f"{pn}: {err}")
                continue
            acked.append([ip["id"], ip["address"], pn])
        if warm_errors:
            out["warm_errors"] = warm_errors
            out["node_log_tail"] = ctx.rig.extra_log_tail(-1)
            ctx.log(f"  g: {len(warm_errors)} warm-up bookings failed: {warm_errors[0]}\n"
                    f"{out['node_log_tail']}")
        out.update(warm_sources=len(warm), warm_s=round(time.perf_counter() - t0, 3),
                   warm_held=[ctx.held[pn] for pn in warm],
                   rss_ten_slash16_warm_mib=round(rss_mib(proc.pid), 1),
                   main_gateways_rss_mib=ctx.rig.gateway_rss_mib())
    finally:
        stop_process(proc)
    for _, _, pn in acked:
        ctx.held[pn] += 1
    pns = sorted({pn for _, _, pn in acked})
    out["verify"] = await check_run(ctx.ipam.store, ctx.ipam.keys, ctx.source_ids(pns), acked,
                                    (), sum(ctx.held[pn] for pn in pns))
    if out.get("warm_errors"):
        out["verify"]["ok"] = False
    ctx.scenarios["g"] = out
    ctx.log(f"  g: spawn->ready {out['spawn_to_ready_s']}s, ready->first booking "
            f"{out['ready_to_first_booking_s']}s on {out['source_held']} held; RSS with "
            f"{out['warm_sources']} /16 warm: {out['rss_ten_slash16_warm_mib']} MiB")


# Each scenario by the letter the command line and the report use.
RUNNERS = {"a": empty_slash16, "b": slash16_filled_to_full, "c": pool_sizes_and_ipv6,
           "d": hundred_networks, "e": lifecycle_loop, "f": region_listing, "g": cold_start}


# -- the whole run ---------------------------------------------------------------------------


async def run(rig: Rig, plan: Plan, quiet: bool) -> dict[str, Any]:
    """Every selected scenario between two ceiling sweeps; the result document."""
    t_start = time.monotonic()
    org, project = str(uuid.uuid4()), str(uuid.uuid4())
    key = rig.create_api_key(org, project)
    ipam = await IPAM.connect(rig.etcd_endpoints, prefix=rig.prefix)
    ctx = Context(rig, ipam, plan, org, project, key["secret_key"], quiet,
                  history=History() if plan.record_history else None)
    try:
        ctx.log("ceiling before (raw etcd create-if-absent txns, no HTTP):")
        def etcd_cpu() -> float:
            return rig.cpu()["etcd"]

        before = await ceiling.sweep(ipam.store, plan.ceiling_counts, plan.ceiling_seconds,
                                     ctx.log, etcd_cpu)
        reads = await ceiling.read_latency(ipam.store, 200, plan.ceiling_seconds)
        ctx.log(f"    linearizable read C=1: p50 {reads['p50_ms']} ms p99 {reads['p99_ms']} ms")
        audits: dict[str, Any] = {}
        last = [s for s in RUN_ORDER if s in plan.scenarios][-1]
        for s in RUN_ORDER:
            if s not in plan.scenarios:
                continue
            ctx.log(f"scenario {s}: {(RUNNERS[s].__doc__ or s).splitlines()[0]}")
            t0 = time.monotonic()
            await RUNNERS[s](ctx)
            t1 = time.monotonic()
            await ctx.check_history(s)
            if plan.audit_each_scenario or s == last:
                a = await full_audit(ipam.store, ipam.keys)
                a["seconds"] = round(time.monotonic() - t1, 1)
                audits[s] = a
                ctx.log(f"  audit after {s}: {'ok' if a['ok'] else 'FAILED'} ({a['records']} "
                        f"records in {a['seconds']}s; scenario {s} took {t1 - t0:.1f}s)")
        ctx.log("ceiling after:")
        after = await ceiling.sweep(ipam.store, plan.ceiling_counts, plan.ceiling_seconds,
                                    ctx.log, etcd_cpu)
        # The gateways expose no engine counters over HTTP; the pre-fill IPAM's are
        # the allocator's own view of batching and retries (no HTTP in front).
        prefill_engines = {sid: dataclasses.asdict(st) for sid, st in ipam.engine_stats().items()}
    finally:
        await ipam.close()
    doc = report.document(plan, before, after, ctx.runs, ctx.scenarios, audits)
    doc["prefill_engine_stats"] = prefill_engines
    doc["history"] = ctx.checked
    doc["checks"] = [{"name": f"history after {s}", "ok": v["ok"], "problems": v["examples"]}
                     for s, v in ctx.checked.items()]
    doc["verified"] = doc["verified"] and all(c["ok"] for c in doc["checks"])
    doc["ceiling"]["read_c1"] = reads
    doc["wall_s"] = round(time.monotonic() - t_start, 1)
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench contention", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller counts, under two minutes")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"),
                    help="directory of the JSON and PNG results")
    ap.add_argument("--scenarios", default=SCENARIOS, help="subset of 'abcdefg'")
    ap.add_argument("--concurrency", default=None, help="comma-separated C (default 1,16,64,256)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every count")
    ap.add_argument("--quiet", action="store_true", help="no progress, only the table")
    ap.add_argument("--no-chart", action="store_true", help="skip the PNG")
    ap.add_argument("--no-history", action="store_true",
                    help="record no history of the writes and check none (to measure the cost)")
    args = ap.parse_args(argv)
    scenarios = "".join(s for s in SCENARIOS if s in args.scenarios)
    cs = [int(c) for c in args.concurrency.split(",")] if args.concurrency else None
    plan = Plan.make(args.quick, args.scale, cs, scenarios)
    plan.record_history = not args.no_history
    t0 = time.monotonic()
    print(f"bench contention{' --quick' if plan.quick else ''}: starting 3 etcd members, "
          "2 gateway nodes, haproxy", flush=True)
    with Rig(gateways=2) as rig:
        print(f"  up in {time.monotonic() - t0:.1f}s: {rig.url} -> gateways, etcd "
              f"{','.join(rig.etcd_endpoints)}", flush=True)
        doc = asyncio.run(run(rig, plan, args.quiet))
        doc["gateway_logs"] = rig.log_findings()
    json_path, png_path = report.write(doc, Path(args.out), chart=not args.no_chart)
    print(report.table(doc))
    print(report.targets_text(doc))
    if plan.record_history:
        print(f"  {results.self_checks_line(doc['checks'])}")
    print(f"\nwrote {json_path}" + (f" and {png_path}" if png_path else "")
          + f" in {time.monotonic() - t0:.0f}s")
    return 0 if doc["verified"] else 1
