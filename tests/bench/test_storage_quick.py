"""Smoke test of the storage bench: a quick run completes, every self-check passes, and
the result holds the bytes per IP of every step and the capacity they give. No figure is
asserted beyond what holds on any machine: the keyspace is exact, the database is not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_measures_bytes_per_ip_with_and_without_idempotency_records(
        tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "bench", "storage", "--quick", "--ips", "300", "--quiet",
           "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [path] = list(tmp_path.glob("storage-quick-*.json"))
    doc = json.loads(path.read_text())

    assert doc["plan"]["ips"] == 300 and doc["verified"] is True
    assert [c["ok"] for c in doc["checks"]] == [True, True, True, True]
    without, with_ = doc["passes"]
    assert (without["keyed"], with_["keyed"]) == (False, True)
    for p in doc["passes"]:
        for op in ("book", "attach"):
            assert (p[op]["ok"], p[op]["errors"]) == (300, 0)
        for step in ("per_booked_ip", "per_attached_ip"):
            assert p[step]["keyspace_bytes"] > 0 and p[step]["db_in_use_bytes"] > 0
    # A keyed IP holds two records more (its booking's and its attach's), and only those.
    # (the first pass's network and VPC keys are spread over its IPs: rounded away)
    assert round(with_["per_attached_ip"]["keys"] - without["per_attached_ip"]["keys"]) == 2
    assert with_["per_attached_ip"]["keyspace_by_kind"]["idem"] > 0
    assert "idem" not in without["per_attached_ip"]["keyspace_by_kind"]
    records = with_["idempotency"]
    assert records["records"] == records["expected"] == 600
    assert records["value_bytes"] * 2 < records["format1_value_bytes"]
    assert "idem" not in doc["per_held_ip"]["keyspace_by_kind"]
    two, eight = (doc["capacity"][q]["attached_ips"] for q in ("2GiB", "8GiB"))
    assert 0 <= eight - 4 * two <= 3  # the same bytes per IP, four times the quota
