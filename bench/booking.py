"""`python -m bench booking`: issue 14's booking targets (1, 2, 3, 4, 7, 8) in one run, each
as a ratio to a baseline measured in the same run.

One run starts one reference topology (`bench.rig.Rig`: 3 etcd members, 3 gateway nodes,
haproxy in front of all three) and two more haproxy processes in front of the first one
and the first two nodes, so that 1, 2 and 3 gateways are each reached through a balancer.
The load generator runs in a process of its own (`bench.loadgen`). Every pool is a fresh
Private Network of one IPv4 subnet. Scenarios, in this order (etcd is compacted after
every step that deletes keys, the raw ceiling's included: on etcd 3.4.23 deletes slow
later create-if-absent writes until a compaction, DESIGN.md section 4):

  ceiling  raw etcd create-if-absent txns (`bench.ceiling.measure`) at C=256 and at C=1
  t7       C=1: bookings through 1 gateway, then the raw C=1 ceiling again (its p50 is
           the mean of the two raw measurements); then, by the same client and balancer
           at C=1, `GET /healthz` (the path's floor: HTTP, balancer, middlewares, no
           etcd) and `GET` of one of the IPs just booked (one etcd read)
  t1       a warm-up through 3 gateways (1 s, checked, not counted); then
           one /16 per gateway count, booked at C=256 through 1, 2 and 3 gateways in two
           half-length segments each, in the order 1 2 3 3 2 1 (so that a drifting
           machine or a growing etcd favours none); then the raw C=256 ceiling again
           (the ceiling is the mean of the measurements before and after)
  t3       16 Private Networks (one /20 each), bookings spread round-robin, against a
           single /16, through 2 gateways, in the order single 16 16 single
  t4a      a fresh /16: `book_release` IPs booked at C=256 through 2 gateways, then a
           single-IP DELETE of each at C=256
  t4b      a fresh pool (/20; /18 in a full run): booked from empty to 50% at C=256
           through 2 gateways (the empty-pool rate), pre-filled to 95% through the
           allocator (untimed), then C=256 clients each loop "release one of my IPs,
           book one" for `churn_seconds`
  t8       `fill_pools` fresh /20s, each booked from empty to full at C=256 through 2
           gateways (rate per 10% of fullness); then `out_of_stock` answers on the full
           pool: `probes` at C=1 and `burst` at C=64

Targets (`targets`, one row each; `met` is None for a row that only informs):
  1      bookings/s through 2 gateways >= 1.0x the C=256 ceiling; rows `1 (1 gw)` and
         `1 (3 gw)` the same ratio for 1 and 3 gateways; `1 scaling`: min(rate_2/rate_1,
         rate_3/rate_2) >= 1.0 (adding a gateway never lowers throughput)
  2      gateway CPU per booking <= 0.15 ms, on the 1-gateway run of t1: the CPU time
         (from /proc) of the gateway processes the run goes through (`cpu_s.gateways`;
         the idle ones' is `cpu_s.gateways_idle`); `2 etcd txn` and `2 etcd cpu`: etcd
         Txn requests and etcd CPU ms per booking on the same run (baseline: etcd CPU ms
         per raw txn)
  3      16 sources / single source >= 0.9
  4a     single-IP DELETE/s / booking/s of the IPs just booked >= 1.0
  4b     booking/s during churn at 95% / empty-pool booking/s of the same pool >= 0.8
  7      booking p50 at C=1 <= raw txn p50 at C=1 + 0.5 ms; `7 path` (informs): the
         booking's p50 less the `/healthz` floor's, against the same raw p50 (what a
         booking adds to any request on this path); `7 p99`: booking p99 at C=256
         through 2 gateways (mean of t1's two segments)
  8      flatness: min/max of the per-decile booking rates (informs); `8 oos C=1`:
         out_of_stock p50 <= 5 ms at C=1 (p99 shown); `8 oos C=64` the burst (informs)

After every scenario, from etcd itself: `bench.verify.check_run` on every run (no
address held twice, every acknowledged booking present with its address, every
acknowledged release gone, the sources hold exactly the expected count) and
`bench.verify.full_audit` of the whole prefix; t8's pools are full after their fill and
book nothing more. A failed check makes the run FAILED
(exit status 1). Answers with no definite outcome (no answer, 5xx) are counted under
`unknown`; the exact count is then not asserted for that pool. A DELETE answered 404
counts as `gone` (haproxy sends an idempotent DELETE again when a connection breaks
after a first one took effect) and the IP is checked absent like a released one.

Result: `booking[-quick]-<time>.json` under `--out`, keys (stable):
  bench ("booking"), quick, finished_at, wall_s, machine {cpus, python, platform, load},
  plan {...}, ceiling {c256_before, c256_after, c256_per_s, c1_before, c1_after,
  c1_p50_ms} (each measurement as `bench.ceiling.measure` returns it, plus
  `etcd_cpu_ms_per_txn`), runs [{scenario, label, mode, gateways, concurrency, ok,
  per_s, elapsed_s, latency, errors, unknown, etcd {txn, range, txn_per_op},
  cpu_s {etcd, gateways, gateways_idle, haproxy, loadgen}, gateway_cpu_ms_per_op and
  etcd_cpu_ms_per_op (per booking; churn: per loop; on a full pool: per answer),
  verify, ...mode-specific figures}], scenarios {t1, t3, t4a, t4b, t7, t8: the figures
  the targets are made of}, targets [{id, name, measured, unit, baseline, ratio, bound,
  met, detail}], audits {scenario: full_audit}, checks [{name, ok, problems}],
  verified, gateway_logs.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from allocator.contract import IPAM, AddressAsk
from allocator.errors import IPAMError
from allocator.store import EtcdStore
from devcluster.topology import haproxy_config

from . import ceiling, results
from .contention import run_loadgen
from .rig import ROOT, Rig, cpu_seconds, stop_process
from .verify import check_run, full_audit

REGION = "fr-par"
C = 256  # the concurrency of every target but 7's C=1 and 8's burst
GATEWAYS = (1, 2, 3)
REFERENCE = 2  # the gateways of the reference topology: targets 3, 4 and 8 run on it
SOURCES = 16
BALANCER_TIMEOUT = 30.0
# Revisions kept by the bench's compactions: the gateways' watches, a few revisions
# behind at most, go on without a reload; a thousand deletes cost nothing measurable.
COMPACT_RETAIN = 1000
_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Plan:
    """Counts and seconds of one run; --quick and --scale shrink them, never the checks."""

    quick: bool
    segment_seconds: float  # each of t1's and t3's segments
    ceiling_c256: int  # raw txns per C=256 ceiling measurement
    ceiling_seconds: float
    c1_count: int  # bookings at C=1 (t7), and raw txns per C=1 measurement
    book_release: int  # t4a's IPs
    release_seconds: float
    churn_prefixlen: int
    churn_seconds: float
    fill_pools: int  # t8's /20s
    probes: int  # out_of_stock answers at C=1
    burst: int  # out_of_stock answers at C=64
    burst_concurrency: int = 64
    prefill_concurrency: int = 128

    @classmethod
    def make(cls, quick: bool, scale: float) -> Plan:
        def s(x: float) -> float:
            return round(max(0.5, x * scale), 2)

        def n(x: int) -> int:
            return max(50, int(x * scale))

        if quick:
            return cls(True, s(2.0), n(4_000), s(4.0), n(150), n(2_000), s(5.0), 20,
                       s(4.0), 1, 50, n(256))
        return cls(False, s(5.0), n(15_000), s(10.0), n(500), n(8_000), s(15.0), 18,
                   s(10.0), 3, 50, n(640))


class Balancers:
    """haproxy in front of the first k gateway nodes of the rig, for every k of GATEWAYS
    (the rig's own haproxy is the one in front of all of them)."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.urls: dict[int, str] = {}
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Self:
        try:
            ports = self.rig.topo.gateway_ports
            for k in GATEWAYS:
                if k == len(ports):
                    self.urls[k] = self.rig.url
                    continue
                self.urls[k] = self._start(k, ports[:k])
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self, k: int, ports: list[int]) -> str:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        base = self.rig.topo.base_dir
        cfg = base / f"haproxy-{k}.cfg"
        cfg.write_text(haproxy_config(port, ports))
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        with open(base / f"haproxy-{k}.log", "wb") as log:
            proc = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=log,
                                    stderr=subprocess.STDOUT)
        self.procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + BALANCER_TIMEOUT
        while True:  # bounded: BALANCER_TIMEOUT
            try:
                with _LOOPBACK.open(f"{url}/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return url
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy in front of {k} gateways did not start; see "
                                   f"{base / f'haproxy-{k}.log'}")
            time.sleep(0.05)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            stop_process(p)
        self.procs = []


