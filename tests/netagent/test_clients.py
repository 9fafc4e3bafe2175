"""Real clients get their IPAM address: Debian's dhclient and dig in network namespaces.

The whole stack (etcd, gateway, `ipam dhcp`) runs in a lab namespace, each client in
a namespace of its own joined by a veth pair (tests/support/netlab_stack.py). Skipped
only where namespaces cannot be made (not root, no iproute2) or the clients are not
installed; scripts/test.sh installs them, so CI runs these.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from netlab_stack import ROOT, Stack, lab_stack, wait_for
from scaleway.ipam.v1 import IpamV1API
from scaleway.ipam.v1.types import CustomResource, Reverse, Source
from scaleway.vpc.v2 import VpcV2API

from devcluster import netlab

why_not = netlab.available() or next(
    (f"{tool} is not installed" for tool in ("dhclient", "dig") if not shutil.which(tool)), None)
pytestmark = pytest.mark.skipif(why_not is not None, reason=str(why_not))

SUBNET = "10.77.0.0/24"
SERVER, ROUTER = "10.77.0.254", "10.77.0.1"
MAC_A, MAC_B = "02:00:00:77:00:0a", "02:00:00:77:00:0b"


@pytest.fixture
def stack(tmp_path: Path):
    with lab_stack(tmp_path) as s:
        yield s


def _network(stack: Stack, name: str = "lab") -> str:
    pn = stack.sdk(lambda c: VpcV2API(c).create_private_network(
        name=name, subnets=[SUBNET], default_route_propagation_enabled=False))
    return pn.id


def _serve(stack: Stack, pn_id: str, *flags: str):
    """Clients A and B on the network's segment (a bridge); the agent on the bridge, which
    carries the server's own address in the subnet."""
    bridge = stack.lab.add_bridge()
    a, b = stack.lab.add_client(MAC_A, bridge), stack.lab.add_client(MAC_B, bridge)
    stack.lab.exec_in(stack.lab.namespace, ["ip", "addr", "add", f"{SERVER}/24", "dev", bridge])
    stack.start_agent("--interface", f"{bridge}={pn_id}",
                      "--t1", "2", "--t2", "3", "--lease-time", "6", *flags)
    return a, b


def _book_attached(stack: Stack, pn_id: str, mac: str, name: str):
    def book(client):
        api = IpamV1API(client)
        ip = api.book_ip(source=Source(private_network_id=pn_id), is_ipv6=False)
        return api.attach_ip(ip_id=ip.id, resource=CustomResource(mac_address=mac, name=name))
    return stack.sdk(book)


def test_a_machine_gets_its_ipam_address_and_resolves_its_name(stack: Stack) -> None:
    pn_id = _network(stack)
    a, _ = _serve(stack, pn_id)
    ip = _book_attached(stack, pn_id, MAC_A, "web-1")
    address = ip.address.split("/")[0]
    done = stack.dhclient(a)
    assert done.returncode == 0, done.stderr[-2000:]
    given = stack.given(a)
    assert given["new_ip_address"] == address
    assert given["new_subnet_mask"] == "255.255.255.0"
    assert given["new_routers"] == ROUTER
    assert given["new_domain_name_servers"] == SERVER
    assert given["new_domain_name"] == "lab.internal"
    assert given["new_host_name"] == "web-1"
    assert stack.dig(a, f"@{SERVER}", "web-1.lab.internal", "A") == address
    assert stack.dig(a, f"@{SERVER}", "-x", address) == "web-1.lab.internal."
    stack.sdk(lambda c: IpamV1API(c).update_ip(
        ip_id=ip.id, reverses=[Reverse(hostname="www.example.com", address=address)]))
    wait_for(lambda: stack.dig(a, f"@{SERVER}", "-x", address) == "www.example.com.",
             "the custom reverse in DNS")
    assert stack.dig(a, f"@{SERVER}", "nothing.lab.internal", "A") == ""


