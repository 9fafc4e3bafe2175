"""The aiohttp application factory: one stateless gateway node over an IPAM.

    app = create_app(ipam, GatewayConfig(region="fr-par"))

Middlewares run outermost first: drain (while the node drains, every answer closes
its connection), errors (every failure becomes a Scaleway error body), then
authentication (every path but the probes and the OpenAPI document).
"""

from __future__ import annotations

from aiohttp import web

from allocator.contract import IPAM

from . import health, openapi, routes_admin, routes_ipam, routes_vpc
from .auth import AUTHENTICATOR, Authenticator, auth_middleware
from .config import MAX_HEADER_BYTES, GatewayConfig
from .context import CONFIG_KEY, CREDENTIALS_KEY, IPAM_KEY
from .drain import DRAIN_KEY, Drain, drain_middleware
from .errors import error_middleware


def create_app(ipam: IPAM, config: GatewayConfig | None = None, *,
               close_ipam: bool = False) -> web.Application:
    """A gateway application serving `config.region` on top of `ipam`.

    With `close_ipam`, the IPAM is closed when the application shuts down.
    `drain_of(app).begin()` starts draining it (see `gateway.drain`).
    """
    config = config or GatewayConfig()
    app = web.Application(
        client_max_size=config.max_body_bytes,
        middlewares=[drain_middleware, error_middleware, auth_middleware],
        # aiohttp answers a request line or header over its limit before any middleware
        # runs, in text/plain: the limit is raised so that real requests never meet it.
        handler_args={"max_line_size": MAX_HEADER_BYTES, "max_field_size": MAX_HEADER_BYTES})
    credentials = ipam.credentials()
    app[IPAM_KEY] = ipam
    app[CONFIG_KEY] = config
    app[CREDENTIALS_KEY] = credentials
    app[AUTHENTICATOR] = Authenticator(credentials, config.admin_secret_key)
    app[DRAIN_KEY] = Drain()
    app.add_routes(routes_ipam.routes)
    app.add_routes(routes_vpc.routes)
    app.add_routes(routes_admin.routes)
    app.add_routes(health.routes)
    app.router.add_get("/openapi.json", openapi.openapi_json)
    app.on_startup.append(openapi.prepare)
    async def start_credentials(_: web.Application) -> None:
        await credentials.start()

    async def close_credentials(_: web.Application) -> None:
        await credentials.close()

    app.on_startup.append(start_credentials)
    app.on_cleanup.append(close_credentials)
    if close_ipam:
        async def close(_: web.Application) -> None:
            await ipam.close()
        app.on_cleanup.append(close)
    return app
