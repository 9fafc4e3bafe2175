"""The node's guard on etcd's database size (gateway.storage_guard): the quota setting, the
metrics read at scrape time, and the log lines before and once the quota is full.

The figures and the alarm are checked against real etcd members with a tiny quota, filled
the way tests/allocator/test_compactor.py fills them; how reads are shared and bounded,
and when a line is owed, are checked without I/O."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import requests
from aiohttp.test_utils import TestClient, TestServer
from allocator_support import connected
from gateway_fixtures import ADMIN_SECRET
from prometheus_client.parser import text_string_to_metric_families

from allocator.contract import ETCD_DEFAULT_QUOTA_BYTES, IPAM, StorageUsage
from allocator.contract import errors as e
from allocator.txn import put
from devcluster.etcd import EtcdCluster
from gateway.app import availability_of, create_app
from gateway.config import ConfigError, GatewayConfig, add_arguments, load
from gateway.context import CLUSTERS_KEY
from gateway.serve import embedded_etcd_security, start_embedded_etcd
from gateway.storage_guard import RUNBOOK, Notice, QuotaWatch, StorageGuard

QUOTA = 2 * 1024 * 1024  # etcd's backend quota in these tests
FILLER = b"x" * 2000
NEEDS_ETCDCTL = pytest.mark.skipif(shutil.which("etcdctl") is None,
                                   reason="etcdctl is not installed")


# -- the setting ----------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_quota_defaults_to_etcds_own_and_comes_from_the_flag_or_the_variable() -> None:
    assert ETCD_DEFAULT_QUOTA_BYTES == 2 * 1024**3  # etcd's --quota-backend-bytes default
    external = {"IPAM_ETCD_ENDPOINTS": "127.0.0.1:2379"}
    assert load(parse(), external).etcd_quota_backend_bytes == ETCD_DEFAULT_QUOTA_BYTES
    # The embedded etcd keeps the 4 GiB it always ran with: an upgraded data dir over
    # 2 GiB must not start full.
    assert load(parse(), {}).etcd_quota_backend_bytes == 4 * 1024**3
    env = {"IPAM_ETCD_QUOTA_BACKEND_BYTES": "8589934592"}
    assert load(parse(), env).etcd_quota_backend_bytes == 8 * 1024**3
    assert load(parse("--etcd-quota-backend-bytes", "1048576"),
                env).etcd_quota_backend_bytes == 1024**2


@pytest.mark.parametrize("argv, env", [
    (["--etcd-quota-backend-bytes", "0"], {}),
    ([], {"IPAM_ETCD_QUOTA_BACKEND_BYTES": "-1"}),
    (["--etcd-quota-backend-bytes", "2GiB"], {}),
    ([], {"IPAM_ETCD_QUOTA_BACKEND_BYTES": "1.5"}),
])
def test_a_quota_that_is_not_a_positive_integer_is_refused_in_one_line_naming_it(
        argv: list[str], env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as refused:
        load(parse(*argv), env)
    message = str(refused.value)
    assert message.startswith("--etcd-quota-backend-bytes/IPAM_ETCD_QUOTA_BACKEND_BYTES must")
    assert "\n" not in message


def test_the_embedded_etcd_runs_with_the_quota_the_node_measures_against(
        tmp_path: Path) -> None:
    cluster = start_embedded_etcd(tmp_path, 3 * QUOTA)
    try:
        security = embedded_etcd_security(tmp_path)
        # etcd's own figure, from the member itself (it speaks mutual TLS only).
        text = requests.get(f"{cluster.members[0].client_url}/metrics", timeout=30,
                            verify=security.ca_file,
                            cert=(security.cert_file, security.key_file)).text
        quota = next(s.value for f in text_string_to_metric_families(text)
                     for s in f.samples if s.name == "etcd_server_quota_backend_bytes")
        assert quota == 3 * QUOTA
    finally:
        cluster.stop()


# -- when a line is owed (no I/O) ---------------------------------------------------------------


def usage(endpoint: str, used: float, alarms: Sequence[str] = ()) -> StorageUsage:
    size = int(used * QUOTA)
    return StorageUsage(endpoint, size, size // 2, QUOTA, tuple(alarms))


def test_the_near_quota_warning_is_logged_once_per_crossing() -> None:
    watch = QuotaWatch()
    assert watch.observe([usage("a:2379", 0.5)]) == []
    assert watch.observe([usage("a:2379", 0.81)]) == [Notice(logging.WARNING, (
        "etcd's database on a:2379 is at 81% of its quota (1.6 MiB of 2.0 MiB, 0.8 MiB in "
        f"use): compact and defragment before every change is refused: {RUNBOOK}"))]
    # Still over, or hovering just under the mark: said already.
    for used in (0.9, 0.79, 0.82, 0.76):
        assert watch.observe([usage("a:2379", used)]) == []
    assert watch.observe([usage("a:2379", 0.5)]) == []  # freed: armed again
    [again] = watch.observe([usage("a:2379", 0.85)])
    assert again.level == logging.WARNING and "at 85% of its quota" in again.message


def test_each_member_is_watched_alone_and_a_silent_one_is_not_announced_again() -> None:
    watch = QuotaWatch()
    [warning] = watch.observe([usage("a:2379", 0.9), usage("b:2379", 0.1)])
    assert warning.message.startswith("etcd's database on a:2379 is at 90%")
    assert watch.observe([usage("b:2379", 0.1)]) == []  # a: silent for its second
    assert watch.observe([usage("a:2379", 0.9), usage("b:2379", 0.1)]) == []
    [b] = watch.observe([usage("a:2379", 0.9), usage("b:2379", 0.95)])
    assert b.message.startswith("etcd's database on b:2379 is at 95%")


def test_an_alarm_is_an_error_once_raised_and_an_info_line_once_cleared() -> None:
    watch = QuotaWatch()
    assert watch.observe([usage("a:2379", 0.5, ["NOSPACE"])]) == [Notice(logging.ERROR, (
        "etcd's NOSPACE alarm is raised on a:2379: every change is refused until an "
        "operator frees space: docs/operations.md, 'When the quota is full'"))]
    assert watch.observe([usage("a:2379", 0.5, ["NOSPACE"])]) == []
    assert watch.observe([usage("a:2379", 0.5, ["CORRUPT", "NOSPACE"])]) == [Notice(
        logging.ERROR, "etcd's CORRUPT alarm is raised on a:2379: see etcd's documentation")]
    assert watch.observe([usage("a:2379", 0.5)]) == [
        Notice(logging.INFO, "etcd's CORRUPT alarm on a:2379 is cleared"),
        Notice(logging.INFO,
               "etcd's NOSPACE alarm on a:2379 is cleared: changes are taken again")]


# -- reads shared, kept a while, bounded -------------------------------------------------------


class HeldUsage:
    """An IPAM whose storage_usage answers when the test lets it (or fails): only the
    guard's own handling of its reads is under test here, no storage."""

    def __init__(self) -> None:
        self.calls = 0
        self.answer: list[StorageUsage] | e.StoreError = [usage("a:2379", 0.5)]
        self.release = asyncio.Event()

    async def storage_usage(self, quota: int) -> list[StorageUsage]:
        self.calls += 1
        await self.release.wait()
        if isinstance(self.answer, e.StoreError):
            raise self.answer
        return [StorageUsage(u.endpoint, u.db_size, u.db_size_in_use, quota, u.alarms)
                for u in self.answer]


