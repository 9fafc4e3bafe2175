"""One command's conversation with a running gateway, over its public HTTP API.

Every request carries the secret key in `X-Auth-Token`. What can go wrong is one of
two `GatewayError`s, each printed as readable lines on stderr with exit code 1, never
as a traceback:

    ApiError      the gateway answered an error: `error_text` of its body
    Unreachable   no answer: `cannot reach URL: reason`
"""

from __future__ import annotations

import functools
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any, TypeVar, cast

import click

from .settings import OUTPUTS, Settings, from_context

TIMEOUT_SECONDS = 30.0
# Lists are read page by page, up to PAGE_SIZE * MAX_PAGES objects (the API's largest page).
PAGE_SIZE = 100
MAX_PAGES = 100

F = TypeVar("F", bound=Callable[..., Any])

Query = Mapping[str, str | Sequence[str] | None]


class GatewayError(click.ClickException):
    """The gateway refused, or could not be asked: its message as is, exit code 1."""

    exit_code = 1

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(self.message, file=file, err=True)


class ApiError(GatewayError):
    """An error answer of the gateway (4xx, 5xx), as `error_text` puts it."""


class Unreachable(GatewayError):
    """No answer from the gateway at all (refused, timed out, cut)."""


def error_text(status: int, raw: bytes) -> str:
    """An error answer as lines a person reads: `error 409 already_exists: message`,
    then one line per detail (`argument: help (reason)`), never a dict."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return f"error {status}: {raw.decode(errors='replace').strip() or 'no message'}"
    line = f"error {status} {body.get('type') or 'unknown'}: {body.get('message') or ''}"
    if body.get("resource") and body.get("resource_id"):
        line += f" ({body['resource']} {body['resource_id']})"
    lines = [line.rstrip()]
    details = body.get("details")
    for d in details if isinstance(details, list) else ():
        if isinstance(d, dict) and "argument_name" in d:
            lines.append(f"  {d['argument_name']}: {d.get('help_message') or ''} "
                         f"({d.get('reason') or 'invalid'})")
        elif isinstance(d, dict):
            lines.append("  " + ", ".join(f"{k} {v}" for k, v in d.items()))
        else:
            lines.append(f"  {d}")
    if body.get("help_message") and body.get("help_message") != body.get("message"):
        lines.append(f"  {body['help_message']}")
    return "\n".join(lines)


class Session:
    """The gateway one command talks to, as whom, and how it prints the answers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Proxies in the environment are for the Internet, not for the operator's gateway.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def output(self) -> str:
        return self.settings.output

    @property
    def region_segment(self) -> str:
        """The region as one segment of a path."""
        return urllib.parse.quote(self.settings.region, safe="")

    @property
    def ipam_path(self) -> str:
        """The IPAM v1 routes of the region."""
        return f"/ipam/v1/regions/{self.region_segment}"

    @property
    def vpc_path(self) -> str:
        """The VPC v2 routes of the region."""
        return f"/vpc/v2/regions/{self.region_segment}"

    @property
    def admin_path(self) -> str:
        """The operator's routes (admin keys only)."""
        return "/ipam/admin/v1"

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None,
             query: Query | None = None) -> Any:
        """The JSON answer of one request (None when empty); a GatewayError otherwise."""
        url = self.settings.url + path
        given = {k: v for k, v in (query or {}).items() if v is not None and v != []}
        if given:
            url += "?" + urllib.parse.urlencode(given, doseq=True)
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method, headers={
            "X-Auth-Token": self.settings.secret_key, "Content-Type": "application/json"})
        try:
            with self._opener.open(request, timeout=TIMEOUT_SECONDS) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            raise ApiError(error_text(err.code, err.read())) from None
        except urllib.error.URLError as err:
            raise Unreachable(f"cannot reach {self.settings.url}: {err.reason}") from None
        except (OSError, http.client.HTTPException) as err:  # timed out, cut mid-answer
            reason = str(err) or type(err).__name__
            raise Unreachable(f"cannot reach {self.settings.url}: {reason}") from None
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise ApiError(f"error: {self.settings.url} answered something that is not "
                           "JSON") from None

    def collect(self, path: str, key: str, query: Query | None = None) -> list[dict[str, Any]]:
        """Every object of a paginated list, page after page, up to MAX_PAGES pages
        (a note on stderr says when more were left out)."""
        items: list[dict[str, Any]] = []
        total = 0
        for page in range(1, MAX_PAGES + 1):
            answer = self.call("GET", path, query={
                **(query or {}), "page": str(page), "page_size": str(PAGE_SIZE)})
            batch, total = answer[key], answer["total_count"]
            items += batch
            if not batch or len(items) >= total:
                return items
        click.echo(f"showing the first {len(items)} of {total} {key.replace('_', ' ')}; "
                   "narrow the filters for the rest", err=True)
        return items


def pass_session(outputs: Sequence[str] = OUTPUTS) -> Callable[[F], F]:
    """Give the decorated command its Session as first argument, its settings resolved
    from the whole command line (`outputs`: the formats it prints)."""
    def decorate(f: F) -> F:
        def run(*args: Any, **kwargs: Any) -> Any:
            session = Session(from_context(click.get_current_context(), outputs))
            return f(session, *args, **kwargs)
        return cast(F, functools.update_wrapper(run, f))
    return decorate
