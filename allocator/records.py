"""IP records and what they hold: resources, reverses, source references.

Field names follow Scaleway's IPAM v1 model (the SDK's `scaleway/ipam/v1/types.py`),
so the gateway serialises a record without renaming anything.
"""

from __future__ import annotations

import ipaddress
import os
import re
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from .errors import InvalidArgument

CUSTOM = "custom"

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_RESOURCE_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_TAG_MAX = 128
_TAGS_MAX = 64
_REVERSES_MAX = 16


def now() -> str:
    """The current UTC time in RFC 3339 with microseconds, as stored in records."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def new_id() -> str:
    """A fresh object id: a random (version 4) UUID, formatted without building a
    `uuid.UUID` (every booking makes one)."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_CANONICAL_UUID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def canonical_uuid(value: Any) -> str | None:
    """`value` as a canonical lowercase UUID string, or None: what `str(uuid.UUID(v))`
    gives for a 36-character string, without building one for the usual 8-4-4-4-12 form
    (a request parses several)."""
    if not isinstance(value, str) or len(value) != 36:
        return None
    if _CANONICAL_UUID.fullmatch(value):
        return value.lower()
    try:  # the other spellings uuid.UUID reads: "urn:...", braces, hyphens elsewhere
        return str(uuid.UUID(value))
    except ValueError:
        return None


def check_uuid(value: Any, argument: str) -> str:
    """`value` as a canonical lowercase UUID string, or InvalidArgument."""
    canonical = canonical_uuid(value)
    if canonical is None:
        raise InvalidArgument(argument, f"{value!r} is not a UUID", "format")
    return canonical


def normalize_mac(value: Any, argument: str = "mac_address") -> str:
    """A MAC address as lowercase colon-separated octets, or InvalidArgument."""
    if not isinstance(value, str):
        raise InvalidArgument(argument, "must be a MAC address like 02:00:00:00:00:01", "format")
    if ":" in value and "-" in value:  # 02:00-00:00-00:01: a typo, not a spelling
        raise InvalidArgument(argument, f"{value!r} is not a MAC address", "format")
    mac = value.strip().lower().replace("-", ":")
    if not _MAC.match(mac):
        raise InvalidArgument(argument, f"{value!r} is not a MAC address", "format")
    return mac


def check_nic_mac(mac: str, argument: str = "resource.mac_address") -> None:
    """InvalidArgument unless `mac` (normalized) is a network interface's own: unicast. A
    group address (the low bit of the first octet: multicast, ff:ff:ff:ff:ff:ff) never
    sends a DHCP request. Checked where a MAC is newly attached only: one naming a
    resource as it is attached may be any (an IP attached before this rule)."""
    if int(mac[:2], 16) & 1:
        raise InvalidArgument(argument, f"{mac!r} is a group (multicast or broadcast) "
                                        "address, no network interface's")


def check_tags(tags: Any, argument: str = "tags") -> tuple[str, ...]:
    """Tags as a tuple of non-empty strings, order kept, duplicates dropped."""
    if tags is None:
        return ()
    if not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) for t in tags):
        raise InvalidArgument(argument, "must be a list of strings", "format")
    if len(tags) > _TAGS_MAX:
        raise InvalidArgument(argument, f"at most {_TAGS_MAX} tags")
    for t in tags:
        if not t or len(t) > _TAG_MAX:
            raise InvalidArgument(argument, f"each tag must be 1 to {_TAG_MAX} characters")
        if not t.isprintable():
            raise InvalidArgument(argument, "tags must not hold control characters", "format")
    return tuple(dict.fromkeys(tags))


