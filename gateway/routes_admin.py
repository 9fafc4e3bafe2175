"""Operator routes (admin keys only): API keys and zonal pools.

    POST   /ipam/admin/v1/api-keys                          create a key; the secret is shown once
    GET    /ipam/admin/v1/api-keys                          list keys, without secrets
    GET    /ipam/admin/v1/api-keys/{access_key}             one key
    DELETE /ipam/admin/v1/api-keys/{access_key}             revoke, at once on every node
    POST   /ipam/admin/v1/regions/{region}/zonal-pools      {"zone", "subnet"}
    GET    /ipam/admin/v1/regions/{region}/zonal-pools      ?zone=
    DELETE /ipam/admin/v1/regions/{region}/zonal-pools/{id} only while it holds no IP
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from allocator.contract import ApiKey, Source, check_key_spec, is_access_key

from .auth import principal
from .context import CREDENTIALS_KEY, ipam_of, served_region, served_zone
from .errors import invalid_argument
from .wire import QueryFields, path_uuid, read_body

routes = web.RouteTableDef()


def api_key_json(key: ApiKey) -> dict[str, Any]:
    return key.to_json()


def zonal_pool_json(pool: Source) -> dict[str, Any]:
    return {"id": pool.id, "region": pool.region, "zone": pool.zone, "subnet": pool.cidr,
            "is_ipv6": pool.is_ipv6, "created_at": pool.created_at}


@routes.post("/ipam/admin/v1/api-keys")
async def create_api_key(request: web.Request) -> web.Response:
    principal(request).check_admin("api_key")
    body = await read_body(request)
    raw = {k: body.data.get(k) for k in ("role", "organization_id", "project_ids",
                                         "resource_types", "description", "expires_at")}
    body.accept(*raw)
    body.finish()
    spec = check_key_spec(**raw)
    key, secret = await request.app[CREDENTIALS_KEY].create(spec)
    return web.json_response({**api_key_json(key), "secret_key": secret})


@routes.get("/ipam/admin/v1/api-keys")
async def list_api_keys(request: web.Request) -> web.Response:
    principal(request).check_admin("api_key")
    keys = await request.app[CREDENTIALS_KEY].list()
    return web.json_response({"api_keys": [api_key_json(k) for k in keys],
                              "total_count": len(keys)})


def _access_key(request: web.Request) -> str:
    access_key = request.match_info["access_key"]
    if not is_access_key(access_key):
        raise invalid_argument("access_key", "must be SCW followed by 17 letters or digits",
                               "format")
    return access_key


@routes.get("/ipam/admin/v1/api-keys/{access_key}")
async def get_api_key(request: web.Request) -> web.Response:
    principal(request).check_admin("api_key")
    key = await request.app[CREDENTIALS_KEY].get(_access_key(request))
    return web.json_response(api_key_json(key))


@routes.delete("/ipam/admin/v1/api-keys/{access_key}")
async def revoke_api_key(request: web.Request) -> web.Response:
    principal(request).check_admin("api_key")
    await request.app[CREDENTIALS_KEY].revoke(_access_key(request))
    return web.Response(status=204)


@routes.post("/ipam/admin/v1/regions/{region}/zonal-pools")
async def create_zonal_pool(request: web.Request) -> web.Response:
    region = served_region(request)
    principal(request).check_admin("zonal_pool")
    body = await read_body(request)
    zone = body.text("zone", required=True, max_length=32)
    subnet = body.text("subnet", required=True, max_length=64)
    body.finish()
    assert zone is not None and subnet is not None
    served_zone(zone, "zone", request)
    pool = await ipam_of(request).create_zonal_pool(region, zone, subnet)
    return web.json_response(zonal_pool_json(pool))


@routes.get("/ipam/admin/v1/regions/{region}/zonal-pools")
async def list_zonal_pools(request: web.Request) -> web.Response:
    region = served_region(request)
    principal(request).check_admin("zonal_pool")
    q = QueryFields(request.query)
    zone = q.text("zone")
    q.finish()
    if zone is not None:
        served_zone(zone, "zone", request)
    pools = await ipam_of(request).list_zonal_pools(region, zone)
    return web.json_response({"zonal_pools": [zonal_pool_json(p) for p in pools],
                              "total_count": len(pools)})


@routes.delete("/ipam/admin/v1/regions/{region}/zonal-pools/{pool_id}")
async def delete_zonal_pool(request: web.Request) -> web.Response:
    served_region(request)
    principal(request).check_admin("zonal_pool")
    pool_id = path_uuid(request, "pool_id", "pool_id")
    await ipam_of(request).delete_zonal_pool(pool_id)
    return web.Response(status=204)
