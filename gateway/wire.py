"""JSON in and out, in Scaleway's field shapes.

Reading: `read_body` gives a `Fields` reader over the request's JSON object;
each typed getter records a problem instead of raising, so one 400 lists every
bad argument at once. `finish()` rejects fields nobody asked for (reason
`unknown`), as Scaleway does. `QueryFields` reads query strings the way the SDK
writes them: repeated keys for lists, `True`/`False` for booleans.

Writing: `ip_json`, `vpc_json`, `private_network_json`, `subnet_json` give
exactly the fields the SDK's unmarshallers read (`scaleway/ipam/v1` and
`scaleway/vpc/v2` `marshalling.py`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from allocator.contract import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, ArgumentProblem

from .errors import invalid_argument, invalid_arguments

_MISSING = object()


class Fields:
    """A typed, problem-collecting reader of one JSON object (a body or a nested object)."""

    def __init__(self, data: Mapping[str, Any], prefix: str = "",
                 problems: list[ArgumentProblem] | None = None) -> None:
        self.data = data
        self.prefix = prefix
        self.problems: list[ArgumentProblem] = [] if problems is None else problems
        self.seen: set[str] = set()
        self.children: list[Fields] = []

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def problem(self, key: str, reason: str, help_message: str) -> None:
        self.problems.append(ArgumentProblem(self.name(key), reason, help_message))

    def _get(self, key: str, required: bool) -> Any:
        self.seen.add(key)
        value = self.data.get(key, _MISSING)
        if value is _MISSING or value is None:
            if required:
                self.problem(key, "required", "this field is required")
            return _MISSING
        return value

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def accept(self, *keys: str) -> None:
        """Fields the SDK sends that this service has no use for: accepted, ignored."""
        self.seen.update(keys)

    def text(self, key: str, *, required: bool = False, max_length: int = 255,
            allow_empty: bool = False) -> str | None:
        value = self._get(key, required)
        if value is _MISSING:
            return None
        if not isinstance(value, str):
            self.problem(key, "format", "must be a string")
            return None
        if not value and not allow_empty:
            self.problem(key, "constraint", "must not be empty")
            return None
        if len(value) > max_length:
            self.problem(key, "constraint", f"must be at most {max_length} characters")
            return None
        return value

    def uuid(self, key: str, *, required: bool = False) -> str | None:
        value = self._get(key, required)
        if value is _MISSING:
            return None
        canonical = as_uuid(value)
        if canonical is None:
            self.problem(key, "format", "must be a UUID")
        return canonical

    def flag(self, key: str, *, required: bool = False) -> bool | None:
        value = self._get(key, required)
        if value is _MISSING:
            return None
        if not isinstance(value, bool):
            self.problem(key, "format", "must be a boolean")
            return None
        return value

    def text_list(self, key: str, *, required: bool = False) -> list[str] | None:
        value = self._get(key, required)
        if value is _MISSING:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(key, "format", "must be a list of strings")
            return None
        return value

    def uuid_list(self, key: str, *, required: bool = False) -> list[str] | None:
        values = self.text_list(key, required=required)
        if values is None:
            return None
        out = []
        for v in values:
            canonical = as_uuid(v)
            if canonical is None:
                self.problem(key, "format", f"{v!r} is not a UUID")
                return None
            out.append(canonical)
        return out

    def obj(self, key: str, *, required: bool = False) -> Fields | None:
        value = self._get(key, required)
        if value is _MISSING:
            return None
        if not isinstance(value, dict):
            self.problem(key, "format", "must be an object")
            return None
        child = Fields(value, f"{self.name(key)}.", self.problems)
        self.children.append(child)
        return child

    def obj_list(self, key: str) -> list[Fields] | None:
        value = self._get(key, False)
        if value is _MISSING:
            return None
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.problem(key, "format", "must be a list of objects")
            return None
        children = [Fields(v, f"{self.name(key)}.", self.problems) for v in value]
        self.children.extend(children)
        return children

    def _unknown(self) -> None:
        for key in self.data:
            if key not in self.seen:
                self.problem(key, "unknown", "unknown field")
        for child in self.children:
            child._unknown()

    def finish(self) -> None:
        """Raise one 400 listing every problem, unknown fields included."""
        self._unknown()
        if self.problems:
            raise invalid_arguments(self.problems)


async def read_body(request: web.Request, *, empty_ok: bool = False) -> Fields:
    """The request body as a JSON object; 400 when it is not one, 413 when too large."""
    raw = await request.read()  # raises 413 beyond client_max_size
    if not raw.strip():
        if empty_ok:
            return Fields({})
        raise invalid_argument("body", "a JSON object is required", "required")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise invalid_argument("body", "the body is not valid JSON", "format") from None
    if not isinstance(data, dict):
        raise invalid_argument("body", "the body must be a JSON object", "format")
    return Fields(data)


def as_uuid(value: Any) -> str | None:
    """`value` as a canonical lowercase UUID, or None."""
    if isinstance(value, str) and len(value) == 36:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            return None
    return None


def path_uuid(request: web.Request, key: str, argument: str) -> str:
    """A UUID taken from the URL path; 400 when malformed."""
    value = as_uuid(request.match_info[key])
    if value is None:
        raise invalid_argument(argument, "must be a UUID", "format")
    return value


_TRUE = {"true", "1"}
_FALSE = {"false", "0"}


class QueryFields:
    """A typed reader of the query string; unknown parameters are ignored."""

    def __init__(self, query: MultiMapping[str]) -> None:
        self.query = query
        self.problems: list[ArgumentProblem] = []

    def problem(self, key: str, reason: str, help_message: str) -> None:
        self.problems.append(ArgumentProblem(key, reason, help_message))

    def text(self, key: str) -> str | None:
        value = self.query.get(key)
        return value if value else None

    def uuid(self, key: str) -> str | None:
        value = self.query.get(key)
        if not value:
            return None
        canonical = as_uuid(value)
        if canonical is None:
            self.problem(key, "format", "must be a UUID")
        return canonical

    def flag(self, key: str) -> bool | None:
        value = self.query.get(key)
        if value is None or value == "":
            return None
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        self.problem(key, "format", "must be true or false")
        return None

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        value = self.query.get(key)
        if value is None or value == "":
            return default
        try:
            n = int(value)
        except ValueError:
            self.problem(key, "format", "must be an integer")
            return default
        if not lo <= n <= hi:
            self.problem(key, "constraint", f"must be between {lo} and {hi}")
            return default
        return n

    def repeated(self, key: str) -> list[str]:
        """A repeated parameter (`tags=a&tags=b`); a comma-separated value is split too."""
        out: list[str] = []
        for value in self.query.getall(key, []):
            out.extend(v for v in value.split(",") if v)
        return out

    def uuid_list(self, key: str) -> list[str]:
        out = []
        for v in self.repeated(key):
            canonical = as_uuid(v)
            if canonical is None:
                self.problem(key, "format", f"{v!r} is not a UUID")
            else:
                out.append(canonical)
        return out

    def choice(self, key: str, choices: Iterable[str], default: str) -> str:
        value = self.query.get(key)
        if not value:
            return default
        allowed = list(choices)
        if value not in allowed:
            self.problem(key, "constraint", f"must be one of {', '.join(allowed)}")
            return default
        return value

    def page(self) -> tuple[int, int]:
        """(page, page_size): page 1-based, page_size 1..100, 50 by default."""
        page = self.integer("page", 1, 1, 1_000_000)
        # The SDK sends page_size only when asked; 0 would mean "default" to it.
        size = self.integer("page_size", DEFAULT_PAGE_SIZE, 0, MAX_PAGE_SIZE) or DEFAULT_PAGE_SIZE
        return page, size

    def finish(self) -> None:
        if self.problems:
            raise invalid_arguments(self.problems)


def paginate(items: list[Any], page: int, page_size: int) -> list[Any]:
    start = (page - 1) * page_size
    return items[start:start + page_size]


# --- serialisers -----------------------------------------------------------------------


def _attr(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def ip_json(record: Any) -> dict[str, Any]:
    """An IP record as the SDK's `IP`."""
    resource = record.resource
    return {
        "id": record.id,
        "address": record.address,
        "project_id": record.project_id,
        "is_ipv6": record.is_ipv6,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "source": record.source,
        "resource": None if resource is None else {
            "type": resource.type, "id": resource.id,
            "mac_address": resource.mac_address, "name": resource.name},
        "tags": list(record.tags),
        "reverses": [{"hostname": r.hostname, "address": r.address} for r in record.reverses],
        "region": record.region,
        "zone": record.zone,
    }


