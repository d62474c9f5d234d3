#!/usr/bin/env bash
# Run the whole test suite. As root on Debian/Ubuntu it first installs every tool the end-to-end
# tests drive (skopeo, umoci, runc, podman, containerd, docker-registry, ...); otherwise it says
# which are missing and, with PYBUILD_SKIP_DEBS=1, goes on (their tests skip locally; on CI,
# where CI is set, a missing tool fails its test). Makes ./.venv. Without arguments: the whole suite,
# then the run-step tests again on the copy driver; with arguments, pytest with just those.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

need_debs ca-certificates tar gzip xz-utils zstd bzip2 util-linux python3-venv \
    skopeo umoci runc podman containerd buildah busybox-static docker-registry debootstrap openssl \
    gcc libc6-dev libseccomp2 uidmap oci-image-tool
python=$(venv "[test]")
if [ "$#" -gt 0 ]; then
    exec "$python" -m pytest -q "$@"
fi
"$python" -m pytest -q
# Run steps use the overlay driver wherever the kernel allows it (as root, always): their tests run
# once more on the copy driver, which machines without overlayfs use.
echo "--- the run-step tests again, on the copy driver (PYBUILD_RUN_DRIVER=copy)"
PYBUILD_RUN_DRIVER=copy exec "$python" -m pytest -q tests/e2e/test_run.py tests/e2e/test_secrets.py \
    tests/e2e/test_stages.py tests/e2e/test_rootless.py tests/attacks/test_sandbox_attacks.py \
    tests/unit/steps tests/unit/test_stage.py
