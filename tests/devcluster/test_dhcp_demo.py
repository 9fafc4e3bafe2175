"""`scripts/demo-dhcp.sh` (python -m devcluster.dhcp_demo) shows what the README says."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devcluster import netlab

ROOT = Path(__file__).resolve().parents[2]
why_not = netlab.available() or next(
    (f"{tool} is not installed" for tool in ("dhclient", "dig") if not shutil.which(tool)), None)


@pytest.mark.skipif(why_not is not None, reason=str(why_not))
def test_the_demo_machine_gets_its_address_and_resolves_its_name() -> None:
    done = subprocess.run([sys.executable, "-m", "devcluster.dhcp_demo"], cwd=ROOT,
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    booked = done.stdout.split("IPAM booked ", 1)[1].split("/", 1)[0]
    assert f"address {booked}/255.255.255.0, router 10.42.0.1" in done.stdout
    assert "DNS 10.42.0.254, domain demo.internal, host name web-1" in done.stdout
    assert f"web-1.demo.internal\n{booked}\n" in done.stdout
    assert "\nweb-1.demo.internal.\n" in done.stdout
