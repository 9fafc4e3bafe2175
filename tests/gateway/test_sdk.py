"""The official Scaleway SDK, pointed at a gateway on real etcd, for every IPAM v1 call
and the VPC v2 calls that define sources, including their error cases."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests
from gateway_fixtures import (  # noqa: F401 - fixtures
    ADMIN_SECRET,
    ApiKeys,
    GatewayNode,
    admin_access_key,
    gateway,
    sdk_client,
)
from scaleway.ipam.v1 import IpamV1API
from scaleway.ipam.v1.types import CustomResource, Reverse, Source
from scaleway.vpc.v2 import VpcV2API
from scaleway_core.api import ScalewayException


def error_of(exc: pytest.ExceptionInfo[ScalewayException]) -> tuple[int, dict[str, Any]]:
    return exc.value.response.status_code, exc.value.response.json()


class Tenant:
    """A project with a member key, its SDK clients, and a Private Network."""

    def __init__(self, node: GatewayNode, keys: ApiKeys, role: str = "project_member") -> None:
        self.project = str(uuid.uuid4())
        self.access, self.secret = keys.create(role, [self.project])
        client = sdk_client(node.url, self.access, self.secret, self.project)
        self.ipam = IpamV1API(client)
        self.vpc = VpcV2API(client)


@pytest.fixture
def keys(gateway: GatewayNode) -> ApiKeys:  # noqa: F811
    return ApiKeys(gateway.url)


@pytest.fixture
def tenant(gateway: GatewayNode, keys: ApiKeys) -> Tenant:  # noqa: F811
    return Tenant(gateway, keys)


@pytest.fixture
def admin(gateway: GatewayNode) -> Any:  # noqa: F811
    client = sdk_client(gateway.url, admin_access_key(), ADMIN_SECRET)
    return IpamV1API(client), VpcV2API(client)


def test_private_network_without_subnets_gets_a_22_and_a_64_in_the_default_vpc(
        tenant: Tenant) -> None:
    pn = tenant.vpc.create_private_network(default_route_propagation_enabled=False,
                                           name="web")
    assert pn.name == "web" and pn.project_id == tenant.project
    v4 = [s.subnet for s in pn.subnets if ":" not in s.subnet]
    v6 = [s.subnet for s in pn.subnets if ":" in s.subnet]
    assert len(v4) == 1 and v4[0].endswith("/22") and v4[0].startswith("172.")
    assert len(v6) == 1 and v6[0].endswith("/64") and v6[0].startswith("fd")
    vpc = tenant.vpc.get_vpc(vpc_id=pn.vpc_id)
    assert vpc.is_default and vpc.private_network_count == 1
    assert [p.id for p in tenant.vpc.list_private_networks().private_networks] == [pn.id]


def test_book_get_list_update_release_through_the_sdk(tenant: Tenant) -> None:
    pn = tenant.vpc.create_private_network(default_route_propagation_enabled=False,
                                           subnets=["10.20.0.0/24"])
    ip = tenant.ipam.book_ip(source=Source(private_network_id=pn.id), is_ipv6=False,
                             tags=["a"])
    assert ip.address.endswith("/24") and ip.address.startswith("10.20.0.")
    # Scaleway's Source is a one-of: a private IP names its subnet, and nothing else.
    assert ip.source == Source(subnet_id=pn.subnets[0].id) and ip.tags == ["a"]
    assert ip.resource is None and ip.project_id == tenant.project
    got = tenant.ipam.get_ip(ip_id=ip.id)
    assert got.address == ip.address
    listed = tenant.ipam.list_i_ps(private_network_id=pn.id)
    assert listed.total_count == 1 and listed.ips[0].id == ip.id
    host = ip.address.split("/")[0]
    updated = tenant.ipam.update_ip(ip_id=ip.id, tags=["b", "c"],
                                    reverses=[Reverse(hostname="web.example.com",
                                                      address=host)])
    assert updated.tags == ["b", "c"]
    assert updated.reverses[0].hostname == "web.example.com"
    tenant.ipam.release_ip(ip_id=ip.id)
    with pytest.raises(ScalewayException) as exc:
        tenant.ipam.get_ip(ip_id=ip.id)
    status, body = error_of(exc)
    assert status == 404 and body["type"] == "not_found" and body["resource"] == "ip"


def test_attached_ip_cannot_be_released_until_detached(tenant: Tenant) -> None:
    pn = tenant.vpc.create_private_network(default_route_propagation_enabled=False,
                                           subnets=["10.21.0.0/24"])
    ip = tenant.ipam.book_ip(source=Source(private_network_id=pn.id), is_ipv6=False)
    res = CustomResource(mac_address="02:00:00:00:00:01", name="vm1")
    attached = tenant.ipam.attach_ip(ip_id=ip.id, resource=res)
    assert attached.resource.type_ == "custom"
    assert attached.resource.mac_address == "02:00:00:00:00:01"
    with pytest.raises(ScalewayException) as exc:
        tenant.ipam.release_ip(ip_id=ip.id)
    status, body = error_of(exc)
    assert status == 412 and body["precondition"] == "resource_still_in_use"
    moved = tenant.ipam.move_ip(ip_id=ip.id, from_resource=res,
                                to_resource=CustomResource(mac_address="02:00:00:00:00:02"))
    assert moved.resource.mac_address == "02:00:00:00:00:02"
    detached = tenant.ipam.detach_ip(ip_id=ip.id,
                                     resource=CustomResource(mac_address="02:00:00:00:00:02"))
    assert detached.resource is None
    tenant.ipam.release_ip(ip_id=ip.id)


def test_booking_a_taken_address_is_already_exists(tenant: Tenant) -> None:
    pn = tenant.vpc.create_private_network(default_route_propagation_enabled=False,
                                           subnets=["10.22.0.0/24"])
    ip = tenant.ipam.book_ip(source=Source(private_network_id=pn.id), is_ipv6=False,
                             address="10.22.0.10")
    assert ip.address == "10.22.0.10/24"
    with pytest.raises(ScalewayException) as exc:
        tenant.ipam.book_ip(source=Source(private_network_id=pn.id), is_ipv6=False,
                            address="10.22.0.10")
    status, body = error_of(exc)
    assert status == 409 and body["type"] == "already_exists"


def test_another_projects_objects_are_not_found_and_not_listed(
        gateway: GatewayNode, keys: ApiKeys, tenant: Tenant) -> None:  # noqa: F811
    pn = tenant.vpc.create_private_network(default_route_propagation_enabled=False,
                                           subnets=["10.23.0.0/24"])
    ip = tenant.ipam.book_ip(source=Source(private_network_id=pn.id), is_ipv6=False)
    other = Tenant(gateway, keys)
    mac = CustomResource(mac_address="02:00:00:00:00:33")
    for call, resource in ((lambda: other.ipam.get_ip(ip_id=ip.id), "ip"),
                           (lambda: other.ipam.release_ip(ip_id=ip.id), "ip"),
                           (lambda: other.ipam.update_ip(ip_id=ip.id, tags=["x"]), "ip"),
                           (lambda: other.ipam.attach_ip(ip_id=ip.id, resource=mac), "ip"),
                           (lambda: other.ipam.detach_ip(ip_id=ip.id, resource=mac), "ip"),
                           (lambda: other.ipam.move_ip(ip_id=ip.id, from_resource=mac), "ip"),
                           (lambda: other.ipam.release_ip_set(ip_ids=[ip.id]), "ip"),
                           (lambda: other.vpc.get_private_network(private_network_id=pn.id),
                            "private_network"),
                           (lambda: other.vpc.get_vpc(vpc_id=pn.vpc_id), "vpc")):
        with pytest.raises(ScalewayException) as exc:
            call()
        status, body = error_of(exc)
        assert status == 404 and body["resource"] == resource
    assert other.ipam.list_i_ps().total_count == 0
    assert other.ipam.list_i_ps(project_id=tenant.project).total_count == 0
    assert other.vpc.list_private_networks(project_id=tenant.project).total_count == 0
    with pytest.raises(ScalewayException) as exc:
        other.ipam.book_ip(source=Source(private_network_id=pn.id), is_ipv6=False)
    assert error_of(exc)[0] == 404
    untouched = tenant.ipam.get_ip(ip_id=ip.id)
    assert (untouched.id, untouched.tags, untouched.resource) == (ip.id, [], None)


def test_vpc_lifecycle_and_delete_refused_while_it_holds_private_networks(
        tenant: Tenant) -> None:
    vpc = tenant.vpc.create_vpc(enable_routing=True, enable_transitivity=False, name="prod",
                                tags=["x"])
    assert vpc.name == "prod" and vpc.tags == ["x"] and not vpc.is_default
    assert vpc.project_id == tenant.project and vpc.region == "fr-par"
    assert tenant.vpc.get_vpc(vpc_id=vpc.id).id == vpc.id
    renamed = tenant.vpc.update_vpc(vpc_id=vpc.id, name="prod2", tags=["y"])
    assert renamed.name == "prod2" and renamed.tags == ["y"]
    assert [v.id for v in tenant.vpc.list_vp_cs(name="prod2").vpcs] == [vpc.id]
    pn = tenant.vpc.create_private_network(default_route_propagation_enabled=False,
                                           vpc_id=vpc.id, subnets=["10.30.0.0/24"])
    assert pn.vpc_id == vpc.id and [s.subnet for s in pn.subnets] == ["10.30.0.0/24"]
    with pytest.raises(ScalewayException) as exc:
        tenant.vpc.delete_vpc(vpc_id=vpc.id)
    status, body = error_of(exc)
    assert status == 412 and body["precondition"] == "resource_still_in_use"
    tenant.vpc.delete_private_network(private_network_id=pn.id)
    tenant.vpc.delete_vpc(vpc_id=vpc.id)
    with pytest.raises(ScalewayException) as exc:
        tenant.vpc.get_vpc(vpc_id=vpc.id)
    assert error_of(exc) [0] == 404


def test_private_network_update_list_subnets_and_delete_refused_while_it_holds_ips(
        tenant: Tenant) -> None:
    pn = tenant.vpc.create_private_network(default_route_propagation_enabled=False,
                                           name="a", subnets=["10.31.0.0/24", "fd00:1::/64"])
    updated = tenant.vpc.update_private_network(private_network_id=pn.id, name="b",
                                                tags=["t"])
    assert updated.name == "b" and updated.tags == ["t"]
    assert tenant.vpc.get_private_network(private_network_id=pn.id).name == "b"
    subnets = tenant.vpc.list_subnets(vpc_id=pn.vpc_id).subnets
    assert sorted(s.subnet for s in subnets) == ["10.31.0.0/24", "fd00:1::/64"]
    assert all(s.private_network_id == pn.id for s in subnets)
    v6 = tenant.ipam.book_ip(source=Source(private_network_id=pn.id), is_ipv6=True)
    assert v6.is_ipv6 and v6.address.startswith("fd00:1::") and v6.address.endswith("/64")
    with pytest.raises(ScalewayException) as exc:
        tenant.vpc.delete_private_network(private_network_id=pn.id)
    status, body = error_of(exc)
    assert status == 412 and body["precondition"] == "resource_still_in_use"
    tenant.ipam.release_ip(ip_id=v6.id)
    tenant.vpc.delete_private_network(private_network_id=pn.id)


def test_book_from_a_subnet_source_and_list_by_subnet(tenant: Tenant) -> None:
    pn = tenant.vpc.create_private_network(default_route_propagation_enabled=False,
                                           subnets=["10.32.0.0/28"])
    subnet_id = pn.subnets[0].id
    ip = tenant.ipam.book_ip(source=Source(subnet_id=subnet_id), is_ipv6=False)
    assert ip.source.subnet_id == subnet_id
    assert [i.id for i in tenant.ipam.list_i_ps(subnet_id=subnet_id).ips] == [ip.id]


def test_release_ip_set_is_all_or_none(tenant: Tenant) -> None:
    pn = tenant.vpc.create_private_network(default_route_propagation_enabled=False,
                                           subnets=["10.33.0.0/24"])
    ips = [tenant.ipam.book_ip(source=Source(private_network_id=pn.id), is_ipv6=False)
           for _ in range(3)]
    tenant.ipam.attach_ip(ip_id=ips[2].id,
                          resource=CustomResource(mac_address="02:00:00:00:00:33"))
    with pytest.raises(ScalewayException) as exc:
        tenant.ipam.release_ip_set(ip_ids=[i.id for i in ips])
    assert error_of(exc)[0] == 412
    assert tenant.ipam.list_i_ps(private_network_id=pn.id).total_count == 3
    tenant.ipam.release_ip_set(ip_ids=[ips[0].id, ips[1].id])
    assert [i.id for i in tenant.ipam.list_i_ps(private_network_id=pn.id).ips] == [ips[2].id]


def test_list_filters_orders_and_pages(tenant: Tenant) -> None:
    pn = tenant.vpc.create_private_network(default_route_propagation_enabled=False,
                                           subnets=["10.34.0.0/24"])
    ips = [tenant.ipam.book_ip(source=Source(private_network_id=pn.id), is_ipv6=False,
                               tags=["even" if n % 2 == 0 else "odd"]) for n in range(5)]
    tenant.ipam.attach_ip(ip_id=ips[0].id, resource=CustomResource(
        mac_address="02:00:00:00:00:34", name="db-1"))
    api = tenant.ipam
    assert api.list_i_ps(tags=["even"]).total_count == 3
    assert api.list_i_ps(tags=["even", "odd"]).total_count == 5
    assert [i.id for i in api.list_i_ps(attached=True).ips] == [ips[0].id]
    assert api.list_i_ps(attached=False).total_count == 4
    assert [i.id for i in api.list_i_ps(mac_address="02:00:00:00:00:34").ips] == [ips[0].id]
    assert [i.id for i in api.list_i_ps(resource_name="db").ips] == [ips[0].id]
    assert api.list_i_ps(is_ipv6=True).total_count == 0
    assert api.list_i_ps(ip_ids=[ips[1].id, ips[2].id]).total_count == 2
    page = api.list_i_ps(order_by="ip_address_asc", page=2, page_size=2)
    ordered = sorted(ips, key=lambda i: tuple(int(x) for x in i.address.split("/")[0]
                                              .split(".")))
    assert page.total_count == 5 and [i.id for i in page.ips] == [i.id for i in ordered[2:4]]
    assert len(api.list_i_ps_all(page_size=2)) == 5
    with pytest.raises(ScalewayException) as exc:
        api.list_i_ps(page_size=101)
    status, body = error_of(exc)
    assert status == 400 and body["details"][0]["argument_name"] == "page_size"


def test_reader_key_reads_but_cannot_write(gateway: GatewayNode, keys: ApiKeys,  # noqa: F811
                                           tenant: Tenant) -> None:
    pn = tenant.vpc.create_private_network(default_route_propagation_enabled=False,
                                           subnets=["10.35.0.0/24"])
    ip = tenant.ipam.book_ip(source=Source(private_network_id=pn.id), is_ipv6=False)
    _, secret = keys.create("project_reader", [tenant.project])
    reader = IpamV1API(sdk_client(gateway.url, "SCW" + "R" * 17, secret, tenant.project))
    assert reader.get_ip(ip_id=ip.id).id == ip.id
    assert reader.list_i_ps().total_count == 1
    for call in (lambda: reader.book_ip(source=Source(private_network_id=pn.id),
                                        is_ipv6=False),
                 lambda: reader.release_ip(ip_id=ip.id),
                 lambda: reader.update_ip(ip_id=ip.id, tags=["z"])):
        with pytest.raises(ScalewayException) as exc:
            call()
        status, body = error_of(exc)
        assert status == 403 and body["type"] == "permissions_denied"
        assert body["details"] == [{"action": "write", "resource": "ip"}]
    assert tenant.ipam.get_ip(ip_id=ip.id).tags == []


def test_unknown_or_malformed_secret_is_denied_authentication(
        gateway: GatewayNode) -> None:  # noqa: F811
    api = IpamV1API(sdk_client(gateway.url, "SCW" + "A" * 17, str(uuid.uuid4())))
    with pytest.raises(ScalewayException) as exc:
        api.list_i_ps()
    status, body = error_of(exc)
    assert status == 401 and body == {"type": "denied_authentication", "method": "api_key",
                                      "reason": "not_found",
                                      "message": "authentication is denied"}
    resp = requests.get(f"{gateway.url}/ipam/v1/regions/fr-par/ips",
                        headers={"X-Auth-Token": "not-a-uuid"}, timeout=10)
    assert resp.status_code == 401 and resp.json()["reason"] == "invalid_argument"


def test_admin_sees_every_project(admin: Any, tenant: Tenant) -> None:
    pn = tenant.vpc.create_private_network(default_route_propagation_enabled=False,
                                           subnets=["10.36.0.0/24"])
    ip = tenant.ipam.book_ip(source=Source(private_network_id=pn.id), is_ipv6=False)
    ipam, vpc = admin
    assert ipam.get_ip(ip_id=ip.id).project_id == tenant.project
    assert ip.id in [i.id for i in ipam.list_i_ps().ips]
    assert vpc.get_private_network(private_network_id=pn.id).id == pn.id


def test_book_with_a_custom_resource_attaches_at_once_and_a_mac_holds_one_ip(
        tenant: Tenant) -> None:
    pn = tenant.vpc.create_private_network(default_route_propagation_enabled=False,
                                           subnets=["10.37.0.0/24"])
    res = CustomResource(mac_address="02:00:00:00:00:37", name="bm-1")
    ip = tenant.ipam.book_ip(source=Source(private_network_id=pn.id), is_ipv6=False,
                             resource=res)
    assert ip.resource.type_ == "custom" and ip.resource.name == "bm-1"
    assert [i.id for i in tenant.ipam.list_i_ps(resource_type="custom").ips] == [ip.id]
    assert [i.id for i in tenant.ipam.list_i_ps(resource_id=ip.resource.id).ips] == [ip.id]
    with pytest.raises(ScalewayException) as exc:
        tenant.ipam.book_ip(source=Source(private_network_id=pn.id), is_ipv6=False,
                            resource=res)
    status, body = error_of(exc)
    assert status == 409 and body["type"] == "already_exists"
    assert tenant.ipam.list_i_ps(private_network_id=pn.id).total_count == 1


def test_routing_and_propagation_flags_are_kept_as_asked(tenant: Tenant) -> None:
    vpc = tenant.vpc.create_vpc(enable_routing=True, enable_transitivity=True, name="t")
    assert (vpc.routing_enabled, vpc.transitivity_enabled) == (True, True)
    assert tenant.vpc.get_vpc(vpc_id=vpc.id).transitivity_enabled is True
    plain = tenant.vpc.create_vpc(enable_routing=False, enable_transitivity=False)
    assert (plain.routing_enabled, plain.transitivity_enabled) == (False, False)
    pn = tenant.vpc.create_private_network(default_route_propagation_enabled=True,
                                           vpc_id=vpc.id, subnets=["10.77.0.0/24"])
    assert pn.default_route_propagation_enabled is True
    off = tenant.vpc.update_private_network(private_network_id=pn.id,
                                            default_route_propagation_enabled=False)
    assert off.default_route_propagation_enabled is False
    renamed = tenant.vpc.update_private_network(private_network_id=pn.id, name="x")
    assert renamed.default_route_propagation_enabled is False and renamed.name == "x"


def test_vpc_calls_this_gateway_does_not_serve_are_501_not_a_missing_object(
        tenant: Tenant, gateway: GatewayNode) -> None:  # noqa: F811
    """get_route would otherwise answer 404 not_found, as for a route that does not exist."""
    vpc = tenant.vpc.create_vpc(enable_routing=False, enable_transitivity=False, name="calls")
    for call in (lambda: tenant.vpc.get_route(route_id=str(uuid.uuid4())),
                 lambda: tenant.vpc.enable_custom_routes_propagation(vpc_id=vpc.id),
                 lambda: tenant.vpc.get_acl(vpc_id=vpc.id, is_ipv6=False),
                 lambda: tenant.vpc.list_vpc_connectors()):
        with pytest.raises(ScalewayException) as exc:
            call()
        status, body = error_of(exc)
        assert status == 501 and body["type"] == "not_implemented", body
        assert "VPCs, Private Networks and subnets" in body["message"]
    missing = requests.get(f"{gateway.url}/vpc/v2/regions/fr-par/nonsense", timeout=10,
                           headers={"X-Auth-Token": tenant.secret})
    assert (missing.status_code, missing.json()["type"]) == (404, "not_found")


def test_a_reattach_under_another_name_is_refused_and_a_reverse_takes_any_spelling(
        tenant: Tenant) -> None:
    pn = tenant.vpc.create_private_network(default_route_propagation_enabled=False,
                                           subnets=["10.78.0.0/24", "fd00:78::/64"])
    ip = tenant.ipam.book_ip(source=Source(private_network_id=pn.id), is_ipv6=False)
    web = CustomResource(mac_address="02:00:00:00:00:78", name="web-1")
    tenant.ipam.attach_ip(ip_id=ip.id, resource=web)
    assert tenant.ipam.attach_ip(ip_id=ip.id, resource=web).resource.name == "web-1"
    with pytest.raises(ScalewayException) as exc:
        tenant.ipam.attach_ip(ip_id=ip.id, resource=CustomResource(
            mac_address="02:00:00:00:00:78", name="web-2"))
    status, body = error_of(exc)
    assert (status, body["precondition"]) == (412, "resource_already_attached")
    assert tenant.ipam.get_ip(ip_id=ip.id).resource.name == "web-1"
    v6 = tenant.ipam.book_ip(source=Source(private_network_id=pn.id), is_ipv6=True,
                             address="fd00:78::abcd")
    done = tenant.ipam.update_ip(ip_id=v6.id, reverses=[
        Reverse(hostname="v6.example.com", address="FD00:78:0::ABCD")])
    assert [(r.hostname, r.address) for r in done.reverses] == [
        ("v6.example.com", "fd00:78::abcd")]
