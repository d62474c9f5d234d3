#!/usr/bin/env bash
# make-rootfs.sh [OUT] [SUITE] [MIRROR]: a Debian root filesystem tarball for debian.yaml.
#
#   debootstrap --variant=minbase SUITE DIR MIRROR
#   tar --numeric-owner --xattrs -C DIR -cJf OUT .
#
# Defaults: OUT=rootfs.tar.xz, SUITE=bookworm, MIRROR=http://deb.debian.org/debian.
# Needs root (debootstrap creates device nodes and chowns files) and access to the mirror.
# xz uses all CPUs unless XZ_OPT says otherwise.
set -euo pipefail

out=${1:-rootfs.tar.xz}
suite=${2:-bookworm}
mirror=${3:-http://deb.debian.org/debian}

if [ "$(id -u)" != 0 ]; then
    echo "make-rootfs.sh: debootstrap needs root" >&2
    exit 1
fi
for tool in debootstrap xz tar; do
    if ! command -v "$tool" > /dev/null && [ ! -x "/usr/sbin/$tool" ]; then
        echo "make-rootfs.sh: $tool not found (apt-get install debootstrap xz-utils)" >&2
        exit 1
    fi
done
PATH=$PATH:/usr/sbin:/sbin

dir=$(mktemp -d)
cleanup() {
    # debootstrap mounts /proc and /sys in the target; never delete through a mount.
    awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo \
        | sort -r | while read -r m; do umount -l "$m" || true; done
    rm -rf --one-file-system "$dir"
    rm -f "$out.partial"
}
trap cleanup EXIT

debootstrap --variant=minbase "$suite" "$dir" "$mirror"
# Drop what only the bootstrap needed: downloaded .debs and the apt lists.
rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*_*

XZ_OPT=${XZ_OPT:--T0} tar --numeric-owner --xattrs -C "$dir" -cJf "$out.partial" .
mv "$out.partial" "$out"
echo "make-rootfs.sh: wrote $out ($suite from $mirror)"
