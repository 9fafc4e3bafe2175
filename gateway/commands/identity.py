"""`ipam identity copy --to-region R`: give a region's new etcd cluster the identity
(API keys, projects' organizations, quota overrides) of another's, straight from etcd.

A node serving several regions writes every identity change to every cluster; a cluster
added later holds none of what came before, so every key would be refused there. Run
this before a node serves the new region (and again at will: it writes only what is
missing, overwrites nothing, deletes nothing; `allocator.identity`):

    ipam identity copy --etcd-endpoints fr-par=https://a:2379 \\
        --etcd-endpoints nl-ams=https://b:2379 --region fr-par --to-region nl-ams

etcd is found as `ipam backup` finds it (the flags and variables of `ipam serve`); the
source is `--region`'s cluster. Exit 1 when something the target holds differs (each
named on stderr, none written).
"""

from __future__ import annotations

import asyncio
from typing import Any

import click

from allocator.contract import IPAM, IdentityCopied

from .backup import etcd_config, etcd_options


@click.group("identity")
def identity() -> None:
    """A deployment's identity (API keys, projects' organizations, quota overrides)
    across the etcd clusters of its regions."""


@identity.command("copy")
@click.option("--to-region", required=True, metavar="REGION",
              help="the region whose etcd cluster gets the identity of --region's")
@etcd_options
def copy(to_region: str, **options: Any) -> None:
    """Copy the identity of --region's etcd cluster into --to-region's."""
    config = etcd_config(options)
    source = config.endpoints_of(config.region)
    target = config.endpoints_of(to_region)
    if not source or not target:
        raise click.UsageError("give --etcd-endpoints naming both regions' clusters "
                               "(REGION=URL[,URL...]); an embedded etcd is one cluster")
    if set(source) == set(target):
        raise click.UsageError(f"--region {config.region} and --to-region {to_region} are on "
                               f"the same etcd cluster ({','.join(source)}): nothing to copy")

    async def go() -> IdentityCopied:
        ipams = [await IPAM.connect(list(endpoints), prefix=config.etcd_prefix,
                                    timeout=config.etcd_timeout,
                                    security=config.etcd_security)
                 for endpoints in (source, target)]
        try:
            return await ipams[0].copy_identity_to(ipams[1])
        finally:
            for ipam in ipams:
                await ipam.close()

    done = asyncio.run(go())
    for key, why in done.conflicts:
        click.echo(f"ipam identity copy: not copied: {key}: {why}", err=True)
    click.echo(f"copied {done.copied} records of {config.region}'s identity into "
               f"{to_region}'s cluster ({done.same} held there already, "
               f"{len(done.conflicts)} conflicts)")
    if done.conflicts:
        raise click.exceptions.Exit(1)
