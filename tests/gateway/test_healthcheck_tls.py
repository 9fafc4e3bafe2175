"""The image's HEALTHCHECK command against a real `ipam serve` that serves HTTPS, run here
(no container engine): the check follows IPAM_TLS_CERT_FILE as it follows IPAM_PORT."""

from __future__ import annotations

import datetime
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from gateway_fixtures import ADMIN_SECRET

from devcluster.etcd import EtcdCluster

ROOT = Path(__file__).resolve().parents[2]
WAIT = 60.0  # seconds the node may take to say it serves


def certificate(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for a service name (not 127.0.0.1), and its key (0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ipam.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("ipam.example.com")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "node.crt", tmp / "node.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def healthcheck() -> list[str]:
    """The Dockerfile's HEALTHCHECK command, in exec form."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    (line,) = [x for x in text.splitlines() if x.strip().startswith("HEALTHCHECK")]
    return [str(arg) for arg in json.loads(line.partition("CMD ")[2])]


def run_check(env: dict[str, str]) -> int:
    """The check with this interpreter for `python`, and a proxy that does not exist."""
    command = healthcheck()
    assert command[0] == "python"
    nowhere = "http://127.0.0.1:9"
    return subprocess.run([sys.executable, *command[1:]], timeout=30, capture_output=True,
                          check=False, env={**env, "HTTP_PROXY": nowhere,
                                            "HTTPS_PROXY": nowhere}).returncode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def tls_node(tmp: Path, etcd: EtcdCluster, prefix: str) -> Iterator[dict[str, str]]:
    """`ipam serve` over HTTPS, configured by variables as in a container; its variables."""
    cert, key = certificate(tmp)
    env = {"IPAM_PORT": str(free_port()), "IPAM_TLS_CERT_FILE": str(cert),
           "IPAM_TLS_KEY_FILE": str(key), "IPAM_ETCD_ENDPOINTS": etcd.endpoints[0],
           "IPAM_ETCD_PREFIX": prefix, "IPAM_ADMIN_SECRET_KEY": ADMIN_SECRET}
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("IPAM_")}, **env}
    out = tmp / "stdout"
    with out.open("w") as o:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], cwd=tmp,
                                env=env, stdout=o, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + WAIT
        while "serving region fr-par on https://" not in out.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.05)  # a child process: nothing to await but its output
        yield env
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_healthcheck_passes_against_a_ready_node_serving_https(
        tmp_path: Path, etcd_single: EtcdCluster, key_prefix: str) -> None:
    with tls_node(tmp_path, etcd_single, key_prefix) as env:
        assert run_check(env) == 0
        plain = {k: v for k, v in env.items() if k != "IPAM_TLS_CERT_FILE"}
        assert run_check(plain) != 0  # asked in clear, a TLS port answers no HTTP


def test_the_healthcheck_fails_when_nothing_listens_on_the_https_port(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("IPAM_")},
           "IPAM_PORT": str(free_port()), "IPAM_TLS_CERT_FILE": str(cert)}
    assert run_check(env) != 0
