"""The generated OpenAPI document, the wire models' 400s, and the 405's `Allow`."""

from __future__ import annotations

import uuid

import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from conformance import Conformance
from gateway_fixtures import ADMIN_SECRET, GatewayNode, gateway  # noqa: F401

from allocator.contract import Credentials
from gateway.app import create_app
from gateway.config import GatewayConfig
from gateway.openapi import document
from gateway.wire import endpoint_of

R = "/ipam/v1/regions/fr-par"
ADMIN = {"X-Auth-Token": ADMIN_SECRET}


class _NoIPAM:
    """Enough of an IPAM to build an application that never serves."""

    def credentials(self) -> Credentials:
        return Credentials(None, None)  # type: ignore[arg-type]

    def observe_commits(self, observer: object) -> None:
        pass  # the metrics' committer observer: nothing is ever committed here

    def require_organizations(self) -> None:
        pass  # nothing is ever written here


def _app() -> web.Application:
    # No etcd behind it: nothing to compact or expire either.
    config = GatewayConfig(region="fr-par", compact_retain_revisions=0, expiry_check_interval=0)
    return create_app(_NoIPAM(), config)  # type: ignore[arg-type]


def test_a_method_the_path_does_not_take_is_405_with_allow(gateway: GatewayNode) -> None:  # noqa: F811
    resp = requests.put(f"{gateway.url}{R}/ips", headers=ADMIN, json={}, timeout=30)
    assert resp.status_code == 405
    assert resp.json() == {"type": "method_not_allowed",
                           "message": f"PUT is not allowed on {R}/ips"}
    assert set(resp.headers["Allow"].split(", ")) == {"GET", "HEAD", "POST"}


def test_one_400_lists_every_bad_argument_with_its_reason(gateway: GatewayNode) -> None:  # noqa: F811
    resp = requests.post(f"{gateway.url}{R}/ips", headers=ADMIN, timeout=30, json={
        "source": {"private_network_id": "nope", "shape": 1}, "is_ipv6": "yes",
        "tags": [""], "colour": "red", "resource": {"name": "x"}})
    assert resp.status_code == 400
    assert resp.json()["type"] == "invalid_arguments"
    reasons = {d["argument_name"]: d["reason"] for d in resp.json()["details"]}
    assert reasons == {"source.private_network_id": "format", "source.shape": "unknown",
                       "is_ipv6": "format", "tags": "constraint", "colour": "unknown",
                       "resource.mac_address": "required"}


def test_a_null_where_a_value_is_needed_is_a_missing_value(gateway: GatewayNode) -> None:  # noqa: F811
    resp = requests.post(f"{gateway.url}{R}/ips/{uuid.uuid4()}/attach", headers=ADMIN,
                         json={"resource": None}, timeout=30)
    assert resp.status_code == 400
    assert resp.json()["details"] == [{"argument_name": "resource", "reason": "required",
                                       "help_message": "this field is required"}]


def test_a_patch_may_send_no_body_but_a_creation_may_not(gateway: GatewayNode) -> None:  # noqa: F811
    project = str(uuid.uuid4())
    vpc = requests.post(f"{gateway.url}/vpc/v2/regions/fr-par/vpcs", headers=ADMIN,
                        json={"project_id": project, "name": "v"}, timeout=30).json()
    patched = requests.patch(f"{gateway.url}/vpc/v2/regions/fr-par/vpcs/{vpc['id']}",
                             headers=ADMIN, timeout=30)
    assert (patched.status_code, patched.json()["name"]) == (200, "v")
    created = requests.post(f"{gateway.url}/vpc/v2/regions/fr-par/vpcs", headers=ADMIN,
                            timeout=30)
    assert created.status_code == 400
    assert created.json()["details"][0]["argument_name"] == "body"


def test_every_operation_is_named_tagged_summarised_and_lists_its_errors() -> None:
    app = _app()
    handlers = {r.method.lower() + " " + r.resource.canonical: r.handler  # type: ignore[union-attr]
                for r in app.router.routes() if r.method != "HEAD"}
    doc = document(app)
    ids = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            handler = handlers[f"{method} {path}"]
            assert op["operationId"] == endpoint_of(handler).name  # type: ignore[union-attr]
            ids.append(op["operationId"])
            assert op["summary"] and op["tags"][0] in {"ipam", "vpc", "admin", "probes"}
            for param in op["parameters"]:
                assert param["schema"], (path, param)
            if op.get("security") != []:
                assert {"401", "403", "503"} <= op["responses"].keys(), (method, path)
    assert len(ids) == len(set(ids)) == 46  # 43, and a project's quotas: get, set, reset
    order_by = next(p for p in doc["paths"]["/vpc/v2/regions/{region}/subnets"]["get"][
        "parameters"] if p["name"] == "order_by")
    assert order_by["schema"]["anyOf"][0]["enum"] == ["created_at_asc", "created_at_desc"]
    region = doc["paths"]["/vpc/v2/regions/{region}/subnets"]["get"]["parameters"][0]
    assert region["schema"]["enum"] == ["fr-par"]


def test_the_document_refuses_a_route_not_declared_as_an_endpoint() -> None:
    app = _app()

    async def bare(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_get("/bare", bare)
    with pytest.raises(TypeError, match="/bare: not an endpoint"):
        document(app)


async def test_conformance_records_an_answer_the_document_does_not_promise() -> None:
    app = _app()
    checker = Conformance(app)
    request = make_mocked_request("GET", "/healthz", app=app)
    match = await app.router.resolve(request)
    request._match_info = match
    assert checker.check(request, web.json_response({"status": "ok", "region": "x"})) is None
    assert "status" in (checker.check(request, web.json_response({"status": "up"})) or "")
    assert checker.check(request, web.json_response({}, status=418)) == \
        "status not documented"
    put = make_mocked_request("PUT", "/healthz", app=app)
    put._match_info = await app.router.resolve(put)
    assert checker.check(put, web.json_response(
        {"type": "method_not_allowed", "message": "no"}, status=405)) == "405 without Allow"
