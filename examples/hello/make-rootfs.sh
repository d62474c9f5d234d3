#!/usr/bin/env bash
# make-rootfs.sh [OUT]: the busybox root filesystem tarball of recipes/busybox (default
# rootfs.tar.gz), byte-for-byte the same on every run. One script serves both.
set -euo pipefail
exec "$(dirname "$0")/../../recipes/busybox/make-rootfs.sh" "$@"
