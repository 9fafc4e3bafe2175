"""Pure logic: address arithmetic, reserved addresses, free sets, listing order."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

import pytest

from allocator.freeset import DenseFreeSet, SparseFreeSet
from allocator.listing import IPFilter, select
from allocator.records import IPRecord, Resource
from allocator.sources import Source, overlapping, reserved_edges
from allocator.store import prefix_end


def source(cidr: str) -> Source:
    return Source(id="s", kind="subnet", cidr=cidr, region="fr-par", created_at="")


def test_reserved_addresses_of_a_22_are_the_first_two_and_last_two():
    reserved = source("172.16.12.0/22").reserved_addresses()
    assert [r.address for r in reserved] == ["172.16.12.0", "172.16.12.1", "172.16.15.254",
                                             "172.16.15.255"]
    assert all(r.reason for r in reserved)
    assert source("172.16.12.0/22").bookable_count == 1020


def test_offsets_round_trip_and_keys_sort_in_address_order():
    s = source("10.0.0.0/16")
    assert s.offset_of("10.0.1.2") == 258
    assert s.address_at(258) == "10.0.1.2/16"
    keys = [s.offset_key(o) for o in (2, 15, 16, 255, 256, 65533)]
    assert keys == sorted(keys) and len({len(k) for k in keys}) == 1
    v6 = source("fd00::/64")
    assert v6.offset_width == 16 and v6.address_at(5) == "fd00::5/64"
    assert not v6.is_dense and s.is_dense


def test_ipv6_reserved_addresses_are_not_called_broadcast():
    reasons = [r.reason for r in source("fd00::/64").reserved_addresses()]
    assert len(reasons) == 4 and not any("broadcast" in r for r in reasons)


def test_reserved_edges_match_scaleway():
    assert reserved_edges(256) == (2, 253)


def test_overlap_detection_names_the_colliding_subnet():
    others = {"a": "10.0.0.0/24", "b": "10.0.4.0/22", "c": "fd00::/64"}
    assert overlapping("10.0.5.0/24", others) == "b"
    assert overlapping("10.0.1.0/24", others) is None
    assert overlapping("fd00::/48", others) == "c"


def test_prefix_end_covers_exactly_the_prefix():
    assert prefix_end("/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"


def test_dense_free_set_picks_uniformly_and_never_twice():
    fs = DenseFreeSet(2, 253)
    rng = random.Random(1)
    taken = [fs.take(rng) for _ in range(252)]
    assert sorted(taken) == list(range(2, 254))
    assert fs.take(rng) is None and fs.in_flight == 252
    counts = Counter()
    for _ in range(4000):
        fs2 = DenseFreeSet(0, 9)
        counts[fs2.take(rng)] += 1
    assert min(counts.values()) > 300  # ~400 each: no bias toward low addresses


def test_dense_free_set_follows_watch_events_and_settles():
    fs = DenseFreeSet(2, 5, held=[3])
    assert fs.free_count == 3
    fs.held(2)
    assert fs.free_count == 2
    fs.freed(3)
    assert fs.free_count == 3
    assert fs.claim(4) and not fs.claim(4)  # a node never races itself
    fs.give_back(4)
    assert fs.free_count == 3
    o = fs.take(random.Random(0))
    fs.settle_held(o)
    assert fs.free_count == 2 and fs.in_flight == 0
    fs.freed(o)
    assert fs.free_count == 3


def test_sparse_free_set_probes_and_tracks_held():
    fs = SparseFreeSet(2, (1 << 64) - 3, held=[5, 6])
    rng = random.Random(2)
    seen = {fs.take(rng) for _ in range(1000)}
    assert len(seen) == 1000 and not seen & {5, 6}
    assert fs.claim(7) and not fs.claim(7)


def _rec(i: int, **kw) -> IPRecord:
    base = dict(id=f"id{i}", address=f"10.0.0.{i}/24", project_id="p", is_ipv6=False,
                region="fr-par", source_id="s", source_kind="subnet",
                created_at=f"2026-01-01T00:00:{i:02d}Z", updated_at=f"2026-01-01T00:00:{i:02d}Z")
    base.update(kw)
    return IPRecord(**base)


def test_listing_orders_addresses_numerically_and_pages():
    recs = [_rec(i) for i in (10, 9, 100, 2)]
    page, total = select(recs, IPFilter(), "ip_address_asc", 1, 3)
    assert total == 4 and [r.id for r in page] == ["id2", "id9", "id10"]
    page, _ = select(recs, IPFilter(), "ip_address_asc", 2, 3)
    assert [r.id for r in page] == ["id100"]


def test_listing_filters_by_mac_and_attachment():
    r1 = _rec(1, resource=Resource.custom("02:00:00:00:00:01", "web-1"))
    r2 = _rec(2)
    assert select([r1, r2], IPFilter(attached=True), "created_at_asc", 1, 10)[1] == 1
    assert select([r1, r2], IPFilter(mac_address="02:00:00:00:00:01"), "created_at_asc", 1,
                  10)[0] == [r1]
    assert select([r1, r2], IPFilter(resource_name="web"), "created_at_asc", 1, 10)[0] == [r1]


def test_record_json_round_trips():
    r = _rec(3, resource=Resource.custom("02:00:00:00:00:03"), tags=("a",))
    assert IPRecord.from_json(r.to_json()) == r


def test_a_records_copies_are_what_dataclasses_replace_makes():
    r = _rec(4, resource=Resource.custom("02:00:00:00:00:04", "db"), tags=("a", "b"),
             expires_at="2026-02-01T00:00:00Z", revision=7)
    moved, read = r.with_address("10.0.0.9/24"), r.at(12)
    assert moved == dataclasses.replace(r, address="10.0.0.9/24") and moved.revision == 7
    assert read == r and read.revision == 12  # the revision is not compared
    assert (r.address, r.revision) == ("10.0.0.4/24", 7)  # the original is untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        moved.address = "10.0.0.1/24"  # type: ignore[misc]


@pytest.mark.parametrize("mac", ["02-00-00-00-00-0A", " 02:00:00:00:00:0a "])
def test_mac_addresses_are_normalised(mac):
    assert Resource.custom(mac).mac_address == "02:00:00:00:00:0a"


async def test_a_retry_policy_is_bounded_in_count_and_in_time():
    from allocator.retry import RetryPolicy

    tries = [n async for n in RetryPolicy("t", max_attempts=4).attempts()]
    assert tries == [0, 1, 2, 3]
    slow = RetryPolicy("t", max_attempts=100, delay=0.01, deadline=0.03)
    assert 2 <= len([n async for n in slow.attempts()]) < 100


def test_canonical_uuid_reads_exactly_what_uuid_reads_and_new_ids_are_version_4():
    import random as _random
    import uuid as _uuid

    from allocator.records import canonical_uuid, new_id

    def reference(value):
        try:
            return str(_uuid.UUID(value)) if isinstance(value, str) and len(value) == 36 \
                else None
        except ValueError:
            return None

    u = str(_uuid.uuid4())
    odd = [u, u.upper(), "urn:" + u.replace("-", ""), "{" + u.replace("-", "")[:31] + "-}",
           "{" + u[:34] + "}", u[:35] + "g", u.replace("-", "+"), "-" * 36, "", None, 7,
           "\u0661" * 8 + u[8:], u + " ", " " + u[1:]]
    rng = _random.Random(4)
    odd += ["".join(rng.choice("0123456789abcdefABCDEF-{}urn:x") for _ in range(36))
            for _ in range(2000)]
    for value in odd:
        assert canonical_uuid(value) == reference(value), value
    for _ in range(200):
        made = new_id()
        assert str(_uuid.UUID(made)) == made and _uuid.UUID(made).version == 4
        assert _uuid.UUID(made).variant == _uuid.RFC_4122
