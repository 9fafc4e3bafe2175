"""The agent follows its networks while it runs: subnets added or deleted, a network
created after it started, get or lose their DNS listener and their DHCPv6 and RAs.

Three layers: the view's network subscription against real etcd; the agent in-process
inside a lab namespace (its listeners and error paths, observed directly); and the
`ipam dhcp` process with real clients (dig, dhclient) in namespaces of their own
(tests/support/netlab_stack.py). The lab tests are skipped only where namespaces
cannot be made or the clients are not installed.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import shutil
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from allocator_support import REGION, book_in, connected, make_pn
from netlab_stack import Stack, lab_stack, wait_for
from scaleway.ipam.v1 import IpamV1API
from scaleway.ipam.v1.types import CustomResource, Source
from scaleway.vpc.v2 import VpcV2API

from allocator.contract import IPAM
from devcluster import netlab
from devcluster.etcd import EtcdCluster
from devcluster.netlab import NetLab
from netagent import agent as agent_module
from netagent.agent import DHCP6_SERVER_PORT, Agent, AgentConfig

why_not = netlab.available() or next(
    (f"{tool} is not installed" for tool in ("dhclient", "dig") if not shutil.which(tool)), None)
in_lab = pytest.mark.skipif(why_not is not None, reason=str(why_not))

SUBNET, SERVER = "10.77.0.0/24", "10.77.0.254"
NEW_SUBNET, NEW_SERVER = "10.78.0.0/24", "10.78.0.254"
SUBNET6 = "fd00:78::/64"
SERVER6 = "fd00:78::ffff:ffff:ffff:fffe"  # the IPv6 subnet's server address
MAC_A = "02:00:00:79:00:0a"
PROJECT = str(uuid.uuid4())
QUICK_RETRY = 0.05  # RELISTEN_FIRST in the in-process tests: their retries come at once


@pytest.fixture
def stack(tmp_path: Path):
    with lab_stack(tmp_path) as s:
        yield s


# -- the view tells of network changes (real etcd) -----------------------------------------


async def test_the_view_tells_of_a_network_change_and_not_of_an_ip_change(ipam, project):
    pn = await make_pn(ipam, project, "10.31.0.0/24")
    view = await ipam.network_view([pn.id])
    try:
        since = view.network_changes
        revision = view.revision
        await ipam.book(book_in(pn, project))
        assert await view.changed(revision, 5.0)
        assert view.network_changes == since
        assert not await view.networks_changed(since, 0.0)
        await ipam.add_subnets(pn.id, ["10.32.0.0/24"])
        assert await view.networks_changed(since, 5.0)
        info = view.network(pn.id)
        assert info is not None
        assert [s.cidr for s in info.subnets] == ["10.31.0.0/24", "10.32.0.0/24"]
    finally:
        await view.close()


async def test_the_view_tells_of_a_served_network_that_appears_and_goes(ipam, project):
    other = await make_pn(ipam, project, "10.33.0.0/24")
    view = await ipam.network_view([other.id])
    try:
        since = view.network_changes
        await make_pn(ipam, project, "10.34.0.0/24")  # not served: nobody is told
        assert not await view.networks_changed(since, 0.2)
        await ipam.delete_private_network(other.id)
        assert await view.networks_changed(since, 5.0)
        assert view.network(other.id) is None
    finally:
        await view.close()


# -- the agent in-process, inside a lab namespace ------------------------------------------


@pytest.fixture
def lab() -> Iterator[NetLab]:
    with NetLab() as made:
        yield made


@pytest.fixture
def in_lab_ipam(lab: NetLab, etcd_single: EtcdCluster, key_prefix: str
                ) -> Callable[[Callable[[IPAM], Awaitable[None]]], None]:
    """Runs `scenario(ipam)` on an event loop in the lab's thread, so the agent's sockets
    are the lab's; etcd is the session's member on the host, which gRPC's own threads
    (outside the lab) reach."""
    def run(scenario: Callable[[IPAM], Awaitable[None]]) -> None:
        async def main() -> None:
            async with connected(etcd_single.endpoints, key_prefix) as ipam:
                await scenario(ipam)
        lab.call(lambda: asyncio.run(main()), timeout=120)
    return run


async def _until(check: Callable[[], bool], what: str) -> None:
    """Wait (bounded: 10 s) for a retry of the agent's, which a timer starts."""
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(QUICK_RETRY)
    raise AssertionError(f"timed out waiting for {what}")


