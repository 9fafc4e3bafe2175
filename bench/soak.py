"""`python -m bench soak`: a steady lifecycle load for a long time; does anything grow?

    python -m bench soak [--seconds N] [--quick] [--rate R] [--clients C] [--out DIR]

One etcd member (devcluster) and one gateway node (`bench.soaknode`: the real `ipam
serve`, plus its asyncio task count), both started here. C clients in this process,
R cycles per second in all, each at a steady pace: book an IP (with an Idempotency-Key),
attach it to a custom resource, and once the client holds `hold` IPs, detach and
release its oldest. One /24 holds them all with room, so released addresses are booked
again. An answer left unknown (503, a timeout, a broken connection) is retried with
the same key; a release takes no key and is retried as it is (404 then: it applied).
Every attempt is recorded in a `bench.history.History`.

Every `sample_every` seconds (`bench.soakprobe`): the gateway's RSS, open file
descriptors, asyncio task count and /metrics counters; etcd's database size
(`etcd_mvcc_db_total_size_in_bytes`, and in use), key count and RSS; the IP records
and the clients' idempotency keys under the prefix. Those keys live an hour by
default (`--idempotency-retention`, `allocator.idempotency`): etcd's database grows
with them for that long, and the series says how much of its growth they are.

At the end: the series; the gateway's RSS growth after warm-up (the first sample at or
after `warmup` s against the median of the last three; target: under 10 %) and its
slope in MiB per hour; the same for descriptors, tasks and etcd's database; and the
history of every operation checked against etcd (`bench.history_check`, which runs
`allocator.audit` too).

Self-checks (exit status 1 if one fails): the history is clean; samples were taken
(at least three, with RSS, descriptors, task count and DB size); cycles were done.
The target is listed, met or not. Result: `soak[-quick]-<time>.json` under `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

import aiohttp

from allocator.contract import IPAM, Resource
from devcluster.etcd import EtcdCluster

from . import results
from .history import OK, UNKNOWN, History, read_final_state
from .history_check import check
from .rig import ROOT, HttpError, http, stop_process
from .soakprobe import Probe, node_tasks

REGION = "fr-par"
PREFIX = "/soak/"
SUBNET = "10.60.0.0/24"
TARGET_RSS_GROWTH_PCT = 10.0
REQUEST_TIMEOUT = 10.0
UNKNOWN_RETRIES = 5  # attempts of one request whose answers stay unknown
RETRY_PAUSE = 0.5
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0  # for the clients to finish their cycle once the time is up
IDLE_SECONDS = 3.0  # after the load, before the "idle" sample


@dataclass
class Plan:
    """The load and the sampling of one run (a run under ten minutes is sampled every 5 s,
    an hour every 10 s, --quick every 2 s)."""

    quick: bool
    seconds: float
    clients: int
    rate: float  # cycles per second, all clients together
    hold: int  # IPs each client keeps attached before releasing its oldest
    sample_every: float
    warmup: float

    @classmethod
    def make(cls, quick: bool, seconds: float | None, rate: float | None,
             clients: int | None, warmup: float | None) -> Plan:
        if quick:
            p = cls(True, 20.0, 4, 10.0, 8, 2.0, 0.0)
        else:
            p = cls(False, 3600.0, 8, 20.0, 12, 10.0, 0.0)
        p.seconds = seconds if seconds is not None else p.seconds
        p.rate = rate or p.rate
        p.clients = clients or p.clients
        if not quick and p.seconds < 600:  # a CI run: enough samples to see a trend
            p.sample_every = 5.0
        # Warm-up: caches, connection pools and the allocator's free sets fill first.
        p.warmup = warmup if warmup is not None else min(300.0, p.seconds / 4)
        return p


@dataclass
class Held:
    """An IP a client booked and keeps until it retires it (oldest first)."""

    ip_id: str
    mac: str
    resource_id: str
    attached: bool


@dataclass
class Load:
    """The clients: one HTTP session, the history of their attempts, and their counts."""

    url: str
    token: str
    project_id: str
    pn_id: str
    plan: Plan
    history: History = field(default_factory=History)
    cycles: int = 0
    late_cycles: int = 0  # started more than one period behind their schedule
    errors: dict[str, int] = field(default_factory=dict)
    session: aiohttp.ClientSession | None = None

    async def request(self, client: str, kind: str, method: str, path: str,
                      body: dict[str, Any] | None = None, key: str | None = None,
                      **recorded: Any) -> tuple[str, int, Any]:
        """One request, recorded; retried while its answer is unknown (with its key, if
        any). (outcome, status, body) of the last attempt."""
        assert self.session is not None
        headers = {"X-Auth-Token": self.token}
        if key:
            headers["Idempotency-Key"] = key
        outcome, status, answer = UNKNOWN, 0, None
        for attempt in range(UNKNOWN_RETRIES):
            if attempt:
                await asyncio.sleep(RETRY_PAUSE)
            op = self.history.invoke(kind, client=client, idempotency_key=key, **recorded)
            try:
                async with self.session.request(
                        method, f"{self.url}/ipam/v1/regions/{REGION}{path}", json=body,
                        headers=headers) as resp:
                    status = resp.status
                    raw = await resp.read()
                answer = json.loads(raw) if raw else None
            except (aiohttp.ClientError, TimeoutError, ValueError) as err:
                status, answer = 0, {"type": type(err).__name__}
            outcome = self.history.answered(op, status, answer)
            if outcome != UNKNOWN:
                break
        if outcome != OK:
            kind_of = answer.get("type", "?") if isinstance(answer, dict) else "?"
            label = f"{kind} {status}:{kind_of}"
            self.errors[label] = self.errors.get(label, 0) + 1
        return outcome, status, answer

    async def cycle(self, client: str, held: list[Held], rng: random.Random) -> None:
        """Book and attach one IP; release the oldest once more than `hold` are held."""
        key = f"soak-book-{uuid.uuid4()}"
        outcome, _, ip = await self.request(
            client, "book", "POST", "/ips", {"source": {"private_network_id": self.pn_id},
                                             "project_id": self.project_id},
            key=key, pool=self.pn_id)
        if outcome == OK:
            mac = "02:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(5))
            rid = Resource.custom(mac).id
            attached, _, _ = await self.request(
                client, "attach", "POST", f"/ips/{ip['id']}/attach",
                {"resource": {"mac_address": mac, "name": f"soak-{client}"}},
                key=f"soak-attach-{uuid.uuid4()}", ip_id=ip["id"], resource=rid)
            held.append(Held(ip["id"], mac, rid, attached == OK))
        if len(held) > self.plan.hold:
            await self.retire(client, held.pop(0))
        self.cycles += 1

    async def retire(self, client: str, ip: Held) -> None:
        """Detach (if attached) and release one IP; a release whose first answer was lost
        is retried, and 404 then says the first one applied."""
        if ip.attached:
            await self.request(client, "detach", "POST", f"/ips/{ip.ip_id}/detach",
                               {"resource": {"mac_address": ip.mac}},
                               key=f"soak-detach-{uuid.uuid4()}", ip_id=ip.ip_id,
                               resource=ip.resource_id)
        await self.request(client, "release", "DELETE", f"/ips/{ip.ip_id}", ip_id=ip.ip_id)

    async def client(self, index: int, deadline: float) -> None:
        """Cycles on a fixed schedule (one every C/R seconds), until `deadline`."""
        name = f"c{index}"
        rng = random.Random(index)
        held: list[Held] = []
        period = self.plan.clients / self.plan.rate
        due = time.monotonic() + index / self.plan.rate
        while True:
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            if time.monotonic() >= deadline:
                return
            if time.monotonic() - due > period:  # behind: start again from now, no burst
                self.late_cycles += 1
                due = time.monotonic()
            await self.cycle(name, held, rng)
            due += period


async def run(plan: Plan, cluster: EtcdCluster, node: SoakNode, quiet: bool
              ) -> dict[str, Any]:
    """Set up, load and sample for `plan.seconds`, then check the history; the document."""
    org, project = str(uuid.uuid4()), str(uuid.uuid4())
    key = http(node.url, "POST", "/ipam/admin/v1/api-keys", {
        "organization_id": org, "project_ids": [project], "role": "project_member",
        "description": "bench soak"}, node.admin_secret)
    pn = http(node.url, "POST", f"/vpc/v2/regions/{REGION}/private-networks", {
        "project_id": project, "name": "soak", "subnets": [SUBNET]}, key["secret_key"])
    member = cluster.members[0]
    assert member.process is not None
    probe = Probe(node.pid, node.url, node.tasks_file, member.process.pid,
                  f"http://{member.endpoint}")
    load = Load(node.url, key["secret_key"], project, pn["id"], plan)
    samples: list[dict[str, Any]] = []
    ipam = await IPAM.connect(cluster.endpoints, prefix=PREFIX)  # counts, and the final read
    idempotency = ipam.keys.idempotency(key["access_key"], "")  # the clients' keys (leased)
    for _ in range(50):  # bounded: 5 s for the node's first task count
        if node_tasks(node.tasks_file) is not None:
            break
        await asyncio.sleep(0.1)
    t0 = time.monotonic()

    async def take(phase: str = "load") -> None:
        row = {"t": round(time.monotonic() - t0, 1), "phase": phase,
               **await asyncio.to_thread(probe.sample),
               "ips": (await ipam.store.count(ipam.keys.ip()))[0],
               "idempotency_keys": (await ipam.store.count(idempotency))[0],
               "operations": len(load.history.operations), "cycles": load.cycles}
        samples.append(row)
        if not quiet:
            print("  " + _row_text(row), flush=True)

    async def sampler() -> None:
        while True:
            await take()
            await asyncio.sleep(plan.sample_every - (time.monotonic() - t0) % plan.sample_every)

    try:
        await take("before")
        wall = await _load(load, plan, t0, sampler)
        await take("end")
        # Once the clients' connections are closed and the node idles, what it holds
        # should be back to where it was before the load: tasks and descriptors are
        # per connection and per request while it runs.
        await asyncio.sleep(IDLE_SECONDS)
        await take("idle")
        final = await read_final_state(ipam.store, ipam.keys)
    finally:
        await ipam.close()
    verdict = check(load.history.operations, final)
    return document(plan, samples, load, verdict.summary(), wall, len(final.ips))


async def _load(load: Load, plan: Plan, t0: float,
                sampler: Callable[[], Awaitable[None]]) -> float:
    """The clients until `plan.seconds` after `t0`, sampled meanwhile; the wall time."""
    connector = aiohttp.TCPConnector(limit=plan.clients)
    async with aiohttp.ClientSession(connector=connector, trust_env=False,
                                     timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
                                     ) as session:
        load.session = session
        deadline = t0 + plan.seconds
        ticker = asyncio.ensure_future(sampler())
        clients = [asyncio.ensure_future(load.client(i, deadline)) for i in range(plan.clients)]
        try:
            done, late = await asyncio.wait(clients, timeout=plan.seconds + STOP_TIMEOUT)
        finally:
            ticker.cancel()
        for task in late:  # cannot happen with bounded requests; never leave one in flight
            task.cancel()
        if late:
            await asyncio.wait(late)
        crashed = [t.exception() for t in done if not t.cancelled() and t.exception()]
        if crashed:
            raise RuntimeError(f"a soak client failed: {crashed[0]!r}") from crashed[0]
    return time.monotonic() - t0


def growth(samples: list[dict[str, Any]], name: str, warmup: float) -> dict[str, Any]:
    """A series' value at the end of warm-up, at the end (median of the last three), the
    change in per cent, and its least-squares slope per hour after warm-up."""
    points = [(s["t"], s[name]) for s in samples if s.get(name) is not None]
    after = [(t, v) for t, v in points if t >= warmup]
    if len(after) < 2:
        return {"warm": None, "end": None, "growth_pct": None, "per_hour": None,
                "max": max((v for _, v in points), default=None)}
    warm = after[0][1]
    end = statistics.median(v for _, v in after[-3:])
    ts, vs = [t for t, _ in after], [v for _, v in after]
    t_mean, v_mean = statistics.fmean(ts), statistics.fmean(vs)
    var = sum((t - t_mean) ** 2 for t in ts)
    slope = sum((t - t_mean) * (v - v_mean) for t, v in after) / var if var else 0.0
    return {"warm": warm, "end": end,
            "growth_pct": round((end - warm) / warm * 100, 2) if warm else None,
            "per_hour": round(slope * 3600, 3), "max": max(v for _, v in points)}


def document(plan: Plan, samples: list[dict[str, Any]], load: Load, verdict: dict[str, Any],
             wall: float, held_at_end: int) -> dict[str, Any]:
    loaded = [s for s in samples if s["phase"] == "load"]
    trends = {name: growth(loaded, name, plan.warmup)
              for name in ("rss_mib", "fds", "tasks", "etcd_db_mib", "etcd_db_in_use_mib",
                           "etcd_rss_mib", "idempotency_keys")}
    complete = [s for s in loaded
                if None not in (s["rss_mib"], s["fds"], s["tasks"], s["etcd_db_mib"])]
    phases = {s["phase"]: s for s in samples if s["phase"] != "load"}
    before_idle = {name: [phases.get("before", {}).get(name), phases.get("idle", {}).get(name)]
                   for name in ("rss_mib", "fds", "tasks")}
    checks = [
        {"name": "history clean (rules a-e and the audit)", "ok": verdict["ok"]},
        {"name": "samples taken: at least 3 with RSS, fds, tasks and etcd DB size",
         "ok": len(complete) >= 3, "measured": len(complete)},
        {"name": "cycles done", "ok": load.cycles > 0, "measured": load.cycles},
    ]
    rss = trends["rss_mib"]["growth_pct"]
    targets = [{"name": f"gateway RSS growth after warm-up < {TARGET_RSS_GROWTH_PCT:g} %",
                "measured": rss, "met": rss is not None and rss < TARGET_RSS_GROWTH_PCT}]
    return {
        "plan": asdict(plan),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "wall_s": round(wall, 1), "cycles": load.cycles,
        "cycles_per_s": round(load.cycles / wall, 2) if wall else 0.0,
        "late_cycles": load.late_cycles, "operations": load.history.counts(),
        "errors": load.errors, "ips_held_at_end": held_at_end,
        "trends": trends, "before_and_idle": before_idle, "history": verdict, "checks": checks, "targets": targets,
        "verified": all(c["ok"] for c in checks), "samples": samples,
    }


def _row_text(s: dict[str, Any]) -> str:
    return (f"t={s['t']:>7.1f}s {s['phase']:<6} rss {s['rss_mib']} MiB fds {s['fds']} tasks {s['tasks']} "
            f"etcd db {s['etcd_db_mib']} MiB (in use {s['etcd_db_in_use_mib']}) "
            f"keys {s['etcd_keys']} (IPs {s['ips']}, idempotency {s['idempotency_keys']}) "
            f"etcd rss {s['etcd_rss_mib']} MiB; "
            f"cycles {s['cycles']} ops {s['operations']} http {s['http_requests']} "
            f"compactions {s['compactions']}")


def summary(doc: dict[str, Any]) -> str:
    """The result in a few lines: the load, the trends, the history, checks and target."""
    p = doc["plan"]
    lines = [(f"soak: {doc['wall_s']} s, {p['clients']} clients, {doc['cycles']} cycles "
              f"({doc['cycles_per_s']}/s, asked {p['rate']:g}/s; {doc['late_cycles']} late), "
              f"operations {doc['operations']}, errors {doc['errors'] or 'none'}")]
    rows = doc["samples"]
    step = max(1, len(rows) // 12)
    lines += [f"series (every {p['sample_every']:g}s, {len(rows)} samples):"]
    shown = rows[::step]
    if rows and shown[-1] is not rows[-1]:
        shown.append(rows[-1])
    lines += ["  " + _row_text(s) for s in shown]
    for name, g in doc["trends"].items():
        lines.append(f"  {name:<20} after warm-up ({p['warmup']:g}s): {g['warm']} -> "
                     f"{g['end']} ({g['growth_pct']} %), slope {g['per_hour']}/h, max {g['max']}")
    lines.append("  before the load -> idle after it: " + ", ".join(
        f"{name} {b} -> {i}" for name, (b, i) in doc["before_and_idle"].items()))
    h = doc["history"]
    lines.append(f"history: {'clean' if h['ok'] else 'VIOLATED'} ({h['operations']} operations;"
                 f" requests {h['requests']}; unknown bookings {h['unknown_bookings']}; "
                 f"addresses booked again after a release {h['reused_addresses']})")
    lines += [f"  {v}" for v in h["examples"]]
    lines += [f"check {'ok ' if c['ok'] else 'FAILED'} {c['name']}" for c in doc["checks"]]
    lines += [f"target {'met' if t['met'] else 'NOT met'}: {t['name']} (measured "
              f"{t['measured']} %)" for t in doc["targets"]]
    return "\n".join(lines)


class SoakNode:
    """`python -m bench.soaknode` (the real `ipam serve`) on one etcd; use `with`."""

    def __init__(self, endpoints: list[str]) -> None:
        self.endpoints = endpoints
        self.admin_secret = str(uuid.uuid4())
        self.dir = Path(tempfile.mkdtemp(prefix="bench-soak-"))
        self.tasks_file = self.dir / "tasks.json"
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        env = {**os.environ, "IPAM_ADMIN_SECRET_KEY": self.admin_secret,
               "IPAM_ETCD_ENDPOINTS": ",".join(self.endpoints), "IPAM_REGION": REGION,
               "IPAM_ETCD_PREFIX": PREFIX, "IPAM_PORT": str(port), "IPAM_HOST": "127.0.0.1",
               "IPAM_LOG_LEVEL": "warning"}
        with open(self.dir / "gateway.log", "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.soaknode", str(self.tasks_file)], cwd=ROOT,
                env=env, stdout=log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + READY_TIMEOUT
        while True:  # bounded by the deadline
            try:
                http(self.url, "GET", "/readyz", timeout=1.0)
                return self
            except (OSError, HttpError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"the soak's gateway did not start: {self.log_tail()}")
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, lines: int = 20) -> str:
        text = (self.dir / "gateway.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def write(doc: dict[str, Any], out: Path) -> Path:
    """`soak[-quick]-<time>.json` under `out`."""
    return results.write("soak", doc["plan"]["quick"], doc, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=None,
                    help="how long the load runs (default 3600; --quick: 20; CI: 120)")
    ap.add_argument("--quick", action="store_true",
                    help="a lighter load, sampled every 2 s, for 20 s unless --seconds")
    ap.add_argument("--rate", type=float, default=None,
                    help="cycles per second, all clients together (default 20; --quick 10)")
    ap.add_argument("--clients", type=int, default=None, help="default 8; --quick 4")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds before the RSS baseline (default a quarter, at most 300)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"),
                    help="directory of the JSON result")
    ap.add_argument("--quiet", action="store_true", help="no samples while it runs")
    args = ap.parse_args(argv)
    plan = Plan.make(args.quick, args.seconds, args.rate, args.clients, args.warmup)
    t0 = time.monotonic()
    print(f"bench soak{' --quick' if plan.quick else ''}: {plan.seconds:g} s, one etcd member, "
          f"one gateway node, {plan.clients} clients at {plan.rate:g} cycles/s", flush=True)
    with EtcdCluster(1, name_prefix="bench-soak") as cluster, \
            SoakNode(list(cluster.endpoints)) as node:
        doc = asyncio.run(run(plan, cluster, node, args.quiet))
    path = write(doc, Path(args.out))
    print(summary(doc))
    print(f"\nwrote {path} in {time.monotonic() - t0:.0f}s")
    return 0 if doc["verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
