"""`ipam serve`: run one gateway node.

Without `--etcd-endpoints` the node locks `--data-dir` (one `ipam serve` per directory,
created 0700, refused if group or others can write it), starts and supervises an
embedded single-member etcd under it, and on first start generates an admin secret key,
stores it there with mode 0600 and prints it once.

The embedded etcd speaks mutual TLS only, on loopback: its client and peer ports accept
nothing but a certificate of its own CA, made on first start under
`<data-dir>/etcd-tls/` (`devcluster.pki`; keys 0600, kept across restarts). etcd holds
the API key records, so whoever can write to it is an admin: a plain port, even on
loopback, let every local user in. Why mutual TLS: a unix socket would close the client
port only; etcd's own auth (a root password) would guard the client port's requests,
not its transport; neither touches the peer port that a single member still opens on
TCP. TLS closes both ports alike, with files etcdctl takes as they are (`--cacert
--cert --key`) and no new code in the gateway's store.
`<data-dir>/etcd_endpoint` holds the https URL, for `ipam backup`/`restore` and etcdctl.
A data directory from before (a plain embedded etcd) keeps its data: etcd restarts on
it with TLS (new client URLs do not touch the data).

Several regions, each on its own etcd cluster (`--etcd-endpoints fr-par=URL
--etcd-endpoints nl-ams=URL`, `gateway.config`): one IPAM per cluster, each with its own
gate (`gateway.context`); the node exits if any cluster holds data it must not serve.
The embedded etcd serves one region only.

API key records in etcd are signed with the credential signing key (`gateway.config`):
derived from the admin secret key, or from `--credential-signing-key-file`. A node
without either (an external etcd and no admin secret) could accept no API key at all:
it refuses to start (exit 2, one line). With the embedded etcd the admin secret always
exists (generated on first start), so its key is derived from it.

With `--tls-cert-file` the node serves HTTPS. `gateway.listener` bounds what aiohttp
leaves open: the time to send a request's headers, and the number of connections. On
SIGTERM or SIGINT a node drains (see `gateway.drain`) for `--drain-seconds`, then stops
accepting, gives in-flight requests `--shutdown-timeout`, and closes etcd.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import fcntl
import gc
import logging
import os
import re
import signal
import socket
import ssl
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from allocator.contract import EtcdSecurity

from . import config as cfg
from . import logs
from .listener import allow_open_files, listen
from .logs import AccessLogger

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("ipam")

ADMIN_SECRET_FILE = "admin_secret_key"
ETCD_ENDPOINT_FILE = "etcd_endpoint"  # the embedded etcd's client URL, for etcdctl
GATEWAY_URL_FILE = "gateway_url"  # where this node serves, for the operator commands
ETCD_TLS_DIR = "etcd-tls"  # its CA, and the client certificate its users present
LOCK_FILE = "serve.lock"
SUPERVISE_SECONDS = 1.0
ANNOUNCE_WAIT = 3.0  # seconds etcd may take before stdout says the node waits for it


class DataDirBusy(RuntimeError):
    """Another `ipam serve` holds the data directory."""


def lock_data_dir(data_dir: Path) -> int:
    """Hold `data_dir` for this process (the returned descriptor); DataDirBusy if taken.

    Two nodes on one directory would share the embedded etcd's files: etcd refuses
    too, but only after a 30 s wait, and then blames its peer port. The lock goes
    with the descriptor, which no child process inherits, so it dies with us.
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
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
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = str(uuid.uuid4())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    print(f"Generated the admin secret key (shown once, kept in {path}):\n\n    {secret}\n",
          file=out, flush=True)
    return secret


def start_embedded_etcd(data_dir: Path,
                        quota_backend_bytes: int = cfg.EMBEDDED_QUOTA_BYTES) -> Any:
    """A single-member etcd whose data lives under `data_dir/etcd` (kept across restarts),
    speaking mutual TLS only with the certificates of `data_dir/etcd-tls` (made if
    missing or within a year of their end), with the backend quota the node measures it
    against (`--etcd-quota-backend-bytes`)."""
    from devcluster.etcd import EtcdCluster
    from devcluster.pki import ensure_member_pki

    base = data_dir / "etcd"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    pki = ensure_member_pki(data_dir / ETCD_TLS_DIR)
    cluster = EtcdCluster(1, base_dir=base, name_prefix="embedded", tls=pki.server_tls(),
                          quota_backend_bytes=quota_backend_bytes)
    cluster.start()
    log.info("embedded etcd serving at %s (data in %s, mutual TLS with %s)",
             cluster.members[0].client_url, base, pki.directory)
    return cluster


