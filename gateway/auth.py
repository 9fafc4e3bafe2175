"""Authentication (X-Auth-Token) and tenancy (who may see and change what).

Roles:
    admin           everything, every organization
    project_member  read and write IPAM and VPC objects of its projects
    project_reader  read only, in its projects
    product         a service (e.g. Instances): reads IPs and Private Networks of every
                    project, books IPs (zonal ones: only products and admins), and changes
                    only the IPs it booked or that sit on resources of its `resource_types`
                    (the one table of who may do what: `allocator.access.RULES`)

Outside its projects a key sees nothing: objects of other projects answer 404
exactly like absent ones, and lists leave them out.

The bootstrap admin (`IPAM_ADMIN_SECRET_KEY`) is held in memory only; every
other key is looked up in etcd on each request (one read; in the etcd cluster of the
request's region, `gateway.context`), so a revocation
takes effect on every node at once. A record in etcd counts only when it is signed
with this node's credential signing key (`allocator.credentials`, configured in
`gateway.config`): a record written by someone who could write etcd but lacks the key
(forged, or changed after signing) answers 401 `not_found`, exactly like an unknown key,
and is logged once.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from allocator.contract import (
    ADMIN,
    OPERATE,
    PROJECT_MEMBER,
    PROJECT_READER,
    WRITE_NETWORKS,
    ApiKey,
    Caller,
    Credentials,
    access_key_for_secret,
    secret_hash,
)

from .errors import denied_authentication
from .models.fields import as_uuid

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/metrics"})
TOKEN_HEADER = "X-Auth-Token"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request.

    `credential`: the etcd key of its API key, guarded by the changes it makes (None
    for the bootstrap admin, which lives in configuration, not in etcd).
    """

    key: ApiKey
    credential: str | None = None

    @property
    def access_key(self) -> str:
        return self.key.access_key

    @property
    def role(self) -> str:
        return self.key.role

    def caller(self, region: str | None = None) -> Caller:
        """Who acts, for the allocator's rules (`allocator.access`): role, projects,
        a product's resource types, the key to guard changes with."""
        return Caller(role=self.key.role, projects=frozenset(self.key.project_ids),
                      product_types=frozenset(self.key.resource_types), region=region,
                      credential=self.credential, access_key=self.key.access_key)

    @property
    def visible_projects(self) -> frozenset[str] | None:
        """The projects this key may see; None: all of them."""
        return self.caller().visible_projects

    @property
    def organization_claim(self) -> str | None:
        """The organization this key names for its projects: a project key's own (None for
        admin and product keys, whose organization says nothing of a project's).

        Only a claim: every object takes its project's organization, decided by the
        allocator (`allocator.organizations`), whoever creates it. It travels with a
        booking so that its idempotency digest stays what it was before.
        """
        if self.key.role in (PROJECT_MEMBER, PROJECT_READER):
            return self.key.organization_id
        return None

    # -- the rules of allocator.access, asked before a route reads what it needs --------

    def check_visible(self, resource: str, resource_id: str, project_id: str) -> None:
        """404 (never 403) for an object of a project this key cannot see."""
        self.caller().require_visible(resource, resource_id, project_id)

    def check_write(self, resource: str, project_id: str | None) -> None:
        """403 unless this key may change VPC-side `resource` objects of `project_id`."""
        self.caller().require(WRITE_NETWORKS, resource, project_id)

    def check_admin(self, resource: str) -> None:
        """403 unless this key may operate the service (API keys, zonal pools)."""
        self.caller().require(OPERATE, resource)

    def default_project(self) -> str | None:
        """The project implied when a request names none: the key's only project."""
        if len(self.key.project_ids) == 1:
            return self.key.project_ids[0]
        return None


class Authenticator:
    """Turns an X-Auth-Token into a Principal, or a 401."""

    def __init__(self, credentials: Credentials, admin_secret_key: str | None = None) -> None:
        self.credentials = credentials
        self._admin_hash = secret_hash(admin_secret_key) if admin_secret_key else None
        self._admin_key = ApiKey(
            access_key=access_key_for_secret(admin_secret_key), role=ADMIN,
            description="bootstrap admin (IPAM_ADMIN_SECRET_KEY)", created_at="",
        ) if admin_secret_key else None

    async def authenticate(self, token: str | None, guarded: bool = False) -> Principal:
        """The caller of `token`, or a 401.

        `guarded`: the request only makes changes that carry the key's guard, so this
        node's cache may answer instead of an etcd read (see allocator.credentials).
        """
        if not token:
            raise denied_authentication("invalid_argument",
                                        f"the {TOKEN_HEADER} header is required")
        secret = as_uuid(token.strip())
        if secret is None:
            raise denied_authentication("invalid_argument",
                                        f"the {TOKEN_HEADER} header must be a secret key (UUID)")
        if self._admin_hash and hmac.compare_digest(secret_hash(secret), self._admin_hash):
            assert self._admin_key is not None
            return Principal(self._admin_key)
        key = self.credentials.cached(secret) if guarded else None
        if key is None:
            key = await self.credentials.lookup(secret)
        if key is None:
            raise denied_authentication("not_found", "authentication is denied")
        if key.is_expired():
            raise denied_authentication("expired", "the API key has expired")
        return Principal(key, self.credentials.guard(secret))


AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
# The authenticator of the request's cluster, set before this middleware runs
# (`gateway.context.cluster_middleware`).
REQUEST_AUTHENTICATOR = web.RequestKey("authenticator", Authenticator)
PRINCIPAL_KEY = web.RequestKey("principal", Principal)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate every request but the public ones; the principal goes in request."""
    if request.path not in PUBLIC_PATHS and not is_page(request.match_info.handler):
        # The keys of the request's region's cluster: another region's outage never
        # stops it (every cluster holds every key, `routes_admin`).
        authenticator = request[REQUEST_AUTHENTICATOR]
        guarded = getattr(request.match_info.handler, GUARDED, False)
        request[PRINCIPAL_KEY] = await authenticator.authenticate(
            request.headers.get(TOKEN_HEADER), guarded)
    return await handler(request)


GUARDED = "ipam_guarded_change"


def guarded_change(handler: Handler) -> Handler:
    """Mark a route whose every etcd change carries the caller's key as a guard.

    Such routes authenticate from this node's cache; a key revoked elsewhere still
    stops them, in the transaction itself.
    """
    setattr(handler, GUARDED, True)
    return handler


PAGE = "ipam_page"


def page(handler: Handler) -> Handler:
    """Mark a route that serves a person's browser, not an API client (`gateway.docs`).

    A browser sends no X-Auth-Token, so a page is public; it is no operation of the
    API, so the OpenAPI document leaves it out.
    """
    setattr(handler, PAGE, True)
    return handler


def is_page(handler: object) -> bool:
    """Whether a route's handler was marked with `page`."""
    return bool(getattr(handler, PAGE, False))


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL_KEY]
