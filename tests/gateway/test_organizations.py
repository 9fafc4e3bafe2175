"""Every object's organization_id is its project's organization, whoever creates it, over
HTTP: the SDK client of the project's organization sees what admins and products made.

The node requires organizations (`IPAM.require_organizations`): a write into a project of
no known organization is refused.
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

import pytest
import requests
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
from scaleway.vpc.v2 import VpcV2API

from gateway.config import ConfigError, add_arguments, load

PROJECTS = "/ipam/admin/v1/projects"
VPCS = f"/vpc/v2/regions/{REGION}/vpcs"
PNS = f"/vpc/v2/regions/{REGION}/private-networks"
IPS = f"/ipam/v1/regions/{REGION}/ips"
POOLS = f"/ipam/admin/v1/regions/{REGION}/zonal-pools"


@pytest.fixture
def strict(gateway: GatewayNode) -> GatewayNode:  # noqa: F811
    """The gateway, requiring every project written into to have an organization (what
    `ipam serve` does unless told `--organizations optional`)."""
    assert gateway.ipam is not None
    gateway.ipam.require_organizations()
    return gateway


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_a_node_requires_organizations_unless_told_optional() -> None:
    assert load(_parse(), {}).require_organizations
    assert load(_parse("--organizations", "REQUIRED"), {}).require_organizations
    assert not load(_parse(), {"IPAM_ORGANIZATIONS": "optional"}).require_organizations
    with pytest.raises(ConfigError) as refused:
        load(_parse("--organizations", "sometimes"), {})
    assert str(refused.value) == ("--organizations/IPAM_ORGANIZATIONS must be one of "
                                  "required, optional, not 'sometimes'")


def test_an_app_of_the_default_configuration_refuses_unknown_organizations(
        etcd_single: Any, key_prefix: str) -> None:
    node = GatewayNode(etcd_single.endpoints, key_prefix, require_organizations=True).start()
    try:
        project = str(uuid.uuid4())
        before = revision(node)
        refused = call(node, ADMIN_SECRET, "POST", VPCS, {"project_id": project})
        assert (refused.status_code, refused.json()["precondition"]) == (
            412, "project_organization_unknown")
        assert revision(node) == before
        assert call(node, ADMIN_SECRET, "PUT", f"{PROJECTS}/{project}",
                    {"organization_id": str(uuid.uuid4())}).status_code == 200
        assert call(node, ADMIN_SECRET, "POST", VPCS, {"project_id": project}).status_code == 200
    finally:
        node.stop()
    node.assert_conformant()


def call(node: GatewayNode, secret: str, method: str, path: str,
         body: Any = None) -> requests.Response:
    return requests.request(method, node.url + path, json=body, timeout=30,
                            headers={"X-Auth-Token": secret})


def revision(node: GatewayNode) -> int:
    assert node.ipam is not None
    return node.call(node.ipam.store.count(node.prefix))[1]


def create_everything(node: GatewayNode, secret: str, project: str) -> list[dict[str, Any]]:
    """A VPC, a Private Network in it, an IP in that network and a zonal IP, made with
    `secret` in `project`: the created objects as answered."""
    vpc = call(node, secret, "POST", VPCS, {"project_id": project, "name": "v"})
    assert vpc.status_code == 200, vpc.text
    pn = call(node, secret, "POST", PNS, {"project_id": project, "name": "p",
                                          "vpc_id": vpc.json()["id"],
                                          "subnets": ["10.20.0.0/24"]})
    assert pn.status_code == 200, pn.text
    in_pn = call(node, secret, "POST", IPS, {
        "project_id": project, "source": {"private_network_id": pn.json()["id"]},
        "is_ipv6": False})
    assert in_pn.status_code == 200, in_pn.text
    zonal = call(node, secret, "POST", IPS, {"project_id": project,
                                             "source": {"zonal": f"{REGION}-1"},
                                             "is_ipv6": False})
    assert zonal.status_code == 200, zonal.text
    return [vpc.json(), pn.json(), in_pn.json(), zonal.json()]


@pytest.mark.usefixtures("strict")
@pytest.mark.parametrize("mapped_by", ["member_key", "admin_put"])
def test_objects_made_by_an_admin_and_a_product_carry_the_projects_organization(
        gateway: GatewayNode, mapped_by: str) -> None:  # noqa: F811
    keys = ApiKeys(gateway.url)
    project, org = str(uuid.uuid4()), keys.org
    assert call(gateway, ADMIN_SECRET, "POST", POOLS,
                {"zone": f"{REGION}-1", "subnet": "51.15.0.0/28"}).status_code == 200
    if mapped_by == "member_key":
        keys.create("project_member", [project])
    else:
        put = call(gateway, ADMIN_SECRET, "PUT", f"{PROJECTS}/{project}",
                   {"organization_id": org})
        assert put.status_code == 200 and put.json() == {"project_id": project,
                                                         "organization_id": org}
    _, product = keys.create("product", resource_types=["instance_server"])
    made = create_everything(gateway, ADMIN_SECRET, project)
    # A product writes no VPC-side objects: it books, in the network the admin made.
    by_product = call(gateway, product, "POST", IPS, {
        "project_id": project, "source": {"private_network_id": made[1]["id"]},
        "is_ipv6": False})
    zonal_by_product = call(gateway, product, "POST", IPS, {
        "project_id": project, "source": {"zonal": f"{REGION}-1"}, "is_ipv6": False})
    made += [by_product.json(), zonal_by_product.json()]
    # IPAM's IP shows no organization (the SDK's `IP` has none): its list filters by it.
    assert [m["organization_id"] for m in made[:2]] == [org] * 2

    # The SDK client of the organization, filtering by it, sees every one of them.
    access, secret = keys.create("project_reader", [project])
    client = sdk_client(gateway.url, access, secret, project, organization_id=org)
    vpc_api, ipam_api = VpcV2API(client), IpamV1API(client)
    assert [v.id for v in vpc_api.list_vp_cs(organization_id=org).vpcs] == [made[0]["id"]]
    assert [p.id for p in vpc_api.list_private_networks(organization_id=org).private_networks
            ] == [made[1]["id"]]
    listed = ipam_api.list_i_ps(organization_id=org).ips
    assert sorted(i.id for i in listed) == sorted(m["id"] for m in made[2:])
    assert vpc_api.list_vp_cs(organization_id=project).total_count == 0  # no longer the project


@pytest.mark.usefixtures("strict")
def test_an_admin_writing_into_a_project_of_no_known_organization_is_refused(
        gateway: GatewayNode) -> None:  # noqa: F811
    project = str(uuid.uuid4())
    keys = ApiKeys(gateway.url)
    other = str(uuid.uuid4())
    keys.create("project_member", [other])
    assert call(gateway, ADMIN_SECRET, "POST", POOLS,
                {"zone": f"{REGION}-1", "subnet": "51.15.0.0/28"}).status_code == 200
    pn = call(gateway, ADMIN_SECRET, "POST", PNS, {"project_id": other, "name": "p"}).json()
    _, product = keys.create("product", resource_types=["instance_server"])
    before = revision(gateway)
    why = (f"project {project} has no known organization: create a project key naming its "
           f"organization_id, or set it with PUT /ipam/admin/v1/projects/{project}")
    expected = {"type": "precondition_failed", "precondition": "project_organization_unknown",
                "message": why, "help_message": why}
    for secret, path, body in [
            (ADMIN_SECRET, VPCS, {"project_id": project}),
            (ADMIN_SECRET, PNS, {"project_id": project}),
            (ADMIN_SECRET, IPS, {"project_id": project, "is_ipv6": False,
                                 "source": {"zonal": f"{REGION}-1"}}),
            (product, IPS, {"project_id": project, "is_ipv6": False,
                            "source": {"zonal": f"{REGION}-1"}})]:
        refused = call(gateway, secret, "POST", path, body)
        assert (refused.status_code, refused.json()) == (412, expected)
    # A Private Network of another project is still that project's 400, never a way in.
    wrong = call(gateway, ADMIN_SECRET, "POST", IPS, {
        "project_id": project, "is_ipv6": False, "source": {"private_network_id": pn["id"]}})
    assert wrong.status_code == 400
    assert revision(gateway) == before


def test_a_project_key_for_a_project_of_another_organization_is_refused(
        gateway: GatewayNode) -> None:  # noqa: F811
    keys = ApiKeys(gateway.url)
    project, fresh = str(uuid.uuid4()), str(uuid.uuid4())
    keys.create("project_member", [project])
    before = revision(gateway)
    other = str(uuid.uuid4())
    refused = requests.post(f"{gateway.url}/ipam/admin/v1/api-keys", timeout=10,
                            headers={"X-Auth-Token": ADMIN_SECRET},
                            json={"role": "project_member", "project_ids": [fresh, project],
                                  "organization_id": other})
    assert (refused.status_code, refused.json()) == (409, {
        "type": "already_exists", "resource": "project_organization", "resource_id": project,
        "message": f"project {project} belongs to organization {keys.org}, not {other}: a "
                   "project belongs to one organization, for good"})
    assert revision(gateway) == before
    got = call(gateway, ADMIN_SECRET, "GET", f"{PROJECTS}/{fresh}")
    assert got.status_code == 404


def test_project_organization_routes_and_their_refusals(gateway: GatewayNode  # noqa: F811
                                                        ) -> None:
    project, org = str(uuid.uuid4()), str(uuid.uuid4())
    url = f"{PROJECTS}/{project}"
    missing = call(gateway, ADMIN_SECRET, "GET", url)
    assert (missing.status_code, missing.json()) == (404, {
        "type": "not_found", "resource": "project", "resource_id": project,
        "message": f"project {project} has no known organization"})
    body = {"project_id": project, "organization_id": org}
    assert call(gateway, ADMIN_SECRET, "PUT", url, {"organization_id": org}).json() == body
    again = call(gateway, ADMIN_SECRET, "PUT", url, {"organization_id": org})
    assert (again.status_code, again.json()) == (200, body)
    assert call(gateway, ADMIN_SECRET, "GET", url).json() == body
    before = revision(gateway)
    conflict = call(gateway, ADMIN_SECRET, "PUT", url, {"organization_id": str(uuid.uuid4())})
    assert conflict.status_code == 409
    assert conflict.json()["type"] == "already_exists"
    assert revision(gateway) == before

    bad_path = call(gateway, ADMIN_SECRET, "PUT", f"{PROJECTS}/nope", {"organization_id": org})
    assert bad_path.status_code == 400
    assert [d["argument_name"] for d in bad_path.json()["details"]] == ["project_id"]
    assert call(gateway, ADMIN_SECRET, "GET", f"{PROJECTS}/nope").status_code == 400
    bad_body = call(gateway, ADMIN_SECRET, "PUT", url, {"organization_id": "nope"})
    assert bad_body.status_code == 400
    assert [d["argument_name"] for d in bad_body.json()["details"]] == ["organization_id"]
    assert call(gateway, ADMIN_SECRET, "PUT", url, {}).status_code == 400

    _, member = ApiKeys(gateway.url, org).create("project_member", [project])
    for method, payload in (("GET", None), ("PUT", {"organization_id": org})):
        denied = call(gateway, member, method, url, payload)
        assert (denied.status_code, denied.json()["details"]) == (
            403, [{"action": "admin", "resource": "project"}])
    assert revision(gateway) == before + 1  # the member key, nothing else
