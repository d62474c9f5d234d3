#!/usr/bin/env bash
# Build the bundled example (examples/hello) offline into examples/hello/out/, check it, and run
# it with runc when this is root and runc and umoci are there. Works on a fresh Debian 12/Ubuntu:
# installs python3-venv and busybox-static as root (else says the sudo command), makes ./.venv.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

need_debs python3-venv busybox-static
python=$(venv "")
PYBUILD="$python -m builder" examples/hello/build.sh
if [ "$(id -u)" -eq 0 ] && command -v runc > /dev/null && command -v umoci > /dev/null; then
    examples/hello/run.sh
else
    echo "(to run it: as root with umoci and runc installed, examples/hello/run.sh)"
fi
