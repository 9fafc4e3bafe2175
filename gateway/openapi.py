"""The OpenAPI 3.1 document, generated from the route table and the wire models.

Each route of the application is one operation: its operationId is the handler's
name, its summary the first line of the handler's docstring, its tag the API it
belongs to (ipam, vpc, admin, probes). Parameters, body and answers come from the
models the handler declares (see `gateway.wire`), so the document is exactly what
the node reads and sends; `region` and `zone` are enumerated from the node's
configuration. The error answers of an operation follow from what it does:

    400 invalid_arguments   it reads parameters or a body
    401, 403                it is not public
    404 not_found           it names something in its path or body
    409, 412                it changes something
    413                     it reads a body
    503                     it reaches etcd (a change may also find the datastore full)

An unknown path (404) and a known path with another method (405, with `Allow`) are
`components.responses`: they belong to no operation.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .auth import PUBLIC_PATHS, TOKEN_HEADER, is_page
from .context import CONFIG_KEY
from .models import errors as m
from .models.admin import Document
from .models.fields import not_null
from .wire import Endpoint, Raw, endpoint, endpoint_of

_REF = "#/components/schemas/{model}"
_TAGS = (("/ipam/admin/", "admin"), ("/ipam/", "ipam"), ("/vpc/", "vpc"), ("/", "probes"))
_WRITES = ("POST", "PATCH", "PUT", "DELETE")
_NO_ETCD = frozenset({"/healthz", "/openapi.json", "/metrics"})
# A change refused by etcd's quota (its NOSPACE alarm): the same 503 body, told apart by
# its message (gateway.errors.STORAGE_FULL) and lasting until an operator frees space.
_FULL = ("or the datastore is full (message \"the datastore is full: ...\"): the change was "
         "refused whole, and changes stay refused until an operator frees space")
_DOCUMENT_KEY = web.AppKey("openapi_document", dict)


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The models of a reply annotation: one model, or a union of them (none for `Raw`)."""
    if annotation is None or annotation is type(None) or annotation is Raw:
        return []
    args = typing.get_args(annotation)
    return [a for a in args if a is not type(None)] if args else [annotation]


def _error_models() -> list[type[BaseModel]]:
    return [v for v in vars(m).values()
            if isinstance(v, type) and issubclass(v, m.ErrorBody) and v is not m.ErrorBody]


def _operations(app: web.Application) -> Iterator[tuple[str, str, Endpoint]]:
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue  # aiohttp answers HEAD for each GET by itself
        if is_page(route.handler):
            continue  # a page for people (/docs) is no operation of the API
        spec = endpoint_of(route.handler)
        if spec is None:
            raise TypeError(f"{route.method} {route.resource.canonical}: not an endpoint")
        yield route.method, route.resource.canonical, spec


class _Schemas:
    """JSON Schemas of every model, with `$ref`s into components."""

    def __init__(self, app: web.Application) -> None:
        entries: list[tuple[type[BaseModel], Any]] = []
        for _, _, spec in _operations(app):
            entries += [(model, "validation") for model in spec.parts.values()]
            for reply in (spec.reply, *spec.replies.values()):
                entries += [(model, "serialization") for model in _models(reply)]
        entries += [(model, "serialization") for model in _error_models()]
        unique = list(dict.fromkeys(entries))
        self.by_model, top = models_json_schema(unique, ref_template=_REF)
        self.components: dict[str, Any] = top.get("$defs", {})
        # Path, header and query models become parameters, not schemas of their own.
        self.parameter_models = {
            self.name(model) for _, _, spec in _operations(app)
            for part, model in spec.parts.items() if part != "body"}

    def name(self, model: type[BaseModel]) -> str:
        return str(self.ref(model, "validation")["$ref"].rsplit("/", 1)[1])

    def ref(self, model: type[BaseModel], mode: str) -> dict[str, Any]:
        return self.by_model[(model, mode)]

    def of(self, annotation: Any, mode: str = "serialization") -> dict[str, Any]:
        models = _models(annotation)
        if len(models) == 1:
            return self.ref(models[0], mode)
        return {"anyOf": [self.ref(model, mode) for model in models]}

    def properties(self, model: type[BaseModel]) -> dict[str, Any]:
        return dict(self.components[self.name(model)].get("properties", {}))

    def bodies(self) -> dict[str, Any]:
        """The component schemas: every model but those of parameters."""
        return {k: v for k, v in self.components.items() if k not in self.parameter_models}


def _parameters(schemas: _Schemas, spec: Endpoint) -> list[dict[str, Any]]:
    out = []
    for part, where in (("path", "path"), ("headers", "header"), ("query", "query")):
        model = spec.parts.get(part)
        if model is None:
            continue
        properties = schemas.properties(model)
        for name, f in model.model_fields.items():
            key = f.alias or name
            schema = not_null(properties[key])
            if where == "query":
                schema = _or_empty(schema)
            param: dict[str, Any] = {"name": key, "in": where,
                                     "required": where == "path" or f.is_required(),
                                     "schema": schema}
            if f.description:
                param["description"] = f.description
            if schema.get("type") == "array":
                param.update(style="form", explode=True)  # tags=a&tags=b, as the SDK sends
            out.append(param)
    return out


def _or_empty(schema: dict[str, Any]) -> dict[str, Any]:
    """An empty query value (`?vpc_id=`) is an absent one: say so where "" is not a value."""
    if schema.get("type") == "array":
        return {**schema, "items": _or_empty(schema["items"])}
    if schema.get("type") == "string" and schema.keys() <= {"type", "title", "description"}:
        return schema
    return {"anyOf": [schema, {"const": ""}]}


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": _content(schema)}


