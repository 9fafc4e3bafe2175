#!/usr/bin/env bash
# The one run command: installs what a fresh Debian machine lacks, then runs ipam.
# Usage: scripts/run.sh   (from any directory, as root)
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

if ! command -v etcd >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y etcd-server etcd-client
    systemctl stop etcd 2>/dev/null || service etcd stop 2>/dev/null || true
fi

python3 -m pip install -q -e .
exec python3 -m allocator "$@"
