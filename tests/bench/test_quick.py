"""Smoke test of the benchmark instrument: it runs, verifies from etcd and writes its result.

No timing is asserted: the machine is shared. What is asserted is what the bench
itself must get right: the result document's shape, zero duplicates and zero lost
acknowledged bookings in every run, a clean history of every write after each scenario
(bench.history_check), and that it stops everything it started.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from bench.stats import percentile, summary

ROOT = Path(__file__).resolve().parents[2]


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 0.50) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([7.0], 0.99) == 7.0
    assert summary([])["n"] == 0
    assert summary([0.001, 0.003])["p50_ms"] == 1.0


def test_quick_smoke_run_verifies_every_booking(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "bench", "contention", "--quick", "--scenarios", "ae",
           "--concurrency", "1,16", "--scale", "0.1", "--quiet", "--out", str(tmp_path)]
    if importlib.util.find_spec("matplotlib") is None:
        cmd.append("--no-chart")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [path] = list(tmp_path.glob("contention-quick-*.json"))
    doc = json.loads(path.read_text())

    assert {"ceiling", "runs", "scenarios", "audits", "targets", "verified", "plan",
            "machine"} <= doc.keys()
    assert {"before", "after", "reference"} <= doc["ceiling"].keys()
    assert set(doc["ceiling"]["reference"]) == {"1", "16"}
    labels = {(r["scenario"], r["concurrency"]) for r in doc["runs"]}
    assert {("a", 1), ("a", 16), ("e", 16)} <= labels
    for run in doc["runs"]:
        assert run["verify"]["lost"] == 0, run
        assert run["verify"]["duplicates"] == 0, run
        assert run["verify"]["count_exact"], run
        assert run["verify"]["ok"], run
        assert run["ok"] > 0 and not run["errors"], run
        assert {"per_s", "latency", "etcd", "cpu_s", "ratio_to_ceiling"} <= run.keys()
        assert {"p50_ms", "p95_ms", "p99_ms"} <= run["latency"].keys()
    booking = [r for r in doc["runs"] if r["mode"] == "book"]
    assert all(r["etcd"]["txn_per_booking"] > 0 for r in booking)
    lifecycle = next(r for r in doc["runs"] if r["mode"] == "lifecycle")
    assert set(lifecycle["op_latency"]) == {"book", "attach", "detach", "release"}
    assert all(a["ok"] for a in doc["audits"].values())
    assert set(doc["history"]) == {"a", "e"}
    for scenario, verdict in doc["history"].items():
        assert verdict["ok"] and verdict["violations"] == 0, (scenario, verdict)
    # Every booking of every run is in the history, and each one answered.
    booked = sum(r["ok"] for r in doc["runs"])
    assert doc["history"]["e"]["requests"]["book"] == {"ok": booked}
    assert doc["history"]["e"]["requests"]["release"] == {"ok": lifecycle["ok"]}
    assert [c["name"] for c in doc["checks"]] == ["history after a", "history after e"]
    assert "self-checks: all passed" in proc.stdout
    assert doc["verified"] is True
    assert [t["target"] for t in doc["targets"]]  # every target is listed, met or not
    if "--no-chart" not in cmd:
        assert list(tmp_path.glob("contention-quick-*.png"))
