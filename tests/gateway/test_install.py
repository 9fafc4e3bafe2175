"""`pip install .` gives a working `ipam` with no checkout around it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WAIT = 60.0


@pytest.mark.timeout(900)  # a fresh venv: pip installs every dependency from the index
def test_a_wheel_installed_in_a_fresh_venv_serves_outside_the_checkout(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IPAM_", "PYTHON"))}
    wheels, venv, away = tmp_path / "wheels", tmp_path / "venv", tmp_path / "elsewhere"
    away.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
                    str(ROOT)], check=True, env=env, timeout=300)
    [wheel] = wheels.glob("ipam-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # Its dependencies come from the package index (or pip's cache of it), not the checkout.
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True,
                   env=env, cwd=away, timeout=600)
    ipam = str(venv / "bin" / "ipam")
    version = subprocess.run([ipam, "--version"], cwd=away, env=env, capture_output=True,
                             text=True, timeout=60, check=True)
    assert re.fullmatch(r"ipam \d+\.\d+\.\d+\n", version.stdout)
    log = (away / "serve.log").open("w")
    server = subprocess.Popen([ipam, "serve", "--port", "0"], cwd=away, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + WAIT
        found = None
        while time.monotonic() < deadline and server.poll() is None and not found:
            found = re.search(r"serving region fr-par on (http://\S+)",
                              (away / "serve.log").read_text())
            time.sleep(0.05)  # a child process: nothing to await but its output
        assert found, (away / "serve.log").read_text()[-2000:]
        listed = subprocess.run([ipam, "--url", found[1], "vpcs", "list", "-o", "json"],
                                cwd=away, env=env, capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert (away / ".ipam" / "admin_secret_key").is_file()
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    assert server.returncode == 0
