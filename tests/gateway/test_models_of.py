"""The answers built from stored records without validation (`IP.of`) are exactly the
ones validation would build: same JSON, byte for byte, same ETag."""

from __future__ import annotations

import uuid

import pytest

from allocator.contract import IPRecord, Resource, Reverse
from gateway.models.ipam import IP

BASE = {"id": str(uuid.uuid4()), "address": "10.0.0.7/24", "project_id": str(uuid.uuid4()),
            "is_ipv6": False, "region": "fr-par", "source_id": str(uuid.uuid4()), "source_kind": "subnet",
            "created_at": "2026-12-02T10:00:00.000001Z", "updated_at": "2026-12-02T10:00:01Z",
            "revision": 42}


@pytest.mark.parametrize("extra", [
    {},
    {"resource": Resource("instance_server", str(uuid.uuid4()), "02:00:00:00:00:01", "web")},
    {"resource": Resource("custom", str(uuid.uuid4()), None, None), "tags": ("a", "é b")},
    {"reverses": (Reverse("web.example.com", "10.0.0.7"), Reverse("x.example.com", None))},
    {"source_kind": "zonal", "zone": "fr-par-1", "address": "51.15.0.9/32"},
    {"expires_at": "2026-12-03T00:00:00Z", "is_ipv6": True, "address": "fd00::5/64"},
])
def test_an_ip_built_from_its_record_is_the_validated_one(extra):
    record = IPRecord(**{**BASE, **extra})
    built = IP.of(record)
    validated = IP.model_validate(built.model_dump())
    assert built.model_dump_json() == validated.model_dump_json()
    assert built._etag is not None and built._etag == IP.of(record)._etag
