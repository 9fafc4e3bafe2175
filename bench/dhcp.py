"""`python -m bench dhcp`: the DHCP/DNS agent under load, as ratios to baselines of the same run.

One run starts one etcd member on 127.0.0.1, fills a Private Network with N attached IPs
through the allocator, serves the agent's DHCP responder and internal DNS over the live
`NetworkView` on loopback sockets (`bench.endpoints` says why not `python -m netagent`
itself), and drives them with a load generator in a process of its own
(`python -m bench.dhcpload`). Figures, each beside a baseline measured right before
and right after it (the machine is shared and drifts):

  1  DORA exchanges/s for MACs IPAM holds an IP for, the load generator a DHCP relay;
     baseline: raw UDP echo round trips/s (each datagram sent back as it arrives, through
     the agent's socket layer), same client, same packets, same concurrency C
  2  DORA/s for new MACs, `--unknown-mac book`: each costs a booking through the agent's
     own booking path; baseline (the issue's): a gateway node's bookings over HTTP in one
     source, same C; also reported: the same asks booked by the allocator in-process
  3  DNS A and PTR queries/s; baseline: UDP echo round trips/s of the same packets
     (and `dnsperf`'s figures too, when it is installed)
  4  watch lag: an attach acknowledged to another process (`bench.attacher`) -> this
     process's view (the one DHCP and DNS answer from) showing it, M changes, p50/p99
  5  memory: the RSS of a process holding a NetworkView of the network (`bench.viewmem`)

The client checks every answer (address, options, xid, server id; the DNS records); the
datagram counts of client and server must agree; the bookings of new MACs are checked
in the view and in etcd; the whole prefix is audited at the end. Exit status 1 if any
check failed. Results: `dhcp[-quick]-<time>.json` under `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import random
import resource
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from allocator.contract import IPAM, AddressAsk, Caller, NetworkView, PrivateNetwork, Resource
from allocator.store import EtcdStore
from devcluster.etcd import EtcdCluster
from netagent.agent import UNKNOWN_CLIENT
from netagent.dhcp4 import Dhcp4Responder
from netagent.dns import DnsConfig, DnsServer, InternalDns, serve_dns

from . import dhcpreport, dnsperf
from .dhcpload import dhcp_request
from .endpoints import RelayedDhcp, UdpEndpoint, agent_responder, counters_delta, kernel_drops
from .gatewaynode import GatewayNode
from .rig import ROOT, cpu_seconds
from .stats import summary
from .verify import check_run, full_audit

REGION = "fr-par"
PRODUCT = "instance_server"
NETWORK_NAME = "bench"  # its DNS zone: bench.internal
SLASH16_HOLDS = 60_000  # IPs the bench books per /16 of the served network (65,533 fit)
CLIENT_GRACE = 5.0  # seconds the load generator waits for answers in flight at its end
VIEW_CATCH_UP = 10.0  # seconds the view may take to show what the allocator committed
LAG_WAIT = 5.0  # seconds an attach may take to show in the view before it counts as lost
WARM_BOOKINGS = 1  # per fresh network of one /16 (`Bench.warm`)
LAG_PAUSE = 0.005  # seconds between two attaches: each change is seen on its own


@dataclass
class Plan:
    """Counts and deadlines of one run; --quick and --scale shrink counts, never the checks."""

    quick: bool
    scale: float
    concurrency: list[int]
    network_ips: int  # IPs of the served network (the view the memory figure measures)
    known_macs: int  # of them, the MACs the relay speaks for
    dora_count: int  # DORA exchanges per run (the known MACs in turn)
    unknown_count: int  # new MACs, one booking each
    booking_count: int  # the allocator's own bookings, before and after the DHCP run
    dns_count: int  # queries per run (A, then PTR)
    lag_changes: int
    run_seconds: float  # no exchange starts after this; the counts end a run well before
    prefill_concurrency: int = 256
    use_dnsperf: bool = True

    @classmethod
    def make(cls, quick: bool, scale: float, concurrency: list[int] | None) -> Plan:
        def n(x: float, least: int) -> int:
            return max(least, int(x * scale))

        if quick:
            p = cls(quick=True, scale=scale, concurrency=concurrency or [64],
                    network_ips=n(10_000, 500), known_macs=n(2_000, 100),
                    dora_count=n(10_000, 200), unknown_count=n(2_000, 50),
                    booking_count=n(2_000, 50), dns_count=n(10_000, 200),
                    lag_changes=n(100, 10), run_seconds=30.0)
        else:
            p = cls(quick=False, scale=scale, concurrency=concurrency or [1, 64],
                    network_ips=n(100_000, 500), known_macs=n(10_000, 100),
                    dora_count=n(40_000, 200), unknown_count=n(10_000, 50),
                    booking_count=n(5_000, 50), dns_count=n(40_000, 200),
                    lag_changes=n(200, 10), run_seconds=120.0)
        p.known_macs = min(p.known_macs, p.network_ips - p.lag_changes)
        return p


@dataclass
class Served:
    """The network the relay and the DNS clients reach, as the bench built it."""

    network: PrivateNetwork
    known: list[tuple[str, str, str]]  # (MAC, address, resource name) of the relay's MACs
    lag_ips: list[tuple[str, str]]  # (IP id, address) booked detached, attached for the lag
    subnets: list[dict[str, str]]  # cidr, gateway, server: what answers are checked against


@dataclass
class Bench:
    """What every measurement shares: the allocator, the view, the servers, the results."""

    plan: Plan
    ipam: IPAM
    cluster: EtcdCluster
    project_id: str
    quiet: bool
    runs: list[dict[str, Any]] = field(default_factory=list)
    sections: dict[str, Any] = field(default_factory=dict)
    _next_slash16: int = 100

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)

    @property
    def store(self) -> EtcdStore:
        """The allocator's etcd store, as `bench.verify` reads it."""
        assert isinstance(self.ipam.store, EtcdStore)  # IPAM.connect makes one
        return self.ipam.store

    def etcd_cpu(self) -> float:
        return sum(cpu_seconds(m.process.pid) for m in self.cluster.members if m.process)

    # -- set-up through the allocator -----------------------------------------------------

    async def network(self, name: str, slash16s: int = 1) -> PrivateNetwork:
        """A Private Network of `slash16s` fresh /16 subnets (10.N.0.0/16, N from 100 up)."""
        cidrs = [f"10.{self._next_slash16 + i}.0.0/16" for i in range(slash16s)]
        self._next_slash16 += slash16s
        return await self.ipam.create_private_network(REGION, self.project_id, None, name,
                                                      subnets=cidrs)

    async def warm(self, pn: PrivateNetwork) -> None:
        """One detached booking in each subnet of `pn`, untimed: the first booking of a
        source loads it (its free addresses, its watch), a cold start that the steady
        rate a run measures should not include."""
        for subnet in pn.subnets:
            await self.ipam.book(AddressAsk(region=REGION, project_id=self.project_id,
                                            subnet_id=subnet.id))

    async def prefill(self, pn: PrivateNetwork, count: int, detached: int
                      ) -> list[tuple[str, str, str, str]]:
        """Book `count` IPs in `pn` through the allocator, the first `count - detached`
        attached to a named resource with a MAC; [(IP id, address, MAC, name)]."""
        subnets = [s.id for s in pn.subnets]
        caller = Caller(role="product", product_types=frozenset({PRODUCT}))
        made: list[tuple[str, str, str, str]] = []
        issued = 0
        deadline = time.monotonic() + max(120.0, count / 300)
        t0 = last = time.monotonic()

        async def worker() -> None:
            nonlocal issued, last
            while issued < count and time.monotonic() < deadline:
                i = issued
                issued += 1
                mac, name = mac_of(0, i), f"vm-{i}"
                res = (Resource.product(PRODUCT, str(uuid.uuid4()), mac, name)
                       if i < count - detached else None)
                # Each /16 in turn: the source of a booking is named, none fills first.
                r = await self.ipam.book(AddressAsk(
                    region=REGION, project_id=self.project_id, subnet_id=subnets[i % len(subnets)],
                    resource=res), caller)
                made.append((r.id, r.address.split("/")[0], mac if res else "",
                             name if res else ""))
                if time.monotonic() - last > 2.0:
                    last = time.monotonic()
                    self.log(f"    pre-fill: {len(made)}/{count} "
                             f"({len(made) / (last - t0):,.0f}/s)")

        await asyncio.gather(*(worker() for _ in range(self.plan.prefill_concurrency)))
        if len(made) != count:
            raise RuntimeError(f"pre-fill of {pn.id}: {len(made)} of {count} booked in time")
        self.log(f"    pre-filled {count} IPs in {time.monotonic() - t0:.1f}s")
        return made

    async def serve_network(self) -> Served:
        """The served network, filled: known MACs for the relay, detached IPs for the lag."""
        p = self.plan
        pn = await self.network(NETWORK_NAME, math.ceil(p.network_ips / SLASH16_HOLDS))
        self.log(f"  pre-filling {p.network_ips} IPs in {len(pn.subnets)} x /16 "
                 f"({p.lag_changes} of them detached, for the watch lag)")
        made = await self.prefill(pn, p.network_ips, p.lag_changes)
        attached = [m for m in made if m[2]]
        known = [(mac, addr, name) for _, addr, mac, name in
                 random.Random(7).sample(attached, p.known_macs)]
        lag = [(ip_id, addr) for ip_id, addr, mac, _ in made if not mac]
        return Served(pn, known, lag, [subnet_spec(s.subnet) for s in pn.subnets])

    # -- one load-generator run -----------------------------------------------------------

    async def client(self, name: str, job: dict[str, Any],
                     server: Callable[[], dict[str, int]]) -> dict[str, Any]:
        """Run the load generator once; its result, with the server side's counts and CPU."""
        job = {"host": "127.0.0.1", "seconds": self.plan.run_seconds, "grace": CLIENT_GRACE,
               "quiet": self.quiet, "label": name, **job}
        counts0, cpu0, etcd0 = server(), process_cpu(), self.etcd_cpu()
        result = await run_process("bench.dhcpload", job, self.quiet,
                                   float(job["seconds"]) + CLIENT_GRACE + 60)
        counts1, cpu1, etcd1 = server(), process_cpu(), self.etcd_cpu()
        elapsed = result["elapsed_s"] or 1.0
        result.update(name=name, server=counters_delta(counts1, counts0),
                      server_cpu_s=round(cpu1 - cpu0, 3),
                      server_busy=round((cpu1 - cpu0) / elapsed, 3),
                      etcd_cpu_s=round(etcd1 - etcd0, 3),
                      timed_out=result["started"] < result["count"])
        return result

    async def echo(self, endpoint: UdpEndpoint, name: str, job: dict[str, Any]
                   ) -> dict[str, Any]:
        """One echo run: the baseline of the run it brackets."""
        r = await self.client(name, {**job, "mode": "echo", "port": endpoint.port},
                              endpoint.counts)
        r["verify"] = verdict(exchange_problems(r, r["server"]))
        self.sections.setdefault("echo_runs", []).append(r)
        self.log(f"  {name}: {r['per_s']:,.0f} round trips/s, p50 {r['latency']['p50_ms']} ms"
                 f"{failed_text(r)}")
        return r


