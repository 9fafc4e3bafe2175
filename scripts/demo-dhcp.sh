#!/usr/bin/env bash
# Watch a machine boot from IPAM, in network namespaces of its own (run as root):
# etcd, a gateway and `ipam dhcp` in a lab namespace; a machine namespace gets the IP
# that IPAM attached to its MAC through Debian's dhclient, and resolves its name with
# dig. Nothing touches this machine's interfaces; everything is removed at the end.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

if ! { command -v etcd && command -v ip && command -v dhclient && command -v dig; } \
        >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y etcd-server iproute2 isc-dhcp-client bind9-dnsutils
    systemctl stop etcd 2>/dev/null || service etcd stop 2>/dev/null || true
fi
. scripts/venv.sh
ensure_venv
exec "$VENV_PY" -m devcluster.dhcp_demo
