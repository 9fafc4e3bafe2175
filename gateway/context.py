"""What every route handler reaches through its request: the IPAM, the config, the region.

Kept apart from `app` so route modules can import it without importing the factory.
"""

from __future__ import annotations

from aiohttp import web

from allocator.contract import IPAM, Credentials

from .config import GatewayConfig
from .errors import invalid_argument, not_found

IPAM_KEY = web.AppKey("ipam", IPAM)
CONFIG_KEY = web.AppKey("config", GatewayConfig)
CREDENTIALS_KEY = web.AppKey("credentials", Credentials)


def ipam_of(request: web.Request) -> IPAM:
    return request.app[IPAM_KEY]


def config_of(request: web.Request) -> GatewayConfig:
    return request.app[CONFIG_KEY]


def served_region(request: web.Request) -> str:
    """The `{region}` of the path, which must be the region this node serves (else 404)."""
    region = request.match_info["region"]
    served = request.app[CONFIG_KEY].region
    if region != served:
        raise not_found("region", region, f"this node serves region {served}, not {region!r}")
    return region


def served_zone(zone: str, argument: str, request: web.Request) -> str:
    """A zone of the served region, or a 400 naming `argument`."""
    zones = request.app[CONFIG_KEY].zones
    if zone not in zones:
        raise invalid_argument(argument, f"must be one of the zones {', '.join(zones)}")
    return zone
