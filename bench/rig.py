"""The reference topology as the bench uses it, and what the bench reads from it.

`Rig` wraps `devcluster.topology.LocalTopology` (3 etcd members, the gateway
nodes, haproxy) and adds: HTTP set-up calls (API keys, Private Networks), etcd's
own request counters (`/metrics` of every member), CPU time and memory of every
process, and one extra gateway node started later (the cold-start scenario).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Self

from devcluster.topology import LocalTopology

ROOT = Path(__file__).resolve().parent.parent

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_HANDLED = re.compile(r'^grpc_server_handled_total\{[^}]*grpc_method="(\w+)"[^}]*\} (\S+)$',
                      re.MULTILINE)
_CLK_TCK = os.sysconf("SC_CLK_TCK")
EXTRA_NODE_TIMEOUT = 30.0


class HttpError(RuntimeError):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status


def http(url: str, method: str, path: str, body: Any = None, token: str | None = None,
         timeout: float = 30.0) -> Any:
    """One synchronous JSON call (set-up only; the load goes through bench.loadgen)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["X-Auth-Token"] = token
    req = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    try:
        with _HTTP.open(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as err:
        raise HttpError(err.code, err.read().decode(errors="replace")) from None
    return json.loads(raw) if raw else None


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc (0.0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def rss_mib(pid: int) -> float:
    """Resident memory of a live process in MiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Rig:
    """The running topology; use as a context manager, everything stops on exit."""

    def __init__(self, gateways: int = 2) -> None:
        self.topo = LocalTopology(gateways=gateways, etcd_members=3)
        self.extra: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Self:
        self.topo.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for p in self.extra:
            stop_process(p)
        self.extra = []
        self.topo.stop()

    # -- what it is ----------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.topo.url

    @property
    def etcd_endpoints(self) -> list[str]:
        return list(self.topo.cluster.endpoints)

    @property
    def prefix(self) -> str:
        return self.topo.prefix

    @property
    def admin_secret(self) -> str:
        return self.topo.admin_secret

    def pids(self) -> dict[str, list[int]]:
        """Process ids by role (etcd members run etcd itself: setpriv execs it)."""
        topo = self.topo
        return {
            "etcd": [m.process.pid for m in topo.cluster.members if m.process],
            "gateways": [p.pid for p in topo.gateway_procs],
            "haproxy": [topo.haproxy.pid] if topo.haproxy else [],
        }

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by role; subtract two readings for one run."""
        return {role: sum(cpu_seconds(p) for p in pids) for role, pids in self.pids().items()}

    def gateway_rss_mib(self) -> list[float]:
        return [round(rss_mib(p), 1) for p in self.pids()["gateways"]]

    def etcd_requests(self) -> dict[str, float]:
        """grpc_server_handled_total by method (Txn, Range, ...), summed over members."""
        total: dict[str, float] = {}
        for ep in self.etcd_endpoints:
            with _HTTP.open(f"http://{ep}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            for method, value in _HANDLED.findall(text):
                total[method] = total.get(method, 0.0) + float(value)
        return total

    # -- set-up calls -----------------------------------------------------------------

    def create_api_key(self, organization_id: str, project_id: str) -> dict[str, Any]:
        return http(self.url, "POST", "/ipam/admin/v1/api-keys", {
            "organization_id": organization_id, "project_ids": [project_id],
            "role": "project_member", "description": "bench"}, self.admin_secret)

    def create_private_network(self, token: str, project_id: str, name: str,
                               subnets: list[str]) -> dict[str, Any]:
        return http(self.url, "POST", "/vpc/v2/regions/fr-par/private-networks", {
            "project_id": project_id, "name": name, "subnets": subnets}, token)

    # -- one more gateway node ----------------------------------------------------------

    def start_extra_gateway(self) -> tuple[subprocess.Popen[bytes], str, float]:
        """Spawn one more `ipam serve` on the same cluster; (process, url, spawn time).

        Not behind haproxy: the cold-start scenario talks to it directly.
        """
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        env = {**os.environ, "IPAM_ADMIN_SECRET_KEY": self.admin_secret,
               "IPAM_ETCD_ENDPOINTS": ",".join(self.etcd_endpoints), "IPAM_REGION": "fr-par",
               "IPAM_ETCD_PREFIX": self.prefix, "IPAM_PORT": str(port),
               "IPAM_HOST": "127.0.0.1", "IPAM_LOG_LEVEL": "warning"}
        with open(self.topo.base_dir / f"extra{len(self.extra)}.log", "wb") as log:
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], cwd=ROOT,
                                    env=env, stdout=log, stderr=subprocess.STDOUT)
        self.extra.append(proc)
        return proc, f"http://127.0.0.1:{port}", t0

    def extra_log_tail(self, index: int, lines: int = 30) -> str:
        """The last lines of an extra node's log (the topology's directory goes on stop)."""
        logs = sorted(self.topo.base_dir.glob("extra*.log"))
        if not logs:
            return ""
        return "\n".join(logs[index].read_text(errors="replace").splitlines()[-lines:])

    def log_findings(self) -> dict[str, dict[str, int]]:
        """How often each gateway log says something worth a look (errors, etcd trouble)."""
        patterns = {"error": "ERROR", "traceback": "Traceback", "goaway": "GOAWAY",
                    "endpoint_ejected": "out of use", "too_many_pings": "too_many_pings"}
        out = {}
        for p in sorted(self.topo.base_dir.glob("*.log")):
            text = p.read_text(errors="replace")
            out[p.name] = {k: text.count(v) for k, v in patterns.items()}
        return out

    def gateway_log_tails(self, lines: int = 30) -> dict[str, str]:
        return {p.name: "\n".join(p.read_text(errors="replace").splitlines()[-lines:])
                for p in sorted(self.topo.base_dir.glob("gateway*.log"))}


def stop_process(p: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; reaps it."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
