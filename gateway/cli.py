"""The `ipam` command: run a gateway node, and the operator's admin commands over HTTP.

    ipam serve [--host H --port P --etcd-endpoints A,B,C --region R --zones Z1,Z2 ...]
    ipam keys create --role project_member --project-ids P1,P2 [--organization-id O]
                     [--expires-at 2027-01-01T00:00:00Z]
    ipam keys list
    ipam keys revoke SCWXXXXXXXXXXXXXXXXX
    ipam pools add --zone fr-par-1 --subnet 51.15.0.0/24
    ipam pools list
    ipam pools delete POOL_ID

`ipam serve` without `--etcd-endpoints` locks `--data-dir` (one `ipam serve`
per directory), starts and supervises an embedded single-member etcd under it,
and on first start generates an admin secret key, stores it there with mode
0600 and prints it once. On SIGTERM or SIGINT a node drains (see
`gateway.drain`) for `--drain-seconds`, then stops accepting, gives in-flight
requests `--shutdown-timeout`, and closes etcd. Admin commands
find the gateway with `--url` / `IPAM_URL` and authenticate with
`--secret-key` / `IPAM_SECRET_KEY`, else `IPAM_ADMIN_SECRET_KEY`, else the
secret stored in the data directory.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import fcntl
import json
import logging
import os
import signal
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import config as cfg

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("ipam")

ADMIN_SECRET_FILE = "admin_secret_key"
LOCK_FILE = "serve.lock"
SUPERVISE_SECONDS = 1.0


# -- serve ------------------------------------------------------------------------------


class DataDirBusy(RuntimeError):
    """Another `ipam serve` holds the data directory."""


def lock_data_dir(data_dir: Path) -> int:
    """Hold `data_dir` for this process (the returned descriptor); DataDirBusy if taken.

    Two nodes on one directory would share the embedded etcd's files: etcd refuses
    too, but only after a 30 s wait, and then blames its peer port. The lock goes
    with the descriptor, which no child process inherits, so it dies with us.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DataDirBusy(f"another ipam serve is using {data_dir} (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def admin_secret(config: cfg.GatewayConfig, out: Any = None) -> str:
    """The admin secret: the configured one, else the stored one, else a new one (printed)."""
    out = out or sys.stdout
    if config.admin_secret_key:
        return config.admin_secret_key
    path = config.data_dir / ADMIN_SECRET_FILE
    if path.exists():
        return str(uuid.UUID(path.read_text().strip()))
    config.data_dir.mkdir(parents=True, exist_ok=True)
    secret = str(uuid.uuid4())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    print(f"Generated the admin secret key (shown once, kept in {path}):\n\n    {secret}\n",
          file=out, flush=True)
    return secret


def start_embedded_etcd(data_dir: Path) -> Any:
    """A single-member etcd whose data lives under `data_dir/etcd` (kept across restarts)."""
    from devcluster.etcd import EtcdCluster

    base = data_dir / "etcd"
    base.mkdir(parents=True, exist_ok=True)
    cluster = EtcdCluster(1, base_dir=base, name_prefix="embedded")
    cluster.start()
    log.info("embedded etcd serving at %s (data in %s)", cluster.endpoints[0], base)
    return cluster


async def _supervise(cluster: Any, stop: asyncio.Event) -> None:
    """Restart the embedded etcd member on its own ports if it exits."""
    member = cluster.members[0]
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), SUPERVISE_SECONDS)
        except TimeoutError:
            pass
        if stop.is_set() or member.is_running:
            continue
        log.error("embedded etcd exited; restarting it. Last lines of its log:\n%s",
                  member.log_tail())
        try:
            member.start()
            await asyncio.to_thread(cluster.wait_healthy, 30)
            log.info("embedded etcd is back at %s", member.endpoint)
        except Exception as err:  # noqa: BLE001 - a failed restart stops the node
            log.error("could not restart the embedded etcd: %s; stopping", err)
            stop.set()


