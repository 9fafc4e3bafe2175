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
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
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
_LOOPBACK_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def haproxy_config(port: int, gateway_ports: list[int]) -> str:
    """haproxy in front of the gateways: round-robin, /readyz checks, no retries of writes."""
    servers = "\n".join(f"    server g{i} 127.0.0.1:{p} check inter 1s fall 2 rise 1"
                        for i, p in enumerate(gateway_ports, 1))
    return f"""global
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    option http-keep-alive

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

    def start(self) -> Self:
        try:
            self.cluster.start()
            endpoints = ",".join(self.cluster.endpoints)
            for i in range(self.gateways):
                port = _free_port()
                env = {**os.environ, "IPAM_ADMIN_SECRET_KEY": self.admin_secret,
                       "IPAM_ETCD_ENDPOINTS": endpoints, "IPAM_REGION": self.region,
                       "IPAM_ETCD_PREFIX": self.prefix, "IPAM_PORT": str(port),
                       "IPAM_HOST": "127.0.0.1", "IPAM_LOG_LEVEL": "warning"}
                with open(self.base_dir / f"gateway{i}.log", "wb") as log:
                    self.gateway_procs.append(subprocess.Popen(
                        [sys.executable, "-m", "gateway.cli", "serve"], cwd=ROOT, env=env,
                        stdout=log, stderr=subprocess.STDOUT))
                self.gateway_ports.append(port)
            for port in self.gateway_ports:
                self._wait_ready(f"http://127.0.0.1:{port}/readyz")
            self.port = _free_port()
            cfg = self.base_dir / "haproxy.cfg"
            cfg.write_text(haproxy_config(self.port, self.gateway_ports))
            haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
            with open(self.base_dir / "haproxy.log", "wb") as log:
                self.haproxy = subprocess.Popen([haproxy, "-db", "-f", str(cfg)],
                                                stdout=log, stderr=subprocess.STDOUT)
            self._wait_ready(f"{self.url}/healthz")
            return self
        except BaseException:
            self.stop()
            raise

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
                p.wait(15)
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
