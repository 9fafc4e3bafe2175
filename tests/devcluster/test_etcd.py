"""The etcd harness itself: real members start, elect, fail over, pause and stop cleanly.

Data is written and read with ``etcdctl`` so these tests prove the members
serve etcd's real API, independently of our own client code.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from devcluster import etcd as etcd_process
from devcluster.etcd import EtcdCluster, EtcdStartError, find_etcd_binary


def etcdctl(endpoints: list[str], *args: str) -> str:
    """Run ``etcdctl`` (API v3) against the given endpoints and return its stdout."""
    result = subprocess.run(
        [
            "etcdctl",
            "--endpoints",
            ",".join(endpoints),
            "--dial-timeout=2s",
            "--command-timeout=5s",
            *args,
        ],
        env={**os.environ, "ETCDCTL_API": "3"},
        capture_output=True,
        check=False,  # the assertion below shows etcdctl's stderr
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def read_value(endpoint: str, key: str) -> str:
    """The value of ``key`` as one member sees it, through a linearizable read."""
    return etcdctl([endpoint], "get", "--print-value-only", key).rstrip("\n")


def member_ids(cluster: EtcdCluster) -> list[str]:
    ids = []
    for member in cluster.members:
        status = member.status()
        assert status is not None, f"{member} does not answer"
        ids.append(status["header"]["member_id"])
    return ids


def processes_mentioning(path: Path) -> list[int]:
    """Pids of live (non-zombie) processes whose command line contains ``path``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(path).encode() in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


def test_single_member_answers_health(etcd_single: EtcdCluster) -> None:
    (member,) = etcd_single.members
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{member.endpoint}/health", timeout=2) as response:
        body = json.loads(response.read())
    version = member.version()
    assert version is not None
    # etcd 3.5 added "reason" (empty while healthy) beside 3.4's one field.
    healthy = {"health": "true"} if version.startswith("3.4.") else {"health": "true", "reason": ""}
    assert body == healthy
    assert etcd_single.leader_index() == 0
    assert etcd_single.endpoints == [member.endpoint]


def test_single_member_stores_and_returns_a_value(
    etcd_single: EtcdCluster, key_prefix: str
) -> None:
    key = key_prefix + "greeting"
    assert etcdctl(etcd_single.endpoints, "put", key, "hello").strip() == "OK"
    assert read_value(etcd_single.endpoints[0], key) == "hello"


def test_three_members_follow_exactly_one_leader(etcd_cluster3: EtcdCluster) -> None:
    statuses = [member.status() for member in etcd_cluster3.members]
    assert all(status is not None for status in statuses)
    self_leaders = [
        index
        for index, status in enumerate(statuses)
        if status is not None and status["leader"] == status["header"]["member_id"]
    ]
    assert len(self_leaders) == 1
    assert {status["leader"] for status in statuses if status is not None} == {
        member_ids(etcd_cluster3)[self_leaders[0]]
    }
    assert etcd_cluster3.leader_index() == self_leaders[0]
    assert len(set(etcd_cluster3.endpoints)) == 3


def test_value_written_on_one_member_is_read_on_every_member(
    etcd_cluster3: EtcdCluster, key_prefix: str
) -> None:
    key = key_prefix + "shared"
    etcdctl([etcd_cluster3.endpoints[0]], "put", key, "v1")
    assert [read_value(endpoint, key) for endpoint in etcd_cluster3.endpoints] == ["v1"] * 3


def test_killing_the_leader_leaves_two_healthy_members_under_a_new_leader(
    etcd_cluster3_fresh: EtcdCluster, key_prefix: str
) -> None:
    cluster = etcd_cluster3_fresh
    old_leader = cluster.wait_healthy()
    cluster.members[old_leader].kill()

    new_leader = cluster.wait_healthy(timeout=10)

    assert new_leader != old_leader
    assert not cluster.members[old_leader].is_running
    survivors = [m for i, m in enumerate(cluster.members) if i != old_leader]
    assert all(member.is_healthy() for member in survivors)
    key = key_prefix + "after-failover"
    etcdctl([survivors[0].endpoint], "put", key, "still-writable")
    assert [read_value(m.endpoint, key) for m in survivors] == ["still-writable"] * 2