def mac_of(kind: int, i: int) -> str:
    """A locally administered MAC: 02:<kind>:<i as four bytes>."""
    return f"02:{kind:02x}:" + ":".join(f"{b:02x}" for b in i.to_bytes(4, "big"))


def subnet_spec(cidr: str) -> dict[str, str]:
    """The subnet as DHCP serves it: the gateway is its first address, the server (DHCP and
    DNS) its second-to-last (`allocator.contract.SubnetInfo`)."""
    net = ipaddress.IPv4Network(cidr)
    return {"cidr": str(net), "gateway": str(net[1]), "server": str(net[-2])}


def process_cpu() -> float:
    """CPU seconds of this process so far (every thread: gRPC's too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_process(module: str, job: dict[str, Any], quiet: bool,
                      timeout: float) -> dict[str, Any]:
    """`python -m <module>` with `job` on stdin; its JSON result (killed on timeout)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, cwd=str(ROOT), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL if quiet else None)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(json.dumps(job).encode()), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"python -m {module} exited with {proc.returncode}")
    return json.loads(out)  # type: ignore[no-any-return]


# -- checks ------------------------------------------------------------------------------------


def exchange_problems(r: dict[str, Any], server: dict[str, int]) -> list[str]:
    """What a load-generator run got wrong: wrong or lost answers, counts that disagree."""
    problems = []
    if r["wrong"]:
        problems.append(f"{r['wrong']} wrong answers, e.g. {r['problems'][:3]}")
    if r["lost"]:
        problems.append(f"{r['lost']} exchanges never answered")
    drops = server.get("kernel_drops", 0)  # queue full: the client's retransmits cover them
    if "received" in server and server["received"] + drops != r["sent"]:
        problems.append(f"server received {server['received']} datagrams (and the kernel "
                        f"dropped {drops}), client sent {r['sent']}")
    if "replied" in server and server["replied"] != r["received"]:
        problems.append(f"server sent {server['replied']} answers, client got {r['received']}")
    for key in ("misaddressed", "failed"):
        if server.get(key):
            problems.append(f"server: {server[key]} answers {key}")
    return problems


