"""A full etcd disk, end to end through one gateway that runs throughout (issue 15).

One etcd member with a small backend quota (QUOTA) and one gateway node
(gateway_fixtures.GatewayNode) started once and never restarted. CLIENTS clients book
through HTTP, each booking with an Idempotency-Key of its own, and release three IPs of
every four they booked: the churn of a real deployment, whose history is what fills a
quota nobody compacts (the node's compactor is off, as with `--compact-retain-revisions
0`). Live data alone would leave the runbook nothing to free: bookings with no release
left the file at 99% of the quota after it (measured). Every attempt is recorded
(bench.history). They go on until etcd refuses one: the NOSPACE alarm is raised by this
traffic (by a booking or a release, whichever first asks past the quota: a release in
every run so far), never by raw puts.

With the alarm raised:
- every change (book, PATCH, attach, release, create a Private Network), from the first
  refusal on, is answered 503 `{"type": "service_unavailable", "message": "the datastore
  is full: ..."}` within REFUSAL_SECONDS: none 2xx, none without an answer;
- reads (get an IP, list IPs, get the Private Network) answer 200 with what etcd holds,
  except where etcd 3.5.0 to 3.5.6 refuse read-only transactions while the alarm is
  raised (`refuses_reads_while_full`, as tests/allocator/test_compactor.py shows for the
  store): there listing IPs, which reads its records in one, gets the same 503;
- `/readyz` stays 200: the node serves reads, and the quota is the cluster's, so no
  other node would take a change either (docs/operations.md).

Then the runbook of docs/operations.md ("When the quota is full"), its code block run by
bash as written (so the document and the test cannot drift), while the node keeps
running; bookings through the same node succeed again within RECOVERY_SECONDS. Last, the
whole history is checked against etcd (bench.history_check): no address held twice, no
acknowledged booking lost, no refused booking applied (the full datastore's 503 reads as
a refusal there, and the checker finds no idempotency key of any of them in etcd).

The test prints the bookings it took to fill the quota, the acknowledged counts, the
slowest refusal, /readyz, the runbook's time and the time to the first booking after it.
Measured on a shared 2-core machine (etcd 3.4.23 and 3.5.1 alike; about 10 s in all):
320 to 330 bookings (a quarter kept) fill 1 MiB in 4 to 5 s; the slowest refusal took
0.03 to 0.12 s; the runbook takes 0.4 s and leaves the file at 55% of the quota; the
first booking after it succeeds at once (under 0.03 s).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from gateway_fixtures import ADMIN_SECRET, REGION, GatewayNode

from allocator.keys import Keys
from allocator.records import Resource
from allocator.store import EtcdStore
from bench.history import FAIL, KINDS, OK, History, read_final_state
from bench.history_check import check
from devcluster.etcd import EtcdCluster
from gateway.errors import STORAGE_FULL

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK_DOC = ROOT / "docs" / "operations.md"

# 1 MiB: etcd's database starts at 20 KiB, and about 330 bookings fill the rest in 4-5 s
# (2 MiB: twice that). etcd sets no floor; smaller would leave few bookings to check.
QUOTA = 1024 * 1024
CLIENTS = 8
KEEP_EVERY = 4  # a client keeps one IP of every KEEP_EVERY it books, releases the others
MAX_BOOKINGS = 5_000  # the fill's count bound, all clients together (the quota takes ~330)
FILL_SECONDS = 45.0  # the fill's time bound
REQUEST_SECONDS = 15.0  # one attempt's own timeout: past it, "no answer"
REFUSAL_SECONDS = 5.0  # the bound on a refusal
ROUNDS = 3  # of each change while the quota is full
RECOVERY_SECONDS = 10.0  # after the runbook, the first booking within this
RECOVERY_ATTEMPTS = 50
RETRY_PAUSE = 0.1  # between recovery attempts
AFTER_BOOKINGS = 20  # bookings that must all succeed once the first one did

PREFIX = "/t/fulldisk/"
BASE = f"/ipam/v1/regions/{REGION}"
FULL = {"type": "service_unavailable", "message": STORAGE_FULL}


def refuses_reads_while_full(version: str, used: float) -> bool:
    """etcd 3.5.0 to 3.5.6 weigh read-only txns against the quota too (fixed in 3.5.7 by
    etcd PR 14884, in 3.4.20 by PR 14254): `backendQuota.Available` is `Size() + cost <
    quota`, with cost 0 for a read, so they refuse one once the backend file itself has
    reached the quota (`used` >= 1.0), which a fill may stop just short of. Plain ranges
    always answer."""
    major, minor, patch = (int(part) for part in version.split(".")[:3])
    return (major, minor) == (3, 5) and patch < 7 and used >= 1.0


def runbook() -> str:
    """The commands of docs/operations.md's "When the quota is full": its first indented
    code block after that sentence, as a shell script."""
    text = RUNBOOK_DOC.read_text()
    start = text.index("When the quota is full")
    block = re.search(r"\n\n((?: {4}.*\n)+)", text[start:])
    assert block is not None, "docs/operations.md lost the runbook's code block"
    return "".join(line[4:] + "\n" for line in block.group(1).splitlines())


def run_runbook(endpoint: str) -> subprocess.CompletedProcess[str]:
    """The runbook as written, `$EP` and `$ALL` naming the one member; PATH as given (so
    scripts/test-etcd35.sh's etcdctl 3.5 comes first), nothing else inherited."""
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", runbook()], capture_output=True, text=True,
        timeout=120, check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "EP": endpoint, "ALL": endpoint})


