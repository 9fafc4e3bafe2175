"""Local etcd members run as child processes.

The allocator's invariants are proven against real etcd, never a fake store
(DESIGN.md section 6), ``ipam serve`` can embed a single-member etcd, and the
benchmark measures against a real cluster. All three need the same thing:
launch etcd members on loopback, wait until they serve, then kill, pause,
restart and stop them on demand. This module is the one place that knows how.

It is synchronous on purpose (``subprocess``, ``urllib``): it runs in pytest
fixtures and in command-line start-up, before any event loop exists.

Each member lives in ``<base_dir>/<name>/``: etcd's data directory is
``data/`` and its log (zap output plus anything written to stdout/stderr) is
``etcd.log`` beside it, so nothing reaches our stdout and the logs survive a
crash for debugging. Where ``setpriv`` exists (util-linux), members are tied to
the thread that launched them and die with it, so a hard-killed test run
leaves no etcd behind.

Which etcd: ``$IPAM_ETCD_BIN`` when set (it must be an executable file), else
``etcd`` on PATH, else /usr/bin/etcd (Debian's ``etcd-server``, 3.4). CI runs the
storage and fault tests a second time with ``IPAM_ETCD_BIN`` pointing at etcd 3.5
(``scripts/test-etcd35.sh``), so everything here must hold for both: the flags are
the ones 3.4 and 3.5 share (``--logger zap`` with ``--log-outputs``, which both
write as JSON lines; 3.5 dropped ``capnslog``; no ``--experimental-*`` flag), and
what is read back is what both answer alike: ``/health``'s ``health`` field (3.5
adds ``reason``), ``/version``'s ``etcdserver``, the JSON gateway's
``/v3/maintenance/status``, the ``etcd_network_active_peers`` metric, and the
log's "address already in use". Nothing here runs ``etcdctl``; tests that do take
the one on PATH, so a run on another etcd puts its directory first on PATH too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

ETCD_DEBIAN_PACKAGE = "etcd-server"
LOOPBACK = "127.0.0.1"

# Fast failover on loopback: the defaults (100 ms / 1000 ms) are sized for real
# networks and would make every leader-loss test wait a second or more.
HEARTBEAT_INTERVAL_MS = 50
ELECTION_TIMEOUT_MS = 500
QUOTA_BACKEND_BYTES = 4 * 1024**3
AUTO_COMPACTION_RETENTION = "1h"
SNAPSHOT_COUNT = 100_000

STOP_GRACE_SECONDS = 5.0
_HTTP_TIMEOUT_SECONDS = 1.0
_PEER_PROBE_TIMEOUT_SECONDS = 0.2
_POLL_SECONDS = 0.05
_START_ATTEMPTS = 3
_VERSION_TIMEOUT_SECONDS = 10.0
_LOG_TAIL_LINES = 40

# urllib honours http_proxy and friends; probes of loopback must never use one.
_LOOPBACK_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class ServerTLS:
    """PEM files for a member's TLS client listener (mutual TLS when `client_cert_auth`).

    Without a probe certificate the member keeps a plain client listener beside the TLS
    one, for the harness's own probes. With `probe_cert_file` and `probe_key_file` (a
    client certificate of `ca_file`) it speaks mutual TLS only: its one client listener
    and its peer listener accept only certificates of `ca_file` (so `cert_file` must be
    good for client authentication too: etcd dials itself and its peers with it), and
    the harness's probes present the probe certificate.
    """

    cert_file: str
    key_file: str
    ca_file: str
    client_cert_auth: bool = True
    probe_cert_file: str | None = None
    probe_key_file: str | None = None

    @property
    def only(self) -> bool:
        """Whether the member has no plain listener, clients' nor peers'."""
        return self.probe_cert_file is not None

    def probe_context(self) -> ssl.SSLContext:
        """What the harness's probes present to a TLS-only member and trust of it."""
        context = ssl.create_default_context(cafile=self.ca_file)
        context.load_cert_chain(self.probe_cert_file or "", self.probe_key_file)
        return context


class EtcdStartError(RuntimeError):
    """An etcd member exited or never became healthy while starting."""


