"""The gateway's configuration, in one place.

Every setting has a command-line flag and an environment variable that mirror
each other (`--etcd-endpoints` / `IPAM_ETCD_ENDPOINTS`); a flag wins over the
environment, the environment over the default. A switch (`--etcd-insecure-transport`)
takes no value; its variable reads true/false, yes/no, on/off or 1/0.

Secrets (the admin secret key, etcd's password) are best given as variables or files
(`--admin-secret-key-file`): any user of the host sees a process's argv in `ps`. A
secret file must be readable by its owner only, as ssh insists for a private key.

The credential signing key (`allocator.credentials`: API key records in etcd are
HMAC-signed with it, so that etcd write access alone cannot mint a key) is never
written to etcd. It is derived (HKDF-SHA256, a fixed label) from a secret every node of
a deployment shares: by default the admin secret key, so no new setting is needed; with
`--credential-signing-key-file`, the secret in that file (at least 32 characters), so
that the admin secret can be rotated without re-signing the keys: put the admin secret
the keys were signed with in that file, and the keys stay valid. Nodes that derive
different keys refuse each other's API keys.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from allocator.contract import (
    DEFAULT_EVENT_RETENTION,
    ETCD_DEFAULT_QUOTA_BYTES,
    IDEMPOTENCY_RETENTION,
    MAX_IDEMPOTENCY_RETENTION,
    MIN_EVENT_RETENTION,
    MIN_IDEMPOTENCY_RETENTION,
    EtcdSecurity,
    Quotas,
)

_REGION = re.compile(r"^[a-z]{2}-[a-z]{3}$")
_ZONE = re.compile(r"^[a-z]{2}-[a-z]{3}-[1-9]$")

MIN_SIGNING_SECRET = 32  # characters: a UUID (36) passes, a password does not

DEFAULT_MAX_BODY_BYTES = 256 * 1024
# aiohttp refuses a longer request line or header in text/plain, which the SDK cannot
# parse; 16 KiB lets through the long tokens and cookies proxies add in front of us.
MAX_HEADER_BYTES = 16 * 1024


class ConfigError(ValueError):
    """A setting is malformed; the message names the flag and the variable."""


@dataclass(frozen=True)
class Setting:
    """One setting: its flag, its environment variable, its default and help; a `switch`
    is a flag without a value, a `repeat` one that may be given several times."""

    name: str
    default: str | None
    help: str
    switch: bool = False
    repeat: bool = False  # a flag given several times; its values join with ';'

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "IPAM_" + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("host", "127.0.0.1", "address to listen on"),
    Setting("port", "8080", "TCP port to listen on (0: any free port)"),
    Setting("etcd_endpoints", None,
            "etcd client endpoints of a whole cluster, comma-separated: URL[,URL...] for "
            "every region, or REGION=URL[,URL...] for one region's own cluster (ipam serve: "
            "repeat the flag, or separate the values with ';' in the variable); "
            "none: run an embedded single-member etcd under --data-dir", repeat=True),
    Setting("etcd_prefix", "/ipam/", "key prefix of this deployment in etcd"),
    Setting("etcd_timeout", "3.0", "deadline of one etcd call, in seconds"),
    Setting("etcd_ca_file", None, "PEM CA that signed etcd's server certificates (TLS)"),
    Setting("etcd_cert_file", None, "PEM client certificate for etcd (mutual TLS)"),
    Setting("etcd_key_file", None, "PEM key of --etcd-cert-file"),
    Setting("etcd_username", None, "etcd user, when etcd auth is enabled"),
    Setting("etcd_password", None,
            "password of --etcd-username (argv shows in ps: prefer the variable or "
            "--etcd-password-file)"),
    Setting("etcd_password_file", None,
            "file holding the password of --etcd-username, readable by its owner only"),
    Setting("etcd_insecure_transport", "false",
            "accept sending --etcd-username/--etcd-password to etcd without TLS "
            "(no --etcd-ca-file, no https:// endpoint)", switch=True),
    Setting("etcd_quota_backend_bytes", None,
            "the etcd backend quota, in bytes: give the members' --quota-backend-bytes; "
            "the node measures each member's database against it (metrics, and a warning "
            "once one passes 80 per cent of it). Default: etcd's own, 2 GiB; 4 GiB for "
            "the embedded etcd, which runs with it"),
    Setting("region", None,
            "the region this node serves, besides those named in --etcd-endpoints "
            "(default: fr-par; the first region named there when every endpoint names "
            "one)"),
    Setting("zones", None, "comma-separated zones of the served regions (a region none of "
                           "whose zones is listed has REGION-1,2,3)"),
    Setting("data_dir", "./.ipam", "where the embedded etcd and the admin secret live"),
    Setting("admin_secret_key", None,
            "a UUID that is accepted as an admin secret key (argv shows in ps: prefer the "
            "variable or --admin-secret-key-file)"),
    Setting("admin_secret_key_file", None,
            "file holding --admin-secret-key, readable by its owner only"),
    Setting("credential_signing_key_file", None,
            "file holding the secret (32 characters or more, readable by its owner only) "
            "the credential signing key is derived from; default: the admin secret key"),
    Setting("tls_cert_file", None,
            "PEM certificate (chain) to serve HTTPS with; with --tls-key-file"),
    Setting("tls_key_file", None, "PEM private key of --tls-cert-file"),
    Setting("max_body_bytes", str(DEFAULT_MAX_BODY_BYTES), "largest request body accepted"),
    Setting("header_timeout", "10.0",
            "seconds a client has, from the first byte of a request, to send all its headers; "
            "and as long again for its body (else 408)"),
    Setting("keepalive_timeout", "75.0",
            "seconds an idle connection is kept open between requests"),
    Setting("max_connections", "10000",
            "open connections per node; beyond, the longest idle is closed to make room, "
            "else the new one is"),
    Setting("drain_seconds", "2.0",
            "seconds a node keeps serving after SIGTERM, with /readyz at 503 and every "
            "answer closing its connection, before it stops accepting"),
    Setting("shutdown_timeout", "10.0",
            "seconds given to in-flight requests once the node stops accepting"),
    Setting("log_level", "info", "debug, info, warning or error"),
    Setting("log_format", "text", "text or json (one JSON object per line)"),
    Setting("event_loop", "asyncio",
            "asyncio or uvloop (measured: with uvloop, gRPC's answers reach bookings later, "
            "so group commits carry half as many and p99 doubles; python -m bench booking)"),
    Setting("compact_interval", "60",
            "seconds between compactions of etcd's history (one node, elected, does it)"),
    Setting("compact_retain_revisions", "2000",
            "etcd revisions of history kept by each compaction (0: never compact)"),
    Setting("compact_every_deletes", "10000",
            "compact as soon as this many keys were deleted since the last compaction "
            "(a mass release slows etcd's writes until then)"),
    Setting("expiry_check_interval", "1.0",
            "seconds between two looks for expired IPs (one node, elected, releases them): "
            "an IP is released at most this long after its expires_at, plus one commit "
            "(0: this node never releases them, others do)"),
    Setting("idempotency_retention", str(IDEMPOTENCY_RETENTION),
            "seconds a retry with the same Idempotency-Key still gets the first answer "
            f"({MIN_IDEMPOTENCY_RETENTION} to {MAX_IDEMPOTENCY_RETENTION}); etcd holds each "
            "key's record that long (README, Capacity)"),
    Setting("event_retention", str(DEFAULT_EVENT_RETENTION),
            f"seconds the IP event feed keeps each event ({MIN_EVENT_RETENTION} to a week; "
            "0: this node writes none); a cursor older than this is refused"),
    Setting("organizations", "required",
            "required: a write into a project whose organization nobody set (with a "
            "project key naming it, or PUT /ipam/admin/v1/projects/ID) is refused, 412; "
            "optional: such a project's objects carry no organization (a lab without "
            "tenants)"),
    Setting("quota_vpcs", "100", "VPCs one project may hold, every region counted (0: no quota)"),
    Setting("quota_private_networks", "500",
            "Private Networks one project may hold, every region counted (0: no quota)"),
    Setting("quota_subnets", "16", "subnets one Private Network may hold (0: no quota)"),
    Setting("quota_ips", "0", "IPs one project may hold booked (0: no quota; see "
            "allocator.quotas for why it is off by default and how it is counted)"),
    Setting("quota_keys", "100", "API keys one organization may hold: the project keys "
            "naming it; admin and product keys are not counted (0: no quota)"),
)

LOG_LEVELS = ("debug", "info", "warning", "error")
# Beyond this, an expired IP would wait longer than a user reads as "released then".
MAX_EXPIRY_CHECK_INTERVAL = 60.0
LOG_FORMATS = ("text", "json")
EVENT_LOOPS = ("uvloop", "asyncio")
# The embedded etcd's quota unless told: what it has always run with (a data dir holding
# more than etcd's 2 GiB default would otherwise start full after an upgrade).
EMBEDDED_QUOTA_BYTES = 4 * 1024**3
ORGANIZATIONS = ("required", "optional")


@dataclass(frozen=True)
class GatewayConfig:
    """What one gateway node needs to know to serve."""

    region: str = "fr-par"
    zones: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8080
    etcd_endpoints: tuple[str, ...] = ()
    # Regions with an etcd cluster of their own (REGION=URL values of --etcd-endpoints);
    # every other served region is on `etcd_endpoints`.
    region_endpoints: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Every region served: `region` first, then those of `region_endpoints`.
    regions: tuple[str, ...] = field(init=False, default=())
    etcd_prefix: str = "/ipam/"
    etcd_timeout: float = 3.0
    etcd_security: EtcdSecurity = field(default_factory=EtcdSecurity)
    etcd_insecure_transport: bool = False
    etcd_quota_backend_bytes: int = ETCD_DEFAULT_QUOTA_BYTES
    data_dir: Path = field(default_factory=lambda: Path("./.ipam"))
    admin_secret_key: str | None = None
    # The text of --credential-signing-key-file (None: the admin secret key stands in).
    credential_signing_secret: str | None = field(default=None, repr=False)
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    max_connections: int = 10000
    drain_seconds: float = 2.0
    shutdown_timeout: float = 10.0
    log_level: str = "info"
    log_format: str = "text"
    event_loop: str = "asyncio"
    compact_interval: float = 60.0
    compact_retain_revisions: int = 2000
    compact_every_deletes: int = 10000
    expiry_check_interval: float = 1.0
    idempotency_retention: int = IDEMPOTENCY_RETENTION
    event_retention: int = DEFAULT_EVENT_RETENTION
    # Scaleway's rule: every object belongs to its project's organization (see
    # allocator.organizations); off only for a lab that has no tenants.
    require_organizations: bool = True
    quotas: Quotas = field(default_factory=Quotas)

    def __post_init__(self) -> None:
        if not _REGION.match(self.region):
            raise ConfigError(f"region {self.region!r} is not like fr-par (--region/IPAM_REGION)")
        for region in self.region_endpoints:
            if not _REGION.match(region):
                raise ConfigError(f"region {region!r} is not like fr-par "
                                  "(--etcd-endpoints/IPAM_ETCD_ENDPOINTS)")
        object.__setattr__(self, "regions",
                           tuple(dict.fromkeys((self.region, *self.region_endpoints))))
        if self.region_endpoints and not self.etcd_endpoints:
            for region in self.regions:
                if region not in self.region_endpoints:
                    raise ConfigError(
                        f"region {region} has no etcd cluster: give --etcd-endpoints "
                        f"{region}=URL[,URL...], or URL[,URL...] for every region not named "
                        "(IPAM_ETCD_ENDPOINTS)")
        if not self.zones:
            object.__setattr__(self, "zones", default_zones(self.region))
        for zone in self.zones:
            if not _ZONE.match(zone) or zone.rsplit("-", 1)[0] not in self.regions:
                raise ConfigError(f"zone {zone!r} is not a zone of {' or '.join(self.regions)} "
                                  "(--zones/IPAM_ZONES)")
        if self.admin_secret_key is not None:
            try:
                object.__setattr__(self, "admin_secret_key",
                                   str(uuid.UUID(self.admin_secret_key)))
            except ValueError:
                raise ConfigError("the admin secret key must be a UUID "
                                  "(--admin-secret-key/IPAM_ADMIN_SECRET_KEY)") from None
        sec = self.etcd_security
        if bool(sec.cert_file) != bool(sec.key_file):
            raise ConfigError("--etcd-cert-file and --etcd-key-file go together "
                              "(IPAM_ETCD_CERT_FILE/IPAM_ETCD_KEY_FILE)")
        if bool(sec.username) != bool(sec.password):
            raise ConfigError("--etcd-username and --etcd-password go together "
                              "(IPAM_ETCD_USERNAME/IPAM_ETCD_PASSWORD)")
        for path in (sec.ca_file, sec.cert_file, sec.key_file):
            if path and not Path(path).is_file():
                raise ConfigError(f"etcd TLS file {path} does not exist")
        if self.etcd_credentials_in_clear and not self.etcd_insecure_transport:
            raise ConfigError("--etcd-username/--etcd-password would reach etcd in clear: "
                              "give --etcd-ca-file or https:// endpoints, or accept it with "
                              "--etcd-insecure-transport (IPAM_ETCD_INSECURE_TRANSPORT)")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("--tls-cert-file and --tls-key-file go together "
                              "(IPAM_TLS_CERT_FILE/IPAM_TLS_KEY_FILE)")
        for path in (self.tls_cert_file, self.tls_key_file):
            if path and not Path(path).is_file():
                raise ConfigError(f"TLS file {path} does not exist "
                                  "(--tls-cert-file/--tls-key-file)")
        if self.max_body_bytes < 1024:
            raise ConfigError("--max-body-bytes/IPAM_MAX_BODY_BYTES must be at least 1024")
        if self.drain_seconds < 0:
            raise ConfigError("--drain-seconds/IPAM_DRAIN_SECONDS must not be negative")
        if self.shutdown_timeout < 0:
            raise ConfigError("--shutdown-timeout/IPAM_SHUTDOWN_TIMEOUT must not be negative")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port/IPAM_PORT must be a TCP port (0-65535), not {self.port}")
        if not self.etcd_prefix.endswith("/"):
            # /ipam would hold /ipam/ and /ipamcopy/ as well: two deployments, one data.
            raise ConfigError(f"--etcd-prefix/IPAM_ETCD_PREFIX {self.etcd_prefix!r} must end "
                              f"with '/' (like {self.etcd_prefix}/): without it, it is the "
                              "start of other prefixes too")
        if self.etcd_timeout <= 0:
            raise ConfigError("--etcd-timeout/IPAM_ETCD_TIMEOUT must be positive")
        if self.etcd_quota_backend_bytes <= 0:
            raise ConfigError("--etcd-quota-backend-bytes/IPAM_ETCD_QUOTA_BACKEND_BYTES must "
                              "be a positive number of bytes")
        if self.header_timeout <= 0:
            raise ConfigError("--header-timeout/IPAM_HEADER_TIMEOUT must be positive")
        if self.keepalive_timeout <= 0:
            raise ConfigError("--keepalive-timeout/IPAM_KEEPALIVE_TIMEOUT must be positive")
        if self.max_connections < 1:
            raise ConfigError("--max-connections/IPAM_MAX_CONNECTIONS must be at least 1")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"--log-level/IPAM_LOG_LEVEL must be one of "
                              f"{', '.join(LOG_LEVELS)}, not {self.log_level!r}")
        if self.compact_interval <= 0:
            raise ConfigError("--compact-interval/IPAM_COMPACT_INTERVAL must be positive")
        if self.compact_retain_revisions < 0 or self.compact_every_deletes < 0:
            raise ConfigError("--compact-retain-revisions and --compact-every-deletes "
                              "(IPAM_COMPACT_...) must not be negative")
        if not 0 <= self.expiry_check_interval <= MAX_EXPIRY_CHECK_INTERVAL:
            raise ConfigError(f"--expiry-check-interval/IPAM_EXPIRY_CHECK_INTERVAL must be "
                              f"0 (off) to {MAX_EXPIRY_CHECK_INTERVAL:g} seconds")
        if not MIN_IDEMPOTENCY_RETENTION <= self.idempotency_retention \
                <= MAX_IDEMPOTENCY_RETENTION:
            raise ConfigError(f"--idempotency-retention/IPAM_IDEMPOTENCY_RETENTION must be "
                              f"{MIN_IDEMPOTENCY_RETENTION} to {MAX_IDEMPOTENCY_RETENTION} "
                              "seconds")
        if self.event_retention != 0 and not (
                MIN_EVENT_RETENTION <= self.event_retention <= MAX_IDEMPOTENCY_RETENTION):
            raise ConfigError(f"--event-retention/IPAM_EVENT_RETENTION must be 0 (no feed) "
                              f"or {MIN_EVENT_RETENTION} to {MAX_IDEMPOTENCY_RETENTION} "
                              "seconds")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"--log-format/IPAM_LOG_FORMAT must be one of "
                              f"{', '.join(LOG_FORMATS)}, not {self.log_format!r}")
        if self.event_loop not in EVENT_LOOPS:
            raise ConfigError(f"--event-loop/IPAM_EVENT_LOOP must be one of "
                              f"{', '.join(EVENT_LOOPS)}, not {self.event_loop!r}")

    @property
    def credential_signing_key(self) -> bytes | None:
        """The key API key records are signed with, from the signing key file's secret or
        else the admin secret key; None when the node has neither."""
        secret = self.credential_signing_secret or self.admin_secret_key
        return None if secret is None else signing_key_of(secret)

    @property
    def embedded_etcd(self) -> bool:
        """Whether `ipam serve` must start its own etcd (no endpoints given)."""
        return not self.etcd_endpoints and not self.region_endpoints

    def zones_of(self, region: str) -> tuple[str, ...]:
        """The zones of a served `region`: those of --zones in it, else REGION-1,2,3."""
        listed = tuple(z for z in self.zones if z.rsplit("-", 1)[0] == region)
        return listed or default_zones(region)

    def endpoints_of(self, region: str) -> tuple[str, ...]:
        """The etcd endpoints of a served `region`'s cluster (none: the embedded etcd)."""
        return tuple(self.region_endpoints.get(region, self.etcd_endpoints))

    @property
    def clusters(self) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
        """(regions, endpoints) of each etcd cluster the node uses, in the order of
        `regions`: regions given the same endpoints share one cluster."""
        grouped: dict[tuple[str, ...], list[str]] = {}
        for region in self.regions:
            grouped.setdefault(self.endpoints_of(region), []).append(region)
        return [(tuple(regions), endpoints) for endpoints, regions in grouped.items()]

    @property
    def etcd_credentials_in_clear(self) -> bool:
        """Whether etcd's user and password would cross the network unencrypted: no CA
        file, and some endpoint (or the embedded etcd's) is not https://."""
        every = [e for _, endpoints in self.clusters for e in endpoints]
        https = bool(every) and all(e.startswith("https://") for e in every)
        return bool(self.etcd_security.username) and not (self.etcd_security.tls or https)

    @property
    def tls(self) -> bool:
        """Whether the node serves HTTPS."""
        return bool(self.tls_cert_file)


