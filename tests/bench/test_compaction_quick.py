"""Smoke test of the compaction bench: a quick run completes, every self-check passes and
the result holds every figure with its counts. No speed is asserted: the machine is shared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_passes_its_self_checks_and_reports_both_passes(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "bench", "compaction", "--quick", "--quiet",
           "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [path] = list(tmp_path.glob("compaction-quick-*.json"))
    doc = json.loads(path.read_text())

    assert {"plan", "machine", "passes", "audit", "checks", "targets", "verified",
            "wall_s"} <= doc.keys()
    plan = doc["plan"]
    without, with_ = doc["passes"]
    assert (without["compactor"], with_["compactor"]) == (False, True)
    for p in doc["passes"]:
        assert p["verify"] == {"ok": True, "problems": []}, p["name"]
        for phase in ("before", "after"):
            assert (p[phase]["ok"], p[phase]["errors"]) == (plan["measure"], 0)
            assert p[phase]["per_s"] > 0 and p[phase]["etcd_requests"] > 0
        assert (p["release"]["count"], p["release"]["errors"]) == (plan["release"], 0)
        assert p["release"]["revisions"] == plan["release"] // 100  # one per release_set
        for probe in ("probe_before", "probe_after"):
            assert (p[probe]["count"], p[probe]["failed"]) == (plan["probe"], 0)
        assert p["after_over_before"] is not None and p["probe_after_over_before"] is not None
        check = p["etcd_check"]
        assert (check["lost"], check["duplicates"], check["resurrected"]) == (0, 0, 0)
        assert check["count_exact"]
    # The delete trigger fired while the IPs were released (a tenth of the default).
    assert with_["compactions"]["during_release"] >= 1
    assert with_["compactions"]["errors"] == 0
    assert doc["audit"]["ok"] and doc["verified"] is True
    assert [c["ok"] for c in doc["checks"]] == [True, True, True]
    [target] = doc["targets"]
    assert target["measured"] == with_["after_over_before"]  # listed, met or not