def test_a_moved_address_is_taken_back_at_renewal_and_given_to_the_new_mac(
        stack: Stack) -> None:
    pn_id = _network(stack)
    a, b = _serve(stack, pn_id)
    ip = _book_attached(stack, pn_id, MAC_A, "web-1")
    address = ip.address.split("/")[0]
    daemon, log = stack.dhclient_daemon(a)
    wait_for(lambda: "bound to" in log.read_text(errors="replace"), "client A bound")
    assert stack.given(a)["new_ip_address"] == address
    stack.sdk(lambda c: IpamV1API(c).move_ip(
        ip_id=ip.id, from_resource=CustomResource(mac_address=MAC_A, name="web-1"),
        to_resource=CustomResource(mac_address=MAC_B, name="web-2")))
    wait_for(lambda: "DHCPNAK" in log.read_text(errors="replace"),
             "client A NAKed at its next renewal")
    done = stack.dhclient(b)
    assert done.returncode == 0, done.stderr[-2000:]
    assert stack.given(b)["new_ip_address"] == address
    assert stack.given(b)["new_host_name"] == "web-2"
    daemon.terminate()


def test_an_unknown_mac_is_ignored_or_booked_by_policy(stack: Stack) -> None:
    pn_id = _network(stack)
    a, _ = _serve(stack, pn_id, "--unknown-mac", "book")
    done = stack.dhclient(a)
    assert done.returncode == 0, done.stderr[-2000:]
    address = stack.given(a)["new_ip_address"]
    ips = stack.sdk(lambda c: IpamV1API(c).list_i_ps(private_network_id=pn_id)).ips
    assert [(i.address.split("/")[0], i.resource.mac_address, i.resource.type_) for i in ips] \
        == [(address, MAC_A, "unknown_dhcp_client")]


def test_an_unknown_mac_gets_no_answer_when_the_policy_is_ignore(stack: Stack) -> None:
    pn_id = _network(stack)
    a, _ = _serve(stack, pn_id)
    done = stack.dhclient(a, conf="timeout 4;\n")
    assert done.returncode != 0 and "DHCPOFFER of" not in done.stderr


def test_a_network_with_dhcp_disabled_gets_no_answer_until_enabled(stack: Stack) -> None:
    pn_id = _network(stack)
    a, _ = _serve(stack, pn_id)
    _book_attached(stack, pn_id, MAC_A, "web-1")
    stack.allocator(f"await ipam.update_private_network({pn_id!r}, dhcp_enabled=False)")
    done = stack.dhclient(a, conf="timeout 4;\n")
    assert done.returncode != 0 and "DHCPOFFER of" not in done.stderr
    stack.allocator(f"await ipam.update_private_network({pn_id!r}, dhcp_enabled=True)")
    done = stack.dhclient(a)
    assert done.returncode == 0, done.stderr[-2000:]


def _scrape(stack: Stack, port: int) -> dict[str, float]:
    """The agent's metrics, read from inside the lab."""
    def get() -> str:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return resp.read().decode()
    out = {}
    for line in stack.lab.call(get).splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


FLOOD = r"""
import random, socket, struct, sys
random.seed(7)
mac = bytes.fromhex(sys.argv[1].replace(":", ""))
discover = (struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, 0x1234, 0, 0x8000,
            bytes(4), bytes(4), bytes(4), bytes(4), mac + bytes(10), bytes(64), bytes(128))
            + bytes([99, 130, 83, 99, 53, 1, 1, 255]))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
for n in range(int(sys.argv[2])):
    kind = n % 4
    if kind == 0:
        data = random.randbytes(random.randrange(0, 600))
    else:
        data = bytearray(discover)
        for _ in range(random.randrange(1, 8)):
            data[random.randrange(len(data))] = random.randrange(256)
        if kind == 2:
            data = data[:random.randrange(len(data))]
        if kind == 3:  # bad cookie, garbage options
            data[236:240] = b"\x00\x00\x00\x00"
        data = bytes(data)
    s.sendto(data, ("10.77.0.254", 67))
"""


