"""`python -m bench reads`: GET one IP through one gateway, as a ratio to raw etcd reads of
the same keys at the same concurrency in the same run (issue 14, target 6).

One run starts one etcd member (devcluster) and one `ipam serve` node on it
(`bench.gatewaynode`), then:

  1  fill: book `fill` IPs in one Private Network through `allocator.contract.IPAM` in
     this process (the node shares its prefix), untimed
  2  for each concurrency C (1, 16, 64, 256), for `seconds` each, in this order:
     raw: C workers read the record of a random one of those IPs, one etcd Range each,
          with the gateway's own etcd client (`EtcdStore`): the baseline
     gateway: C workers GET a random one of them through the node, one keep-alive HTTP/1.1
          connection each (a few lines of asyncio, so that the client's own cost stays
          small next to the node's)
  3  checks through the node: a GET after a PATCH sees it; an unknown IP is a 404
     `not_found`.

Reported per C: GETs/s, raw Range/s, their ratio (the figure: the machine may be shared
and noisy, the ratio less so), latencies, the node's CPU time per GET and the etcd
requests per GET (etcd's own counters: under 1 means GETs were coalesced). Target: GET
one IP >= 5,000/s on one gateway, at the best C.

Self-checks (exit status 1 if one fails): every GET answered 200 with the IP asked and
every raw read found its key; the two checks of step 3.
Result: `reads[-quick]-<time>.json` under `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import os
import platform
import random
import re
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from allocator.contract import IPAM, AddressAsk
from allocator.store import EtcdStore
from devcluster.etcd import EtcdCluster

from . import results
from .gatewaynode import GatewayNode
from .rig import ROOT, cpu_seconds
from .stats import summary

REGION = "fr-par"
TARGET_PER_SECOND = 5_000
_HANDLED = re.compile(r'^grpc_server_handled_total\{[^}]*grpc_method="(\w+)"[^}]*\} (\S+)$',
                      re.MULTILINE)
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Plan:
    """Counts of one run; --quick shrinks them, never the checks."""

    quick: bool
    fill: int
    seconds: float
    concurrency: tuple[int, ...] = (1, 16, 64, 256)
    fill_concurrency: int = 128

    @classmethod
    def make(cls, quick: bool) -> Plan:
        return cls(True, fill=300, seconds=0.5) if quick else cls(False, fill=2_000,
                                                                  seconds=5.0)


@dataclass
class Tally:
    """What the workers of one step saw."""

    ok: int = 0
    wrong: int = 0  # answered, but not with what was asked
    failed: int = 0  # no answer (connection error)
    latencies: list[float] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < 5:
            self.problems.append(text)


class Connection:
    """One keep-alive HTTP/1.1 connection that sends GETs and reads their answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 headers: bytes) -> None:
        self.reader, self.writer, self.headers = reader, writer, headers

    @classmethod
    async def open(cls, url: str, token: str) -> Connection:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        headers = f"Host: {host}:{port}\r\nX-Auth-Token: {token}\r\n\r\n".encode()
        return cls(reader, writer, headers)

    async def get(self, path: str) -> tuple[int, bytes]:
        """(status, body) of `GET path`."""
        return await self.send(b"GET " + path.encode() + b" HTTP/1.1\r\n" + self.headers)

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """(status, body) of the answer to `request` (all of it, headers and body)."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        at = head.lower().find(b"\r\ncontent-length:")
        length = int(head[at + 17:head.index(b"\r\n", at + 2)]) if at >= 0 else 0
        return int(head[9:12]), await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


def etcd_requests(endpoints: list[str]) -> int:
    """Range and Txn requests etcd has answered so far (its grpc_server_handled_total)."""
    total = 0.0
    for ep in endpoints:
        with _NO_PROXY.open(f"http://{ep}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        total += sum(float(v) for m, v in _HANDLED.findall(text) if m in ("Range", "Txn"))
    return int(total)


async def fill(ipam: IPAM, plan: Plan) -> tuple[str, list[str]]:
    """(project, ids of `plan.fill` IPs booked in one Private Network of it)."""
    project = str(uuid.uuid4())
    pn = await ipam.create_private_network(REGION, project, None, "reads",
                                           subnets=["10.41.0.0/20"])
    ids: list[str] = []

    async def worker(n: int) -> None:
        for _ in range(n):
            r = await ipam.book(AddressAsk(region=REGION, project_id=project,
                                           private_network_id=pn.id))
            ids.append(r.id)

    per, extra = divmod(plan.fill, plan.fill_concurrency)
    await asyncio.gather(*(worker(per + (i < extra)) for i in range(plan.fill_concurrency)))
    return project, ids


async def raw_reads(store: EtcdStore, keys: list[str], concurrency: int, seconds: float
                    ) -> Tally:
    """C workers each reading one random key at a time (a linearizable Range)."""
    tally = Tally()
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        pick, now = random.choice, time.perf_counter
        while (t0 := now()) < deadline:
            key = pick(keys)
            resp = await store.range(key)
            tally.latencies.append(now() - t0)
            if resp.kvs and resp.kvs[0].key.decode() == key:
                tally.ok += 1
            else:
                tally.wrong += 1
                tally.problem(f"{key}: not found")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally


async def gets(url: str, token: str, ids: list[str], concurrency: int, seconds: float
               ) -> Tally:
    """C workers each GETting one random IP at a time, on a connection of its own."""
    tally = Tally()
    base = f"/ipam/v1/regions/{REGION}/ips/"
    connections = await asyncio.gather(*(Connection.open(url, token)
                                         for _ in range(concurrency)))
    deadline = time.perf_counter() + seconds

    async def worker(conn: Connection) -> None:
        pick, now = random.choice, time.perf_counter
        while (t0 := now()) < deadline:
            ip_id = pick(ids)
            try:
                status, body = await conn.get(base + ip_id)
            except (OSError, asyncio.IncompleteReadError) as err:
                tally.failed += 1
                tally.problem(f"{ip_id}: {type(err).__name__}")
                return
            tally.latencies.append(now() - t0)
            if status == 200 and f'"id":"{ip_id}"'.encode() in body:
                tally.ok += 1
            else:
                tally.wrong += 1
                tally.problem(f"{ip_id}: {status} {body[:120]!r}")

    try:
        await asyncio.gather(*(worker(c) for c in connections))
    finally:
        await asyncio.gather(*(c.close() for c in connections))
    return tally


def rate(tally: Tally, seconds: float) -> float:
    return round(tally.ok / seconds, 1)


async def step(node: GatewayNode, store: EtcdStore, endpoints: list[str], token: str,
               keys: list[str], ids: list[str], concurrency: int, seconds: float
               ) -> dict[str, Any]:
    """The raw baseline then the gateway at one concurrency."""
    t0 = time.perf_counter()
    raw = await raw_reads(store, keys, concurrency, seconds)
    raw_s = time.perf_counter() - t0
    requests0, cpu0 = etcd_requests(endpoints), cpu_seconds(node.pid)
    t0 = time.perf_counter()
    got = await gets(node.url, token, ids, concurrency, seconds)
    gw_s = time.perf_counter() - t0
    cpu, requests = cpu_seconds(node.pid) - cpu0, etcd_requests(endpoints) - requests0
    gw_rate, raw_rate = rate(got, gw_s), rate(raw, raw_s)
    return {
        "concurrency": concurrency,
        "gateway": {"per_s": gw_rate, "ok": got.ok, "wrong": got.wrong, "failed": got.failed,
                    "latency": summary(got.latencies), "problems": got.problems,
                    "node_cpu_us_per_get": round(1e6 * cpu / got.ok, 1) if got.ok else None,
                    "etcd_requests_per_get": round(requests / got.ok, 3) if got.ok else None},
        "raw": {"per_s": raw_rate, "ok": raw.ok, "wrong": raw.wrong,
                "latency": summary(raw.latencies), "problems": raw.problems},
        "over_raw": round(gw_rate / raw_rate, 2) if raw_rate else None,
        "ok": (got.wrong, got.failed, raw.wrong) == (0, 0, 0) and got.ok > 0 and raw.ok > 0,
    }


async def read_your_writes(node: GatewayNode, token: str, ip_id: str) -> dict[str, Any]:
    """A PATCH through the node, then a GET: it sees the new tags. And a 404."""
    conn = await Connection.open(node.url, token)
    path = f"/ipam/v1/regions/{REGION}/ips/{ip_id}"
    try:
        body = b'{"tags": ["read-checked"]}'
        patched, _ = await conn.send(
            f"PATCH {path} HTTP/1.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n".encode() + conn.headers + body)
        status, answer = await conn.get(path)
        seen = json.loads(answer).get("tags") if status == 200 else None
        missing, missing_body = await conn.get(f"/ipam/v1/regions/{REGION}/ips/{uuid.uuid4()}")
    finally:
        await conn.close()
    problems = []
    if (patched, status, seen) != (200, 200, ["read-checked"]):
        problems.append(f"PATCH {patched}, then GET {status} with tags {seen}")
    if missing != 404 or json.loads(missing_body).get("type") != "not_found":
        problems.append(f"an unknown IP: {missing} {missing_body[:120]!r}")
    return {"name": "read after write, and an unknown IP, through the node",
            "ok": not problems, "problems": problems}


async def run(cluster: EtcdCluster, node: GatewayNode, plan: Plan, quiet: bool
              ) -> dict[str, Any]:
    t_start = time.monotonic()
    ipam = await IPAM.connect(cluster.endpoints, prefix=node.prefix)
    try:
        store = ipam.store
        assert isinstance(store, EtcdStore)  # IPAM.connect makes one
        _log(quiet, f"  filling {plan.fill:,} IPs")
        t0 = time.perf_counter()
        project, ids = await fill(ipam, plan)
        fill_s = round(time.perf_counter() - t0, 1)
        token = await asyncio.to_thread(node.project_key, str(uuid.uuid4()), project)
        keys = [ipam.keys.ip(i) for i in ids]
        steps = []
        for c in plan.concurrency:
            s = await step(node, store, cluster.endpoints, token, keys, ids, c, plan.seconds)
            steps.append(s)
            _log(quiet, f"  C={c}: gateway {s['gateway']['per_s']:,.0f}/s, raw etcd "
                        f"{s['raw']['per_s']:,.0f}/s (x{s['over_raw']})")
        checks = [{"name": f"C={s['concurrency']}", "ok": s["ok"],
                   "problems": s["gateway"]["problems"] + s["raw"]["problems"]}
                  for s in steps]
        checks.append(await read_your_writes(node, token, ids[0]))
    finally:
        await ipam.close()
    best = max(steps, key=lambda s: s["gateway"]["per_s"])
    return {
        "bench": "reads", "quick": plan.quick,
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(),  # the machine may be shared: its load
                    "load": [round(x, 2) for x in os.getloadavg()]},
        "plan": dataclasses.asdict(plan), "fill_s": fill_s, "steps": steps, "checks": checks,
        "verified": all(c["ok"] for c in checks),
        "targets": [
            {"target": "GET one IP on one gateway", "measured": best["gateway"]["per_s"],
             "bound": f">= {TARGET_PER_SECOND:,}/s",
             "met": best["gateway"]["per_s"] >= TARGET_PER_SECOND,
             "detail": f"at C={best['concurrency']}, x{best['over_raw']} the raw etcd Range "
                       "rate of the same run"},
        ],
        "wall_s": round(time.monotonic() - t_start, 1),
    }


def _log(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, flush=True)


def table(doc: dict[str, Any]) -> str:
    lines = [(f"{doc['plan']['fill']:,} IPs (filled in {doc['fill_s']} s), "
              f"{doc['plan']['seconds']} s per step; load average {doc['machine']['load']}"),
             ("    C   gateway GET/s   raw etcd Range/s   ratio   GET p50/p99 ms"
              "   node CPU us/GET   etcd req/GET")]
    for s in doc["steps"]:
        g, r = s["gateway"], s["raw"]
        lat = g["latency"]
        lines.append(f"  {s['concurrency']:>3}   {g['per_s']:>13,.0f}   {r['per_s']:>16,.0f}"
                     f"   x{s['over_raw']:<5}  {lat['p50_ms']:>6} / {lat['p99_ms']:<8}"
                     f"  {g['node_cpu_us_per_get']:>14}   {g['etcd_requests_per_get']:>11}")
    lines += [results.target_line(t, f"{t['measured']:,.0f}/s") for t in doc["targets"]]
    lines.append(results.self_checks_line(doc["checks"]))
    return "\n".join(lines)


def write(doc: dict[str, Any], out: Path) -> Path:
    """`reads[-quick]-<time>.json` under `out`."""
    return results.write("reads", doc["quick"], doc, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench reads", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="300 IPs, 0.5 s per step")
    ap.add_argument("--seconds", type=float, help="seconds per step (default 5, quick 0.5)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"),
                    help="directory of the JSON result")
    ap.add_argument("--quiet", action="store_true", help="no progress, only the table")
    args = ap.parse_args(argv)
    plan = Plan.make(args.quick)
    if args.seconds:
        plan.seconds = args.seconds
    t0 = time.monotonic()
    print(f"bench reads{' --quick' if plan.quick else ''}: starting one etcd member and one "
          "gateway node", flush=True)
    prefix = f"/bench-reads/{uuid.uuid4().hex[:8]}/"
    with EtcdCluster(1, name_prefix="bench-reads") as cluster, \
            GatewayNode(cluster.endpoints, prefix, REGION) as node:
        doc = asyncio.run(run(cluster, node, plan, args.quiet))
    path = write(doc, Path(args.out))
    print(table(doc))
    print(f"\nwrote {path} in {time.monotonic() - t0:.0f}s")
    return 0 if doc["verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