@dataclass(frozen=True)
class Resource:
    """What an IP is attached to: a product resource (type + id) or a custom one."""

    type: str
    id: str
    mac_address: str | None = None
    name: str | None = None

    @classmethod
    def custom(cls, mac_address: str, name: str | None = None) -> Resource:
        """A custom resource, known by its MAC; its id is derived from the MAC."""
        mac = normalize_mac(mac_address, "resource.mac_address")
        return cls(CUSTOM, str(uuid.uuid5(uuid.NAMESPACE_OID, mac)), mac, _name(name))

    @classmethod
    def product(
        cls, type: str, id: str, mac_address: str | None = None, name: str | None = None
    ) -> Resource:
        """A resource managed by a product (instance_server, lb_server, ...)."""
        if not isinstance(type, str) or not _RESOURCE_TYPE.match(type) or type == CUSTOM:
            raise InvalidArgument("resource.type", f"{type!r} is not a product resource type")
        rid = check_uuid(id, "resource.id")
        mac = normalize_mac(mac_address, "resource.mac_address") if mac_address else None
        return cls(type, rid, mac, _name(name))

    def same_as(self, other: Resource) -> bool:
        """Whether `other` names this resource (by type and id, or by MAC for custom)."""
        if self.type == CUSTOM and other.type == CUSTOM:
            return self.mac_address == other.mac_address
        return self.type == other.type and self.id == other.id

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "id": self.id, "mac_address": self.mac_address,
                "name": self.name}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Resource | None:
        if not data:
            return None
        return cls(data["type"], data["id"], data.get("mac_address"), data.get("name"))


def _name(name: Any) -> str | None:
    if name is None or name == "":
        return None
    if not isinstance(name, str) or len(name) > 255:
        raise InvalidArgument("resource.name", "must be a string of at most 255 characters")
    return name


@dataclass(frozen=True)
class Reverse:
    """A reverse DNS entry of an IP."""

    hostname: str
    address: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"hostname": self.hostname, "address": self.address}


_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*"
                       r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.?$", re.IGNORECASE)


def check_reverses(reverses: Any, ip_address: str) -> tuple[Reverse, ...]:
    """Reverses as value objects; each hostname valid, each address the IP's own."""
    if not isinstance(reverses, (list, tuple)):
        raise InvalidArgument("reverses", "must be a list", "format")
    if len(reverses) > _REVERSES_MAX:
        raise InvalidArgument("reverses", f"at most {_REVERSES_MAX} reverses")
    bare = ip_address.split("/")[0]
    own = ipaddress.ip_address(bare)
    out = []
    for r in reverses:
        if not isinstance(r, dict) or not isinstance(r.get("hostname"), str):
            raise InvalidArgument("reverses", "each reverse needs a hostname", "format")
        if not _HOSTNAME.match(r["hostname"]):
            raise InvalidArgument("reverses.hostname", f"{r['hostname']!r} is not a hostname",
                                  "format")
        addr = r.get("address") or bare
        if not isinstance(addr, str):
            raise InvalidArgument("reverses.address", "must be a string", "format")
        if _parsed(addr.split("/")[0]) != own:  # any spelling of it: FD00::1, fd00:0::1
            raise InvalidArgument("reverses.address", f"must be the IP's own address {bare}")
        out.append(Reverse(r["hostname"], bare))
    return tuple(out)


