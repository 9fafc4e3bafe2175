"""The consistency audit names each kind of disagreement, planted with raw etcd writes.

Each test builds a clean state through the allocator, checks the audit finds it
clean, plants one inconsistency with a raw transaction, and sees exactly that
finding: an index key pointing at no record (or at one without that property), a
record missing an index key, history (events, idempotency entries) of the wrong shape.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from allocator_support import book_in, clean_audit, make_pn

from allocator.audit import AuditReport, audit
from allocator.contract import IPAM, Resource
from allocator.txn import GuardedTxn, commit

IN_AN_HOUR = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
ORGANIZATION = "7e57e57e-0000-4000-8000-000000000001"


async def _plant(ipam: IPAM, txn: GuardedTxn) -> AuditReport:
    """Apply `txn` (raw writes, no guard) and audit."""
    assert (await commit(ipam.store, txn)).succeeded
    return await audit(ipam.store, ipam.keys)


def _only(report: AuditReport, **findings: list[str]) -> None:
    """The report holds exactly `findings` (every other list empty)."""
    names = ("duplicate_addresses", "addresses_without_record", "records_without_address",
             "bad_index_keys", "records_missing_index", "reserved_held", "bad_history_keys")
    assert {n: getattr(report, n) for n in names} == {
        n: findings.get(n, []) for n in names}
    assert not report.ok


async def test_a_clean_state_with_every_index_passes(ipam, project):
    await ipam.set_project_organization(project, ORGANIZATION)
    pn = await make_pn(ipam, project, "10.130.0.0/24", "fd00:130::/64")
    await ipam.book(book_in(pn, project, tags=("a", "b"), expires_at=IN_AN_HOUR,
                            idempotency_key="k1"))
    ip = await ipam.book(book_in(pn, project, is_ipv6=True,
                                 resource=Resource.custom("02:00:00:00:01:30", "vm")))
    await ipam.update_ip(ip.id, tags=["c"])
    gone = await ipam.book(book_in(pn, project))
    await ipam.release(gone.id)  # its events outlive it
    report = await clean_audit(ipam)
    assert report.records == 2


async def test_an_expiry_key_missing_or_astray_is_named(ipam, project):
    pn = await make_pn(ipam, project, "10.131.0.0/24")
    expiring = await ipam.book(book_in(pn, project, expires_at=IN_AN_HOUR))
    lasting = await ipam.book(book_in(pn, project))
    await clean_audit(ipam)
    missing = ipam.keys.expiry(expiring.expires_at, expiring.id)
    stray = ipam.keys.expiry(IN_AN_HOUR, lasting.id)
    report = await _plant(ipam, GuardedTxn().delete(missing).put(stray, ""))
    _only(report, records_missing_index=[f"{expiring.id} {missing}"], bad_index_keys=[stray])


async def test_an_expiry_key_at_another_time_than_its_ip_is_named(ipam, project):
    pn = await make_pn(ipam, project, "10.132.0.0/24")
    ip = await ipam.book(book_in(pn, project, expires_at=IN_AN_HOUR))
    right = ipam.keys.expiry(ip.expires_at, ip.id)
    later = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    wrong = ipam.keys.expiry(later, ip.id)
    report = await _plant(ipam, GuardedTxn().delete(right).put(wrong, ""))
    _only(report, records_missing_index=[f"{ip.id} {right}"], bad_index_keys=[wrong])


async def test_a_vpc_missing_its_project_index_and_a_stray_entry_are_named(ipam, project):
    vpc = await ipam.create_vpc("fr-par", project, None, "v")
    await clean_audit(ipam)
    missing = ipam.keys.project_vpcs(project, "fr-par", vpc.id)
    stray = ipam.keys.project_vpcs(project, "fr-par", "00000000-0000-4000-8000-00000000beef")
    report = await _plant(ipam, GuardedTxn().delete(missing).put(stray, ""))
    _only(report, records_missing_index=[f"{vpc.id} {missing}"], bad_index_keys=[stray])


async def test_a_private_network_index_naming_another_vpc_or_missing_is_named(ipam, project):
    pn = await make_pn(ipam, project, "10.133.0.0/24")
    other = await make_pn(ipam, project, "10.134.0.0/24")
    await clean_audit(ipam)
    wrong = ipam.keys.project_private_networks(project, "fr-par", pn.id)
    missing = ipam.keys.project_private_networks(project, "fr-par", other.id)
    report = await _plant(ipam, GuardedTxn().put(wrong, "00000000-0000-4000-8000-00000000beef")
                          .delete(missing))
    _only(report, bad_index_keys=[wrong], records_missing_index=[f"{other.id} {missing}"])


async def test_vpc_network_and_subnet_indexes_astray_or_wrong_are_named(ipam, project):
    pn = await make_pn(ipam, project, "10.135.0.0/24")
    await clean_audit(ipam)
    subnet = pn.subnets[0]
    cidr_key = ipam.keys.vpc_network(pn.vpc_id, subnet.id)
    missing = ipam.keys.vpc_private_networks(pn.vpc_id, pn.id)
    stray = ipam.keys.vpc_private_networks(pn.vpc_id, "00000000-0000-4000-8000-00000000beef")
    report = await _plant(ipam, GuardedTxn().put(cidr_key, "10.136.0.0/24").delete(missing)
                          .put(stray, ""))
    _only(report, bad_index_keys=sorted([cidr_key, stray]),
          records_missing_index=[f"{pn.id} {missing}"])


async def test_a_subnet_without_its_source_and_a_source_of_no_subnet_are_named(ipam, project):
    pn = await make_pn(ipam, project, "10.137.0.0/24", "10.138.0.0/24")
    await clean_audit(ipam)
    kept, dropped = pn.subnets
    meta = ipam.keys.source(kept.id)
    # The network forgets one subnet (its source stays); the other loses its source.
    record = (await ipam.store.get(ipam.keys.private_network(pn.id))).value
    stored = json.loads(record)
    stored["subnets"] = [s for s in stored["subnets"] if s["id"] != dropped.id]
    report = await _plant(ipam, GuardedTxn().delete(meta).put(
        ipam.keys.private_network(pn.id), json.dumps(stored))
        .delete(ipam.keys.vpc_network(pn.vpc_id, dropped.id)))
    _only(report, records_missing_index=[f"{pn.id} {meta}"],
          bad_index_keys=[ipam.keys.source(dropped.id)])


async def test_a_malformed_organization_mapping_is_named(ipam, project):
    await ipam.set_project_organization(project, ORGANIZATION)
    await clean_audit(ipam)
    key = ipam.keys.project_organization(project)
    report = await _plant(ipam, GuardedTxn().put(key, "not an organization"))
    _only(report, bad_index_keys=[key])


async def test_events_of_the_wrong_shape_or_project_are_named(ipam, project):
    pn = await make_pn(ipam, project, "10.139.0.0/24")
    ip = await ipam.book(book_in(pn, project))
    await clean_audit(ipam)
    (event,), _ = await ipam.store.scan(ipam.keys.events(project))
    other_project = "00000000-0000-4000-8000-00000000beef"
    elsewhere = event.key.replace(project, other_project)  # names another project's IP
    unreadable = f"{event.key}x"
    misnamed = ipam.keys.event(project, 1, "00000000-0000-4000-8000-00000000cafe", "00")
    report = await _plant(ipam, GuardedTxn().put(elsewhere, event.value)
                          .put(unreadable, b"{not json").put(misnamed, event.value))
    _only(report, bad_history_keys=sorted([elsewhere, unreadable, misnamed]))
    assert ip.id in event.key


async def test_idempotency_entries_of_the_wrong_shape_are_named(ipam, project):
    pn = await make_pn(ipam, project, "10.140.0.0/24")
    await ipam.book(book_in(pn, project, idempotency_key="first"))
    await clean_audit(ipam)
    (entry,), _ = await ipam.store.scan(ipam.keys.idempotency("", ""))
    bad = ipam.keys.idempotency("", "second")
    old_format = ipam.keys.idempotency("", "third")
    old = {"fingerprint": "ab", "result": {"id": "00000000-0000-4000-8000-00000000cafe"}}
    report = await _plant(ipam, GuardedTxn().put(bad, json.dumps({"v": 2, "f": "x"}))
                          .put(old_format, json.dumps(old)))
    _only(report, bad_history_keys=[bad])
    assert json.loads(entry.value)["v"] == 2
