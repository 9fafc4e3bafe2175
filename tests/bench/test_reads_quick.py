"""Smoke test of the reads bench: a quick run completes, every self-check passes and the
result holds every figure. No speed is asserted: the machine is shared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_passes_its_self_checks_and_reports_every_concurrency(tmp_path: Path
                                                                         ) -> None:
    cmd = [sys.executable, "-m", "bench", "reads", "--quick", "--quiet", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [path] = list(tmp_path.glob("reads-quick-*.json"))
    doc = json.loads(path.read_text())

    assert {"plan", "machine", "fill_s", "steps", "checks", "targets", "verified",
            "wall_s"} <= doc.keys()
    assert [s["concurrency"] for s in doc["steps"]] == [1, 16, 64, 256]
    for s in doc["steps"]:
        g, r = s["gateway"], s["raw"]
        assert (s["ok"], g["wrong"], g["failed"], r["wrong"]) == (True, 0, 0, 0), s
        assert g["ok"] > 0 and r["ok"] > 0 and g["latency"]["n"] == g["ok"]
        assert s["over_raw"] == round(g["per_s"] / r["per_s"], 2)
        assert g["node_cpu_us_per_get"] is not None and g["etcd_requests_per_get"] > 0
    assert [c["name"] for c in doc["checks"]] == [
        "C=1", "C=16", "C=64", "C=256", "read after write, and an unknown IP, through the node"]
    assert all(c["ok"] for c in doc["checks"]) and doc["verified"] is True
    [target] = doc["targets"]
    assert target["measured"] == max(s["gateway"]["per_s"] for s in doc["steps"])
