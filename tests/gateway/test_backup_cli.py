"""`ipam backup` and `ipam restore` on real etcd: a round trip, and every refusal."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import uuid
from pathlib import Path

import pytest
from allocator_support import book_in, make_pn

from allocator.audit import audit
from allocator.contract import IPAM, IPFilter, Resource
from devcluster.etcd import EtcdCluster
from gateway.cli import main
from gateway.serve import lock_data_dir


def _etcd(cluster: EtcdCluster, prefix: str) -> list[str]:
    return ["--etcd-endpoints", ",".join(cluster.endpoints), "--etcd-prefix", prefix]


async def _run(argv: list[str]) -> int:
    # The commands run their own event loop: keep them off the test's.
    return await asyncio.to_thread(main, argv)


async def test_a_backup_restores_into_an_empty_prefix_whole_and_usable(
        ipam: IPAM, project: str, etcd_single: EtcdCluster, key_prefix: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    pn = await make_pn(ipam, project, "10.41.0.0/24")
    booked = [await ipam.book(book_in(pn, project, resource=Resource.custom(
        f"02:00:00:00:41:{i:02x}", f"vm-{i}") if i % 2 else None)) for i in range(6)]
    file = tmp_path / "ipam.jsonl"
    assert await _run(["backup", str(file), *_etcd(etcd_single, key_prefix)]) == 0
    said = capsys.readouterr().out.strip()
    assert said.startswith("backed up ") and f"of {key_prefix} at revision" in said
    count = int(said.split()[2])
    assert not (tmp_path / "ipam.jsonl.partial").exists()

    target = f"/restored-{uuid.uuid4().hex[:8]}/"
    assert await _run(["restore", str(file), *_etcd(etcd_single, target)]) == 0
    assert capsys.readouterr().out.startswith(f"restored {count} keys into {target}")
    restored = await IPAM.connect(etcd_single.endpoints, prefix=target)
    try:
        assert (await audit(restored.store, restored.keys)).ok
        ips, total = await restored.list_ips(IPFilter(private_network_id=pn.id), page_size=100)
        assert total == 6 and {ip.id for ip in ips} == {ip.id for ip in booked}
        assert {ip.address for ip in ips} == {ip.address for ip in booked}
        more = await restored.book(book_in(pn, project))  # and it books on
        assert more.address not in {ip.address for ip in booked}
        # Into a prefix that holds data: refused, nothing written.
        before, _ = await restored.store.count(target)
        assert await _run(["restore", str(file), *_etcd(etcd_single, target)]) == 1
        assert capsys.readouterr().err == (
            f"ipam restore: cannot restore into {target}: it holds {before} keys\n")
        assert (await restored.store.count(target))[0] == before
    finally:
        await restored.close()


async def test_a_damaged_backup_is_refused_before_any_write(
        ipam: IPAM, project: str, etcd_single: EtcdCluster, key_prefix: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    await make_pn(ipam, project, "10.42.0.0/24")
    file = tmp_path / "ipam.jsonl"
    assert await _run(["backup", str(file), *_etcd(etcd_single, key_prefix)]) == 0
    lines = file.read_bytes().splitlines(keepends=True)
    file.write_bytes(b"".join(lines[:-2] + lines[-1:]))  # a key line lost
    target = f"/damaged-{uuid.uuid4().hex[:8]}/"
    assert await _run(["restore", str(file), *_etcd(etcd_single, target)]) == 1
    assert capsys.readouterr().err.startswith("ipam restore: ")
    check = await IPAM.connect(etcd_single.endpoints, prefix=target)
    try:
        assert (await check.store.count(target))[0] == 0
    finally:
        await check.close()


async def test_the_embedded_etcd_of_a_serving_node_is_found_through_the_data_dir(
        ipam: IPAM, project: str, etcd_single: EtcdCluster, key_prefix: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    await make_pn(ipam, project, "10.43.0.0/24")
    data = tmp_path / "data"
    held = lock_data_dir(data)  # what a running `ipam serve` holds, with the URL it wrote
    try:
        (data / "etcd_endpoint").write_text(f"http://{etcd_single.endpoints[0]}\n")
        file = tmp_path / "b.jsonl"
        argv = ["backup", str(file), "--data-dir", str(data), "--etcd-prefix", key_prefix]
        assert await _run(argv) == 0
        assert "backed up" in capsys.readouterr().out
        assert stat.S_IMODE(file.stat().st_mode) == 0o600  # the whole deployment
    finally:
        os.close(held)


async def test_a_serving_node_that_has_not_started_its_etcd_yet_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    held = lock_data_dir(data)
    try:
        argv = ["backup", str(tmp_path / "x.jsonl"), "--data-dir", str(data)]
        assert await _run(argv) == 2
    finally:
        os.close(held)
    assert capsys.readouterr().err.strip() == (
        f"ipam backup: no etcd: the `ipam serve` holding {data} has not started it yet "
        f"({data}/etcd_endpoint is missing)")
    assert not (tmp_path / "x.jsonl").exists()


async def test_without_etcd_anywhere_the_command_says_so_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["backup", str(tmp_path / "x.jsonl"), "--data-dir", str(tmp_path / "none")]
    assert await _run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"ipam backup: no etcd: give --etcd-endpoints, or --data-dir of an "
                   f"`ipam serve` ({tmp_path / 'none'}/etcd is missing)")
    assert not (tmp_path / "x.jsonl").exists()
    assert not (tmp_path / "none").exists()  # nothing made on the way


async def test_an_embedded_deployment_moves_to_a_new_data_dir_with_no_node_running(
        ipam: IPAM, project: str, etcd_single: EtcdCluster, key_prefix: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Restore into a data dir no node has used (the command starts its etcd, and stops
    it), then back it up again from there, stopped: the same keys both ways."""
    pn = await make_pn(ipam, project, "10.44.0.0/24")
    for _ in range(3):
        await ipam.book(book_in(pn, project))
    file, again = tmp_path / "b.jsonl", tmp_path / "again.jsonl"
    assert await _run(["backup", str(file), *_etcd(etcd_single, key_prefix)]) == 0
    count = int(capsys.readouterr().out.split()[2])

    data = tmp_path / "moved"
    argv = ["restore", str(file), "--data-dir", str(data), "--etcd-prefix", key_prefix]
    assert await _run(argv) == 0
    said = capsys.readouterr()
    assert said.out.startswith(f"restored {count} keys into {key_prefix}")
    assert f"no `ipam serve` holds {data}: starting its embedded etcd" in said.err
    assert f"copy that secret into {data / 'admin_secret_key'}" in said.err
    assert (data / "etcd").is_dir() and (data / "etcd-tls").is_dir()

    argv = ["backup", str(again), "--data-dir", str(data), "--etcd-prefix", key_prefix]
    assert await _run(argv) == 0
    assert capsys.readouterr().out.startswith(f"backed up {count} keys of {key_prefix}")
    os.close(lock_data_dir(data))  # the command let the data dir go


