"""The DHCP and DNS agent of Private Networks: it serves what IPAM holds, nothing else.

The attachment is the lease: the agent answers from a live view of IPAM's state
(`allocator.contract.NetworkView`) and writes nothing except, by policy, a booking
for an unknown MAC through the allocator. It imports the allocator's front door only.

    dhcp4   DHCPv4 (RFC 2131/2132): the offer is the IP attached to the client's MAC
    dhcp6   stateful DHCPv6 (RFC 8415): the IPv6 attached to the client's MAC
    ra      Router Advertisements (M flag) for the IPv6 subnet of a dual-stack network
    dns     the internal DNS: `<resource-name>.<network-name>.internal` and the reverse
    agent   the sockets of one process; cli, `ipam dhcp`; metrics, Prometheus text
"""