def verdict(problems: list[str]) -> dict[str, Any]:
    return {"ok": not problems, "problems": problems}


def failed_text(r: dict[str, Any]) -> str:
    return "" if r["verify"]["ok"] else f"; CHECK FAILED: {r['verify']['problems']}"


def baseline(before: dict[str, Any], after: dict[str, Any], kind: str) -> dict[str, Any]:
    """The baseline a run is compared with: the mean of the runs right before and after."""
    return {"kind": kind, "before_per_s": before["per_s"], "after_per_s": after["per_s"],
            "per_s": round((before["per_s"] + after["per_s"]) / 2, 2)}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


# -- 1: DORA for known MACs ---------------------------------------------------------------------


async def dora_known(b: Bench, served: Served, dhcp: UdpEndpoint, relayed: RelayedDhcp,
                     raw_echo: UdpEndpoint) -> None:
    """(1) DORA/s for known MACs, relay-style, at each C, between two echo runs."""
    p = b.plan
    job = {"macs": [m for m, _, _ in served.known], "expect": [a for _, a, _ in served.known],
           "giaddr": served.subnets[0]["gateway"], "subnets": served.subnets}

    def counts() -> dict[str, int]:
        return {**dhcp.counts(), **relayed.counts()}

    for c in p.concurrency:
        echo_job = {**job, "packets": "dhcp", "concurrency": c, "count": 2 * p.dora_count}
        before = await b.echo(raw_echo, f"1 echo C={c} (before)", echo_job)
        r = await b.client(f"1 DORA known C={c}", {**job, "mode": "dora", "port": dhcp.port,
                                                   "concurrency": c, "count": p.dora_count},
                           counts)
        after = await b.echo(raw_echo, f"1 echo C={c} (after)", echo_job)
        s = r["server"]
        problems = exchange_problems(r, s)
        if s["responder_offers"] + s["responder_acks"] + s["responder_naks"] != s["replied"]:
            problems.append(f"responder counted {s['responder_offers']} offers + "
                            f"{s['responder_acks']} acks + {s['responder_naks']} naks, "
                            f"{s['replied']} answers sent")
        if r["naks"] or s["responder_unknown_booked"] or s["responder_unknown_ignored"]:
            problems.append(f"a known MAC was NAKed or unknown: {r['naks']} NAKs")
        r.pop("bound", None)
        r.update(scenario="1", concurrency=c, verify=verdict(problems),
                 baseline=baseline(before, after, "udp_echo_round_trips"),
                 round_trips_per_s=round(2 * r["per_s"], 2),
                 per_server_cpu_s=ratio(r["done"], r["server_cpu_s"]))
        r["ratio_to_baseline"] = ratio(r["round_trips_per_s"], r["baseline"]["per_s"])
        b.runs.append(r)
        b.log(f"  {r['name']}: {r['per_s']:,.0f} DORA/s ({r['round_trips_per_s']:,.0f} round "
              f"trips/s = {r['ratio_to_baseline']} x echo), p50 {r['latency']['p50_ms']} ms p99 "
              f"{r['latency']['p99_ms']} ms, server CPU {r['server_busy']:.0%}, "
              f"{r['per_server_cpu_s'] or 0:,.0f} DORA per server CPU-second{failed_text(r)}")