def _put(lab: NetLab, interface: str, *addresses: str) -> None:
    """Addresses on an interface of the lab, as an operator would (IPv6: no DAD wait)."""
    for address in addresses:
        nodad = ["nodad"] if ":" in address else []
        lab.exec_in(lab.namespace, ["ip", "addr", "add", address, "dev", interface, *nodad])


def _messages(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == level and text in r.getMessage()]


@in_lab
def test_a_server_address_not_yet_on_the_interface_is_warned_about_once_and_served_once_put(
        lab: NetLab, in_lab_ipam: Any, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG, logger="ipam.dhcp")
    monkeypatch.setattr(agent_module, "RELISTEN_FIRST", QUICK_RETRY)
    bridge = lab.add_bridge()
    _put(lab, bridge, f"{SERVER}/24")

    async def scenario(ipam: IPAM) -> None:
        pn = await make_pn(ipam, PROJECT, SUBNET)
        agent = Agent(ipam, AgentConfig(interfaces=((bridge, pn.id),)))
        await agent.start()
        try:
            assert agent.dns_addresses == [SERVER] and agent.unavailable == []
            assert agent.view is not None
            since = agent.view.network_changes
            await ipam.add_subnets(pn.id, [NEW_SUBNET])
            assert await agent.view.networks_changed(since, 5.0)
            assert await agent.reconcile() is False  # and again: still not there
            assert agent.unavailable == [NEW_SERVER]
            assert agent.dns_addresses == [SERVER]
            _put(lab, bridge, f"{NEW_SERVER}/24")
            await _until(lambda: NEW_SERVER in agent.dns_addresses, "the periodic retry")
            assert agent.unavailable == []
        finally:
            await agent.close()

    in_lab_ipam(scenario)
    assert _messages(caplog, logging.WARNING, f"cannot serve on {NEW_SERVER} port 53") == [
        (f"dns: cannot serve on {NEW_SERVER} port 53 yet: Cannot assign requested address "
         "(put the address on the interface)")]
    assert _messages(caplog, logging.INFO, f"dns: serving on {NEW_SERVER}") == [
        f"dns: serving on {NEW_SERVER} port 53"]


@in_lab
def test_an_interface_where_dhcpv6_cannot_start_is_retried_and_stopped_with_its_subnet(
        lab: NetLab, in_lab_ipam: Any, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG, logger="ipam.dhcp")
    monkeypatch.setattr(agent_module, "RELISTEN_FIRST", QUICK_RETRY)
    bridge = lab.add_bridge()
    lab.exec_in(lab.namespace, ["ip", "addr", "flush", "dev", bridge, "scope", "link"])
    _put(lab, bridge, "fe80::1/64", f"{SERVER}/24", f"{SERVER6}/64")

    async def scenario(ipam: IPAM) -> None:
        pn = await make_pn(ipam, PROJECT, SUBNET)
        agent = Agent(ipam, AgentConfig(interfaces=((bridge, pn.id),)))
        # Someone else holds the DHCPv6 port without sharing it: the agent cannot bind.
        holder = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        holder.bind(("::", DHCP6_SERVER_PORT))
        await agent.start()
        try:
            assert agent.ipv6_interfaces == [] and agent.view is not None
            since = agent.view.network_changes
            await ipam.add_subnets(pn.id, [SUBNET6])
            assert await agent.view.networks_changed(since, 5.0)
            assert await agent.reconcile() is False
            assert agent.unavailable == [f"DHCPv6 on {bridge}"]
            assert sorted(agent.dns_addresses) == sorted([SERVER, SERVER6])
            holder.close()
            await _until(lambda: agent.ipv6_interfaces == [bridge], "the periodic retry")
            assert agent.unavailable == [] and len(agent.advertisers) == 1
            since = agent.view.network_changes
            await ipam.delete_subnets(pn.id, [SUBNET6])
            assert await agent.view.networks_changed(since, 5.0)
            assert await agent.reconcile() is True
            assert agent.ipv6_interfaces == [] and agent.advertisers == []
            assert agent.dns_addresses == [SERVER]
            assert _bindable(socket.AF_INET6, "::", DHCP6_SERVER_PORT)
        finally:
            holder.close()
            await agent.close()

    in_lab_ipam(scenario)
    assert len(_messages(caplog, logging.WARNING, f"dhcp6: no DHCPv6/RA on {bridge} yet")) == 1
    assert [m for m in caplog.messages if m.startswith("dhcp6: s")] == [
        f"dhcp6: serving DHCPv6 and RAs on {bridge} for {_pn_of(caplog)}",
        f"dhcp6: stopped DHCPv6 and RAs on {bridge} ({_pn_of(caplog)} has no IPv6 subnet)"]
    assert f"dns: stopped serving on {SERVER6} port 53 (no served subnet has it)" in \
        caplog.messages


