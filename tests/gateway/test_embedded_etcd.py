"""The embedded etcd of `ipam serve` lets in the gateway and its operator's tools only:
mutual TLS with certificates made once in the data directory, kept across restarts."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from allocator_support import connected, make_pn, new_project
from cryptography import x509

from devcluster.etcd import EtcdCluster
from devcluster.pki import RENEW_BEFORE, VALIDITY, MemberPKI, ensure_member_pki
from gateway.cli import main

ROOT = Path(__file__).resolve().parents[2]
SERVE = [sys.executable, "-m", "gateway.cli", "serve", "--port", "0"]
ADMIN_SECRET = str(uuid.uuid4())
WAIT = 60.0  # seconds `ipam serve` may take to say it serves
REFUSED = "Error: context deadline exceeded"  # etcdctl's last line when no connection holds
# TLS that trusts any server: what a stranger without the CA file has to try.
UNVERIFIED_TLS = ["--insecure-transport=false", "--insecure-skip-tls-verify"]
PKI_FILES = ("ca.pem", "member.pem", "member-key.pem", "client.pem", "client-key.pem")


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("IPAM_", "ETCDCTL_"))}


@dataclass
class Node:
    """A running `ipam serve` on an embedded etcd: its URL, its data directory and the
    file of its stdout and stderr."""

    url: str
    data: Path
    out: Path

    def wait_for(self, needle: str) -> None:
        """Until the node's output holds `needle` (bounded by WAIT)."""
        deadline = time.monotonic() + WAIT
        while needle not in self.out.read_text():
            assert time.monotonic() < deadline, self.out.read_text()[-3000:]
            time.sleep(0.05)  # a child process: nothing to await but its output

    @property
    def etcd_url(self) -> str:
        return (self.data / "etcd_endpoint").read_text().strip()

    @property
    def etcd_log(self) -> Path:
        return self.data / "etcd" / "embedded0" / "etcd.log"

    def api(self, method: str, path: str, secret: str = ADMIN_SECRET,
            **kwargs: object) -> requests.Response:
        return requests.request(method, self.url + path, headers={"X-Auth-Token": secret},
                                timeout=30, **kwargs)  # type: ignore[arg-type]


