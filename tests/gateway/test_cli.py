"""The command line: the README's run command, the admin commands, the local topology."""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from gateway_fixtures import ADMIN_SECRET, GatewayNode, gateway, sdk_client  # noqa: F401
from scaleway.ipam.v1 import IpamV1API
from scaleway.ipam.v1.types import Source
from scaleway.vpc.v2 import VpcV2API

from gateway.cli import main

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0


def clean_env() -> dict[str, str]:
    """This environment without IPAM_* variables, so flags alone configure a child."""
    return {k: v for k, v in os.environ.items() if not k.startswith("IPAM_")}


class Served:
    """A gateway child process (`scripts/run.sh` by default), its stdout read line by line."""

    def __init__(self, cwd: Path, *args: str, command: list[str] | None = None,
                 stderr: int = subprocess.DEVNULL, env: dict[str, str] | None = None,
                 timeout: float = START_TIMEOUT) -> None:
        command = command or ["bash", str(ROOT / "scripts" / "run.sh")]
        self.proc = subprocess.Popen(
            [*command, "--port", "0", *args], cwd=cwd, env=env or clean_env(),
            stdout=subprocess.PIPE, stderr=stderr, text=True)
        self.lines: list[str] = []
        self.timeout = timeout
        self._unread = b""  # read from the pipe, not yet a whole line

    def read_until(self, pattern: str) -> re.Match[str]:
        """Read stdout until a line matches `pattern` (the child's own readiness line).

        The pipe is read with os.read, never through the file object: its buffer may hold
        the next lines already (two came in one read), where select() sees nothing more,
        and the wait would last the whole timeout (it did, in a CI run)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\n" in self._unread:
                raw, self._unread = self._unread.split(b"\n", 1)
                line = raw.decode(errors="replace") + "\n"
                self.lines.append(line)
                match = re.search(pattern, line)
                if match:
                    return match
            if time.monotonic() >= deadline or not sel.select(deadline - time.monotonic()):
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self._unread += chunk
        raise AssertionError(f"no line matching {pattern!r}; got {self.lines!r}")

    def port(self) -> int:
        """Wait for the readiness line and return the port it names."""
        return int(self.read_until(r"serving region fr-par on http://127.0.0.1:(\d+)")[1])

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


SERVE = [sys.executable, "-m", "gateway.cli", "serve"]


async def serve_on(etcd: Any, prefix: str, *flags: str) -> tuple[Any, str]:
    """An `ipam serve` subprocess on `etcd` under `prefix`, and the URL it printed."""
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        *SERVE, "--port", "0", "--etcd-endpoints", ",".join(etcd.endpoints),
        "--etcd-prefix", prefix, "--admin-secret-key", ADMIN_SECRET, *flags, cwd=ROOT,
        env=clean_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)).decode()
    return proc, re.search(r"(http://127\.0\.0\.1:\d+)", line)[1]  # type: ignore[index]


def put_organization(url: str, admin_secret: str, project: str) -> None:
    """An admin gives `project` an organization: `ipam serve` refuses writes without one."""
    resp = requests.put(f"{url}/ipam/admin/v1/projects/{project}", timeout=30,
                        json={"organization_id": str(uuid.uuid4())},
                        headers={"X-Auth-Token": admin_secret})
    assert resp.status_code == 200, resp.text


def test_readme_run_command_boots_prints_the_admin_secret_once_and_books(
        tmp_path: Path) -> None:
    first = Served(tmp_path, "--data-dir", str(tmp_path))
    try:
        port = first.port()
        secrets = [ln.strip() for ln in first.lines
                   if re.fullmatch(r"\s*[0-9a-f-]{36}\s*", ln)]
        assert len(secrets) == 1
        secret = secrets[0]
        stored = tmp_path / "admin_secret_key"
        assert stored.read_text().strip() == secret
        assert stored.stat().st_mode & 0o777 == 0o600
        project = str(uuid.uuid4())
        put_organization(f"http://127.0.0.1:{port}", secret, project)
        client = sdk_client(f"http://127.0.0.1:{port}", "SCW" + "B" * 17, secret, project)
        pn = VpcV2API(client).create_private_network(default_route_propagation_enabled=False)
        ip = IpamV1API(client).book_ip(source=Source(private_network_id=pn.id),
                                       is_ipv6=False)
        assert ip.address.startswith("172.")
    finally:
        assert first.terminate() == 0
    second = Served(tmp_path, "--data-dir", str(tmp_path))
    try:
        port = second.port()
        assert not any(secret in ln for ln in second.lines)
        client = sdk_client(f"http://127.0.0.1:{port}", "SCW" + "B" * 17, secret,
                            ip.project_id)
        assert IpamV1API(client).get_ip(ip_id=ip.id).address == ip.address
    finally:
        assert second.terminate() == 0


@pytest.fixture
def operator_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No IPAM_* variable and no config file of the user running the tests: the flags
    of each command alone say where the gateway is and who asks."""
    for name in [k for k in os.environ if k.startswith("IPAM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_admin_commands_print_tables(gateway: GatewayNode,  # noqa: F811
                                     operator_env: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--url", gateway.url, "--secret-key", ADMIN_SECRET]
    project = str(uuid.uuid4())
    assert main(["keys", "create", *common, "--role", "project_member", "--project-ids",
                 project, "--description", "ops"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["ACCESS_KEY", "ROLE", "ORGANIZATION_ID",
                                           "PROJECT_IDS", "RESOURCE_TYPES", "DESCRIPTION",
                                           "CREATED_AT", "EXPIRES_AT"]
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
    assert main(["keys", "revoke", *common, access_key]) == 1
    assert capsys.readouterr().err == ("error 404 not_found: resource is not found "
                                       f"(api_key {access_key})\n")


async def map_project(http: Any, url: str, project: str) -> None:
    """Give `project` an organization: `ipam serve` refuses writes into one without."""
    async with http.put(f"{url}/ipam/admin/v1/projects/{project}",
                        json={"organization_id": str(uuid.uuid4())}) as resp:
        assert resp.status == 200, await resp.text()


async def test_sigterm_lets_in_flight_bookings_finish(etcd_single: Any,
                                                      key_prefix: str) -> None:
    """Every booking committed during a SIGTERM got its 200: none was cut off mid-flight."""
    import asyncio

    import aiohttp

    from allocator.contract import IPAM, IPFilter

    proc, url = await serve_on(etcd_single, key_prefix)
    headers = {"X-Auth-Token": ADMIN_SECRET}
    project = str(uuid.uuid4())
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
        await map_project(http, url, project)
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


async def test_sigterm_drains_keep_alive_clients_so_no_answer_is_lost(
        etcd_single: Any, key_prefix: str) -> None:
    """Keep-alive clients booking in a loop through a SIGTERM: /readyz turns to draining,
    bookings go on being answered (each with Connection: close) for the drain window, and
    the only failures are refused connections once the node stops accepting; every IP
    held in etcd afterwards was answered 200."""
    import asyncio

    import aiohttp

    from allocator.contract import IPAM, IPFilter

    clients, drain_seconds = 32, 2.0
    proc, url = await serve_on(etcd_single, key_prefix, "--drain-seconds", str(drain_seconds))
    headers = {"X-Auth-Token": ADMIN_SECRET}
    project = str(uuid.uuid4())
    async with aiohttp.ClientSession(headers=headers) as http:
        await map_project(http, url, project)
        async with http.post(f"{url}/vpc/v2/regions/fr-par/private-networks",
                             json={"project_id": project, "subnets": ["10.80.0.0/16"]}) as r:
            pn = await r.json()
    body = {"source": {"private_network_id": pn["id"]}, "is_ipv6": False,
            "project_id": project}

    statuses: list[int] = []
    closing_answers = 0  # answers that carried Connection: close
    refused_at: list[float] = []  # when a request failed before any byte of its answer
    cut_mid_answer: list[str] = []
    warmed_up = asyncio.Event()
    sigterm_sent = asyncio.Event()

    async def client() -> None:
        nonlocal closing_answers
        connector = aiohttp.TCPConnector(limit=1)  # one keep-alive connection per client
        async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
            while True:
                try:
                    resp = await http.post(f"{url}/ipam/v1/regions/fr-par/ips", json=body)
                except aiohttp.ClientConnectionError:
                    refused_at.append(time.monotonic())
                    if sigterm_sent.is_set():
                        return
                    continue
                async with resp:
                    try:
                        await resp.read()
                    except aiohttp.ClientError as err:
                        cut_mid_answer.append(repr(err))
                        return
                statuses.append(resp.status)
                closing_answers += resp.headers.get("Connection", "").lower() == "close"
                if len(statuses) >= 4 * clients:
                    warmed_up.set()

    async def watch_readiness() -> tuple[float, int, dict[str, Any], str]:
        """Poll /readyz from SIGTERM on until it says draining: (when, status, body, Connection)."""
        async with aiohttp.ClientSession() as probe:
            while True:
                async with probe.get(f"{url}/readyz") as resp:
                    answer = await resp.json()
                    if answer.get("status") != "ready":
                        return (time.monotonic(), resp.status, answer,
                                resp.headers.get("Connection", ""))

    tasks = [asyncio.ensure_future(client()) for _ in range(clients)]
    await asyncio.wait_for(warmed_up.wait(), START_TIMEOUT)
    assert closing_answers == 0 and not refused_at  # keep-alive, and nothing lost, so far
    proc.send_signal(signal.SIGTERM)
    sigterm_sent.set()
    draining_seen, ready_status, ready_body, ready_connection = await asyncio.wait_for(
        watch_readiness(), drain_seconds)
    answered_before_draining = len(statuses)
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    assert await asyncio.wait_for(proc.wait(), 30) == 0

    assert (ready_status, ready_body, ready_connection.lower()) == (
        503, {"status": "draining"}, "close")
    assert not cut_mid_answer
    assert set(statuses) == {200}
    assert len(statuses) > answered_before_draining  # it kept serving while draining
    assert closing_answers >= clients  # every keep-alive client was told to reconnect
    # Connections were refused only once the node stopped accepting, after the window.
    assert len(refused_at) == clients
    assert min(refused_at) - draining_seen > drain_seconds / 2
    ipam = await IPAM.connect(etcd_single.endpoints, prefix=key_prefix)
    try:
        _, held = await ipam.list_ips(IPFilter(private_network_id=pn["id"]), page_size=1)
    finally:
        await ipam.close()
    assert held == len(statuses)


def test_a_second_serve_on_the_same_data_dir_exits_at_once_naming_the_first(
        tmp_path: Path) -> None:
    first = Served(tmp_path, "--data-dir", str(tmp_path), command=SERVE)
    try:
        port = first.port()
        started = time.monotonic()
        second = subprocess.run([*SERVE, "--port", "0", "--data-dir", str(tmp_path)],
                                cwd=tmp_path, env=clean_env(), capture_output=True,
                                text=True, timeout=30, check=False)
        assert time.monotonic() - started < 10
        assert second.returncode == 2  # found before any side effect, like a bad flag
        assert second.stderr.strip() == (f"ipam serve: --data-dir/IPAM_DATA_DIR {tmp_path}: "
                                         f"another ipam serve is using {tmp_path} "
                                         f"(pid {first.proc.pid})")
        assert second.stdout == ""  # no secret generated, no etcd started
        healthz = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert json.loads(healthz.read())["status"] == "ok"  # the first one serves on
    finally:
        assert first.terminate() == 0
    again = Served(tmp_path, "--data-dir", str(tmp_path), command=SERVE)
    try:
        again.port()  # the lock went with the first process
    finally:
        assert again.terminate() == 0


def test_run_sh_keeps_its_data_where_it_is_called_so_ipam_keys_finds_the_secret(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    served = Served(tmp_path)  # no --data-dir: ./.ipam of the caller's directory
    try:
        port = served.port()
        stored = tmp_path / ".ipam" / "admin_secret_key"
        assert stored.read_text().strip() in "".join(served.lines)
        for name in [k for k in os.environ if k.startswith("IPAM_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("HOME", str(tmp_path))  # no config file of the tester's
        monkeypatch.chdir(tmp_path)
        assert main(["keys", "create", "--url", f"http://127.0.0.1:{port}",
                     "--role", "project_reader", "--project-ids", str(uuid.uuid4())]) == 0
        assert "secret key (shown once)" in capsys.readouterr().out
    finally:
        assert served.terminate() == 0


def test_keys_create_takes_an_expiry_and_errors_read_as_lines(
        gateway: GatewayNode, operator_env: Path,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--url", gateway.url, "--secret-key", ADMIN_SECRET]
    assert main(["keys", "create", *common, "--role", "admin",
                 "--expires-at", "2999-01-01T00:00:00+00:00"]) == 0
    assert "2999-01-01T00:00:00+00:00" in capsys.readouterr().out
    assert main(["keys", "create", *common, "--role", "admin",
                 "--expires-at", "2020-01-01T00:00:00Z"]) == 1
    assert capsys.readouterr() == ("", ("error 400 invalid_arguments: invalid argument(s)\n"
                                       "  expires_at: must be in the future (constraint)\n"))
    assert main(["keys", "create", *common, "--role", "admin", "--project-ids",
                 str(uuid.uuid4())]) == 1
    assert capsys.readouterr().err.startswith(
        "error 400 invalid_arguments: invalid argument(s)\n  project_ids: an admin key ")
    assert main(["pools", "add", *common, "--zone", "fr-par-1", "--subnet",
                 "51.15.8.0/24"]) == 0
    capsys.readouterr()
    assert main(["pools", "add", *common, "--zone", "fr-par-1", "--subnet",
                 "51.15.8.0/25"]) == 1
    message = capsys.readouterr().err
    assert re.fullmatch(r"error 409 already_exists: [^\n{}]+\n", message), message
    assert main(["keys", "revoke", *common, "SCW" + "Z" * 17]) == 1
    assert capsys.readouterr().err == ("error 404 not_found: resource is not found "
                                       f"(api_key SCW{'Z' * 17})\n")


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="no Debian python3 here")
@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout to clone")
@pytest.mark.timeout(900)  # a fresh venv: pip installs every dependency (300 s ran out once)
def test_run_sh_with_debians_own_python_first_makes_its_venv_and_books(tmp_path: Path) -> None:
    """A fresh clone, /usr/bin first on PATH (its python3 refuses pip, PEP 668): run.sh
    makes the checkout's .venv with it and serves; an IP is booked through the SDK."""
    repo, here = tmp_path / "repo", tmp_path / "here"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True, timeout=60)
    here.mkdir()
    env = {k: v for k, v in clean_env().items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = "/usr/bin:/bin:" + env.get("PATH", "")
    served = Served(here, command=["bash", str(repo / "scripts" / "run.sh")], env=env,
                    stderr=subprocess.STDOUT, timeout=600)  # the first run installs
    try:
        port = served.port()
        assert "home = /usr/bin" in (repo / ".venv" / "pyvenv.cfg").read_text()
        secret = (here / ".ipam" / "admin_secret_key").read_text().strip()
        project = str(uuid.uuid4())
        put_organization(f"http://127.0.0.1:{port}", secret, project)
        client = sdk_client(f"http://127.0.0.1:{port}", "SCW" + "C" * 17, secret, project)
        pn = VpcV2API(client).create_private_network(default_route_propagation_enabled=False,
                                                     subnets=["10.61.0.0/24"])
        ip = IpamV1API(client).book_ip(source=Source(private_network_id=pn.id), is_ipv6=False)
        assert ip.address.startswith("10.61.0.")
    finally:
        assert served.terminate() == 0
