"""Watch a machine boot from IPAM: `sudo scripts/demo-dhcp.sh` (or `python3 -m devcluster.dhcp_demo`).

In network namespaces of its own (nothing touches this machine's interfaces): etcd, a
gateway and `ipam dhcp` in a lab namespace with a bridge for one Private Network; a
"machine" namespace plugged into the bridge. Through the HTTP API it creates the
network, books an IP and attaches it to the machine's MAC; then the machine runs
Debian's dhclient and dig. Everything is removed at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from .etcd import EtcdCluster
from .netlab import NetLab, available

ROOT = Path(__file__).resolve().parent.parent
MAC = "02:00:00:de:00:01"
API = "http://127.0.0.1:8080"
SCRIPT = """#!/bin/sh
case "$reason" in BOUND|RENEW|REBIND|REBOOT)
  ip addr add "$new_ip_address/$new_subnet_mask" dev "$interface"
  echo "  address $new_ip_address/$new_subnet_mask, router $new_routers,"
  echo "  DNS $new_domain_name_servers, domain $new_domain_name, host name $new_host_name";;
esac
"""


def _call(secret: str, method: str, path: str, body: Any = None) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(API + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"X-Auth-Token": secret,
                                          "Content-Type": "application/json"})
    with opener.open(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


def _wait_ready(secret: str, stopping: threading.Event) -> None:
    """Until the gateway is ready (30 s at most), or the demo is stopping (Ctrl-C): the
    lab's one thread runs this, and the clean-up waits for that thread."""
    for _ in range(150):  # bounded: 30 s
        try:
            _call(secret, "GET", "/readyz")
            return
        except OSError:
            if stopping.wait(0.2):
                return
    raise SystemExit("the gateway did not become ready")


def main() -> int:
    why = available()
    if why:
        print(f"demo-dhcp: {why}", file=sys.stderr)
        return 2
    secret, project = str(uuid.uuid4()), str(uuid.uuid4())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    stopping = threading.Event()
    # A name of its own: a demo killed with -9 leaves its namespaces, and the next one
    # (or one running beside it) must not trip on them.
    with tempfile.TemporaryDirectory(prefix="ipam-demo-") as tmp, \
            NetLab() as lab:
        work = Path(tmp)
        cluster = lab.call(lambda: EtcdCluster(1, base_dir=work / "etcd",
                                               name_prefix="demo").start())
        try:
            endpoints = ",".join(cluster.endpoints)
            lab.spawn_in(lab.namespace, [sys.executable, "-m", "gateway.cli", "serve",
                                         "--etcd-endpoints", endpoints, "--port", "8080",
                                         "--admin-secret-key", secret, "--log-level", "warning"],
                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
            lab.call(_wait_ready, secret, stopping)
            base = "/vpc/v2/regions/fr-par"
            # The demo's project belongs to an organization of its own, as every project.
            lab.call(_call, secret, "PUT", f"/ipam/admin/v1/projects/{project}",
                     {"organization_id": str(uuid.uuid4())})
            pn = lab.call(_call, secret, "POST", f"{base}/private-networks",
                          {"name": "demo", "project_id": project, "subnets": ["10.42.0.0/24"]})
            ip = lab.call(_call, secret, "POST", "/ipam/v1/regions/fr-par/ips",
                          {"source": {"private_network_id": pn["id"]}, "project_id": project,
                           "resource": {"mac_address": MAC, "name": "web-1"}})
            print(f"IPAM booked {ip['address']} for MAC {MAC} (web-1) "
                  f"in Private Network {pn['name']} ({pn['id']})")
            bridge = lab.add_bridge()
            machine = lab.add_client(MAC, bridge)
            lab.exec_in(lab.namespace, ["ip", "addr", "add", "10.42.0.254/24", "dev", bridge])
            agent = lab.spawn_in(lab.namespace, [sys.executable, "-m", "netagent",
                                                 "--etcd-endpoints", endpoints,
                                                 "--interface", f"{bridge}={pn['id']}"],
                                 cwd=ROOT, env=env, stdout=subprocess.PIPE)
            assert agent.stdout is not None
            agent.stdout.readline()  # "ready"
            script = work / "dhclient-script"
            script.write_text(SCRIPT)
            script.chmod(0o755)
            print(f"\n$ dhclient -1 {machine.client_side}   (in the machine's namespace)")
            done = lab.exec_in(machine.namespace, [
                "dhclient", "-1", "-sf", str(script), "-lf", str(work / "leases"),
                "-pf", str(work / "pid"), "-cf", "/dev/null", machine.client_side], timeout=60)
            print(done.stdout.rstrip())
            for query in (["web-1.demo.internal"], ["-x", ip["address"].split("/")[0]]):
                print(f"\n$ dig +short @10.42.0.254 {' '.join(query)}")
                print(lab.exec_in(machine.namespace, ["dig", "+short", "@10.42.0.254",
                                                      *query]).stdout.rstrip())
        finally:
            stopping.set()
            lab.stop_processes()  # the agent and the gateway before their etcd
            lab.call(cluster.stop)
    print("\nremoved the namespaces, etcd, the gateway and the agent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
