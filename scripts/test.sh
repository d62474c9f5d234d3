#!/usr/bin/env bash
# Run the whole test suite. As root on Debian/Ubuntu it first installs every tool the end-to-end
# tests drive (skopeo, umoci, runc, podman, containerd, docker-registry, ...); otherwise it says
# which are missing and, with PYBUILD_SKIP_DEBS=1, goes on (their tests skip locally; on CI,
# where CI is set, a missing tool fails its test). Makes ./.venv; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

need_debs ca-certificates tar gzip xz-utils zstd bzip2 util-linux python3-venv \
    skopeo umoci runc podman containerd buildah busybox-static docker-registry debootstrap openssl \
    gcc libc6-dev libseccomp2 uidmap oci-image-tool
python=$(venv "[test]")
exec "$python" -m pytest -q "$@"
