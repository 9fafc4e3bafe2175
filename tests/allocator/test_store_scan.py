"""A scan whose pages run out of their deadline reads on in smaller pages, at the same
revision, on real etcd; a deadline it cannot get under is still an error."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from allocator.store import MIN_SCAN_PAGE, DeadlineExceeded, EtcdStore
from allocator.txn import put


class SlowPages(EtcdStore):
    """Real etcd, where a page of more than `fits` keys takes longer than the deadline."""

    def __init__(self, endpoints: Any, fits: int) -> None:
        super().__init__(endpoints)
        self.fits, self.asked = fits, []

    async def range(self, key: str, range_end: bytes | None = None, **kw: Any) -> Any:
        self.asked.append(kw.get("limit", 0))
        if kw.get("limit", 0) > self.fits:
            raise DeadlineExceeded("etcd Range failed: DEADLINE_EXCEEDED: Deadline Exceeded")
        return await super().range(key, range_end, **kw)


async def _fill(endpoints: Any, prefix: str, n: int) -> None:
    store = EtcdStore(endpoints)
    try:
        for i in range(0, n, 100):
            await store.txn([], [put(f"{prefix}{j:05d}", "x" * 64)
                                 for j in range(i, min(n, i + 100))])
    finally:
        await store.close()


async def test_pages_too_slow_for_the_deadline_shrink_and_the_scan_is_whole(etcd_single):
    prefix = f"/t/scan/{uuid.uuid4().hex[:8]}/"
    await _fill(etcd_single.endpoints, prefix, 1_000)
    store = SlowPages(etcd_single.endpoints, fits=300)
    try:
        kvs, revision = await store.scan(prefix, page=5000)
        assert [kv.key for kv in kvs] == [f"{prefix}{j:05d}" for j in range(1_000)]
        # 5,000 and 1,250 and 312 run out; 312 // 4 is below the floor: 100 a page on.
        assert store.asked == [5000, 1250, 312] + [MIN_SCAN_PAGE] * 10
        assert revision > 0
    finally:
        await store.close()


async def test_a_deadline_even_the_smallest_page_misses_is_an_error(etcd_single):
    prefix = f"/t/scan/{uuid.uuid4().hex[:8]}/"
    await _fill(etcd_single.endpoints, prefix, 10)
    store = SlowPages(etcd_single.endpoints, fits=MIN_SCAN_PAGE - 1)
    try:
        with pytest.raises(DeadlineExceeded):
            await store.scan(prefix, page=5000)
        assert store.asked == [5000, 1250, 312, MIN_SCAN_PAGE]
    finally:
        await store.close()
