"""The sandbox's child: runs inside the new namespaces, as ``python -m builder.sandbox.child SPEC_JSON``.

What needs code rather than ``unshare`` flags: mounts ``/proc``, a minimal ``/dev`` (null, zero,
full, random, urandom, tty bound from the host; a private devpts; ``/dev/shm``), the host's
``resolv.conf``/``hosts`` read-only for ``network: host``, secrets and caches; brings loopback up
in a fresh network namespace; ``pivot_root``s into the rootfs; confines itself
(:mod:`builder.confine`); drops to the step's user; and ``exec``s the shell.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import platform
import shutil
import socket
import struct
import sys

from builder import confine
from builder.fs.syscalls import (
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    libc,
    mount,
)
from builder.sandbox.spec import Bind, Copy, RunSpec, spec_from_json
from builder.userns import in_user_namespace

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217, "armv7l": 218}



def _bind(source: str, target: str, readonly: bool, nodev: bool = False) -> None:
    mount(source, target, None, MS_BIND | MS_REC)
    if readonly or nodev:
        extra = (MS_RDONLY if readonly else 0) | MS_NOSUID | MS_NODEV
        mount(None, target, None, MS_REMOUNT | MS_BIND | extra | _locked_flags(target))


#: statvfs f_flag bits -> the mount flags a remount must repeat (inside a user namespace the kernel
#: refuses a remount that would clear a flag the outer mount had: it is locked).
_STATVFS_TO_MS = {os.ST_RDONLY: MS_RDONLY, os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV,
                  os.ST_NOEXEC: MS_NOEXEC, os.ST_NOATIME: 1024, os.ST_NODIRATIME: 2048, os.ST_RELATIME: 1 << 21}


def _locked_flags(path: str) -> int:
    have = os.statvfs(path).f_flag
    return sum(ms for st, ms in _STATVFS_TO_MS.items() if have & st)


def _confine_proc(root: str) -> None:
    """Mask and write-protect the /proc and /sys paths runc masks (``confine.MASKED_PATHS``...)."""
    for rel in confine.MASKED_PATHS:
        path = f"{root}/{rel}"
        if os.path.isdir(path) and not os.path.islink(path):
            mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0k,mode=555")
        elif os.path.exists(path) and not os.path.islink(path):
            _bind("/dev/null", path, readonly=False)
    for rel in confine.READONLY_PATHS:
        path = f"{root}/{rel}"
        if os.path.exists(path) and not os.path.islink(path):
            mount(path, path, None, MS_BIND | MS_REC)
            mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
                   | _locked_flags(path))


def _copy_in(copy: Copy, root: str) -> None:
    """A secret as a copy on the private tmpfs: nothing the command does can reach the host file."""
    target = f"{root}/{copy.target}"
    with open(copy.source, "rb") as src, open(target, "xb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.chmod(target, 0o444)


def _loopback_up() -> None:
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, siocgifflags, ifreq))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


def _setup_dev(root: str) -> None:
    dev = f"{root}/dev"
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=65536k")
    for name in DEVICES:
        path = f"{dev}/{name}"
        with open(path, "w"):
            pass
        with contextlib.suppress(OSError):
            _bind(f"/dev/{name}", path, False)
    os.mkdir(f"{dev}/pts")
    with contextlib.suppress(OSError):
        mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
    os.symlink("pts/ptmx", f"{dev}/ptmx")
    os.mkdir(f"{dev}/shm")
    mount("shm", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")


def _enter_root(root: str) -> None:
    mount(root, root, None, MS_BIND | MS_REC)
    # nodev: a device node in the image (a hostile base's block device, or one a command makes) can be
    # created and kept in a layer, never opened. Inside a user namespace no device can be made anyway.
    try:
        mount(None, root, None, MS_REMOUNT | MS_BIND | MS_NODEV | _locked_flags(root))
    except OSError:
        if os.getuid() == 0 and not in_user_namespace():
            raise
    os.chdir(root)
    number = _PIVOT_ROOT.get(platform.machine())
    if number is not None and libc.syscall(number, b".", b".") == 0:
        if libc.umount2(b".", MNT_DETACH) != 0:
            raise OSError(ctypes.get_errno(), "umount old root")
    else:
        os.chroot(".")
    os.chdir("/")


def _checked_source(bind: Bind) -> str:
    if bind.checked_fd < 0:
        return bind.source
    directory = os.O_DIRECTORY if bind.is_dir else 0
    fd = os.open(bind.source, os.O_PATH | directory | os.O_NOFOLLOW)  # stays open until exec (cloexec)
    got, want = os.fstat(fd), os.fstat(bind.checked_fd)
    if (got.st_dev, got.st_ino) != (want.st_dev, want.st_ino):
        raise OSError(errno.ESTALE, f"{bind.source} was replaced while being mounted")
    return f"/proc/self/fd/{fd}"


def child(spec: RunSpec) -> None:
    """Inside the namespaces: mounts, root switch, confinement, user switch, exec. Never returns."""
    root = spec.rootfs
    seccomp = confine.Filter.build()  # libseccomp is loaded from the host, before the root switch
    last_cap = confine.last_cap()
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    with contextlib.suppress(OSError):
        mount("sysfs", f"{root}/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _setup_dev(root)
    if spec.confined:
        _confine_proc(root)
    for rel in spec.tmpfs:
        mount("tmpfs", f"{root}/{rel}", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755,size=65536k")
    for copy in spec.copies:
        _copy_in(copy, root)
    for rel in spec.tmpfs:
        mount(None, f"{root}/{rel}", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
               "mode=755,size=65536k")
    for rel in spec.scratch:
        mount("tmpfs", f"{root}/{rel}", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for bind in spec.binds:
        target = f"{root}/{bind.target}"
        if not bind.is_dir and not os.path.exists(target):
            with open(target, "w"):
                pass  # a file mount point inside a tmpfs made just now
        _bind(_checked_source(bind), target, bind.readonly, bind.nodev)
    if spec.network == "none":
        _loopback_up()
    with contextlib.suppress(OSError):
        socket.sethostname("pybuild")
    _enter_root(root)
    try:
        os.chdir(spec.workdir)
    except OSError as exc:
        raise SystemExit(f"pybuild-sandbox: cannot enter workdir {spec.workdir}: {exc.strerror}") from exc
    os.umask(0o022)  # what a step creates must not depend on the umask pybuild was started with
    if spec.confined:
        confine.drop_capabilities(last_cap)
    try:
        os.setgroups(spec.groups)
    except PermissionError:
        # a user namespace with a single mapping denies setgroups: fine unless real groups were asked
        if set(spec.groups) - {spec.gid}:
            raise
    os.setgid(spec.gid)
    os.setuid(spec.uid)
    if spec.confined:
        confine.no_new_privs()
        seccomp.load()
    sys.stdout.flush()
    try:
        os.execve(spec.argv[0], spec.argv, spec.env)
    except OSError as exc:
        hint = " (a binary for another architecture?)" if exc.errno == errno.ENOEXEC else ""
        sys.stderr.write(f"pybuild-sandbox: cannot execute {spec.argv[0]}: {exc.strerror}{hint}\n")
        sys.stderr.flush()
        os._exit(127)


if __name__ == "__main__":
    try:
        child(spec_from_json(sys.argv[1]))
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"pybuild-sandbox: {exc}\n")
        sys.exit(126)