def _parsed(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None


# The versions (IPRecord.revision) a conditional change accepts: HTTP's If-Match.
IfMatch = frozenset[int]


@dataclass(frozen=True)
class IPRecord:
    """One booked IP: its address never changes; everything else may."""

    id: str
    address: str  # with the source's prefix length: 172.16.4.3/22
    project_id: str
    is_ipv6: bool
    region: str
    source_id: str
    source_kind: str
    created_at: str
    updated_at: str
    organization_id: str | None = None
    zone: str | None = None
    vpc_id: str | None = None
    private_network_id: str | None = None
    resource: Resource | None = None
    attached_at: str | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)
    reverses: tuple[Reverse, ...] = field(default_factory=tuple)
    # The resource types of the product key that booked it, kept through every change;
    # empty when a member or an admin booked it, and in records written before it was.
    booked_by_product: tuple[str, ...] = field(default_factory=tuple)
    # When an unattached IP is released by itself (UTC, as stored; `expiry`); None: never.
    expires_at: str | None = None
    # The etcd mod revision of the record as read or written (0: not known): the IP's
    # version, sent as its ETag and compared by If-Match. Not stored in the record.
    revision: int = field(default=0, compare=False)

    @property
    def source(self) -> dict[str, Any]:
        """The Scaleway `Source` one-of: zonal, or the subnet it came from."""
        if self.source_kind == "zonal":
            return {"zonal": self.zone}
        return {"private_network_id": self.private_network_id, "subnet_id": self.source_id,
                "vpc_id": self.vpc_id}

    def with_changes(self, **changes: Any) -> IPRecord:
        """The record changed: a new version, whose revision etcd gives when it commits."""
        return replace(self, updated_at=now(), revision=0, **changes)

    def at(self, revision: int) -> IPRecord:
        """This record as etcd holds it at `revision` (its mod revision)."""
        return self._with(revision=revision)

    def with_address(self, address: str) -> IPRecord:
        """This record at `address` (a booking's, as it tries one)."""
        return self._with(address=address)

    def _with(self, **fields: Any) -> IPRecord:
        # `dataclasses.replace` without its checks and its call of __init__ (a booking
        # makes two copies, and replace was a twentieth of its CPU): the fields given are
        # ones __init__ would store as they are.
        copy = object.__new__(IPRecord)
        copy.__dict__.update(self.__dict__, **fields)
        return copy

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "address": self.address, "project_id": self.project_id,
            "organization_id": self.organization_id, "is_ipv6": self.is_ipv6,
            "region": self.region, "zone": self.zone, "source_id": self.source_id,
            "source_kind": self.source_kind, "vpc_id": self.vpc_id,
            "private_network_id": self.private_network_id,
            "created_at": self.created_at, "updated_at": self.updated_at,
            "attached_at": self.attached_at,
            "resource": self.resource.to_json() if self.resource else None,
            "tags": list(self.tags), "reverses": [r.to_json() for r in self.reverses],
            # Only when set: a record no product booked is stored as it always was.
            **({"booked_by_product": list(self.booked_by_product)}
               if self.booked_by_product else {}),
            **({"expires_at": self.expires_at} if self.expires_at else {}),
        }

    def stored(self) -> bytes:
        """The record as etcd keeps it (orjson: a booking's one big value, encoded in a
        fifth of the time `json.dumps` takes; any JSON reader reads it)."""
        return orjson.dumps(self.to_json())

    @classmethod
    def read(cls, value: bytes, revision: int = 0) -> IPRecord:
        """A record from the value etcd keeps (`stored`, or the `json.dumps` of older
        ones); `revision`: its mod revision, when known."""
        return cls.from_json(orjson.loads(value), revision)

    @classmethod
    def from_json(cls, d: dict[str, Any], revision: int = 0) -> IPRecord:
        """A record as stored; `revision`: the mod revision it was read at, when known."""
        return cls(
            id=d["id"], address=d["address"], project_id=d["project_id"],
            organization_id=d.get("organization_id"), is_ipv6=d["is_ipv6"],
            region=d["region"], zone=d.get("zone"), source_id=d["source_id"],
            source_kind=d["source_kind"], vpc_id=d.get("vpc_id"),
            private_network_id=d.get("private_network_id"), created_at=d["created_at"],
            updated_at=d["updated_at"], attached_at=d.get("attached_at"),
            resource=Resource.from_json(d.get("resource")), tags=tuple(d.get("tags") or ()),
            reverses=tuple(Reverse(r["hostname"], r.get("address")) for r in
                           d.get("reverses") or ()),
            booked_by_product=tuple(d.get("booked_by_product") or ()),
            expires_at=d.get("expires_at"), revision=revision,
        )
