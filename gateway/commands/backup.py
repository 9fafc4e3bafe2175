"""`ipam backup FILE` and `ipam restore FILE`: a logical copy of everything, straight
from etcd (no gateway needed, none must be writing during a restore).

    ipam backup ipam-2026-12-02.jsonl     # one etcd revision, checksummed (allocator.backup)
    ipam restore ipam-2026-12-02.jsonl    # into an empty prefix only; checked before writing

etcd is found like `ipam serve` finds it: `--etcd-endpoints`/`IPAM_ETCD_ENDPOINTS` (and
the TLS/auth flags and variables), else the embedded etcd of `--data-dir`: its client
URL `ipam serve` writes in `<data-dir>/etcd_endpoint`, and an https one is reached with
the CA and client certificate of `<data-dir>/etcd-tls/`. `--etcd-prefix` as the node's.
A restore that stopped midway is finished by running it again with the same file.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from allocator.contract import IPAM, EtcdSecurity, errors

from .. import config as cfg
from ..serve import ETCD_ENDPOINT_FILE, embedded_etcd_security

F = TypeVar("F", bound=Callable[..., Any])
_ETCD = ("etcd_endpoints", "etcd_prefix", "etcd_timeout", "etcd_ca_file", "etcd_cert_file",
         "etcd_key_file", "etcd_username", "etcd_password", "data_dir")


def etcd_options(command: F) -> F:
    """The etcd flags of `ipam serve` (same names, variables and defaults)."""
    for setting in reversed([s for s in cfg.SETTINGS if s.name in _ETCD]):
        command = click.option(setting.flag, setting.name, envvar=setting.env,
                               default=setting.default, show_envvar=True,
                               help=setting.help)(command)
    return command


async def _connect(options: dict[str, Any]) -> IPAM:
    endpoints = [e.strip() for e in (options["etcd_endpoints"] or "").split(",") if e.strip()]
    security = EtcdSecurity(ca_file=options["etcd_ca_file"], cert_file=options["etcd_cert_file"],
                            key_file=options["etcd_key_file"],
                            username=options["etcd_username"],
                            password=options["etcd_password"])
    if not endpoints:
        found = Path(options["data_dir"]) / ETCD_ENDPOINT_FILE
        if not found.is_file():
            raise click.UsageError(f"no etcd: give --etcd-endpoints, or run `ipam serve` with "
                                   f"--data-dir {options['data_dir']} first ({found} is missing)")
        endpoints = [found.read_text().strip()]
        if endpoints[0].startswith("https://"):  # plain before the embedded etcd had TLS
            security = embedded_etcd_security(Path(options["data_dir"]), security)
    return await IPAM.connect(endpoints, prefix=options["etcd_prefix"],
                              timeout=float(options["etcd_timeout"]), security=security)


class Refused(click.ClickException):
    """The allocator refused (a damaged file, a target that is not empty): one line,
    `ipam restore: why`, exit code 1."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        ctx = click.get_current_context(silent=True)
        self.where = ctx.command_path if ctx is not None else "ipam"

    def show(self, file: Any = None) -> None:
        click.echo(f"{self.where}: {self.format_message()}", err=True)


def _run(work: Callable[[IPAM], Any], options: dict[str, Any]) -> Any:
    async def go() -> Any:
        ipam = await _connect(options)
        try:
            return await work(ipam)
        finally:
            await ipam.close()

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
        with partial.open("wb") as out:
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

    summary = _run(work, options)
    resumed = f", resumed after {summary.resumed_from}" if summary.resumed_from else ""
    click.echo(f"restored {summary.count} keys into {summary.prefix} (backup of "
               f"{summary.source_prefix} at revision {summary.source_revision}, schema "
               f"{summary.schema_version}{resumed})")
