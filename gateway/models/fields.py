"""The value types the wire models share, and their three base classes.

A type here is both a check and its documentation: each carries the JSON Schema
the OpenAPI document shows, and that schema admits exactly what the check admits.
Where a rule cannot be written in JSON Schema (a CIDR's host bits, a time in the
future), the type names a custom `format` whose meaning its description gives,
and the check is left to the allocator, which makes it today.

Text is checked here, where the 400 can name the field: free text (names, tags,
descriptions) holds no control, format or separator character but the space and no
space at either end (`_text`); an address or a CIDR is accepted only in its canonical
text, which the allocator's parsers would otherwise quietly read past (`10.1.0.0/016`,
a trailing newline, `%eth0`).

Two formats are filled in per node by `gateway.openapi`: `region` and `zone`
become the enumerations of what the node serves.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, ClassVar, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    StringConstraints,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from allocator.contract import MAX_PAGE_SIZE, canonical_uuid


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
    """A JSON answer: every field is always sent, and nothing else.

    `_etag`: the version of the object it shows, sent as its ETag (None: none);
    `versioned`: whether the model's answers carry one (the API document says so)."""

    model_config = ConfigDict(extra="forbid")
    versioned: ClassVar[bool] = False
    _etag: str | None = PrivateAttr(default=None)

    def versioned_as(self, etag: str | None) -> Self:
        """This answer, sent with `etag` (gateway.etags makes them)."""
        self._etag = etag
        return self


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
    return canonical_uuid(value)


def _uuid(value: str) -> str:
    canonical = as_uuid(value)
    if canonical is None:
        raise PydanticCustomError("uuid_parsing", "must be a UUID")
    return canonical


def _printable(value: Any) -> Any:
    # The allocator refuses the same in tags (str.isprintable); checked here so the 400
    # names the field where it stands. A JSON "\ud800" decodes to a lone surrogate, of
    # category Cs: refused with the controls, before pydantic's own (vaguer) refusal.
    if isinstance(value, str) and not value.isprintable():
        at, char = next((i, c) for i, c in enumerate(value) if not c.isprintable())
        raise PydanticCustomError(
            "string_format", "must hold no control, format or separator character but the "
                             "space: U+{code} at index {at}", {"code": f"{ord(char):04X}", "at": at})
    return value


def _text(value: Any) -> Any:
    """Free text as it is stored and shown back: printable, and no space at either end
    (two names that differ by a trailing space look the same in every listing)."""
    value = _printable(value)
    if isinstance(value, str) and value != value.strip(" "):
        raise PydanticCustomError("string_format", "must not start or end with a space")
    return value


TEXT_RULE = ("printable (no control, format or separator character but the space), "
             "no space at either end")


def _text_schema(min_length: int, max_length: int) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "minLength": min_length,
                           "maxLength": max_length, "format": "text",
                           "description": TEXT_RULE})


def _shown(value: str) -> str:
    """`value` quoted for a help message: ASCII only (no lone surrogate in the answer),
    cut short."""
    return ascii(value if len(value) <= 64 else value[:64] + "...")


def _canonical_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    # ipaddress already refuses leading zeros in IPv4 octets, short or hexadecimal forms
    # and non-ASCII digits; it accepts an IPv6 zone index, which names an interface of
    # one host and has no place in an API.
    if any(c.isspace() for c in text):
        raise PydanticCustomError("address_format", "{value} must hold no whitespace",
                                  {"value": _shown(text)})
    if "%" in text:
        raise PydanticCustomError("address_format", "{value} must carry no zone index (%...)",
                                  {"value": _shown(text)})
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise PydanticCustomError(
            "address_format", "{value} is not an IP address: IPv4 as four decimal numbers "
                              "without leading zeros, IPv6 as RFC 4291 writes it",
            {"value": _shown(text)}) from None


def _address(value: Any) -> Any:
    if isinstance(value, str):
        _canonical_address(value)
    return value


_PREFIX_LENGTH = re.compile(r"0|[1-9][0-9]{0,2}")  # ASCII digits, no sign, no leading zero


def _cidr(value: Any) -> Any:
    # The text only: host bits, sizes and ranges are the allocator's (or the model's) rules.
    if isinstance(value, str):
        address, slash, length = value.partition("/")
        if not slash:
            raise PydanticCustomError("cidr_format", "{value} has no prefix length",
                                      {"value": _shown(value)})
        if any(c.isspace() for c in value):
            raise PydanticCustomError("cidr_format", "{value} must hold no whitespace",
                                      {"value": _shown(value)})
        parsed = _canonical_address(address)
        if not _PREFIX_LENGTH.fullmatch(length) or int(length) > parsed.max_prefixlen:
            raise PydanticCustomError(
                "cidr_format", "{value}: the prefix length must be a decimal number without "
                               "leading zeros, at most {most}",
                {"value": _shown(value), "most": parsed.max_prefixlen})
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

