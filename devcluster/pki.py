"""The private CA of a TLS-only etcd member and the certificates it signed, made once.

The embedded etcd of `ipam serve` trusts nothing but certificates of its own CA, made
here on its first start and kept in one directory (0700, keys 0600):

    ca.pem                        the CA, self-signed; its key is used once, never written
    member.pem, member-key.pem    the member's own: server on its client and peer ports,
                                  client when etcd dials itself (its gRPC gateway)
    client.pem, client-key.pem    what the gateway, `ipam backup` and etcdctl present

The CA's key is not kept, so nobody can sign another certificate this member trusts:
when the set must be renewed, all of it is made anew (every user of the files reads
them at each start). A set is kept while it is whole, signed by its CA and valid for
`RENEW_BEFORE` more; it is valid `VALIDITY` from its making. A node that is restarted
at least once in those nine years never meets an expired certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .etcd import LOOPBACK, ServerTLS

VALIDITY = datetime.timedelta(days=3650)
RENEW_BEFORE = datetime.timedelta(days=365)
_BACKDATE = datetime.timedelta(minutes=5)  # a clock a little behind still accepts them


@dataclass(frozen=True)
class MemberPKI:
    """The PEM files of one member's PKI, in `directory`."""

    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def member_cert_file(self) -> Path:
        return self.directory / "member.pem"

    @property
    def member_key_file(self) -> Path:
        return self.directory / "member-key.pem"

    @property
    def client_cert_file(self) -> Path:
        return self.directory / "client.pem"

    @property
    def client_key_file(self) -> Path:
        return self.directory / "client-key.pem"

    def server_tls(self) -> ServerTLS:
        """The member's TLS, TLS only: the harness probes it with the client certificate."""
        return ServerTLS(str(self.member_cert_file), str(self.member_key_file),
                         str(self.ca_file), client_cert_auth=True,
                         probe_cert_file=str(self.client_cert_file),
                         probe_key_file=str(self.client_key_file))

    def usable(self, now: datetime.datetime) -> bool:
        """Whether every file is there, both certificates are of the CA, and all three
        stay valid for `RENEW_BEFORE` more."""
        try:
            ca = x509.load_pem_x509_certificate(self.ca_file.read_bytes())
            leaves = [x509.load_pem_x509_certificate(path.read_bytes())
                      for path in (self.member_cert_file, self.client_cert_file)]
            for leaf in leaves:
                leaf.verify_directly_issued_by(ca)
            for key in (self.member_key_file, self.client_key_file):
                serialization.load_pem_private_key(key.read_bytes(), password=None)
        except (OSError, ValueError, TypeError, InvalidSignature):
            return False
        return all(cert.not_valid_after_utc - now > RENEW_BEFORE for cert in [ca, *leaves])


def ensure_member_pki(directory: Path, now: datetime.datetime | None = None) -> MemberPKI:
    """The PKI kept in `directory` if `usable`, else a new one written there."""
    now = now or datetime.datetime.now(datetime.UTC)
    pki = MemberPKI(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not pki.usable(now):
        _make(pki, now)
    return pki


def _make(pki: MemberPKI, now: datetime.datetime) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("ipam embedded etcd CA")
    ca = (_builder(ca_name, ca_name, ca_key.public_key(), now)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
          .sign(ca_key, hashes.SHA256()))
    member_key = ec.generate_private_key(ec.SECP256R1())
    member = (_leaf(_name("ipam embedded etcd"), ca_name, ca_key, member_key, now,
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
              .add_extension(x509.SubjectAlternativeName([
                  x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")]),
                  critical=False)
              .sign(ca_key, hashes.SHA256()))
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = (_leaf(_name("ipam"), ca_name, ca_key, client_key, now,
                    [ExtendedKeyUsageOID.CLIENT_AUTH])
              .sign(ca_key, hashes.SHA256()))
    _write(pki.member_key_file, _pem_key(member_key), 0o600)
    _write(pki.client_key_file, _pem_key(client_key), 0o600)
    _write(pki.member_cert_file, member.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(pki.client_cert_file, client.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(pki.ca_file, ca.public_bytes(serialization.Encoding.PEM), 0o644)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             now: datetime.datetime) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE).not_valid_after(now + VALIDITY)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                           critical=False))


def _leaf(subject: x509.Name, ca_name: x509.Name, ca_key: ec.EllipticCurvePrivateKey,
          key: ec.EllipticCurvePrivateKey, now: datetime.datetime,
          usages: list[x509.ObjectIdentifier]) -> x509.CertificateBuilder:
    return (_builder(subject, ca_name, key.public_key(), now)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False))


def _key_usage(**allowed: bool) -> x509.KeyUsage:
    """A KeyUsage that allows what is named and nothing else."""
    usages = ("digital_signature", "content_commitment", "key_encipherment",
              "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
              "encipher_only", "decipher_only")
    return x509.KeyUsage(**{usage: allowed.get(usage, False) for usage in usages})


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` whole (aside, then renamed over it), created with `mode`."""
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(partial, path)
