#!/usr/bin/env bash
# The one run command: installs what a fresh Debian machine lacks, then runs one
# gateway on http://127.0.0.1:8080 with an embedded single-member etcd under ./.ipam
# of the directory it is called from, where `ipam keys ...` run later looks too.
# On first start it prints the admin secret key (kept in ./.ipam/admin_secret_key,
# mode 0600). Arguments go to `ipam serve` (--port, --data-dir, --etcd-endpoints, ...).
# Usage: scripts/run.sh [ipam serve flags...]   (from any directory, as root)
set -euo pipefail

ORIG_PWD=$PWD
REPO=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/..
REPO=$(cd "$REPO" && pwd)
cd "$REPO"

if ! command -v etcd >/dev/null 2>&1 && [ -z "${IPAM_ETCD_ENDPOINTS:-}" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y etcd-server etcd-client
    systemctl stop etcd 2>/dev/null || service etcd stop 2>/dev/null || true
fi

# Checked from outside the repo, so that the import proves an install (which also
# provides the `ipam` command), not merely the current directory.
if ! (cd / && python3 -c "import gateway.cli, aiohttp, aetcd, netaddr") >/dev/null 2>&1 \
        || ! command -v ipam >/dev/null 2>&1; then
    python3 -m pip install -q -e .
fi

# Serve from where the user stands: ./.ipam is theirs. PYTHONPATH keeps this
# checkout's code in use whatever another install says.
cd "$ORIG_PWD"
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" exec python3 -m gateway.cli serve "$@"