def embedded_etcd_security(data_dir: Path, given: EtcdSecurity | None = None
                           ) -> EtcdSecurity:
    """How a client reaches the embedded etcd of `data_dir`: `given` (for a user and
    password) with the CA and client certificate of `data_dir/etcd-tls`."""
    from devcluster.pki import MemberPKI

    pki = MemberPKI(data_dir / ETCD_TLS_DIR)
    return dataclasses.replace(given or EtcdSecurity(), ca_file=str(pki.ca_file),
                               cert_file=str(pki.client_cert_file),
                               key_file=str(pki.client_key_file))


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
            log.info("embedded etcd is back at %s", member.client_url)
        except Exception as err:  # noqa: BLE001 - a failed restart stops the node
            log.error("could not restart the embedded etcd: %s; stopping", err)
            stop.set()


class PreflightError(ValueError):
    """A setting that cannot work, found before anything was started or written."""


@dataclass
class Preflight:
    """What `preflight` secured: the listening socket, the data directory's lock, and the
    TLS context to serve HTTPS with."""

    listener: socket.socket
    lock: int | None
    tls: ssl.SSLContext | None = None

    def release(self) -> None:
        self.listener.close()
        if self.lock is not None:
            os.close(self.lock)


def preflight(config: cfg.GatewayConfig) -> Preflight:
    """Check what can be checked before any side effect (no secret generated, no etcd
    started): the TLS certificate and key load, the address can be listened on (and is
    then held), the data directory is writable, free and not writable by others, the node
    has a credential signing key (the embedded etcd's admin secret counts: it is made
    if missing). PreflightError names the flag."""
    if not config.embedded_etcd and config.credential_signing_key is None:
        raise PreflightError("no credential signing key: API keys stored in etcd are signed "
                             "with a key derived from --admin-secret-key/"
                             "IPAM_ADMIN_SECRET_KEY (or its file) or from "
                             "--credential-signing-key-file/IPAM_CREDENTIAL_SIGNING_KEY_FILE: "
                             "give one")
    tls = tls_context(config)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            config.host, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except OSError as err:
        raise PreflightError(f"--host/IPAM_HOST {config.host!r}: {err}") from None
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
    except OSError as err:
        listener.close()
        raise PreflightError(f"--port/IPAM_PORT {config.port} on {config.host}: "
                             f"{err.strerror or err}") from None
    lock = None
    if config.embedded_etcd:
        try:
            check_data_dir(config.data_dir, stored_secret=not config.admin_secret_key)
            probe = config.data_dir / ".write-test"
            probe.write_text("")
            probe.unlink()
            lock = lock_data_dir(config.data_dir)
        except (OSError, ValueError, DataDirBusy) as err:
            listener.close()
            reason = err.strerror if isinstance(err, OSError) and err.strerror else err
            raise PreflightError(f"--data-dir/IPAM_DATA_DIR {config.data_dir}: {reason}"
                                 ) from None
    return Preflight(listener, lock, tls)


def check_data_dir(data_dir: Path, *, stored_secret: bool) -> None:
    """Create `data_dir` for its owner only (0700) if it is missing; ValueError if group or
    others can write it (they could swap the admin secret or etcd's data), or, when the
    `stored_secret` will be used, if they can read it."""
    if data_dir.is_dir():
        mode = data_dir.stat().st_mode & 0o777
        if mode & 0o022:
            raise ValueError(f"group or others can write it (mode {mode:04o}): chmod 700 it")
    else:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = data_dir / ADMIN_SECRET_FILE
    if stored_secret and secret.exists():
        try:
            cfg.read_secret(secret)
        except ValueError as err:
            raise ValueError(f"{ADMIN_SECRET_FILE}: {err}") from None


