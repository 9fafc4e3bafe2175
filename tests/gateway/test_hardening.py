"""Hardening of a node: no etcd credentials in clear, secrets out of argv, a private data
directory, HTTPS, bounded slow and idle connections, and bodies that do not decode
answered 400 in Scaleway's format."""

from __future__ import annotations

import datetime
import gzip
import http.client
import io
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from gateway_fixtures import ADMIN_SECRET, ApiKeys, GatewayNode, gateway, sdk_client  # noqa: F401

from devcluster.etcd import EtcdCluster
from gateway import serve
from gateway.config import ConfigError, GatewayConfig, load

SERVE = [sys.executable, "-m", "gateway.cli", "serve"]
WAIT = 60.0  # seconds a child process may take to say what a test waits for
PROMPT = 30.0  # a deadline for what should happen at once, far below the node's timeouts


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("IPAM_")}


def refused(tmp: Path, *flags: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    """`ipam serve` with `flags`, expected to stop before doing anything."""
    return subprocess.run([*SERVE, "--data-dir", str(tmp / "data"), *flags], cwd=tmp,
                          env={**clean_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=60, check=False)


def secret_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def certificate(tmp: Path, name: str = "node") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key (0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


@contextmanager
def started(tmp: Path, *flags: str, env: dict[str, str] | None = None
            ) -> Iterator[tuple[subprocess.Popen[str], Path, Path]]:
    """`ipam serve` with `flags`, its stdout and stderr in files; stopped at the end."""
    out, err = tmp / "stdout", tmp / "stderr"
    with out.open("w") as o, err.open("w") as e:
        proc = subprocess.Popen([*SERVE, *flags], cwd=tmp, env={**clean_env(), **(env or {})},
                                stdout=o, stderr=e, text=True)
    try:
        yield proc, out, err
    finally:
        proc.terminate()
        proc.wait(30)


def line_with(path: Path, needle: str, proc: subprocess.Popen[str]) -> str:
    """The first line of `path` holding `needle`, waited for at most WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and proc.poll() is None:
        found = [x for x in path.read_text().splitlines() if needle in x]
        if found:
            return found[0]
        time.sleep(0.05)  # a child process: nothing to await but its files
    raise AssertionError(f"no {needle!r} in {path.name}: {path.read_text()[-3000:]}")


@contextmanager
def node(tmp: Path, etcd: EtcdCluster, prefix: str, *flags: str) -> Iterator[tuple[str, Path]]:
    """`ipam serve` on `etcd` under `prefix`: its URL once it serves, and its stderr file.
    Without an admin secret among `flags` it gets ADMIN_SECRET (a node needs one, or a
    credential signing key file)."""
    if not any(f.startswith("--admin-secret-key") for f in flags):
        flags = ("--admin-secret-key", ADMIN_SECRET, *flags)
    with started(tmp, "--port", "0", "--etcd-endpoints", etcd.endpoints[0],
                 "--etcd-prefix", prefix, *flags) as (proc, out, err):
        line = line_with(out, "serving region", proc)
        yield line.split(" on ")[1].split(" ")[0], err


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the node closed `sock`: a read gets the end of the stream (or a reset)
    within PROMPT seconds rather than data."""
    sock.settimeout(PROMPT)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


def still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


# -- etcd credentials are never sent in clear unless asked ------------------------------------


def test_etcd_credentials_without_tls_are_refused_before_anything_starts(tmp_path: Path) -> None:
    password = secret_file(tmp_path / "etcd-password", "pw")
    done = refused(tmp_path, "--etcd-endpoints", "127.0.0.1:2379", "--etcd-username", "ipam",
                   "--etcd-password-file", str(password))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.strip() == (
        "ipam serve: --etcd-username/--etcd-password would reach etcd in clear: give "
        "--etcd-ca-file or https:// endpoints, or accept it with --etcd-insecure-transport "
        "(IPAM_ETCD_INSECURE_TRANSPORT)")
    assert not (tmp_path / "data").exists()


def test_etcd_credentials_go_over_a_ca_or_https_endpoints_or_when_accepted(tmp_path: Path
                                                                           ) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    auth = {"IPAM_ETCD_USERNAME": "ipam", "IPAM_ETCD_PASSWORD": "pw"}
    https = {**auth, "IPAM_ETCD_ENDPOINTS": "https://a:2379,https://b:2379"}
    assert not load(None, https).etcd_credentials_in_clear
    assert not load(None, {**auth, "IPAM_ETCD_ENDPOINTS": "a:2379",
                           "IPAM_ETCD_CA_FILE": str(ca)}).etcd_credentials_in_clear
    with pytest.raises(ConfigError):  # one endpoint in clear is enough to leak them
        load(None, {**auth, "IPAM_ETCD_ENDPOINTS": "https://a:2379,b:2379"})
    for accepted in ("true", "1", "yes"):
        config = load(None, {**auth, "IPAM_ETCD_ENDPOINTS": "a:2379",
                             "IPAM_ETCD_INSECURE_TRANSPORT": accepted})
        assert config.etcd_insecure_transport and config.etcd_credentials_in_clear
    with pytest.raises(ConfigError, match="IPAM_ETCD_INSECURE_TRANSPORT must be true or false"):
        load(None, {"IPAM_ETCD_INSECURE_TRANSPORT": "maybe"})


def test_etcd_credentials_accepted_in_clear_are_warned_about(tmp_path: Path) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{free.getsockname()[1]}"
    with started(tmp_path, "--port", "0", "--etcd-endpoints", nowhere, "--etcd-username",
                 "ipam", "--etcd-insecure-transport", "--admin-secret-key", ADMIN_SECRET,
                 env={"IPAM_ETCD_PASSWORD": "pw"}) as (proc, _, err):
        line = line_with(err, "in clear", proc)  # said before etcd is tried
    assert "WARNING" in line and "(--etcd-insecure-transport)" in line


# -- secrets come from files readable by their owner only ------------------------------------


def test_secrets_come_from_owner_only_files(tmp_path: Path) -> None:
    secret = str(uuid.uuid4())
    admin = secret_file(tmp_path / "admin", secret)
    password = secret_file(tmp_path / "etcd", "s3cret", 0o400)
    config = load(None, {"IPAM_ADMIN_SECRET_KEY_FILE": str(admin),
                         "IPAM_ETCD_PASSWORD_FILE": str(password),
                         "IPAM_ETCD_USERNAME": "ipam", "IPAM_ETCD_ENDPOINTS": "https://a:2379"})
    assert config.admin_secret_key == secret
    assert config.etcd_security.password == "s3cret"


@pytest.mark.parametrize("setting, content, mode, message", [
    ("admin_secret_key_file", str(uuid.uuid4()), 0o644,
     "permissions 0644 are too open: it must be accessible by its owner only (chmod 600 "),
    ("admin_secret_key_file", str(uuid.uuid4()), 0o660, "permissions 0660 are too open"),
    ("etcd_password_file", "pw", 0o604, "permissions 0604 are too open"),
    ("admin_secret_key_file", "not-a-uuid", 0o600, "does not hold a UUID"),
    ("etcd_password_file", "", 0o600, "it is empty"),
])
def test_a_secret_file_others_may_read_or_that_is_malformed_is_refused(
        tmp_path: Path, setting: str, content: str, mode: int, message: str) -> None:
    path = secret_file(tmp_path / "secret", content, mode)
    flag = "--" + setting.replace("_", "-")
    with pytest.raises(ConfigError) as err:
        load(None, {"IPAM_" + setting.upper(): str(path), "IPAM_ETCD_USERNAME": "ipam",
                    "IPAM_ETCD_ENDPOINTS": "https://a:2379"})
    assert str(err.value).startswith(f"{flag}/IPAM_{setting.upper()} {path}: ")
    assert message in str(err.value)


def test_a_missing_secret_file_or_a_secret_given_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="IPAM_ADMIN_SECRET_KEY_FILE .*No such file"):
        load(None, {"IPAM_ADMIN_SECRET_KEY_FILE": str(tmp_path / "absent")})
    path = secret_file(tmp_path / "admin", str(uuid.uuid4()))
    with pytest.raises(ConfigError) as err:
        load(None, {"IPAM_ADMIN_SECRET_KEY": str(uuid.uuid4()),
                    "IPAM_ADMIN_SECRET_KEY_FILE": str(path)})
    assert str(err.value) == ("give --admin-secret-key/IPAM_ADMIN_SECRET_KEY or "
                              "--admin-secret-key-file/IPAM_ADMIN_SECRET_KEY_FILE, not both")
    with pytest.raises(ConfigError, match="--etcd-password/IPAM_ETCD_PASSWORD or "
                                          "--etcd-password-file"):
        load(None, {"IPAM_ETCD_PASSWORD": "a", "IPAM_ETCD_PASSWORD_FILE": str(path)})


def test_a_readable_secret_file_stops_the_node_with_one_line(tmp_path: Path) -> None:
    path = secret_file(tmp_path / "admin", str(uuid.uuid4()), 0o644)
    done = refused(tmp_path, "--admin-secret-key-file", str(path))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.strip() == (
        f"ipam serve: --admin-secret-key-file/IPAM_ADMIN_SECRET_KEY_FILE {path}: permissions "
        f"0644 are too open: it must be accessible by its owner only (chmod 600 {path})")
    assert not (tmp_path / "data").exists()


# -- the data directory is the owner's -------------------------------------------------------


def test_a_new_data_dir_is_0700_and_the_first_admin_secret_0600(tmp_path: Path) -> None:
    old = os.umask(0o002)  # a permissive umask: the modes must not depend on it
    try:
        config = GatewayConfig(data_dir=tmp_path / "deep" / "data", port=0)
        checked = serve.preflight(config)
        checked.release()
        serve.admin_secret(config, out=io.StringIO())
    finally:
        os.umask(old)
    assert (config.data_dir.stat().st_mode & 0o777) == 0o700
    assert ((config.data_dir / serve.ADMIN_SECRET_FILE).stat().st_mode & 0o777) == 0o600


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777])
def test_a_data_dir_others_can_write_is_refused_naming_it(tmp_path: Path, mode: int) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(mode)
    done = refused(tmp_path, "--port", "0")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.strip() == (f"ipam serve: --data-dir/IPAM_DATA_DIR {data}: group or "
                                   f"others can write it (mode {mode & 0o777:04o}): chmod 700 it")
    assert not (data / serve.LOCK_FILE).exists()