def test_a_flood_of_bad_packets_changes_nothing_and_a_client_still_gets_its_lease(
        stack: Stack) -> None:
    pn_id = _network(stack)
    bridge = stack.lab.add_bridge()
    a = stack.lab.add_client(MAC_A, bridge)
    flooder = stack.lab.add_client("02:00:00:77:00:ff", bridge)
    stack.lab.exec_in(stack.lab.namespace, ["ip", "addr", "add", f"{SERVER}/24", "dev", bridge])
    stack.lab.exec_in(flooder.namespace, ["ip", "addr", "add", "10.77.0.200/24", "dev",
                                          flooder.client_side])
    stack.start_agent("--interface", f"{bridge}={pn_id}", "--metrics-listen", "127.0.0.1:9547")
    ip = _book_attached(stack, pn_id, MAC_A, "web-1")
    stack.lab.exec_in(flooder.namespace, [sys.executable, "-c", FLOOD, flooder.mac, "100000"],
                      timeout=120)
    done = stack.dhclient(a)
    assert done.returncode == 0, done.stderr[-2000:]
    assert stack.given(a)["new_ip_address"] == ip.address.split("/")[0]
    metrics = _scrape(stack, 9547)
    assert metrics['ipam_dhcp4_messages_total{outcome="dropped"}'] > 10_000
    assert metrics['ipam_dhcp4_messages_total{outcome="acks"}'] == 1
    ips = stack.sdk(lambda c: IpamV1API(c).list_i_ps(private_network_id=pn_id)).ips
    assert [i.id for i in ips] == [ip.id]  # nothing booked, nothing changed


