"""`python -m devcluster.tour`: the allocator alone, a one-minute tour on an embedded single-member etcd.

Starts etcd in a temporary directory, creates a Private Network, books a few IPs
(one chosen, one attached to a custom resource), lists them, and stops etcd.
"""

from __future__ import annotations

import asyncio
import uuid

import netaddr

from allocator.contract import IPAM, AddressAsk, IPFilter, Resource

from .etcd import EtcdCluster


async def tour(endpoints: list[str]) -> None:
    ipam = await IPAM.connect(endpoints)
    try:
        project = str(uuid.uuid4())
        pn = await ipam.create_private_network("fr-par", project, None, "demo")
        print(f"Private Network {pn.id} with subnets "
              f"{', '.join(s.subnet for s in pn.subnets)}")
        v4 = next(s for s in pn.subnets if ":" not in s.subnet)
        chosen = str(netaddr.IPNetwork(v4.subnet)[10])
        asks = [
            AddressAsk(region="fr-par", project_id=project, private_network_id=pn.id),
            AddressAsk(region="fr-par", project_id=project, private_network_id=pn.id,
                        address=chosen, tags=["chosen"]),
            AddressAsk(region="fr-par", project_id=project, private_network_id=pn.id,
                        resource=Resource.custom("02:00:00:00:00:01", "web-1")),
            AddressAsk(region="fr-par", project_id=project, private_network_id=pn.id,
                        is_ipv6=True),
        ]
        for ask in asks:
            await ipam.book(ask)
        ips, total = await ipam.list_ips(IPFilter(private_network_id=pn.id),
                                         order_by="ip_address_asc")
        print(f"{total} IPs booked:")
        for ip in ips:
            attached = f"-> {ip.resource.name} ({ip.resource.mac_address})" if ip.resource else ""
            print(f"  {ip.address:<28} {ip.id}  {' '.join(ip.tags)} {attached}")
        reserved = await ipam.reserved_ips(pn.id)
        for subnet in reserved:
            print(f"never handed out in {subnet['subnet']}: "
                  + ", ".join(f"{r['address']} ({r['reason']})" for r in subnet["reserved"]))
    finally:
        await ipam.close()


def main() -> None:
    with EtcdCluster(1, name_prefix="demo") as cluster:
        print(f"embedded etcd at {cluster.endpoints[0]}")
        asyncio.run(tour(cluster.endpoints))
    print("etcd stopped")


if __name__ == "__main__":
    main()
