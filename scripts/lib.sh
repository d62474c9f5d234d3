# Shared by scripts/example.sh and scripts/test.sh: Debian packages and the virtualenv.
# Debian 12's python3 is "externally managed" (PEP 668): pybuild goes into ./.venv, never into
# the system's site-packages.

# need_debs PKG...: install the Debian packages that are missing (as root), else say how and stop.
need_debs() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -eq 0 ] && command -v apt-get > /dev/null; then
        echo "installing Debian packages: ${missing[*]}" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" > /dev/null
    elif [ "${PYBUILD_SKIP_DEBS:-}" = 1 ]; then
        echo "note: not installed: ${missing[*]} (tests that need them skip)" >&2
    else
        echo "needs: sudo apt-get install -y ${missing[*]}" >&2
        echo "(or run this script as root, which installs them; PYBUILD_SKIP_DEBS=1 goes on without them)" >&2
        exit 1
    fi
}

# venv EXTRA: ./.venv with pybuild installed editable (EXTRA: "" or "[test]"); prints its python.
venv() {
    if [ ! -x .venv/bin/python3 ]; then
        python3 -m venv .venv >&2
    fi
    .venv/bin/python3 -m pip install -q -e ".$1" >&2
    echo "$PWD/.venv/bin/python3"
}