# -- 2: DORA for unknown MACs, each a booking ------------------------------------------------------


async def book_directly(b: Bench, pn: PrivateNetwork, count: int, c: int, kind: int
                        ) -> dict[str, Any]:
    """The allocator's own rate for the agent's asks: `count` new MACs booked at C."""
    caller = Caller(role="product", product_types=frozenset({UNKNOWN_CLIENT}))
    latencies: list[float] = []
    acked: list[list[str]] = []
    errors: list[str] = []
    issued = 0
    deadline = time.perf_counter() + b.plan.run_seconds
    cpu0, etcd0 = process_cpu(), b.etcd_cpu()

    async def worker() -> None:
        nonlocal issued
        while issued < count and time.perf_counter() < deadline:
            mac = mac_of(kind, issued)
            issued += 1
            # The ask `Agent._book_unknown` makes, field for field.
            ask = AddressAsk(region=REGION, project_id=b.project_id, private_network_id=pn.id,
                             resource=Resource.product(UNKNOWN_CLIENT, str(uuid.uuid5(
                                 uuid.NAMESPACE_URL, f"{pn.id}/{mac}")), mac))
            t0 = time.perf_counter()
            try:
                record = await b.ipam.book(ask, caller)
            except Exception as err:  # noqa: BLE001 - counted, and the run fails its check
                errors.append(f"{type(err).__name__}: {err}")
                continue
            latencies.append(time.perf_counter() - t0)
            acked.append([record.id, record.address, pn.id])

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(c)))
    elapsed = time.perf_counter() - t0
    cpu, etcd = process_cpu() - cpu0, b.etcd_cpu() - etcd0
    check = await check_run(b.store, b.ipam.keys, [s.id for s in pn.subnets], acked, (),
                            len(acked) + WARM_BOOKINGS)
    problems = [f"{len(errors)} bookings failed, e.g. {errors[:3]}"] if errors else []
    if not check["ok"]:
        problems.append(f"etcd check: {check}")
    return {"concurrency": c, "count": count, "done": len(acked),
            "elapsed_s": round(elapsed, 4), "per_s": round(len(acked) / elapsed, 2),
            "latency": summary(latencies), "server_cpu_s": round(cpu, 3),
            "etcd_cpu_s": round(etcd, 3), "verify": verdict(problems)}


