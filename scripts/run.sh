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

# Everything Python lives in the checkout's .venv (scripts/venv.sh); the `ipam`
# command is .venv/bin/ipam.
. scripts/venv.sh
ensure_venv

# Serve from where the user stands: ./.ipam is theirs.
cd "$ORIG_PWD"
exec "$VENV_PY" -m gateway.cli serve "$@"