@dataclass
class Bench:
    """What every scenario shares: the rig, the balancers, the tenant, the results."""

    rig: Rig
    balancers: Balancers
    ipam: IPAM
    plan: Plan
    organization_id: str
    project_id: str
    token: str
    quiet: bool
    runs: list[dict[str, Any]] = field(default_factory=list)
    scenarios: dict[str, dict[str, Any]] = field(default_factory=dict)
    ceiling: dict[str, Any] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)  # pn id -> addresses held
    exact: dict[str, bool] = field(default_factory=dict)  # pn id -> held is known exactly
    sources: dict[str, list[str]] = field(default_factory=dict)  # pn id -> source ids
    last_acked: list[list[str]] = field(default_factory=list)  # still held after the last run
    _next16: int = 0

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)

    @property
    def store(self) -> EtcdStore:
        assert isinstance(self.ipam.store, EtcdStore)  # IPAM.connect makes one
        return self.ipam.store

    # -- pools ------------------------------------------------------------------------

    def private_network(self, subnet: str, name: str) -> str:
        pn = self.rig.create_private_network(self.token, self.project_id, name, [subnet])
        self.held[pn["id"]], self.exact[pn["id"]] = 0, True
        self.sources[pn["id"]] = [s["id"] for s in pn["subnets"]]
        return str(pn["id"])

    def slot(self) -> int:
        """N of the next free 10.N.0.0/16, taken."""
        self._next16 += 1
        return self._next16 - 1

    def pool(self, name: str, prefixlen: int = 16) -> str:
        """A Private Network on the next free 10.N.0.0/16 slot (a /16 or a smaller block)."""
        return self.private_network(f"10.{self.slot()}.0.0/{prefixlen}", name)

    async def bookable(self, pn: str) -> int:
        src = await self.ipam.networks.get_source(self.sources[pn][0])
        return int(src.bookable_count)

    async def prefill(self, pn: str, count: int) -> None:
        """Book `count` IPs in `pn` through the allocator in this process (untimed)."""
        issued = errors = 0
        deadline = time.monotonic() + max(120.0, count / 50)  # generous: a loaded machine

        async def worker() -> None:
            nonlocal issued, errors
            while issued < count and time.monotonic() < deadline:
                issued += 1
                try:
                    await self.ipam.book(AddressAsk(
                        region=REGION, project_id=self.project_id, private_network_id=pn,
                        organization_id=self.organization_id))
                except IPAMError:
                    errors += 1
                    continue
                self.held[pn] += 1

        await asyncio.gather(*(worker() for _ in range(self.plan.prefill_concurrency)))
        if errors or issued < count:
            raise RuntimeError(f"pre-fill of {pn}: {errors} bookings failed, "
                               f"{count - issued} not sent")

    # -- etcd -------------------------------------------------------------------------

    async def compact(self) -> int:
        """Compact etcd's history to `COMPACT_RETAIN` revisions behind its head (and wait
        for the backend): deletes stop slowing create-if-absent writes (etcd 3.4.23).
        The revision compacted to."""
        head = int((await self.store.range(self.ipam.keys.schema())).header.revision)
        target = max(1, head - COMPACT_RETAIN)
        await self.store.compact(target, physical=True)
        return target

    async def raw(self, concurrency: int, count: int) -> dict[str, Any]:
        """One ceiling measurement with etcd's CPU per txn; compacts after its deletes."""
        cpu0 = self.rig.cpu()["etcd"]
        r = await ceiling.measure(self.store, concurrency, count, self.plan.ceiling_seconds)
        if r["ok"]:
            r["etcd_cpu_ms_per_txn"] = round(1000 * (self.rig.cpu()["etcd"] - cpu0) / r["ok"], 4)
        await self.compact()
        self.log(f"    raw etcd C={concurrency}: {r['per_s']:,.0f} txn/s, p50 "
                 f"{r['latency']['p50_ms']} ms, p99 {r['latency']['p99_ms']} ms")
        return r

    # -- one load generator run ---------------------------------------------------------

    def cpu(self, gateways: int) -> dict[str, float]:
        """CPU seconds so far by role; `gateways`: the first `gateways` nodes (those a run
        through `gateways` nodes uses), `gateways_idle` the others (their background)."""
        pids = self.rig.pids()
        nodes = [cpu_seconds(p) for p in pids["gateways"]]
        return {"etcd": sum(cpu_seconds(p) for p in pids["etcd"]),
                "gateways": sum(nodes[:gateways]), "gateways_idle": sum(nodes[gateways:]),
                "haproxy": sum(cpu_seconds(p) for p in pids["haproxy"] + self.balancers.pids())}

    async def run(self, scenario: str, label: str, gateways: int, job: dict[str, Any],
                  pns: list[str]) -> dict[str, Any]:
        """The load generator once through `gateways` nodes; etcd requests and CPU counted,
        then every answer checked against etcd (`check_run`)."""
        job = {"url": self.balancers.urls[gateways], "token": self.token,
               "project_id": self.project_id, "region": REGION, "pns": pns,
               "label": f"{scenario} {label}", "quiet": self.quiet, "record": False, **job}
        m0, cpu0 = self.rig.etcd_requests(), self.cpu(gateways)
        result = await run_loadgen(job, self.quiet)
        mode = job["mode"]
        m1, cpu1 = self.rig.etcd_requests(), self.cpu(gateways)
        cpu1["loadgen"], cpu0["loadgen"] = result.pop("client_cpu_s", 0.0), 0.0
        result.pop("history", None)
        acked: list[list[str]] = result.pop("ips", [])
        released: list[str] = result.pop("released", [])
        unknown: list[str] = result.pop("unknown", [])
        if mode == "book":  # `book` runs list no unknown outcomes: their errors tell them
            unknown = [k for k, n in result["errors"].items() if unknown_outcome(k)
                       for _ in range(n)]
        self.last_acked = acked
        if mode in ("book", "fill"):
            for _, _, pn in acked:
                self.held[pn] += 1
        elif mode == "release":
            self.held[pns[0]] -= len(released)  # those answered 404 ("gone") included
        elif mode == "churn":
            self.held[pns[0]] = len(acked)
        if unknown:
            for pn in pns:
                self.exact[pn] = False
        expected = (sum(self.held[pn] for pn in pns) if all(self.exact[pn] for pn in pns)
                    else None)
        verdict = await check_run(self.store, self.ipam.keys,
                                  [s for pn in pns for s in self.sources[pn]], acked,
                                  released, expected)
        # Per operation: a booking (churn: a loop), a release; every answer on a full pool.
        ops = max(1, int(result.get("ok") or result.get("sent") or 0))
        txn = int(m1.get("Txn", 0) - m0.get("Txn", 0))
        rng = int(m1.get("Range", 0) - m0.get("Range", 0))
        cpu = {k: round(cpu1[k] - cpu0[k], 3) for k in cpu1}
        run = {"scenario": scenario, "label": label, "mode": mode, "gateways": gateways,
               "concurrency": job.get("concurrency", 1), **result,
               "unknown": len(unknown),
               "etcd": {"txn": txn, "range": rng, "txn_per_op": round(txn / ops, 3)},
               "cpu_s": cpu,
               "gateway_cpu_ms_per_op": round(1000 * cpu["gateways"] / ops, 4),
               "etcd_cpu_ms_per_op": round(1000 * cpu["etcd"] / ops, 4),
               "verify": verdict}
        self.runs.append(run)
        lat = run.get("latency", {})
        self.log(f"  {scenario} {label}: {run.get('ok', 0)} ok, {run.get('per_s', 0):,.0f}/s, "
                 f"p50 {lat.get('p50_ms')} ms p99 {lat.get('p99_ms')} ms, gateway CPU "
                 f"{run['gateway_cpu_ms_per_op']} ms/op, {run['etcd']['txn_per_op']} txn/op"
                 + (f", errors {run['errors']}" if run["errors"] else "")
                 + ("" if verdict["ok"] else f", VERIFY FAILED {verdict}"))
        return run

    async def probe(self, paths: str | list[str], gateways: int) -> dict[str, Any]:
        """GETs of `paths` in turn at C=1 through `gateways` nodes (`c1_count` of them);
        every one must answer 200."""
        paths = [paths] if isinstance(paths, str) else paths
        result = await run_loadgen({
            "mode": "get", "url": self.balancers.urls[gateways], "token": self.token,
            "region": REGION, "paths": paths, "concurrency": 1, "count": self.plan.c1_count,
            "seconds": 60.0, "label": f"GET {paths[0]}", "quiet": self.quiet, "record": False},
            self.quiet)
        result.pop("client_cpu_s", None)
        if result["errors"] or not result["ok"]:
            raise RuntimeError(f"GET {paths[0]} at C=1: {result['errors']}")
        lat = result["latency"]
        self.log(f"    GET {paths[0]}{' ...' * (len(paths) > 1)} C=1: p50 {lat['p50_ms']} ms, "
                 f"p99 {lat['p99_ms']} ms")
        return result

    async def book(self, scenario: str, label: str, gateways: int, pns: list[str],
                   seconds: float, count: int | None = None, concurrency: int = C,
                   **job: Any) -> dict[str, Any]:
        """A `book` run, time-bounded unless `count` says otherwise."""
        return await self.run(scenario, label, gateways, {
            "mode": "book", "concurrency": concurrency, "seconds": seconds,
            "count": count if count is not None else int(seconds * 20_000), **job}, pns)


