"""The result document, the targets of issue 4, the table, the JSON file and the chart."""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
from pathlib import Path
from typing import Any

from . import results

BOOKING_MODES = ("book", "lifecycle")


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def reference(before: dict[int, Any], after: dict[int, Any]) -> dict[int, dict[str, float]]:
    """The ceiling a run is compared with: the mean of the sweeps before and after."""
    out = {}
    for c in before:
        pair = [x for x in (before.get(c), after.get(c)) if x and x["ok"]]
        if pair:
            out[c] = {"per_s": round(sum(x["per_s"] for x in pair) / len(pair), 2),
                      "p50_ms": round(sum(x["latency"]["p50_ms"] for x in pair) / len(pair), 3),
                      "p99_ms": round(sum(x["latency"]["p99_ms"] for x in pair) / len(pair), 3)}
    return out


def document(plan: Any, before: dict[int, Any], after: dict[int, Any], runs: list[dict[str, Any]],
             scenarios: dict[str, Any], audits: dict[str, Any]) -> dict[str, Any]:
    ref = reference(before, after)
    for r in runs:
        c = int(r.get("concurrency", 1))
        if r["mode"] not in BOOKING_MODES:
            continue
        if c in ref:
            r["ratio_to_sweep_ceiling"] = _ratio(r["per_s"], ref[c]["per_s"])
        # The ceiling measured right before and after this very run, else the sweeps'.
        near = r.get("ceiling_adjacent") or ref.get(c)
        if near:
            r["ratio_to_ceiling"] = _ratio(r["per_s"], near["per_s"])
            r["p99_ratio_to_ceiling"] = _ratio(r["latency"]["p99_ms"], near["p99_ms"])
    verified = (all(r["verify"]["ok"] for r in runs) and all(a["ok"] for a in audits.values())
                and all(s.get("verify", {}).get("ok", True) for s in scenarios.values()))
    doc = {
        "bench": "contention", "quick": plan.quick,
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "plan": dataclasses.asdict(plan),
        "ceiling": {"before": before, "after": after, "reference": ref},
        "runs": runs, "scenarios": scenarios, "audits": audits, "verified": verified,
    }
    doc["targets"] = targets(doc)
    return doc


