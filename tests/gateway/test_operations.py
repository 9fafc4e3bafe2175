"""Running a node as an operator does: checks before side effects, waiting for etcd,
surviving an outage, metrics, request ids and the access log."""

from __future__ import annotations

import gc
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp.test_utils import TestClient, TestServer
from gateway_fixtures import ADMIN_SECRET, GatewayNode, gateway  # noqa: F401
from prometheus_client.parser import text_string_to_metric_families

from allocator.contract import IPAM, EtcdStore, SourceUsage
from devcluster.etcd import EtcdCluster
from devcluster.faults import FaultyStore
from gateway.app import availability_of, create_app
from gateway.availability import State
from gateway.config import GatewayConfig
from gateway.metrics import MAX_SOURCE_SERIES, GatewayMetrics
from gateway.serve import GC_THRESHOLDS, settle_heap

SERVE = [sys.executable, "-m", "gateway.cli", "serve"]
ROOT = Path(__file__).resolve().parents[2]
WAIT = 60.0  # seconds a child process may take to say what a test waits for


def clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("IPAM_")}


class Child:
    """`ipam serve` with its stdout and stderr in files, read as they grow."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.out, self.err = tmp / "stdout", tmp / "stderr"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen([*SERVE, *args], cwd=tmp, env=clean_env(),
                                         stdout=out, stderr=err, text=True)

    def wait_for(self, stream: str, needle: str) -> str:
        """The first line of `stream` (stdout|stderr) holding `needle`; bounded by WAIT."""
        path = self.out if stream == "stdout" else self.err
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            for line in path.read_text().splitlines():
                if needle in line:
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)  # a child process: nothing to await but its files
        raise AssertionError(f"no {needle!r} in {stream}: {path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def _get(url: str, token: str | None = None) -> tuple[int, Any, dict[str, str]]:
    req = urllib.request.Request(url, headers={"X-Auth-Token": token} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null"), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null"), dict(err.headers)


# -- nothing happens before the flags are known to work --------------------------------------


@pytest.mark.parametrize("flags,line", [
    (["--log-format", "xml"],
     "ipam serve: --log-format/IPAM_LOG_FORMAT must be one of text, json, not 'xml'"),
    (["--event-loop", "trio"],
     "ipam serve: --event-loop/IPAM_EVENT_LOOP must be one of uvloop, asyncio, not 'trio'"),
    (["--log-level", "loud"],
     "ipam serve: --log-level/IPAM_LOG_LEVEL must be one of debug, info, warning, error, "
     "not 'loud'"),
    (["--port", "70000"], "ipam serve: --port/IPAM_PORT must be a TCP port (0-65535), not 70000"),
    (["--etcd-timeout", "0"], "ipam serve: --etcd-timeout/IPAM_ETCD_TIMEOUT must be positive"),
    (["--header-timeout", "-1"],
     "ipam serve: --header-timeout/IPAM_HEADER_TIMEOUT must be positive"),
])
def test_a_bad_flag_is_one_line_and_exit_2_with_nothing_started(tmp_path: Path, flags: list[str],
                                                                  line: str) -> None:
    data = tmp_path / "data"
    done = subprocess.run([*SERVE, "--data-dir", str(data), *flags], cwd=tmp_path,
                          env=clean_env(), capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stderr.strip(), done.stdout) == (2, line, "")
    assert not data.exists()  # no secret generated, no etcd started


def test_a_taken_port_is_found_before_a_secret_is_made_or_etcd_started(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data = tmp_path / "data"
        done = subprocess.run([*SERVE, "--port", str(port), "--data-dir", str(data)],
                              cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
                              timeout=60, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == (f"ipam serve: --port/IPAM_PORT {port} on 127.0.0.1: "
                                   "Address already in use")
    assert not data.exists()


def test_a_data_dir_that_cannot_be_written_is_refused_up_front(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = subprocess.run([*SERVE, "--port", "0", "--data-dir", str(blocker / "data")],
                          cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == (f"ipam serve: --data-dir/IPAM_DATA_DIR {blocker / 'data'}: "
                                   "Not a directory")


# -- etcd away at the start, and during the run ----------------------------------------------


def test_a_node_started_before_etcd_waits_answers_503_and_serves_once_it_is_up(
        tmp_path: Path) -> None:
    cluster = EtcdCluster(1, base_dir=tmp_path / "etcd", name_prefix="late").start()
    member = cluster.members[0]
    member.stop()  # its ports are known: the node is pointed at a member that is down
    child = Child(tmp_path, "--port", "0", "--etcd-endpoints", cluster.endpoints[0],
                  "--admin-secret-key", ADMIN_SECRET, "--etcd-timeout", "1")
    try:
        waiting = child.wait_for("stdout", "waiting for etcd")
        url = waiting.split("listening on ")[1].split(",")[0]
        child.wait_for("stderr", "etcd not reachable (attempt 2)")  # each attempt, one line
        assert _get(f"{url}/healthz")[0] == 200
        status, body, _ = _get(f"{url}/readyz")
        assert (status, body["status"]) == (503, "starting")
        status, body, headers = _get(f"{url}/ipam/v1/regions/fr-par/ips", ADMIN_SECRET)
        assert (status, body["type"], headers["Retry-After"]) == (503, "service_unavailable", "1")
        assert body["message"].startswith("the node is starting: etcd not reachable yet")
        member.start()
        child.wait_for("stdout", "serving region fr-par")
        assert _get(f"{url}/readyz")[1]["status"] == "ready"
        status, body, _ = _get(f"{url}/ipam/v1/regions/fr-par/ips", ADMIN_SECRET)
        assert (status, body["total_count"]) == (200, 0)
        attempts = [x for x in child.err.read_text().splitlines() if "not reachable" in x]
        assert len(attempts) >= 2 and all("next try in" in x for x in attempts)
        assert "Traceback" not in child.err.read_text()
    finally:
        child.stop()
        cluster.stop()


async def test_a_total_outage_is_answered_503_at_once_and_the_node_recovers_alone(
        etcd_single: EtcdCluster, key_prefix: str) -> None:
    faults = FaultyStore(EtcdStore(etcd_single.endpoints))
    ipam = IPAM(faults, key_prefix)  # type: ignore[arg-type]
    app = create_app(ipam, GatewayConfig(region="fr-par", admin_secret_key=ADMIN_SECRET),
                     close_ipam=True)
    availability = availability_of(app)
    availability.probe_interval = 0.05
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        assert await availability.wait_ready(30)
        token = {"X-Auth-Token": ADMIN_SECRET}
        assert (await client.get("/ipam/v1/regions/fr-par/ips", headers=token)).status == 200
        faults.outage()
        assert await availability.changed(30) and availability.state is State.UNAVAILABLE
        resp = await client.get("/ipam/v1/regions/fr-par/ips", headers=token)
        body = await resp.json()
        assert (resp.status, body["type"]) == (503, "service_unavailable")
        assert body["message"].startswith("etcd has been unreachable for")
        ready = await client.get("/readyz")
        assert (ready.status, (await ready.json())["status"]) == (503, "unavailable")
        assert (await client.get("/healthz")).status == 200  # alive: do not restart it
        faults.heal()
        assert await availability.changed(30) and availability.available
        assert (await client.get("/ipam/v1/regions/fr-par/ips", headers=token)).status == 200
    finally:
        await client.close()


# -- metrics, request ids, headers ----------------------------------------------------------


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = requests.get(f"{url}/metrics", timeout=30)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def test_metrics_count_requests_by_route_bookings_commits_and_sources(
        gateway: GatewayNode) -> None:  # noqa: F811
    headers = {"X-Auth-Token": ADMIN_SECRET}
    project = str(uuid.uuid4())
    pn = requests.post(f"{gateway.url}/vpc/v2/regions/fr-par/private-networks", headers=headers,
                       json={"project_id": project, "name": "metrics",
                             "subnets": ["10.77.0.0/28"]}, timeout=30).json()
    before = _scrape(gateway.url)
    route = ("ipam_http_requests_total", (("method", "POST"),
                                          ("route", "/ipam/v1/regions/{region}/ips"),
                                          ("status", "200")))
    for _ in range(3):
        resp = requests.post(f"{gateway.url}/ipam/v1/regions/fr-par/ips", headers=headers,
                             json={"project_id": project,
                                   "source": {"private_network_id": pn["id"]}}, timeout=30)
        assert resp.status_code == 200
    after = _scrape(gateway.url)
    assert after[route] - before.get(route, 0) == 3
    assert after[("ipam_bookings_total", ())] - before[("ipam_bookings_total", ())] == 3
    batches = ("ipam_commit_batch_size_count", ())
    assert after[batches] - before.get(batches, 0) >= 1
    subnet = pn["subnets"][0]["id"]
    assert after[("ipam_source_held", (("kind", "subnet"), ("source", subnet)))] == 3
    # A /28 books 12 addresses: not the network, gateway, server or broadcast ones.
    assert after[("ipam_source_free", (("kind", "subnet"), ("source", subnet)))] == 9
    assert after[("ipam_etcd_available", (("regions", "fr-par"),))] == 1
    assert all(v == 1 for (name, _), v in after.items() if name == "ipam_etcd_endpoint_up")
    latency = ("ipam_http_request_duration_seconds_count",
               (("method", "POST"), ("route", "/ipam/v1/regions/{region}/ips")))
    assert after[latency] - before.get(latency, 0) == 3


def test_methods_no_route_serves_share_one_label(gateway: GatewayNode) -> None:  # noqa: F811
    # aiohttp's parser refuses a method it does not know (400, before any middleware), but
    # knows some forty, WebDAV's among them: those no route serves are labelled `other`.
    webdav = ["PROPFIND", "MKCOL", "LOCK"]
    for method in webdav:
        assert requests.request(method, f"{gateway.url}/healthz", timeout=30).status_code == 405
    labels = {dict(labels).get("method") for name, labels in _scrape(gateway.url)
              if name.startswith("ipam_http_")}
    assert "other" in labels and not labels & set(webdav)


def test_a_node_settles_its_heap_before_it_serves() -> None:
    # What `ipam serve` calls once set up: setup's objects frozen out of collections,
    # young objects collected less often (the measurements are in gateway.serve).
    before = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_threshold() == GC_THRESHOLDS and gc.get_freeze_count() > 0
        assert gc.isenabled()  # cycles are still collected
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_source_gauges_stay_bounded_with_many_sources() -> None:
    class ManySources:
        store = None

        def observe_commits(self, observer: object) -> None:
            pass

        def engine_stats(self) -> dict[str, Any]:
            return {}

        def endpoints_in_use(self) -> list[tuple[str, bool]]:
            return []

        def source_usage(self) -> list[SourceUsage]:
            return [SourceUsage(f"s{i}", "subnet", 100, 100 - i) for i in range(80)]

    text = GatewayMetrics(ManySources()).scrape().decode()  # type: ignore[arg-type]
    held = [line for line in text.splitlines() if line.startswith("ipam_source_held{")]
    assert len(held) == MAX_SOURCE_SERIES + 1
    assert 'ipam_source_held{kind="subnet",source="s79"} 79.0' in held  # the fullest kept
    # The 30 least full (0..29 held) summed into one series.
    assert 'ipam_source_held{kind="mixed",source="_other"} 435.0' in held


@pytest.mark.parametrize("given,kept", [("req-42.a_b:c", True), ("has space", False),
                                        ("x" * 129, False), (None, False)])
def test_every_answer_carries_a_request_id_the_clients_when_sane(
        gateway: GatewayNode, given: str | None, kept: bool) -> None:  # noqa: F811
    headers = {"X-Auth-Token": ADMIN_SECRET, **({"X-Request-Id": given} if given else {})}
    for path in ("/ipam/v1/regions/fr-par/ips", f"/ipam/v1/regions/fr-par/ips/{uuid.uuid4()}"):
        resp = requests.get(f"{gateway.url}{path}", headers=headers, timeout=30)
        assert resp.status_code in (200, 404)
        rid = resp.headers["X-Request-Id"]
        if kept:
            assert rid == given
        else:
            assert str(uuid.UUID(rid)) == rid
        assert resp.headers["Server"] == "ipam"  # no versions for an attacker to read


def test_the_access_log_is_one_json_line_per_request_with_id_and_key_never_the_secret(
        tmp_path: Path, etcd_single: EtcdCluster, key_prefix: str) -> None:
    child = Child(tmp_path, "--port", "0", "--etcd-endpoints", ",".join(etcd_single.endpoints),
                  "--etcd-prefix", key_prefix, "--admin-secret-key", ADMIN_SECRET,
                  "--log-format", "json")
    try:
        line = child.wait_for("stdout", "serving region fr-par")
        url = line.split(" on ")[1].split(" ")[0]
        req = urllib.request.Request(f"{url}/ipam/v1/regions/fr-par/ips",
                                     headers={"X-Auth-Token": ADMIN_SECRET,
                                              "X-Request-Id": "trace-7"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200
        logged = child.wait_for("stderr", '"request_id": "trace-7"')
    finally:
        child.stop()
    entry = json.loads(logged)
    assert entry["logger"] == "ipam.access" and entry["level"] == "INFO"
    assert (entry["method"], entry["route"], entry["path"], entry["status"]) == (
        "GET", "/ipam/v1/regions/{region}/ips", "/ipam/v1/regions/fr-par/ips", 200)
    assert entry["access_key"].startswith("SCW") and entry["duration_ms"] >= 0
    assert ADMIN_SECRET not in child.err.read_text()
    for other in child.err.read_text().splitlines():
        json.loads(other)  # every line is JSON


async def test_a_node_finding_a_newer_schema_refuses_to_serve_and_exits(
        tmp_path: Path, etcd_single: EtcdCluster, key_prefix: str) -> None:
    from allocator.txn import GuardedTxn

    ipam = await IPAM.connect(etcd_single.endpoints, prefix=key_prefix)
    try:
        put = GuardedTxn().put(ipam.keys.schema(), b'{"version": 99}').writes[0]
        assert (await ipam.store.txn([], [put])).succeeded
    finally:
        await ipam.close()
    done = subprocess.run([*SERVE, "--port", "0", "--etcd-endpoints",
                           ",".join(etcd_single.endpoints), "--etcd-prefix", key_prefix,
                           "--admin-secret-key", ADMIN_SECRET], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        "ipam serve: etcd holds schema 99, this node understands up to 5: upgrade this node")
    assert "Traceback" not in done.stderr
