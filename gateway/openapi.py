"""The gateway's OpenAPI 3.0 document, served at `GET /openapi.json`.

Written by hand from the same shapes as `wire` (the SDK's types); a test checks
that every route of the application appears here and nothing else does.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

_UUID = {"type": "string", "format": "uuid"}
_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_TIME = {"type": "string", "format": "date-time", "nullable": True}
_TAGS = {"type": "array", "items": _STR}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = list(required)
    return out


SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["type", "message"],
              "properties": {"type": _STR, "message": _STR}},
    "Resource": {"type": "object", "nullable": True, "properties": {
        "type": _STR, "id": _STR, "mac_address": {"type": "string", "nullable": True},
        "name": {"type": "string", "nullable": True}}},
    "CustomResource": _obj({"mac_address": {"type": "string", "example": "02:00:00:00:00:01"},
                            "name": _STR, "type": _STR, "id": _STR}, ("mac_address",)),
    "Source": {"type": "object", "properties": {
        "zonal": _STR, "private_network_id": _UUID, "subnet_id": _UUID, "vpc_id": _UUID,
        "regional": _BOOL}},
    "Reverse": {"type": "object", "required": ["hostname"],
                "properties": {"hostname": _STR, "address": {"type": "string",
                                                             "nullable": True}}},
    "IP": {"type": "object", "properties": {
        "id": _UUID, "address": _STR, "project_id": _UUID, "is_ipv6": _BOOL,
        "created_at": _TIME, "updated_at": _TIME, "source": _ref("Source"),
        "resource": _ref("Resource"), "tags": _TAGS,
        "reverses": {"type": "array", "items": _ref("Reverse")}, "region": _STR,
        "zone": {"type": "string", "nullable": True}}},
    "ListIPsResponse": {"type": "object", "properties": {
        "ips": {"type": "array", "items": _ref("IP")}, "total_count": {"type": "integer"}}},
    "VPC": {"type": "object", "properties": {
        "id": _UUID, "name": _STR, "organization_id": _STR, "project_id": _UUID,
        "region": _STR, "tags": _TAGS, "is_default": _BOOL,
        "private_network_count": {"type": "integer"}, "routing_enabled": _BOOL,
        "created_at": _TIME, "updated_at": _TIME}},
    "Subnet": {"type": "object", "properties": {
        "id": _UUID, "subnet": _STR, "project_id": _UUID, "private_network_id": _UUID,
        "vpc_id": _UUID, "region": _STR, "created_at": _TIME, "updated_at": _TIME}},
    "PrivateNetwork": {"type": "object", "properties": {
        "id": _UUID, "name": _STR, "organization_id": _STR, "project_id": _UUID,
        "region": _STR, "tags": _TAGS, "subnets": {"type": "array", "items": _ref("Subnet")},
        "vpc_id": _UUID, "dhcp_enabled": _BOOL, "created_at": _TIME, "updated_at": _TIME}},
    "ApiKey": {"type": "object", "properties": {
        "access_key": _STR, "role": _STR, "organization_id": {"type": "string",
                                                              "nullable": True},
        "project_ids": {"type": "array", "items": _UUID},
        "resource_types": {"type": "array", "items": _STR}, "description": _STR,
        "created_at": _STR, "expires_at": {"type": "string", "nullable": True},
        "secret_key": _UUID}},
    "ZonalPool": {"type": "object", "properties": {
        "id": _UUID, "region": _STR, "zone": _STR, "subnet": _STR, "is_ipv6": _BOOL,
        "created_at": _STR}},
}

_ERRORS = {str(code): {"description": desc, "content": {"application/json": {
    "schema": _ref("Error")}}} for code, desc in (
    (400, "invalid_arguments"), (401, "denied_authentication"), (403, "permissions_denied"),
    (404, "not_found"), (409, "already_exists, out_of_stock or conflict"),
    (412, "precondition_failed"), (413, "request_entity_too_large"),
    (503, "service_unavailable"))}


def _q(name: str, schema: dict[str, Any], array: bool = False) -> dict[str, Any]:
    if array:
        return {"name": name, "in": "query", "schema": {"type": "array", "items": schema},
                "style": "form", "explode": True}
    return {"name": name, "in": "query", "schema": schema}


def _p(name: str, schema: dict[str, Any] = _UUID) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


_REGION = _p("region", {"type": "string", "example": "fr-par"})
_PAGING = [_q("page", {"type": "integer", "minimum": 1}),
           _q("page_size", {"type": "integer", "minimum": 1, "maximum": 100})]
_IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "schema": _STR,
                "description": "a retried request with the same key gets the first answer"}


def _op(summary: str, params: list[dict[str, Any]], ok: str | None, body: Any = None,
        public: bool = False, status: str = "200") -> dict[str, Any]:
    responses: dict[str, Any] = dict(_ERRORS)
    if ok is None:
        responses["204"] = {"description": "done"}
    else:
        responses[status] = {"description": "ok", "content": {"application/json": {
            "schema": _ref(ok) if not ok.startswith("{") else {"type": "object"}}}}
    op: dict[str, Any] = {"summary": summary, "parameters": params, "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": body}}}
    if public:
        op["security"] = []
    return op


_IP_LIST_PARAMS = [
    _q("order_by", {"type": "string", "enum": [
        "created_at_desc", "created_at_asc", "updated_at_desc", "updated_at_asc",
        "attached_at_desc", "attached_at_asc", "ip_address_desc", "ip_address_asc",
        "mac_address_desc", "mac_address_asc"]}),
    *_PAGING, _q("project_id", _UUID), _q("organization_id", _UUID), _q("zonal", _STR),
    _q("regional", _BOOL), _q("private_network_id", _UUID), _q("subnet_id", _UUID),
    _q("source_vpc_id", _UUID), _q("vpc_id", _UUID), _q("attached", _BOOL),
    _q("resource_name", _STR), _q("resource_id", _UUID), _q("resource_ids", _UUID, True),
    _q("resource_type", _STR), _q("resource_types", _STR, True), _q("mac_address", _STR),
    _q("tags", _STR, True), _q("is_ipv6", _BOOL), _q("ip_ids", _UUID, True)]

_OBJ_ORDER = _q("order_by", {"type": "string", "enum": [
    "created_at_asc", "created_at_desc", "name_asc", "name_desc"]})

_IPAM = "/ipam/v1/regions/{region}"
_VPC = "/vpc/v2/regions/{region}"
_ADMIN = "/ipam/admin/v1"

PATHS: dict[str, Any] = {
    f"{_IPAM}/ips": {
        "post": _op("Book an IP", [_REGION, _IDEMPOTENCY], "IP", _obj({
            "source": _ref("Source"), "is_ipv6": _BOOL, "project_id": _UUID,
            "address": _STR, "tags": _TAGS, "resource": _ref("CustomResource")},
            ("source",))),
        "get": _op("List IPs", [_REGION, *_IP_LIST_PARAMS], "ListIPsResponse"),
    },
    f"{_IPAM}/ips/{{ip_id}}": {
        "get": _op("Get an IP", [_REGION, _p("ip_id")], "IP"),
        "patch": _op("Update an IP", [_REGION, _p("ip_id")], "IP", _obj({
            "tags": _TAGS, "reverses": {"type": "array", "items": _ref("Reverse")}})),
        "delete": _op("Release an IP", [_REGION, _p("ip_id")], None),
    },
    f"{_IPAM}/ips/{{ip_id}}/attach": {"post": _op(
        "Attach an IP", [_REGION, _p("ip_id"), _IDEMPOTENCY], "IP",
        _obj({"resource": _ref("CustomResource")}, ("resource",)))},
    f"{_IPAM}/ips/{{ip_id}}/detach": {"post": _op(
        "Detach an IP", [_REGION, _p("ip_id"), _IDEMPOTENCY], "IP",
        _obj({"resource": _ref("CustomResource")}, ("resource",)))},
    f"{_IPAM}/ips/{{ip_id}}/move": {"post": _op(
        "Move an IP", [_REGION, _p("ip_id"), _IDEMPOTENCY], "IP",
        _obj({"from_resource": _ref("CustomResource"), "to_resource": _ref("CustomResource")},
             ("from_resource",)))},
    f"{_IPAM}/ip-sets/release": {"post": _op(
        "Release a set of IPs, all or none", [_REGION], None,
        _obj({"ip_ids": {"type": "array", "items": _UUID, "minItems": 1}}, ("ip_ids",)))},
    f"{_IPAM}/private-networks/{{private_network_id}}/reserved-ips": {"get": _op(
        "Addresses of each subnet never handed out (extension)",
        [_REGION, _p("private_network_id")], "{object}")},
    f"{_VPC}/vpcs": {
        "post": _op("Create a VPC", [_REGION], "VPC", _obj({
            "name": _STR, "project_id": _UUID, "tags": _TAGS, "enable_routing": _BOOL,
            "enable_transitivity": _BOOL})),
        "get": _op("List VPCs", [_REGION, _OBJ_ORDER, *_PAGING, _q("name", _STR),
                                 _q("tags", _STR, True), _q("organization_id", _UUID),
                                 _q("project_id", _UUID), _q("is_default", _BOOL)],
                   "{object}"),
    },
    f"{_VPC}/vpcs/{{vpc_id}}": {
        "get": _op("Get a VPC", [_REGION, _p("vpc_id")], "VPC"),
        "patch": _op("Update a VPC", [_REGION, _p("vpc_id")], "VPC",
                     _obj({"name": _STR, "tags": _TAGS})),
        "delete": _op("Delete a VPC without Private Networks", [_REGION, _p("vpc_id")], None),
    },
    f"{_VPC}/private-networks": {
        "post": _op("Create a Private Network", [_REGION], "PrivateNetwork", _obj({
            "name": _STR, "project_id": _UUID, "tags": _TAGS,
            "subnets": {"type": "array", "items": _STR}, "vpc_id": _UUID,
            "default_route_propagation_enabled": _BOOL})),
        "get": _op("List Private Networks", [
            _REGION, _OBJ_ORDER, *_PAGING, _q("name", _STR), _q("tags", _STR, True),
            _q("organization_id", _UUID), _q("project_id", _UUID),
            _q("private_network_ids", _UUID, True), _q("vpc_id", _UUID)], "{object}"),
    },
    f"{_VPC}/private-networks/{{private_network_id}}": {
        "get": _op("Get a Private Network", [_REGION, _p("private_network_id")],
                   "PrivateNetwork"),
        "patch": _op("Update a Private Network", [_REGION, _p("private_network_id")],
                     "PrivateNetwork", _obj({"name": _STR, "tags": _TAGS,
                                             "default_route_propagation_enabled": _BOOL})),
        "delete": _op("Delete a Private Network without IPs",
                      [_REGION, _p("private_network_id")], None),
    },
    f"{_VPC}/subnets": {"get": _op("List subnets", [
        _REGION, _q("order_by", {"type": "string", "enum": ["created_at_asc",
                                                            "created_at_desc"]}),
        *_PAGING, _q("organization_id", _UUID), _q("project_id", _UUID),
        _q("subnet_ids", _UUID, True), _q("vpc_id", _UUID)], "{object}")},
    f"{_ADMIN}/api-keys": {
        "post": _op("Create an API key (admin)", [], "ApiKey", _obj({
            "role": {"type": "string", "enum": ["admin", "project_member", "project_reader",
                                                "product"]},
            "organization_id": _UUID, "project_ids": {"type": "array", "items": _UUID},
            "resource_types": {"type": "array", "items": _STR}, "description": _STR,
            "expires_at": {"type": "string", "format": "date-time"}}, ("role",))),
        "get": _op("List API keys (admin)", [], "{object}"),
    },
    f"{_ADMIN}/api-keys/{{access_key}}": {
        "get": _op("Get an API key (admin)", [_p("access_key", _STR)], "ApiKey"),
        "delete": _op("Revoke an API key (admin)", [_p("access_key", _STR)], None),
    },
    f"{_ADMIN}/regions/{{region}}/zonal-pools": {
        "post": _op("Add a zonal pool (admin)", [_REGION], "ZonalPool",
                    _obj({"zone": _STR, "subnet": _STR}, ("zone", "subnet"))),
        "get": _op("List zonal pools (admin)", [_REGION, _q("zone", _STR)], "{object}"),
    },
    f"{_ADMIN}/regions/{{region}}/zonal-pools/{{pool_id}}": {
        "delete": _op("Delete an empty zonal pool (admin)", [_REGION, _p("pool_id")], None),
    },
    "/healthz": {"get": _op("The process is up", [], "{object}", public=True)},
    "/readyz": {"get": _op("etcd is reachable and the node is not draining", [], "{object}",
                           public=True)},
    "/openapi.json": {"get": _op("This document", [], "{object}", public=True)},
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "ipam", "version": "0.1.0",
             "description": "Scaleway-compatible IPAM v1 and VPC v2 (subset) API"},
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header",
                                       "name": "X-Auth-Token"}},
    },
    "security": [{"apiKey": []}],
}


async def serve(request: web.Request) -> web.Response:
    return web.json_response(DOCUMENT)