def tls_context(config: cfg.GatewayConfig) -> ssl.SSLContext | None:
    """The server TLS context of `--tls-cert-file`/`--tls-key-file`, or None without them;
    PreflightError when they do not load (a key with a passphrase is refused rather than
    asked for on a terminal)."""
    if not config.tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls_cert_file or "", config.tls_key_file,
                                password=lambda: b"")
    except (ssl.SSLError, OSError) as err:
        detail = re.sub(r"^\[[^]]*\] | \(_ssl\.c:\d+\)$", "", err.strerror or str(err))
        raise PreflightError(
            f"--tls-cert-file/IPAM_TLS_CERT_FILE {config.tls_cert_file} and "
            f"--tls-key-file/IPAM_TLS_KEY_FILE {config.tls_key_file} do not load as a PEM "
            f"certificate and its unencrypted key: {detail}") from None
    return context


async def serve(config: cfg.GatewayConfig, out: Any = None,
                checked: Preflight | None = None) -> int:
    """Run one gateway node until SIGTERM or SIGINT, then drain it and shut down gracefully."""
    checked = checked or preflight(config)
    try:
        return await _serve(config, out or sys.stdout, checked)
    finally:
        checked.release()


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def event_loop_factory(choice: str = "asyncio"
                       ) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when chosen (`--event-loop uvloop`) and installed, else
    asyncio's own (None): the default, as uvloop measured slower here (see the setting)."""
    if choice != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


# The cyclic collector's thresholds while serving: a collection of the youngest objects
# once 10,000 more were made than freed (Python's default: 700). At C=256 the objects of
# the requests in flight crossed 700 all the time, and every tenth of every tenth such
# collection walked the whole heap: a fifth of a booking's CPU. Refcounting still frees
# nearly everything at once; what the collector finds (cycles) waits a little longer.
GC_THRESHOLDS = (10_000, 10, 10)


def settle_heap() -> None:
    """Once the node is set up, before it serves: move what setting up made (modules,
    models, routes, caches) out of the collector's sight (`gc.freeze`), so that a full
    collection walks only what serving makes, and collect young objects less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def _serve(config: cfg.GatewayConfig, out: Any, checked: Preflight) -> int:
    from aiohttp import web

    from allocator.contract import IPAM

    from .app import create_app

    cluster = None
    endpoints = list(config.etcd_endpoints)
    if config.embedded_etcd:
        secret = admin_secret(config, out)
        cluster = start_embedded_etcd(config.data_dir, config.etcd_quota_backend_bytes)
        config = dataclasses.replace(
            config, admin_secret_key=secret,
            etcd_security=embedded_etcd_security(config.data_dir, config.etcd_security))
        endpoints = [member.client_url for member in cluster.members]
        # etcdctl's way in (snapshot save, defrag): the client URL, in the data dir.
        (config.data_dir / ETCD_ENDPOINT_FILE).write_text(f"{endpoints[0]}\n")
    elif not config.admin_secret_key:  # preflight made sure a signing key file is given
        log.warning("no IPAM_ADMIN_SECRET_KEY: only admin keys already stored in etcd can "
                    "administer this deployment")
    if config.etcd_credentials_in_clear:  # refused by the configuration unless accepted
        log.warning("etcd's user and password cross the network in clear "
                    "(--etcd-insecure-transport): anyone on the path can read them")
    allow_open_files(config.max_connections)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    runner: web.AppRunner | None = None
    http: asyncio.AbstractServer | None = None
    supervisor = asyncio.ensure_future(_supervise(cluster, stop)) if cluster else None
    try:
        # One IPAM per etcd cluster; the embedded etcd serves the node's one region.
        ipams: dict[str, IPAM] = {}
        for regions, cluster_endpoints in config.clusters:
            ipam = await IPAM.connect(list(cluster_endpoints) or endpoints,
                                      prefix=config.etcd_prefix,
                                      timeout=config.etcd_timeout,
                                      security=config.etcd_security,
                                      signing_key=config.credential_signing_key,
                                      quotas=config.quotas,
                                      idempotency_retention=config.idempotency_retention,
                                      event_retention=config.event_retention)
            ipams.update(dict.fromkeys(regions, ipam))
        runner = web.AppRunner(create_app(ipams, config, close_ipam=True),
                               access_log=logging.getLogger("ipam.access"),
                               access_log_class=AccessLogger,
                               shutdown_timeout=config.shutdown_timeout,
                               keepalive_timeout=config.keepalive_timeout)
        await runner.setup()
        settle_heap()
        http = await listen(runner, checked.listener, checked.tls, config)
        port = checked.listener.getsockname()[1]
        if config.embedded_etcd:  # `ipam keys ...` run from here finds the node on any port
            (config.data_dir / GATEWAY_URL_FILE).write_text(f"{reachable_url(config, port)}\n")
        announce = asyncio.ensure_future(_announce(runner.app, config, port, endpoints, out))
        stopping = asyncio.ensure_future(stop.wait())
        failed = asyncio.ensure_future(_first_failure(runner.app))
        await asyncio.wait([stopping, failed], return_when=asyncio.FIRST_COMPLETED)
        for waiter in (announce, stopping, failed):
            if not waiter.done():
                waiter.cancel()
        if failed.done() and not failed.cancelled():
            print(f"ipam serve: {failed.result()}", file=sys.stderr, flush=True)
            return 1
        await _drain(runner.app, config.drain_seconds)
        log.info("shutting down: no new connections, finishing in-flight requests")
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        if http is not None:
            http.close()  # stops accepting; the runner's cleanup then closes connections
        if runner is not None:
            await runner.cleanup()  # stops accepting, waits for handlers, closes the IPAM
        if supervisor:
            stop.set()
            await supervisor
        if cluster is not None:
            await asyncio.to_thread(cluster.stop)
    return 0


async def _first_failure(app: web.Application) -> Exception:
    """The first fatal start-up failure of any of the node's etcd clusters."""
    from .app import availabilities_of

    waits = [asyncio.ensure_future(a.wait_failed()) for a in availabilities_of(app)]
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        return next(iter(done)).result()
    finally:
        for wait in waits:
            wait.cancel()