async def serve(config: cfg.GatewayConfig, out: Any = None) -> int:
    """Run one gateway node until SIGTERM or SIGINT, then drain it and shut down gracefully."""
    lock = lock_data_dir(config.data_dir) if config.embedded_etcd else None
    try:
        return await _serve(config, out or sys.stdout)
    finally:
        if lock is not None:
            os.close(lock)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def _serve(config: cfg.GatewayConfig, out: Any) -> int:
    from aiohttp import web

    from allocator.contract import IPAM

    from .app import create_app

    cluster = None
    endpoints = list(config.etcd_endpoints)
    if config.embedded_etcd:
        config = dataclasses.replace(config, admin_secret_key=admin_secret(config, out))
        cluster = start_embedded_etcd(config.data_dir)
        endpoints = cluster.endpoints
    elif not config.admin_secret_key:
        log.warning("no IPAM_ADMIN_SECRET_KEY: only admin keys already stored in etcd can "
                    "administer this deployment")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    runner: web.AppRunner | None = None
    supervisor = asyncio.ensure_future(_supervise(cluster, stop)) if cluster else None
    try:
        ipam = await IPAM.connect(endpoints, prefix=config.etcd_prefix,
                                  timeout=config.etcd_timeout,
                                  security=config.etcd_security)
        runner = web.AppRunner(create_app(ipam, config, close_ipam=True), access_log=None,
                               shutdown_timeout=config.shutdown_timeout)
        await runner.setup()
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        port = _bound_port(site, config.port)
        print(f"ipam gateway serving region {config.region} on http://{config.host}:{port} "
              f"(etcd: {','.join(endpoints)})", file=out, flush=True)
        await stop.wait()
        await _drain(runner.app, config.drain_seconds)
        log.info("shutting down: no new connections, finishing in-flight requests")
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        if runner is not None:
            await runner.cleanup()  # stops accepting, waits for handlers, closes the IPAM
        if supervisor:
            stop.set()
            await supervisor
        if cluster is not None:
            await asyncio.to_thread(cluster.stop)
    return 0


async def _drain(app: web.Application, seconds: float) -> None:
    """Keep serving for `seconds` while draining `app`; a second signal cuts it short."""
    from .drain import drain_of

    drain_of(app).begin()
    log.info("draining for %.1f s: /readyz answers 503 and every answer closes its "
             "connection", seconds)
    hurry = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, hurry.set)
    try:
        await asyncio.wait_for(hurry.wait(), seconds)
    except TimeoutError:
        pass


def _bound_port(site: Any, default: int) -> int:
    """The port the site listens on (the kernel's choice when asked for port 0)."""
    sockets = getattr(site._server, "sockets", None) or ()
    return int(sockets[0].getsockname()[1]) if sockets else default


# -- admin commands over HTTP ----------------------------------------------------------------


class AdminClient:
    """A tiny synchronous client of the admin API, for the command line."""

    def __init__(self, url: str, secret_key: str) -> None:
        self.url = url.rstrip("/")
        self.secret_key = secret_key
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "X-Auth-Token": self.secret_key, "Content-Type": "application/json"})
        try:
            with self._opener.open(req, timeout=30) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            raise SystemExit(error_text(err.code, err.read()))
        except urllib.error.URLError as err:
            raise SystemExit(f"cannot reach {self.url}: {err.reason}")
        return json.loads(raw) if raw else None


def error_text(status: int, raw: bytes) -> str:
    """An error answer as lines a person reads: `error 409 already_exists: message`,
    then one line per detail (`argument: help (reason)`), never a dict."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return f"error {status}: {raw.decode(errors='replace').strip() or 'no message'}"
    line = f"error {status} {body.get('type') or 'unknown'}: {body.get('message') or ''}"
    if body.get("resource") and body.get("resource_id"):
        line += f" ({body['resource']} {body['resource_id']})"
    lines = [line.rstrip()]
    details = body.get("details")
    for d in details if isinstance(details, list) else ():
        if isinstance(d, dict) and "argument_name" in d:
            lines.append(f"  {d['argument_name']}: {d.get('help_message') or ''} "
                         f"({d.get('reason') or 'invalid'})")
        elif isinstance(d, dict):
            lines.append("  " + ", ".join(f"{k} {v}" for k, v in d.items()))
        else:
            lines.append(f"  {d}")
    if body.get("help_message") and body.get("help_message") != body.get("message"):
        lines.append(f"  {body['help_message']}")
    return "\n".join(lines)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as a plain text table a person can read."""
    def cell(v: Any) -> str:
        if isinstance(v, (list, tuple)):
            return ",".join(str(x) for x in v) or "-"
        return "-" if v in (None, "") else str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c.upper())] + [len(row[i]) for row in cells])
              for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


_KEY_COLUMNS = ("access_key", "role", "organization_id", "project_ids", "resource_types",
                "description", "created_at", "expires_at")
_POOL_COLUMNS = ("id", "zone", "subnet", "created_at")