def _find(runs: list[dict[str, Any]], scenario: str, **match: Any) -> dict[str, Any] | None:
    for r in runs:
        if r["scenario"] == scenario and all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 4: what was measured, the bound, met or not (None: not run)."""
    runs, out = doc["runs"], []
    cs = doc["plan"]["concurrency"]

    def add(name: str, measured: Any, bound: str, met: bool | None, detail: str = "") -> None:
        out.append({"target": name, "measured": measured, "bound": bound, "met": met,
                    "detail": detail})

    top = max(cs)
    a_top = _find(runs, "a", concurrency=top)
    def near(r: dict[str, Any], what: str) -> Any:
        adjacent = r.get("ceiling_adjacent")
        if adjacent:
            return adjacent[what]
        return doc["ceiling"]["reference"].get(r["concurrency"], {}).get(what)

    add(f"throughput at C={top}, one source, / ceiling",
        a_top and a_top.get("ratio_to_ceiling"), ">= 0.5 (aim >= 1.0)",
        None if not a_top or a_top.get("ratio_to_ceiling") is None
        else a_top["ratio_to_ceiling"] >= 0.5,
        a_top and f"{a_top['per_s']:,.0f}/s vs adjacent ceiling {near(a_top, 'per_s'):,.0f}/s"
        f" (vs sweeps: {a_top.get('ratio_to_sweep_ceiling')})" or "")
    a64 = _find(runs, "a", concurrency=64)
    add("p99 at C=64 / ceiling p99 at C=64", a64 and a64.get("p99_ratio_to_ceiling"), "<= 10",
        None if not a64 or a64.get("p99_ratio_to_ceiling") is None
        else a64["p99_ratio_to_ceiling"] <= 10,
        a64 and f"{a64['latency']['p99_ms']} ms vs adjacent ceiling {near(a64, 'p99_ms')} ms"
        or "")
    b0, b99 = _find(runs, "b", fill_level=0.0), _find(runs, "b", fill_level=0.99)
    # Both as ratios to their own adjacent ceiling: the machine drifts between the runs.
    ratio = (_ratio(b99.get("ratio_to_ceiling"), b0.get("ratio_to_ceiling"))
             if b0 and b99 else None)
    add(f"throughput at 99% fill / empty pool (same {b0['pool'] if b0 else '/16'}, same C)",
        ratio, ">= 0.7", None if ratio is None else ratio >= 0.7,
        f"{b99.get('ratio_to_ceiling')} vs {b0.get('ratio_to_ceiling')} x ceiling; raw "
        f"{b99['per_s']:,.0f}/s vs {b0['per_s']:,.0f}/s = {_ratio(b99['per_s'], b0['per_s'])}"
        if b0 and b99 else "")
    full = _find(runs, "b", fill_level=1.0)
    probe = _find(runs, "b", exhausted_probe=True)
    p99 = probe["exhausted_latency"]["p99_ms"] if probe else None
    add("'exhausted' answer p99 (ms) once full, C=1", p99, "< 10",
        None if p99 is None else p99 < 10,
        probe and full and f"{probe['exhausted_latency']['n']} answers, p50 "
        f"{probe['exhausted_latency']['p50_ms']} ms; at C={full['concurrency']} right after "
        f"the last booking: p50 {full['exhausted_latency']['p50_ms']} ms, p99 "
        f"{full['exhausted_latency']['p99_ms']} ms" or "")
    p50s = {pool: r["latency_by_pn"][pn]["p50_ms"] for r in runs if r.get("uncontended")
            for pn, pool in r["pools"].items()}
    spread = (_ratio(max(p50s.values()), min(p50s.values()))
              if len(p50s) == 3 and min(p50s.values()) else None)
    add("uncontended p50 /24 vs /16 vs /64 (max/min)", spread, "<= 1.2",
        None if spread is None else spread <= 1.2,
        ", ".join(f"{k} {v} ms" for k, v in p50s.items()))
    bad = [r["label"] for r in runs if not r["verify"]["ok"]]
    bad += [f"audit after {s}" for s, a in doc["audits"].items() if not a["ok"]]
    bad += [f"scenario {s}" for s, x in doc["scenarios"].items()
            if not x.get("verify", {}).get("ok", True)]
    lost = sum(r["verify"]["lost"] for r in runs)
    dups = sum(r["verify"]["duplicates"] for r in runs)
    add("duplicates / lost acknowledged bookings, every run", f"{dups} / {lost}", "0 / 0",
        not bad, "failed: " + ", ".join(bad) if bad else f"{len(runs)} runs verified")
    g = doc["scenarios"].get("g")
    add("cold start: spawn -> first booking (s), source of >= 60,000 IPs",
        g and g.get("spawn_to_first_booking_s"), "< 2",
        None if not g or g["source_held"] < 60_000 else g["spawn_to_first_booking_s"] < 2,
        g and f"ready->first booking {g['ready_to_first_booking_s']}s on a source holding "
              f"{g['source_held']} IPs" or "")
    add("gateway RSS with ten /16 sources warm (MiB)", g and g.get("rss_ten_slash16_warm_mib"),
        "< 200", None if not g else g["rss_ten_slash16_warm_mib"] < 200,
        g and f"{g['warm_sources']} sources; main nodes now {g['main_gateways_rss_mib']} MiB"
        or "")
    return out


# -- text ----------------------------------------------------------------------------------


def _f(x: Any, fmt: str = "{:,.0f}") -> str:
    return "-" if x is None else fmt.format(x)


def run_line(r: dict[str, Any]) -> str:
    """One progress line after a run."""
    lat = r.get("latency") or {}
    v = r["verify"]
    errs = sum(r.get("errors", {}).values())
    return (f"{r['scenario']} {r['label']}: ok {r.get('ok')} err {errs} "
            f"{_f(r.get('per_s'))}/s p50 {_f(lat.get('p50_ms'), '{:.1f}')} "
            f"p99 {_f(lat.get('p99_ms'), '{:.1f}')} ms, etcd txn/booking "
            f"{_f(r['etcd'].get('txn_per_booking'), '{:.3f}')}; verify "
            f"{'ok' if v['ok'] else 'FAILED ' + str(v)}")


def table(doc: dict[str, Any]) -> str:
    ref = doc["ceiling"]["reference"]
    lines = ["", "ceiling (raw etcd create-if-absent txn, no HTTP), before / after / reference:",
             (f"  {'C':>4} {'before/s':>10} {'after/s':>10} {'ref/s':>10} {'p50 ms':>8} "
             f"{'p99 ms':>8} {'etcdCPU ms/txn':>15}")]
    for c, x in ref.items():
        b, a = doc["ceiling"]["before"].get(c), doc["ceiling"]["after"].get(c)
        lines.append(f"  {c:>4} {_f(b and b['per_s']):>10} {_f(a and a['per_s']):>10} "
                     f"{_f(x['per_s']):>10} {x['p50_ms']:>8.2f} {x['p99_ms']:>8.2f} "
                     f"{_f(b and b.get('etcd_cpu_ms_per_txn'), '{:.3f}'):>15}")
    rd = doc["ceiling"].get("read_c1")
    if rd:
        lines.append(f"  one linearizable read, C=1: p50 {rd['p50_ms']} ms, p99 {rd['p99_ms']} ms")
    head = (f"  {'run':<32} {'C':>4} {'ok':>6} {'err':>5} {'/s':>7} {'ceil/s':>7} {'xceil':>6} "
            f"{'p50':>7} "
            f"{'p95':>7} {'p99':>7} {'p99x':>6} {'txn/bk':>6} {'rng/bk':>6} {'gwCPU':>6} "
            f"{'etcdCPU':>7} {'verify':>6}")
    lines += [
        "",
        "gateway runs through haproxy (latency ms; ceil/s: the etcd ceiling at the same C",
        "  measured right before and after the run; xceil, p99x: ratios to it; txn/bk, rng/bk:",
        "  etcd Txn and Range requests per booking; gwCPU, etcdCPU: CPU ms per booking, per",
        "  cycle in e):",
        head,
    ]
    for r in doc["runs"]:
        if r["mode"] == "list":
            continue
        lat = r["latency"]
        ok = r.get("ok") or 0
        gw = 1000 * r["cpu_s"].get("gateways", 0) / ok if ok else None
        ec = 1000 * r["cpu_s"].get("etcd", 0) / ok if ok else None
        lines.append(
            f"  {(r['scenario'] + ' ' + r['label'])[:32]:<32} {r['concurrency']:>4} {ok:>6} "
            f"{sum(r['errors'].values()):>5} {_f(r['per_s']):>7} "
            f"{_f((r.get('ceiling_adjacent') or {}).get('per_s')):>7} "
            f"{_f(r.get('ratio_to_ceiling'), '{:.2f}'):>6} {_f(lat['p50_ms'], '{:.1f}'):>7} "
            f"{_f(lat['p95_ms'], '{:.1f}'):>7} {_f(lat['p99_ms'], '{:.1f}'):>7} "
            f"{_f(r.get('p99_ratio_to_ceiling'), '{:.1f}'):>6} "
            f"{_f(r['etcd']['txn_per_booking'], '{:.2f}'):>6} "
            f"{_f(r['etcd']['range_per_booking'], '{:.2f}'):>6} {_f(gw, '{:.2f}'):>6} "
            f"{_f(ec, '{:.2f}'):>7} {'ok' if r['verify']['ok'] else 'FAIL':>6}")
        if r["errors"]:
            lines.append(f"  {'':<32}   errors: {r['errors']}")
        if r.get("uncontended"):
            lines.append(f"  {'':<32}   p50 / p99 by pool: " + ", ".join(
                f"{pool} {r['latency_by_pn'][pn]['p50_ms']} / {r['latency_by_pn'][pn]['p99_ms']}"
                for pn, pool in r["pools"].items()))
        if r["mode"] == "lifecycle":
            ops = ", ".join(f"{op} p50 {x['p50_ms']} p99 {x['p99_ms']}"
                            for op, x in r["op_latency"].items())
            lines.append(f"  {'':<32}   cycles/s {r['per_s']}, ops/s {r['ops_per_s']}: {ops}")
        if r.get("exhausted_latency", {}).get("n"):
            x = r["exhausted_latency"]
            lines.append(f"  {'':<32}   exhausted answers: {x['n']}, p50 {x['p50_ms']} "
                         f"p99 {x['p99_ms']} ms; full after {r['time_to_exhausted_s']}s")
    for r in doc["runs"]:
        if r["mode"] != "list":
            continue
        lines += ["", (f"list, region of {r['region_ips']} IPs, Private Network of "
                      f"{r['list_pn_ips']} IPs walked: {r['pages']} pages, {r['walked']} IPs "
                      f"(total_count {r['walk_total_count']}); verify "
                      f"{'ok' if r['verify']['ok'] else 'FAIL'}")]
        if r["errors"]:
            lines.append(f"  errors: {r['errors']}")
        for kind, x in r["latency_by_kind"].items():
            lines.append(f"  {kind:<16} n {x['n']:>4}  p50 {x['p50_ms']:>9.1f} ms  "
                         f"p99 {x['p99_ms']:>9.1f} ms")
    g = doc["scenarios"].get("g")
    if g:
        lines += ["", (f"cold start: spawn->ready {g['spawn_to_ready_s']}s, ready->first booking "
                      f"{g['ready_to_first_booking_s']}s, total {g['spawn_to_first_booking_s']}s "
                      f"(source holding {g['source_held']} IPs); RSS {g['rss_after_first_mib']} "
                      f"MiB after it, {g['rss_ten_slash16_warm_mib']} MiB with "
                      f"{g['warm_sources']} /16 warm")]
    return "\n".join(lines)


def targets_text(doc: dict[str, Any]) -> str:
    lines = ["", "targets (issue 4):"]
    for t in doc["targets"]:
        mark = {True: "MET ", False: "MISS", None: "n/a "}[t["met"]]
        lines.append(f"  [{mark}] {t['target']}: {_f(t['measured'], '{}')} "
                     f"(bound {t['bound']}) {t['detail']}")
    lines.append(f"  verified from etcd: {'yes' if doc['verified'] else 'NO'}")
    noisy = {name: {k: v for k, v in found.items() if v}
             for name, found in doc.get("gateway_logs", {}).items() if any(found.values())}
    if noisy:
        lines.append(f"  process logs mention: {noisy}")
    return "\n".join(lines)


# -- files ------------------------------------------------------------------------------------


def write(doc: dict[str, Any], out: Path, chart: bool = True) -> tuple[Path, Path | None]:
    json_path = results.write("contention", doc["quick"], doc, out)
    png_path = json_path.with_suffix(".png") if chart else None
    if png_path:
        draw(doc, png_path)
    return json_path, png_path


def draw(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 5))
    ref = doc["ceiling"]["reference"]
    cs = sorted(int(c) for c in ref)
    ax1.plot(cs, [ref[c]["per_s"] for c in cs], "k--o", label="etcd ceiling (mean)")
    series = {"a /16 one source": ("a", None), "c /64 one source": ("c", "/64"),
              "d 100 sources": ("d", None)}
    for label, (scen, pool) in series.items():
        pts = sorted((r["concurrency"], r) for r in doc["runs"] if r["scenario"] == scen
                     and r["mode"] == "book" and not r.get("uncontended")
                     and (pool is None or r.get("pool") == pool))
        if not pts:
            continue
        ax1.plot([c for c, _ in pts], [r["per_s"] for _, r in pts], "-o", label=label)
        ax2.plot([c for c, _ in pts], [r.get("ratio_to_ceiling") or 0 for _, r in pts], "-o",
                 label=label)
        ax3.plot([c for c, _ in pts], [r["latency"]["p99_ms"] for _, r in pts], "-o",
                 label=label + " p99")
    ax3.plot(cs, [ref[c]["p99_ms"] for c in cs], "k--o", label="etcd ceiling p99")
    ax2.axhline(0.5, color="r", ls=":", label="target 0.5")
    ax2.axhline(1.0, color="g", ls=":", label="aim 1.0")
    for ax, title, ylabel in ((ax1, "bookings/s", "per second"),
                              (ax2, "ratio to the etcd ceiling", "x ceiling"),
                              (ax3, "p99 latency", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients C")
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax3.set_yscale("log")
    fig.suptitle(f"ipam contention{' (quick)' if doc['quick'] else ''}, "
                 f"{doc['finished_at']}, {doc['machine']['cpus']} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
