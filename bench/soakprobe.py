"""What the soak reads from its processes while they run: memory, descriptors, tasks, etcd.

Everything is read from outside the gateway: `/proc` for its resident memory and open
file descriptors, the file `bench.soaknode` keeps for its asyncio task count, its
`/metrics` for request and compaction counters, and etcd's own `/metrics` (on its
client port) for the size of its database.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .rig import rss_mib

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# Label values may hold braces (route templates: /ips/{ip_id}): labels run to the last "}".
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{.*\})? (\S+)$", re.MULTILINE)
TASKS_STALE = 5.0  # seconds after which the node's task count is not believed
MIB = 1024 * 1024

GATEWAY_COUNTERS = {"http_requests": "ipam_http_requests_total",
                    "unknown_outcomes": "ipam_unknown_outcomes_total",
                    "compactions": "ipam_compactions_total",
                    "etcd_txn_failures": "ipam_etcd_txn_failures_total"}


def metric_sums(text: str) -> dict[str, float]:
    """Every metric of a Prometheus text page, summed over its labels."""
    sums: dict[str, float] = {}
    for name, value in _SAMPLE.findall(text):
        try:
            sums[name] = sums.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return sums


def scrape(url: str, timeout: float = 5.0) -> dict[str, float]:
    """`metric_sums` of `url` (empty if it does not answer)."""
    try:
        with _HTTP.open(url, timeout=timeout) as resp:
            return metric_sums(resp.read().decode())
    except OSError:
        return {}


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def node_tasks(path: Path) -> int | None:
    """The asyncio task count `bench.soaknode` last wrote, if recent."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return int(data["tasks"]) if time.time() - data["at"] < TASKS_STALE else None


@dataclass
class Probe:
    """The gateway (its pid, URL and task file) and etcd (its pid and client URL)."""

    gateway_pid: int
    gateway_url: str
    tasks_file: Path
    etcd_pid: int
    etcd_url: str

    def sample(self) -> dict[str, Any]:
        """One row of the series (blocking: a few local HTTP calls and /proc reads)."""
        gw = scrape(f"{self.gateway_url}/metrics")
        etcd = scrape(f"{self.etcd_url}/metrics")
        row: dict[str, Any] = {
            "rss_mib": round(rss_mib(self.gateway_pid), 2),
            "fds": open_fds(self.gateway_pid),
            "tasks": node_tasks(self.tasks_file),
            "etcd_db_mib": _mib(etcd.get("etcd_mvcc_db_total_size_in_bytes")),
            "etcd_db_in_use_mib": _mib(etcd.get("etcd_mvcc_db_total_size_in_use_in_bytes")),
            "etcd_keys": etcd.get("etcd_debugging_mvcc_keys_total"),
            "etcd_rss_mib": round(rss_mib(self.etcd_pid), 2),
        }
        row.update({k: gw.get(name) for k, name in GATEWAY_COUNTERS.items()})
        return row


def _mib(value: float | None) -> float | None:
    return None if value is None else round(value / MIB, 3)