def _admin_client(args: argparse.Namespace) -> AdminClient:
    url = args.url or os.environ.get("IPAM_URL") or "http://127.0.0.1:8080"
    secret = args.secret_key or os.environ.get("IPAM_SECRET_KEY") or os.environ.get(
        "IPAM_ADMIN_SECRET_KEY")
    if not secret:
        stored = Path(args.data_dir or os.environ.get("IPAM_DATA_DIR") or "./.ipam") \
            / ADMIN_SECRET_FILE
        if stored.exists():
            secret = stored.read_text().strip()
    if not secret:
        raise SystemExit("no secret key: give --secret-key or set IPAM_SECRET_KEY")
    return AdminClient(url, secret)


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def run_admin(args: argparse.Namespace, out: Any = None) -> int:
    """Run one admin command over HTTP and print its result as a table."""
    out = out or sys.stdout
    client = _admin_client(args)
    region = args.region or os.environ.get("IPAM_REGION") or "fr-par"
    if args.command == "keys":
        if args.action == "create":
            key = client.call("POST", "/ipam/admin/v1/api-keys", {
                "role": args.role, "organization_id": args.organization_id,
                "project_ids": _split(args.project_ids),
                "resource_types": _split(args.resource_types),
                "description": args.description or "", "expires_at": args.expires_at})
            print(table([key], _KEY_COLUMNS), file=out)
            print(f"\nsecret key (shown once): {key['secret_key']}", file=out)
        elif args.action == "list":
            print(table(client.call("GET", "/ipam/admin/v1/api-keys")["api_keys"],
                        _KEY_COLUMNS), file=out)
        else:
            client.call("DELETE", f"/ipam/admin/v1/api-keys/{args.access_key}")
            print(f"revoked {args.access_key}", file=out)
    else:
        base = f"/ipam/admin/v1/regions/{region}/zonal-pools"
        if args.action == "add":
            pool = client.call("POST", base, {"zone": args.zone, "subnet": args.subnet})
            print(table([pool], _POOL_COLUMNS), file=out)
        elif args.action == "list":
            print(table(client.call("GET", base)["zonal_pools"], _POOL_COLUMNS), file=out)
        else:
            client.call("DELETE", f"{base}/{args.pool_id}")
            print(f"deleted {args.pool_id}", file=out)
    return 0


# -- argument parsing ------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ipam", description="Scaleway-compatible IPAM on etcd")
    sub = p.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="run a gateway node")
    cfg.add_arguments(serve_p)
    sub.add_parser("dhcp", add_help=False,
                   help="run the DHCP and DNS agent of Private Networks (ipam dhcp --help)")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="gateway URL [IPAM_URL; default http://127.0.0.1:8080]")
    common.add_argument("--secret-key", help="an admin secret key [IPAM_SECRET_KEY]")
    common.add_argument("--data-dir", help="where `ipam serve` keeps the admin secret "
                                           "[IPAM_DATA_DIR; default ./.ipam]")
    common.add_argument("--region", help="[IPAM_REGION; default fr-par]")

    keys = sub.add_parser("keys", help="create, list and revoke API keys").add_subparsers(
        dest="action", required=True)
    create = keys.add_parser("create", parents=[common],
                             help="create a key and print its secret once")
    create.add_argument("--role", required=True,
                        choices=["admin", "project_member", "project_reader", "product"])
    create.add_argument("--project-ids", help="comma-separated project ids")
    create.add_argument("--resource-types", help="comma-separated resource types (product)")
    create.add_argument("--organization-id")
    create.add_argument("--description")
    create.add_argument("--expires-at", help="when the key stops working, RFC 3339 with a "
                                             "time zone (2027-01-01T00:00:00Z); default never")
    keys.add_parser("list", parents=[common], help="list keys (never their secrets)")
    revoke = keys.add_parser("revoke", parents=[common],
                             help="revoke a key at once on every node")
    revoke.add_argument("access_key")

    pools = sub.add_parser("pools", help="manage zonal pools").add_subparsers(
        dest="action", required=True)
    add = pools.add_parser("add", parents=[common], help="add a zonal pool")
    add.add_argument("--zone", required=True)
    add.add_argument("--subnet", required=True)
    pools.add_parser("list", parents=[common], help="list zonal pools")
    delete = pools.add_parser("delete", parents=[common], help="delete an empty zonal pool")
    delete.add_argument("pool_id")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["dhcp"]:  # the agent has its own flags: it parses them itself
        from netagent.cli import main as dhcp_main

        return dhcp_main(argv[1:])
    args = parser().parse_args(argv)
    if args.command == "serve":
        try:
            config = cfg.load(args)
        except cfg.ConfigError as err:
            print(f"ipam serve: {err}", file=sys.stderr)
            return 2
        logging.basicConfig(level=config.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            return asyncio.run(serve(config))
        except (RuntimeError, OSError) as err:  # etcd missing, port taken: say so, no traceback
            print(f"ipam serve: {err}", file=sys.stderr)
            return 1
    return run_admin(args)


if __name__ == "__main__":
    sys.exit(main())