async def dora_unknown(b: Bench, dhcp: UdpEndpoint, relayed: RelayedDhcp, view: NetworkView,
                       unknown: PrivateNetwork, gateway: GatewayNode) -> None:
    """(2) DORA/s for new MACs (each booked by the agent), between booking runs of the
    allocator itself and of a gateway node over HTTP (the issue's baseline)."""
    p = b.plan
    c = max(p.concurrency)
    token = gateway.project_key(str(uuid.uuid4()), b.project_id)

    async def direct(when: str, kind: int) -> dict[str, Any]:
        pn = await b.network(f"bench-book-{when}")
        await b.warm(pn)
        r = await book_directly(b, pn, p.booking_count, c, kind)
        r["name"] = f"2 allocator books C={c} ({when})"
        b.sections.setdefault("booking_runs", []).append(r)
        b.log(f"  {r['name']}: {r['per_s']:,.0f} bookings/s, p50 {r['latency']['p50_ms']} ms"
              f"{failed_text(r)}")
        return r

    async def through_gateway(when: str) -> dict[str, Any]:
        pn = await b.network(f"bench-gateway-{when}")
        await b.warm(pn)
        gateway_cpu0 = cpu_seconds(gateway.pid)
        r = await run_process("bench.loadgen", gateway.booking_job(
            token, b.project_id, pn.id, c, p.booking_count, p.run_seconds, b.quiet),
            b.quiet, p.run_seconds + 60)
        ips = r.pop("ips")
        problems = [f"{sum(r['errors'].values())} bookings failed: {r['errors']}"
                    ] if r["errors"] else []
        check = await check_run(b.store, b.ipam.keys, [s.id for s in pn.subnets], ips, (),
                                len(ips) + WARM_BOOKINGS)
        if not check["ok"]:
            problems.append(f"etcd check: {check}")
        r.update(name=f"2 gateway books C={c} ({when})", concurrency=c, count=p.booking_count,
                 done=r["ok"], gateway_cpu_s=round(cpu_seconds(gateway.pid) - gateway_cpu0, 3),
                 verify=verdict(problems))
        b.sections.setdefault("gateway_booking_runs", []).append(r)
        b.log(f"  {r['name']}: {r['per_s']:,.0f} bookings/s, p50 {r['latency']['p50_ms']} ms"
              f"{failed_text(r)}")
        return r

    before = await direct("before", 0xB0)
    gateway_before = await through_gateway("before")
    macs = [mac_of(0xBB, i) for i in range(p.unknown_count)]
    spec = subnet_spec(unknown.subnets[0].subnet)

    def counts() -> dict[str, int]:
        return {**dhcp.counts(), **relayed.counts()}

    r = await b.client(f"2 DORA unknown C={c}", {
        "mode": "dora", "port": dhcp.port, "macs": macs, "giaddr": spec["gateway"],
        "subnets": [spec], "concurrency": c, "count": len(macs), "restarts": 5}, counts)
    gateway_after = await through_gateway("after")
    after = await direct("after", 0xB1)
    problems = exchange_problems(r, r["server"])
    bound = {mac: address for mac, address in r.pop("bound")}
    problems += await check_unknown(b, view, unknown, macs, bound, r)
    # A booking the agent gave up on (`booking_failed`, e.g. a retransmit racing its own
    # first booking) is a figure, not a failure: the checks above say whether every MAC
    # ended with one address, the one IPAM holds.
    r.update(scenario="2", concurrency=c, verify=verdict(problems),
             baseline=baseline(gateway_before, gateway_after, "gateway_bookings"),
             allocator_baseline=baseline(before, after, "allocator_bookings"),
             per_server_cpu_s=ratio(r["done"], r["server_cpu_s"]))
    r["ratio_to_baseline"] = ratio(r["per_s"], r["baseline"]["per_s"])
    r["ratio_to_allocator"] = ratio(r["per_s"], r["allocator_baseline"]["per_s"])
    b.runs.append(r)
    b.log(f"  {r['name']}: {r['per_s']:,.0f} DORA/s = {r['ratio_to_baseline']} x the gateway's "
          f"bookings/s, {r['ratio_to_allocator']} x the allocator's; p50 "
          f"{r['latency']['p50_ms']} ms p99 {r['latency']['p99_ms']} ms; {r['naks']} NAKs, "
          f"{r['retransmits']} retransmits{failed_text(r)}")


