"""The DHCP/DNS test stack inside a lab namespace: etcd, a gateway, the agent, real clients.

Everything of the stack lives in the lab namespace (devcluster.netlab): etcd and the
gateway are started from the lab's thread, the agent with `ip netns exec`; the SDK
calls run in the lab's thread too. Clients are namespaces of their own running
Debian's dhclient (with our own script: the host's resolv.conf is never touched)
and dig.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway_fixtures import ADMIN_SECRET, sdk_client

from devcluster.etcd import EtcdCluster
from devcluster.netlab import Client, NetLab

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 30.0

# dhclient runs this instead of its own script: it records what it was given (in OUT,
# the client's own directory: dhclient gives its script a clean environment) and
# configures the address on the interface, nothing else.
DHCLIENT_SCRIPT = """#!/bin/sh
# Written aside then renamed: a test waiting for the file never reads it half-written.
env | grep -E '^(reason|interface|new_|old_)' | sort > "OUT/.partial.$$"
mv "OUT/.partial.$$" "OUT/$reason.$$"
case "$reason" in
  BOUND|RENEW|REBIND|REBOOT)
    ip -4 addr flush dev "$interface"
    ip addr add "$new_ip_address/$new_subnet_mask" dev "$interface" ;;
  EXPIRE|FAIL|RELEASE|STOP)
    ip -4 addr flush dev "$interface" ;;
  BOUND6|RENEW6|REBIND6|REBOOT6)
    ip -6 addr add "$new_ip6_address/$new_ip6_prefixlen" dev "$interface" nodad ;;
  EXPIRE6|RELEASE6|STOP6)
    ip -6 addr del "$old_ip6_address/$old_ip6_prefixlen" dev "$interface" ;;
