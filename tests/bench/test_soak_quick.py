"""Smoke test of the soak bench: a 20-second run samples the gateway and etcd, and checks
the history of every operation against etcd. Its self-checks are asserted, never its
figures: the machine is shared, and 20 seconds say nothing about growth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_soak_samples_everything_and_its_history_is_clean(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "bench", "soak", "--quick", "--seconds", "20", "--quiet",
           "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [path] = list(tmp_path.glob("soak-quick-*.json"))
    doc = json.loads(path.read_text())

    assert doc["verified"] is True and [c["ok"] for c in doc["checks"]] == [True] * 3
    history = doc["history"]
    assert history["ok"] and history["violations"] == 0 and history["examples"] == []
    ops = doc["operations"]
    assert set(ops) == {"book", "attach", "detach", "release"}
    assert sum(sum(by.values()) for by in ops.values()) == history["operations"]
    complete = [s for s in doc["samples"] if None not in (
        s["rss_mib"], s["fds"], s["tasks"], s["etcd_db_mib"], s["http_requests"])]
    assert len(complete) >= 3
    assert doc["samples"][-1]["http_requests"] >= history["operations"]  # counted by /metrics
    assert doc["samples"][-1]["ips"] == doc["ips_held_at_end"]
    for name in ("rss_mib", "fds", "tasks", "etcd_db_mib"):
        assert doc["trends"][name]["growth_pct"] is not None, name
    assert [s["phase"] for s in doc["samples"]][:2] == ["before", "load"]
    assert [s["phase"] for s in doc["samples"]][-2:] == ["end", "idle"]
    assert all(None not in pair for pair in doc["before_and_idle"].values())
    [target] = doc["targets"]
    assert target["measured"] == doc["trends"]["rss_mib"]["growth_pct"]  # listed, met or not