def _pn_of(caplog: pytest.LogCaptureFixture) -> str:
    """The network named by the agent's "serving DHCPv6" line."""
    line = next(m for m in caplog.messages if m.startswith("dhcp6: serving"))
    return line.rsplit(" ", 1)[1]


def _bindable(family: socket.AddressFamily, address: str, port: int) -> bool:
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


@in_lab
def test_a_router_advertiser_that_cannot_start_leaves_no_dhcpv6_socket_open(
        lab: NetLab, in_lab_ipam: Any, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG, logger="ipam.dhcp")

    class Unstartable(agent_module.RouterAdvertiser):
        async def start(self) -> None:
            raise OSError(errno.ENODEV, f"cannot read the MAC of interface {self.interface}")

    monkeypatch.setattr(agent_module, "RouterAdvertiser", Unstartable)
    bridge = lab.add_bridge()
    _put(lab, bridge, f"{SERVER}/24", f"{SERVER6}/64")

    async def scenario(ipam: IPAM) -> None:
        pn = await make_pn(ipam, PROJECT, SUBNET, SUBNET6)
        agent = Agent(ipam, AgentConfig(interfaces=((bridge, pn.id),)))
        await agent.start()  # IPv6 is not what a network cannot do without: not fatal
        try:
            assert agent.ipv6_interfaces == []
            assert agent.unavailable == [f"DHCPv6 on {bridge}"]
            assert _bindable(socket.AF_INET6, "::", DHCP6_SERVER_PORT)
        finally:
            await agent.close()

    in_lab_ipam(scenario)
    assert _messages(caplog, logging.WARNING, "dhcp6: no DHCPv6/RA") == [
        f"dhcp6: no DHCPv6/RA on {bridge} yet: cannot read the MAC of interface {bridge}"]


@in_lab
def test_a_reconciliation_that_fails_unexpectedly_is_logged_and_tried_again(
        lab: NetLab, in_lab_ipam: Any, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG, logger="ipam.dhcp")
    monkeypatch.setattr(agent_module, "RELISTEN_FIRST", QUICK_RETRY)
    serve_dns, failed = agent_module.serve_dns, list[str]()

    async def failing_once(dns, host, port, **options):  # type: ignore[no-untyped-def]
        if host == NEW_SERVER and not failed:
            failed.append(host)
            raise RuntimeError("a bug")
        return await serve_dns(dns, host, port, **options)

    monkeypatch.setattr(agent_module, "serve_dns", failing_once)
    bridge = lab.add_bridge()
    _put(lab, bridge, f"{SERVER}/24", f"{NEW_SERVER}/24")

    async def scenario(ipam: IPAM) -> None:
        pn = await make_pn(ipam, PROJECT, SUBNET)
        agent = Agent(ipam, AgentConfig(interfaces=((bridge, pn.id),)))
        await agent.start()
        try:
            await ipam.add_subnets(pn.id, [NEW_SUBNET])
            await _until(lambda: NEW_SERVER in agent.dns_addresses, "the retry after the bug")
        finally:
            await agent.close()

    in_lab_ipam(scenario)
    assert failed == [NEW_SERVER]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "reconciling the listeners with the networks failed"]
    assert errors[0].exc_info is not None and str(errors[0].exc_info[1]) == "a bug"


# -- `ipam dhcp` with real clients ---------------------------------------------------------