_VPC_DEFAULTS: dict[str, Any] = {
    "tags": [], "is_default": False, "private_network_count": 0, "routing_enabled": True,
    "custom_routes_propagation_enabled": False, "transitivity_enabled": False,
    "object_storage_private_access_enabled": False, "created_at": None, "updated_at": None,
}
_VPC_FIELDS = ("id", "name", "organization_id", "project_id", "region", *_VPC_DEFAULTS)

_SUBNET_FIELDS = ("id", "subnet", "project_id", "private_network_id", "vpc_id", "region",
                  "created_at", "updated_at")

_PN_DEFAULTS: dict[str, Any] = {
    "tags": [], "dhcp_enabled": True, "default_route_propagation_enabled": False,
    "has_object_storage_private_access": False, "created_at": None, "updated_at": None,
}
_PN_FIELDS = ("id", "name", "organization_id", "project_id", "region", "vpc_id", *_PN_DEFAULTS)


def _object(obj: Any, fields: Iterable[str], defaults: Mapping[str, Any]) -> dict[str, Any]:
    data = obj.to_json() if hasattr(obj, "to_json") else dict(obj)
    out = {}
    for f in fields:
        value = data.get(f, defaults.get(f))
        out[f] = list(value) if isinstance(value, tuple) else value
    return out


def vpc_json(vpc: Any) -> dict[str, Any]:
    """A VPC as the SDK's `VPC`."""
    return _object(vpc, _VPC_FIELDS, _VPC_DEFAULTS)


def subnet_json(subnet: Any) -> dict[str, Any]:
    """A subnet as the SDK's `Subnet`."""
    return _object(subnet, _SUBNET_FIELDS, {})


def private_network_json(pn: Any) -> dict[str, Any]:
    """A Private Network as the SDK's `PrivateNetwork`, subnets included."""
    out = _object(pn, _PN_FIELDS, _PN_DEFAULTS)
    data = pn.to_json() if hasattr(pn, "to_json") else dict(pn)
    out["subnets"] = [subnet_json(s) for s in data.get("subnets") or []]
    return out


def sort_objects(items: list[Any], order_by: str) -> list[Any]:
    """Sort VPCs, Private Networks or subnets by `name_asc`, `created_at_desc`, ..."""
    field, _, direction = order_by.rpartition("_")
    reverse = direction == "desc"

    def key(obj: Any) -> tuple[str, str]:
        return (_attr(obj, field) or "", _attr(obj, "id") or "")

    return sorted(items, key=key, reverse=reverse)
