"""`python -m devcluster.tour`, the allocator's one-minute tour, runs as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_tour_books_lists_and_stops_its_etcd() -> None:
    proc = subprocess.run([sys.executable, "-m", "devcluster.tour"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Private Network" in proc.stdout
