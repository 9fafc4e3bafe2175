"""Real clients get their IPAM address: Debian's dhclient and dig in network namespaces.

The whole stack (etcd, gateway, `ipam dhcp`) runs in a lab namespace, each client in
a namespace of its own joined by a veth pair (tests/support/netlab_stack.py). Skipped
only where namespaces cannot be made (not root, no iproute2) or the clients are not
installed; scripts/test.sh installs them, so CI runs these.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from netlab_stack import Stack, lab_stack, wait_for
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
