"""Scaleway's error bodies, one model per `type` (see `gateway.errors` for when each is sent).

Every body has `type` and `message`; the SDK reads the rest by type.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import SkipJsonSchema


class ErrorBody(BaseModel):
    """What every error body holds."""

    model_config = ConfigDict(extra="forbid")

    message: str


class ArgumentDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    argument_name: str
    reason: Literal["unknown", "required", "format", "constraint"]
    help_message: str


class InvalidArguments(ErrorBody):
    """400: one detail per rejected argument."""

    type: Literal["invalid_arguments"] = "invalid_arguments"
    message: str = "invalid argument(s)"
    details: list[ArgumentDetail]


class DeniedAuthentication(ErrorBody):
    """401: the X-Auth-Token is missing, malformed, unknown, revoked or expired."""

    type: Literal["denied_authentication"] = "denied_authentication"
    method: Literal["api_key"] = "api_key"
    reason: Literal["not_found", "invalid_argument", "expired"]


class PermissionDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: str
    resource: str


class PermissionsDenied(ErrorBody):
    """403: the key is valid but its role does not allow the action."""

    type: Literal["permissions_denied"] = "permissions_denied"
    message: str = "insufficient permissions"
    details: list[PermissionDetail]


class QuotaDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resource: str
    quota: int
    current: int


class QuotasExceeded(ErrorBody):
    """403: the project (or Private Network) holds all its quota of a resource allows."""

    type: Literal["quotas_exceeded"] = "quotas_exceeded"
    message: str = "quota(s) exceeded for this resource"
    details: list[QuotaDetail]


class NotFound(ErrorBody):
    """404: the object (or region, or route) is absent or invisible to the caller."""

    type: Literal["not_found"] = "not_found"
    message: str = "resource is not found"
    resource: str
    resource_id: str


class MethodNotAllowed(ErrorBody):
    """405: the path exists, the method does not; `Allow` lists those that do."""

    type: Literal["method_not_allowed"] = "method_not_allowed"


class AlreadyExists(ErrorBody):
    """409: an address (or a MAC, a subnet, a pool) is held already."""

    type: Literal["already_exists"] = "already_exists"
    resource: str
    resource_id: str


class OutOfStock(ErrorBody):
    """409: the pool has no free address left."""

    type: Literal["out_of_stock"] = "out_of_stock"
    resource: Literal["ip"] = "ip"
    source_id: str


class Conflict(ErrorBody):
    """409: concurrent changes kept winning; retry."""

    type: Literal["conflict"] = "conflict"


class PreconditionFailed(ErrorBody):
    """412: the object's state forbids the change (resource_still_in_use, ...)."""

    type: Literal["precondition_failed"] = "precondition_failed"
    precondition: str
    help_message: str


class RequestEntityTooLarge(ErrorBody):
    """413: the body is larger than the node accepts."""

    type: Literal["request_entity_too_large"] = "request_entity_too_large"
    message: str = "the request body is too large"


class ServiceUnavailable(ErrorBody):
    """503: etcd is unreachable; with a help_message, the outcome of a change is unknown."""

    type: Literal["service_unavailable"] = "service_unavailable"
    # Sent only when the outcome is unknown: absent, never null.
    help_message: str | SkipJsonSchema[None] = None


class NotImplementedCall(ErrorBody):
    """501: a call of Scaleway's API that this gateway does not serve (VPC routes, ...)."""

    type: Literal["not_implemented"] = "not_implemented"


class InvalidRequest(ErrorBody):
    """Any other refusal by the HTTP layer itself."""

    type: Literal["invalid_request"] = "invalid_request"


class InternalError(ErrorBody):
    """500: a bug; logged, never detailed."""

    type: Literal["internal_error"] = "internal_error"
    message: str = "internal error"
