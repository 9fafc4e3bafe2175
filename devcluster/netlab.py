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
opens, threads and processes it starts, all live in the lab; `call_in` does the same in
any namespace of the lab. Needs root and iproute2; `available()` says whether this
machine can.

Hosts with addresses, for a stack split over namespaces (devcluster.partition): each
`add_host` is a namespace with one veth to a bridge and a 10.x address on its side,
`add_link` gives an existing namespace one more leg on another bridge, and
`set_link(lab_side, up=False)` cuts a leg at the bridge (the host keeps its address and
routes, and its packets vanish: a real partition, not an error it could see).

A slow link, not a cut one: `delay_link` makes every packet crossing a veth wait, either
way (issue 15's 200 ms). With tc's netem qdisc when the kernel has it (sch_netem, a
module minimal kernels leave out: `netem_available()`); otherwise with a relay: the
veth's lab side leaves its bridge, a new veth joins it, and a process of the lab
(`python -m devcluster.netlab relay`) passes every frame between the two after the
delay, over packet sockets. It carries the kernel's segmentation offload along
(PACKET_VNET_HDR), so a TCP stream crosses it as it crosses the veth; it costs a
Python thread per direction (ample for etcd's traffic, not for a bulk benchmark).
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

CLONE_NEWNET = 0x40000000
COMMAND_TIMEOUT = 30.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Packet sockets (linux/if_packet.h, linux/if_ether.h).
ETH_P_ALL, SOL_PACKET, PACKET_VNET_HDR, PACKET_OUTGOING = 0x0003, 263, 15, 4
RELAY_READY_SECONDS = 10.0

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


def netem_available() -> str | None:
    """None when tc's netem qdisc can delay a link here, else why not (for a skip reason).

    Asked of the kernel itself, on a veth in a namespace of its own: only adding the
    qdisc tells whether sch_netem is built in or loadable."""
    why = available()
    if why is not None:
        return why
    if shutil.which("tc") is None:
        return "tc (iproute2) is not installed"
    name = f"ipam-netem-{uuid.uuid4().hex[:6]}"
    try:
        _run(["ip", "netns", "add", name])
        _run(["ip", "-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1"])
        added = subprocess.run(["tc", "-n", name, "qdisc", "add", "dev", "v0", "root", "netem",
                                "delay", "1ms"], capture_output=True, text=True,
                               timeout=COMMAND_TIMEOUT, check=False)
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True,
                       timeout=COMMAND_TIMEOUT, check=False)
    if added.returncode != 0:
        return (f"tc netem is unavailable (kernel {os.uname().release} has no sch_netem): "
                f"{added.stderr.strip() or added.returncode}")
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
        self._pools: dict[str, ThreadPoolExecutor] = {}  # call_in's, one per namespace
        self._veths = 0
        self._processes: list[subprocess.Popen[bytes]] = []
        self._bridge_of: dict[str, str] = {}  # a veth's lab side -> its bridge
        self._relays: dict[str, tuple[subprocess.Popen[bytes], str]] = {}  # lab side ->
        # (its delay relay, the relay's own veth end on the bridge)
        self._netem: set[str] = set()  # the lab sides of the links netem delays

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
        namespace = f"ipam-c{len(self.clients) + 1}-{self.tag}"
        self._netns_add(namespace)
        self.exec_in(namespace, ["ip", "link", "set", "lo", "up"])
        client = self._veth(namespace, mac, bridge)
        self.clients.append(client)
        return client

    def add_host(self, bridge: str, address: str) -> Client:
        """A new namespace on `bridge` with `address` (CIDR, e.g. "10.77.1.1/24") on its
        side of the veth: a machine of the lab's network (an etcd member, a gateway)."""
        client = self.add_client(self._mac(), bridge)
        self.exec_in(client.namespace, ["ip", "addr", "add", address, "dev",
                                        client.client_side])
        return client

    def add_link(self, namespace: str, bridge: str, address: str) -> Client:
        """One more veth for an existing `namespace`, to `bridge`, with `address` on its
        side: a host on two networks (a gateway reached by its clients on one, reaching
        etcd on the other)."""
        link = self._veth(namespace, self._mac(), bridge)
        self.exec_in(namespace, ["ip", "addr", "add", address, "dev", link.client_side])
        return link

    def _mac(self) -> str:
        # Locally administered, unique in the lab (the next veth's number).
        return f"02:00:00:00:{(self._veths + 1) >> 8 & 0xFF:02x}:{(self._veths + 1) & 0xFF:02x}"

    def _veth(self, namespace: str, mac: str, bridge: str | None) -> Client:
        self._veths += 1
        n = self._veths
        lab_side, client_side = f"l{n}{self.tag}", f"c{n}{self.tag}"
        _run(["ip", "link", "add", lab_side, "netns", self.namespace, "type", "veth",
              "peer", "name", client_side, "netns", namespace])
        self.exec_in(namespace, ["ip", "link", "set", client_side, "address", mac])
        self.exec_in(namespace, ["ip", "link", "set", client_side, "up"])
        if bridge is not None:
            self.exec_in(self.namespace, ["ip", "link", "set", lab_side, "master", bridge])
            self._bridge_of[lab_side] = bridge
        self.exec_in(self.namespace, ["ip", "link", "set", lab_side, "up"])
        return Client(namespace, lab_side, client_side, mac)

    def set_link(self, lab_side: str, up: bool) -> None:
        """Take a veth's lab side up or down: down, nothing crosses it either way, and
        neither end is told (its peer keeps its address and routes; TCP just waits)."""
        self.exec_in(self.namespace, ["ip", "link", "set", lab_side, "up" if up else "down"])

    def delay_link(self, link: Client, delay_ms: float, jitter_ms: float = 0.0,
                   relay: bool | None = None) -> str:
        """Every packet crossing `link` (a veth on a bridge) waits `delay_ms` (± `jitter_ms`),
        each way: a round trip through it costs twice `delay_ms`. With netem on both ends
        of the veth (a qdisc only delays what leaves its device), or, where the kernel has
        no netem or `relay` says so, with a relay process (see the module docstring).
        Replaces any delay already set; returns how: "netem" or "relay"."""
        self.undelay_link(link)
        if relay is None:
            relay = netem_available() is not None
        if not relay:
            netem = ["netem", "delay", f"{delay_ms:g}ms"]
            if jitter_ms:
                netem.append(f"{jitter_ms:g}ms")
            for namespace, device in ((self.namespace, link.lab_side),
                                      (link.namespace, link.client_side)):
                self.exec_in(namespace, ["tc", "qdisc", "replace", "dev", device, "root",
                                         *netem])
            self._netem.add(link.lab_side)
            return "netem"
        bridge = self._bridge_of[link.lab_side]
        self._veths += 1
        bridge_end, relay_end = f"r{self._veths}{self.tag}", f"q{self._veths}{self.tag}"
        self.exec_in(self.namespace, ["ip", "link", "add", bridge_end, "type", "veth",
                                      "peer", "name", relay_end])
        for command in (["ip", "link", "set", relay_end, "promisc", "on", "up"],
                        ["ip", "link", "set", link.lab_side, "promisc", "on"],
                        ["ip", "link", "set", link.lab_side, "nomaster"],
                        ["ip", "link", "set", bridge_end, "master", bridge, "up"]):
            self.exec_in(self.namespace, command)
        process = self.spawn_in(self.namespace, [
            sys.executable, "-m", "devcluster.netlab", "relay", link.lab_side, relay_end,
            f"{delay_ms:g}", f"{jitter_ms:g}"], cwd=ROOT, stdout=subprocess.PIPE)
        self._relays[link.lab_side] = (process, bridge_end)
        # Ready once its sockets are bound: before, frames would cross no one.
        assert process.stdout is not None
        ready = threading.Timer(RELAY_READY_SECONDS, process.kill)
        ready.start()
        try:
            line = process.stdout.readline()
        finally:
            ready.cancel()
        if line.strip() != b"relaying":
            self.undelay_link(link)
            raise RuntimeError(f"the delay relay of {link.lab_side} did not start")
        return "relay"

    def undelay_link(self, link: Client) -> None:
        """Take `link`'s delay off (both ends, or its relay); a link without one is left as
        it is."""
        relayed = self._relays.pop(link.lab_side, None)
        if relayed is not None:
            process, bridge_end = relayed
            self.exec_in(self.namespace, ["ip", "link", "del", bridge_end])
            self.exec_in(self.namespace, ["ip", "link", "set", link.lab_side, "master",
                                          self._bridge_of[link.lab_side]])
            _stop(process)
            if process.stdout is not None:
                process.stdout.close()
            self._processes.remove(process)
            return
        if link.lab_side in self._netem:
            self._netem.discard(link.lab_side)
            for namespace, device in ((self.namespace, link.lab_side),
                                      (link.namespace, link.client_side)):
                self.exec_in(namespace, ["tc", "qdisc", "del", "dev", device, "root"])

    # -- running ------------------------------------------------------------------------

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 120.0) -> T:
        """Run `fn(*args)` in the lab namespace's thread and return its result."""
        assert self._pool is not None
        return self._pool.submit(fn, *args).result(timeout)

    def call_in(self, namespace: str, fn: Callable[..., T], *args: Any,
                timeout: float = 120.0) -> T:
        """Run `fn(*args)` in a thread inside `namespace` (one of the lab's), as `call` does
        in the lab's: a load client runs its event loop there."""
        if namespace == self.namespace:
            return self.call(fn, *args, timeout=timeout)
        if namespace not in self._made:
            raise ValueError(f"{namespace} is not a namespace of this lab")
        pool = self._pools.get(namespace)
        if pool is None:
            pool = self._pools[namespace] = ThreadPoolExecutor(
                1, thread_name_prefix=namespace, initializer=_enter, initargs=(namespace,))
        return pool.submit(fn, *args).result(timeout)

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
            _stop(proc)
        self._processes.clear()
        self._relays.clear()

    def close(self) -> None:
        """Stop what was started and delete every namespace (their veths go with them)."""
        self.stop_processes()
        for pool in [self._pool, *self._pools.values()]:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None
        self._pools.clear()
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


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _run(command: Sequence[str], timeout: float = COMMAND_TIMEOUT
         ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip() or done.returncode}")
    return done


