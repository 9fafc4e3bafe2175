"""`ipam dhcp`: run the DHCP and DNS agent. Every flag has an `IPAM_...` variable.

    ipam dhcp --etcd-endpoints 10.0.0.1:2379 --interface eth1=PN_ID [--interface ...]
              [--unknown-mac book | --unknown-mac PN_ID=book] [--lease-time 3600]
              [--t1 30] [--t2 52] [--dns-port 53] [--dns-upstream 192.0.2.53:53]
              [--metrics-listen 127.0.0.1:9547] [--agent-id NAME]

A bad value is one line on stderr naming the flag, and exit code 2, before anything
starts. SIGTERM and SIGINT stop the agent cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import uuid
from collections.abc import Sequence

from aiohttp import web

from allocator.contract import IPAM, EtcdSecurity

from .agent import BOOK, IGNORE, Agent, AgentConfig
from .metrics import metrics_app

_POLICIES = (IGNORE, BOOK)


class ConfigError(ValueError):
    """A flag or variable with a value the agent cannot use."""


def parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="ipam dhcp", description="Serve DHCPv4, DHCPv6, Router Advertisements and DNS for "
                                  "Private Networks from IPAM.")
    p.add_argument("--etcd-endpoints", default=env("IPAM_ETCD_ENDPOINTS"),
                   help="comma-separated host:port of etcd members [IPAM_ETCD_ENDPOINTS]")
    p.add_argument("--etcd-prefix", default=env("IPAM_ETCD_PREFIX", "/ipam/"),
                   help="key prefix of the deployment [IPAM_ETCD_PREFIX; default /ipam/]")
    for flag in ("ca-file", "cert-file", "key-file", "username", "password"):
        var = "IPAM_ETCD_" + flag.upper().replace("-", "_")
        p.add_argument(f"--etcd-{flag}", default=env(var), help=f"etcd TLS/auth [{var}]")
    p.add_argument("--interface", action="append", default=None, metavar="IFACE=PN_ID",
                   help="serve a Private Network on an interface (repeat for more) "
                        "[IPAM_DHCP_INTERFACES, comma-separated]")
    p.add_argument("--unknown-mac", action="append", default=None,
                   metavar="ignore|book|PN_ID=ignore|book",
                   help="what to do for a MAC IPAM has no IP for, everywhere or per network "
                        "[IPAM_DHCP_UNKNOWN_MAC, comma-separated; default ignore]")
    p.add_argument("--lease-time", default=env("IPAM_DHCP_LEASE_TIME", "3600"),
                   help="lease time in seconds [IPAM_DHCP_LEASE_TIME; default 3600]")
    p.add_argument("--t1", default=env("IPAM_DHCP_T1", "30"),
                   help="renewal time (T1), seconds: a move reaches the client within it "
                        "[IPAM_DHCP_T1; default 30]")
    p.add_argument("--t2", default=env("IPAM_DHCP_T2", "52"),
                   help="rebinding time (T2), seconds [IPAM_DHCP_T2; default 52]")
    p.add_argument("--dns-port", default=env("IPAM_DNS_PORT", "53"),
                   help="UDP and TCP port of the internal DNS [IPAM_DNS_PORT; default 53]")
    p.add_argument("--dns-upstream", default=env("IPAM_DNS_UPSTREAM"),
                   help="host:port to forward other names to; without it they are refused "
                        "[IPAM_DNS_UPSTREAM]")
    p.add_argument("--metrics-listen", default=env("IPAM_DHCP_METRICS_LISTEN"),
                   metavar="HOST:PORT",
                   help="serve Prometheus metrics on http://HOST:PORT/metrics "
                        "[IPAM_DHCP_METRICS_LISTEN; default off]")
    p.add_argument("--agent-id", default=env("IPAM_DHCP_AGENT_ID") or socket.gethostname(),
                   help="this agent's name in the DHCP declines it records "
                        "[IPAM_DHCP_AGENT_ID; default the host name]")
    p.add_argument("--log-level", default=env("IPAM_LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"],
                   help="[IPAM_LOG_LEVEL; default info]")
    return p


def _seconds(value: str, flag: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"{flag} must be a whole number of seconds, not {value!r}") from None
    if n <= 0:
        raise ConfigError(f"{flag} must be positive")
    return n


def _listen(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--metrics-listen {value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def load(args: argparse.Namespace) -> tuple[list[str], str, EtcdSecurity, AgentConfig]:
    """Endpoints, prefix, etcd security and the agent's config; ConfigError names the flag."""
    if not args.etcd_endpoints:
        raise ConfigError("--etcd-endpoints/IPAM_ETCD_ENDPOINTS is required")
    endpoints = [e.strip() for e in args.etcd_endpoints.split(",") if e.strip()]
    raw_ifaces = args.interface or [i for i in os.environ.get(
        "IPAM_DHCP_INTERFACES", "").split(",") if i]
    if not raw_ifaces:
        raise ConfigError("give at least one --interface IFACE=PN_ID (IPAM_DHCP_INTERFACES)")
    interfaces = []
    for item in raw_ifaces:
        iface, sep, pn = item.partition("=")
        if not sep or not iface or len(iface) > 15:
            raise ConfigError(f"--interface {item!r} is not IFACE=PN_ID")
        try:
            pn = str(uuid.UUID(pn))
        except ValueError:
            raise ConfigError(f"--interface {item!r}: {pn!r} is not a Private Network id"
                              ) from None
        interfaces.append((iface, pn))
    if len({i for i, _ in interfaces}) != len(interfaces):
        raise ConfigError("--interface: an interface serves one Private Network")
    default, per_network = IGNORE, {}
    raw_policies = args.unknown_mac or [p for p in os.environ.get(
        "IPAM_DHCP_UNKNOWN_MAC", "").split(",") if p]
    for item in raw_policies:
        target, sep, policy = item.rpartition("=")
        if policy not in _POLICIES:
            raise ConfigError(f"--unknown-mac {item!r}: the policy is ignore or book")
        if not sep:
            default = policy
            continue
        if target not in {pn for _, pn in interfaces}:
            raise ConfigError(f"--unknown-mac {item!r}: {target} is not a served network")
        per_network[target] = policy
    lease, t1, t2 = (_seconds(args.lease_time, "--lease-time"), _seconds(args.t1, "--t1"),
                     _seconds(args.t2, "--t2"))
    if not t1 < t2 < lease:
        raise ConfigError("--t1 < --t2 < --lease-time is required (RFC 2131 4.4.5)")
    try:
        dns_port = int(args.dns_port)
    except ValueError:
        dns_port = -1
    if not 0 < dns_port < 65536:
        raise ConfigError(f"--dns-port {args.dns_port!r} is not a port")
    if args.dns_upstream and ":" not in args.dns_upstream:
        raise ConfigError("--dns-upstream must be host:port")
    if not args.agent_id or len(args.agent_id) > 255 or not args.agent_id.isprintable():
        raise ConfigError("--agent-id must be 1 to 255 printable characters")
    if bool(args.etcd_cert_file) != bool(args.etcd_key_file):
        raise ConfigError("--etcd-cert-file and --etcd-key-file go together")
    if bool(args.etcd_username) != bool(args.etcd_password):
        raise ConfigError("--etcd-username and --etcd-password go together")
    security = EtcdSecurity(args.etcd_ca_file, args.etcd_cert_file, args.etcd_key_file,
                            args.etcd_username, args.etcd_password)
    config = AgentConfig(tuple(interfaces), per_network, default, lease, t1, t2,
                         dns_port=dns_port, dns_upstream=args.dns_upstream,
                         metrics_listen=_listen(args.metrics_listen), agent_id=args.agent_id)
    return endpoints, args.etcd_prefix, security, config


async def run(endpoints: list[str], prefix: str, security: EtcdSecurity,
              config: AgentConfig) -> int:
    """Serve until SIGTERM or SIGINT."""
    ipam = await IPAM.connect(endpoints, prefix=prefix, security=security)
    agent = Agent(ipam, config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics: web.AppRunner | None = None
    try:
        await agent.start()
        if config.metrics_listen is not None:
            metrics = web.AppRunner(metrics_app(agent), access_log=None)
            await metrics.setup()
            await web.TCPSite(metrics, *config.metrics_listen).start()
        print("ipam dhcp: ready", flush=True)
        await stop.wait()
    finally:
        if metrics is not None:
            await metrics.cleanup()
        await agent.close()
        await ipam.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        endpoints, prefix, security, config = load(args)
    except ConfigError as err:
        print(f"ipam dhcp: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(run(endpoints, prefix, security, config))
    except OSError as err:  # an interface or port we cannot use: say so, no traceback
        print(f"ipam dhcp: {err.strerror or err}", file=sys.stderr)
        return 1
