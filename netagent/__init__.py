"""The DHCP and DNS agent of Private Networks: it serves what IPAM holds, nothing else.

The attachment is the lease: the agent answers from a live view of IPAM's state
(`allocator.contract.NetworkView`) and writes nothing except, by policy, a booking
for an unknown MAC through the allocator. It imports the allocator's front door only.

    dhcp4   DHCPv4 (RFC 2131/2132): the offer is the IP attached to the client's MAC
    dns     the internal DNS: `<resource-name>.<network-name>.internal` and the reverse
"""
