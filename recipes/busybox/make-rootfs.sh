#!/usr/bin/env bash
# make-rootfs.sh [OUT]: a busybox root filesystem tarball (default rootfs.tar.gz) built from
# busybox-static, byte-for-byte the same on every run (GNU tar: sorted names, fixed times and
# owners, no atime/ctime; gzip -n: no name or time in the header).
set -euo pipefail

out=${1:-rootfs.tar.gz}
busybox=${BUSYBOX:-/bin/busybox}
if [ ! -x "$busybox" ]; then
    echo "make-rootfs.sh: $busybox not found; install it with: apt-get install busybox-static" >&2
    exit 1
fi

staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
umask 022

mkdir -p "$staging/bin" "$staging/etc" "$staging/root" "$staging/tmp"
cp "$busybox" "$staging/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$staging/bin/$applet"
done
printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'nobody:x:65534:65534:nobody:/:/bin/false' > "$staging/etc/passwd"
printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' > "$staging/etc/group"
chmod 0755 "$staging" "$staging/bin" "$staging/etc" "$staging/bin/busybox"
chmod 0644 "$staging/etc/passwd" "$staging/etc/group"
chmod 0700 "$staging/root"
chmod 1777 "$staging/tmp"

tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=pax \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$staging" -cf - . | gzip -9 -n > "$out.partial"
mv "$out.partial" "$out"
echo "make-rootfs.sh: wrote $out"