def _etcdctl(endpoint: str, *args: str) -> None:
    subprocess.run(["etcdctl", f"--endpoints={endpoint}", *args], check=True,
                   env={**os.environ, "ETCDCTL_API": "3"}, capture_output=True, timeout=30)


async def test_etcd_is_found_as_serve_finds_it_password_file_and_regions_included(
        tmp_path: Path, key_prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An operator trial: --etcd-password-file was no flag of these commands (its variable
    was ignored: "authentication failed"), and REGION=URL, as serve takes it, was read as
    a host name."""
    with EtcdCluster(1, name_prefix="bkauth") as cluster:
        ep = cluster.endpoints[0]
        for args in (["user", "add", "root:rootpw"], ["user", "add", "ipam:ipampw"],
                     ["role", "add", "ipam"],
                     ["role", "grant-permission", "ipam", "--prefix=true", "readwrite", "/"],
                     ["user", "grant-role", "ipam", "ipam"], ["auth", "enable"]):
            _etcdctl(ep, *args)
        password = tmp_path / "etcd-password"
        password.write_text("ipampw\n")
        password.chmod(0o600)
        auth = ["--etcd-username", "ipam", "--etcd-password-file", str(password),
                "--etcd-insecure-transport", "--etcd-prefix", key_prefix]
        file = tmp_path / "b.jsonl"
        for endpoints in (["--etcd-endpoints", ep],
                          ["--etcd-endpoints", f"fr-par={ep}"],
                          ["--etcd-endpoints", "fr-par=127.0.0.1:9", "--etcd-endpoints",
                           f"nl-ams={ep}", "--region", "nl-ams"]):
            assert await _run(["backup", str(file), *endpoints, *auth]) == 0, \
                capsys.readouterr().err
            assert capsys.readouterr().out.startswith("backed up ")
        # As serve: a password in clear needs the operator's yes, and a region needs a
        # cluster; one line each, exit 2, nothing written.
        file.unlink()
        clear = ["--etcd-endpoints", ep, "--etcd-username", "ipam", "--etcd-password-file",
                 str(password)]
        assert await _run(["backup", str(file), *clear]) == 2
        assert "would reach etcd in clear" in capsys.readouterr().err
        assert await _run(["backup", str(file), "--etcd-endpoints", f"fr-par={ep}",
                           "--region", "nl-ams", *auth]) == 2
        assert "region nl-ams has no etcd cluster" in capsys.readouterr().err
        assert not file.exists()
        # The variable, as serve reads it: regions separated by ';'.
        os.environ["IPAM_ETCD_ENDPOINTS"] = f"fr-par=127.0.0.1:9; nl-ams={ep}"
        try:
            assert await _run(["backup", str(file), "--region", "nl-ams", *auth]) == 0
        finally:
            del os.environ["IPAM_ETCD_ENDPOINTS"]
        assert file.exists()