async def check_unknown(b: Bench, view: NetworkView, pn: PrivateNetwork, macs: list[str],
                        bound: dict[str, str], r: dict[str, Any]) -> list[str]:
    """Every new MAC bound to the address IPAM now holds for it; none twice, none extra."""
    problems = []
    if len(bound) != len(macs) and not r["timed_out"]:
        problems.append(f"{len(macs) - len(bound)} new MACs never bound")
    deadline = time.monotonic() + VIEW_CATCH_UP
    missing = [m for m in bound if view.lease(pn.id, m, False) is None]
    while missing and time.monotonic() < deadline:
        await view.changed(view.revision, max(0.01, deadline - time.monotonic()))
        missing = [m for m in missing if view.lease(pn.id, m, False) is None]
    if missing:
        problems.append(f"{len(missing)} bound MACs not in the view after {VIEW_CATCH_UP}s")
    acked = []
    for mac, address in bound.items():
        lease = view.lease(pn.id, mac, False)
        if lease is None:
            continue
        if lease.address != address:
            problems.append(f"{mac} bound to {address}, IPAM holds {lease.address}")
        acked.append([lease.ip_id, f"{address}/{lease.prefixlen}", pn.id])
    check = await check_run(b.store, b.ipam.keys, [s.id for s in pn.subnets], acked, (),
                            len(bound) + WARM_BOOKINGS)
    r["etcd_check"] = check
    if not check["ok"]:
        problems.append(f"etcd check of the new MACs' bookings: {check}")
    return problems


# -- 3: DNS -------------------------------------------------------------------------------------------


async def dns_queries(b: Bench, served: Served, dns: InternalDns, server: DnsServer,
                      raw_echo: UdpEndpoint) -> None:
    """(3) A and PTR queries/s at each C, between two echo runs of the same packets."""
    p = b.plan
    domain = f"{NETWORK_NAME}.internal"
    by_type = {
        "A": [["A", f"{name}.{domain}", address] for _, address, name in served.known],
        "PTR": [["PTR", ipaddress.IPv4Address(address).reverse_pointer, f"{name}.{domain}"]
                for _, address, name in served.known],
    }

    def counts() -> dict[str, int]:
        return {**vars(dns.counters), "kernel_drops": kernel_drops(server.port)}

    for c in p.concurrency:
        echo_job = {"packets": "dns", "queries": by_type["A"], "concurrency": c,
                    "count": p.dns_count}
        before = await b.echo(raw_echo, f"3 echo C={c} (before)", echo_job)
        measured = []
        for qtype, queries in by_type.items():
            r = await b.client(f"3 DNS {qtype} C={c}", {
                "mode": "dns", "port": server.port, "queries": queries, "concurrency": c,
                "count": p.dns_count}, counts)
            s = r["server"]
            problems = exchange_problems(r, {})
            if (s["queries"] + s["kernel_drops"] != r["sent"]
                    or s["answered"] != r["received"]):
                problems.append(f"DNS counted {s['queries']} queries (and the kernel dropped "
                                f"{s['kernel_drops']}), {s['answered']} answered; client sent "
                                f"{r['sent']}, got {r['received']}")
            r.update(scenario="3", qtype=qtype, concurrency=c, verify=verdict(problems),
                     per_server_cpu_s=ratio(r["done"], r["server_cpu_s"]))
            measured.append(r)
        after = await b.echo(raw_echo, f"3 echo C={c} (after)", echo_job)
        for r in measured:
            r["baseline"] = baseline(before, after, "udp_echo_round_trips")
            r["ratio_to_baseline"] = ratio(r["per_s"], r["baseline"]["per_s"])
            b.runs.append(r)
            b.log(f"  {r['name']}: {r['per_s']:,.0f} queries/s = {r['ratio_to_baseline']} x "
                  f"echo, p50 {r['latency']['p50_ms']} ms p99 {r['latency']['p99_ms']} ms, "
                  f"server CPU {r['server_busy']:.0%}{failed_text(r)}")
        # dnsperf at the largest C only: a second opinion on the throughput, not latency.
        if p.use_dnsperf and dnsperf.available() and c == max(p.concurrency):
            for qtype, queries in by_type.items():
                d = await dnsperf.run(server.port, queries, c, p.dns_count, p.run_seconds)
                d["name"] = f"3 dnsperf {qtype} C={c}"
                ok = d["completed"] and not d["lost"] and d["noerror"] == d["completed"]
                d["verify"] = verdict([] if ok else [
                    f"dnsperf: {d['completed']} completed, {d['lost']} lost, {d['noerror']} ok"])
                b.sections.setdefault("dnsperf", []).append(d)
                b.log(f"  {d['name']}: {d.get('per_s') or 0:,.0f} queries/s "
                      f"({d.get('completed')} completed, {d.get('lost')} lost)")