# -- the clients --------------------------------------------------------------------------


@dataclass
class Answer:
    """One attempt: what was sent, what came back (status 0: no answer), how long it took."""

    what: str
    status: int
    body: Any
    invoked: float
    seconds: float

    def __str__(self) -> str:
        return f"{self.what}: {self.status} {self.body} after {self.seconds:.2f}s"


@dataclass
class Clients:
    """Everyone's HTTP requests to the one node: every answer kept, every book, attach and
    release also recorded in `history`."""

    session: aiohttp.ClientSession
    url: str
    project: str
    pn: str = ""
    history: History = field(default_factory=History)
    answers: list[Answer] = field(default_factory=list)
    bookings: int = 0

    async def send(self, what: str, method: str, path: str, body: dict[str, Any] | None = None,
                   *, key: str | None = None, **recorded: Any) -> Answer:
        headers = {"X-Auth-Token": ADMIN_SECRET, **({"Idempotency-Key": key} if key else {})}
        kind = what.split(" ")[0]
        op = (self.history.invoke(kind, idempotency_key=key, **recorded)
              if kind in KINDS else None)
        t0 = time.monotonic()
        status, answer = 0, None
        try:
            async with self.session.request(method, self.url + path, json=body,
                                            headers=headers) as resp:
                status = resp.status
                raw = await resp.read()
            answer = json.loads(raw) if raw else None
        except (aiohttp.ClientError, TimeoutError) as err:
            answer = {"type": type(err).__name__}
        if op is not None:
            self.history.answered(op, status, answer)
        out = Answer(what, status, answer, t0, time.monotonic() - t0)
        self.answers.append(out)
        return out

    async def book(self, client: str = "") -> Answer:
        self.bookings += 1
        return await self.send("book", "POST", f"{BASE}/ips", {
            "project_id": self.project, "source": {"private_network_id": self.pn}},
            key=str(uuid.uuid4()), client=client, pool=self.pn)

    async def release(self, ip_id: str, client: str = "") -> Answer:
        return await self.send("release", "DELETE", f"{BASE}/ips/{ip_id}", client=client,
                               ip_id=ip_id)

    async def fill(self, name: str, full: asyncio.Event, deadline: float,
                   kept: list[dict[str, Any]]) -> None:
        """Book and release (keeping one of every KEEP_EVERY) until anything is refused."""
        for n in itertools.count():
            if full.is_set() or self.bookings >= MAX_BOOKINGS or time.monotonic() > deadline:
                return
            booked = await self.book(name)
            if booked.status != 200:
                full.set()
                return
            if n % KEEP_EVERY == 0:
                kept.append(booked.body)
            elif (await self.release(booked.body["id"], name)).status != 204:
                full.set()
                return


def _mac(n: int) -> str:
    return f"02:00:00:00:00:{n:02x}"


# -- the test --------------------------------------------------------------------------------