def _summary(model: type[BaseModel]) -> str:
    """An error body's `type`, and what it means."""
    doc = (model.__doc__ or "").strip().split("\n")[0]
    return f"{model.model_fields['type'].default}: {doc.split(': ', 1)[-1]}"


def _errors(schemas: _Schemas, method: str, path: str, spec: Endpoint) -> dict[str, Any]:
    reads = bool(spec.parts)
    body = "body" in spec.parts
    public = path in PUBLIC_PATHS
    rules: list[tuple[int, list[type[BaseModel]], bool]] = [
        (400, [m.InvalidArguments], reads),
        (401, [m.DeniedAuthentication], not public),
        # A create (a POST) may also find its project's quota full.
        (403, [m.PermissionsDenied] + ([m.QuotasExceeded] if method == "POST" else []),
         not public),
        (404, [m.NotFound], "{" in path or body),
        (409, [m.AlreadyExists, m.OutOfStock, m.Conflict], method in _WRITES),
        (412, [m.PreconditionFailed], method in _WRITES),
        (408, [m.InvalidRequest], body),  # a body that does not arrive in time
        (413, [m.RequestEntityTooLarge], body),
        (503, [m.ServiceUnavailable], not public and path not in _NO_ETCD),
    ]
    out = {}
    for status, models, applies in rules:
        if applies:
            schema = (schemas.ref(models[0], "serialization") if len(models) == 1 else
                      {"anyOf": [schemas.ref(x, "serialization") for x in models]})
            out[str(status)] = _answer("; ".join(_summary(x) for x in models), schema)
    if "503" in out and method in _WRITES:
        out["503"]["description"] += f"; {_FULL}"
    return out


def _operation(schemas: _Schemas, method: str, path: str, spec: Endpoint) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    if spec.reply is None:
        responses["204"] = {"description": "done: no content"}
    elif spec.reply is Raw:
        responses["200"] = {"description": "OK",
                            "content": {spec.media_type: {"schema": {"type": "string"}}}}
    else:
        responses["200"] = _answer("OK", schemas.of(spec.reply))
        if getattr(spec.reply, "versioned", False):
            responses["200"]["headers"] = {"ETag": {
                "description": "the version of the object: give it in If-Match to change "
                               "this version only", "schema": {"type": "string"}}}
            if method == "GET":
                responses["304"] = {"description": "not modified: the version named in "
                                                   "If-None-Match is the current one"}
    responses.update(_errors(schemas, method, path, spec))
    for status, reply in spec.replies.items():
        responses[str(status)] = _answer(f"status {status}", schemas.of(reply))
    op: dict[str, Any] = {
        "operationId": spec.name,
        "summary": spec.summary,
        "tags": [next(tag for prefix, tag in _TAGS if path.startswith(prefix))],
        "parameters": _parameters(schemas, spec),
        "responses": responses,
    }
    body = spec.parts.get("body")
    if body is not None:
        op["requestBody"] = {"required": spec.body_required,
                             "content": _content(schemas.ref(body, "validation"))}
    if path in PUBLIC_PATHS:
        op["security"] = []
    return op


def _served(node: Any, regions: list[str], zones: list[str]) -> Any:
    """`node` with the `region` and `zone` formats enumerated for this node."""
    if isinstance(node, list):
        return [_served(n, regions, zones) for n in node]
    if not isinstance(node, dict):
        return node
    fmt = node.get("format")
    if fmt in ("region", "zone"):
        rest = {k: v for k, v in node.items() if k != "format"}
        return {**rest, "type": "string", "enum": regions if fmt == "region" else zones}
    return {k: _served(v, regions, zones) for k, v in node.items()}


def document(app: web.Application) -> dict[str, Any]:
    """The OpenAPI document of `app`, for the region and zones it serves."""
    schemas = _Schemas(app)
    paths: dict[str, dict[str, Any]] = {}
    for method, path, spec in _operations(app):
        paths.setdefault(path, {})[method.lower()] = _operation(schemas, method, path, spec)
    config = app.get(CONFIG_KEY)
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "ipam", "version": "0.1.0",
                 "description": "Scaleway-compatible IPAM v1 and VPC v2 (subset) API"},
        "tags": [{"name": t} for t in ("ipam", "vpc", "admin", "probes")],
        "paths": paths,
        "components": {
            "schemas": schemas.bodies(),
            "responses": {
                "RouteNotFound": _answer("No route for this path",
                                         schemas.ref(m.NotFound, "serialization")),
                "NotServed": _answer("A call of Scaleway's VPC v2 API that this gateway "
                                     "does not serve (routes, ACL rules, connectors, ...)",
                                     schemas.ref(m.NotImplementedCall, "serialization")),
                "MethodNotAllowed": {
                    **_answer("The path does not take this method",
                              schemas.ref(m.MethodNotAllowed, "serialization")),
                    "headers": {"Allow": {"required": True, "schema": {"type": "string"},
                                          "description": "the methods the path takes"}}},
            },
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header",
                                           "name": TOKEN_HEADER}},
        },
        "security": [{"apiKey": []}],
    }
    if config is None:
        return doc
    return _served(doc, list(config.regions),
                   [z for r in config.regions for z in config.zones_of(r)])


async def prepare(app: web.Application) -> None:
    """Generate the document once, at startup, when every route is in place."""
    app[_DOCUMENT_KEY] = document(app)


@endpoint
async def openapi_json(request: web.Request) -> Document:
    """This document."""
    return Document(request.app[_DOCUMENT_KEY])