@contextmanager
def serving(data: Path) -> Iterator[Node]:
    """`ipam serve --data-dir data` until the block ends (then SIGTERM, exit 0)."""
    out = data.parent / f"{data.name}.stdout"
    env = {**_clean_env(), "IPAM_ADMIN_SECRET_KEY": ADMIN_SECRET}
    with out.open("w") as stdout:
        proc = subprocess.Popen([*SERVE, "--data-dir", str(data)], cwd=data.parent, env=env,
                                stdout=stdout, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + WAIT
        found = None
        while not found and proc.poll() is None and time.monotonic() < deadline:
            found = re.search(r"serving region fr-par on (http://\S+)", out.read_text())
            time.sleep(0.05)  # a child process: nothing to await but its output
        assert found, out.read_text()[-3000:]
        yield Node(found[1], data, out)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, out.read_text()[-3000:]


def etcdctl(node: Node, *args: str, cert: bool = True,
            endpoint: str | None = None) -> subprocess.CompletedProcess[str]:
    """etcdctl against the node's etcd, with its client certificate unless `cert` is False
    (a stranger: same host, no access to the data directory)."""
    tls = node.data / "etcd-tls"
    flags = [f"--cacert={tls / 'ca.pem'}", f"--cert={tls / 'client.pem'}",
             f"--key={tls / 'client-key.pem'}"] if cert else []
    return subprocess.run(
        ["etcdctl", f"--endpoints={endpoint or node.etcd_url}", "--dial-timeout=1s",
         "--command-timeout=3s", *flags, *args],
        env={**_clean_env(), "ETCDCTL_API": "3"}, capture_output=True, text=True, timeout=60,
        check=False)


def _stranger_is_refused(node: Node, args: list[str], endpoint: str, rejection: str) -> None:
    """etcdctl without the client certificate fails, and etcd logs why it cut it off."""
    logged = node.etcd_log.read_text().count(rejection)
    done = etcdctl(node, *args, cert=False, endpoint=endpoint)
    assert (done.returncode, done.stdout, done.stderr.splitlines()[-1]) == (1, "", REFUSED)
    assert node.etcd_log.read_text().count(rejection) > logged


def _forged_admin(prefix: str = "/ipam/") -> tuple[str, str, str]:
    """What the probe wrote: an admin key record of a secret of its own choosing."""
    secret = str(uuid.uuid4())
    key = f"{prefix}auth/secret/{hashlib.sha256(secret.encode()).hexdigest()}"
    record: dict[str, object] = {"access_key": "SCW" + "F" * 17, "role": "admin", "organization_id": None,
              "project_ids": [], "resource_types": [], "description": "forged",
              "created_at": "2026-01-01T00:00:00+00:00", "expires_at": None}
    return secret, key, json.dumps(record)


def test_etcdctl_without_the_client_certificate_is_refused_and_writes_nothing(
        tmp_path: Path) -> None:
    with serving(tmp_path / "data") as node:
        assert node.etcd_url.startswith("https://127.0.0.1:")
        host_port = node.etcd_url.removeprefix("https://")
        put = ["put", "/stranger", "was-here"]
        _stranger_is_refused(node, put, host_port,  # plain, as the probe did
                             '"error":"tls: first record does not look like a TLS handshake"')
        _stranger_is_refused(node, [*UNVERIFIED_TLS, *put], node.etcd_url,
                             '"error":"tls: client didn\'t provide a certificate"')
        rogue = ensure_member_pki(tmp_path / "rogue")  # a CA and client of the stranger's
        _stranger_is_refused(node, [*UNVERIFIED_TLS, f"--cert={rogue.client_cert_file}",
                                    f"--key={rogue.client_key_file}", *put], node.etcd_url,
                             "x509: certificate signed by unknown authority")
        done = etcdctl(node, "get", "/stranger")
        assert (done.returncode, done.stdout) == (0, "")  # no stranger wrote it
        assert etcdctl(node, *put).stdout == "OK\n"  # the operator, with the files
        assert etcdctl(node, "get", "/stranger", "--print-value-only").stdout == "was-here\n"


def test_the_forged_admin_probe_gets_no_admin_and_leaves_no_record(tmp_path: Path) -> None:
    with serving(tmp_path / "data") as node:
        secret, key, record = _forged_admin()
        _stranger_is_refused(node, [*UNVERIFIED_TLS, "put", key, record],
                             node.etcd_url, "tls: client didn't provide a certificate")
        answer = node.api("GET", "/ipam/admin/v1/api-keys", secret)
        assert (answer.status_code, answer.json()["type"], answer.json()["reason"]) == (
            401, "denied_authentication", "not_found")
        done = etcdctl(node, "get", key)
        assert (done.returncode, done.stdout) == (0, "")
        # The same record written with the client certificate reaches etcd, and still
        # mints no admin: it is not signed with the node's credential signing key.
        assert etcdctl(node, "put", key, record).stdout == "OK\n"
        answer = node.api("GET", "/ipam/admin/v1/api-keys", secret)
        assert (answer.status_code, answer.json()["reason"]) == (401, "not_found")
        node.wait_for(f"API key {'SCW' + 'F' * 17} refused: its record in etcd carries no "
                      "signature; it authenticates nobody")
        logged = node.out.read_text()
        assert key.rsplit("/", 1)[1] not in logged and secret not in logged
        assert logged.count(f"API key {'SCW' + 'F' * 17} refused") == 1


def test_the_peer_port_is_on_loopback_and_wants_a_certificate_too(tmp_path: Path) -> None:
    with serving(tmp_path / "data") as node:
        [member] = json.loads(etcdctl(node, "member", "list", "-w", "json").stdout)["members"]
        [peer] = member["peerURLs"]
        assert peer.startswith("https://127.0.0.1:")
        port = int(peer.rsplit(":", 1)[1])
        context = ssl.create_default_context(cafile=str(node.data / "etcd-tls" / "ca.pem"))
        with (socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
              pytest.raises(ssl.SSLError, match="ALERT_(BAD_CERTIFICATE|CERTIFICATE_REQUIRED)"),
              context.wrap_socket(raw, server_hostname="127.0.0.1") as tls):
            tls.sendall(b"GET /members HTTP/1.1\r\nHost: x\r\n\r\n")
            tls.recv(1)


def _documented_snapshot_command() -> str:
    """docs/operations.md's etcdctl snapshot of the embedded etcd, run from ./.ipam's dir."""
    text = (ROOT / "docs" / "operations.md").read_text()
    found = re.search(r'ETCDCTL_API=3 etcdctl --endpoints "\$\(cat \.ipam/etcd_endpoint\)"'
                      r'.*?snapshot save ipam\.db', text, re.DOTALL)
    assert found, "the snapshot command is gone from docs/operations.md"
    return found[0]


def test_restarts_reuse_the_certificates_keep_the_data_and_backup_finds_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / ".ipam"
    project = new_project()
    with serving(data) as node:
        mapped = node.api("PUT", f"/ipam/admin/v1/projects/{project}",
                          json={"organization_id": new_project()})
        assert mapped.status_code == 200, mapped.text  # a project needs its organization
        created = node.api("POST", "/vpc/v2/regions/fr-par/private-networks",
                           json={"project_id": project, "name": "kept",
                                 "subnets": ["10.91.0.0/24"]})
        assert created.status_code == 200
    tls = data / "etcd-tls"
    made = {name: (tls / name).read_bytes() for name in PKI_FILES}
    assert (tls.stat().st_mode & 0o777) == 0o700
    assert {name: (tls / name).stat().st_mode & 0o777 for name in PKI_FILES} == {
        "ca.pem": 0o644, "member.pem": 0o644, "member-key.pem": 0o600,
        "client.pem": 0o644, "client-key.pem": 0o600}
    ca = x509.load_pem_x509_certificate(made["ca.pem"])
    left = ca.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert left > VALIDITY - datetime.timedelta(days=1)  # ten years, not the default one
    with serving(data) as node:
        assert {name: (tls / name).read_bytes() for name in PKI_FILES} == made
        found = node.api("GET", f"/vpc/v2/regions/fr-par/private-networks/{created.json()['id']}")
        assert (found.status_code, found.json()["name"]) == (200, "kept")
        backup = tmp_path / "ipam.jsonl"
        assert main(["backup", str(backup), "--data-dir", str(data)]) == 0
        assert capsys.readouterr().out.startswith("backed up ")
        snapshot = subprocess.run(["bash", "-c", _documented_snapshot_command()],
                                  cwd=tmp_path, env=_clean_env(), capture_output=True,
                                  text=True, timeout=60, check=False)
        assert (snapshot.returncode, snapshot.stdout) == (0, "Snapshot saved at ipam.db\n")


def test_the_operator_commands_find_a_node_on_any_port_from_its_data_dir(
        tmp_path: Path) -> None:
    """`scripts/run.sh --port N` then `ipam keys ...` from the same directory, no --url."""
    with serving(tmp_path / ".ipam") as node:  # --port 0: a port of the kernel's choice
        assert (tmp_path / ".ipam" / "gateway_url").read_text() == f"{node.url}\n"
        listed = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "pools", "list", "-o", "json"],
            cwd=tmp_path, env={**_clean_env(), "IPAM_SECRET_KEY": ADMIN_SECRET},
            capture_output=True, text=True, timeout=60, check=False)
        assert (listed.returncode, json.loads(listed.stdout or "null")) == (0, []), \
            listed.stderr


