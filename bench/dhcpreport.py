"""The DHCP bench's result document, its targets, the table and the JSON file."""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
from pathlib import Path
from typing import Any

from . import results

DORA_TARGET = 5_000  # exchanges/s on one core
UNKNOWN_TARGET = 0.8  # x a gateway node's single-source booking rate (HTTP), same run
DNS_TARGET = 20_000  # queries/s
LAG_P99_TARGET_MS = 1_000


def checks(runs: list[dict[str, Any]], sections: dict[str, Any],
           audit: dict[str, Any]) -> list[dict[str, Any]]:
    """Every self-check of the run, by name: passed or not, and what went wrong."""
    out = [{"name": r["name"], **r["verify"]} for r in runs]
    for key in ("echo_runs", "booking_runs", "gateway_booking_runs", "dnsperf"):
        out += [{"name": r["name"], **r["verify"]} for r in sections.get(key, [])]
    for key in ("watch_lag", "memory"):
        if key in sections:
            out.append({"name": key, **sections[key]["verify"]})
    out.append({"name": "audit", "ok": audit["ok"],
                "problems": [] if audit["ok"] else [str(audit)]})
    return out


def document(plan: Any, runs: list[dict[str, Any]], sections: dict[str, Any],
             audit: dict[str, Any]) -> dict[str, Any]:
    """The result of one run: plan, measurements, baselines, checks and targets."""
    done = checks(runs, sections, audit)
    doc = {
        "bench": "dhcp", "quick": plan.quick,
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "plan": dataclasses.asdict(plan),
        "runs": runs, **sections, "audit": audit, "checks": done,
        "verified": all(c["ok"] for c in done),
    }
    doc["targets"] = targets(doc)
    return doc