# -- 4: watch lag ----------------------------------------------------------------------------------


async def watch_lag(b: Bench, served: Served, view: NetworkView, responder: Dhcp4Responder,
                    endpoints: list[str], prefix: str) -> None:
    """(4) another process attaches each detached IP in turn; from each acknowledgement
    to the moment this process's view (the one DHCP answers from) shows it."""
    pn = served.network.id
    expected = {mac_of(0x1A, i): address for i, (_, address) in enumerate(served.lag_ips)}
    seen: dict[str, float] = {}
    unseen = set(expected)
    stop = asyncio.Event()

    async def follow() -> None:
        # Bounded by `stop`, set at most LAG_WAIT after the attacher ends.
        while unseen and not stop.is_set():
            await view.changed(view.revision, 0.1)
            now = time.monotonic()
            for mac in [m for m in unseen if view.lease(pn, m, False) is not None]:
                seen[mac] = now
                unseen.discard(mac)

    follower = asyncio.ensure_future(follow())
    try:
        job = {"endpoints": endpoints, "prefix": prefix, "pause": LAG_PAUSE,
               "seconds": b.plan.run_seconds,
               "ips": [[ip_id, mac_of(0x1A, i), f"lag-{i}"]
                       for i, (ip_id, _) in enumerate(served.lag_ips)]}
        out = await run_process("bench.attacher", job, b.quiet, b.plan.run_seconds + 60)
        await asyncio.wait({follower}, timeout=LAG_WAIT)
    finally:
        stop.set()
        await follower
    problems = [f"attacher: {e}" for e in out["errors"][:3]]
    lags: list[float] = []
    early = 0
    giaddr = ipaddress.IPv4Address(served.subnets[0]["gateway"]).packed
    for i, (mac, t_ack, _) in enumerate(out["acks"]):
        if mac not in seen:
            problems.append(f"the attach to {mac} not in the view {LAG_WAIT}s after the last")
            continue
        # The view may apply the watch event before the attacher reads its answer.
        early += seen[mac] < t_ack
        lags.append(max(0.0, seen[mac] - t_ack))
        # What the client asks next: its DISCOVER is offered the attached address.
        reply = await responder.handle(dhcp_request(1, 0x1A000000 + i, bytes.fromhex(
            mac.replace(":", "")), giaddr), None)
        offered = str(ipaddress.IPv4Address(reply.payload[16:20])) if reply else None
        if offered != expected[mac]:
            problems.append(f"{mac} offered {offered} after its attach of {expected[mac]}")
    if len(out["acks"]) != len(expected):
        problems.append(f"{len(out['acks'])} of {len(expected)} attaches acknowledged")
    lag: dict[str, Any] = {
        "changes": len(expected), "seen": len(lags), "seen_before_ack": early,
        "lag": summary(lags), "attach": summary([a for _, _, a in out["acks"]]),
        "pause_s": LAG_PAUSE, "verify": verdict(problems)}
    b.sections["watch_lag"] = lag
    b.log(f"  4 watch lag over {lag['changes']} attaches: p50 {lag['lag']['p50_ms']} ms, "
          f"p99 {lag['lag']['p99_ms']} ms, max {lag['lag']['max_ms']} ms ({early} seen before "
          f"the attacher read its answer){failed_text(lag)}")


# -- 5: memory ---------------------------------------------------------------------------------------


async def view_memory(b: Bench, served: Served, endpoints: list[str], prefix: str) -> None:
    """(5) the RSS of a process of its own holding a view of the served network."""
    m = await run_process("bench.viewmem", {"endpoints": endpoints, "prefix": prefix,
                                            "pn_ids": [served.network.id]}, b.quiet, 600.0)
    m["ips"] = b.plan.network_ips
    problems = [] if m["leases"] == m["ips"] else [
        f"the view holds {m['leases']} IPs, the network {m['ips']}"]
    m["verify"] = verdict(problems)
    b.sections["memory"] = m
    b.log(f"  5 a view of {m['leases']} IPs: RSS {m['rss_with_view_mib']} MiB "
          f"({m['view_mib']} MiB over the {m['rss_before_mib']} MiB before it, "
          f"{m['bytes_per_ip']} bytes per IP), loaded in {m['load_s']}s{failed_text(m)}")


