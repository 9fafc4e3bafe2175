"""The README's first minute, run as a new user runs it: the blocks are read from
README.md (each follows a `<!-- readme-test: NAME -->` marker), never copied here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKED = re.compile(r"<!-- readme-test: (\S+) -->\s*```\w*\n(.*?)```", re.S)
WAIT = 60.0


def readme_blocks() -> dict[str, str]:
    return dict(MARKED.findall((ROOT / "README.md").read_text()))


def test_the_readme_marks_the_first_minute_blocks() -> None:
    blocks = readme_blocks()
    assert set(blocks) == {"shell", "first_minute.py"}
    assert "ipam keys create" in blocks["shell"] and "Client.from_env()" in blocks[
        "first_minute.py"]


def test_the_first_minute_runs_as_written(tmp_path: Path) -> None:
    blocks = readme_blocks()
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")  # the checkout's, as run.sh made it
    (tmp_path / "first_minute.py").write_text(blocks["first_minute.py"])
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("IPAM_", "SCW_"))}
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", "0"],
                              cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = _serving_url(tmp_path / "serve.log", server)
        # The user's shell: run.sh's defaults, but this test's port (the README's is 8080).
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", blocks["shell"]],
                              cwd=tmp_path, env={**env, "IPAM_URL": url},
                              capture_output=True, text=True, timeout=300, check=False)
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+/22 02:00:00:00:00:01 web-1", last), last


def _serving_url(path: Path, server: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and server.poll() is None:
        found = re.search(r"serving region \S+ on (http://\S+)", path.read_text())
        if found:
            return found[1]
        time.sleep(0.05)  # a child process: nothing to await but its output
    raise AssertionError(f"ipam serve did not start: {path.read_text()[-2000:]}")
