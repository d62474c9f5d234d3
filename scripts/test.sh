#!/usr/bin/env bash
# Run the whole test suite. As root on Debian/Ubuntu it first installs every tool the end-to-end
# tests drive (skopeo, umoci, runc, podman, containerd, docker-registry, ...); otherwise it says
# which are missing and, with PYBUILD_SKIP_DEBS=1, goes on (their tests skip locally; on CI,
# where CI is set, a missing tool fails its test). Makes ./.venv. Without arguments: the whole suite,
# then the run-step tests again on fuse-overlayfs and on the copy driver; with arguments, pytest with just those.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

need_debs ca-certificates tar gzip xz-utils zstd bzip2 util-linux python3-venv \
    skopeo umoci runc podman containerd buildah busybox-static docker-registry debootstrap openssl \
    gcc libc6-dev libseccomp2 uidmap oci-image-tool fuse-overlayfs
python=$(venv "[test]")
if [ "$#" -gt 0 ]; then
    exec "$python" -m pytest -q "$@"
fi
"$python" -m pytest -q
# Run steps use the kernel's overlayfs wherever it can be mounted (as root, always): their tests run
# again on fuse-overlayfs and on the copy driver, which other machines use.
run_step_tests=(tests/e2e/test_run.py tests/e2e/test_secrets.py tests/e2e/test_stages.py
                tests/attacks/test_sandbox_attacks.py tests/unit/steps tests/unit/test_stage.py)
if [ "$(id -u)" -eq 0 ] && command -v fuse-overlayfs > /dev/null && [ -c /dev/fuse ]; then
    echo "--- the run-step tests again, on fuse-overlayfs (PYBUILD_RUN_DRIVER=fuse-overlayfs)"
    PYBUILD_RUN_DRIVER=fuse-overlayfs "$python" -m pytest -q "${run_step_tests[@]}"
else
    echo "--- (not root, or no fuse-overlayfs and /dev/fuse: the run-step tests do not run on fuse-overlayfs)"
fi
echo "--- the run-step tests again, on the copy driver (PYBUILD_RUN_DRIVER=copy)"
PYBUILD_RUN_DRIVER=copy exec "$python" -m pytest -q "${run_step_tests[@]}" tests/e2e/test_rootless.py
