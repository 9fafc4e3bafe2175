#!/usr/bin/env bash
# The one test command: installs what a fresh Debian machine lacks, then runs pytest.
# Usage: scripts/test.sh [pytest arguments...]   (from any directory, as root)
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

# etcd for the stores, haproxy for the topology, the real DHCP and DNS clients (with
# iproute2 for their network namespaces) for the agent's tests, and a headless browser
# for the API page's; strace to slow an etcd member's fsyncs (test_slow_members.py).
if ! { command -v etcd && command -v etcdctl && command -v haproxy && command -v ip \
        && command -v dhclient && command -v dig && command -v chromium \
        && command -v chromedriver && command -v strace; } >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y etcd-server etcd-client haproxy iproute2 isc-dhcp-client \
        bind9-dnsutils chromium chromium-driver strace
    # The package may start a system etcd on 2379. Our tests use their own
    # members on random ports, but a stray service is not wanted either.
    systemctl stop etcd 2>/dev/null || service etcd stop 2>/dev/null || true
fi

# Everything Python lives in the checkout's .venv (scripts/venv.sh).
. scripts/venv.sh
ensure_venv test
# The rooms' import rules (pyproject.toml [tool.importlinter]) before any test.
.venv/bin/lint-imports --no-cache
exec "$VENV_PY" -m pytest -q "$@"