def guard_on(ipam: HeldUsage, **options: float) -> StorageGuard:
    return StorageGuard(ipam, QUOTA, **options)  # type: ignore[arg-type]


async def test_askers_share_one_read_and_its_answer_is_kept_for_a_while() -> None:
    held = HeldUsage()
    guard = guard_on(held, cache_seconds=3600)
    asking = [asyncio.ensure_future(guard.usage()) for _ in range(3)]
    await asyncio.sleep(0)  # each asker is waiting on the read now
    held.release.set()
    answers = await asyncio.gather(*asking)
    assert answers == [[usage("a:2379", 0.5)]] * 3 and held.calls == 1
    held.answer = []
    assert await guard.usage() == [usage("a:2379", 0.5)] and held.calls == 1


async def test_a_scrape_does_not_wait_for_a_slow_read_and_the_next_one_gets_its_answer(
        ) -> None:
    held = HeldUsage()
    guard = guard_on(held, cache_seconds=3600)
    assert await guard.usage(wait=0) == []  # nothing read yet: no figures, not stale ones
    held.release.set()
    assert await guard.usage() == [usage("a:2379", 0.5)] and held.calls == 1


async def test_a_failed_read_shows_no_figures_and_says_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    held = HeldUsage()
    held.release.set()
    guard = guard_on(held, cache_seconds=0)
    assert await guard.usage() == [usage("a:2379", 0.5)]
    held.answer = e.StoreError("etcd Alarm failed: UNAVAILABLE")
    with caplog.at_level(logging.INFO, logger="ipam"):
        assert await guard.check() == []
    assert guard.last == [] and caplog.records == []  # the availability gate reports outages


async def test_close_stops_the_periodic_check_and_a_read_in_flight() -> None:
    held = HeldUsage()
    guard = guard_on(held, check_interval=3600)
    guard.start()
    while held.calls == 0:  # the first check is reading
        await asyncio.sleep(0)
    assert guard.running
    await guard.close()
    assert not guard.running and guard.last == []


# -- against real etcd -----------------------------------------------------------------------------


@pytest.fixture
def small() -> Iterator[EtcdCluster]:
    """A member of this test's own with a tiny quota: NOSPACE within a few writes."""
    with EtcdCluster(1, name_prefix="guard", quota_backend_bytes=QUOTA) as cluster:
        yield cluster


