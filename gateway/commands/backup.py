"""`ipam backup FILE` and `ipam restore FILE`: a logical copy of everything, straight
from etcd (no gateway needed, none must be writing during a restore).

    ipam backup ipam-2026-12-02.jsonl     # one etcd revision, checksummed (allocator.backup)
    ipam restore ipam-2026-12-02.jsonl    # into an empty prefix only; checked before writing

etcd is found like `ipam serve` finds it, with the same flags, variables and checks:
`--etcd-endpoints`/`IPAM_ETCD_ENDPOINTS` (the cluster of `--region` when they name
regions: one cluster per command) and the TLS/auth settings (`--etcd-password-file`;
a password in clear is refused without `--etcd-insecure-transport`), else the embedded
etcd of `--data-dir`:
- while an `ipam serve` holds the data dir, the etcd it runs: the client URL it writes
  in `<data-dir>/etcd_endpoint`, reached with the CA and client certificate of
  `<data-dir>/etcd-tls/`;
- else the command starts that embedded etcd itself, for its own duration, holding the
  data dir so that no `ipam serve` starts on it meanwhile: a backup of a stopped node,
  and a restore into a data dir no node has used yet (the way to move an embedded
  deployment: a node that started first would have written its own keys, and a restore
  goes only into an empty prefix).
`--etcd-prefix` as the node's. A restore that stopped midway is finished by running it
again with the same file. A backup holds hashes of API keys, never a secret, but it is
written 0600 all the same: it is the whole deployment.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from allocator.contract import IPAM, EtcdSecurity, errors

from .. import config as cfg
from ..serve import (
    ADMIN_SECRET_FILE,
    ETCD_ENDPOINT_FILE,
    LOCK_FILE,
    DataDirBusy,
    embedded_etcd_security,
    lock_data_dir,
    start_embedded_etcd,
)

F = TypeVar("F", bound=Callable[..., Any])
_ETCD = ("etcd_endpoints", "etcd_prefix", "etcd_timeout", "etcd_ca_file", "etcd_cert_file",
         "etcd_key_file", "etcd_username", "etcd_password", "etcd_password_file",
         "etcd_insecure_transport", "region", "data_dir")


_REGION_HELP = ("the region whose etcd cluster to use, when --etcd-endpoints names regions "
                "(default: fr-par; the first region named there when every endpoint names "
                "one)")


def etcd_options(command: F) -> F:
    """The etcd flags of `ipam serve` (same names, variables and defaults), and --region:
    which region's cluster, when the endpoints name regions."""
    for setting in reversed([s for s in cfg.SETTINGS if s.name in _ETCD]):
        kind: dict[str, Any] = (
            {"is_flag": True, "default": False} if setting.switch else
            # A repeated flag's variable is read by `etcd_config`, as serve reads it (click
            # would split it at spaces).
            {"multiple": True} if setting.repeat else {"default": setting.default})
        command = click.option(
            setting.flag, setting.name, envvar=None if setting.repeat else setting.env,
            show_envvar=not setting.repeat,
            help=_REGION_HELP if setting.name == "region" else setting.help, **kind)(command)
    return command


def etcd_config(options: dict[str, Any]) -> cfg.GatewayConfig:
    """The options read as `ipam serve` reads its own: the same endpoints syntax, password
    file and checks (a usage error, exit 2, as serve's)."""
    given = {name: (list(value) or None) if isinstance(value, tuple) else value
             for name, value in options.items()}
    # click read every other variable already
    env = {s.env: os.environ[s.env] for s in cfg.SETTINGS
           if s.name in _ETCD and s.repeat and s.env in os.environ}
    try:
        return cfg.load(argparse.Namespace(**given), env=env)
    except cfg.ConfigError as err:
        raise click.UsageError(str(err)) from None


