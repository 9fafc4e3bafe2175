"""The HTTP edge of the wire models: a handler declares its models, `endpoint` reads
and writes them.

    @routes.post("/ipam/v1/regions/{region}/ips")
    @endpoint
    async def book_ip(request: web.Request, path: RegionPath, body: BookIPRequest) -> IP:

Parameters named `path`, `headers`, `query` and `body` are parsed from the request
into the model they are annotated with; the returned model is sent with status 200,
and None as an empty 204. A model that shows one version of an object (`Reply._etag`)
is sent with its ETag, and a GET naming that version in If-None-Match is answered 304
(`gateway.etags`). A handler whose answer is no JSON (the Prometheus text of
`/metrics`, an HTML page) returns `Raw` and declares its media type. Before any of it,
the region of the path must be the one this node serves (404), then a `before` check
runs (an admin-only route refuses other keys before reading anything). A model that refuses its part answers one 400
listing every bad argument, each named by its dotted path (`source.private_network_id`)
with a reason mapped from pydantic's error type: missing -> required,
extra_forbidden -> unknown, type and parsing errors -> format, the rest -> constraint.
`gateway.openapi` documents each route from the same declaration.
"""

from __future__ import annotations

import asyncio
import functools
import json
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.web import RequestPayloadError
from multidict import MultiMapping
from pydantic import BaseModel, ValidationError

from allocator.contract import ArgumentProblem

from .context import CONFIG_KEY, served_region
from .errors import ApiError, invalid_argument, invalid_arguments
from .etags import matches
from .models import errors as m
from .models.fields import Reply

PARTS = ("path", "headers", "query", "body")
_WIRE = "ipam_endpoint"

Check = Callable[[web.Request], None]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Raw:
    """An answer that is not a JSON model: `body` of `media_type`, sent as is."""

    body: bytes
    media_type: str


@dataclass(frozen=True)
class Endpoint:
    """What one route reads and answers, as its handler declares it."""

    name: str
    summary: str
    parts: Mapping[str, type[BaseModel]]
    reply: Any  # a model, a union of models, or None for 204
    replies: Mapping[int, Any] = field(default_factory=dict)  # other statuses it sends
    body_required: bool = True
    media_type: str = "application/json"  # of the 200 answer; another one replies `Raw`


def endpoint(handler: Callable[..., Awaitable[Any]] | None = None, *,
             before: Check | None = None, replies: Mapping[int, Any] | None = None,
             optional_body: bool = False, media_type: str = "application/json") -> Any:
    """Make a typed handler an aiohttp one (see the module docstring).

    `replies`: models of statuses other than the 200 the handler may send, by raising
    `ApiError(status, model)`. `optional_body`: an empty body reads as `{}` (a PATCH
    that changes nothing).
    """
    def wrap(typed: Callable[..., Awaitable[Any]]) -> Handler:
        hints = typing.get_type_hints(typed)
        parts = {p: hints[p] for p in PARTS if p in hints}
        reply = hints.get("return")
        spec = Endpoint(typed.__name__, (typed.__doc__ or "").strip().split("\n")[0], parts,
                        None if reply is type(None) else reply, dict(replies or {}),
                        not optional_body, media_type)

        @functools.wraps(typed)
        async def handle(request: web.Request) -> web.StreamResponse:
            if "region" in request.match_info:
                served_region(request)
            if before is not None:
                before(request)
            kwargs = {}
            for part, model in parts.items():
                kwargs[part] = parse(model, await _raw(request, part, model, optional_body))
            reply = await typed(request, **kwargs)
            if reply is None:
                return web.Response(status=204)
            if isinstance(reply, Raw):
                return web.Response(body=reply.body, headers={"Content-Type": reply.media_type})
            tag = reply._etag if isinstance(reply, Reply) else None
            if tag is None:
                return web.Response(body=_json(reply), content_type="application/json",
                                    charset="utf-8")
            held = request.headers.get("If-None-Match")
            if held is not None and request.method == "GET" and matches(held, tag):
                return web.Response(status=304, headers={"ETag": tag})
            return web.Response(body=_json(reply), content_type="application/json",
                                charset="utf-8", headers={"ETag": tag})

        setattr(handle, _WIRE, spec)
        return handle

    return wrap(handler) if handler is not None else wrap


def _json(reply: BaseModel) -> bytes:
    """`reply.model_dump_json()` as the bytes pydantic writes (in Rust) before it decodes
    them to a str that aiohttp would encode again."""
    return reply.__pydantic_serializer__.to_json(reply, by_alias=False)  # as model_dump_json


def endpoint_of(handler: Any) -> Endpoint | None:
    """The declaration of a route's handler, if it was made with `endpoint`."""
    return getattr(handler, _WIRE, None)