# -- the delay relay (run in the lab namespace by `delay_link`) -------------------------------


def _packet_socket(interface: str) -> socket.socket:
    """A raw packet socket on `interface`, frames with their offload header (virtio_net_hdr):
    a TCP segment the kernel left for the device to split is read and sent whole."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((interface, 0))
    return sock


def _relay_one_way(source: socket.socket, sink: socket.socket, delay: float,
                   jitter: float) -> None:
    """Frames from `source` to `sink`, each `delay` (± `jitter`) seconds later; forever."""
    due: list[tuple[float, int, bytes]] = []
    ready = threading.Condition()

    def send() -> None:
        while True:
            with ready:
                while not due or due[0][0] > time.monotonic():
                    ready.wait(due[0][0] - time.monotonic() if due else None)
                _, _, frame = heapq.heappop(due)
            try:
                sink.send(frame)
            except OSError:
                pass  # the link is down (cut): the frame is lost, as on a wire

    threading.Thread(target=send, daemon=True).start()
    for n in itertools.count():
        try:
            frame, address = source.recvfrom(1 << 17)
        except OSError:
            time.sleep(0.01)  # the link went down (cut); it comes back up with the heal
            continue
        if address[2] == PACKET_OUTGOING:
            continue  # what we sent ourselves
        wait = max(0.0, delay + (random.uniform(-jitter, jitter) if jitter else 0.0))
        with ready:
            heapq.heappush(due, (time.monotonic() + wait, n, frame))
            ready.notify()


def relay(lab_side: str, relay_end: str, delay_ms: float, jitter_ms: float) -> None:
    """Pass frames between two interfaces both ways, each delayed; prints "relaying" once
    both sockets are bound, then runs until killed."""
    one, other = _packet_socket(lab_side), _packet_socket(relay_end)
    delay, jitter = delay_ms / 1000, jitter_ms / 1000
    threading.Thread(target=_relay_one_way, args=(other, one, delay, jitter),
                     daemon=True).start()
    print("relaying", flush=True)
    _relay_one_way(one, other, delay, jitter)


if __name__ == "__main__" and sys.argv[1:2] == ["relay"]:
    relay(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