def default_zones(region: str) -> tuple[str, ...]:
    """The zones a region has unless --zones lists some: REGION-1, -2 and -3."""
    return tuple(f"{region}-{i}" for i in (1, 2, 3))


_SIGNING_SALT = b"ipam credential signing"
_SIGNING_INFO = b"api key records v1"


def signing_key_of(secret: str) -> bytes:
    """The credential signing key derived from `secret` (HKDF-SHA256, RFC 5869, with a
    fixed salt and label): every node given the same secret derives the same key. A UUID
    counts in its canonical form, however it is written."""
    try:
        secret = str(uuid.UUID(secret))
    except ValueError:
        pass
    extracted = hmac.new(_SIGNING_SALT, secret.encode(), hashlib.sha256).digest()
    return hmac.new(extracted, _SIGNING_INFO + b"\x01", hashlib.sha256).digest()


def add_arguments(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """Add the flags of `names` (default: every setting) to `parser`, defaulting to None."""
    for s in SETTINGS:
        if names is None or s.name in names:
            extra: dict[str, Any] = (
                {"action": "store_const", "const": "true"} if s.switch
                else {"action": "append"} if s.repeat else {})
            parser.add_argument(s.flag, dest=s.name, default=None,
                                help=f"{s.help} [{s.env}; default: {s.default}]", **extra)


def _pick(args: argparse.Namespace | None, env: Mapping[str, str], s: Setting) -> str | None:
    value = getattr(args, s.name, None) if args is not None else None
    if isinstance(value, list):  # a repeated flag
        value = ";".join(value)
    if value is None:
        value = env.get(s.env)
    if value is None or value == "":
        return s.default
    return str(value)


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (value or "").split(",") if p.strip())


