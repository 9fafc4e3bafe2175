"""`dnsperf` (Debian package dnsperf) against the internal DNS, when it is installed.

A second opinion on the DNS figure from a load generator written in C: the bench's own
client (`bench.dhcpload`) checks every answer, dnsperf only counts response codes. The
bench never installs it; without it, this module is not used.
"""

from __future__ import annotations

import asyncio
import math
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

_COUNTS = {
    "sent": r"Queries sent:\s+(\d+)",
    "completed": r"Queries completed:\s+(\d+)",
    "lost": r"Queries lost:\s+(\d+)",
}
_FIGURES = {
    "per_s": r"Queries per second:\s+([\d.]+)",
    "run_time_s": r"Run time \(s\):\s+([\d.]+)",
    "mean_latency_s": r"Average Latency \(s\):\s+([\d.]+)",
}
_NOERROR = re.compile(r"NOERROR (\d+)")


def available() -> bool:
    """Whether the dnsperf command is on PATH."""
    return shutil.which("dnsperf") is not None


async def run(port: int, queries: list[list[str]], concurrency: int, count: int,
              seconds: float) -> dict[str, Any]:
    """dnsperf sending about `count` of `queries` ([qtype, name, expected]) to 127.0.0.1:port
    with `concurrency` queries outstanding, for at most `seconds`; its figures."""
    passes = max(1, math.ceil(count / len(queries)))
    with tempfile.TemporaryDirectory(prefix="bench-dnsperf-") as tmp:
        data = Path(tmp) / "queries"
        data.write_text("".join(f"{name} {qtype}\n" for qtype, name, _ in queries))
        proc = await asyncio.create_subprocess_exec(
            "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(data), "-c", "1",
            "-T", "1", "-q", str(concurrency), "-n", str(passes), "-l", str(int(seconds)),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = out.decode(errors="replace")
    result: dict[str, Any] = {"concurrency": concurrency, "exit": proc.returncode}
    for key, pattern in _COUNTS.items():
        found = re.search(pattern, text)
        result[key] = int(found.group(1)) if found else None
    for key, pattern in _FIGURES.items():
        found = re.search(pattern, text)
        result[key] = float(found.group(1)) if found else None
    noerror = _NOERROR.search(text)
    result["noerror"] = int(noerror.group(1)) if noerror else 0
    if result["per_s"] is None:
        result["output_tail"] = text[-800:]
    return result