def unknown_outcome(error: str) -> bool:
    """Whether a write answered `error` (`status:type`, as `bench.loadgen` counts them) may
    have taken effect: no answer, or a 5xx."""
    status = int(error.split(":", 1)[0])
    return status == 0 or status >= 500


def combined(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Segments of one measurement as one: the rate over their summed time, CPU and etcd
    requests per booking over all of them, latencies as the segments' mean."""
    ok = sum(r["ok"] for r in runs)
    elapsed = sum(r["elapsed_s"] for r in runs)
    txn = sum(r["etcd"]["txn"] for r in runs)
    gw = sum(r["cpu_s"]["gateways"] for r in runs)
    etcd = sum(r["cpu_s"]["etcd"] for r in runs)

    def mean(key: str) -> float | None:
        values = [r["latency"][key] for r in runs if r["latency"][key] is not None]
        return round(sum(values) / len(values), 3) if values else None

    return {"ok": ok, "elapsed_s": round(elapsed, 3),
            "per_s": round(ok / elapsed, 1) if elapsed else 0.0,
            "p50_ms": mean("p50_ms"), "p99_ms": mean("p99_ms"),
            "txn_per_booking": round(txn / ok, 3) if ok else None,
            "gateway_cpu_ms_per_booking": round(1000 * gw / ok, 4) if ok else None,
            "etcd_cpu_ms_per_booking": round(1000 * etcd / ok, 4) if ok else None,
            "segments": [r["per_s"] for r in runs]}


# -- scenarios ----------------------------------------------------------------------------


async def t7_latency(b: Bench) -> None:
    """(t7) C=1: bookings through 1 gateway between two raw C=1 measurements."""
    pn = b.pool("t7-c1")
    run = await b.book("t7", "/16 C=1 through 1 gateway", 1, [pn], seconds=60.0,
                       count=b.plan.c1_count, concurrency=1)
    b.ceiling["c1_after"] = await b.raw(1, b.plan.c1_count)
    raws = [b.ceiling["c1_before"]["latency"]["p50_ms"], b.ceiling["c1_after"]["latency"]["p50_ms"]]
    b.ceiling["c1_p50_ms"] = round(sum(raws) / 2, 3)
    floor = await b.probe("/healthz", 1)
    ips = [f"/ipam/v1/regions/{REGION}/ips/{ip}" for ip, _, _ in b.last_acked[:100]]
    read = await b.probe(ips, 1) if ips else None
    b.scenarios["t7"] = {"booking_c1": run["latency"], "raw_c1_p50_ms": b.ceiling["c1_p50_ms"],
                         "healthz_c1": floor["latency"],
                         "get_c1": read["latency"] if read else None}


async def t1_gateways(b: Bench) -> None:
    """(t1) one /16 per gateway count at C=256, segments in the order 1 2 3 3 2 1."""
    # Warm every node up first (the first load of a process costs more than the next).
    await b.book("t1", f"warm-up C={C} through {max(GATEWAYS)} gateways", max(GATEWAYS),
                 [b.pool("t1-warm-up")], seconds=min(1.0, b.plan.segment_seconds))
    pns = {k: b.pool(f"t1-{k}gw") for k in GATEWAYS}
    segments: dict[int, list[dict[str, Any]]] = {k: [] for k in GATEWAYS}
    for k in (*GATEWAYS, *reversed(GATEWAYS)):
        segments[k].append(await b.book("t1", f"/16 C={C} through {k} gateways", k, [pns[k]],
                                        seconds=b.plan.segment_seconds))
    b.ceiling["c256_after"] = await b.raw(C, b.plan.ceiling_c256)
    b.ceiling["c256_per_s"] = round((b.ceiling["c256_before"]["per_s"]
                                     + b.ceiling["c256_after"]["per_s"]) / 2, 1)
    b.scenarios["t1"] = {str(k): combined(v) for k, v in segments.items()}


async def t3_sources(b: Bench) -> None:
    """(t3) 16 Private Networks (a /20 each) against one /16, through 2 gateways."""
    single = b.pool("t3-single")
    block = b.slot()
    many = [b.private_network(f"10.{block}.{16 * i}.0/20", f"t3-{i}") for i in range(SOURCES)]
    # Each /20 must not fill: at most a third of the 16 pools per segment.
    cap = SOURCES * (await b.bookable(many[0])) // 3
    segments: dict[str, list[dict[str, Any]]] = {"single": [], "many": []}
    for kind in ("single", "many", "many", "single"):
        if kind == "single":
            run = await b.book("t3", f"1 source C={C}", REFERENCE, [single],
                               seconds=b.plan.segment_seconds)
        else:
            run = await b.book("t3", f"{SOURCES} sources round-robin C={C}", REFERENCE, many,
                               seconds=b.plan.segment_seconds, count=cap, pick="round_robin")
        segments[kind].append(run)
    b.scenarios["t3"] = {k: combined(v) for k, v in segments.items()}


async def t4a_release(b: Bench) -> None:
    """(t4a) IPs booked at C=256, then each released by a single-IP DELETE at C=256."""
    pn = b.pool("t4a")
    n = b.plan.book_release
    booked = await b.run("t4a", f"book {n} C={C}", REFERENCE, {
        "mode": "book", "concurrency": C, "count": n, "seconds": 120.0}, [pn])
    released = await b.run("t4a", f"DELETE each C={C}", REFERENCE, {
        "mode": "release", "concurrency": C, "ips": b.last_acked,
        "seconds": b.plan.release_seconds}, [pn])
    await b.compact()
    b.scenarios["t4a"] = {"book_per_s": booked["per_s"], "release_per_s": released["per_s"],
                          "booked": booked["ok"], "released": released["ok"]}


async def t4b_churn(b: Bench) -> None:
    """(t4b) a pool booked to 50% (the empty-pool rate), pre-filled to 95%, then churn."""
    p = b.plan
    pn = b.pool("t4b", p.churn_prefixlen)
    size = await b.bookable(pn)
    empty = await b.run("t4b", f"/{p.churn_prefixlen} empty to 50% C={C}", REFERENCE, {
        "mode": "book", "concurrency": C, "count": size // 2, "seconds": 120.0}, [pn])
    first = len(b.last_acked)
    t0 = time.monotonic()
    held, _ = await b.store.count(b.ipam.keys.addresses(b.sources[pn][0]))  # unknowns too
    await b.prefill(pn, int(0.95 * size) - held)
    b.log(f"    pre-filled to 95% of {size} in {time.monotonic() - t0:.1f}s")
    # The churn releases only IPs whose address the bench knows: those booked over HTTP
    # and those the pre-fill made, read back from etcd.
    owned = await held_ips(b, pn)
    churn = await b.run("t4b", f"churn at 95% C={C}", REFERENCE, {
        "mode": "churn", "concurrency": C, "ips": owned, "count": 10 * size,
        "seconds": p.churn_seconds}, [pn])
    await b.compact()
    b.scenarios["t4b"] = {"empty_per_s": empty["per_s"], "churn_book_per_s": churn["per_s"],
                          "churn_release_per_s": churn["release_per_s"], "bookable": size,
                          "held_at_start": len(owned), "http_booked": first}


async def held_ips(b: Bench, pn: str) -> list[list[str]]:
    """[id, address, pn] of every IP held in `pn`'s source, read from etcd."""
    kvs, _ = await b.store.scan(b.ipam.keys.addresses(b.sources[pn][0]))
    ids = [kv.value.decode() for kv in kvs]
    records = await b.store.get_many(b.ipam.keys.ip(i) for i in ids)
    out = []
    for i in ids:
        rec = records.get(b.ipam.keys.ip(i))
        if rec is not None:
            out.append([i, str(json.loads(rec.value)["address"]), pn])
    return out


async def t8_fill(b: Bench) -> None:
    """(t8) /20s booked from empty to full at C=256; out_of_stock once full."""
    p = b.plan
    per_decile: list[list[float]] = [[0.0, 0.0] for _ in range(10)]  # [bookings, seconds]
    full = ""
    fills = []
    for i in range(p.fill_pools):
        pn = b.pool(f"t8-fill-{i}", 20)
        size = await b.bookable(pn)
        # Room for failed answers too (a loaded machine's 503s): the fill goes on until
        # the first out_of_stock, bounded by count and time.
        run = await b.run("t8", f"/20 empty to full C={C}", REFERENCE, {
            "mode": "fill", "concurrency": C, "count": 3 * size + C, "seconds": 120.0}, [pn])
        ok_at = run.pop("ok_at")
        run["deciles"] = deciles(ok_at, size)
        run["verify"]["full"] = run["verify"]["held"] == size
        run["verify"]["ok"] = run["verify"]["ok"] and run["verify"]["full"]
        for d, r in enumerate(run["deciles"]):
            per_decile[d][0] += r["bookings"]
            per_decile[d][1] += r["seconds"]
        fills.append(run["per_s"])
        full = pn
    rates = [round(n / s, 1) if s > 0 else None for n, s in per_decile]
    known = [r for r in rates if r]
    c1 = await b.run("t8", "out_of_stock C=1", REFERENCE, {
        "mode": "book", "concurrency": 1, "count": p.probes, "seconds": 60.0,
        "until_exhausted": True, "exhausted_probes": p.probes}, [full])
    burst = await b.run("t8", f"out_of_stock burst C={p.burst_concurrency}", REFERENCE, {
        "mode": "book", "concurrency": p.burst_concurrency, "count": p.burst, "seconds": 60.0,
        "until_exhausted": True, "exhausted_probes": p.burst}, [full])
    for r in (c1, burst):  # a full pool books nothing (other errors are reported)
        r["verify"]["none_booked_when_full"] = r["ok"] == 0 and r["exhausted_latency"]["n"] > 0
        r["verify"]["ok"] = r["verify"]["ok"] and r["verify"]["none_booked_when_full"]
    b.scenarios["t8"] = {"fill_per_s": fills, "decile_per_s": rates,
                         "flatness": round(min(known) / max(known), 3) if known else None,
                         "oos_c1": c1["exhausted_latency"], "oos_burst": burst["exhausted_latency"]}


def deciles(ok_at: list[float], size: int) -> list[dict[str, Any]]:
    """Bookings and seconds per 10% of the pool's fullness (the k-th booking answered
    makes the pool k/size full)."""
    out = []
    for d in range(10):
        lo, hi = d * size // 10, min(len(ok_at), (d + 1) * size // 10)
        if hi <= lo:
            out.append({"decile": d, "bookings": 0, "seconds": 0.0, "per_s": None})
            continue
        start = ok_at[lo - 1] if lo > 0 else 0.0
        seconds = ok_at[hi - 1] - start
        out.append({"decile": d, "bookings": hi - lo, "seconds": round(seconds, 4),
                    "per_s": round((hi - lo) / seconds, 1) if seconds > 0 else None})
    return out


# Each scenario, in run order, by the name the output uses.
SCENARIOS = {"t7": t7_latency, "t1": t1_gateways, "t3": t3_sources, "t4a": t4a_release,
             "t4b": t4b_churn, "t8": t8_fill}


# -- targets ------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _row(id_: str, name: str, measured: float | None, unit: str, baseline: float | None,
         ratio: float | None, bound: str, met: bool | None, detail: str) -> dict[str, Any]:
    return {"id": id_, "name": name, "measured": measured, "unit": unit, "baseline": baseline,
            "ratio": ratio, "bound": bound, "met": met, "detail": detail}


def targets(ceiling_: dict[str, Any], sc: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per target (and per figure reported beside one); see the module docstring."""
    rows = []
    top = ceiling_.get("c256_per_s")
    t1 = sc.get("t1")
    if t1:
        r = {k: t1[str(k)]["per_s"] for k in GATEWAYS}
        for k in GATEWAYS:
            ratio = _ratio(r[k], top)
            main = k == REFERENCE
            rows.append(_row("1" if main else f"1 ({k} gw)",
                             f"bookings/s, one /16, C={C}, {k} gateway{'s' * (k > 1)}", r[k],
                             "/s", top, ratio, ">= 1.0x ceiling" if main else "-",
                             (ratio is not None and ratio >= 1.0) if main else None,
                             "ceiling: raw create-if-absent txn/s at C=256, mean of before "
                             "and after"))
        steps = [_ratio(r[k], r[k - 1]) for k in GATEWAYS[1:]]
        step = min((s for s in steps if s is not None), default=None)
        rows.append(_row("1 scaling", "adding a gateway: min(rate_2/rate_1, rate_3/rate_2)",
                         step, "x", None, step, ">= 1.0", step is not None and step >= 1.0,
                         f"rate_1 {r[1]:,.0f}/s, rate_2 {r[2]:,.0f}/s, rate_3 {r[3]:,.0f}/s"))
        one = t1["1"]
        others = ", ".join(f"{k} gw {t1[str(k)]['gateway_cpu_ms_per_booking']}"
                           for k in GATEWAYS[1:])
        cpu = one["gateway_cpu_ms_per_booking"]
        rows.append(_row("2", "gateway CPU per booking (1 gateway, C=256)", cpu, "ms", None,
                         None, "<= 0.15 ms", cpu is not None and cpu <= 0.15,
                         f"CPU of the gateway processes in use, from /proc; {others}"))
        rows.append(_row("2 etcd txn", "etcd Txn requests per booking (1 gateway)",
                         one["txn_per_booking"], "txn", None, None, "-", None, ", ".join(
                             f"{k} gw {t1[str(k)]['txn_per_booking']}" for k in GATEWAYS[1:])))
        raw_cpu = ceiling_.get("c256_before", {}).get("etcd_cpu_ms_per_txn")
        rows.append(_row("2 etcd cpu", "etcd CPU per booking (1 gateway)",
                         one["etcd_cpu_ms_per_booking"], "ms", raw_cpu,
                         _ratio(one["etcd_cpu_ms_per_booking"], raw_cpu), "-", None,
                         "baseline: etcd CPU per raw create-if-absent txn at C=256"))
    t3 = sc.get("t3")
    if t3:
        ratio = _ratio(t3["many"]["per_s"], t3["single"]["per_s"])
        rows.append(_row("3", f"{SOURCES} sources at once, C={C}, {REFERENCE} gateways",
                         t3["many"]["per_s"], "/s", t3["single"]["per_s"], ratio, ">= 0.9x",
                         ratio is not None and ratio >= 0.9, "baseline: one /16, same run"))
    t4a = sc.get("t4a")
    if t4a:
        ratio = _ratio(t4a["release_per_s"], t4a["book_per_s"])
        rows.append(_row("4a", f"single-IP DELETE/s, C={C}", t4a["release_per_s"], "/s",
                         t4a["book_per_s"], ratio, ">= 1.0x", ratio is not None and ratio >= 1.0,
                         f"baseline: booking the {t4a['booked']} IPs just before"))
    t4b = sc.get("t4b")
    if t4b:
        ratio = _ratio(t4b["churn_book_per_s"], t4b["empty_per_s"])
        rows.append(_row("4b", f"bookings/s in release+book churn at 95%, C={C}",
                         t4b["churn_book_per_s"], "/s", t4b["empty_per_s"], ratio, ">= 0.8x",
                         ratio is not None and ratio >= 0.8,
                         f"releases {t4b['churn_release_per_s']:,.0f}/s; baseline: the same "
                         "pool from empty to 50%"))
    t7 = sc.get("t7")
    if t7:
        p50, raw = t7["booking_c1"]["p50_ms"], t7["raw_c1_p50_ms"]
        rows.append(_row("7", "booking p50 at C=1, 1 gateway", p50, "ms", raw, _ratio(p50, raw),
                         "<= raw + 0.5 ms", p50 is not None and raw is not None and
                         p50 <= raw + 0.5, f"booking p99 {t7['booking_c1']['p99_ms']} ms"))
        floor, read = t7.get("healthz_c1"), t7.get("get_c1")
        if floor and p50 is not None and floor["p50_ms"] is not None:
            added = round(p50 - floor["p50_ms"], 3)
            rows.append(_row("7 path", "booking p50 less GET /healthz p50, C=1, 1 gateway",
                             added, "ms", raw, _ratio(added, raw), "-", None,
                             f"/healthz p50 {floor['p50_ms']} ms (client, balancer, "
                             f"middlewares); GET one IP p50 "
                             f"{read['p50_ms'] if read else '-'} ms"))
    if t1:
        two = t1[str(REFERENCE)]
        rows.append(_row("7 p99", f"booking p99 at C={C}, {REFERENCE} gateways", two["p99_ms"],
                         "ms", ceiling_.get("c256_before", {}).get("latency", {}).get("p99_ms"),
                         None, "-", None, f"p50 {two['p50_ms']} ms; baseline: raw txn p99 "
                         "at C=256"))
    t8 = sc.get("t8")
    if t8:
        rates = ", ".join(f"{r:,.0f}" if r else "-" for r in t8["decile_per_s"])
        rows.append(_row("8 flat", "fill a /20 at C=256: min/max of the rates per 10%",
                         t8["flatness"], "x", None, t8["flatness"], "flat (report)", None,
                         f"per decile /s: {rates}"))
        for key, name, judged in (("oos_c1", "C=1", True), ("oos_burst", "burst C=64", False)):
            lat = t8[key]
            rows.append(_row(f"8 oos {name.split()[-1]}", f"out_of_stock when full, {name}",
                             lat["p50_ms"], "ms", None, None, "<= 5 ms" if judged else "-",
                             (lat["p50_ms"] is not None and lat["p50_ms"] <= 5.0)
                             if judged else None,
                             f"p99 {lat['p99_ms']} ms over {lat['n']} answers"))
    return rows


# -- the whole run ------------------------------------------------------------------------------


async def run(rig: Rig, balancers: Balancers, plan: Plan, quiet: bool,
              only: str = "") -> dict[str, Any]:
    """Every scenario (or those named in `only`) between the ceilings; the result."""
    t_start = time.monotonic()
    org, project = str(uuid.uuid4()), str(uuid.uuid4())
    key = rig.create_api_key(org, project)
    ipam = await IPAM.connect(rig.etcd_endpoints, prefix=rig.prefix)
    b = Bench(rig, balancers, ipam, plan, org, project, key["secret_key"], quiet)
    audits: dict[str, Any] = {}
    crashed: list[dict[str, Any]] = []
    try:
        b.log("ceiling (raw etcd create-if-absent txns, no HTTP):")
        b.ceiling["c256_before"] = await b.raw(C, plan.ceiling_c256)
        b.ceiling["c1_before"] = await b.raw(1, plan.c1_count)
        b.ceiling["c256_per_s"] = b.ceiling["c256_before"]["per_s"]  # until t1 measures again
        for name, scenario in SCENARIOS.items():
            if only and name not in only.split(","):
                continue
            b.log(f"{name}: {(scenario.__doc__ or name).splitlines()[0]}")
            t0 = time.monotonic()
            try:
                await scenario(b)
            except Exception as err:  # noqa: BLE001 - a failed check; the others still run
                crashed.append({"name": f"{name} completed", "ok": False,
                                "problems": [f"{type(err).__name__}: {err}"]})
                b.log(f"  {name} FAILED: {type(err).__name__}: {err}")
            t1 = time.monotonic()
            audits[name] = a = await full_audit(b.store, ipam.keys)
            a["seconds"] = round(time.monotonic() - t1, 1)
            b.log(f"  audit after {name}: {'ok' if a['ok'] else 'FAILED'} ({a['records']} "
                  f"records in {a['seconds']}s; {name} took {t1 - t0:.1f}s)")
    finally:
        await ipam.close()
    checks = [{"name": f"{r['scenario']} {r['label']}", "ok": bool(r["verify"]["ok"]),
               "problems": r["verify"].get("examples", [])} for r in b.runs]
    checks += [{"name": f"audit after {s}", "ok": bool(a["ok"]), "problems": a["examples"]}
               for s, a in audits.items()]
    checks += crashed
    return {
        "bench": "booking", "quick": plan.quick,
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - t_start, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(),  # the machine may be shared: its load
                    "load": [round(x, 2) for x in os.getloadavg()]},
        "plan": dataclasses.asdict(plan), "ceiling": b.ceiling, "runs": b.runs,
        "scenarios": b.scenarios, "targets": targets(b.ceiling, b.scenarios),
        "audits": audits, "checks": checks, "verified": all(c["ok"] for c in checks),
    }


def _fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    if unit == "/s":
        return f"{x:,.0f}/s"
    if unit == "ms":
        return f"{x:g} ms"
    if unit in ("x", ""):
        return f"{x:g}x" if unit else f"{x:g}"
    return f"{x:g} {unit}"


def table(doc: dict[str, Any]) -> str:
    """The targets as a markdown table, then the verification line."""
    verdict = {True: "MET", False: "NOT MET", None: "info"}
    lines = [(f"booking bench{' --quick' if doc['quick'] else ''}: load average "
              f"{doc['machine']['load']} on {doc['machine']['cpus']} CPUs, {doc['wall_s']} s"),
             "",
             "| target | what | measured | baseline | ratio | bound | verdict |",
             "|---|---|---|---|---|---|---|"]
    for t in doc["targets"]:
        unit = t["unit"] if t["unit"] != "x" else "x"
        lines.append(f"| {t['id']} | {t['name']} | {_fmt(t['measured'], unit)} | "
                     f"{_fmt(t['baseline'], unit)} | {_fmt(t['ratio'], 'x')} | {t['bound']} | "
                     f"{verdict[t['met']]} |")
    lines.append("")
    lines += [f"- {t['id']}: {t['detail']}" for t in doc["targets"]]
    lines.append("")
    lines.append(results.self_checks_line(doc["checks"])
                 + ("" if doc["verified"] else "  => run FAILED"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench booking", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter runs, under four minutes")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply every count and duration (the checks stay)")
    ap.add_argument("--scenarios", default="", help=f"comma-separated subset of "
                    f"{','.join(SCENARIOS)} (default: all)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"),
                    help="directory of the JSON result")
    ap.add_argument("--quiet", action="store_true", help="no progress, only the table")
    args = ap.parse_args(argv)
    plan = Plan.make(args.quick, args.scale)
    t0 = time.monotonic()
    print(f"bench booking{' --quick' if plan.quick else ''}: starting 3 etcd members, "
          f"{max(GATEWAYS)} gateway nodes, {len(GATEWAYS)} haproxy", flush=True)
    with Rig(gateways=max(GATEWAYS)) as rig, Balancers(rig) as balancers:
        doc = asyncio.run(run(rig, balancers, plan, args.quiet, args.scenarios))
        doc["gateway_logs"] = rig.log_findings()
    path = results.write("booking", plan.quick, doc, Path(args.out))
    print(table(doc))
    print(f"\nwrote {path} in {time.monotonic() - t0:.0f}s")
    return 0 if doc["verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