def test_a_stored_admin_secret_others_can_read_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    stored = secret_file(data / serve.ADMIN_SECRET_FILE, str(uuid.uuid4()), 0o644)
    done = refused(tmp_path, "--port", "0")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.strip() == (
        f"ipam serve: --data-dir/IPAM_DATA_DIR {data}: {serve.ADMIN_SECRET_FILE}: permissions "
        f"0644 are too open: it must be accessible by its owner only (chmod 600 {stored})")


# -- HTTPS -----------------------------------------------------------------------------------


def test_a_node_serves_https_and_the_sdk_books_through_it(
        tmp_path: Path, etcd_single: EtcdCluster, key_prefix: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from scaleway.ipam.v1 import IpamV1API
    from scaleway.ipam.v1.types import Source
    from scaleway.vpc.v2 import VpcV2API

    cert, key = certificate(tmp_path)
    admin = secret_file(tmp_path / "admin", ADMIN_SECRET)
    with node(tmp_path, etcd_single, key_prefix, "--tls-cert-file", str(cert),
              "--tls-key-file", str(key), "--admin-secret-key-file", str(admin)) as (url, _):
        assert url.startswith("https://127.0.0.1:")
        with pytest.raises(requests.exceptions.SSLError):  # not a certificate the system trusts
            requests.get(f"{url}/healthz", timeout=PROMPT)
        with socket.create_connection(("127.0.0.1", port_of(url)), timeout=PROMPT) as plain:
            plain.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert not plain.recv(1024).startswith(b"HTTP/")  # no HTTP in clear on that port
        # The SDK calls requests with verify=True, which honours REQUESTS_CA_BUNDLE: the way
        # to give it a private CA (it has no option of its own).
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
        project = str(uuid.uuid4())
        access, secret = ApiKeys(url).create("project_member", [project])
        client = sdk_client(url, access, secret, project)
        pn = VpcV2API(client).create_private_network(default_route_propagation_enabled=False,
                                                     subnets=["10.30.0.0/24"])
        ip = IpamV1API(client).book_ip(source=Source(private_network_id=pn.id), is_ipv6=False)
        assert ip.address.startswith("10.30.0.") and ip.project_id == project


def test_a_tls_certificate_and_key_that_do_not_match_stop_the_node_with_one_line(
        tmp_path: Path) -> None:
    cert, _ = certificate(tmp_path, "one")
    _, other_key = certificate(tmp_path, "two")
    done = refused(tmp_path, "--port", "0", "--tls-cert-file", str(cert),
                   "--tls-key-file", str(other_key))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.strip() == (
        f"ipam serve: --tls-cert-file/IPAM_TLS_CERT_FILE {cert} and --tls-key-file/"
        f"IPAM_TLS_KEY_FILE {other_key} do not load as a PEM certificate and its unencrypted "
        "key: key values mismatch")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("content", [b"not a certificate", None])
def test_a_tls_file_that_is_no_pem_or_absent_stops_the_node(tmp_path: Path,
                                                             content: bytes | None) -> None:
    _, key = certificate(tmp_path)
    cert = tmp_path / "bad.crt"
    if content is not None:
        cert.write_bytes(content)
    done = refused(tmp_path, "--port", "0", "--tls-cert-file", str(cert),
                   "--tls-key-file", str(key))
    assert (done.returncode, done.stdout, len(done.stderr.splitlines())) == (2, "", 1)
    assert str(cert) in done.stderr and "--tls-cert-file" in done.stderr


def test_tls_certificate_and_key_go_together() -> None:
    with pytest.raises(ConfigError, match="--tls-cert-file and --tls-key-file go together"):
        load(None, {"IPAM_TLS_CERT_FILE": __file__})


# -- slow and idle connections ---------------------------------------------------------------


def test_a_connection_sending_half_its_headers_is_closed_after_the_header_timeout(
        tmp_path: Path, etcd_single: EtcdCluster, key_prefix: str) -> None:
    with node(tmp_path, etcd_single, key_prefix, "--header-timeout", "0.5") as (url, _):
        port = port_of(url)
        with socket.create_connection(("127.0.0.1", port), timeout=PROMPT) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # no blank line: never ends
            assert closed_by_peer(slow)  # unanswered, and well before the keep-alive 75 s
        prompt = http.client.HTTPConnection("127.0.0.1", port, timeout=PROMPT)
        try:
            for _ in range(2):  # kept alive: each request has its own deadline
                prompt.request("GET", "/healthz")
                answer = prompt.getresponse()
                assert (answer.status, answer.read(), answer.will_close) == (
                    200, b'{"status":"ok","region":"fr-par"}', False)
        finally:
            prompt.close()


def _read_until_closed(sock: socket.socket) -> bytes:
    sock.settimeout(PROMPT)
    got = b""
    for _ in range(100):  # an answer is a few packets at most
        chunk = sock.recv(65536)
        if not chunk:
            return got
        got += chunk
    raise AssertionError(f"still open after {got!r}")


def test_a_body_that_never_arrives_is_answered_408_and_frees_its_connection(
        tmp_path: Path, etcd_single: EtcdCluster, key_prefix: str) -> None:
    """Announced and never sent, a body held its busy connection forever: enough such
    clients took every connection (--max-connections closes idle ones only)."""
    admin = secret_file(tmp_path / "admin", ADMIN_SECRET)
    with node(tmp_path, etcd_single, key_prefix, "--max-connections", "2",
              "--header-timeout", "0.5", "--admin-secret-key-file", str(admin)) as (url, _):
        slow = []
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", port_of(url)), timeout=PROMPT)
            sock.sendall(b"POST /ipam/v1/regions/fr-par/ips HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 1000\r\n"
                         b"X-Auth-Token: " + ADMIN_SECRET.encode() + b"\r\n\r\n{")
            slow.append(sock)
        try:
            for sock in slow:
                head, _, body = _read_until_closed(sock).partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 408"), head
                assert json.loads(body) == {
                    "type": "invalid_request",
                    "message": "the request body did not arrive within 0.5 s"}
            assert requests.get(f"{url}/healthz", timeout=PROMPT).status_code == 200
        finally:
            for sock in slow:
                sock.close()


_SECRET_SENT = "0d8c2a55-6c5e-4c8e-9d6a-2f1e3b4c5d6e"
_POST = (b"POST /ipam/v1/regions/fr-par/ips HTTP/1.1\r\nHost: x\r\n"
         b"Content-Type: application/json\r\n")


@pytest.mark.parametrize("request_bytes, status, said", [
    (b"FOO /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400, "the method"),
    (b"GET /healthz HTTP/1.1\nHost: x\nX-Auth-Token: " + _SECRET_SENT.encode() + b"\n\n",
     400, "not valid HTTP/1.1"),
    (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400, "too long"),
    (_POST + b"Content-Encoding: br\r\nContent-Length: 2\r\n\r\n{}", 415,
     "Content-Encoding"),
    (_POST + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400, "HTTP/1.1"),
    (_POST + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}", 400,
     "HTTP/1.1"),
])
def test_what_the_http_parser_refuses_is_a_scaleway_error_and_no_traceback(
        tmp_path: Path, etcd_single: EtcdCluster, key_prefix: str, request_bytes: bytes,
        status: int, said: str) -> None:
    """aiohttp answered these in plain text (echoing a bare-LF request, its secret
    included, or asking to install Brotli) and logged two tracebacks for each."""
    with node(tmp_path, etcd_single, key_prefix, "--log-level", "info") as (url, stderr):
        with socket.create_connection(("127.0.0.1", port_of(url)), timeout=PROMPT) as sock:
            sock.sendall(request_bytes)
            head, _, body = _read_until_closed(sock).partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == str(status).encode(), head  # HTTP/1.0: never parsed
        assert b"application/json" in head
        answer = json.loads(body)
        assert answer["type"] == "invalid_request" and said in answer["message"], answer
        assert _SECRET_SENT.encode() not in head + body
        assert requests.get(f"{url}/healthz", timeout=PROMPT).status_code == 200
        logged = stderr.read_text()
        assert "Traceback" not in logged and "Error handling request" not in logged, logged


def test_a_connection_idle_between_requests_is_closed_after_the_keepalive_timeout(
        tmp_path: Path, etcd_single: EtcdCluster, key_prefix: str) -> None:
    with node(tmp_path, etcd_single, key_prefix, "--keepalive-timeout", "0.5",
              "--header-timeout", "300") as (url, _):
        idle = http.client.HTTPConnection("127.0.0.1", port_of(url), timeout=PROMPT)
        try:
            idle.request("GET", "/healthz")
            answer = idle.getresponse()
            assert (answer.status, answer.will_close) == (200, False)
            answer.read()
            assert idle.sock is not None and closed_by_peer(idle.sock)
        finally:
            idle.close()


def test_a_node_at_max_connections_closes_the_longest_idle_to_answer_a_new_one(
        tmp_path: Path, etcd_single: EtcdCluster, key_prefix: str) -> None:
    with node(tmp_path, etcd_single, key_prefix, "--max-connections", "3",
              "--header-timeout", "300") as (url, _):
        idle = [socket.create_connection(("127.0.0.1", port_of(url)), timeout=PROMPT)
                for _ in range(3)]
        try:
            assert requests.get(f"{url}/healthz", timeout=PROMPT).status_code == 200
            assert closed_by_peer(idle[0])
            assert still_open(idle[1]) and still_open(idle[2])
        finally:
            for sock in idle:
                sock.close()


def test_a_node_at_max_connections_none_idle_closes_a_new_one_at_once(
        tmp_path: Path, etcd_single: EtcdCluster, key_prefix: str) -> None:
    admin = secret_file(tmp_path / "admin", ADMIN_SECRET)
    with node(tmp_path, etcd_single, key_prefix, "--max-connections", "2",
              "--header-timeout", "300", "--admin-secret-key-file", str(admin)) as (url, stderr):
        busy = []
        for _ in range(2):  # requests in progress, waiting for a body they announced
            sock = socket.create_connection(("127.0.0.1", port_of(url)), timeout=PROMPT)
            sock.sendall(b"POST /ipam/v1/regions/fr-par/ips HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 2\r\n"
                         b"Expect: 100-continue\r\nX-Auth-Token: " + ADMIN_SECRET.encode()
                         + b"\r\n\r\n")
            assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue")  # its handler runs
            busy.append(sock)
        try:
            with socket.create_connection(("127.0.0.1", port_of(url)), timeout=PROMPT) as new:
                assert closed_by_peer(new)
            busy[0].sendall(b"{}")  # the busy ones were kept: they finish and are answered
            assert busy[0].recv(4096).startswith(b"HTTP/1.1 400")
        finally:
            for sock in busy:
                sock.close()
        assert "closed unread: --max-connections 2 are open and none is idle" in (
            stderr.read_text())


# -- bodies that do not decode ---------------------------------------------------------------


def test_a_gzip_body_that_is_not_gzip_is_a_400_in_scaleways_format(
        gateway: GatewayNode) -> None:  # noqa: F811
    url = f"{gateway.url}/ipam/v1/regions/fr-par/ips"
    headers = {"X-Auth-Token": ADMIN_SECRET, "Content-Type": "application/json"}
    resp = requests.post(url, data=b"\x00garbage, not gzip",
                         headers={**headers, "Content-Encoding": "gzip"}, timeout=PROMPT)
    assert (resp.status_code, resp.headers["Connection"]) == (400, "close")
    assert resp.json() == {
        "type": "invalid_arguments", "message": "invalid argument(s)",
        "details": [{"argument_name": "body", "reason": "format",
                     "help_message": "the body is not valid gzip, as its Content-Encoding says"}]}
    # a real gzip body is read as its JSON: the refusal above is about the encoding only
    resp = requests.post(url, data=gzip.compress(json.dumps({"source": {}}).encode()),
                         headers={**headers, "Content-Encoding": "gzip"}, timeout=PROMPT)
    assert resp.status_code == 400
    assert resp.json()["details"][0]["argument_name"] != "body"


def test_a_body_cut_short_is_no_server_error(gateway: GatewayNode,  # noqa: F811
                                             caplog: pytest.LogCaptureFixture) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=PROMPT) as sock:
        sock.sendall(b"POST /ipam/v1/regions/fr-par/ips HTTP/1.1\r\nHost: x\r\n"
                     b"X-Auth-Token: " + ADMIN_SECRET.encode() + b"\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n10\r\n{\"source\"")
        sock.shutdown(socket.SHUT_WR)  # the client is gone before the chunk's end
        answer = sock.recv(4096)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400")
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


# -- every flag has its variable and shows in --help -----------------------------------------


def test_the_hardening_flags_show_in_help_with_their_variables() -> None:
    text = " ".join(serve.parser().format_help().split())
    for flag in ("--etcd-insecure-transport", "--etcd-password-file", "--admin-secret-key-file",
                 "--tls-cert-file", "--tls-key-file", "--header-timeout", "--keepalive-timeout",
                 "--max-connections"):
        env = "IPAM_" + flag[2:].upper().replace("-", "_")
        assert flag in text and env in text, flag
    config = load(serve.parser().parse_args([]), {})
    assert (config.header_timeout, config.keepalive_timeout, config.max_connections) == (
        10.0, 75.0, 10000)
    assert not config.etcd_insecure_transport and not config.tls