@contextlib.asynccontextmanager
async def _connected(options: dict[str, Any], *, fresh: bool) -> AsyncIterator[IPAM]:
    """The IPAM of the etcd the options name (see the module docstring). `fresh`: a data
    dir with no embedded etcd yet may get a new one (a restore), else it is refused."""
    config = etcd_config(options)
    endpoints = list(config.endpoints_of(config.region))
    security: EtcdSecurity = config.etcd_security
    data_dir = config.data_dir
    started, lock = None, None
    if not endpoints:
        if not (data_dir / "etcd").is_dir() and not (fresh or _served(data_dir)):
            raise click.UsageError(
                f"no etcd: give --etcd-endpoints, or --data-dir of an `ipam serve` "
                f"({data_dir / 'etcd'} is missing)")
        try:
            lock = lock_data_dir(data_dir)
        except DataDirBusy:  # a node serves it: its etcd, at the URL it wrote
            found = data_dir / ETCD_ENDPOINT_FILE
            if not found.is_file():
                raise click.UsageError(f"no etcd: the `ipam serve` holding {data_dir} has "
                                       f"not started it yet ({found} is missing)") from None
            endpoints = [found.read_text().strip()]
        else:
            click.echo(f"no `ipam serve` holds {data_dir}: starting its embedded etcd for "
                       f"this command", err=True)
            try:
                started = await asyncio.to_thread(start_embedded_etcd, data_dir)
            except BaseException:
                os.close(lock)
                raise
            endpoints = [member.client_url for member in started.members]
        if endpoints[0].startswith("https://"):  # plain before the embedded etcd had TLS
            security = embedded_etcd_security(data_dir, security)
    try:
        ipam = await IPAM.connect(endpoints, prefix=config.etcd_prefix,
                                  timeout=config.etcd_timeout, security=security)
        try:
            yield ipam
        finally:
            await ipam.close()
    finally:
        if started is not None:
            await asyncio.to_thread(started.stop)
        if lock is not None:
            os.close(lock)


def _served(data_dir: Path) -> bool:
    """Whether an `ipam serve` holds `data_dir` (without creating anything)."""
    if not (data_dir / LOCK_FILE).is_file():
        return False
    try:
        os.close(lock_data_dir(data_dir))
    except DataDirBusy:
        return True
    return False


class Refused(click.ClickException):
    """The allocator refused (a damaged file, a target that is not empty): one line,
    `ipam restore: why`, exit code 1."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        ctx = click.get_current_context(silent=True)
        self.where = ctx.command_path if ctx is not None else "ipam"

    def show(self, file: Any = None) -> None:
        click.echo(f"{self.where}: {self.format_message()}", err=True)


def _run(work: Callable[[IPAM], Any], options: dict[str, Any], *, fresh: bool = False
         ) -> Any:
    async def go() -> Any:
        async with _connected(options, fresh=fresh) as ipam:
            return await work(ipam)

    try:
        return asyncio.run(go())
    except errors.IPAMError as err:
        raise Refused(str(err)) from None


@click.command("backup")
@click.argument("file", type=click.Path(dir_okay=False, writable=True, allow_dash=True))
@etcd_options
def backup(file: str, **options: Any) -> None:
    """Write everything under the prefix, at one etcd revision, to FILE (- for stdout)."""
    def work(ipam: IPAM) -> Any:
        if file == "-":
            return ipam.export_state(sys.stdout.buffer)
        return _export(ipam, Path(file))

    summary = _run(work, options)
    click.echo(f"backed up {summary.count} keys of {summary.prefix} at revision "
               f"{summary.revision} (schema {summary.schema_version}) to {file}", err=file == "-")


async def _export(ipam: IPAM, path: Path) -> Any:
    partial = path.with_name(path.name + ".partial")
    try:
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                       "wb") as out:
            summary = await ipam.export_state(out)
        partial.replace(path)  # a file named FILE is always a whole backup
    finally:
        partial.unlink(missing_ok=True)
    return summary


@click.command("restore")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@etcd_options
def restore(file: str, **options: Any) -> None:
    """Write the backup FILE into the prefix, which must be empty (checked first)."""
    async def work(ipam: IPAM) -> Any:
        if file == "-":
            return await ipam.import_state(sys.stdin.buffer)
        with open(file, "rb") as source:
            return await ipam.import_state(source)

    summary = _run(work, options, fresh=True)
    resumed = f", resumed after {summary.resumed_from}" if summary.resumed_from else ""
    click.echo(f"restored {summary.count} keys into {summary.prefix} (backup of "
               f"{summary.source_prefix} at revision {summary.source_revision}, schema "
               f"{summary.schema_version}{resumed})")
    config = etcd_config(options)
    secret = config.data_dir / ADMIN_SECRET_FILE
    if config.embedded_etcd and not secret.exists():
        # A node would make a new secret, and so a new signing key: every restored API
        # key would then be refused as forged (allocator.credentials).
        click.echo(f"the restored API keys are signed with the backed-up deployment's "
                   f"admin secret (or its --credential-signing-key-file): copy that secret "
                   f"into {secret} (mode 0600) before `ipam serve`, or they will be refused",
                   err=True)
