"""Changes to VPCs and Private Networks after creation, through the official SDK:
enable routing, enable DHCP, add and delete subnets.

The installed SDK (2.12) no longer has `add_subnets` / `delete_subnets` (earlier releases
did, on these paths, with `{"subnets": [...]}` in and `AddSubnetsResponse` /
`DeleteSubnetsResponse` out, each `{"subnets": [CIDR, ...]}`): those two go through the
SDK's own request and error handling (`VpcV2API._request`, `_throw_on_error`).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from gateway_fixtures import (  # noqa: F401 - fixtures
    ADMIN_SECRET,
    REGION,
    ApiKeys,
    GatewayNode,
    admin_access_key,
    gateway,
    sdk_client,
)
from scaleway.ipam.v1 import IpamV1API
from scaleway.ipam.v1.types import Source
from scaleway.vpc.v2 import VpcV2API
from scaleway_core.api import ScalewayException


class Tenant:
    """A project with a key of `role`, and its SDK clients."""

    def __init__(self, node: GatewayNode, keys: ApiKeys, role: str = "project_member",
                 project: str | None = None) -> None:
        self.project = project or str(uuid.uuid4())
        self.access, self.secret = keys.create(role, [self.project])
        client = sdk_client(node.url, self.access, self.secret, self.project)
        self.ipam = IpamV1API(client)
        self.vpc = VpcV2API(client)


def _subnets_call(api: VpcV2API, method: str, pn_id: str, subnets: Any) -> list[str]:
    """POST (add) or DELETE (delete) `.../private-networks/{id}/subnets`, as the SDK's
    `add_subnets` / `delete_subnets` did: the CIDRs of the answer."""
    res = api._request(method, f"/vpc/v2/regions/{REGION}/private-networks/{pn_id}/subnets",
                       body={"subnets": subnets})
    api._throw_on_error(res)
    answer = res.json()
    assert set(answer) == {"subnets"}
    return list(answer["subnets"])


def add_subnets(api: VpcV2API, pn_id: str, subnets: Any) -> list[str]:
    return _subnets_call(api, "POST", pn_id, subnets)


def delete_subnets(api: VpcV2API, pn_id: str, subnets: Any) -> list[str]:
    return _subnets_call(api, "DELETE", pn_id, subnets)


def error_of(exc: pytest.ExceptionInfo[ScalewayException]) -> tuple[int, dict[str, Any]]:
    return exc.value.response.status_code, exc.value.response.json()


@pytest.fixture
def keys(gateway: GatewayNode) -> ApiKeys:  # noqa: F811
    return ApiKeys(gateway.url)


@pytest.fixture
def tenant(gateway: GatewayNode, keys: ApiKeys) -> Tenant:  # noqa: F811
    return Tenant(gateway, keys)


def test_enable_routing_turns_it_on_for_good_and_twice_changes_nothing(tenant: Tenant) -> None:
    vpc = tenant.vpc.create_vpc(enable_routing=False, enable_transitivity=False, name="r")
    assert vpc.routing_enabled is False
    assert tenant.vpc.list_vp_cs(routing_enabled=True).vpcs == []
    enabled = tenant.vpc.enable_routing(vpc_id=vpc.id)
    assert enabled.routing_enabled is True and enabled.id == vpc.id
    assert enabled.name == "r" and enabled.updated_at >= vpc.updated_at
    assert tenant.vpc.get_vpc(vpc_id=vpc.id).routing_enabled is True
    assert [v.id for v in tenant.vpc.list_vp_cs(routing_enabled=True).vpcs] == [vpc.id]
    again = tenant.vpc.enable_routing(vpc_id=vpc.id)
    assert again == enabled


def test_enable_dhcp_turns_it_on_for_good_and_twice_changes_nothing(
        gateway: GatewayNode, tenant: Tenant) -> None:  # noqa: F811
    pn = tenant.vpc.create_private_network(default_route_propagation_enabled=False,
                                           subnets=["10.40.0.0/24"])
    assert pn.dhcp_enabled is True  # a new network has it, as on Scaleway
    # No call turns it off: the allocator does, as an operator would.
    gateway.call(gateway.ipam.update_private_network(pn.id, dhcp_enabled=False))  # type: ignore[union-attr]
    assert tenant.vpc.get_private_network(private_network_id=pn.id).dhcp_enabled is False
    enabled = tenant.vpc.enable_dhcp(private_network_id=pn.id)
    assert enabled.dhcp_enabled is True and enabled.subnets == pn.subnets
    assert tenant.vpc.get_private_network(private_network_id=pn.id).dhcp_enabled is True
    assert [p.id for p in tenant.vpc.list_private_networks(dhcp_enabled=True)
            .private_networks] == [pn.id]
    assert tenant.vpc.enable_dhcp(private_network_id=pn.id) == enabled


def test_enable_calls_are_refused_like_updates(gateway: GatewayNode, keys: ApiKeys,  # noqa: F811
                                               tenant: Tenant) -> None:
    vpc = tenant.vpc.create_vpc(enable_routing=False, enable_transitivity=False)
    pn = tenant.vpc.create_private_network(default_route_propagation_enabled=False,
                                           vpc_id=vpc.id, subnets=["10.41.0.0/24"])
    stranger = Tenant(gateway, keys)
    reader = Tenant(gateway, keys, "project_reader", tenant.project)
    missing = str(uuid.uuid4())
    for call, status, detail in (
            (lambda: tenant.vpc.enable_routing(vpc_id=missing), 404, ("vpc", missing)),
            (lambda: tenant.vpc.enable_dhcp(private_network_id=missing), 404,
             ("private_network", missing)),
            (lambda: stranger.vpc.enable_routing(vpc_id=vpc.id), 404, ("vpc", vpc.id)),
            (lambda: stranger.vpc.enable_dhcp(private_network_id=pn.id), 404,
             ("private_network", pn.id)),
            (lambda: reader.vpc.enable_routing(vpc_id=vpc.id), 403, ("write", "vpc")),
            (lambda: reader.vpc.enable_dhcp(private_network_id=pn.id), 403,
             ("write", "private_network"))):
        with pytest.raises(ScalewayException) as exc:
            call()
        got, body = error_of(exc)
        assert got == status, body
        if status == 404:
            assert (body["resource"], body["resource_id"]) == detail
        else:
            assert body["details"] == [{"action": detail[0], "resource": detail[1]}]
    assert tenant.vpc.get_vpc(vpc_id=vpc.id).routing_enabled is False
    admin = VpcV2API(sdk_client(gateway.url, admin_access_key(), ADMIN_SECRET))
    assert admin.enable_routing(vpc_id=vpc.id).routing_enabled is True


def test_added_subnets_are_listed_and_booked_in(tenant: Tenant) -> None:
    pn = tenant.vpc.create_private_network(default_route_propagation_enabled=False,
                                           subnets=["10.42.0.0/24"])
    assert add_subnets(tenant.vpc, pn.id, ["10.43.0.0/24", "fd00:43::/64"]) == [
        "10.43.0.0/24", "fd00:43::/64"]
    got = tenant.vpc.get_private_network(private_network_id=pn.id)
    assert [s.subnet for s in got.subnets] == ["10.42.0.0/24", "10.43.0.0/24", "fd00:43::/64"]
    assert got.updated_at >= pn.updated_at
    listed = tenant.vpc.list_subnets(vpc_id=pn.vpc_id).subnets
    assert sorted(s.subnet for s in listed) == ["10.42.0.0/24", "10.43.0.0/24", "fd00:43::/64"]
    added = next(s for s in got.subnets if s.subnet == "10.43.0.0/24")
    ip = tenant.ipam.book_ip(source=Source(private_network_id=pn.id), is_ipv6=False,
                             address="10.43.0.10")
    assert ip.address == "10.43.0.10/24" and ip.source == Source(subnet_id=added.id)
    v6 = tenant.ipam.book_ip(source=Source(private_network_id=pn.id), is_ipv6=True)
    assert v6.address.startswith("fd00:43::")
    assert tenant.ipam.list_i_ps(private_network_id=pn.id).total_count == 2


def test_an_added_subnet_may_overlap_nothing_and_bad_cidrs_are_400(tenant: Tenant) -> None:
    pn = tenant.vpc.create_private_network(default_route_propagation_enabled=False,
                                           subnets=["10.44.0.0/24"])
    other = tenant.vpc.create_private_network(default_route_propagation_enabled=False,
                                              vpc_id=pn.vpc_id, subnets=["10.45.0.0/24"])
    collider = other.subnets[0].id
    with pytest.raises(ScalewayException) as exc:
        add_subnets(tenant.vpc, pn.id, ["10.45.0.0/16"])
    status, body = error_of(exc)
    assert status == 409 and body["type"] == "already_exists"
    assert (body["resource"], body["resource_id"]) == ("subnet", collider)
    assert "10.45.0.0/24" in body["message"]
    for bad in (["10.46.0.1/24"], ["8.8.8.0/24"], ["not-a-cidr"], [], "10.46.0.0/24",
                ["10.46.0.0/24", "10.46.0.0/25"]):
        with pytest.raises(ScalewayException) as exc:
            add_subnets(tenant.vpc, pn.id, bad)
        status, body = error_of(exc)
        assert status == 400 and body["details"][0]["argument_name"] == "subnets", (bad, body)
    assert [s.subnet for s in tenant.vpc.get_private_network(private_network_id=pn.id)
            .subnets] == ["10.44.0.0/24"]


def test_a_subnet_holding_an_ip_is_not_deleted(tenant: Tenant) -> None:
    pn = tenant.vpc.create_private_network(default_route_propagation_enabled=False,
                                           subnets=["10.47.0.0/24", "10.48.0.0/24"])
    held = next(s for s in pn.subnets if s.subnet == "10.47.0.0/24")
    ip = tenant.ipam.book_ip(source=Source(subnet_id=held.id), is_ipv6=False)
    with pytest.raises(ScalewayException) as exc:
        delete_subnets(tenant.vpc, pn.id, ["10.47.0.0/24", "10.48.0.0/24"])
    status, body = error_of(exc)
    assert status == 412 and body["precondition"] == "resource_still_in_use"
    assert held.id in body["message"] and "10.47.0.0/24" in body["message"]
    assert len(tenant.vpc.get_private_network(private_network_id=pn.id).subnets) == 2
    assert delete_subnets(tenant.vpc, pn.id, ["10.48.0.0/24"]) == ["10.48.0.0/24"]
    tenant.ipam.release_ip(ip_id=ip.id)
    assert delete_subnets(tenant.vpc, pn.id, ["10.47.0.0/24"]) == ["10.47.0.0/24"]
    assert tenant.vpc.get_private_network(private_network_id=pn.id).subnets == []
    assert tenant.vpc.list_subnets(vpc_id=pn.vpc_id).total_count == 0
    with pytest.raises(ScalewayException) as exc:
        tenant.ipam.book_ip(source=Source(subnet_id=held.id), is_ipv6=False)
    status, body = error_of(exc)
    assert status == 404 and (body["resource"], body["resource_id"]) == ("subnet", held.id)
    # Deleted, the CIDR is free again in the VPC.
    assert add_subnets(tenant.vpc, pn.id, ["10.47.0.0/24"]) == ["10.47.0.0/24"]


def test_deleting_a_subnet_the_network_lacks_or_a_bad_cidr(tenant: Tenant) -> None:
    pn = tenant.vpc.create_private_network(default_route_propagation_enabled=False,
                                           subnets=["10.49.0.0/24"])
    with pytest.raises(ScalewayException) as exc:
        delete_subnets(tenant.vpc, pn.id, ["10.50.0.0/24"])
    status, body = error_of(exc)
    assert status == 404 and (body["resource"], body["resource_id"]) == ("subnet",
                                                                       "10.50.0.0/24")
    for bad in (["10.49.0.1/24"], ["nope"], []):
        with pytest.raises(ScalewayException) as exc:
            delete_subnets(tenant.vpc, pn.id, bad)
        status, body = error_of(exc)
        assert status == 400 and body["details"][0]["argument_name"] == "subnets", (bad, body)
    assert len(tenant.vpc.get_private_network(private_network_id=pn.id).subnets) == 1


def test_subnet_changes_are_refused_like_updates(gateway: GatewayNode, keys: ApiKeys,  # noqa: F811
                                                 tenant: Tenant) -> None:
    pn = tenant.vpc.create_private_network(default_route_propagation_enabled=False,
                                           subnets=["10.51.0.0/24"])
    stranger = Tenant(gateway, keys)
    reader = Tenant(gateway, keys, "project_reader", tenant.project)
    missing = str(uuid.uuid4())
    for call in (add_subnets, delete_subnets):
        for who, target, status in ((tenant, missing, 404), (stranger, pn.id, 404),
                                    (reader, pn.id, 403)):
            with pytest.raises(ScalewayException) as exc:
                call(who.vpc, target, ["10.51.0.0/24"] if call is delete_subnets
                     else ["10.52.0.0/24"])
            got, body = error_of(exc)
            assert got == status, body
            if status == 404:
                assert (body["resource"], body["resource_id"]) == ("private_network", target)
            else:
                assert body["details"] == [{"action": "write", "resource": "private_network"}]
    assert [s.subnet for s in tenant.vpc.get_private_network(private_network_id=pn.id)
            .subnets] == ["10.51.0.0/24"]
