"""Every answer a test gateway sends, checked against the node's own OpenAPI document.

`Conformance(app)` is an aiohttp middleware added outermost to an in-process node:
for each answer it finds the operation of the route (or, for an unknown path or
method, the document's `RouteNotFound` / `MethodNotAllowed` responses) and checks
that the status is documented, that a JSON body matches the documented schema
(formats included), that a 204 has no body and that a 405 carries `Allow`.
It never changes an answer: disagreements are recorded in `violations`, and the
fixtures fail the test at teardown when there are any.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from jsonschema import Draft202012Validator, FormatChecker

from gateway.auth import is_page
from gateway.openapi import document

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Conformance:
    """Checks answers against the OpenAPI document of one application."""

    def __init__(self, app: web.Application) -> None:
        self.doc = document(app)
        self.violations: list[str] = []

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        problem = self.check(request, response)
        if problem:
            self.violations.append(f"{request.method} {request.path_qs} -> "
                                   f"{response.status}: {problem}")
        return response

    def _documented(self, request: web.Request, status: int) -> dict[str, Any] | None:
        route = request.match_info.route
        responses = self.doc["components"]["responses"]
        if status == 405:
            return responses["MethodNotAllowed"]
        resource = route.resource
        if resource is None:  # no route for this path
            return {404: responses["RouteNotFound"], 501: responses["NotServed"]}.get(status)
        method = "get" if request.method == "HEAD" else request.method.lower()
        operation = self.doc["paths"][resource.canonical][method]
        return operation["responses"].get(str(status))

    def check(self, request: web.Request, response: web.StreamResponse) -> str | None:
        """What is wrong with `response`, or None."""
        if is_page(request.match_info.handler):
            return None  # a page for people (/docs) is no operation of the document
        documented = self._documented(request, response.status)
        if documented is None:
            return "status not documented"
        if response.status == 405 and not response.headers.get("Allow"):
            return "405 without Allow"
        body = getattr(response, "body", None)
        if "content" not in documented:
            return f"undocumented body {body!r}" if body else None
        if request.method == "HEAD":
            return None
        if "application/json" not in documented["content"]:  # a documented text answer
            declared = {t.split(";")[0].strip() for t in documented["content"]}
            return None if response.content_type in declared else (
                f"content type {response.content_type}, documented {sorted(declared)}")
        if response.content_type != "application/json":
            return f"content type {response.content_type}"
        try:
            data = json.loads(body or b"")
        except ValueError:
            return f"not JSON: {body!r:.200}"
        schema = documented["content"]["application/json"]["schema"]
        # The schema's $refs point into the document: give it the document's components.
        validator = Draft202012Validator({**schema, "components": self.doc["components"]},
                                         format_checker=FormatChecker())
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in validator.iter_errors(data)]
        return "; ".join(errors)[:2000] if errors else None

    def assert_conformant(self) -> None:
        """Fail when any answer disagreed with the document."""
        assert not self.violations, "answers that disagree with the OpenAPI document:\n" + \
            "\n".join(self.violations)