def _network(stack: Stack, *subnets: str) -> str:
    pn = stack.sdk(lambda c: VpcV2API(c).create_private_network(
        name="lab", subnets=list(subnets or (SUBNET,)),
        default_route_propagation_enabled=False))
    return str(pn.id)


def _serve(stack: Stack, pn_id: str):
    """Client A on the network's segment (a bridge) with an address in SUBNET; the agent
    on the bridge, which carries the server's own address in SUBNET."""
    bridge = stack.lab.add_bridge()
    a = stack.lab.add_client(MAC_A, bridge)
    stack.lab.exec_in(a.namespace, ["ip", "addr", "add", "10.77.0.10/24", "dev",
                                    a.client_side])
    _put(stack.lab, bridge, f"{SERVER}/24")
    stack.start_agent("--interface", f"{bridge}={pn_id}")
    return bridge, a


def _add_subnet(stack: Stack, pn_id: str, cidr: str) -> str:
    """Add `cidr` to the network through the allocator; the new subnet's id."""
    return stack.allocator(f"_, added = await ipam.add_subnets({pn_id!r}, [{cidr!r}])\n"
                           "print(added[0].id)").strip()


def _delete_subnet(stack: Stack, pn_id: str, cidr: str) -> None:
    stack.allocator(f"await ipam.delete_subnets({pn_id!r}, [{cidr!r}])")


def _book_attached(stack: Stack, source: Source, name: str, is_ipv6: bool = False):
    def book(client):
        api = IpamV1API(client)
        ip = api.book_ip(source=source, is_ipv6=is_ipv6)
        return api.attach_ip(ip_id=ip.id, resource=CustomResource(mac_address=MAC_A,
                                                                  name=name))
    return stack.sdk(book)


def _release(stack: Stack, ip) -> None:
    def release(client):
        api = IpamV1API(client)
        api.detach_ip(ip_id=ip.id, resource=CustomResource(mac_address=MAC_A,
                                                           name=ip.resource.name))
        api.release_ip(ip_id=ip.id)
    stack.sdk(release)


@in_lab
def test_a_subnet_added_while_the_agent_runs_gets_dns_on_its_server_address(
        stack: Stack) -> None:
    pn_id = _network(stack)
    bridge, a = _serve(stack, pn_id)
    assert stack.ask(a, NEW_SERVER, "db-1.lab.internal", "A") is None
    subnet_id = _add_subnet(stack, pn_id, NEW_SUBNET)
    _put(stack.lab, bridge, f"{NEW_SERVER}/24")  # the operator's part: after the subnet
    stack.lab.exec_in(a.namespace, ["ip", "addr", "add", "10.78.0.10/24", "dev",
                                    a.client_side])
    address = _book_attached(stack, Source(subnet_id=subnet_id), "db-1").address.split("/")[0]
    assert address.startswith("10.78.0.")
    wait_for(lambda: stack.ask(a, NEW_SERVER, "db-1.lab.internal", "A") == address,
             "DNS on the new subnet's server address")
    assert stack.ask(a, NEW_SERVER, "-x", address) == "db-1.lab.internal."
    assert stack.agent_log().count(f"dns: serving on {NEW_SERVER} port 53") == 1


@in_lab
def test_a_deleted_subnet_s_dns_socket_is_closed(stack: Stack) -> None:
    pn_id = _network(stack)
    bridge, a = _serve(stack, pn_id)
    address = _book_attached(stack, Source(private_network_id=pn_id), "web-1"
                             ).address.split("/")[0]
    _put(stack.lab, bridge, f"{NEW_SERVER}/24")
    stack.lab.exec_in(a.namespace, ["ip", "addr", "add", "10.78.0.10/24", "dev",
                                    a.client_side])
    _add_subnet(stack, pn_id, NEW_SUBNET)
    wait_for(lambda: stack.ask(a, NEW_SERVER, "web-1.lab.internal", "A") == address,
             "DNS on the new subnet's server address")
    assert not stack.bindable(NEW_SERVER, 53)
    _delete_subnet(stack, pn_id, NEW_SUBNET)
    wait_for(lambda: stack.bindable(NEW_SERVER, 53), "the deleted subnet's DNS socket closed")
    assert stack.ask(a, NEW_SERVER, "web-1.lab.internal", "A") is None
    assert stack.ask(a, SERVER, "web-1.lab.internal", "A") == address  # the rest serves on
    assert f"dns: stopped serving on {NEW_SERVER} port 53 (no served subnet has it)" \
        in stack.agent_log()


