"""The command line: the README's run command, the admin commands, the local topology."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from gateway_fixtures import ADMIN_SECRET, GatewayNode, gateway, sdk_client  # noqa: F401
from scaleway.ipam.v1 import IpamV1API
from scaleway.ipam.v1.types import Source
from scaleway.vpc.v2 import VpcV2API

from gateway.cli import main

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0


class Served:
    """`scripts/run.sh` as a child process, with its stdout read line by line."""

    def __init__(self, data_dir: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IPAM_")}
        self.proc = subprocess.Popen(
            ["bash", str(ROOT / "scripts" / "run.sh"), "--port", "0", "--data-dir",
             str(data_dir)], cwd=data_dir, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True)
        self.lines: list[str] = []

    def read_until(self, pattern: str) -> re.Match[str]:
        """Read stdout until a line matches `pattern` (the child's own readiness line)."""
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if not sel.select(deadline - time.monotonic()):
                break
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no line matching {pattern!r}; got {self.lines!r}")

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


def test_readme_run_command_boots_prints_the_admin_secret_once_and_books(
        tmp_path: Path) -> None:
    first = Served(tmp_path)
    try:
        port = int(first.read_until(r"serving region fr-par on http://127.0.0.1:(\d+)")[1])
        secrets = [ln.strip() for ln in first.lines
                   if re.fullmatch(r"\s*[0-9a-f-]{36}\s*", ln)]
        assert len(secrets) == 1
        secret = secrets[0]
        stored = tmp_path / "admin_secret_key"
        assert stored.read_text().strip() == secret
        assert stored.stat().st_mode & 0o777 == 0o600
        client = sdk_client(f"http://127.0.0.1:{port}", "SCW" + "B" * 17, secret,
                            str(uuid.uuid4()))
        pn = VpcV2API(client).create_private_network(default_route_propagation_enabled=False)
        ip = IpamV1API(client).book_ip(source=Source(private_network_id=pn.id),
                                       is_ipv6=False)
        assert ip.address.startswith("172.")
    finally:
        assert first.terminate() == 0
    second = Served(tmp_path)
    try:
        port = int(second.read_until(r"serving region fr-par on http://127.0.0.1:(\d+)")[1])
        assert not any(secret in ln for ln in second.lines)
        client = sdk_client(f"http://127.0.0.1:{port}", "SCW" + "B" * 17, secret,
                            ip.project_id)
        assert IpamV1API(client).get_ip(ip_id=ip.id).address == ip.address
    finally:
        assert second.terminate() == 0


def test_admin_commands_print_tables(gateway: GatewayNode,  # noqa: F811
                                     capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--url", gateway.url, "--secret-key", ADMIN_SECRET]
    project = str(uuid.uuid4())
    assert main(["keys", "create", *common, "--role", "project_member", "--project-ids",
                 project, "--description", "ops"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["ACCESS_KEY", "ROLE", "ORGANIZATION_ID",
                                           "PROJECT_IDS", "RESOURCE_TYPES", "DESCRIPTION",
                                           "CREATED_AT"]
    access_key = re.search(r"(SCW[A-Z0-9]{17})", out)[1]  # type: ignore[index]
    assert re.search(r"secret key \(shown once\): [0-9a-f-]{36}", out)
    assert main(["keys", "list", *common]) == 0
    listed = capsys.readouterr().out
    assert access_key in listed and project in listed
    assert main(["pools", "add", *common, "--zone", "fr-par-1", "--subnet",
                 "51.15.9.0/24"]) == 0
    assert "51.15.9.0/24" in capsys.readouterr().out
    assert main(["pools", "list", *common]) == 0
    assert "fr-par-1" in capsys.readouterr().out
    assert main(["keys", "revoke", *common, access_key]) == 0
    assert capsys.readouterr().out == f"revoked {access_key}\n"
    assert main(["keys", "list", *common]) == 0
    assert access_key not in capsys.readouterr().out
    with pytest.raises(SystemExit, match="error 404 not_found"):
        main(["keys", "revoke", *common, access_key])


def test_local_topology_serves_through_haproxy(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from topology import LocalTopology
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    with LocalTopology(gateways=2, base_dir=tmp_path) as topo:
        client = sdk_client(topo.url, "SCW" + "C" * 17, topo.admin_secret, str(uuid.uuid4()))
        pn = VpcV2API(client).create_private_network(default_route_propagation_enabled=False,
                                                     subnets=["10.60.0.0/24"])
        api = IpamV1API(client)
        ips = [api.book_ip(source=Source(private_network_id=pn.id), is_ipv6=False)
               for _ in range(6)]
        assert len({i.address for i in ips}) == 6
        for url in topo.gateway_urls:  # every node answers for every IP
            node = IpamV1API(sdk_client(url, "SCW" + "C" * 17, topo.admin_secret))
            assert node.list_i_ps(private_network_id=pn.id).total_count == 6


async def test_sigterm_lets_in_flight_bookings_finish(etcd_single: Any,
                                                      key_prefix: str) -> None:
    """Every booking committed during a SIGTERM got its 200: none was cut off mid-flight."""
    import asyncio

    import aiohttp

    from allocator import IPAM, IPFilter

    env = {k: v for k, v in os.environ.items() if not k.startswith("IPAM_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "serve", "--port", "0",
        "--etcd-endpoints", ",".join(etcd_single.endpoints), "--etcd-prefix", key_prefix,
        "--admin-secret-key", ADMIN_SECRET, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)).decode()
    url = re.search(r"(http://127\.0\.0\.1:\d+)", line)[1]  # type: ignore[index]
    headers = {"X-Auth-Token": ADMIN_SECRET}
    project = str(uuid.uuid4())
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
        async with http.post(f"{url}/vpc/v2/regions/fr-par/private-networks",
                             json={"project_id": project, "subnets": ["10.70.0.0/22"]}) as r:
            pn = await r.json()
        body = {"source": {"private_network_id": pn["id"]}, "is_ipv6": False,
                "project_id": project}

        async def book() -> int:
            async with http.post(f"{url}/ipam/v1/regions/fr-par/ips", json=body) as resp:
                await resp.read()
                return resp.status

        tasks = [asyncio.ensure_future(book()) for _ in range(200)]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        proc.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    answered = [r for r in results if isinstance(r, int)]
    assert set(answered) <= {200}
    ipam = await IPAM.connect(etcd_single.endpoints, prefix=key_prefix)
    try:
        _, held = await ipam.list_ips(IPFilter(private_network_id=pn["id"]), page_size=1)
    finally:
        await ipam.close()
    assert held == answered.count(200) >= 1
