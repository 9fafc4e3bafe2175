"""`GET /docs`: the node's OpenAPI document rendered for a person, by Swagger UI.

    GET /docs                         the page; it reads /openapi.json
    GET /docs/swagger-initializer.js  starts Swagger UI on the page
    GET /docs/{file}                  Swagger UI's script, style sheets and icons, from
                                      the swagger-ui-bundle-v2 wheel; any other name: 404

Every file comes from this node, and the page's Content-Security-Policy lets the
browser fetch from nowhere else, so the page works where nothing outside is reachable.
The page and its files are public like /openapi.json (a browser sends no X-Auth-Token)
and are no operations of the API (`auth.page`). Each answer carries an ETag and
`Cache-Control: no-cache`: a browser asks again and is answered 304, so after an
upgrade it never mixes an old Swagger UI with a new page.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import PurePosixPath

from aiohttp import web
from swagger_ui_bundle import swagger_ui_path

from .auth import page
from .errors import route_not_found

# Relative links: from /docs they name /docs/... and /openapi.json, also behind a proxy
# that serves the node under a path of its own.
_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>ipam API</title>
  <link rel="stylesheet" href="docs/swagger-ui.css">
  <link rel="stylesheet" href="docs/index.css">
  <link rel="icon" type="image/png" href="docs/favicon-32x32.png" sizes="32x32">
  <link rel="icon" type="image/png" href="docs/favicon-16x16.png" sizes="16x16">
</head>
<body>
  <noscript>This page renders <a href="openapi.json">the OpenAPI document</a>
    with JavaScript.</noscript>
  <div id="swagger-ui"></div>
  <script src="docs/swagger-ui-bundle.js"></script>
  <script src="docs/swagger-initializer.js"></script>
</body>
</html>
"""

# validatorUrl null: Swagger UI would otherwise send the document to swagger.io.
_INITIALIZER = """window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  displayOperationId: true,
  validatorUrl: null,
});
"""

# Swagger UI sets style attributes as it renders, and inlines its icons as data: URIs.
_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
           "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
           "frame-ancestors 'none'")

# By suffix: the media type and, for text, its charset.
_TYPES: dict[str, tuple[str, str | None]] = {
    ".html": ("text/html", "utf-8"),
    ".js": ("text/javascript", "utf-8"),
    ".css": ("text/css", "utf-8"),
    ".map": ("application/json", "utf-8"),
    ".png": ("image/png", None),
}

# The files of the wheel the page links to (the style sheet names its source map).
_SWAGGER_UI_FILES = frozenset({"swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui.css.map",
                               "index.css", "favicon-16x16.png", "favicon-32x32.png"})


@dataclass(frozen=True)
class _File:
    """One answer of the docs: its bytes, their type and their entity tag."""

    body: bytes
    content_type: str
    charset: str | None
    etag: str

    @classmethod
    def of(cls, name: str, body: bytes) -> _File:
        content_type, charset = _TYPES[PurePosixPath(name).suffix]
        return cls(body, content_type, charset, hashlib.sha256(body).hexdigest()[:32])

    def answer(self, request: web.Request, headers: dict[str, str] | None = None
               ) -> web.Response:
        """200 with the file, or 304 when the browser already holds this version."""
        if any(tag.value == self.etag for tag in request.if_none_match or ()):
            response = web.Response(status=304)
        else:
            response = web.Response(body=self.body, content_type=self.content_type,
                                    charset=self.charset)
        response.etag = self.etag
        response.headers.update({"Cache-Control": "no-cache",
                                 "X-Content-Type-Options": "nosniff", **(headers or {})})
        return response


_HTML = _File.of("docs.html", _PAGE.encode())
_OURS = {"swagger-initializer.js": _File.of("swagger-initializer.js", _INITIALIZER.encode())}


@functools.cache
def _swagger_ui_file(name: str) -> _File:
    """A file of the wheel, read on first use: the script alone is 1.5 MB."""
    return _File.of(name, (swagger_ui_path / name).read_bytes())


@page
async def docs_page(request: web.Request) -> web.Response:
    """The API documentation page."""
    return _HTML.answer(request, {"Content-Security-Policy": _POLICY,
                                  "Referrer-Policy": "no-referrer"})


@page
async def docs_file(request: web.Request) -> web.Response:
    """A file the page loads; an unknown name is an unknown route."""
    name = request.match_info["name"]
    if name in _OURS:
        return _OURS[name].answer(request)
    if name in _SWAGGER_UI_FILES:
        return _swagger_ui_file(name).answer(request)
    raise route_not_found(request.path)


def add_docs_routes(app: web.Application) -> None:
    """Serve the documentation page at /docs and the files it loads under /docs/."""
    app.router.add_get("/docs", docs_page)
    app.router.add_get("/docs/{name}", docs_file)