def test_two_agents_and_fifty_unknown_clients_at_once_give_fifty_distinct_addresses(
        stack: Stack) -> None:
    pn_id = _network(stack)
    bridge = stack.lab.add_bridge()
    stack.lab.exec_in(stack.lab.namespace, ["ip", "addr", "add", f"{SERVER}/24", "dev", bridge])
    stack.start_agent("--interface", f"{bridge}={pn_id}", "--unknown-mac", "book")
    # The second agent shares the segment; its DNS listens elsewhere (one port, one owner).
    stack.start_agent("--interface", f"{bridge}={pn_id}", "--unknown-mac", "book",
                      "--dns-port", "5353")
    clients = [stack.lab.add_client(f"02:00:00:78:00:{n:02x}", bridge) for n in range(50)]
    runs = [subprocess.Popen(
        ["ip", "netns", "exec", c.namespace, "dhclient", "-1", "-v",
         *stack._client_files(c, "timeout 60;\n"), c.client_side],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in clients]
    failures = [r.communicate(timeout=90)[1][-500:] for r in runs if r.wait(90) != 0]
    assert not failures, failures[:3]
    got = {c.mac: stack.given(c)["new_ip_address"] for c in clients}
    assert len(set(got.values())) == 50
    ips = stack.sdk(lambda c: IpamV1API(c).list_i_ps(private_network_id=pn_id,
                                                     page_size=100)).ips
    assert len(ips) == 50
    assert {i.resource.mac_address: i.address.split("/")[0] for i in ips} == got


def _link_local(mac: str) -> str:
    """The modified EUI-64 link-local address a kernel would give `mac`."""
    b = bytes.fromhex(mac.replace(":", ""))
    eui = bytes([b[0] ^ 0x02, b[1], b[2], 0xFF, 0xFE, b[3], b[4], b[5]])
    return "fe80::" + ":".join(f"{eui[i]:02x}{eui[i + 1]:02x}" for i in range(0, 8, 2))


def test_a_dual_stack_machine_gets_its_ipv6_by_dhcpv6_and_resolves_it(stack: Stack) -> None:
    pn = stack.sdk(lambda c: VpcV2API(c).create_private_network(
        name="lab", subnets=[SUBNET, "fd00:77::/64"], default_route_propagation_enabled=False))
    bridge = stack.lab.add_bridge()
    a = stack.lab.add_client(MAC_A, bridge)
    # Link-local addresses without duplicate address detection, so nobody waits for them:
    # the agent's on the bridge, and the client's in EUI-64 form as its kernel would make it.
    for namespace, interface, address in ((stack.lab.namespace, bridge, "fe80::1"),
                                          (a.namespace, a.client_side, _link_local(MAC_A))):
        stack.lab.exec_in(namespace, ["ip", "addr", "flush", "dev", interface, "scope", "link"])
        stack.lab.exec_in(namespace, ["ip", "addr", "add", f"{address}/64", "dev", interface,
                                      "nodad"])
    server6 = "fd00:77::ffff:ffff:ffff:fffe"  # the IPv6 subnet's server address
    stack.lab.exec_in(stack.lab.namespace, ["ip", "addr", "add", f"{SERVER}/24", "dev", bridge])
    stack.lab.exec_in(stack.lab.namespace, ["ip", "addr", "add", f"{server6}/64", "dev", bridge,
                                            "nodad"])
    stack.start_agent("--interface", f"{bridge}={pn.id}", "--metrics-listen", "127.0.0.1:9547")

    def book(client):
        api = IpamV1API(client)
        res = CustomResource(mac_address=MAC_A, name="web-6")
        return [api.attach_ip(ip_id=api.book_ip(source=Source(private_network_id=pn.id),
                                                is_ipv6=v6).id, resource=res)
                for v6 in (False, True)]
    v4, v6 = stack.sdk(book)
    address6 = v6.address.split("/")[0]
    done = stack.dhclient(a)  # IPv4 first, as a dual-stack machine does both
    assert done.returncode == 0, done.stderr[-2000:]
    daemon, log = stack.dhclient_daemon(a, "-6")
    wait_for(lambda: any((stack.workdir / a.namespace).glob("BOUND6.*")), "dhclient -6 bound")
    given = stack.given(a, "BOUND6")
    assert given["new_ip6_address"] == address6
    assert given["new_dhcp6_domain_search"] == "lab.internal."
    assert stack.dig(a, f"@{SERVER}", "web-6.lab.internal", "AAAA") == address6
    assert stack.dig(a, f"@{SERVER}", "web-6.lab.internal", "A") == v4.address.split("/")[0]
    assert stack.dig(a, f"@{SERVER}", "-x", address6) == "web-6.lab.internal."
    assert stack.dig(a, f"@{server6}", "web-6.lab.internal", "AAAA") == address6  # over IPv6
    metrics = _scrape(stack, 9547)
    assert metrics['ipam_dhcp6_messages_total{outcome="replies"}'] >= 1
    assert metrics[f'ipam_ra_messages_total{{interface="{bridge}",kind="advertisements"}}'] >= 1
    daemon.terminate()


def test_an_agent_whose_interface_lacks_the_server_address_says_so_and_exits_1(
        stack: Stack) -> None:
    pn_id = _network(stack)
    bridge = stack.lab.add_bridge()  # no 10.77.0.254 on it
    done = subprocess.run(
        ["ip", "netns", "exec", stack.lab.namespace, sys.executable, "-m", "netagent",
         "--etcd-endpoints", ",".join(stack.cluster.endpoints), "--etcd-prefix", stack.prefix,
         "--interface", f"{bridge}={pn_id}"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"ipam dhcp: cannot serve DNS on {SERVER} port 53 (is the address on the network's "
        "interface?)")


def test_ipv4_is_served_where_ipv6_cannot_be(stack: Stack) -> None:
    pn = stack.sdk(lambda c: VpcV2API(c).create_private_network(
        name="lab", subnets=[SUBNET, "fd00:77::/64"], default_route_propagation_enabled=False))
    bridge = stack.lab.add_bridge()
    a = stack.lab.add_client(MAC_A, bridge)
    stack.lab.exec_in(stack.lab.namespace, [
        "sh", "-c", f"echo 1 > /proc/sys/net/ipv6/conf/{bridge}/disable_ipv6"])
    stack.lab.exec_in(stack.lab.namespace, ["ip", "addr", "add", f"{SERVER}/24", "dev", bridge])
    stack.start_agent("--interface", f"{bridge}={pn.id}")
    ip = _book_attached(stack, pn.id, MAC_A, "web-1")
    done = stack.dhclient(a)
    assert done.returncode == 0, done.stderr[-2000:]
    assert stack.given(a)["new_ip_address"] == ip.address.split("/")[0]
    # The RAs cannot leave (IPv6 is off on the interface): said and counted, not fatal.
    logs = "".join(p.read_text(errors="replace") for p in stack.workdir.glob("agent-*.log"))
    assert f"cannot send on {bridge}" in logs
