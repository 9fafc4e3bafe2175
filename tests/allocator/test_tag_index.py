"""The tag index: written in the transactions that book, retag and release IPs, checked by
the audit, and a tag filter reads only the keys of the IPs that carry the tag."""

from __future__ import annotations

import asyncio

from allocator_support import REGION, book_in, clean_audit, make_pn, new_project

from allocator.audit import audit
from allocator.contract import Caller, IPFilter
from allocator.lifecycle import MAX_RELEASE_SET
from allocator.txn import GuardedTxn, commit


async def tag_keys(ipam) -> list[str]:
    kvs, _ = await ipam.store.scan(ipam.keys.prefix + "ix/tag/", keys_only=True)
    return sorted(kv.key for kv in kvs)


async def test_a_booking_writes_one_index_key_per_tag_and_none_without_tags(ipam, project):
    pn = await make_pn(ipam, project, "10.80.0.0/24")
    await ipam.book(book_in(pn, project))
    assert await tag_keys(ipam) == []
    ip = await ipam.book(book_in(pn, project, tags=("web", "a/b", "50%", "é")))
    assert await tag_keys(ipam) == sorted(ipam.keys.by_tag(t, project, ip.id)
                                          for t in ("web", "a/b", "50%", "é"))
    await clean_audit(ipam)


async def test_retagging_moves_the_index_keys_and_releases_remove_them(ipam, project):
    pn = await make_pn(ipam, project, "10.81.0.0/24")
    ips = [await ipam.book(book_in(pn, project, tags=("a", "b"))) for _ in range(4)]
    await ipam.update_ip(ips[0].id, tags=["b", "c"])
    assert {k for k in await tag_keys(ipam) if ips[0].id in k} == {
        ipam.keys.by_tag("b", project, ips[0].id), ipam.keys.by_tag("c", project, ips[0].id)}
    await ipam.update_ip(ips[1].id, tags=[])
    await ipam.update_ip(ips[2].id, reverses=[])  # tags untouched
    await clean_audit(ipam)
    await ipam.release(ips[0].id)
    await ipam.release_set([ips[2].id, ips[3].id])
    assert await tag_keys(ipam) == []
    await clean_audit(ipam)


async def test_the_audit_names_a_missing_and_a_stray_tag_key(ipam, project):
    pn = await make_pn(ipam, project, "10.82.0.0/24")
    a = await ipam.book(book_in(pn, project, tags=("x",)))
    b = await ipam.book(book_in(pn, project))
    missing = ipam.keys.by_tag("x", project, a.id)
    stray = ipam.keys.by_tag("y", project, b.id)
    await commit(ipam.store, GuardedTxn().delete(missing).put(stray, ""))
    report = await audit(ipam.store, ipam.keys)
    assert report.records_missing_index == [f"{a.id} {missing}"]
    assert report.bad_index_keys == [stray]


async def test_a_tag_filter_reads_only_the_tagged_ips(ipam, project):
    pn = await make_pn(ipam, project, "10.83.0.0/22")
    other = new_project()
    other_pn = await make_pn(ipam, other, "10.84.0.0/24")
    await asyncio.gather(*(ipam.book(book_in(pn, project)) for _ in range(300)))
    tagged = [await ipam.book(book_in(pn, project, tags=("blue", f"n{i}"))) for i in range(5)]
    green = await ipam.book(book_in(pn, project, tags=("green",)))
    others = await ipam.book(book_in(other_pn, other, tags=("blue",)))
    store, seen = ipam.store, {"keys": 0}
    txn, scan = store.txn, store.scan

    async def counting_txn(*args, **kwargs):
        resp = await txn(*args, **kwargs)
        seen["keys"] += sum(len(r.response_range.kvs) for r in resp.responses)
        return resp

    async def counting_scan(*args, **kwargs):
        kvs, rev = await scan(*args, **kwargs)
        seen["keys"] += len(kvs)
        return kvs, rev

    store.txn, store.scan = counting_txn, counting_scan
    got, total = await ipam.list_ips(IPFilter(tags=("blue", "green"), region=REGION,
                                              project_ids=frozenset({project})))
    assert total == 6 and {r.id for r in got} == {r.id for r in tagged} | {green.id}
    assert seen["keys"] == 2 * 6  # 6 index keys, 6 records: none of the 300 untagged
    got, total = await ipam.list_ips(IPFilter(tags=("blue",), region=REGION))  # an admin
    assert {r.id for r in got} == {r.id for r in tagged} | {others.id}
    got, _ = await ipam.list_ips(IPFilter(tags=("blue",), project_id=other, region=REGION,
                                          project_ids=frozenset({project})))
    assert got == []  # another project's, not visible to this caller


async def test_an_ip_with_very_many_tags_books_and_retags_among_other_bookings(ipam, project):
    pn = await make_pn(ipam, project, "10.85.0.0/22")
    many = tuple(f"t{i}" for i in range(64))
    results = await asyncio.gather(
        *(ipam.book(book_in(pn, project, tags=many if i % 10 == 0 else ()))
          for i in range(80)))
    fat = [r for r in results if r.tags]
    assert len(fat) == 8
    await ipam.update_ip(fat[0].id, tags=[f"u{i}" for i in range(64)], caller=Caller())
    assert len(await tag_keys(ipam)) == 7 * 64 + 64
    await ipam.release_set([r.id for r in fat])
    assert await tag_keys(ipam) == []
    await clean_audit(ipam)


async def test_a_release_set_of_a_hundred_ips_with_thirty_tags_each_is_all_or_none(ipam,
                                                                                     project):
    pn = await make_pn(ipam, project, "10.86.0.0/24")
    tags = tuple(f"t{i}" for i in range(30))
    ips = await asyncio.gather(*(ipam.book(book_in(pn, project, tags=tags))
                                 for _ in range(MAX_RELEASE_SET)))
    assert len(await tag_keys(ipam)) == 3000
    # 3,400 keys deleted under 100 guards: more than one level of nesting carries
    await ipam.release_set([r.id for r in ips])
    assert await tag_keys(ipam) == []
    await clean_audit(ipam)


async def test_the_schema_step_to_2_indexes_the_tags_of_ips_tagged_before_the_index(
        ipam, project):
    from allocator.contract import ensure_schema

    pn = await make_pn(ipam, project, "10.88.0.0/24")
    tagged = [await ipam.book(book_in(pn, project, tags=("web", f"n{i}"))) for i in range(30)]
    await ipam.book(book_in(pn, project))  # untagged: nothing to index
    # Version-1 data: the index missing, the schema at 1.
    keys = await tag_keys(ipam)
    assert len(keys) == 60
    txn = GuardedTxn()
    for key in keys:
        txn.delete(key)
    txn.put(ipam.keys.schema(), '{"version": 1}')
    assert (await commit(ipam.store, txn)).succeeded
    assert not (await audit(ipam.store, ipam.keys)).ok  # the audit sees the index missing
    state = await ensure_schema(ipam.store, ipam.keys)
    # then signed keys, project indexes, project organizations
    assert (state.version, state.migrated) == (5, (1, 2, 3, 4))
    assert await tag_keys(ipam) == keys  # every IP's tags, and nothing else
    found, total = await ipam.list_ips(IPFilter(tags=("web",)), page_size=100)
    assert total == 30 and {ip.id for ip in found} == {ip.id for ip in tagged}
    assert (await ensure_schema(ipam.store, ipam.keys)).migrated == ()  # once only
    await clean_audit(ipam)