esac
exit 0
"""


GATEWAY_URL = "http://127.0.0.1:8080"  # inside the lab namespace


@dataclass
class Stack:
    lab: NetLab
    cluster: EtcdCluster
    prefix: str
    project: str
    workdir: Path

    def sdk(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run an SDK call (or any callable taking the client) inside the lab."""
        def call() -> Any:
            client = sdk_client(GATEWAY_URL, "SCW" + "C" * 17, ADMIN_SECRET, self.project)
            return fn(client, *args, **kwargs)
        return self.lab.call(call)

    def allocator(self, code: str) -> str:
        """Run `code` (awaits allowed, `ipam` bound) in a process inside the lab."""
        script = ("import asyncio\nfrom allocator.contract import IPAM\n"
                  "async def main():\n"
                  f"    ipam = await IPAM.connect({self.cluster.endpoints!r}, "
                  f"prefix={self.prefix!r})\n"
                  "    try:\n"
                  + "".join(f"        {line}\n" for line in code.splitlines())
                  + "    finally:\n        await ipam.close()\nasyncio.run(main())\n")
        return self.lab.exec_in(self.lab.namespace, [sys.executable, "-c", script],
                                timeout=60).stdout

    def start_agent(self, *flags: str) -> subprocess.Popen[bytes]:
        """`ipam dhcp` in the lab namespace; returns once it says it is ready."""
        log = open(self.workdir / f"agent-{uuid.uuid4().hex[:4]}.log", "wb")
        proc = self.lab.spawn_in(
            self.lab.namespace,
            [sys.executable, "-m", "netagent", "--etcd-endpoints",
             ",".join(self.cluster.endpoints), "--etcd-prefix", self.prefix, *flags],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=log,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the agent prints one line when it serves
        if b"ready" not in line:
            proc.kill()
            raise AssertionError("the agent did not start: "
                                 + (self.workdir / log.name).read_text(errors="replace")[-2000:])
        return proc

    def _client_files(self, client: Client, conf: str) -> list[str]:
        out = self.workdir / client.namespace
        out.mkdir(exist_ok=True)
        script = out / "dhclient-script"
        script.write_text(DHCLIENT_SCRIPT.replace("OUT", str(out)))
        script.chmod(0o755)
        (out / "dhclient.conf").write_text(conf)
        return ["-sf", str(script), "-cf", str(out / "dhclient.conf"),
                "-lf", str(out / "leases"), "-pf", str(out / "pid")]

    def dhclient(self, client: Client, *extra: str, timeout: float = 30.0,
                 conf: str = "") -> subprocess.CompletedProcess[str]:
        """`dhclient -1` in the client's namespace: returns once bound (or failed)."""
        return subprocess.run(
            ["ip", "netns", "exec", client.namespace, "dhclient", "-1", "-v",
             *self._client_files(client, conf), *extra, client.client_side],
            capture_output=True, text=True, timeout=timeout, check=False)

    def dhclient_daemon(self, client: Client, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
        """dhclient in the foreground (-d), renewing; its log file. `extra`: -6, ..."""
        files = self._client_files(client, "")
        log = self.workdir / client.namespace / "dhclient.log"
        proc = self.lab.spawn_in(
            client.namespace, ["dhclient", *extra, "-d", "-v", *files, client.client_side],
            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
        return proc, log

    def given(self, client: Client, reason: str = "BOUND") -> dict[str, str]:
        """What dhclient handed its script for `reason` (the last time)."""
        files = sorted((self.workdir / client.namespace).glob(f"{reason}.*"),
                       key=lambda p: p.stat().st_mtime)
        assert files, f"dhclient never reported {reason}"
        return dict(line.split("=", 1) for line in files[-1].read_text().splitlines()
                    if "=" in line)

    def dig(self, client: Client, *args: str) -> str:
        done = self.lab.exec_in(client.namespace, ["dig", "+short", "+time=2", "+tries=2",
                                                   *args])
        return done.stdout.strip()

    def ask(self, client: Client, server: str, *args: str) -> str | None:
        """`dig +short @server` from the client (one try, 1 s); None when no server
        answered (refused, timed out), so a caller can wait for one to."""
        done = subprocess.run(["ip", "netns", "exec", client.namespace, "dig", "+short",
                               "+time=1", "+tries=1", f"@{server}", *args],
                              capture_output=True, text=True, timeout=30, check=False)
        return done.stdout.strip() if done.returncode == 0 else None

    def bindable(self, address: str, port: int) -> bool:
        """Whether (address, port) is free in the lab, over UDP and TCP: nobody listens."""
        def bind() -> bool:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                with socket.socket(family, kind) as sock:
                    try:
                        sock.bind((address, port))
                    except OSError:
                        return False
            return True
        return self.lab.call(bind)

    def agent_log(self) -> str:
        """What every agent of the stack logged so far."""
        return "".join(p.read_text(errors="replace")
                       for p in sorted(self.workdir.glob("agent-*.log")))


def wait_for(check: Any, what: str, timeout: float = 20.0, step: float = 0.2) -> None:
    """Poll an outside process's effect (a file, a log line), bounded in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def lab_stack(tmp_path: Path) -> Iterator[Stack]:
    """A lab namespace with one etcd member and one gateway in it."""
    with NetLab() as lab:
        cluster = lab.call(lambda: EtcdCluster(1, base_dir=tmp_path / "etcd",
                                               name_prefix="lab").start())
        prefix = f"/lab/{uuid.uuid4().hex[:8]}/"
        try:
            lab.spawn_in(lab.namespace, [
                sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1",
                "--port", "8080", "--etcd-endpoints", ",".join(cluster.endpoints),
                "--etcd-prefix", prefix, "--admin-secret-key", ADMIN_SECRET,
                "--log-level", "warning"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "gateway.log", "wb"))
            lab.call(_wait_ready)
            project = str(uuid.uuid4())
            lab.call(_map_project, project)
            yield Stack(lab, cluster, prefix, project, tmp_path)
        finally:
            lab.stop_processes()  # the agents and the gateway before their etcd
            lab.call(cluster.stop)


def _map_project(project: str) -> None:
    """Give the lab's project an organization: `ipam serve` refuses writes without one."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(
        f"{GATEWAY_URL}/ipam/admin/v1/projects/{project}", method="PUT",
        data=json.dumps({"organization_id": str(uuid.uuid4())}).encode(),
        headers={"X-Auth-Token": ADMIN_SECRET, "Content-Type": "application/json"})
    with opener.open(request, timeout=30) as resp:
        assert resp.status == 200


def _wait_ready() -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def ready() -> bool:
        try:
            with opener.open(GATEWAY_URL + "/readyz", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    wait_for(ready, "the gateway to be ready", READY_TIMEOUT)
