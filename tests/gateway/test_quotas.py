"""Per-project quotas through the official SDK: a create beyond a quota is Scaleway's 403
`quotas_exceeded`, with one detail naming the resource, the quota and what is held
(the body the Go SDK's `QuotasExceededError` reads), and changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from allocator_support import revision
from gateway_fixtures import ADMIN_SECRET, ApiKeys, GatewayNode, sdk_client
from scaleway.ipam.v1 import IpamV1API
from scaleway.ipam.v1.types import Source
from scaleway.vpc.v2 import VpcV2API
from scaleway_core.api import ScalewayException

from allocator.contract import Quotas

QUOTAS = Quotas(vpcs_per_project=2, private_networks_per_project=2,
                subnets_per_private_network=2, ips_per_project=2, keys_per_organization=2)


@pytest.fixture
def node(etcd_single: Any, key_prefix: str) -> Iterator[GatewayNode]:
    """One gateway node whose allocator has the small QUOTAS (its --quota-* settings)."""
    gateway = GatewayNode(etcd_single.endpoints, key_prefix, quotas=QUOTAS).start()
    yield gateway
    gateway.stop()
    gateway.assert_conformant()


class Tenant:
    """A project_member of a fresh project, and its SDK clients."""

    def __init__(self, node: GatewayNode) -> None:
        self.project = str(uuid.uuid4())
        access, secret = ApiKeys(node.url).create("project_member", [self.project])
        client = sdk_client(node.url, access, secret, self.project)
        self.vpc, self.ipam = VpcV2API(client), IpamV1API(client)


@pytest.fixture
def tenant(node: GatewayNode) -> Tenant:
    return Tenant(node)


def _refused(node: GatewayNode, create: Any, resource: str, current: int) -> str:
    """Assert that `create()` is a 403 quotas_exceeded over `resource` at `current` of 2,
    and wrote nothing; its message."""
    before = node.call(revision(node.ipam))
    with pytest.raises(ScalewayException) as exc:
        create()
    body = exc.value.response.json()
    assert exc.value.response.status_code == 403
    assert body == {"type": "quotas_exceeded", "message": body["message"],
                    "details": [{"resource": resource, "quota": 2, "current": current}]}
    assert node.call(revision(node.ipam)) == before
    return str(body["message"])


def test_a_vpc_over_the_quota_is_403_quotas_exceeded_and_a_delete_frees_a_slot(
        node: GatewayNode, tenant: Tenant) -> None:
    def create(name: str) -> Any:
        return tenant.vpc.create_vpc(name=name, enable_routing=True, enable_transitivity=False)

    first, _ = create("a"), create("b")
    message = _refused(node, lambda: create("c"), "vpc", 2)
    assert message == f"project {tenant.project} holds 2 vpcs, its quota: delete one first"
    tenant.vpc.delete_vpc(vpc_id=first.id)
    create("c")
    assert sorted(v.name for v in tenant.vpc.list_vp_cs().vpcs) == ["b", "c"]


def test_a_private_network_over_the_quota_is_403_quotas_exceeded(
        node: GatewayNode, tenant: Tenant) -> None:
    def create(cidr: str) -> Any:
        return tenant.vpc.create_private_network(default_route_propagation_enabled=False,
                                                 subnets=[cidr])

    first = create("10.1.0.0/24")
    create("10.2.0.0/24")
    _refused(node, lambda: create("10.3.0.0/24"), "private_network", 2)
    tenant.vpc.delete_private_network(private_network_id=first.id)
    create("10.3.0.0/24")


def test_subnets_over_the_quota_are_403_quotas_exceeded(node: GatewayNode,
                                                        tenant: Tenant) -> None:
    pn = tenant.vpc.create_private_network(default_route_propagation_enabled=False,
                                           subnets=["10.1.0.0/24"])
    url = f"{node.url}/vpc/v2/regions/fr-par/private-networks/{pn.id}/subnets"
    token = {"X-Auth-Token": tenant.vpc.client.secret_key or ""}

    def add(cidrs: list[str]) -> Any:
        resp = requests.post(url, json={"subnets": cidrs}, headers=token, timeout=10)
        if resp.status_code >= 400:
            raise ScalewayException(resp)
        return resp.json()

    _refused(node, lambda: add(["10.2.0.0/24", "10.3.0.0/24"]), "subnet", 1)
    assert add(["10.2.0.0/24"]) == {"subnets": ["10.2.0.0/24"]}
    _refused(node, lambda: add(["10.3.0.0/24"]), "subnet", 2)


def test_an_ip_over_the_quota_is_403_quotas_exceeded_and_a_release_frees_a_slot(
        node: GatewayNode, tenant: Tenant) -> None:
    pn = tenant.vpc.create_private_network(default_route_propagation_enabled=False,
                                           subnets=["10.1.0.0/24"])

    def book() -> Any:
        return tenant.ipam.book_ip(source=Source(private_network_id=pn.id), is_ipv6=False)

    first, _ = book(), book()
    _refused(node, book, "ip", 2)
    tenant.ipam.release_ip(ip_id=first.id)
    book()


def test_an_api_key_over_its_organizations_quota_is_403_and_a_revocation_frees_a_slot(
        node: GatewayNode) -> None:
    organization, admin = str(uuid.uuid4()), {"X-Auth-Token": ADMIN_SECRET}
    keys = f"{node.url}/ipam/admin/v1/api-keys"

    def create(role: str = "project_member") -> Any:
        body: dict[str, Any] = {"role": role, "organization_id": organization}
        if role != "product":
            body["project_ids"] = [str(uuid.uuid4())]
        else:
            body["resource_types"] = ["instance_server"]
        resp = requests.post(keys, json=body, headers=admin, timeout=10)
        if resp.status_code >= 400:
            raise ScalewayException(resp)
        return resp.json()

    first, _ = create(), create("project_reader")
    create("product")  # acts for no organization's projects: takes no slot
    message = _refused(node, create, "api_key", 2)
    assert message == f"organization {organization} holds 2 API keys, its quota: revoke one first"
    revoked = requests.delete(f"{keys}/{first['access_key']}", headers=admin, timeout=10)
    assert revoked.status_code == 204
    create()
    _refused(node, create, "api_key", 2)


def test_only_creates_document_quotas_exceeded(node: GatewayNode) -> None:
    doc = requests.get(f"{node.url}/openapi.json", timeout=10).json()
    vpcs = doc["paths"]["/vpc/v2/regions/{region}/vpcs"]
    assert "quotas_exceeded" in vpcs["post"]["responses"]["403"]["description"]
    assert "quotas_exceeded" not in vpcs["get"]["responses"]["403"]["description"]