Printable = Annotated[str, StringConstraints(min_length=1), BeforeValidator(_printable),
                      WithJsonSchema({"type": "string", "minLength": 1, "format": "printable",
                                      "description": "printable: no control, format or "
                                                     "separator character but the space"})]
"""A free-text filter: matched as a part of what is stored, so spaces at its ends count."""

# Every free-text field that is stored is one of these: one rule, `_text`.
Name = Annotated[str, StringConstraints(min_length=1, max_length=255), BeforeValidator(_text),
                 _text_schema(1, 255)]

ResourceName = Annotated[str, StringConstraints(max_length=255), BeforeValidator(_text),
                         _text_schema(0, 255)]
"""A resource's name: the empty one is no name."""

Description = Annotated[str, StringConstraints(max_length=255), BeforeValidator(_text),
                        _text_schema(0, 255)]

TAG_MAX = 128
TAGS_MAX = 64
Tag = Annotated[str, StringConstraints(min_length=1, max_length=TAG_MAX), BeforeValidator(_text),
                _text_schema(1, TAG_MAX)]
Tags = Annotated[list[Tag], Field(max_length=TAGS_MAX)]

Hostname = Annotated[str, StringConstraints(min_length=1, max_length=253), BeforeValidator(_text),
                     WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 253,
                                     "format": "hostname",
                                     "description": "a hostname (RFC 1123), a final dot "
                                                    "allowed"})]
"""A reverse DNS name: free text refused here, the hostname grammar by the allocator."""

# A MAC address, its octets separated by ':' or by '-', not both.
MAC_PATTERN = r"^\s*([0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}|[0-9A-Fa-f]{2}(-[0-9A-Fa-f]{2}){5})\s*$"
Mac = Annotated[str, StringConstraints(pattern=MAC_PATTERN)]
# One a resource is newly attached with: a NIC's own, unicast (the low bit of the first
# octet clear). A MAC naming a resource as it is attached (detach, move from, filters)
# is any MAC: an IP attached before this rule must stay detachable.
NIC_MAC_PATTERN = (r"^\s*([0-9A-Fa-f][02468aceACE](:[0-9A-Fa-f]{2}){5}"
                   r"|[0-9A-Fa-f][02468aceACE](-[0-9A-Fa-f]{2}){5})\s*$")
NicMac = Annotated[str, StringConstraints(pattern=NIC_MAC_PATTERN)]

RESOURCE_TYPE_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"

Zone = Annotated[str, StringConstraints(min_length=1, max_length=32),
                 WithJsonSchema({"type": "string", "format": "zone"})]
"""A zone of the served region: the OpenAPI document enumerates them."""

Region = Annotated[str, WithJsonSchema({"type": "string", "format": "region"})]
"""The served region: the OpenAPI document enumerates it."""

IpAddress = Annotated[str, StringConstraints(max_length=64), BeforeValidator(_address),
                      WithJsonSchema({"anyOf": [{"type": "string", "format": "ipv4"},
                                                {"type": "string", "format": "ipv6"}]})]
"""An address as written canonically: no whitespace, no leading zero, no zone index."""

CANONICAL = ("written canonically: no whitespace, no leading zero in an IPv4 octet or the "
             "prefix length, no IPv6 zone index")

PrivateCidr = Annotated[str, BeforeValidator(_cidr), WithJsonSchema({
    "type": "string", "format": "private-cidr",
    "description": "a private CIDR (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 or "
                   "fc00::/7), /16 to /29 for IPv4, /48 to /125 for IPv6, host bits zero, "
                   + CANONICAL})]

Cidr = Annotated[str, StringConstraints(min_length=1, max_length=64), BeforeValidator(_cidr),
                 WithJsonSchema({
                     "type": "string", "format": "cidr", "minLength": 1, "maxLength": 64,
                     "description": "a CIDR, /16 to /29 for IPv4, /48 to /125 for IPv6, host "
                                    "bits zero, " + CANONICAL})]

Page = Annotated[int, Field(ge=1, le=1_000_000)]
PageSize = Annotated[int, Field(ge=0, le=MAX_PAGE_SIZE,
                                description="0, the SDK's unset, means the default: 50")]


class RegionPath(Path):
    """Every regional route starts with `/{region}`: the node answers 404 for another."""

    region: Region
