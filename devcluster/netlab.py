"""Network namespaces for the DHCP and DNS tests: a lab for the stack, clients beside it.

The host's namespace gets nothing: the whole stack (etcd, gateway, agent) runs in a
lab namespace of its own, each client in another, joined by veth pairs; unique
names per lab, and everything is removed on exit, even on failure.

    with NetLab() as lab:
        bridge = lab.add_bridge()                             # one L2 segment in the lab
        client = lab.add_client("02:00:00:00:00:01", bridge)  # veth: lab side, client side
        lab.call(start_etcd_and_gateway)      # runs in a thread inside the lab namespace
        lab.exec_in(lab.namespace, ["ip", "addr", "add", "10.0.0.254/24", "dev", bridge])
        lab.exec_in(client.namespace, ["dhclient", ...])

`call` runs Python in a thread that entered the lab namespace (setns): sockets it
opens, threads and processes it starts, all live in the lab. Needs root and
iproute2; `available()` says whether this machine can.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

CLONE_NEWNET = 0x40000000
COMMAND_TIMEOUT = 30.0

T = TypeVar("T")


def available() -> str | None:
    """None when namespaces can be made here, else why not (for a skip reason)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    name = f"ipam-probe-{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT, check=False)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=COMMAND_TIMEOUT,
                   check=False)
    return None


def _enter(namespace: str) -> None:
    """Move the calling thread into `namespace` (network only)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{namespace}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {namespace}: {os.strerror(err)}")
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Client:
    """A client namespace joined to the lab by a veth pair."""

    namespace: str
    lab_side: str  # interface name in the lab namespace
    client_side: str  # interface name in the client namespace
    mac: str


class NetLab:
    """A lab namespace and its clients (see the module docstring)."""

    def __init__(self, tag: str | None = None) -> None:
        self.tag = tag or uuid.uuid4().hex[:6]
        self.namespace = f"ipam-lab-{self.tag}"
        self.clients: list[Client] = []
        self._bridges: list[str] = []
        self._made: list[str] = []
        self._pool: ThreadPoolExecutor | None = None
        self._processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Self:
        try:
            self._netns_add(self.namespace)
            self.exec_in(self.namespace, ["ip", "link", "set", "lo", "up"])
            self._pool = ThreadPoolExecutor(1, thread_name_prefix=self.namespace,
                                            initializer=_enter, initargs=(self.namespace,))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- building -----------------------------------------------------------------------

    def _netns_add(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._made.append(name)

    def add_bridge(self) -> str:
        """A bridge in the lab namespace: one L2 segment, as a Private Network is."""
        name = f"b{len(self._bridges) + 1}{self.tag}"
        self.exec_in(self.namespace, ["ip", "link", "add", name, "type", "bridge"])
        self.exec_in(self.namespace, ["ip", "link", "set", name, "up"])
        self._bridges.append(name)
        return name

    def add_client(self, mac: str, bridge: str | None = None) -> Client:
        """A new client namespace with one veth pair to the lab (its lab side on `bridge`,
        when given); the client side has `mac`."""
        n = len(self.clients) + 1
        namespace = f"ipam-c{n}-{self.tag}"
        lab_side, client_side = f"l{n}{self.tag}", f"c{n}{self.tag}"
        self._netns_add(namespace)
        _run(["ip", "link", "add", lab_side, "netns", self.namespace, "type", "veth",
              "peer", "name", client_side, "netns", namespace])
        self.exec_in(namespace, ["ip", "link", "set", "lo", "up"])
        self.exec_in(namespace, ["ip", "link", "set", client_side, "address", mac])
        self.exec_in(namespace, ["ip", "link", "set", client_side, "up"])
        if bridge is not None:
            self.exec_in(self.namespace, ["ip", "link", "set", lab_side, "master", bridge])
        self.exec_in(self.namespace, ["ip", "link", "set", lab_side, "up"])
        client = Client(namespace, lab_side, client_side, mac)
        self.clients.append(client)
        return client

    # -- running ------------------------------------------------------------------------

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 120.0) -> T:
        """Run `fn(*args)` in the lab namespace's thread and return its result."""
        assert self._pool is not None
        return self._pool.submit(fn, *args).result(timeout)

    def exec_in(self, namespace: str, command: Sequence[str],
                timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside `namespace`; raises on failure."""
        return _run(["ip", "netns", "exec", namespace, *command], timeout)

    def spawn_in(self, namespace: str, command: Sequence[str], **popen: Any
                 ) -> subprocess.Popen[bytes]:
        """Start a long-running command inside `namespace`; stopped when the lab closes."""
        proc = subprocess.Popen(["ip", "netns", "exec", namespace, *command], **popen)
        self._processes.append(proc)
        return proc

    # -- tearing down ---------------------------------------------------------------------

    def stop_processes(self) -> None:
        """Stop (SIGTERM, then SIGKILL after 5 s) every command started with `spawn_in`."""
        for proc in self._processes:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self._processes.clear()

    def close(self) -> None:
        """Stop what was started and delete every namespace (their veths go with them)."""
        self.stop_processes()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        for name in reversed(self._made):
            # Processes still inside would keep a namespace alive unnamed: kill them first.
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                                  text=True, timeout=COMMAND_TIMEOUT, check=False).stdout.split()
            for pid in pids:
                if int(pid) != os.getpid():
                    try:
                        os.kill(int(pid), 9)
                    except ProcessLookupError:
                        pass
            subprocess.run(["ip", "netns", "del", name], capture_output=True,
                           timeout=COMMAND_TIMEOUT, check=False)
        self._made.clear()


def _run(command: Sequence[str], timeout: float = COMMAND_TIMEOUT
         ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip() or done.returncode}")
    return done