@pytest.fixture
def cluster() -> Iterator[EtcdCluster]:
    with EtcdCluster(1, name_prefix="fulldisk", quota_backend_bytes=QUOTA) as cluster:
        yield cluster


@pytest.fixture
def node(cluster: EtcdCluster) -> Iterator[GatewayNode]:
    """The one gateway of the test, up from before the fill to after the recovery."""
    node = GatewayNode(cluster.endpoints, PREFIX, compact_retain_revisions=0).start()
    try:
        yield node
    finally:
        node.stop()
    node.assert_conformant()  # the full datastore's 503 included


async def _usage(cluster: EtcdCluster) -> tuple[tuple[str, ...], float]:
    store = EtcdStore(cluster.endpoints)
    try:
        [usage] = await store.storage_usage(QUOTA)
    finally:
        await store.close()
    return usage.alarms, usage.used


async def _ips_in_etcd(cluster: EtcdCluster) -> int:
    """IP records under the prefix, read with plain ranges (which every version serves)."""
    store = EtcdStore(cluster.endpoints)
    try:
        kvs, _ = await store.scan(PREFIX)
    finally:
        await store.close()
    keys = Keys(PREFIX)
    return sum(keys.kind(kv.key)[0] == "ip" for kv in kvs)


@pytest.mark.skipif(shutil.which("etcdctl") is None or shutil.which("bash") is None,
                    reason="the runbook needs etcdctl and bash")
