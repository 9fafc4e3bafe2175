#!/usr/bin/env bash
# The one test command: installs what a fresh Debian machine lacks, then runs pytest.
# Usage: scripts/test.sh [pytest arguments...]   (from any directory, as root)
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

if ! { command -v etcd && command -v etcdctl && command -v haproxy; } >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y etcd-server etcd-client haproxy
    # The package may start a system etcd on 2379. Our tests use their own
    # members on random ports, but a stray service is not wanted either.
    systemctl stop etcd 2>/dev/null || service etcd stop 2>/dev/null || true
fi

python3 -m pip install -q -e '.[test]'
# The rooms' import rules (pyproject.toml [tool.importlinter]) before any test.
lint-imports --no-cache
exec python3 -m pytest -q "$@"
