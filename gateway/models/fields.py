"""The value types the wire models share, and their three base classes.

A type here is both a check and its documentation: each carries the JSON Schema
the OpenAPI document shows, and that schema admits exactly what the check admits.
Where a rule cannot be written in JSON Schema (a CIDR's host bits, a time in the
future), the type names a custom `format` whose meaning its description gives,
and the check is left to the allocator, which makes it today.

Two formats are filled in per node by `gateway.openapi`: `region` and `zone`
become the enumerations of what the node serves.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from allocator.contract import MAX_PAGE_SIZE


class Body(BaseModel):
    """A JSON request body: types exact (no "yes" for true), unknown fields refused."""

    model_config = ConfigDict(strict=True, extra="forbid")


class Query(BaseModel):
    """Query parameters: read from strings; parameters nobody asked for are ignored."""

    model_config = ConfigDict(extra="ignore")


class Path(BaseModel):
    """The parameters of a URL path."""

    model_config = ConfigDict(extra="ignore")


class Reply(BaseModel):
    """A JSON answer: every field is always sent, and nothing else."""

    model_config = ConfigDict(extra="forbid")


def not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A field's JSON Schema without its `null` alternative (and its null default)."""
    options = schema.get("anyOf")
    if options is None:
        return schema
    kept = [o for o in options if o.get("type") != "null"]
    rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
    return {**kept[0], **rest} if len(kept) == 1 else {**rest, "anyOf": kept}


def shape(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """One alternative shape of an object."""
    return {"type": "object", "properties": properties, "required": required,
            "additionalProperties": False}


def project_required(schema: dict[str, Any]) -> None:
    """json_schema_extra of a creation: `project_id` is required in the document.

    A key of exactly one project may leave it out (its project is meant); every
    other key must send it, so that is what the document says.
    """
    schema["properties"]["project_id"] = {
        **not_null(schema["properties"]["project_id"]),
        "description": "required, but for a key of exactly one project, which it defaults to"}
    schema["required"] = [*schema.get("required", []), "project_id"]


def as_uuid(value: Any) -> str | None:
    """`value` as a canonical lowercase UUID, or None."""
    if isinstance(value, str) and len(value) == 36:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            return None
    return None


def _uuid(value: str) -> str:
    canonical = as_uuid(value)
    if canonical is None:
        raise PydanticCustomError("uuid_parsing", "must be a UUID")
    return canonical


def _printable(value: str) -> str:
    # The allocator refuses the same (str.isprintable); checked here so the 400 names
    # the field where it stands.
    if not value.isprintable():
        raise PydanticCustomError("string_format", "must hold no control characters")
    return value


_TRUE = {"true", "1"}
_FALSE = {"false", "0"}


def _flag(value: Any) -> Any:
    """The SDK sends `True`/`False`; curl users send `true`, `1`, ..."""
    if isinstance(value, str):
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise PydanticCustomError("bool_parsing", "must be true or false")
    return value


Uuid = Annotated[str, Strict(), AfterValidator(_uuid),
                 WithJsonSchema({"type": "string", "format": "uuid"})]

Flag = Annotated[bool, BeforeValidator(_flag)]
"""A boolean query parameter."""

Timestamp = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]

Printable = Annotated[str, StringConstraints(min_length=1), AfterValidator(_printable),
                      WithJsonSchema({"type": "string", "minLength": 1, "format": "printable",
                                      "description": "printable: no control, format or "
                                                     "separator character but the space"})]

Name = Annotated[str, StringConstraints(min_length=1, max_length=255)]

TAG_MAX = 128
TAGS_MAX = 64
Tag = Annotated[str, StringConstraints(min_length=1, max_length=TAG_MAX),
                AfterValidator(_printable),
                WithJsonSchema({"type": "string", "minLength": 1, "maxLength": TAG_MAX,
                                "format": "printable",
                                "description": "printable: no control, format or "
                                               "separator character but the space"})]
Tags = Annotated[list[Tag], Field(max_length=TAGS_MAX)]

MAC_PATTERN = r"^\s*[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}\s*$"
Mac = Annotated[str, StringConstraints(pattern=MAC_PATTERN)]

RESOURCE_TYPE_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"

Zone = Annotated[str, StringConstraints(min_length=1, max_length=32),
                 WithJsonSchema({"type": "string", "format": "zone"})]
"""A zone of the served region: the OpenAPI document enumerates them."""

Region = Annotated[str, WithJsonSchema({"type": "string", "format": "region"})]
"""The served region: the OpenAPI document enumerates it."""

IpAddress = Annotated[str, StringConstraints(max_length=64), WithJsonSchema(
    {"anyOf": [{"type": "string", "format": "ipv4"}, {"type": "string", "format": "ipv6"}]})]

PrivateCidr = Annotated[str, WithJsonSchema({
    "type": "string", "format": "private-cidr",
    "description": "a private CIDR (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 or "
                   "fc00::/7), /16 to /29 for IPv4, /48 to /125 for IPv6, host bits zero"})]

Cidr = Annotated[str, StringConstraints(min_length=1, max_length=64), WithJsonSchema({
    "type": "string", "format": "cidr", "minLength": 1, "maxLength": 64,
    "description": "a CIDR, /16 to /29 for IPv4, /48 to /125 for IPv6, host bits zero"})]

Page = Annotated[int, Field(ge=1, le=1_000_000)]
PageSize = Annotated[int, Field(ge=0, le=MAX_PAGE_SIZE,
                                description="0, the SDK's unset, means the default: 50")]


class RegionPath(Path):
    """Every regional route starts with `/{region}`: the node answers 404 for another."""

    region: Region