async def test_bookings_fill_etcd_then_changes_get_a_prompt_503_until_the_runbook_frees_it(
        cluster: EtcdCluster, node: GatewayNode) -> None:
    version = cluster.members[0].version()
    assert version is not None
    timeout = aiohttp.ClientTimeout(total=REQUEST_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
        api = Clients(session, node.url, str(uuid.uuid4()))
        created = await api.send("create PN", "POST", f"/vpc/v2/regions/{REGION}/private-networks",
                                 {"project_id": api.project, "name": "full",
                                  "subnets": ["10.20.0.0/16"]})
        assert created.status == 200, created
        api.pn = created.body["id"]

        # -- fill: bookings (and releases) until etcd refuses one ------------------------
        full = asyncio.Event()
        kept: list[dict[str, Any]] = []  # the IPs the clients keep, as answered
        t0 = time.monotonic()
        await asyncio.gather(*(api.fill(f"c{i}", full, t0 + FILL_SECONDS, kept)
                               for i in range(CLIENTS)))
        fill_seconds = time.monotonic() - t0
        refused = [a for a in api.answers if not 200 <= a.status < 300]
        assert refused, f"{api.bookings} bookings in {fill_seconds:.1f}s did not fill {QUOTA} B"
        first = min(refused, key=lambda a: a.invoked + a.seconds)
        refused_at = first.invoked + first.seconds
        assert [str(a) for a in refused if (a.status, a.body) != (503, FULL)] == []
        # From the first refusal on, nothing got in.
        late = [str(a) for a in api.answers if a.invoked > refused_at and a.status != 503]
        assert late == []
        alarms, used = await _usage(cluster)
        assert alarms == ("NOSPACE",) and used > 0.9, (alarms, used)
        filled_by = api.bookings
        acknowledged = sum(a.what == "book" and a.status == 200 for a in api.answers)
        print(f"\netcd {version}, quota {QUOTA} B: filled by {filled_by} bookings "
              f"({acknowledged} acknowledged, {len(kept)} kept) in {fill_seconds:.1f}s; "
              f"first refusal: {first.what}; file at {used:.0%} of the quota")

        # -- full: every change refused at once, reads served -----------------------------
        assert len(kept) >= ROUNDS
        refusals: list[Answer] = []
        for r in range(ROUNDS):
            ip = kept[r]["id"]
            mac = _mac(r)
            refusals += [
                await api.book(),
                await api.send("update", "PATCH", f"{BASE}/ips/{ip}", {"tags": [f"full-{r}"]}),
                await api.send("attach", "POST", f"{BASE}/ips/{ip}/attach",
                               {"resource": {"mac_address": mac, "name": f"full-{r}"}},
                               key=str(uuid.uuid4()), ip_id=ip,
                               resource=Resource.custom(mac).id),
                await api.release(ip),
                await api.send("create PN", "POST", f"/vpc/v2/regions/{REGION}/private-networks",
                               {"project_id": api.project, "name": f"more-{r}",
                                "subnets": [f"10.{30 + r}.0.0/24"]}),
            ]
        assert [str(a) for a in refusals if (a.status, a.body) != (503, FULL)] == []
        refusals += refused  # and the fill's own, those in flight when the alarm rose too
        slowest = max(a.seconds for a in refusals)
        assert slowest < REFUSAL_SECONDS, [str(a) for a in refusals]

        held = await _ips_in_etcd(cluster)
        one = kept[0]
        reads = {
            "get IP": await api.send("get IP", "GET", f"{BASE}/ips/{one['id']}"),
            "list IPs": await api.send(
                "list IPs", "GET", f"{BASE}/ips?private_network_id={api.pn}&page_size=1"),
            "get PN": await api.send(
                "get PN", "GET", f"/vpc/v2/regions/{REGION}/private-networks/{api.pn}"),
        }
        readyz = await api.send("readyz", "GET", "/readyz")
        statuses = {k: a.status for k, a in reads.items()}
        print(f"while full: slowest of {len(refusals)} refusals {slowest:.3f}s; "
              f"reads {statuses}; /readyz {readyz.status} {readyz.body}")
        # etcd 3.5.0-3.5.6: a list reads its records in a read-only txn (store.get_many),
        # which those refuse; a get is a plain range, which they serve.
        _, used = await _usage(cluster)
        refused_reads = {"list IPs"} if refuses_reads_while_full(version, used) else set()
        assert {k: a.status for k, a in reads.items()} == {
            k: 503 if k in refused_reads else 200 for k in reads}
        assert [a.body for k, a in reads.items() if k in refused_reads] == [
            FULL for _ in refused_reads]
        assert (reads["get IP"].body["id"], reads["get IP"].body["address"]) == (
            one["id"], one["address"])
        assert reads["get PN"].body["id"] == api.pn
        if "list IPs" not in refused_reads:
            assert reads["list IPs"].body["total_count"] == held
        assert readyz.status == 200, readyz

        # -- the runbook, the node still running -------------------------------------------
        t0 = time.monotonic()
        done = run_runbook(cluster.endpoints[0])
        runbook_seconds = time.monotonic() - t0
        assert done.returncode == 0, done.stderr
        assert "NOSPACE" in done.stdout  # the alarm list it printed before disarming
        alarms, used = await _usage(cluster)
        assert alarms == () and used < 0.9, (alarms, used)

        t0 = time.monotonic()
        back = None
        for _ in range(RECOVERY_ATTEMPTS):
            attempt = await api.book("after")
            if attempt.status == 200:
                back = time.monotonic() - t0
                break
            assert (attempt.status, attempt.body) == (503, FULL), attempt
            if time.monotonic() - t0 > RECOVERY_SECONDS:
                break
            await asyncio.sleep(RETRY_PAUSE)
        assert back is not None and back < RECOVERY_SECONDS, (
            f"no booking within {RECOVERY_SECONDS}s of the runbook")
        after = [await api.book("after") for _ in range(AFTER_BOOKINGS)]
        assert [str(a) for a in after if a.status != 200] == []
        print(f"runbook {runbook_seconds:.2f}s, file then at {used:.0%} of the quota; first "
              f"booking through the same node {back:.3f}s after it, then "
              f"{AFTER_BOOKINGS} more")

    # -- the history ---------------------------------------------------------------------
    store = EtcdStore(cluster.endpoints)
    try:
        final = await read_final_state(store, Keys(PREFIX))
    finally:
        await store.close()
    verdict = check(api.history.operations, final)
    print(verdict)
    assert verdict.ok, verdict
    refused_bookings = sum(a.what == "book" and a.status == 503 for a in api.answers)
    # Every booking answered 503 is a refusal, and the checker found none of their keys in
    # etcd (nothing leaked); no booking's outcome was left unknown.
    assert verdict.unknown_bookings == {}, verdict
    assert verdict.requests["book"][FAIL] == refused_bookings, verdict
    assert verdict.requests["book"][OK] == acknowledged + 1 + AFTER_BOOKINGS