def parse(model: type[BaseModel], data: Any) -> Any:
    """`data` as `model`, or one 400 listing every bad argument."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise invalid_arguments(problems(err)) from None


def problems(err: ValidationError) -> list[ArgumentProblem]:
    """One Scaleway argument problem per pydantic error."""
    out = []
    for e in err.errors():
        names = [str(p) for p in e["loc"] if isinstance(p, str)]  # list indexes are left out
        named = (e.get("ctx") or {}).get("field")  # a rule of a model, about one field
        if named:
            names.append(named)
        reason = _reason(e["type"], e["input"])
        generic = e["type"] == "missing" and e["msg"] == "Field required"
        message = _REQUIRED if reason == "required" and (generic or e["input"] is None) else e["msg"]
        out.append(ArgumentProblem(".".join(names) or "body", reason, message))
    return out


_REQUIRED = "this field is required"


_FORMAT_ERRORS = ("_type", "_parsing", "_format", "_pattern_mismatch")


def _reason(kind: str, value: Any) -> str:
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown"
    if kind.endswith(_FORMAT_ERRORS):
        # null stands for absent everywhere: a null where a value is needed is missing
        return "required" if value is None else "format"
    return "constraint"


async def _raw(request: web.Request, part: str, model: type[BaseModel], empty_ok: bool) -> Any:
    if part == "path":
        return dict(request.match_info)
    if part == "headers":
        return {name: request.headers[name] for name in _names(model)
                if name in request.headers}
    if part == "query":
        return query_values(request.query, model)
    return await json_body(request, empty_ok=empty_ok)


def _names(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def query_values(query: MultiMapping[str], model: type[BaseModel]) -> dict[str, Any]:
    """The parameters `model` reads, the way the SDK writes them.

    Lists come as repeated keys (`tags=a&tags=b`), a comma-separated value is split
    too; an empty value is an absent one.
    """
    out: dict[str, Any] = {}
    for name, f in model.model_fields.items():
        key = f.alias or name
        if typing.get_origin(f.annotation) is list:
            out[key] = [v for value in query.getall(key, []) for v in value.split(",") if v]
        elif query.get(key):
            out[key] = query[key]
    return out


async def json_body(request: web.Request, *, empty_ok: bool = False) -> dict[str, Any]:
    """The request body as a JSON object; 400 when it is not one or cannot be read (a
    `Content-Encoding: gzip` body that is no gzip, a body cut short), 413 when too large."""
    try:
        if request.content.is_eof():  # all of it came with the headers: no deadline to set
            raw = await request.read()  # raises 413 beyond client_max_size
        else:
            raw = await _read_in_time(request)
    except (RequestPayloadError, ConnectionResetError) as err:
        raise unreadable_body(request, err) from None
    if not raw.strip():
        if empty_ok:
            return {}
        raise invalid_argument("body", "a JSON object is required", "required")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise invalid_argument("body", "the body is not valid JSON", "format") from None
    if not isinstance(data, dict):
        raise invalid_argument("body", "the body must be a JSON object", "format")
    return data


async def _read_in_time(request: web.Request) -> bytes:
    """The body, if it arrives within --header-timeout of its handler's start; else 408
    and the connection is closed. Without it, a client announcing a body it never sends
    holds a busy connection forever, and enough of them take every connection the node
    has (`listener.Connections` closes idle ones only)."""
    seconds = request.app[CONFIG_KEY].header_timeout
    try:
        async with asyncio.timeout(seconds):
            return await request.read()
    except TimeoutError:
        request.content.feed_eof()
        raise _ClosingError(408, m.InvalidRequest(
            message=f"the request body did not arrive within {seconds:g} s")) from None


def unreadable_body(request: web.Request, err: Exception) -> ApiError:
    """400 for a body aiohttp could not deliver; the answer closes the connection.

    aiohttp raises RequestPayloadError when the body does not decode as its
    Content-Encoding says, and ConnectionResetError when the client closed before the
    body's end: either would otherwise be a 500. The parser's place in the stream is
    then unknown, so the connection is not reused, and the rest of the body is not read
    (aiohttp would read it after the answer, meet the same error and log a traceback).
    """
    if isinstance(err, ConnectionResetError):
        reason = "the body ended before its announced length"
    else:
        cause = getattr(err.__cause__, "message", "") or str(err)
        encoding = request.headers.get("Content-Encoding")
        reason = (f"the body is not valid {encoding}, as its Content-Encoding says"
                  if encoding and "content-encoding" in cause.lower()
                  else f"the body could not be read: {cause}")
    request.content.feed_eof()
    return _ClosingError.of(invalid_argument("body", reason, "format"))


class _ClosingError(ApiError):
    """An error answer after which the connection is closed."""

    @classmethod
    def of(cls, err: ApiError) -> _ClosingError:
        return cls(err.status, err.body, err.headers)

    def response(self) -> web.Response:
        answer = super().response()
        answer.force_close()
        return answer
