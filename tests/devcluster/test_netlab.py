"""The namespace lab: its own stack namespace, clients on a bridge, all removed on exit."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from devcluster import netlab
from devcluster.netlab import NetLab

why_not = netlab.available()
pytestmark = pytest.mark.skipif(why_not is not None, reason=str(why_not))


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_clients_reach_the_lab_and_the_host_gets_no_address() -> None:
    host_addresses = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True,
                                    check=True).stdout
    with NetLab() as lab:
        bridge = lab.add_bridge()
        client = lab.add_client("02:00:00:99:00:01", bridge)
        lab.exec_in(lab.namespace, ["ip", "addr", "add", "10.99.0.254/24", "dev", bridge])
        lab.exec_in(client.namespace, ["ip", "addr", "add", "10.99.0.5/24", "dev",
                                       client.client_side])
        # A socket opened by `call` lives in the lab: it binds the lab's address, and the
        # client reaches it through its veth and the bridge.
        def listen() -> socket.socket:
            s = socket.socket()
            s.bind(("10.99.0.254", 0))
            s.listen()
            return s
        server = lab.call(listen)
        port = server.getsockname()[1]
        lab.exec_in(client.namespace, [sys.executable, "-c", "import socket; socket."
                                       f"create_connection(('10.99.0.254', {port}), 5)"])
        server.close()
        with pytest.raises(OSError), socket.socket() as s:  # not in the host's namespace
            s.bind(("10.99.0.254", 0))
        assert {lab.namespace, client.namespace} <= _namespaces()
        names = {lab.namespace, client.namespace}
    assert not names & _namespaces()
    assert subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True,
                          check=True).stdout == host_addresses


def test_every_namespace_is_removed_even_when_the_test_fails() -> None:
    with pytest.raises(RuntimeError), NetLab() as lab:
        lab.add_client("02:00:00:99:00:02")
        names = {lab.namespace, *(c.namespace for c in lab.clients)}
        raise RuntimeError("the test failed")
    assert not names & _namespaces()
