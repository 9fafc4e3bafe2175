"""The gateway's configuration, in one place.

Every setting has a command-line flag and an environment variable that mirror
each other (`--etcd-endpoints` / `IPAM_ETCD_ENDPOINTS`); a flag wins over the
environment, the environment over the default.
"""

from __future__ import annotations

import argparse
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from allocator.contract import EtcdSecurity

_REGION = re.compile(r"^[a-z]{2}-[a-z]{3}$")
_ZONE = re.compile(r"^[a-z]{2}-[a-z]{3}-[1-9]$")

DEFAULT_MAX_BODY_BYTES = 256 * 1024
# aiohttp refuses a longer request line or header in text/plain, which the SDK cannot
# parse; 16 KiB lets through the long tokens and cookies proxies add in front of us.
MAX_HEADER_BYTES = 16 * 1024


class ConfigError(ValueError):
    """A setting is malformed; the message names the flag and the variable."""


@dataclass(frozen=True)
class Setting:
    """One setting: its flag, its environment variable, its default and help."""

    name: str
    default: str | None
    help: str

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
            "comma-separated etcd client endpoints of the whole cluster; "
            "none: run an embedded single-member etcd under --data-dir"),
    Setting("etcd_prefix", "/ipam/", "key prefix of this deployment in etcd"),
    Setting("etcd_timeout", "3.0", "deadline of one etcd call, in seconds"),
    Setting("etcd_ca_file", None, "PEM CA that signed etcd's server certificates (TLS)"),
    Setting("etcd_cert_file", None, "PEM client certificate for etcd (mutual TLS)"),
    Setting("etcd_key_file", None, "PEM key of --etcd-cert-file"),
    Setting("etcd_username", None, "etcd user, when etcd auth is enabled"),
    Setting("etcd_password", None, "password of --etcd-username (prefer the variable)"),
    Setting("region", "fr-par", "the region this node serves"),
    Setting("zones", None, "comma-separated zones of the region (default: REGION-1,2,3)"),
    Setting("data_dir", "./.ipam", "where the embedded etcd and the admin secret live"),
    Setting("admin_secret_key", None, "a UUID that is accepted as an admin secret key"),
    Setting("max_body_bytes", str(DEFAULT_MAX_BODY_BYTES), "largest request body accepted"),
    Setting("drain_seconds", "2.0",
            "seconds a node keeps serving after SIGTERM, with /readyz at 503 and every "
            "answer closing its connection, before it stops accepting"),
    Setting("shutdown_timeout", "10.0",
            "seconds given to in-flight requests once the node stops accepting"),
    Setting("log_level", "info", "debug, info, warning or error"),
    Setting("log_format", "text", "text or json (one JSON object per line)"),
    Setting("compact_interval", "60",
            "seconds between compactions of etcd's history (one node, elected, does it)"),
    Setting("compact_retain_revisions", "2000",
            "etcd revisions of history kept by each compaction (0: never compact)"),
    Setting("compact_every_deletes", "10000",
            "compact as soon as this many keys were deleted since the last compaction "
            "(a mass release slows etcd's writes until then)"),
)

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class GatewayConfig:
    """What one gateway node needs to know to serve."""

    region: str = "fr-par"
    zones: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8080
    etcd_endpoints: tuple[str, ...] = ()
    etcd_prefix: str = "/ipam/"
    etcd_timeout: float = 3.0
    etcd_security: EtcdSecurity = field(default_factory=EtcdSecurity)
    data_dir: Path = field(default_factory=lambda: Path("./.ipam"))
    admin_secret_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    drain_seconds: float = 2.0
    shutdown_timeout: float = 10.0
    log_level: str = "info"
    log_format: str = "text"
    compact_interval: float = 60.0
    compact_retain_revisions: int = 2000
    compact_every_deletes: int = 10000

    def __post_init__(self) -> None:
        if not _REGION.match(self.region):
            raise ConfigError(f"region {self.region!r} is not like fr-par (--region/IPAM_REGION)")
        if not self.zones:
            object.__setattr__(self, "zones", tuple(f"{self.region}-{i}" for i in (1, 2, 3)))
        for zone in self.zones:
            if not _ZONE.match(zone) or not zone.startswith(self.region + "-"):
                raise ConfigError(f"zone {zone!r} is not a zone of {self.region} "
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
        if self.max_body_bytes < 1024:
            raise ConfigError("--max-body-bytes/IPAM_MAX_BODY_BYTES must be at least 1024")
        if self.drain_seconds < 0:
            raise ConfigError("--drain-seconds/IPAM_DRAIN_SECONDS must not be negative")
        if self.shutdown_timeout < 0:
            raise ConfigError("--shutdown-timeout/IPAM_SHUTDOWN_TIMEOUT must not be negative")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port/IPAM_PORT must be a TCP port (0-65535), not {self.port}")
        if self.etcd_timeout <= 0:
            raise ConfigError("--etcd-timeout/IPAM_ETCD_TIMEOUT must be positive")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"--log-level/IPAM_LOG_LEVEL must be one of "
                              f"{', '.join(LOG_LEVELS)}, not {self.log_level!r}")
        if self.compact_interval <= 0:
            raise ConfigError("--compact-interval/IPAM_COMPACT_INTERVAL must be positive")
        if self.compact_retain_revisions < 0 or self.compact_every_deletes < 0:
            raise ConfigError("--compact-retain-revisions and --compact-every-deletes "
                              "(IPAM_COMPACT_...) must not be negative")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"--log-format/IPAM_LOG_FORMAT must be one of "
                              f"{', '.join(LOG_FORMATS)}, not {self.log_format!r}")

    @property
    def embedded_etcd(self) -> bool:
        """Whether `ipam serve` must start its own etcd (no endpoints given)."""
        return not self.etcd_endpoints