class _PortCollision(EtcdStartError):
    """A port picked as free was taken before etcd bound it; start again."""


def find_etcd_binary() -> str:
    """Return the etcd executable: ``$IPAM_ETCD_BIN``, else ``etcd`` on PATH, else /usr/bin/etcd."""
    configured = os.environ.get("IPAM_ETCD_BIN")
    if configured:
        if _is_executable(configured):
            return configured
        raise RuntimeError(f"IPAM_ETCD_BIN={configured!r} is not an executable file")
    for candidate in (shutil.which("etcd"), "/usr/bin/etcd"):
        if candidate and _is_executable(candidate):
            return candidate
    raise RuntimeError(
        "etcd not found on PATH nor at /usr/bin/etcd; install the Debian package "
        f"'{ETCD_DEBIAN_PACKAGE}' (apt-get install -y {ETCD_DEBIAN_PACKAGE}) "
        "or set IPAM_ETCD_BIN to the etcd executable"
    )


def etcd_binary_version(binary: str) -> str:
    """The version an etcd executable reports (``etcd --version``), e.g. ``"3.5.1"``.

    Read from the binary rather than from a running member so a caller can tell
    which etcd it is about to launch (the 3.5 test run checks it got 3.5).
    """
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True,
                              timeout=_VERSION_TIMEOUT_SECONDS, check=False,
                              env=_child_environment())
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"{binary} --version did not run: {exc}") from exc
    for line in done.stdout.splitlines():
        label, _, version = line.partition(":")
        if label.strip() == "etcd Version" and version.strip():
            return version.strip()
    raise RuntimeError(
        f"{binary} --version exited with code {done.returncode} and named no etcd "
        f"version: {(done.stdout + done.stderr).strip()[:200]!r}"
    )


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _free_loopback_ports(count: int) -> list[int]:
    """Ports the kernel considers free now; all sockets are held together so they differ."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _child_environment() -> dict[str, str]:
    # etcd reads ETCD_* variables as flags; a stray one in the caller's
    # environment must not change the members we launch.
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("ETCD_") or key == "ETCD_UNSUPPORTED_ARCH"
    }


def _process_state(pid: int) -> str | None:
    """"T" once every thread of the process is stopped, another letter before, None if unknown."""
    try:
        states = set()
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                states.add(f.read().rsplit(")", 1)[1].split()[0])
    except (OSError, IndexError):
        return None
    return "T" if states <= {"T", "t"} else "R"


def _die_with_parent_prefix() -> list[str]:
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


class EtcdMember:
    """One etcd process on loopback, with its data directory and log file."""

    def __init__(
        self,
        name: str,
        client_port: int,
        peer_port: int,
        data_dir: Path,
        *,
        initial_cluster: str,
        cluster_token: str,
        etcd_binary: str,
        tls: ServerTLS | None = None,
        tls_port: int | None = None,
        quota_backend_bytes: int = QUOTA_BACKEND_BYTES,
        host: str = LOOPBACK,
        command_prefix: Sequence[str] = (),
        extra_flags: Sequence[str] = (),
    ) -> None:
        self.name = name
        # A member in a network namespace of its own (devcluster.partition) listens on
        # its own address there, and is launched behind `ip netns exec NAMESPACE`.
        self.host = host
        self.command_prefix = list(command_prefix)
        self.extra_flags = list(extra_flags)  # more etcd flags, after ours
        self.quota_backend_bytes = quota_backend_bytes
        self.tls = tls
        # With TLS, clients use `tls_endpoint`; the plain `endpoint` stays for the
        # harness's own probes (health, status, metrics), unless the member is TLS only:
        # then both are its one client port.
        self.endpoint = f"{host}:{client_port}"
        self.tls_endpoint = (self.endpoint if tls and tls.only
                             else f"{host}:{tls_port}" if tls and tls_port else None)
        self._scheme = "https" if tls and tls.only else "http"
        self._http = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),
            urllib.request.HTTPSHandler(context=tls.probe_context()),
        ) if tls and tls.only else _LOOPBACK_HTTP
        self.client_port = client_port
        self.peer_port = peer_port
        self.data_dir = data_dir
        self.log_file = data_dir.parent / "etcd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False
        self._initial_cluster = initial_cluster
        self._cluster_token = cluster_token
        self._etcd_binary = etcd_binary

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.is_running else "stopped"
        return f"EtcdMember({self.name!r}, {self.endpoint}, {state})"

    @property
    def client_url(self) -> str:
        """The member's client URL, ``http://127.0.0.1:PORT`` (https:// if TLS only)."""
        return f"{self._scheme}://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        """The member's raft peer URL."""
        return f"{self._scheme}://{self.host}:{self.peer_port}"

    @property
    def is_running(self) -> bool:
        """True while the process exists and has not exited (a paused member is running)."""
        return self.process is not None and self.process.poll() is None

    @property
    def has_data(self) -> bool:
        """True once etcd has written its member state to the data directory."""
        return (self.data_dir / "member").is_dir()

    def start(self) -> None:
        """Launch the process; a member with existing data rejoins with state ``existing``.

        Returns once the process is spawned; use ``EtcdCluster.wait_healthy`` to
        wait until it serves.
        """
        if self.is_running:
            raise RuntimeError(f"etcd member {self.name} is already running")
        state = "existing" if self.has_data else "new"
        # 0700: etcd warns about (and a shared machine should not get) anything wider.
        self.data_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                _die_with_parent_prefix() + self.command_prefix + self._command(state),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_child_environment(),
            )
        self.paused = False

    def _command(self, initial_cluster_state: str) -> list[str]:
        return self._base_command(initial_cluster_state) + self._tls_flags() + self.extra_flags

    def _tls_flags(self) -> list[str]:
        if not (self.tls and self.tls_endpoint):
            return []
        if self.tls.only:
            return [
                "--cert-file", self.tls.cert_file, "--key-file", self.tls.key_file,
                "--trusted-ca-file", self.tls.ca_file, "--client-cert-auth",
                "--peer-cert-file", self.tls.cert_file, "--peer-key-file", self.tls.key_file,
                "--peer-trusted-ca-file", self.tls.ca_file, "--peer-client-cert-auth",
            ]  # fmt: skip
        flags = [
            "--listen-client-urls", f"{self.client_url},https://{self.tls_endpoint}",
            "--advertise-client-urls", f"https://{self.tls_endpoint}",
            "--cert-file", self.tls.cert_file, "--key-file", self.tls.key_file,
            "--trusted-ca-file", self.tls.ca_file,
        ]  # fmt: skip
        return flags + (["--client-cert-auth"] if self.tls.client_cert_auth else [])

    def _base_command(self, initial_cluster_state: str) -> list[str]:
        return [
            self._etcd_binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self._initial_cluster,
            "--initial-cluster-token", self._cluster_token,
            "--initial-cluster-state", initial_cluster_state,
            "--logger", "zap",
            "--log-outputs", str(self.log_file),
            "--heartbeat-interval", str(HEARTBEAT_INTERVAL_MS),
            "--election-timeout", str(ELECTION_TIMEOUT_MS),
            "--quota-backend-bytes", str(self.quota_backend_bytes),
            "--auto-compaction-retention", AUTO_COMPACTION_RETENTION,
            "--snapshot-count", str(SNAPSHOT_COUNT),
        ]  # fmt: skip

    def kill(self) -> None:
        """SIGKILL the process and reap it, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_GRACE_SECONDS)
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP the process: it keeps its sockets but answers nothing, like a hung node."""
        process = self._require_running()
        process.send_signal(signal.SIGSTOP)
        self.paused = True
        # A group stop reaches every thread of a Go process a moment later, and a
        # thread may still answer one request meanwhile: wait until it is stopped.
        deadline = time.monotonic() + 2.0
        while _process_state(process.pid) not in ("T", None) and time.monotonic() < deadline:
            time.sleep(0.001)

    def resume(self) -> None:
        """SIGCONT a paused process."""
        self._require_running().send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM, then SIGKILL if the process has not exited within ``grace`` seconds."""
        self._terminate()
        self._reap(time.monotonic() + grace)

    def _terminate(self) -> None:
        if not self.is_running:
            return
        if self.paused:
            self.resume()  # a stopped process would hold SIGTERM pending forever
        assert self.process is not None
        self.process.terminate()

    def _reap(self, deadline: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
        self.paused = False

    def _require_running(self) -> subprocess.Popen[bytes]:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"etcd member {self.name} is not running")
        return self.process

    def serves_peers(self) -> bool:
        """True once the member answers on its raft peer port (before it has a leader)."""
        request = urllib.request.Request(self.peer_url + "/version")
        try:
            with self._http.open(request, timeout=_PEER_PROBE_TIMEOUT_SECONDS):
                return True
        except OSError:
            return False

    def is_healthy(self) -> bool:
        """True if ``GET /health`` answers ``{"health": "true"}`` (needs a leader and quorum)."""
        body = self._request("GET", "/health")
        return body is not None and body.get("health") == "true"

    def version(self) -> str | None:
        """The etcd server version the member reports on ``GET /version``, or None if it does not answer."""
        body = self._request("GET", "/version")
        version = body.get("etcdserver") if body is not None else None
        return version if isinstance(version, str) else None

    def status(self) -> dict[str, Any] | None:
        """The member's maintenance status from etcd's JSON gateway, or None if it does not answer.

        Integers such as ``leader`` and ``header.member_id`` arrive as decimal
        strings, and zero-valued fields are omitted (``leader`` is absent while
        the member knows no leader).
        """
        return self._request("POST", "/v3/maintenance/status", b"{}")

    def _request(self, method: str, path: str, body: bytes | None = None) -> dict[str, Any] | None:
        request = urllib.request.Request(self.client_url + path, data=body, method=method)
        try:
            with self._http.open(request, timeout=_HTTP_TIMEOUT_SECONDS) as response:
                decoded = json.loads(response.read())
        except (OSError, ValueError):  # refused, timed out, HTTP error, or not JSON
            return None
        return decoded if isinstance(decoded, dict) else None

    def connected_peers(self) -> int | None:
        """How many raft peers this member holds an active connection to, or None if unknown.

        Read from the ``etcd_network_active_peers`` gauges of its Prometheus metrics.
        """
        request = urllib.request.Request(self.client_url + "/metrics")
        try:
            with self._http.open(request, timeout=_HTTP_TIMEOUT_SECONDS) as response:
                text = response.read().decode()
        except OSError:
            return None
        return sum(
            int(float(line.rsplit(" ", 1)[1]))
            for line in text.splitlines()
            if line.startswith("etcd_network_active_peers{")
        )

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of the member's log, for error messages."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return f"(no log at {self.log_file})"
        return "\n".join(text.splitlines()[-lines:])


class EtcdCluster:
    """A group of etcd members on loopback, started together on free ports.

    Usable as a context manager: ``with EtcdCluster(3) as cluster: ...`` starts
    the members and stops them on exit. Without ``base_dir`` a temporary
    directory is created and removed by ``stop()``; a given ``base_dir`` is
    kept, and members whose data is already there restart from it.
    `quota_backend_bytes` is each member's backend quota: past it etcd raises its NOSPACE
    alarm and refuses writes (a tiny one lets tests reach that state quickly).
    """

    def __init__(self, size: int, base_dir: Path | None = None, name_prefix: str = "m",
                 tls: ServerTLS | None = None,
                 quota_backend_bytes: int = QUOTA_BACKEND_BYTES) -> None:
        self.tls = tls
        self.quota_backend_bytes = quota_backend_bytes
        if size < 1:
            raise ValueError(f"an etcd cluster needs at least one member, not {size}")
        self.size = size
        self.name_prefix = name_prefix
        # Absolute, so member paths stay valid if the caller changes directory.
        self.base_dir = Path(base_dir).absolute() if base_dir is not None else None
        self.members: list[EtcdMember] = []
        self._owns_base_dir = False

    def __repr__(self) -> str:
        return f"EtcdCluster({self.members!r})"

    def __enter__(self) -> Self:
        if not any(member.is_running for member in self.members):
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def endpoints(self) -> list[str]:
        """Client endpoints, ``"127.0.0.1:PORT"``, in member order."""
        return [member.endpoint for member in self.members]

    @property
    def tls_endpoints(self) -> list[str]:
        """TLS client endpoints, ``"127.0.0.1:PORT"`` (empty without TLS)."""
        return [m.tls_endpoint for m in self.members if m.tls_endpoint]

    def start(self, timeout: float = 30) -> Self:
        """Launch every member and wait until all are healthy under one leader.

        Retries from scratch if a port picked as free was taken in the
        meantime. On any failure the members are stopped and the error names
        the member and the tail of its log.
        """
        if any(member.is_running for member in self.members):
            raise RuntimeError("etcd cluster is already started")
        deadline = time.monotonic() + timeout
        etcd_binary = find_etcd_binary()
        if self.base_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="ipam-etcd-"))
            self._owns_base_dir = True
        names = [f"{self.name_prefix}{index}" for index in range(self.size)]
        restarting = [name for name in names if (self.base_dir / name / "data" / "member").is_dir()]
        if restarting and self.size > 1:
            # Stored membership pins the old peer ports; new random ones cannot rejoin.
            raise EtcdStartError(
                f"{self.base_dir} already holds data for {restarting}; only a single "
                "member can restart from existing data on new ports"
            )
        try:
            for attempt in range(1, _START_ATTEMPTS + 1):
                try:
                    self._launch(etcd_binary, names, set(restarting), deadline)
                    self._wait_started(deadline)
                    return self
                except _PortCollision:
                    self._stop_members()
                    if attempt == _START_ATTEMPTS:
                        raise
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")

    def _launch(self, etcd_binary: str, names: list[str], keep: set[str], deadline: float) -> None:
        assert self.base_dir is not None
        # A new member needs an empty data dir: leftovers from a failed attempt
        # would make etcd believe it had already joined some other cluster.
        for name in names:
            if name not in keep:
                shutil.rmtree(self.base_dir / name, ignore_errors=True)
        extra_tls_port = self.tls is not None and not self.tls.only
        ports = _free_loopback_ports((3 if extra_tls_port else 2) * self.size)
        client_ports, peer_ports = ports[: self.size], ports[self.size : 2 * self.size]
        tls_ports: list[int | None] = list(ports[2 * self.size :]) or [None] * self.size
        scheme = "https" if self.tls and self.tls.only else "http"
        initial_cluster = ",".join(
            f"{name}={scheme}://{LOOPBACK}:{port}"
            for name, port in zip(names, peer_ports, strict=True)
        )
        token = f"ipam-{uuid.uuid4().hex}"
        self.members = [
            EtcdMember(
                name,
                client_port,
                peer_port,
                self.base_dir / name / "data",
                initial_cluster=initial_cluster,
                cluster_token=token,
                etcd_binary=etcd_binary,
                tls=self.tls,
                tls_port=tls_port,
                quota_backend_bytes=self.quota_backend_bytes,
            )
            for name, client_port, peer_port, tls_port in zip(
                names, client_ports, peer_ports, tls_ports, strict=True
            )
        ]
        # One at a time: a new member first asks every peer whose port is open
        # whether it already joined, and waits a full second for each peer
        # that has opened its port but is itself still asking. Started together,
        # three members lose two seconds that way; started in turn, a few ms.
        for member in self.members:
            member.start()
            while not member.serves_peers():
                if not member.is_running:
                    self._raise_exited(member)
                if time.monotonic() >= deadline:
                    raise EtcdStartError(f"etcd member {member.name} never served its peer port")
                time.sleep(_POLL_SECONDS)

    def _wait_started(self, deadline: float) -> None:
        while True:
            for member in self.members:
                if not member.is_running:
                    self._raise_exited(member)
            if self._leader_if_healthy() is not None:
                return
            if time.monotonic() >= deadline:
                raise EtcdStartError(f"etcd cluster not healthy in time: {self._describe()}")
            time.sleep(_POLL_SECONDS)

    def _raise_exited(self, member: EtcdMember) -> None:
        assert member.process is not None
        tail = member.log_tail()
        if "address already in use" in tail:
            raise _PortCollision(f"etcd member {member.name}: port taken before bind")
        raise EtcdStartError(
            f"etcd member {member.name} exited with code {member.process.returncode} "
            f"while starting; last lines of {member.log_file}:\n{tail}"
        )

    def leader_index(self) -> int | None:
        """Index in ``members`` of the member that reports itself leader, or None.

        Only running, unpaused members are asked. If two claim leadership (an
        old leader not yet told it was deposed), the higher raft term wins.
        """
        claims = self._leader_claims()
        return claims[0] if claims else None

    def _leader_claims(self) -> list[int]:
        """Indexes of members reporting themselves leader, highest raft term first."""
        claims = []
        for index, status in self._statuses().items():
            member_id = status.get("header", {}).get("member_id")
            if member_id is not None and status.get("leader") == member_id:
                term = status.get("raftTerm") or status["header"].get("raft_term", 0)
                claims.append((int(term), index))
        return [index for _, index in sorted(claims, reverse=True)]

    def wait_healthy(self, timeout: float = 30) -> int:
        """Wait until every running, unpaused member is healthy and all follow one of them.

        Members that were killed or paused are not waited for. Returns the
        leader's index; raises TimeoutError with each member's state otherwise.
        """
        deadline = time.monotonic() + timeout
        while True:
            leader = self._leader_if_healthy()
            if leader is not None:
                return leader
            if time.monotonic() >= deadline:
                raise TimeoutError(f"etcd cluster not healthy in {timeout}s: {self._describe()}")
            time.sleep(_POLL_SECONDS)

    def _leader_if_healthy(self) -> int | None:
        reachable = self._reachable()
        if not reachable or not all(member.is_healthy() for member in reachable):
            return None
        statuses = self._statuses()
        if len(statuses) != len(reachable):
            return None
        followed = {status.get("leader") for status in statuses.values()}
        if len(followed) != 1:
            return None
        (leader_id,) = followed
        for index, status in statuses.items():
            if status.get("header", {}).get("member_id") == leader_id:
                return index
        return None  # everyone still follows a member that is gone or paused

    def _reachable(self) -> list[EtcdMember]:
        return [member for member in self.members if member.is_running and not member.paused]

    def _statuses(self) -> dict[int, dict[str, Any]]:
        statuses = {}
        for index, member in enumerate(self.members):
            if member.is_running and not member.paused:
                status = member.status()
                if status is not None:
                    statuses[index] = status
        return statuses

    def _describe(self) -> str:
        return ", ".join(
            f"{member.name}@{member.endpoint}="
            + ("paused" if member.paused else "healthy" if member.is_healthy() else "unhealthy")
            if member.is_running
            else f"{member.name}=exited (log {member.log_file})"
            for member in self.members
        )

    def stop(self) -> None:
        """Stop every member (SIGTERM, SIGKILL after 5 s) and remove the directory if ours.

        Paused members are resumed first so they can act on SIGTERM; followers
        stop before the leader. Safe to call more than once.
        """
        self._stop_members()
        if self._owns_base_dir and self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None
            self._owns_base_dir = False

    def _stop_members(self) -> None:
        # etcd (3.4 and 3.5 alike) answers SIGTERM on a leader by handing leadership to the
        # peer it believes connected and waiting up to ~6 s for the hand-over.
        # If that peer is stopping too, the wait runs out and we would SIGKILL.
        # So: followers first, then the leader once it sees no peer connected,
        # which makes it skip the hand-over and exit at once.
        for member in self.members:
            if member.paused and member.is_running:
                member.resume()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        leaders = self._leader_claims()
        while len(leaders) > 1 and time.monotonic() < deadline:
            time.sleep(_POLL_SECONDS)  # a resumed ex-leader has not yet heard of its successor
            leaders = self._leader_claims()
        followers = [m for index, m in enumerate(self.members) if index not in leaders]
        self._terminate_and_reap(followers)
        for index in leaders:
            leader = self.members[index]
            while leader.is_running and leader.connected_peers() and time.monotonic() < deadline:
                time.sleep(_POLL_SECONDS)
        self._terminate_and_reap([self.members[index] for index in leaders])

    @staticmethod
    def _terminate_and_reap(members: list[EtcdMember]) -> None:
        for member in members:
            member._terminate()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for member in members:
            member._reap(deadline)
