"""The reference topology from local processes: three etcd members, gateways, haproxy."""

from __future__ import annotations

import uuid
from pathlib import Path

import requests
from gateway_fixtures import sdk_client
from scaleway.ipam.v1 import IpamV1API
from scaleway.ipam.v1.types import Source
from scaleway.vpc.v2 import VpcV2API

from devcluster.topology import LocalTopology


def test_local_topology_serves_through_haproxy(tmp_path: Path) -> None:
    with LocalTopology(gateways=2, base_dir=tmp_path) as topo:
        project = str(uuid.uuid4())
        # Every project belongs to an organization: the admin says which, first.
        mapped = requests.put(f"{topo.url}/ipam/admin/v1/projects/{project}", timeout=30,
                              json={"organization_id": str(uuid.uuid4())},
                              headers={"X-Auth-Token": topo.admin_secret})
        assert mapped.status_code == 200, mapped.text
        client = sdk_client(topo.url, "SCW" + "C" * 17, topo.admin_secret, project)
        pn = VpcV2API(client).create_private_network(default_route_propagation_enabled=False,
                                                     subnets=["10.60.0.0/24"])
        api = IpamV1API(client)
        ips = [api.book_ip(source=Source(private_network_id=pn.id), is_ipv6=False)
               for _ in range(6)]
        assert len({i.address for i in ips}) == 6
        for url in topo.gateway_urls:  # every node answers for every IP
            node = IpamV1API(sdk_client(url, "SCW" + "C" * 17, topo.admin_secret))
            assert node.list_i_ps(private_network_id=pn.id).total_count == 6
