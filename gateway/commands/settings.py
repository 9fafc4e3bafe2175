"""Where the operator commands find the gateway, who they are to it, how they print.

Every setting is taken from the first of these that gives it:

    flag          --url, --secret-key, --region, -o/--output, given before the
                  subcommand (`ipam --url U ips list`) or after it (`ipam ips list --url U`);
                  after wins
    environment   IPAM_URL, IPAM_SECRET_KEY then IPAM_ADMIN_SECRET_KEY, IPAM_REGION,
                  IPAM_OUTPUT
    config file   --config / IPAM_CONFIG, default ~/.config/ipam/config.toml, TOML with
                  the keys url, secret_key, region, output (all strings)
    data dir      the secret key and the URL: the admin secret `ipam serve` keeps in
                  --data-dir / IPAM_DATA_DIR (default ./.ipam), and the URL it serves on
                  (with its embedded etcd: `ipam serve --port 9000` is found there)
    default       url http://127.0.0.1:8080, region fr-par, output table

A setting that cannot be used (a config file that does not parse, a URL that is not
http, no secret key anywhere) is a usage error: one line, exit code 2.
"""

from __future__ import annotations

import os
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

OUTPUTS = ("table", "json", "yaml")
DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_REGION = "fr-par"
DEFAULT_OUTPUT = "table"
DEFAULT_DATA_DIR = "./.ipam"
CONFIG_KEYS = ("output", "region", "secret_key", "url")

# Where the flags of every level of one command line are gathered (Context.meta is
# shared by a context and all its children).
_FLAGS = "ipam.flags"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Settings:
    """What one command needs to talk to the gateway and print its answer."""

    url: str
    secret_key: str
    region: str
    output: str


def default_config_path() -> Path:
    """~/.config/ipam/config.toml of the user running the command."""
    return Path.home() / ".config" / "ipam" / "config.toml"


def read_config(path: Path, *, explicit: bool) -> dict[str, str]:
    """The settings a config file gives; {} when the default file does not exist.

    A file named by --config or IPAM_CONFIG must exist. Unknown keys are refused so that
    a typo (`secret-key`) does not silently fall back to another secret.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise click.UsageError(f"config file {path}: not found") from None
        return {}
    except OSError as err:
        raise click.UsageError(f"config file {path}: {err.strerror}") from None
    try:
        data = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise click.UsageError(f"config file {path}: {err}") from None
    for key, value in data.items():
        if key not in CONFIG_KEYS:
            raise click.UsageError(f"config file {path}: unknown key {key!r} "
                                   f"(known: {', '.join(CONFIG_KEYS)})")
        if not isinstance(value, str) or not value:
            raise click.UsageError(f"config file {path}: {key} must be a non-empty string")
    if data.get("output", DEFAULT_OUTPUT) not in OUTPUTS:
        raise click.UsageError(f"config file {path}: output must be one of "
                               f"{', '.join(OUTPUTS)}, not {data['output']!r}")
    return dict(data)


def stored_admin_secret(data_dir: Path) -> str | None:
    """The admin secret `ipam serve` stored in `data_dir`, if there is one."""
    from ..serve import ADMIN_SECRET_FILE  # imported here: it loads the allocator

    try:
        return (data_dir / ADMIN_SECRET_FILE).read_text().strip() or None
    except OSError:
        return None


def stored_gateway_url(data_dir: Path) -> str | None:
    """The URL `ipam serve` with its embedded etcd in `data_dir` last served on, if any."""
    from ..serve import GATEWAY_URL_FILE  # imported here: it loads the allocator

    try:
        return (data_dir / GATEWAY_URL_FILE).read_text().strip() or None
    except OSError:
        return None


def check_url(url: str) -> str:
    """`url` without its trailing slash; a usage error unless it is an http(s) URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise click.UsageError(f"url {url!r} is not an http:// or https:// URL")
    return url.rstrip("/")


def resolve(flags: Mapping[str, str], environ: Mapping[str, str],
            allowed_outputs: Sequence[str] = OUTPUTS) -> Settings:
    """The settings of one command from its flags, the environment, the config file,
    the data dir and the defaults, in that order."""
    named = flags.get("config") or environ.get("IPAM_CONFIG")
    config = read_config(Path(named) if named else default_config_path(),
                         explicit=bool(named))
    data_dir = Path(flags.get("data_dir") or environ.get("IPAM_DATA_DIR") or DEFAULT_DATA_DIR)
    url = (flags.get("url") or environ.get("IPAM_URL") or config.get("url")
           or stored_gateway_url(data_dir) or DEFAULT_URL)
    region = (flags.get("region") or environ.get("IPAM_REGION") or config.get("region")
              or DEFAULT_REGION)
    output = (flags.get("output") or environ.get("IPAM_OUTPUT") or config.get("output")
              or DEFAULT_OUTPUT)
    if output not in allowed_outputs:
        raise click.UsageError(f"output {output!r} is not one of {', '.join(allowed_outputs)}")
    secret = (flags.get("secret_key") or environ.get("IPAM_SECRET_KEY")
              or environ.get("IPAM_ADMIN_SECRET_KEY") or config.get("secret_key")
              or stored_admin_secret(data_dir))
    if not secret:
        raise click.UsageError("no secret key: give --secret-key, set IPAM_SECRET_KEY, or "
                               f"put secret_key in the config file (none in {data_dir})")
    return Settings(url=check_url(url), secret_key=secret, region=region, output=output)


def from_context(ctx: click.Context, allowed_outputs: Sequence[str] = OUTPUTS) -> Settings:
    """The settings of the command being run (its flags gathered by `common_options`)."""
    return resolve(ctx.meta.get(_FLAGS, {}), os.environ, allowed_outputs)


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value is not None and param.name is not None:
        ctx.meta.setdefault(_FLAGS, {})[param.name] = value


def common_options(outputs: Sequence[str] = OUTPUTS) -> Callable[[F], F]:
    """The options every level of `ipam` takes, so they may come before or after the
    subcommand; `outputs` are the formats the decorated command prints."""
    def decorate(f: F) -> F:
        options = [
            click.option("--url", metavar="URL", expose_value=False, callback=_remember,
                         help=f"the gateway [IPAM_URL; default the one `ipam serve` keeps in the "
                              f"data dir, else {DEFAULT_URL}]"),
            click.option("--secret-key", metavar="KEY", expose_value=False,
                         callback=_remember,
                         help="the secret key to act with [IPAM_SECRET_KEY, "
                              "IPAM_ADMIN_SECRET_KEY; default the data dir's admin secret]"),
            click.option("--region", metavar="REGION", expose_value=False, callback=_remember,
                         help=f"[IPAM_REGION; default {DEFAULT_REGION}]"),
            click.option("-o", "--output", type=click.Choice(outputs), expose_value=False,
                         callback=_remember,
                         help=f"how to print the answer [IPAM_OUTPUT; default "
                              f"{DEFAULT_OUTPUT}]"),
            click.option("--config", metavar="FILE", expose_value=False, callback=_remember,
                         help="a TOML file of defaults: url, secret_key, region, output "
                              "[IPAM_CONFIG; default ~/.config/ipam/config.toml]"),
            click.option("--data-dir", metavar="DIR", expose_value=False, callback=_remember,
                         help="where `ipam serve` keeps the admin secret and its URL "
                              f"[IPAM_DATA_DIR; default {DEFAULT_DATA_DIR}]"),
        ]
        for option in reversed(options):
            f = option(f)
        return f
    return decorate
