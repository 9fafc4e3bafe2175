"""Product keys, zonal pools, idempotency keys, the admin API and our extensions, over HTTP."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests
from gateway_fixtures import ADMIN_SECRET, ApiKeys, GatewayNode, gateway  # noqa: F401

IPS = "/ipam/v1/regions/fr-par/ips"
POOLS = "/ipam/admin/v1/regions/fr-par/zonal-pools"


class Http:
    """requests bound to one gateway and one secret key."""

    def __init__(self, url: str, secret: str) -> None:
        self.url, self.secret = url, secret

    def __call__(self, method: str, path: str, body: Any = None,
                 headers: dict[str, str] | None = None) -> requests.Response:
        return requests.request(method, self.url + path, json=body, timeout=30,
                                headers={"X-Auth-Token": self.secret, **(headers or {})})


@pytest.fixture
def admin(gateway: GatewayNode) -> Http:  # noqa: F811
    return Http(gateway.url, ADMIN_SECRET)


@pytest.fixture
def keys(gateway: GatewayNode) -> ApiKeys:  # noqa: F811
    return ApiKeys(gateway.url)


def member(gateway: GatewayNode, keys: ApiKeys) -> tuple[Http, str]:  # noqa: F811
    project = str(uuid.uuid4())
    _, secret = keys.create("project_member", [project])
    return Http(gateway.url, secret), project


def product(gateway: GatewayNode, keys: ApiKeys, *types: str) -> Http:  # noqa: F811
    _, secret = keys.create("product", resource_types=list(types))
    return Http(gateway.url, secret)


def test_zonal_pools_are_admin_configuration(admin: Http, gateway: GatewayNode,  # noqa: F811
                                             keys: ApiKeys) -> None:
    pool = admin("POST", POOLS, {"zone": "fr-par-1", "subnet": "51.15.0.0/28"})
    assert pool.status_code == 200, pool.text
    assert pool.json()["zone"] == "fr-par-1" and pool.json()["subnet"] == "51.15.0.0/28"
    listed = admin("GET", POOLS + "?zone=fr-par-1").json()
    assert [p["id"] for p in listed["zonal_pools"]] == [pool.json()["id"]]
    clash = admin("POST", POOLS, {"zone": "fr-par-2", "subnet": "51.15.0.8/29"})
    assert clash.status_code == 409 and clash.json()["type"] == "already_exists"
    bad_zone = admin("POST", POOLS, {"zone": "nl-ams-1", "subnet": "51.16.0.0/28"})
    assert bad_zone.status_code == 400
    user, _ = member(gateway, keys)
    denied = user("POST", POOLS, {"zone": "fr-par-1", "subnet": "51.17.0.0/28"})
    assert denied.status_code == 403 and denied.json()["details"] == [
        {"action": "admin", "resource": "zonal_pool"}]
    assert admin("DELETE", f"{POOLS}/{pool.json()['id']}").status_code == 204
    assert admin("GET", POOLS).json()["total_count"] == 0


def test_product_books_zonal_ip_attaches_its_resource_and_only_it_can_detach(
        admin: Http, gateway: GatewayNode, keys: ApiKeys) -> None:  # noqa: F811
    admin("POST", POOLS, {"zone": "fr-par-2", "subnet": "51.15.1.0/28"}).raise_for_status()
    instance = product(gateway, keys, "instance_server")
    lb = product(gateway, keys, "lb_server")
    owner, project = member(gateway, keys)
    by_member = owner("POST", IPS, {"source": {"zonal": "fr-par-2"}, "is_ipv6": False,
                                    "project_id": project})
    assert by_member.status_code == 403
    assert by_member.json()["details"] == [{"action": "book", "resource": "zonal_ip"}]
    booked = instance("POST", IPS, {"source": {"zonal": "fr-par-2"}, "is_ipv6": False,
                                    "project_id": project})
    assert booked.status_code == 200, booked.text
    ip = booked.json()
    assert ip["zone"] == "fr-par-2" and ip["source"] == {"zonal": "fr-par-2"}
    assert ip["address"].startswith("51.15.1.")
    server = {"type": "instance_server", "id": str(uuid.uuid4()),
              "mac_address": "02:00:00:00:01:01", "name": "srv"}
    attached = instance("POST", f"{IPS}/{ip['id']}/attach", {"resource": server})
    assert attached.status_code == 200, attached.text
    assert attached.json()["resource"]["type"] == "instance_server"
    # the project's own member sees it but cannot detach a product's resource
    assert owner("GET", f"{IPS}/{ip['id']}").status_code == 200
    for who in (owner, lb):
        denied = who("POST", f"{IPS}/{ip['id']}/detach", {"resource": server})
        assert denied.status_code == 403, denied.text
        assert denied.json()["type"] == "permissions_denied"
    released = owner("DELETE", f"{IPS}/{ip['id']}")
    assert released.status_code == 412
    assert released.json()["precondition"] == "resource_still_in_use"
    detached = instance("POST", f"{IPS}/{ip['id']}/detach", {"resource": server})
    assert detached.status_code == 200 and detached.json()["resource"] is None
    assert owner("DELETE", f"{IPS}/{ip['id']}").status_code == 204


def test_member_cannot_attach_a_product_resource(gateway: GatewayNode,  # noqa: F811
                                                 keys: ApiKeys) -> None:
    user, project = member(gateway, keys)
    pn = user("POST", "/vpc/v2/regions/fr-par/private-networks",
              {"project_id": project, "subnets": ["10.40.0.0/24"]}).json()
    ip = user("POST", IPS, {"source": {"private_network_id": pn["id"]}, "is_ipv6": False,
                            "project_id": project}).json()
    resp = user("POST", f"{IPS}/{ip['id']}/attach", {"resource": {
        "type": "instance_server", "id": str(uuid.uuid4()), "mac_address": "02:00:00:00:02:01"}})
    assert resp.status_code == 403 and resp.json()["type"] == "permissions_denied"
    assert user("GET", f"{IPS}/{ip['id']}").json()["resource"] is None


def test_exhausted_pool_answers_out_of_stock(gateway: GatewayNode, keys: ApiKeys) -> None:  # noqa: F811
    user, project = member(gateway, keys)
    pn = user("POST", "/vpc/v2/regions/fr-par/private-networks",
              {"project_id": project, "subnets": ["10.41.0.0/29"]}).json()
    body = {"source": {"private_network_id": pn["id"]}, "is_ipv6": False,
            "project_id": project}
    codes = [user("POST", IPS, body).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 200, 409]
    last = user("POST", IPS, body)
    assert last.status_code == 409 and last.json()["type"] == "out_of_stock"


def test_retried_booking_with_the_same_idempotency_key_returns_the_first_ip(
        gateway: GatewayNode, keys: ApiKeys) -> None:  # noqa: F811
    user, project = member(gateway, keys)
    pn = user("POST", "/vpc/v2/regions/fr-par/private-networks",
              {"project_id": project, "subnets": ["10.42.0.0/24"]}).json()
    body = {"source": {"private_network_id": pn["id"]}, "is_ipv6": False,
            "project_id": project}
    first = user("POST", IPS, body, {"Idempotency-Key": "book-1"})
    again = user("POST", IPS, body, {"Idempotency-Key": "book-1"})
    assert first.status_code == again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    assert first.json()["address"] == again.json()["address"]
    other = user("POST", IPS, body, {"Idempotency-Key": "book-2"})
    assert other.json()["id"] != first.json()["id"]
    listed = user("GET", f"{IPS}?private_network_id={pn['id']}").json()
    assert listed["total_count"] == 2
    res = {"resource": {"mac_address": "02:00:00:00:03:01"}}
    a1 = user("POST", f"{IPS}/{first.json()['id']}/attach", res, {"Idempotency-Key": "att"})
    a2 = user("POST", f"{IPS}/{first.json()['id']}/attach", res, {"Idempotency-Key": "att"})
    assert a1.status_code == a2.status_code == 200 and a1.json() == a2.json()


def test_idempotency_keys_are_scoped_to_the_caller(gateway: GatewayNode,  # noqa: F811
                                                   keys: ApiKeys) -> None:
    user, project = member(gateway, keys)
    _, secret = keys.create("project_member", [project])
    colleague = Http(gateway.url, secret)
    pn = user("POST", "/vpc/v2/regions/fr-par/private-networks",
              {"project_id": project, "subnets": ["10.43.0.0/24"]}).json()
    body = {"source": {"private_network_id": pn["id"]}, "is_ipv6": False,
            "project_id": project}
    mine = user("POST", IPS, body, {"Idempotency-Key": "same"}).json()
    theirs = colleague("POST", IPS, body, {"Idempotency-Key": "same"}).json()
    assert mine["id"] != theirs["id"]


def test_api_keys_are_created_listed_without_secrets_and_revoked(
        admin: Http, gateway: GatewayNode) -> None:  # noqa: F811
    project = str(uuid.uuid4())
    created = admin("POST", "/ipam/admin/v1/api-keys",
                    {"role": "project_member", "project_ids": [project],
                     "description": "ci"})
    assert created.status_code == 200, created.text
    key = created.json()
    assert key["access_key"].startswith("SCW") and len(key["access_key"]) == 20
    assert str(uuid.UUID(key["secret_key"])) == key["secret_key"]
    listed = admin("GET", "/ipam/admin/v1/api-keys").json()["api_keys"]
    assert [k["access_key"] for k in listed] == [key["access_key"]]
    assert all("secret_key" not in k and "secret_hash" not in k for k in listed)
    user = Http(gateway.url, key["secret_key"])
    assert user("GET", IPS).status_code == 200
    assert user("GET", "/ipam/admin/v1/api-keys").status_code == 403
    assert admin("DELETE", f"/ipam/admin/v1/api-keys/{key['access_key']}").status_code == 204
    denied = user("GET", IPS)
    assert denied.status_code == 401 and denied.json()["reason"] == "not_found"
    again = admin("DELETE", f"/ipam/admin/v1/api-keys/{key['access_key']}")
    assert again.status_code == 404 and again.json()["resource"] == "api_key"


def test_bad_api_key_specs_are_refused(admin: Http) -> None:
    for body, argument in (({"role": "root"}, "role"),
                           ({"role": "project_member"}, "project_ids"),
                           ({"role": "project_member", "project_ids": ["x"]}, "project_ids"),
                           ({"role": "product"}, "resource_types"),
                           ({"role": "admin", "colour": "red"}, "colour")):
        resp = admin("POST", "/ipam/admin/v1/api-keys", body)
        assert resp.status_code == 400, (body, resp.text)
        assert resp.json()["details"][0]["argument_name"] == argument
    assert admin("GET", "/ipam/admin/v1/api-keys").json()["total_count"] == 0


@pytest.mark.parametrize("body, argument, help_words", [
    ({"role": "admin", "expires_at": "2020-01-01T00:00:00Z"}, "expires_at", "in the future"),
    ({"role": "admin", "project_ids": [str(uuid.uuid4())]}, "project_ids", "every project"),
    ({"role": "project_member", "project_ids": [str(uuid.uuid4())],
      "resource_types": ["instance_server"]}, "resource_types", "only a product key"),
    ({"role": "admin", "resource_types": ["instance_server"]}, "resource_types",
     "only a product key"),
])
def test_api_key_fields_its_role_would_ignore_or_a_past_expiry_are_400(
        admin: Http, body: dict[str, Any], argument: str, help_words: str) -> None:
    resp = admin("POST", "/ipam/admin/v1/api-keys", body)
    assert resp.status_code == 400, resp.text
    (detail,) = resp.json()["details"]
    assert detail["argument_name"] == argument and help_words in detail["help_message"]
    assert admin("GET", "/ipam/admin/v1/api-keys").json()["total_count"] == 0


def test_an_api_key_expiring_in_the_future_is_created_and_works(
        admin: Http, gateway: GatewayNode) -> None:  # noqa: F811
    resp = admin("POST", "/ipam/admin/v1/api-keys",
                 {"role": "admin", "expires_at": "2999-01-01T00:00:00+00:00"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["expires_at"] == "2999-01-01T00:00:00+00:00"
    assert Http(gateway.url, resp.json()["secret_key"])("GET", IPS).status_code == 200


def test_expired_key_is_denied_with_reason_expired(gateway: GatewayNode) -> None:  # noqa: F811
    from allocator.credentials import ADMIN, ApiKey

    assert gateway.ipam is not None
    # The API refuses a past expiry, so the key that has outlived it is stored directly.
    credentials = gateway.ipam.credentials()
    _, secret = gateway.call(credentials.create(
        ApiKey(access_key="", role=ADMIN, expires_at="2020-01-01T00:00:00+00:00")))
    resp = Http(gateway.url, secret)("GET", IPS)
    assert resp.status_code == 401 and resp.json()["reason"] == "expired"


def test_a_member_naming_two_sources_is_told_400_on_source_not_403(
        gateway: GatewayNode, keys: ApiKeys) -> None:  # noqa: F811
    user, project = member(gateway, keys)
    pn = user("POST", "/vpc/v2/regions/fr-par/private-networks",
              {"project_id": project, "subnets": ["10.45.0.0/24"]}).json()
    for source in ({"zonal": "fr-par-1", "private_network_id": pn["id"]},
                   {"zonal": "fr-par-1", "subnet_id": pn["subnets"][0]["id"]},
                   {"private_network_id": pn["id"], "subnet_id": pn["subnets"][0]["id"]}):
        resp = user("POST", IPS, {"source": source, "project_id": project})
        assert resp.status_code == 400, (source, resp.text)
        assert resp.json()["type"] == "invalid_arguments"
        assert [d["argument_name"] for d in resp.json()["details"]] == ["source"]
    zonal_only = user("POST", IPS, {"source": {"zonal": "fr-par-1"}, "project_id": project})
    assert zonal_only.status_code == 403  # one source: now the permission is judged
    assert user("GET", IPS).json()["total_count"] == 0


def test_reserved_ips_lists_the_addresses_never_handed_out(gateway: GatewayNode,  # noqa: F811
                                                            keys: ApiKeys) -> None:
    user, project = member(gateway, keys)
    pn = user("POST", "/vpc/v2/regions/fr-par/private-networks",
              {"project_id": project, "subnets": ["10.44.0.0/24"]}).json()
    resp = user("GET", f"/ipam/v1/regions/fr-par/private-networks/{pn['id']}/reserved-ips")
    assert resp.status_code == 200, resp.text
    (subnet,) = resp.json()["subnets"]
    assert subnet["subnet"] == "10.44.0.0/24"
    assert [r["address"] for r in subnet["reserved"]] == [
        "10.44.0.0", "10.44.0.1", "10.44.0.254", "10.44.0.255"]
    assert all(r["reason"] for r in subnet["reserved"])
    stranger, _ = member(gateway, keys)
    hidden = stranger("GET",
                      f"/ipam/v1/regions/fr-par/private-networks/{pn['id']}/reserved-ips")
    assert hidden.status_code == 404


def test_probes_and_openapi_need_no_key(gateway: GatewayNode) -> None:  # noqa: F811
    assert requests.get(gateway.url + "/healthz", timeout=10).json()["status"] == "ok"
    ready = requests.get(gateway.url + "/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    doc = requests.get(gateway.url + "/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.")
    assert "/ipam/v1/regions/{region}/ips" in doc["paths"]


def test_openapi_documents_exactly_the_routes_served(gateway: GatewayNode) -> None:  # noqa: F811
    from gateway.app import create_app
    from gateway.auth import is_page
    from gateway.openapi import document

    app = create_app(gateway.ipam)  # type: ignore[arg-type]
    served = {(r.method.lower(), r.resource.canonical) for r in app.router.routes()
              if r.resource is not None and r.method != "HEAD" and not is_page(r.handler)}
    documented = {(m, p) for p, ops in document(app)["paths"].items() for m in ops}
    assert served == documented
