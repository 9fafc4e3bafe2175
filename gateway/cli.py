"""The `ipam` command: run a gateway node or the DHCP/DNS agent, and operate a running gateway.

    ipam serve [--host H --port P --etcd-endpoints A,B,C ...]   a gateway node (gateway.serve)
    ipam dhcp [--interface eth1=PN_ID ...]                      the agent (netagent.cli)
    ipam ips list|get|book|release|attach|detach|move           IPs
    ipam pns list|create|get|delete                             Private Networks
    ipam vpcs list                                              VPCs
    ipam keys create|list|revoke                                API keys (admin)
    ipam pools add|list|delete                                  zonal pools (admin)
    ipam projects get|set-organization PROJECT [ORG]            a project's organization (admin)
    ipam quotas get|set|reset --project ID                      a project's quotas (admin)
    ipam dhcp-declines list|clear [--pn ID] [--mac M]           DHCP declines (admin)
    ipam usage --pn ID                                          how full a network is
    ipam backup FILE / ipam restore FILE                        everything, straight from etcd
    ipam identity copy --to-region R                            keys, organizations, quotas
                                                                into a region's new cluster

`serve` and `dhcp` parse their own flags (`ipam serve --help`). The other commands
talk to a gateway over its HTTP API; where it is and which key to use come from flags,
the environment, a config file or the data dir (`gateway.commands.settings`). They
print tables, or the API's objects with `-o json` / `-o yaml`.

Exit codes: 0 done; 1 the gateway answered an error (printed as `error_text` lines) or
could not be reached (`cannot reach URL: reason`); 2 bad input, in one line.
Shell completion: `eval "$(_IPAM_COMPLETE=bash_source ipam)"` (zsh_source, fish_source).
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Sequence
from typing import Any

import click
from click.exceptions import NoArgsIsHelpError

from .commands.backup import backup, restore
from .commands.declines import dhcp_declines
from .commands.identity import identity
from .commands.ips import ips
from .commands.keys import keys
from .commands.pns import pns
from .commands.pools import pools
from .commands.projects import projects
from .commands.quotas import quotas
from .commands.session import error_text
from .commands.settings import common_options
from .commands.usage import usage
from .commands.vpcs import vpcs

__all__ = ["error_text", "ipam", "main", "version"]

# `serve` and `dhcp` keep their own flags, `--help` included: click hands them everything.
PASS_THROUGH = {"context_settings": {"ignore_unknown_options": True,
                                     "allow_extra_args": True, "help_option_names": []},
                "add_help_option": False}


def version() -> str:
    """The installed version of the `ipam` distribution."""
    try:
        return importlib.metadata.version("ipam")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"ipam {version()}")
        ctx.exit(0)


@click.group("ipam")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version, help="Print `ipam <version>` and exit.")
@common_options()
def ipam() -> None:
    """Scaleway-compatible IPAM on etcd: run a node, or operate a running gateway."""


def run_serve(args: Sequence[str]) -> int:
    """`ipam serve ARGS`: a gateway node, `gateway.serve` reading ARGS."""
    from .serve import main as serve_main

    return serve_main(list(args))


def run_dhcp(args: Sequence[str]) -> int:
    """`ipam dhcp ARGS`: the DHCP and DNS agent, `netagent.cli` reading ARGS."""
    from netagent.cli import main as dhcp_main

    return dhcp_main(list(args))


@ipam.command("serve", **PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def serve(args: tuple[str, ...]) -> int:
    """Run a gateway node (its flags: ipam serve --help)."""
    return run_serve(args)


@ipam.command("dhcp", **PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def dhcp(args: tuple[str, ...]) -> int:
    """Run the DHCP and DNS agent of Private Networks (its flags: ipam dhcp --help)."""
    return run_dhcp(args)


for _command in (ips, pns, vpcs, keys, pools, projects, quotas, dhcp_declines, usage,
                 backup, restore, identity):
    ipam.add_command(_command)


def _one_line(err: click.UsageError) -> str:
    """A usage error as one line naming the command: `ipam ips get: 'x' is not ...`."""
    where = err.ctx.command_path if err.ctx is not None else "ipam"
    return f"{where}: {' '.join(err.format_message().split())}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run `ipam` on `argv` (default sys.argv[1:]) and return its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    # The long-running commands skip click: their own parsers read their flags untouched.
    if args[:1] == ["serve"]:
        return run_serve(args[1:])
    if args[:1] == ["dhcp"]:
        return run_dhcp(args[1:])
    try:
        result: Any = ipam.main(args=args, prog_name="ipam", standalone_mode=False)
    except NoArgsIsHelpError as err:  # `ipam ips`: the help of the group is the answer
        err.show()
        return 2
    except click.UsageError as err:
        click.echo(_one_line(err), err=True)
        return 2
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.Abort:
        click.echo("ipam: aborted", err=True)
        return 1
    except SystemExit as exit_:  # shell completion; argparse of serve or dhcp (--help)
        code = exit_.code
        return code if isinstance(code, int) else 0 if code is None else 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