def reachable_url(config: cfg.GatewayConfig, port: int) -> str:
    """A URL of this node that a client on the same host can use: a wildcard host (all
    addresses) is reached on loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(config.host, config.host)
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if config.tls else 'http'}://{host}:{port}"


async def _announce(app: web.Application, config: cfg.GatewayConfig, port: int,
                    endpoints: list[str], out: Any) -> None:
    """Say on stdout when the node serves: at once if etcd answers within a few seconds,
    else say it listens and waits (the log tells each attempt), and later that it serves
    (every region's etcd answered)."""
    from .app import availabilities_of

    url = f"{'https' if config.tls else 'http'}://{config.host}:{port}"
    if config.region_endpoints:  # one cluster per region, at least for some
        where = "; ".join(f"{region}={','.join(config.endpoints_of(region))}"
                          for region in config.regions)
    else:
        where = ",".join(endpoints)
    availabilities = availabilities_of(app)
    ready = await asyncio.gather(*(a.wait_ready(ANNOUNCE_WAIT) for a in availabilities))
    if not all(ready):
        print(f"ipam gateway listening on {url}, waiting for etcd at {where} "
              f"(/readyz answers 503 until it answers)", file=out, flush=True)
        await asyncio.gather(*(a.wait_ready(None) for a in availabilities))
    served = (f"region {config.region}" if len(config.regions) == 1
              else f"regions {', '.join(config.regions)}")
    print(f"ipam gateway serving {served} on {url} (etcd: {where})", file=out, flush=True)


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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ipam serve", description="run a gateway node")
    cfg.add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """`ipam serve [flags]`: exit 0 after a clean shutdown; 2 on a bad flag, a secret file
    others may read, TLS files that do not load, a taken port, an unusable data directory
    or no credential signing key (one line, before anything was started); 1 on a
    failure."""
    args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        config = cfg.load(args)
        checked = preflight(config)
    except (cfg.ConfigError, PreflightError) as err:
        print(f"ipam serve: {err}", file=sys.stderr)
        return 2
    logs.configure(config.log_level, config.log_format)
    try:
        with asyncio.Runner(loop_factory=event_loop_factory(config.event_loop)) as runner:
            return runner.run(serve(config, checked=checked))
    except (RuntimeError, OSError) as err:  # etcd missing, port taken: say so, no traceback
        print(f"ipam serve: {err}", file=sys.stderr)
        return 1
