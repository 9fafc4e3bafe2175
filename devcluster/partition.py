"""Real network partitions: etcd members and gateways each in a namespace, links to cut.

The fault tests that pause or kill a member (tests/allocator/test_failover.py) show a
process that stops; a partition is different: every process keeps running, and their
packets vanish. A cut member goes on believing it leads, or starts elections nobody
hears; a cut gateway's TCP connections neither fail nor answer. Only a real network
shows what the store's deadlines and ejection, and the gateway's readiness gate, do
then (issue 15).

Built on devcluster.netlab, in one lab namespace of unique names:

    etcd network  ETCD_NET.0/24 (bridge 1)     service network  SERVICE_NET.0/24 (bridge 2)
      m0 .1   m1 .2   m2 .3   (etcd members)     gateway .10 (its other leg)
      gateway .10                                 load client .100
      the lab itself .254 (the harness's probes)

Each member and each gateway is a namespace of its own; the load client is one more.
`cut(i)` takes member i's link to the etcd network down at the bridge: it is isolated
from the other members, the gateways and the harness, and none of them is told.
`cut_gateway(g)` does the same to a gateway's etcd leg, while its clients still reach
it on the service network, as a load balancer would. `heal` brings a link back up.

Slow, not cut: `slow(i, 200)` delays every packet of member i's link 200 ms each way
(tc netem, or where the kernel has none a relay process: `NetLab.delay_link`), and
`slow_disk(i, 100)` makes each of its fsyncs wait 100 ms: strace attached to the
member injects the delay before every fdatasync/fsync (`fsync_delay_available()`
says whether strace and ptrace are there). A member paused (SIGSTOP) answers nothing;
a slow one answers, late, and the store must tell the two apart.

    with PartitionLab(tmp_path) as lab:
        gateway = lab.start_gateway(prefix, admin_secret)
        lab.cut(lab.leader())
        ...
        lab.heal_all()
        lab.wait_healthy()

Addresses are 10.x, inside the lab's namespaces only; the host's namespace gets
nothing. Everything goes on exit, even on failure (NetLab.close). Needs root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from .etcd import EtcdCluster, EtcdMember, EtcdStartError, find_etcd_binary
from .netlab import Client, NetLab

ETCD_NET = "10.77.1"  # members .1, .2, ...; gateways .10, .11, ...; the lab .254
SERVICE_NET = "10.77.2"  # gateways .10, .11, ...; the load client .100
CLIENT_PORT, PEER_PORT = 2379, 2380  # one address per member: the default ports do
GATEWAY_PORT = 8080
# Raft's pre-vote (etcd 3.5's default, off in 3.4): a member cut off keeps campaigning,
# its term climbing; healed without pre-vote, that term deposes the leader and bookings
# stop for an election (measured: 1.2-1.7 s, right after the heal of a follower).
ETCD_FLAGS = ("--pre-vote",)
START_TIMEOUT = 30.0  # seconds for the cluster, or a gateway, to come up
_POLL_SECONDS = 0.05

ROOT = Path(__file__).resolve().parent.parent
# The syscalls etcd makes durable with: fdatasync for its WAL and bbolt's file on Linux,
# fsync for a new WAL segment's directory.
FSYNC_CALLS = "fdatasync,fsync"
ATTACH_SECONDS = 10.0  # strace attaching to every thread of a member

# The harness's HTTP never goes through a proxy of the environment.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Gateway:
    """An `ipam serve` process in a namespace of its own, on both networks."""

    index: int
    host: Client  # its namespace and its etcd leg (what `cut_gateway` takes down)
    service: Client  # its leg on the service network
    url: str  # as the load client reaches it
    process: subprocess.Popen[bytes]
    log_file: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return f"(no log at {self.log_file})"
        return "\n".join(text.splitlines()[-lines:])


class PartitionLab:
    """A three-member etcd cluster, gateways and a load client, links to cut (see the
    module docstring)."""

    def __init__(self, base_dir: Path, size: int = 3, tag: str | None = None) -> None:
        self.base_dir = Path(base_dir).absolute()
        self.size = size
        self.net = NetLab(tag)
        self.etcd_bridge = self.service_bridge = ""
        self.hosts: list[Client] = []  # the members' namespaces, in member order
        self.client: Client | None = None  # the load client's namespace
        self.gateways: list[Gateway] = []
        self.cluster = EtcdCluster(size, base_dir=self.base_dir / "etcd")
        self._stracers: dict[int, subprocess.Popen[bytes]] = {}  # slow_disk's, per member

    def __enter__(self) -> Self:
        self.net.__enter__()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def endpoints(self) -> list[str]:
        """The members' client endpoints, `10.x.y.z:2379`, in member order."""
        return self.cluster.endpoints

    @property
    def client_namespace(self) -> str:
        assert self.client is not None
        return self.client.namespace

    # -- building -------------------------------------------------------------------------

    def _build(self) -> None:
        net = self.net
        self.etcd_bridge = net.add_bridge()
        self.service_bridge = net.add_bridge()
        # The lab itself is on both networks: the harness's probes (health, leader, the
        # gateways' /readyz) run in its thread.
        net.exec_in(net.namespace, ["ip", "addr", "add", f"{ETCD_NET}.254/24", "dev",
                                    self.etcd_bridge])
        net.exec_in(net.namespace, ["ip", "addr", "add", f"{SERVICE_NET}.254/24", "dev",
                                    self.service_bridge])
        self.hosts = [net.add_host(self.etcd_bridge, f"{ETCD_NET}.{i + 1}/24")
                      for i in range(self.size)]
        self.client = net.add_host(self.service_bridge, f"{SERVICE_NET}.100/24")
        net.call(self._start_cluster)

    def _start_cluster(self) -> None:
        """Launch the members, each in its namespace, one at a time (as EtcdCluster does:
        a new member waits a second for each peer still asking); in the lab's thread, so
        that the harness's probes reach them."""
        binary = find_etcd_binary()
        names = [f"m{i}" for i in range(self.size)]
        addresses = [f"{ETCD_NET}.{i + 1}" for i in range(self.size)]
        initial_cluster = ",".join(f"{name}=http://{address}:{PEER_PORT}"
                                   for name, address in zip(names, addresses, strict=True))
        token = f"ipam-{uuid.uuid4().hex}"
        assert self.cluster.base_dir is not None
        self.cluster.members = [
            EtcdMember(name, CLIENT_PORT, PEER_PORT, self.cluster.base_dir / name / "data",
                       initial_cluster=initial_cluster, cluster_token=token,
                       etcd_binary=binary, host=address, extra_flags=ETCD_FLAGS,
                       command_prefix=["ip", "netns", "exec", host.namespace])
            for name, address, host in zip(names, addresses, self.hosts, strict=True)]
        deadline = time.monotonic() + START_TIMEOUT
        for member in self.cluster.members:
            member.start()
            while not member.serves_peers():  # bounded by the deadline
                if not member.is_running or time.monotonic() > deadline:
                    raise EtcdStartError(f"etcd member {member.name} did not serve its peer "
                                         f"port:\n{member.log_tail()}")
                time.sleep(_POLL_SECONDS)
        self.cluster.wait_healthy(max(1.0, deadline - time.monotonic()))

    def start_gateway(self, prefix: str, admin_secret: str, *flags: str) -> Gateway:
        """`ipam serve` in a new namespace on both networks, over every member; returns
        once its /readyz says 200. `flags` are more of `ipam serve`'s."""
        index = len(self.gateways)
        host = self.net.add_host(self.etcd_bridge, f"{ETCD_NET}.{10 + index}/24")
        service = self.net.add_link(host.namespace, self.service_bridge,
                                    f"{SERVICE_NET}.{10 + index}/24")
        address = f"{SERVICE_NET}.{10 + index}"
        log_file = self.base_dir / f"gateway{index}.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "IPAM_ADMIN_SECRET_KEY": admin_secret,
               # The quota the members run with: the node measures their databases by it.
               "IPAM_ETCD_QUOTA_BACKEND_BYTES": str(self.cluster.quota_backend_bytes)}
        with open(log_file, "wb") as log:
            process = self.net.spawn_in(host.namespace, [
                sys.executable, "-m", "gateway.cli", "serve", "--host", address,
                "--port", str(GATEWAY_PORT), "--etcd-endpoints", ",".join(self.endpoints),
                "--etcd-prefix", prefix, "--log-level", "warning", *flags],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
        gateway = Gateway(index, host, service, f"http://{address}:{GATEWAY_PORT}", process,
                          log_file)
        self.gateways.append(gateway)
        self.net.call(self._wait_ready, gateway)
        return gateway

    @staticmethod
    def _wait_ready(gateway: Gateway) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while readyz(gateway.url) != 200:  # bounded by the deadline
            if gateway.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway {gateway.index} did not become ready:\n"
                                   + gateway.log_tail())
            time.sleep(_POLL_SECONDS * 2)

    # -- faults -----------------------------------------------------------------------------

    def cut(self, member: int) -> None:
        """Isolate member `member` from everything: its link goes down at the bridge."""
        self.net.set_link(self.hosts[member].lab_side, up=False)

    def heal(self, member: int) -> None:
        """Bring member `member`'s link back."""
        self.net.set_link(self.hosts[member].lab_side, up=True)

    def cut_gateway(self, gateway: Gateway) -> None:
        """Cut `gateway` from every member; its clients still reach it."""
        self.net.set_link(gateway.host.lab_side, up=False)

    def heal_gateway(self, gateway: Gateway) -> None:
        self.net.set_link(gateway.host.lab_side, up=True)

    def heal_all(self) -> None:
        """Every link up again (a test's cleanup, whatever it cut)."""
        for client in [*self.hosts, *(g.host for g in self.gateways)]:
            self.net.set_link(client.lab_side, up=True)

    def slow(self, member: int, delay_ms: float, jitter_ms: float = 0.0) -> str:
        """Delay every packet of member `member`'s link by `delay_ms` (± `jitter_ms`), each
        way: to its peers, the gateways and the harness alike. Returns how ("netem", or
        "relay" where the kernel has no netem)."""
        return self.net.delay_link(self.hosts[member], delay_ms, jitter_ms)

    def unslow(self, member: int) -> None:
        """Member `member`'s link at full speed again."""
        self.net.undelay_link(self.hosts[member])

    def unslow_all(self) -> None:
        """Every member at full speed again, links and disks (a test's cleanup)."""
        for member in range(len(self.hosts)):
            self.unslow(member)
            self.unslow_disk(member)

    def slow_disk(self, member: int, delay_ms: float) -> None:
        """Make each fdatasync/fsync of member `member` wait `delay_ms` before it runs: strace
        attaches to all its threads; returns once it has. Needs `fsync_delay_available()`.

        ptrace without seccomp stops the member at every syscall, not only the slowed
        ones (strace's --seccomp-bpf does not apply to a process it attaches to): the
        member is a little slower everywhere besides."""
        if member in self._stracers:
            raise RuntimeError(f"member {member}'s disk is slowed already")
        pid = self.cluster.members[member].process.pid  # type: ignore[union-attr]
        # Its messages go to a file: a pipe nobody reads would fill, and stop strace
        # and the member with it.
        log_file = self.base_dir / f"strace-m{member}.log"
        with open(log_file, "wb") as log:
            strace = subprocess.Popen(
                ["strace", "-f", "-qq", "-o", os.devnull, "-e", f"trace={FSYNC_CALLS}",
                 "-e", f"inject={FSYNC_CALLS}:delay_enter={int(delay_ms * 1000)}",
                 "-p", str(pid)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        self._stracers[member] = strace
        deadline = time.monotonic() + ATTACH_SECONDS
        while not _traced_by(pid, strace.pid):  # bounded by the deadline
            if strace.poll() is not None or time.monotonic() > deadline:
                self.unslow_disk(member)
                raise RuntimeError(f"strace did not attach to member {member} (pid {pid}): "
                                   + log_file.read_text(errors="replace").strip())
            time.sleep(_POLL_SECONDS / 5)

    def unslow_disk(self, member: int) -> None:
        """Detach strace from member `member`: its fsyncs run at the disk's speed again."""
        strace = self._stracers.pop(member, None)
        if strace is None:
            return
        if strace.poll() is None:
            strace.terminate()  # strace detaches from every thread, which carry on
            try:
                strace.wait(ATTACH_SECONDS)
            except subprocess.TimeoutExpired:
                strace.kill()
                strace.wait(ATTACH_SECONDS)

    # -- looking -----------------------------------------------------------------------------

    def leader(self) -> int:
        """The index of the member that leads, once the cluster is healthy."""
        return self.net.call(self.cluster.wait_healthy, START_TIMEOUT)

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> int:
        """Wait until every member is healthy under one leader (after a heal); its index."""
        return self.net.call(self.cluster.wait_healthy, timeout, timeout=timeout + 10)

    def call(self, fn: Any, *args: Any, timeout: float = 120.0) -> Any:
        """Run `fn(*args)` in the lab's thread (it reaches both networks)."""
        return self.net.call(fn, *args, timeout=timeout)

    def call_client(self, fn: Any, *args: Any, timeout: float = 120.0) -> Any:
        """Run `fn(*args)` in the load client's namespace (it reaches the gateways only)."""
        return self.net.call_in(self.client_namespace, fn, *args, timeout=timeout)

    # -- tearing down ------------------------------------------------------------------------

    def close(self) -> None:
        """Gateways first, then the members (from the lab's thread), then the namespaces."""
        try:
            # A member behind a relay is cut off once the relay stops: restore first.
            self.unslow_all()
            self.net.stop_processes()
            if self.cluster.members:
                self.heal_all()  # a member cut off would wait for a hand-over in vain
                self.net.call(self.cluster.stop, timeout=60)
        finally:
            self.net.close()


def fsync_delay_available() -> str | None:
    """None when `slow_disk` can work here (strace installed, ptrace allowed), else why not."""
    if shutil.which("strace") is None:
        return "strace is not installed (apt-get install strace)"
    sleeper = subprocess.Popen(["sleep", "30"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        strace = subprocess.Popen(["strace", "-qq", "-o", os.devnull, "-e", "trace=fsync",
                                   "-e", "inject=fsync:delay_enter=1", "-p",
                                   str(sleeper.pid)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + ATTACH_SECONDS
        while not _traced_by(sleeper.pid, strace.pid):  # bounded by the deadline
            if strace.poll() is not None or time.monotonic() > deadline:
                strace.kill()
                _, err = strace.communicate()
                return f"strace cannot attach here: {err.decode(errors='replace').strip()}"
            time.sleep(_POLL_SECONDS / 5)
        strace.terminate()
        strace.communicate(timeout=ATTACH_SECONDS)
        return None
    finally:
        sleeper.kill()
        sleeper.wait()


def _traced_by(pid: int, tracer: int) -> bool:
    """Every thread of process `pid` is traced by `tracer` (False: not yet, or gone)."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
        for thread in threads:
            with open(f"/proc/{pid}/task/{thread}/status") as status:
                line = next(x for x in status if x.startswith("TracerPid:"))
                if int(line.split()[1]) != tracer:
                    return False
    except (OSError, StopIteration):
        return False
    return bool(threads)


def readyz(url: str, timeout: float = 2.0) -> int:
    """The status of `url`/readyz (0: no answer); from the caller's namespace."""
    try:
        with _HTTP.open(url + "/readyz", timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0
