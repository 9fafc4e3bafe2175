#!/usr/bin/env python3
"""The reference topology from local processes on 127.0.0.1, for tests and the bench.

Three etcd members (Debian's etcd), N gateway nodes (`ipam serve` each, given the
whole cluster) and haproxy in front, round-robin with /readyz health checks: the
same shape as docker-compose.yml, without a Docker engine.

    python3 -m devcluster.topology --gateways 3        # runs until Ctrl-C / SIGTERM

As a library (tests, bench):

    with LocalTopology(gateways=2) as topo:
        topo.url            # haproxy, http://127.0.0.1:PORT
        topo.gateway_urls   # each node directly
        topo.admin_secret   # an admin secret key (IPAM_ADMIN_SECRET_KEY of every node)
        topo.restart_gateway(0)   # SIGTERM (the node drains), start again, back in haproxy
        topo.server_states()      # what haproxy thinks of each node: {"g1": "UP", ...}
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType
from typing import Self

from .etcd import EtcdCluster

ROOT = Path(__file__).resolve().parent.parent

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0  # a node's drain (2 s) and shutdown (in-flight requests get 10 s)
_LOOPBACK_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_name(index: int) -> str:
    """haproxy's name for gateway `index` (0-based): g1, g2, ..."""
    return f"g{index + 1}"


def haproxy_config(port: int, gateway_ports: list[int], stats_socket: Path | None = None) -> str:
    """haproxy in front of the gateways: round-robin, /readyz checks, no retries of writes.

    Mirrors docker-compose.yml (keep them alike). A node's drain (503 on /readyz for
    --drain-seconds, 2 s by default) must outlast its detection: one check every second,
    and once one failed, the next after `fastinter`, so a draining node is out after at
    most ~1.25 s plus a check's answer. A connection refused (a node stopped, or not yet
    seen down) sent nothing, so haproxy tries it again on another node (`redispatch`);
    a request that reached a node is never sent twice (retry-on's default is
    conn-failure only).
    """
    servers = "\n".join(
        f"    server {server_name(i)} 127.0.0.1:{p} check inter 1s fastinter 250ms fall 2 rise 1"
        for i, p in enumerate(gateway_ports))
    stats = f"    stats socket {stats_socket} mode 600 level user\n" if stats_socket else ""
    return f"""global
    maxconn 4096
{stats}
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    option redispatch
    retries 3

frontend ipam
    bind 127.0.0.1:{port}
    default_backend gateways

backend gateways
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
{servers}
"""


