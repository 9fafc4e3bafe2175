# Sourced by run.sh and test.sh: the checkout's own virtual environment, .venv.
#
# Debian's /usr/bin/python3 refuses `pip install` outside a virtual environment
# (PEP 668), so nothing is installed into the system Python: the first python3 on
# PATH (3.11 or newer) makes .venv, with Debian's python3-venv installed first when its
# venv module is missing. The package is (re)installed when pyproject.toml changed.
# Usage: ensure_venv [extras]      e.g. ensure_venv test   ->  $VENV_PY is set

ensure_venv() {
    local extras=${1:-} python stamp want
    python=$(command -v python3) || { echo "python3 is not installed" >&2; exit 1; }
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "$python is $("$python" --version 2>&1); ipam needs Python 3.11 or newer" >&2
        exit 1
    fi
    if [ ! -x .venv/bin/python ]; then
        if ! "$python" -m venv .venv >/dev/null 2>&1; then
            rm -rf .venv
            DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv \
                || { apt-get update && DEBIAN_FRONTEND=noninteractive \
                     apt-get install -y python3-venv; }
            "$python" -m venv .venv
        fi
    fi
    VENV_PY=$PWD/.venv/bin/python
    # One stamp per set of extras; the test extras include everything the base needs.
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    stamp=.venv/.ipam-installed-${extras:-base}
    if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] || { [ -z "$extras" ] \
            && [ "$(cat .venv/.ipam-installed-test 2>/dev/null)" = "$want" ]; }; then
        return 0
    fi
    "$VENV_PY" -m pip install -q --upgrade pip
    "$VENV_PY" -m pip install -q -e ".${extras:+[$extras]}"
    echo "$want" > "$stamp"
}
