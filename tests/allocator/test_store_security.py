"""The store reaches a secured etcd: mutual TLS, and etcd auth with token renewal."""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
from pathlib import Path

import pytest
from allocator_support import book_in, connected, make_pn, new_project
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from allocator.contract import EtcdSecurity
from allocator.errors import StoreError
from allocator.store import EtcdStore
from devcluster.etcd import EtcdCluster, ServerTLS


def _write_cert(directory: Path, name: str, issuer_key, issuer_name, *, ca: bool = False,
                server: bool = False):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer_name or subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return key, subject


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca_name = _write_cert(d, "ca", None, None, ca=True)
    _write_cert(d, "server", ca_key, ca_name, server=True)
    _write_cert(d, "client", ca_key, ca_name)
    _, other_ca_name = _write_cert(d, "rogue-ca", None, None, ca=True)
    return d


async def test_mutual_tls_books_and_refuses_clients_without_a_certificate(pki, key_prefix):
    tls = ServerTLS(str(pki / "server.pem"), str(pki / "server-key.pem"), str(pki / "ca.pem"))
    with EtcdCluster(1, name_prefix="tls", tls=tls) as cluster:
        good = EtcdSecurity(ca_file=str(pki / "ca.pem"), cert_file=str(pki / "client.pem"),
                            key_file=str(pki / "client-key.pem"))
        async with connected(cluster.tls_endpoints, key_prefix, security=good,
                             timeout=2.0) as ipam:
            project = new_project()
            pn = await make_pn(ipam, project, "10.80.0.0/24")
            ip = await ipam.book(book_in(pn, project))
            assert ip.address.startswith("10.80.0.")
        no_cert = EtcdStore(cluster.tls_endpoints, timeout=1.0,
                            security=EtcdSecurity(ca_file=str(pki / "ca.pem")))
        try:
            with pytest.raises(StoreError):
                await no_cert.get("/x")
        finally:
            await no_cert.close()
        wrong_ca = EtcdStore(cluster.tls_endpoints, timeout=1.0, security=EtcdSecurity(
            ca_file=str(pki / "rogue-ca.pem"), cert_file=str(pki / "client.pem"),
            key_file=str(pki / "client-key.pem")))
        try:
            with pytest.raises(StoreError):
                await wrong_ca.get("/x")
        finally:
            await wrong_ca.close()


def _etcdctl(endpoint: str, *args: str) -> None:
    env = {**os.environ, "ETCDCTL_API": "3"}
    subprocess.run(["etcdctl", f"--endpoints={endpoint}", *args], check=True, env=env,
                   capture_output=True, timeout=30)


async def test_auth_token_is_fetched_and_renewed_when_etcd_drops_it(key_prefix):
    with EtcdCluster(1, name_prefix="auth") as cluster:
        ep = cluster.endpoints[0]
        _etcdctl(ep, "user", "add", "root:rootpw")
        _etcdctl(ep, "user", "add", "ipam:ipampw")
        _etcdctl(ep, "role", "add", "ipam")
        _etcdctl(ep, "role", "grant-permission", "ipam", "--prefix=true", "readwrite", "/")
        _etcdctl(ep, "user", "grant-role", "ipam", "ipam")
        _etcdctl(ep, "auth", "enable")
        security = EtcdSecurity(username="ipam", password="ipampw")
        async with connected(cluster.endpoints, key_prefix, security=security) as ipam:
            project = new_project()
            pn = await make_pn(ipam, project, "10.81.0.0/24")
            await ipam.book(book_in(pn, project))
            # Turning auth off and on again drops every simple token etcd handed out.
            _etcdctl(ep, "--user=root:rootpw", "auth", "disable")
            _etcdctl(ep, "auth", "enable")
            ip = await ipam.book(book_in(pn, project))
            assert (await ipam.get_ip(ip.id)).address == ip.address
            assert ipam.store.auth_renewals >= 1
        anonymous = EtcdStore(cluster.endpoints, timeout=1.0)
        wrong = EtcdStore(cluster.endpoints, timeout=1.0,
                          security=EtcdSecurity(username="ipam", password="nope"))
        try:
            with pytest.raises(StoreError):
                await anonymous.get(f"{key_prefix}x")
            with pytest.raises(StoreError):
                await wrong.get(f"{key_prefix}x")
        finally:
            await anonymous.close()
            await wrong.close()
