"""A consistency audit read straight from etcd: does the data keep its invariants?

Used by the tests, the bench (after every run) and operators. It reads every
key under one prefix at a single revision (one scan) and reports what disagrees:
an address held twice, an address key without its record or the reverse, an index
key pointing nowhere (or at a record without that property), a record missing its
index key. The indexes it checks both ways, entry -> record and record -> entry:

- of IPs: by project, by source (creation), by resource, by MAC, by tag, by expiry
  (`expiry/{time}/{ip}`: exactly the IPs with an `expires_at`, at that time);
- of VPCs and Private Networks: their project's (`projvpc`, `projpn`, the latter
  holding the VPC id), the VPC's Private Networks (`vpcpn`) and subnets (`vpcnet`,
  holding the CIDR), each subnet's source (`src/{id}/meta`);
- the project -> organization mapping (`projorg`): its shape only (a project id, an
  organization id). Objects may rightly carry another organization: those created
  before the mapping was set, and those a node that does not require organizations
  created within `organizations.UNKNOWN_SECONDS` of it.

Events and idempotency entries are leased history: they outlive the IPs they name
(an event of a released IP, the first answer of one released since), so no IP is
required of them. What is checked (`bad_history_keys`): an event reads as the feed
reads it, names the project and IP of its key and, while its IP lives, that IP's
project; an idempotency entry is one of the two formats a replay reads.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import netaddr

from .errors import InvalidArgument
from .events import KINDS, Event
from .keys import Keys
from .records import check_uuid
from .sources import SUBNET, Source
from .store import KV, Store


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
    records_missing_index: list[str] = field(default_factory=list)  # "{record id} {key}"
    reserved_held: list[str] = field(default_factory=list)
    bad_history_keys: list[str] = field(default_factory=list)  # events, idempotency entries

    @property
    def ok(self) -> bool:
        return not (self.duplicate_addresses or self.addresses_without_record
                    or self.records_without_address or self.bad_index_keys
                    or self.records_missing_index or self.reserved_held
                    or self.bad_history_keys)


async def audit(store: Store, keys: Keys) -> AuditReport:
    """Read everything under `keys.prefix` at one revision and check the invariants."""
    kvs, revision = await store.scan(keys.prefix)
    report = AuditReport(revision=revision)
    values = {kv.key: kv.value for kv in kvs}
    sources: dict[str, Source] = {}
    records: dict[str, dict] = {}
    vpcs: dict[str, dict] = {}
    networks: dict[str, dict] = {}
    held: dict[str, str] = {}  # address key -> ip id
    creation_index: list[str] = []
    history: list[KV] = []  # events and idempotency entries
    for kv in kvs:
        kind, _ = keys.kind(kv.key)
        if kind == "source":
            src = Source.from_json(json.loads(kv.value))
            sources[src.id] = src
        elif kind == "address":
            held[kv.key] = kv.value.decode()
        elif kind == "created":
            creation_index.append(kv.key)
        elif kind == "ip":
            rec = json.loads(kv.value)
            records[rec["id"]] = rec
        elif kind == "vpc":
            vpcs[keys.last_segment(kv.key)] = json.loads(kv.value)
        elif kind == "pn":
            networks[keys.last_segment(kv.key)] = json.loads(kv.value)
        elif kind in ("ev", "idem"):
            history.append(kv)
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
        elif kind == "expiry":
            _, ip_id = keys.expiry_entry(key)
            rec = records.get(ip_id)
            if rec is None or not rec.get("expires_at") or \
                    keys.expiry(rec["expires_at"], ip_id) != key:
                report.bad_index_keys.append(key)
    _audit_networks(keys, values, vpcs, networks, sources, report)
    for kv in history:
        if not _sound_history(keys, kv, records):
            report.bad_history_keys.append(kv.key)
    return report


def _index_keys(keys: Keys, rec: dict) -> list[str]:
    out = [keys.by_project(rec["project_id"], rec["region"], rec["created_at"], rec["id"]),
           keys.created(rec["source_id"], rec["created_at"], rec["id"])]
    res = rec.get("resource")
    if res:
        out.append(keys.by_resource(res["id"], rec["id"]))
    out += [keys.by_tag(tag, rec["project_id"], rec["id"]) for tag in rec.get("tags", ())]
    if rec.get("expires_at"):
        out.append(keys.expiry(rec["expires_at"], rec["id"]))
    return out


def _audit_networks(keys: Keys, values: dict[str, bytes], vpcs: dict[str, dict],
                    networks: dict[str, dict], sources: dict[str, Source],
                    report: AuditReport) -> None:
    """The indexes of VPCs and Private Networks, both ways, and the organization mapping."""
    # Each index key a record needs, with the value it must hold (None: any).
    needed: dict[str, tuple[str, str | None]] = {}
    for vpc_id, vpc in vpcs.items():
        needed[keys.project_vpcs(vpc["project_id"], vpc["region"], vpc_id)] = (vpc_id, None)
    subnets: dict[str, tuple[str, dict]] = {}  # subnet id -> (its network's id, subnet)
    for pn_id, pn in networks.items():
        needed[keys.project_private_networks(pn["project_id"], pn["region"], pn_id)] = (
            pn_id, pn["vpc_id"])
        needed[keys.vpc_private_networks(pn["vpc_id"], pn_id)] = (pn_id, None)
        for subnet in pn.get("subnets", ()):
            subnets[subnet["id"]] = (pn_id, subnet)
            needed[keys.vpc_network(pn["vpc_id"], subnet["id"])] = (pn_id, subnet["subnet"])
    for key, (record_id, held) in needed.items():
        if key not in values:
            report.records_missing_index.append(f"{record_id} {key}")
        elif held is not None and values[key].decode() != held:
            report.bad_index_keys.append(key)
    for key, value in values.items():
        kind, parts = keys.kind(key)
        stray = kind in ("projvpc", "projpn", "vpcpn", "vpcnet") and key not in needed
        if stray or kind == "projorg" and not (_is_uuid(parts[-1])
                                               and _is_uuid(value.decode())):
            report.bad_index_keys.append(key)
    # A subnet's source, and a subnet source's network: both ways, as one record.
    for subnet_id, (pn_id, subnet) in subnets.items():
        src = sources.get(subnet_id)
        if src is None or src.private_network_id != pn_id or src.cidr != subnet["subnet"]:
            report.records_missing_index.append(f"{pn_id} {keys.source(subnet_id)}")
    for src in sources.values():
        if src.kind == SUBNET and src.id not in subnets:
            report.bad_index_keys.append(keys.source(src.id))


def _sound_history(keys: Keys, kv: KV, records: dict[str, dict]) -> bool:
    """Whether an event or an idempotency entry reads as its reader reads it (see the
    module docstring: leased history, not required to name a live IP)."""
    kind, parts = keys.kind(kv.key)
    try:
        if kind == "idem":
            entry = json.loads(kv.value)
            if "v" in entry:  # format 2: the digest and the IP's id
                return isinstance(entry["f"], str) and isinstance(entry["i"], str)
            # format 1: the digest and the whole first answer
            return isinstance(entry["fingerprint"], str) and isinstance(entry["result"]["id"],
                                                                        str)
        event = Event.of(kv)
    except (ValueError, KeyError, TypeError, AttributeError):
        return False
    project_id, ip_id = parts[1], parts[-1].split(".")[0]
    live = records.get(ip_id)
    return (event.kind in KINDS and event.project_id == project_id and event.ip_id == ip_id
            and _is_uuid(project_id)
            and (live is None or live["project_id"] == project_id))


def _is_uuid(text: str) -> bool:
    try:
        check_uuid(text, "id")
    except InvalidArgument:
        return False
    return True
