"""Smoke test of the lists bench: a quick run completes, every self-check passes and the
result holds every figure. No speed is asserted: the machine is shared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_passes_its_self_checks_and_reports_every_walk_and_filter(
        tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "bench", "lists", "--quick", "--quiet", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [path] = list(tmp_path.glob("lists-quick-*.json"))
    doc = json.loads(path.read_text())

    assert {"plan", "machine", "raw_page", "walks", "afresh", "filters", "audit", "checks",
            "targets", "verified", "wall_s"} <= doc.keys()
    fill = doc["plan"]["fill"]
    assert doc["raw_page"]["keys"] == 100 and doc["raw_page"]["p50_ms"] > 0
    assert len(doc["walks"]) == 4
    for w in doc["walks"]:
        assert (w["ok"], w["problems"], w["ips"]) == (True, [], fill), w["name"]
        assert w["pages"] == fill // 100 + 1  # the SDK stops at the first short page
        assert w["page"]["n"] == w["pages"] and w["page_over_raw"] is not None
        assert w["resumed"] == w["pages"] - 1  # every page after the first went on
    assert [f["page"] for f in doc["afresh"]] == [1, fill // 200, fill // 100]
    needles = doc["plan"]["needles"]
    assert [(f["ok"], f["matches"]) for f in doc["filters"]] == [
        (True, needles), (True, needles), (True, fill // 10 - 1), (True, 1), (True, 1)]
    assert doc["audit"]["ok"] and doc["verified"] is True
    assert all(c["ok"] for c in doc["checks"])
    assert [t["measured"] for t in doc["targets"]] == [doc["walks"][0]["total_s"],
                                                      doc["filters"][0]["p50_ms"]]