def _cluster_endpoints(value: str | None) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """The --etcd-endpoints values (joined by ';'): (the endpoints of every region not
    named, the endpoints of each region named). ConfigError for a value that is neither
    URL[,URL...] nor REGION=URL[,URL...], and for a region, or every region, given twice."""
    every: tuple[str, ...] = ()
    regional: dict[str, tuple[str, ...]] = {}
    where = "--etcd-endpoints/IPAM_ETCD_ENDPOINTS"
    for part in (value or "").split(";"):
        if not part.strip():
            continue
        named, equals, urls = part.strip().partition("=")
        endpoints = _split(urls if equals else named)
        if (equals and not _REGION.match(named.strip())) or not endpoints or any(
                "=" in e or " " in e for e in endpoints):
            raise ConfigError(f"{where} {part.strip()!r} is neither URL[,URL...] nor "
                              "REGION=URL[,URL...] (REGION like fr-par)")
        if not equals:
            if every:
                raise ConfigError(f"{where} gives the endpoints of every region twice "
                                  f"({','.join(every)} and {','.join(endpoints)})")
            every = endpoints
        elif named.strip() in regional:
            raise ConfigError(f"{where} gives region {named.strip()} twice")
        else:
            regional[named.strip()] = endpoints
    return every, regional


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def read_secret(path: Path) -> str:
    """The stripped text of a file holding a secret. OSError if it cannot be read,
    ValueError if group or others may access it (as ssh refuses such a private key) or it
    is empty."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ValueError(f"permissions {mode:04o} are too open: it must be accessible by "
                         f"its owner only (chmod 600 {path})")
    text = path.read_text().strip()
    if not text:
        raise ValueError("it is empty")
    return text


def _secret(raw: Mapping[str, str | None], name: str) -> str | None:
    """The secret `name`, given itself or as the file of the `name_file` setting."""
    value, path = raw[name], raw[name + "_file"]
    given, file = _setting(name), _setting(name + "_file")
    if path is None:
        return value
    if value is not None:
        raise ConfigError(f"give {given.flag}/{given.env} or {file.flag}/{file.env}, not both")
    return _secret_file(file, path)


def _secret_file(setting: Setting, path: str) -> str:
    """The secret in the file of `setting`; ConfigError naming it if it cannot be used."""
    try:
        return read_secret(Path(path))
    except OSError as err:
        raise ConfigError(f"{setting.flag}/{setting.env} {path}: {err.strerror or err}"
                          ) from None
    except ValueError as err:
        raise ConfigError(f"{setting.flag}/{setting.env} {path}: {err}") from None


def _setting(name: str) -> Setting:
    return next(s for s in SETTINGS if s.name == name)


def load(args: argparse.Namespace | None = None,
         env: Mapping[str, str] | None = None) -> GatewayConfig:
    """The configuration from parsed flags, then the environment, then the defaults."""
    env = os.environ if env is None else env
    raw = {s.name: _pick(args, env, s) for s in SETTINGS}

    def number(name: str, kind: type) -> float | int:
        try:
            return kind(raw[name])  # type: ignore[no-any-return]
        except (TypeError, ValueError):
            s = _setting(name)
            raise ConfigError(f"{s.flag}/{s.env} must be a number, not {raw[name]!r}") from None

    def switch(name: str) -> bool:
        value = (raw[name] or "").lower()
        if value not in _TRUE + _FALSE:
            s = _setting(name)
            raise ConfigError(f"{s.env} must be true or false, not {raw[name]!r}")
        return value in _TRUE

    admin_secret_key = _secret(raw, "admin_secret_key")
    if raw["admin_secret_key_file"] is not None:
        try:
            admin_secret_key = str(uuid.UUID(admin_secret_key or ""))
        except ValueError:
            raise ConfigError(f"--admin-secret-key-file/IPAM_ADMIN_SECRET_KEY_FILE "
                              f"{raw['admin_secret_key_file']}: it does not hold a UUID"
                              ) from None

    signing_secret = None
    if raw["credential_signing_key_file"] is not None:
        signing_secret = _secret_file(_setting("credential_signing_key_file"),
                                      raw["credential_signing_key_file"])
        if len(signing_secret) < MIN_SIGNING_SECRET:
            raise ConfigError(f"--credential-signing-key-file/IPAM_CREDENTIAL_SIGNING_KEY_FILE "
                              f"{raw['credential_signing_key_file']}: it holds "
                              f"{len(signing_secret)} characters, fewer than "
                              f"{MIN_SIGNING_SECRET} (make one with: openssl rand -hex 32)")

    every_region, regional = _cluster_endpoints(raw["etcd_endpoints"])
    return GatewayConfig(
        # Without --region: fr-par, unless every region served has a cluster of its own.
        region=raw["region"] or (next(iter(regional)) if regional and not every_region
                                 else "fr-par"),
        zones=_split(raw["zones"]),
        host=raw["host"] or "127.0.0.1",
        port=int(number("port", int)),
        etcd_endpoints=every_region,
        region_endpoints=regional,
        etcd_prefix=raw["etcd_prefix"] or "/ipam/",
        etcd_timeout=float(number("etcd_timeout", float)),
        etcd_security=EtcdSecurity(
            ca_file=raw["etcd_ca_file"], cert_file=raw["etcd_cert_file"],
            key_file=raw["etcd_key_file"], username=raw["etcd_username"],
            password=_secret(raw, "etcd_password")),
        etcd_insecure_transport=switch("etcd_insecure_transport"),
        etcd_quota_backend_bytes=(
            int(number("etcd_quota_backend_bytes", int))
            if raw["etcd_quota_backend_bytes"] is not None
            else EMBEDDED_QUOTA_BYTES if not raw["etcd_endpoints"]
            else ETCD_DEFAULT_QUOTA_BYTES),
        data_dir=Path(raw["data_dir"] or "./.ipam"),
        admin_secret_key=admin_secret_key,
        credential_signing_secret=signing_secret,
        tls_cert_file=raw["tls_cert_file"],
        tls_key_file=raw["tls_key_file"],
        max_body_bytes=int(number("max_body_bytes", int)),
        header_timeout=float(number("header_timeout", float)),
        keepalive_timeout=float(number("keepalive_timeout", float)),
        max_connections=int(number("max_connections", int)),
        drain_seconds=float(number("drain_seconds", float)),
        shutdown_timeout=float(number("shutdown_timeout", float)),
        log_level=(raw["log_level"] or "info").lower(),
        log_format=(raw["log_format"] or "text").lower(),
        event_loop=(raw["event_loop"] or "asyncio").lower(),
        compact_interval=float(number("compact_interval", float)),
        compact_retain_revisions=int(number("compact_retain_revisions", int)),
        compact_every_deletes=int(number("compact_every_deletes", int)),
        expiry_check_interval=float(number("expiry_check_interval", float)),
        idempotency_retention=int(number("idempotency_retention", int)),
        event_retention=int(number("event_retention", int)),
        require_organizations=_organizations(raw["organizations"]),
        quotas=_quotas(**{name: int(number(f"quota_{name}", int))
                          for name in ("vpcs", "private_networks", "subnets", "ips",
                                       "keys")}),
    )


def _organizations(raw: str | None) -> bool:
    """Whether the --organizations setting requires them."""
    value = (raw or "required").strip().lower()
    if value not in ORGANIZATIONS:
        raise ConfigError(f"--organizations/IPAM_ORGANIZATIONS must be one of "
                          f"{', '.join(ORGANIZATIONS)}, not {raw!r}")
    return value == "required"


def _quotas(vpcs: int, private_networks: int, subnets: int, ips: int, keys: int) -> Quotas:
    """The quotas of the --quota-* settings (0: none of that resource): per project, and
    API keys per organization."""
    given = {"vpcs": vpcs, "private_networks": private_networks, "subnets": subnets,
             "ips": ips, "keys": keys}
    for name, value in given.items():
        if value < 0:
            raise ConfigError(f"--quota-{name.replace('_', '-')}/IPAM_QUOTA_"
                              f"{name.upper()} must be 0 (no quota) or more")
    return Quotas(vpcs_per_project=vpcs or None,
                  private_networks_per_project=private_networks or None,
                  subnets_per_private_network=subnets or None, ips_per_project=ips or None,
                  keys_per_organization=keys or None)