def _link_local(mac: str) -> str:
    """The modified EUI-64 link-local address a kernel would give `mac`."""
    b = bytes.fromhex(mac.replace(":", ""))
    eui = bytes([b[0] ^ 0x02, b[1], b[2], 0xFF, 0xFE, b[3], b[4], b[5]])
    return "fe80::" + ":".join(f"{eui[i]:02x}{eui[i + 1]:02x}" for i in range(0, 8, 2))


@in_lab
def test_an_ipv6_subnet_added_to_a_v4_only_network_starts_dhcpv6_on_its_interface(
        stack: Stack) -> None:
    pn_id = _network(stack)
    bridge, a = _serve(stack, pn_id)
    # Link-local addresses without duplicate address detection, so nobody waits for them.
    for namespace, interface, link_local in ((stack.lab.namespace, bridge, "fe80::1"),
                                             (a.namespace, a.client_side, _link_local(MAC_A))):
        stack.lab.exec_in(namespace, ["ip", "addr", "flush", "dev", interface, "scope", "link"])
        stack.lab.exec_in(namespace, ["ip", "addr", "add", f"{link_local}/64", "dev", interface,
                                      "nodad"])
    assert "dhcp6: serving" not in stack.agent_log()
    _add_subnet(stack, pn_id, SUBNET6)
    wait_for(lambda: f"dhcp6: serving DHCPv6 and RAs on {bridge} for {pn_id}"
             in stack.agent_log(), "DHCPv6 started on the interface")
    ip6 = _book_attached(stack, Source(private_network_id=pn_id), "web-6", is_ipv6=True)
    daemon, _ = stack.dhclient_daemon(a, "-6")
    wait_for(lambda: any((stack.workdir / a.namespace).glob("BOUND6.*")), "dhclient -6 bound")
    assert stack.given(a, "BOUND6")["new_ip6_address"] == ip6.address.split("/")[0]
    daemon.terminate()
    daemon.wait(10)
    # Losing its last IPv6 subnet, the interface loses DHCPv6 (and its port is free).
    _release(stack, ip6)
    _delete_subnet(stack, pn_id, SUBNET6)
    wait_for(lambda: f"dhcp6: stopped DHCPv6 and RAs on {bridge}" in stack.agent_log(),
             "DHCPv6 stopped on the interface")
    assert stack.bindable("::", DHCP6_SERVER_PORT)


@in_lab
def test_a_network_created_after_the_agent_started_gets_dns_once_it_exists(
        stack: Stack) -> None:
    pn_id = str(uuid.uuid4())  # served before it exists: its id is known to the operator
    _, a = _serve(stack, pn_id)
    assert "not (yet) in IPAM, answering nothing for: " + pn_id in stack.agent_log()
    assert stack.bindable(SERVER, 53)  # no DNS for a network that does not exist
    # Created with that id, in a VPC of its own: the allocator's id source is patched
    # (in its process only) to give it as the next id, which is the network's.
    vpc_id = stack.sdk(lambda c: VpcV2API(c).create_vpc(
        name="lab", enable_routing=False, enable_transitivity=False)).id
    stack.allocator("import allocator.network_registry as registry\n"
                    f"ids, fresh = iter([{pn_id!r}]), registry.new_id\n"
                    "registry.new_id = lambda: next(ids, None) or fresh()\n"
                    f"await ipam.create_private_network({REGION!r}, {stack.project!r}, None, "
                    f"'lab', vpc_id={vpc_id!r}, subnets=[{SUBNET!r}])")
    address = _book_attached(stack, Source(private_network_id=pn_id), "web-1"
                             ).address.split("/")[0]
    wait_for(lambda: stack.ask(a, SERVER, "web-1.lab.internal", "A") == address,
             "DNS for the network created after the agent started")
    assert stack.agent_log().count(f"dns: serving on {SERVER} port 53") == 1

