#!/usr/bin/env bash
# The one run command: installs what a fresh Debian machine lacks, then runs one
# gateway on http://127.0.0.1:8080 with an embedded single-member etcd under ./.ipam.
# On first start it prints the admin secret key (kept in ./.ipam/admin_secret_key,
# mode 0600). Arguments go to `ipam serve` (--port, --data-dir, --etcd-endpoints, ...).
# Usage: scripts/run.sh [ipam serve flags...]   (from any directory, as root)
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

if ! command -v etcd >/dev/null 2>&1 && [ -z "${IPAM_ETCD_ENDPOINTS:-}" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y etcd-server etcd-client
    systemctl stop etcd 2>/dev/null || service etcd stop 2>/dev/null || true
fi

if ! python3 -c "import gateway.cli, aiohttp, aetcd, netaddr" >/dev/null 2>&1; then
    python3 -m pip install -q -e .
fi
exec python3 -m gateway.cli serve "$@"