async def fill(ipam: IPAM, prefix: str) -> None:
    """Overwrite the same keys until etcd refuses: history nobody compacted."""
    for _ in range(10_000):
        try:
            await ipam.store.txn([], [put(f"{prefix}fill/{j}", FILLER) for j in range(50)])
        except e.StorageFull:
            return
    raise AssertionError("etcd never said its quota was full")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_show_each_members_size_and_alarms_against_the_configured_quota(
        small: EtcdCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    [endpoint] = small.endpoints
    # A loaded machine may take longer than a scrape waits: this one waits for its read.
    monkeypatch.setattr("gateway.metrics.SCRAPE_WAIT", None)
    async with connected(small.endpoints, f"/t/{uuid.uuid4().hex[:12]}/") as ipam:
        config = GatewayConfig(admin_secret_key=ADMIN_SECRET, etcd_quota_backend_bytes=QUOTA,
                               compact_retain_revisions=0, expiry_check_interval=0)
        app = create_app(ipam, config)
        guard = app[CLUSTERS_KEY].all[0].guard
        assert guard is not None
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            assert await availability_of(app).wait_ready(30)
            assert guard.running  # every node checks, not one elected
            await fill(ipam, ipam.keys.prefix)
            guard.cache_seconds = 0  # this scrape reads etcd again
            got = samples(await (await client.get("/metrics")).text())
            # A full etcd takes no write: its figures hold still to be compared.
            [member] = await ipam.storage_usage(QUOTA)
            assert member.alarms == ("NOSPACE",)
            ep = (("endpoint", endpoint),)
            assert got[("ipam_etcd_quota_backend_bytes", ())] == QUOTA
            assert got[("ipam_etcd_db_size_bytes", ep)] == member.db_size
            assert got[("ipam_etcd_db_size_in_use_bytes", ep)] == member.db_size_in_use
            assert got[("ipam_etcd_db_quota_used_ratio", ep)] == member.db_size / QUOTA
            assert got[("ipam_etcd_alarm", (("alarm", "NOSPACE"), *ep))] == 1
            assert got[("ipam_etcd_alarm", (("alarm", "CORRUPT"), *ep))] == 0
            # Reads still work on a full etcd: the node stays in the load balancer.
            ready = await client.get("/readyz")
            assert (ready.status, (await ready.json())["status"]) == (200, "ready")
        finally:
            await client.close()
        assert not guard.running


@NEEDS_ETCDCTL
async def test_nospace_is_an_error_line_once_and_the_runbook_clears_it_with_an_info_line(
        small: EtcdCluster, caplog: pytest.LogCaptureFixture) -> None:
    [endpoint] = small.endpoints
    async with connected(small.endpoints, f"/t/{uuid.uuid4().hex[:12]}/") as ipam:
        guard = StorageGuard(ipam, QUOTA, cache_seconds=0)
        with caplog.at_level(logging.INFO, logger="ipam"):
            assert await guard.check() == []  # a new member: far from its quota
            await fill(ipam, ipam.keys.prefix)
            full = await guard.check()
            assert [n.level for n in full] == [logging.WARNING, logging.ERROR]
            assert full[1].message == (
                f"etcd's NOSPACE alarm is raised on {endpoint}: every change is refused "
                f"until an operator frees space: docs/operations.md, 'When the quota is "
                f"full'")
            assert await guard.check() == []  # said once
            # docs/operations.md's runbook, as test_compactor.py runs it.
            status = json.loads(etcdctl(endpoint, "endpoint", "status", "--write-out=json"))
            etcdctl(endpoint, "compact", "--physical",
                    str(status[0]["Status"]["header"]["revision"]))
            etcdctl(endpoint, "defrag")
            etcdctl(endpoint, "alarm", "disarm")
            assert await guard.check() == [Notice(
                logging.INFO,
                f"etcd's NOSPACE alarm on {endpoint} is cleared: changes are taken again")]
            assert guard.last[0].used < 0.5
        logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "ipam"]
        assert logged == [(n.level, n.message) for n in (*full, Notice(
            logging.INFO,
            f"etcd's NOSPACE alarm on {endpoint} is cleared: changes are taken again"))]


def etcdctl(endpoint: str, *args: str) -> str:
    out = subprocess.run(["etcdctl", f"--endpoints={endpoint}", *args], check=True,
                         capture_output=True, text=True, timeout=60,
                         env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
    return out.stdout


async def test_a_member_that_does_not_answer_is_left_out(
        etcd_cluster3_fresh: EtcdCluster) -> None:
    cluster = etcd_cluster3_fresh
    leader = cluster.leader_index()
    assert leader is not None
    silent = (leader + 1) % 3
    async with connected(cluster.endpoints, f"/t/{uuid.uuid4().hex[:12]}/") as ipam:
        guard = StorageGuard(ipam, QUOTA)
        cluster.members[silent].pause()
        try:
            answered = await guard.usage()
        finally:
            cluster.members[silent].resume()
    assert sorted(u.endpoint for u in answered) == sorted(
        ep for i, ep in enumerate(cluster.endpoints) if i != silent)
