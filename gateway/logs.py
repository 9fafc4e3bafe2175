"""The node's logs: one line per request (the access log), text or JSON, every line of a
request carrying its request id.

    X-Request-Id   taken from the request when it is a sane token (<= 128 printable
                   characters), else generated (shaped as a UUID: a random
                   prefix per process, then a counter); sent back in every answer,
                   errors included, and put in every log line written while serving it.

The access line says method, route template, path, status, duration, request id and the
caller's access key (never a secret). `--log-format json` writes one JSON object per line
(python-json-logger), with the same fields as keys.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import re
import sys
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from pythonjsonlogger.json import JsonFormatter

from allocator.contract import new_id

from .auth import PRINCIPAL_KEY

REQUEST_ID_HEADER = "X-Request-Id"
_SANE_ID = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable ASCII, no spaces


def _request_ids() -> Iterator[str]:
    """Request ids shaped as UUIDs: a random prefix per process, then a counter. Unique
    without the system call that `new_id` makes for each id."""
    prefix = new_id()[:24]
    for n in itertools.count():
        yield f"{prefix}{n & 0xFFFFFFFFFFFF:012x}"


_next_request_id = _request_ids().__next__
REQUEST_ID_KEY = web.RequestKey("request_id", str)
_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(request_suffix)s"


class RequestIdFilter(logging.Filter):
    """Puts the request id of the request being served (if any) on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = getattr(record, "request_id", None) or _current.get()
        record.request_id = rid
        record.request_suffix = f" request_id={rid}" if rid else ""
        return True


def configure(level: str, fmt: str) -> None:
    """Send the process's logs to stderr at `level`, as `fmt` (text or json) lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            reserved_attrs=[*_RESERVED, "request_suffix"]))
    else:
        handler.setFormatter(logging.Formatter(_TEXT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


# The LogRecord attributes python-json-logger leaves out of the JSON object by default.
_RESERVED = [
    "args", "created", "exc_info", "exc_text", "filename", "funcName", "levelno", "lineno",
    "module", "msecs", "msg", "pathname", "process", "processName", "relativeCreated",
    "stack_info", "thread", "threadName", "taskName"]


@web.middleware
async def request_id_middleware(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Give the request its id, for the logs and the answer (see the module docstring)."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    rid = given if _SANE_ID.match(given) else _next_request_id()
    request[REQUEST_ID_KEY] = rid
    token = _current.set(rid)
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # answers raised past the error middleware
        exc.headers[REQUEST_ID_HEADER] = rid
        raise
    finally:
        _current.reset(token)
    response.headers[REQUEST_ID_HEADER] = rid
    return response


def route_of(request: web.BaseRequest) -> str:
    """The route template that served `request` (`/ipam/v1/regions/{region}/ips/{ip_id}`),
    or `unmatched`: a bounded label, never the raw path."""
    try:
        match = getattr(request, "match_info", None)
    except AssertionError:  # aiohttp's for a request its parser refused: never routed
        return "unmatched"
    route = getattr(match, "route", None)
    resource = getattr(route, "resource", None)
    return resource.canonical if resource is not None else "unmatched"


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access logger: one line per request, with the request id and access key."""

    @property
    def enabled(self) -> bool:
        """aiohttp skips `log` when the line would not be written (a level above info)."""
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        principal = request.get(PRINCIPAL_KEY) if isinstance(request, web.Request) else None
        fields = {
            "method": request.method, "route": route_of(request), "path": request.path,
            "status": response.status, "duration_ms": round(time * 1000, 3),
            "request_id": request.get(REQUEST_ID_KEY) if isinstance(request, web.Request)
            else None,
            "access_key": principal.access_key if principal is not None else None,
            "remote": request.remote,
        }
        self.logger.info(
            "%s %s %s %s %.1fms access_key=%s", fields["method"], fields["path"],
            fields["status"], fields["route"], fields["duration_ms"], fields["access_key"] or "-",
            extra=fields)