async def test_a_data_dir_of_a_plain_embedded_etcd_keeps_its_data_with_tls(
        tmp_path: Path) -> None:
    """The upgrade: a data dir from before TLS (etcd under data/etcd, http URL)."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    with EtcdCluster(1, base_dir=data / "etcd", name_prefix="embedded") as plain:
        async with connected(plain.endpoints, "/ipam/") as ipam:
            pn = await make_pn(ipam, new_project(), "10.92.0.0/24")
        (data / "etcd_endpoint").write_text(f"http://{plain.endpoints[0]}\n")
    with serving(data) as node:
        assert node.etcd_url.startswith("https://")
        found = node.api("GET", f"/vpc/v2/regions/fr-par/private-networks/{pn.id}")
        assert (found.status_code, found.json()["id"]) == (200, pn.id)
        _stranger_is_refused(node, ["get", "/ipam/", "--prefix"],
                             node.etcd_url.removeprefix("https://"),
                             "tls: first record does not look like a TLS handshake")


def test_a_crashed_embedded_etcd_is_restarted_with_its_tls(tmp_path: Path) -> None:
    with serving(tmp_path / "data") as node:
        member_data = str(node.data / "etcd" / "embedded0" / "data")
        [pid] = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                 and _argv(p)[:1] != ["setpriv"] and member_data in _argv(p)]
        os.kill(pid, signal.SIGKILL)  # the etcd this test's node started
        node.wait_for("embedded etcd is back at https://127.0.0.1:")
        # Served again, through TLS, by the member restarted. Not "reachable again" in
        # the log: a member back within the gate's silence (2 s) never closed it.
        deadline = time.monotonic() + WAIT
        while (status := node.api("GET", "/ipam/admin/v1/api-keys").status_code) != 200:
            assert status == 503 and time.monotonic() < deadline, status  # gate closed
            time.sleep(0.1)  # a child process: nothing to await
        _stranger_is_refused(node, ["get", "/"], node.etcd_url.removeprefix("https://"),
                             "tls: first record does not look like a TLS handshake")


def _argv(proc: Path) -> list[str]:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def test_a_set_is_kept_while_valid_and_made_anew_within_a_year_of_its_end(
        tmp_path: Path) -> None:
    made_at = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    pki = ensure_member_pki(tmp_path / "tls", made_at)
    first = {name: (pki.directory / name).read_bytes() for name in PKI_FILES}
    still = made_at + VALIDITY - RENEW_BEFORE - datetime.timedelta(days=1)
    ensure_member_pki(pki.directory, still)
    assert {name: (pki.directory / name).read_bytes() for name in PKI_FILES} == first
    late = still + datetime.timedelta(days=2)
    assert not MemberPKI(pki.directory).usable(late)
    ensure_member_pki(pki.directory, late)
    renewed = {name: (pki.directory / name).read_bytes() for name in PKI_FILES}
    assert all(renewed[name] != first[name] for name in PKI_FILES)  # all of it, a new CA
    assert MemberPKI(pki.directory).usable(late)


def test_a_set_missing_a_file_or_signed_by_another_ca_is_made_anew(tmp_path: Path) -> None:
    pki = ensure_member_pki(tmp_path / "tls")
    pki.client_key_file.unlink()
    assert not pki.usable(datetime.datetime.now(datetime.UTC))
    ensure_member_pki(pki.directory)
    other = ensure_member_pki(tmp_path / "other")
    pki.ca_file.write_bytes(other.ca_file.read_bytes())
    assert not pki.usable(datetime.datetime.now(datetime.UTC))