# -- the whole run ----------------------------------------------------------------------------------


async def run(cluster: EtcdCluster, plan: Plan, quiet: bool) -> dict[str, Any]:
    """Set up, measure (1)-(5), audit; the result document."""
    t_start = time.monotonic()
    prefix = f"/bench-dhcp/{uuid.uuid4().hex[:8]}/"
    ipam = await IPAM.connect(cluster.endpoints, prefix=prefix)
    b = Bench(plan, ipam, cluster, str(uuid.uuid4()), quiet)
    closers: list[Callable[[], Any]] = []
    try:
        b.log("set-up through the allocator:")
        served = await b.serve_network()
        unknown = await b.network("bench-unknown")
        await b.warm(unknown)
        b.log("5 memory:")
        await view_memory(b, served, cluster.endpoints, prefix)
        t0 = time.perf_counter()
        view = await ipam.network_view([served.network.id, unknown.id])
        closers.append(view.close)
        b.sections["view"] = {"load_s": round(time.perf_counter() - t0, 3),
                              "leases": len(view.leases(served.network.id))}
        responder = agent_responder(ipam, view, [served.network.id, unknown.id], [unknown.id])
        relayed = RelayedDhcp(responder)
        dhcp = await UdpEndpoint.open(relayed)
        raw_echo = await UdpEndpoint.open()
        for e in (dhcp, raw_echo):
            closers.append(e.close)
        dns = InternalDns(view, DnsConfig(networks=(served.network.id,)))
        server = await serve_dns(dns, "127.0.0.1", 0)
        closers.append(server.close)
        b.log(f"  serving DHCP on 127.0.0.1:{dhcp.port}, DNS on 127.0.0.1:{server.port}; "
              f"the view holds {b.sections['view']['leases']} IPs of the served network "
              f"(loaded in {b.sections['view']['load_s']}s)")
        b.log("1 DORA, known MACs, relay-style:")
        await dora_known(b, served, dhcp, relayed, raw_echo)
        b.log("2 DORA, unknown MACs booked by the agent:")
        with GatewayNode(cluster.endpoints, prefix, REGION) as gateway:
            await dora_unknown(b, dhcp, relayed, view, unknown, gateway)
        b.log("3 DNS:")
        await dns_queries(b, served, dns, server, raw_echo)
        b.log("4 watch lag:")
        await watch_lag(b, served, view, responder, cluster.endpoints, prefix)
        t0 = time.perf_counter()
        audit = await full_audit(b.store, ipam.keys)
        audit["seconds"] = round(time.perf_counter() - t0, 1)
        b.log(f"audit of the prefix: {'ok' if audit['ok'] else 'FAILED'} "
              f"({audit['records']} records in {audit['seconds']}s)")
    finally:
        for close in reversed(closers):
            done = close()
            if asyncio.iscoroutine(done):
                await done
        await ipam.close()
    doc = dhcpreport.document(plan, b.runs, b.sections, audit)
    doc["wall_s"] = round(time.monotonic() - t_start, 1)
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench dhcp", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller counts, under two minutes")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"),
                    help="directory of the JSON result")
    ap.add_argument("--concurrency", default=None,
                    help="comma-separated C of runs 1 and 3 (default 1,64; --quick 64); "
                         "run 2 uses the largest")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every count")
    ap.add_argument("--no-dnsperf", action="store_true",
                    help="skip dnsperf even when it is installed")
    ap.add_argument("--quiet", action="store_true", help="no progress, only the table")
    args = ap.parse_args(argv)
    cs = [int(c) for c in args.concurrency.split(",")] if args.concurrency else None
    plan = Plan.make(args.quick, args.scale, cs)
    plan.use_dnsperf = not args.no_dnsperf
    t0 = time.monotonic()
    print(f"bench dhcp{' --quick' if plan.quick else ''}: starting one etcd member; "
          f"{plan.network_ips} IPs in the served network", flush=True)
    with EtcdCluster(1, name_prefix="bench-dhcp") as cluster:
        doc = asyncio.run(run(cluster, plan, args.quiet))
    path = dhcpreport.write(doc, Path(args.out))
    print(dhcpreport.table(doc))
    print(dhcpreport.targets_text(doc))
    print(f"\nwrote {path} in {time.monotonic() - t0:.0f}s")
    return 0 if doc["verified"] else 1
