#!/usr/bin/env bash
# build.sh: make the busybox rootfs tarball, then build the image into out/ (an OCI layout).
#
# Uses `pybuild` from PATH, else `python3 -m builder`; set PYBUILD to choose another
# command (e.g. PYBUILD="python3 -m builder").
set -euo pipefail
cd "$(dirname "$0")"

./make-rootfs.sh rootfs.tar.gz

if [ -n "${PYBUILD:-}" ]; then
    read -r -a pybuild <<< "$PYBUILD"
elif command -v pybuild > /dev/null; then
    pybuild=(pybuild)
else
    pybuild=(python3 -m builder)
fi

"${pybuild[@]}" pybuild.yaml -o out/ -t hello:latest

cat <<'TXT'

Built the image "hello:latest" into out/ (an OCI image layout). To run it (as root):

    ./run.sh

which does:

    umoci unpack --image out:hello:latest BUNDLE    # rootfs/ + config.json
    # set "terminal": false in BUNDLE/config.json (no tty needed)
    runc run --bundle BUNDLE hello

Or look at it:  pybuild inspect out:hello:latest    skopeo inspect oci:out:hello:latest
TXT