def _last(runs: list[dict[str, Any]], scenario: str, **match: Any) -> dict[str, Any] | None:
    """The run of `scenario` at the largest concurrency (the throughput figure)."""
    found = [r for r in runs if r["scenario"] == scenario
             and all(r.get(k) == v for k, v in match.items())]
    return max(found, key=lambda r: r["concurrency"]) if found else None


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue: what was measured, the bound, met or not (None: not run)."""
    out: list[dict[str, Any]] = []

    def add(name: str, measured: Any, bound: str, met: bool | None, detail: str) -> None:
        out.append({"target": name, "measured": measured, "bound": bound, "met": met,
                    "detail": detail})

    runs = doc["runs"]
    r = _last(runs, "1")
    add("1 DORA/s, known MACs, relay-style", r and r["per_s"], f">= {DORA_TARGET:,} on one core",
        None if r is None else r["per_s"] >= DORA_TARGET,
        r and (f"C={r['concurrency']}: {r['round_trips_per_s']:,.0f} round trips/s = "
               f"{r['ratio_to_baseline']} x UDP echo ({r['baseline']['per_s']:,.0f}/s); "
               f"{r['per_server_cpu_s'] or 0:,.0f} DORA per server CPU-second (server busy "
               f"{r['server_busy']:.0%}, client busy {r['client_busy'] or 0:.0%})") or "")
    r = _last(runs, "2")
    add("2 DORA/s, unknown MACs booked / gateway bookings/s", r and r["ratio_to_baseline"],
        f">= {UNKNOWN_TARGET}", None if r is None or r["ratio_to_baseline"] is None
        else r["ratio_to_baseline"] >= UNKNOWN_TARGET,
        r and (f"C={r['concurrency']}: {r['per_s']:,.0f} DORA/s vs {r['baseline']['per_s']:,.0f} "
               f"bookings/s through a gateway node (before {r['baseline']['before_per_s']:,.0f}, "
               f"after {r['baseline']['after_per_s']:,.0f}); {r['naks']} NAKs") or "")
    a = r and r.get("allocator_baseline")
    add("2 DORA/s, unknown MACs booked / the allocator's own bookings/s",
        r and r.get("ratio_to_allocator"), "reported", None,
        a and r and (f"{r['per_s']:,.0f} DORA/s vs {a['per_s']:,.0f} bookings/s made in the "
               f"agent's process without HTTP (before {a['before_per_s']:,.0f}, after "
               f"{a['after_per_s']:,.0f})") or "")
    for qtype in ("A", "PTR"):
        r = _last(runs, "3", qtype=qtype)
        perf = [d for d in doc.get("dnsperf", []) if d["name"].startswith(f"3 dnsperf {qtype} ")]
        add(f"3 DNS {qtype} queries/s", r and r["per_s"], f">= {DNS_TARGET:,}",
            None if r is None else r["per_s"] >= DNS_TARGET,
            r and (f"C={r['concurrency']}: {r['ratio_to_baseline']} x UDP echo "
                   f"({r['baseline']['per_s']:,.0f}/s), server busy {r['server_busy']:.0%}, "
                   f"client busy {r['client_busy'] or 0:.0%}"
                   + (f"; dnsperf {perf[-1]['per_s']:,.0f}/s" if perf and perf[-1]["per_s"]
                      else "")) or "")
    lag = doc.get("watch_lag")
    p99 = lag and lag["lag"]["p99_ms"]
    add("4 watch lag p99 (ms), attach acknowledged -> served", p99,
        f"<= {LAG_P99_TARGET_MS:,}", None if p99 is None else p99 <= LAG_P99_TARGET_MS,
        lag and (f"{lag['seen']} of {lag['changes']} changes, p50 {lag['lag']['p50_ms']} ms, "
                 f"max {lag['lag']['max_ms']} ms") or "")
    m = doc.get("memory")
    add(f"5 RSS with a view of {m and m['ips']:,} IPs (MiB)" if m else "5 RSS with a view (MiB)",
        m and m["rss_with_view_mib"], "reported", None,
        m and (f"{m['view_mib']} MiB for the view itself, {m['bytes_per_ip']} bytes per IP; "
               f"loaded in {m['load_s']}s") or "")
    failed = [c["name"] for c in doc["checks"] if not c["ok"]]
    add("self-checks (answers, counts, bookings in etcd, audit)",
        f"{len(doc['checks']) - len(failed)} / {len(doc['checks'])}", "all", not failed,
        "failed: " + ", ".join(failed) if failed else "every check passed")
    return out


# -- text ------------------------------------------------------------------------------------


def _f(x: Any, fmt: str = "{:,.0f}") -> str:
    return "-" if x is None else fmt.format(x)


def table(doc: dict[str, Any]) -> str:
    """The measured runs beside their baselines, then the other figures."""
    head = (f"  {'run':<24} {'C':>4} {'done':>7} {'/s':>8} {'base/s':>8} {'xbase':>6} "
            f"{'p50 ms':>7} {'p99 ms':>7} {'srvCPU':>6} {'/CPU-s':>7} {'client':>6} "
            f"{'retx':>5} {'drop':>5} {'lost':>5} {'wrong':>5} {'check':>5}")
    lines = ["", "runs (base/s: the baseline measured right before and after the run; xbase:",
             "  1 round trips (2 per DORA) / UDP echo round trips, 2 DORA / gateway bookings,",
             "  3 queries / UDP echo round trips; srvCPU, client: CPU busy of the server and",
             "  the load generator; /CPU-s: exchanges per server CPU-second; retx: datagrams",
             "  sent again after 2 s; drop: dropped by the kernel, the server's queue full):",
             head]
    for r in doc["runs"]:
        lat = r["latency"]
        lines.append(
            f"  {r['name'][:24]:<24} {r['concurrency']:>4} {r['done']:>7} {_f(r['per_s']):>8} "
            f"{_f(r['baseline']['per_s']):>8} {_f(r['ratio_to_baseline'], '{:.2f}'):>6} "
            f"{_f(lat['p50_ms'], '{:.2f}'):>7} {_f(lat['p99_ms'], '{:.2f}'):>7} "
            f"{_f(r['server_busy'], '{:.0%}'):>6} {_f(r['per_server_cpu_s']):>7} "
            f"{_f(r['client_busy'], '{:.0%}'):>6} {r['retransmits']:>5} "
            f"{r['server'].get('kernel_drops', 0):>5} {r['lost']:>5} "
            f"{r['wrong']:>5} {'ok' if r['verify']['ok'] else 'FAIL':>5}")
        if r.get("naks"):
            lines.append(f"  {'':<24}   {r['naks']} NAKs (each answered by a new DISCOVER)")
        if not r["verify"]["ok"]:
            lines.append(f"  {'':<24}   {r['verify']['problems']}")
    lines += ["", "baselines:"]
    for r in (doc.get("echo_runs", []) + doc.get("booking_runs", [])
              + doc.get("gateway_booking_runs", [])):
        lines.append(f"  {r['name']:<34} {_f(r['per_s']):>8}/s p50 "
                     f"{_f(r['latency']['p50_ms'], '{:.2f}')} ms "
                     f"{'ok' if r['verify']['ok'] else 'FAIL ' + str(r['verify']['problems'])}")
    for d in doc.get("dnsperf", []):
        lines.append(f"  {d['name']:<34} {_f(d['per_s']):>8}/s ({_f(d['completed'])} completed, "
                     f"{_f(d['lost'])} lost)")
    lag, m, v = doc.get("watch_lag"), doc.get("memory"), doc.get("view")
    if lag:
        lines += ["", (f"watch lag, {lag['changes']} attaches: p50 {lag['lag']['p50_ms']} ms, "
                       f"p99 {lag['lag']['p99_ms']} ms, max {lag['lag']['max_ms']} ms; the "
                       f"attach itself p50 {lag['attach']['p50_ms']} ms; "
                       f"{lag['seen_before_ack']} seen before the attacher read its answer")]
    if m:
        lines.append(f"memory: a process holding a view of {m['leases']:,} IPs: RSS "
                     f"{m['rss_with_view_mib']} MiB ({m['rss_before_mib']} MiB before the view, "
                     f"{m['bytes_per_ip']} bytes per IP), view loaded in {m['load_s']}s")
    if v:
        lines.append(f"the serving view: {v['leases']:,} IPs loaded in {v['load_s']}s")
    a = doc["audit"]
    lines.append(f"audit: {'ok' if a['ok'] else 'FAILED'}, {a['records']:,} records")
    return "\n".join(lines)


def targets_text(doc: dict[str, Any]) -> str:
    lines = ["", "targets (printed, not asserted):"]
    for t in doc["targets"]:
        mark = {True: "MET ", False: "MISS", None: "    "}[t["met"]]
        measured = t["measured"]
        shown = _f(measured) if isinstance(measured, (int, float)) and measured > 100 else \
            _f(measured, "{}")
        lines.append(f"  [{mark}] {t['target']}: {shown} (target {t['bound']}) {t['detail']}")
    lines.append(f"  self-checks: {'all passed' if doc['verified'] else 'FAILED'}")
    return "\n".join(lines)


def write(doc: dict[str, Any], out: Path) -> Path:
    """`dhcp[-quick]-<time>.json` under `out`."""
    return results.write("dhcp", doc["quick"], doc, out)