def add_arguments(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """Add the flags of `names` (default: every setting) to `parser`, defaulting to None."""
    for s in SETTINGS:
        if names is None or s.name in names:
            parser.add_argument(s.flag, dest=s.name, default=None,
                                help=f"{s.help} [{s.env}; default: {s.default}]")


def _pick(args: argparse.Namespace | None, env: Mapping[str, str], s: Setting) -> str | None:
    value = getattr(args, s.name, None) if args is not None else None
    if value is None:
        value = env.get(s.env)
    if value is None or value == "":
        return s.default
    return str(value)


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (value or "").split(",") if p.strip())


def load(args: argparse.Namespace | None = None,
         env: Mapping[str, str] | None = None) -> GatewayConfig:
    """The configuration from parsed flags, then the environment, then the defaults."""
    env = os.environ if env is None else env
    raw = {s.name: _pick(args, env, s) for s in SETTINGS}

    def number(name: str, kind: type) -> float | int:
        try:
            return kind(raw[name])  # type: ignore[no-any-return]
        except (TypeError, ValueError):
            s = next(x for x in SETTINGS if x.name == name)
            raise ConfigError(f"{s.flag}/{s.env} must be a number, not {raw[name]!r}") from None

    return GatewayConfig(
        region=raw["region"] or "fr-par",
        zones=_split(raw["zones"]),
        host=raw["host"] or "127.0.0.1",
        port=int(number("port", int)),
        etcd_endpoints=_split(raw["etcd_endpoints"]),
        etcd_prefix=raw["etcd_prefix"] or "/ipam/",
        etcd_timeout=float(number("etcd_timeout", float)),
        etcd_security=EtcdSecurity(
            ca_file=raw["etcd_ca_file"], cert_file=raw["etcd_cert_file"],
            key_file=raw["etcd_key_file"], username=raw["etcd_username"],
            password=raw["etcd_password"]),
        data_dir=Path(raw["data_dir"] or "./.ipam"),
        admin_secret_key=raw["admin_secret_key"],
        max_body_bytes=int(number("max_body_bytes", int)),
        drain_seconds=float(number("drain_seconds", float)),
        shutdown_timeout=float(number("shutdown_timeout", float)),
        log_level=(raw["log_level"] or "info").lower(),
        log_format=(raw["log_format"] or "text").lower(),
        compact_interval=float(number("compact_interval", float)),
        compact_retain_revisions=int(number("compact_retain_revisions", int)),
        compact_every_deletes=int(number("compact_every_deletes", int)),
    )
