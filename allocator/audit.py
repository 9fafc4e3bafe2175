"""A consistency audit read straight from etcd: does the data keep its invariants?

Used by the tests, the bench (after every run) and operators. It reads every
address key, IP record and index key under one prefix at a single revision and
reports what disagrees: an address held twice, an address key without its record
or the reverse, an index key pointing nowhere, a record missing its index key, a
tag-index key of a tag its IP does not carry (or of another project).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import netaddr

from .keys import Keys
from .sources import Source
from .store import Store


@dataclass
class AuditReport:
    """What the audit found; `ok` is True when every invariant holds."""

    revision: int = 0
    records: int = 0
    held_addresses: int = 0
    duplicate_addresses: list[str] = field(default_factory=list)
    addresses_without_record: list[str] = field(default_factory=list)
    records_without_address: list[str] = field(default_factory=list)
    bad_index_keys: list[str] = field(default_factory=list)
    records_missing_index: list[str] = field(default_factory=list)
    reserved_held: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.duplicate_addresses or self.addresses_without_record
                    or self.records_without_address or self.bad_index_keys
                    or self.records_missing_index or self.reserved_held)


async def audit(store: Store, keys: Keys) -> AuditReport:
    """Read everything under `keys.prefix` at one revision and check the invariants."""
    kvs, revision = await store.scan(keys.prefix)
    report = AuditReport(revision=revision)
    values = {kv.key: kv.value for kv in kvs}
    sources: dict[str, Source] = {}
    records: dict[str, dict] = {}
    held: dict[str, str] = {}  # address key -> ip id
    creation_index: list[str] = []
    for key, value in values.items():
        kind, _ = keys.kind(key)
        if kind == "source":
            src = Source.from_json(json.loads(value))
            sources[src.id] = src
        elif kind == "address":
            held[key] = value.decode()
        elif kind == "created":
            creation_index.append(key)
        elif kind == "ip":
            rec = json.loads(value)
            records[rec["id"]] = rec
    report.records, report.held_addresses = len(records), len(held)

    addresses = Counter((r["source_id"], r["address"]) for r in records.values())
    report.duplicate_addresses = sorted(f"{s} {a}" for (s, a), n in addresses.items() if n > 1)

    expected: dict[str, str] = {}
    for rec in records.values():
        owner = sources.get(rec["source_id"])
        if owner is None:
            report.records_without_address.append(rec["id"])
            continue
        offset = int(netaddr.IPNetwork(rec["address"]).ip) - int(owner.network.network)
        first, last = owner.bookable_range
        if not first <= offset <= last:
            report.reserved_held.append(rec["address"])
        expected[keys.address(owner.id, owner.offset_key(offset))] = rec["id"]
        for index_key in _index_keys(keys, rec):
            if index_key not in values:
                report.records_missing_index.append(f"{rec['id']} {index_key}")
    for key, ip_id in expected.items():
        if held.get(key) != ip_id:
            report.records_without_address.append(ip_id)
    for key, ip_id in held.items():
        if expected.get(key) != ip_id:
            report.addresses_without_record.append(key)
    for key in creation_index:
        if keys.last_segment(key) not in records:
            report.bad_index_keys.append(key)
    for key, value in values.items():
        kind, parts = keys.kind(key)
        if kind in ("by_project", "by_resource"):
            if keys.last_segment(key) not in records:
                report.bad_index_keys.append(key)
        elif kind == "mac":
            rec = records.get(value.decode())
            if rec is None or not rec.get("resource") or \
                    rec["resource"].get("mac_address") != parts[2]:
                report.bad_index_keys.append(key)
        elif kind == "by_tag":
            tag, project_id, ip_id = keys.tag_entry(key)
            rec = records.get(ip_id)
            if rec is None or rec["project_id"] != project_id or tag not in rec.get("tags", ()):
                report.bad_index_keys.append(key)
    return report


def _index_keys(keys: Keys, rec: dict) -> list[str]:
    out = [keys.by_project(rec["project_id"], rec["region"], rec["created_at"], rec["id"]),
           keys.created(rec["source_id"], rec["created_at"], rec["id"])]
    res = rec.get("resource")
    if res:
        out.append(keys.by_resource(res["id"], rec["id"]))
    out += [keys.by_tag(tag, rec["project_id"], rec["id"]) for tag in rec.get("tags", ())]
    return out