def test_killed_member_restarts_from_its_data_and_catches_up(
    etcd_cluster3_fresh: EtcdCluster, key_prefix: str
) -> None:
    cluster = etcd_cluster3_fresh
    victim = cluster.members[0]
    victim.kill()
    cluster.wait_healthy(timeout=10)
    key = key_prefix + "written-while-down"
    etcdctl([cluster.endpoints[1]], "put", key, "missed")

    victim.start()
    cluster.wait_healthy(timeout=10)

    assert all(member.is_running for member in cluster.members)
    assert read_value(victim.endpoint, key) == "missed"


def test_paused_leader_is_replaced_and_catches_up_after_resume(
    etcd_cluster3_fresh: EtcdCluster, key_prefix: str
) -> None:
    cluster = etcd_cluster3_fresh
    old_leader = cluster.wait_healthy()
    paused = cluster.members[old_leader]
    paused.pause()

    assert not paused.is_healthy()  # a stopped process accepts connections but never answers
    new_leader = cluster.wait_healthy(timeout=10)
    assert new_leader != old_leader
    key = key_prefix + "written-while-paused"
    etcdctl([cluster.endpoints[new_leader]], "put", key, "caught-up")

    paused.resume()
    cluster.wait_healthy(timeout=10)

    assert all(member.is_healthy() for member in cluster.members)
    assert read_value(paused.endpoint, key) == "caught-up"


def test_stop_leaves_no_etcd_process_and_removes_its_own_directory() -> None:
    cluster = EtcdCluster(3).start()
    base_dir = cluster.base_dir
    assert base_dir is not None
    processes = [member.process for member in cluster.members]
    cluster.members[1].pause()  # stop() must resume it, or SIGTERM would stay pending
    assert len(processes_mentioning(base_dir)) == 3

    cluster.stop()

    assert all(p is not None and p.returncode is not None for p in processes)
    assert processes_mentioning(base_dir) == []
    assert not base_dir.exists()
    cluster.stop()  # idempotent


def test_stop_keeps_a_given_base_dir_with_the_member_logs(tmp_path: Path) -> None:
    with EtcdCluster(1, base_dir=tmp_path) as cluster:
        log_file = cluster.members[0].log_file
    assert processes_mentioning(tmp_path) == []
    assert log_file.parent.parent == tmp_path
    assert "serving client traffic" in log_file.read_text()


def test_single_member_restarts_from_existing_data_in_a_given_base_dir(
    tmp_path: Path,
) -> None:
    with EtcdCluster(1, base_dir=tmp_path) as first:
        etcdctl(first.endpoints, "put", "/persisted", "yes")
    with EtcdCluster(1, base_dir=tmp_path) as second:
        assert read_value(second.endpoints[0], "/persisted") == "yes"


def test_start_retries_when_a_picked_port_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real_free_ports = etcd_process._free_loopback_ports
    calls: list[list[int]] = []

    def ports_with_one_taken(count: int) -> list[int]:
        ports = real_free_ports(count)
        if not calls:
            ports[0] = taken
        calls.append(ports)
        return ports

    monkeypatch.setattr(etcd_process, "_free_loopback_ports", ports_with_one_taken)
    try:
        with EtcdCluster(1) as cluster:
            assert len(calls) == 2
            assert cluster.members[0].client_port != taken
            assert cluster.members[0].is_healthy()
    finally:
        squatter.close()


def test_member_that_exits_while_starting_is_reported_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken-etcd"
    broken.write_text("#!/bin/sh\necho 'flag provided but not defined: -bogus' >&2\nexit 2\n")
    broken.chmod(0o755)
    monkeypatch.setenv("IPAM_ETCD_BIN", str(broken))
    cluster = EtcdCluster(1)

    with pytest.raises(EtcdStartError, match=r"exited with code 2(.|\n)*-bogus"):
        cluster.start(timeout=10)

    assert cluster.base_dir is None  # its temporary directory was removed


def test_missing_etcd_names_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IPAM_ETCD_BIN", raising=False)
    monkeypatch.setattr(etcd_process, "_is_executable", lambda path: False)
    with pytest.raises(RuntimeError, match="etcd-server"):
        find_etcd_binary()


def test_etcd_bin_variable_must_point_to_an_executable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IPAM_ETCD_BIN", str(tmp_path / "nowhere"))
    with pytest.raises(RuntimeError, match="IPAM_ETCD_BIN"):
        find_etcd_binary()