class LocalTopology:
    """3 etcd members + `gateways` gateway processes + haproxy, all on loopback."""

    def __init__(self, gateways: int = 3, etcd_members: int = 3, region: str = "fr-par",
                 base_dir: Path | None = None, prefix: str = "/ipam/") -> None:
        self.gateways = gateways
        self.region = region
        self.prefix = prefix
        self.admin_secret = str(uuid.uuid4())
        self._own_dir = base_dir is None
        self.base_dir = base_dir or Path(tempfile.mkdtemp(prefix="ipam-topology-"))
        self.cluster = EtcdCluster(etcd_members, base_dir=self.base_dir / "etcd",
                                   name_prefix="topo")
        self.gateway_procs: list[subprocess.Popen[bytes]] = []
        self.gateway_ports: list[int] = []
        self.haproxy: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def gateway_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.gateway_ports]

    @property
    def stats_socket(self) -> Path:
        """haproxy's stats socket (`show stat`: what it thinks of each node)."""
        return self.base_dir / "haproxy.sock"

    def start(self) -> Self:
        try:
            self.cluster.start()
            for i in range(self.gateways):
                self.gateway_ports.append(_free_port())
                self.gateway_procs.append(self._spawn_gateway(i))
            for port in self.gateway_ports:
                self._wait_ready(f"http://127.0.0.1:{port}/readyz")
            self.port = _free_port()
            cfg = self.base_dir / "haproxy.cfg"
            cfg.write_text(haproxy_config(self.port, self.gateway_ports, self.stats_socket))
            haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
            with open(self.base_dir / "haproxy.log", "wb") as log:
                self.haproxy = subprocess.Popen([haproxy, "-db", "-f", str(cfg)],
                                                stdout=log, stderr=subprocess.STDOUT)
            self._wait_ready(f"{self.url}/healthz")
            return self
        except BaseException:
            self.stop()
            raise

    def _spawn_gateway(self, index: int) -> subprocess.Popen[bytes]:
        """`ipam serve` as node `index` on its port, given the whole cluster (log appended)."""
        env = {**os.environ, "IPAM_ADMIN_SECRET_KEY": self.admin_secret,
               "IPAM_ETCD_ENDPOINTS": ",".join(self.cluster.endpoints),
               "IPAM_REGION": self.region, "IPAM_ETCD_PREFIX": self.prefix,
               "IPAM_PORT": str(self.gateway_ports[index]), "IPAM_HOST": "127.0.0.1",
               "IPAM_LOG_LEVEL": "warning",
               # The quota the members run with: the nodes measure their databases by it.
               "IPAM_ETCD_QUOTA_BACKEND_BYTES": str(self.cluster.quota_backend_bytes)}
        with open(self.base_dir / f"gateway{index}.log", "ab") as log:
            return subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], cwd=ROOT,
                                    env=env, stdout=log, stderr=subprocess.STDOUT)

    def stop_gateway(self, index: int, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM node `index` and wait until it exits (it drains first); its exit code."""
        proc = self.gateway_procs[index]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise TimeoutError(f"gateway {index} did not exit within {timeout}s of SIGTERM; "
                               f"see {self.base_dir / f'gateway{index}.log'}") from None

    def start_gateway(self, index: int) -> None:
        """Start node `index` again on its port; return once haproxy sends it requests."""
        if self.gateway_procs[index].poll() is None:
            raise RuntimeError(f"gateway {index} is already running")
        self.gateway_procs[index] = self._spawn_gateway(index)
        self._wait_ready(f"{self.gateway_urls[index]}/readyz")
        self.wait_server_state(index, "UP")

    def restart_gateway(self, index: int) -> int:
        """A rolling restart of node `index`: SIGTERM, drain, exit, start, back in haproxy.
        Its exit code (0 after a clean shutdown)."""
        code = self.stop_gateway(index)
        self.start_gateway(index)
        return code

    def server_states(self) -> dict[str, str]:
        """haproxy's view of each node, by server name: "UP", "DOWN", "UP 1/2"..."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2.0)
            sock.connect(str(self.stats_socket))
            sock.sendall(b"show stat\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        lines = b"".join(chunks).decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {r["svname"]: r["status"] for r in rows
                if r.get("pxname") == "gateways" and r["svname"] not in ("FRONTEND", "BACKEND")}

    def wait_server_state(self, index: int, state: str, timeout: float = START_TIMEOUT) -> None:
        """Wait until haproxy reports node `index` in `state` ("UP" or "DOWN")."""
        name = server_name(index)
        deadline = time.monotonic() + timeout
        seen = None
        while (seen := self.server_states().get(name)) != state:
            if time.monotonic() > deadline:
                raise TimeoutError(f"haproxy still says {name} is {seen}, not {state}, "
                                   f"after {timeout}s")
            time.sleep(0.05)

    def _wait_ready(self, url: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with _LOOPBACK_HTTP.open(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            dead = [p for p in self.gateway_procs if p.poll() is not None]
            if self.haproxy is not None and self.haproxy.poll() is not None:
                raise RuntimeError(f"haproxy exited; see {self.base_dir / 'haproxy.log'}")
            if dead:
                raise RuntimeError(f"a gateway exited; see logs in {self.base_dir}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not ready in {START_TIMEOUT}s")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM everything (gateways drain), then stop etcd; safe to call twice."""
        procs = ([self.haproxy] if self.haproxy else []) + self.gateway_procs
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.haproxy = None
        self.gateway_procs = []
        self.cluster.stop()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gateways", type=int, default=3)
    p.add_argument("--region", default="fr-par")
    args = p.parse_args(argv)
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with LocalTopology(gateways=args.gateways, region=args.region) as topo:
        print(f"load balancer:  {topo.url}")
        print(f"gateways:       {' '.join(topo.gateway_urls)}")
        print(f"etcd:           {','.join(topo.cluster.endpoints)}")
        print(f"admin secret:   {topo.admin_secret}")
        print(f"logs:           {topo.base_dir}", flush=True)
        while not stop:
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
