"""Scaleway's error format, and the mechanical mapping of allocator errors onto it.

Every answer of status 400 or more is a JSON object `{"type", "message", ...}`
as Scaleway writes it, because the SDK calls `res.json()` on every error:

    400 invalid_arguments     details: [{argument_name, reason, help_message}]
    401 denied_authentication method: api_key, reason: not_found|invalid_argument|expired
    403 permissions_denied    details: [{action, resource}]
    403 quotas_exceeded       details: [{resource, quota, current}] (a create over quota)
    404 not_found             resource, resource_id
    405 method_not_allowed    with the `Allow` header listing the path's methods
    409 already_exists        resource, resource_id (an address booked already)
    409 out_of_stock          resource: ip, source_id (a pool with no free address left)
    409 conflict              concurrent changes kept winning; retry
    412 precondition_failed   precondition (resource_still_in_use, ...)
    408 invalid_request       the body did not arrive within --header-timeout
    413 request_entity_too_large
    501 not_implemented       a call of Scaleway's VPC v2 API this gateway does not
                              serve (routes, ACL rules, connectors, ...)
    503 service_unavailable   etcd unreachable; for an unknown outcome (with a
                              help_message), retry with the same Idempotency-Key
    503 service_unavailable   "the datastore is full: ...": etcd's storage quota is full
                              (its NOSPACE alarm); an IP change was read back and did not
                              apply (other changes: the one that filled the quota may
                              have), and changes stay refused until an operator frees
                              space (docs/operations.md); reads work

Each body is a model of `gateway.models.errors`, so the OpenAPI document shows
exactly what is sent. A body never carries a stack trace: anything unexpected is logged here and
answered as a bare 500 `internal_error`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from allocator.contract import errors as e

from .models import errors as m

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The message of every change refused by a full datastore: clients tell it from the other
# 503s by its start, "the datastore is full" (docs/operations.md, "Client retries").
STORAGE_FULL = ("the datastore is full: changes are refused until an operator frees space; "
                "reads still work")


class ApiError(Exception):
    """An HTTP error answer: its status and its body (a model of `models.errors`)."""

    def __init__(self, status: int, body: BaseModel, headers: dict[str, str] | None = None
                 ) -> None:
        super().__init__(getattr(body, "message", ""))
        self.status = status
        self.body = body
        self.headers = headers or {}

    def response(self) -> web.Response:
        # exclude_none: an optional field of an error body is absent, never null
        return web.json_response(self.body.model_dump(mode="json", exclude_none=True),
                                 status=self.status, headers=self.headers)


def invalid_arguments(problems: Iterable[e.ArgumentProblem]) -> ApiError:
    """400 with one detail per rejected argument."""
    details = [m.ArgumentDetail(argument_name=p.argument_name, reason=p.reason,  # type: ignore[arg-type]
                                help_message=p.help_message) for p in problems]
    return ApiError(400, m.InvalidArguments(details=details))


def invalid_argument(argument: str, help_message: str, reason: str = "constraint") -> ApiError:
    """400 for one argument."""
    return invalid_arguments([e.ArgumentProblem(argument, reason, help_message)])


def denied_authentication(reason: str, message: str) -> ApiError:
    """401: the X-Auth-Token is missing, malformed, unknown, revoked or expired."""
    return ApiError(401, m.DeniedAuthentication(message=message, reason=reason))  # type: ignore[arg-type]


def permissions_denied(action: str, resource: str, message: str | None = None) -> ApiError:
    """403: the key is valid but its role does not allow `action` on `resource`."""
    detail = m.PermissionDetail(action=action, resource=resource)
    return ApiError(403, m.PermissionsDenied(details=[detail], **(
        {"message": message} if message else {})))


def not_found(resource: str, resource_id: str, message: str | None = None) -> ApiError:
    """404 naming the object, in the same words whether it is absent or invisible."""
    return ApiError(404, m.NotFound(resource=resource, resource_id=resource_id, **(
        {"message": message} if message else {})))


# Calls of Scaleway's VPC v2 API beyond VPCs, Private Networks and subnets (the SDK's
# `VpcV2API` has them): not served here, and said so, not answered as a missing object.
_UNSERVED = re.compile(
    r"/vpc/v2/regions/[^/]+/(?:(routes|ingress-rules|vpc-connectors"
    r"|object-storage-private-access)(?:/.*)?|vpcs/[^/]+/(acl-rules"
    r"|enable-custom-routes-propagation))")


def route_not_found(path: str) -> ApiError:
    unserved = _UNSERVED.fullmatch(path)
    if unserved:
        return ApiError(501, m.NotImplementedCall(message=(
            f"this gateway does not serve Scaleway's VPC {unserved[1] or unserved[2]} calls: "
            "it serves IPAM v1 and the VPC v2 calls of VPCs, Private Networks and "
            "subnets")))
    return not_found("route", path, f"no route for {path}")


def method_not_allowed(request: web.Request, allowed: Iterable[str]) -> ApiError:
    """405, with the `Allow` header HTTP requires (RFC 9110)."""
    return ApiError(405, m.MethodNotAllowed(
        message=f"{request.method} is not allowed on {request.path}"),
        {"Allow": ", ".join(sorted(allowed))})


# Each allocator error class and its answer; a subclass not listed takes its nearest
# listed base's (CredentialRevoked before PermissionDenied; OutcomeUnknown and StorageFull
# before StoreError).
_ANSWERS: dict[type[e.IPAMError], Callable[[Any], ApiError]] = {
    e.InvalidArgument: lambda err: invalid_arguments(err.problems),
    e.NotFound: lambda err: not_found(err.resource, err.resource_id),
    e.AlreadyExists: lambda err: ApiError(409, m.AlreadyExists(
        message=err.message, resource=err.resource, resource_id=err.resource_id)),
    e.PoolExhausted: lambda err: ApiError(409, m.OutOfStock(message=err.message,
                                                            source_id=err.source_id)),
    e.PreconditionFailed: lambda err: ApiError(412, m.PreconditionFailed(
        message=err.message, precondition=err.precondition, help_message=err.message)),
    e.CredentialRevoked: lambda err: denied_authentication("not_found",
                                                           "authentication is denied"),
    e.PermissionDenied: lambda err: permissions_denied(err.action, err.resource, err.message),
    e.QuotaExceeded: lambda err: ApiError(403, m.QuotasExceeded(
        message=err.message, details=[m.QuotaDetail(resource=err.resource, quota=err.quota,
                                                     current=err.current)])),
    e.Conflict: lambda err: ApiError(409, m.Conflict(message=err.message)),
    e.OutcomeUnknown: lambda err: ApiError(503, m.ServiceUnavailable(
        message=err.message, help_message="the change may have been applied: retry with "
                                          "the same Idempotency-Key to find out")),
    # 503, as for an unreachable etcd: the service cannot take
    # changes now. The message, and no help_message, tell a client it is no unknown
    # outcome and no blip: retrying soon is useless until an operator frees space.
    e.StorageFull: lambda err: ApiError(503, m.ServiceUnavailable(message=STORAGE_FULL)),
    e.StoreError: lambda err: ApiError(503, m.ServiceUnavailable(
        message="the datastore is unavailable, retry later")),
}


def from_ipam_error(err: e.IPAMError) -> ApiError:
    """The HTTP answer for an allocator error, chosen by its class alone."""
    for cls in type(err).__mro__:
        answer = _ANSWERS.get(cls)
        if answer is not None:
            return answer(err)
    log.error("unmapped allocator error %s: %s", type(err).__name__, err.message)
    return ApiError(500, m.InternalError())


def _from_http_exception(exc: web.HTTPException, request: web.Request) -> ApiError:
    status = exc.status
    if status == 404:
        return route_not_found(request.path)
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return method_not_allowed(request, exc.allowed_methods)
    if status == 413:
        return ApiError(413, m.RequestEntityTooLarge())
    if status >= 400:
        return ApiError(status, m.InvalidRequest(message=exc.reason or "error"))
    raise exc  # redirects and successes pass through


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure of a handler into a Scaleway error body."""
    try:
        return await handler(request)
    except ApiError as err:
        return err.response()
    except e.IPAMError as err:
        return from_ipam_error(err).response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http_exception(exc, request).response()
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return ApiError(500, m.InternalError()).response()
