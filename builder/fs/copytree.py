"""A filesystem tree copied whole: what ``pybuild unpack`` does when the layers are already extracted.

The source is a read-only overlay of the layers' snapshots (:mod:`builder.cache.snapshots`), so
the copy is the image's filesystem as applying its layers makes it, without decompressing them
again. Every entry keeps what a layer can say about it: type, mode (setuid included), owner,
nanosecond mtime, xattrs (file capabilities included), symlink target, device numbers, and
hardlinks (by inode, within the tree). Nothing is followed: the source is read and the target
written through directory descriptors and ``O_NOFOLLOW``, so an image's ``etc -> /etc`` is copied
as a symlink and never leads out of either tree. Sockets are skipped, as a layer cannot hold them.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from builder.layer.xattrs import HOST_ARTEFACTS

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 30


@dataclass
class _State:
    root: int
    links: dict[tuple[int, int], str] = field(default_factory=dict)  # inode -> its first copy, relative


def copy_tree(source: Path, target: Path) -> None:
    """Copy everything below directory ``source`` into the empty directory ``target``, and the
    attributes of ``source`` itself onto ``target``."""
    src = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        dst = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _copy_dir(src, dst, "", _State(dst))
            _meta_fd(src, dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _copy_dir(src: int, dst: int, rel: str, state: _State) -> None:
    with os.scandir(src) as it:
        entries = [(de.name, de.stat(follow_symlinks=False)) for de in it]
    for name, st in entries:
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(name, 0o700, dir_fd=dst)
            s, d = os.open(name, _DIR, dir_fd=src), os.open(name, _DIR, dir_fd=dst)
            try:
                _copy_dir(s, d, f"{rel}{name}/", state)
                _meta_fd(s, d)
            finally:
                os.close(s)
                os.close(d)
        elif stat.S_ISREG(mode):
            _copy_file(src, dst, name, st, f"{rel}{name}", state)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
            _meta_name(src, dst, name, st)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            os.mknod(name, stat.S_IFMT(mode) | 0o600, st.st_rdev, dir_fd=dst)
            _meta_name(src, dst, name, st)


def _copy_file(src: int, dst: int, name: str, st: os.stat_result, rel: str, state: _State) -> None:
    key = (st.st_dev, st.st_ino)
    if st.st_nlink > 1 and key in state.links:
        os.link(state.links[key], name, src_dir_fd=state.root, dst_dir_fd=dst, follow_symlinks=False)
        return
    s = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src)
    try:
        d = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dst)
        try:
            left = st.st_size
            while left > 0:
                try:
                    n = os.copy_file_range(s, d, min(left, _CHUNK))
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    n = os.sendfile(d, s, None, min(left, _CHUNK))
                if n == 0:
                    break
                left -= n
            _meta_fd(s, d)
        finally:
            os.close(d)
    finally:
        os.close(s)
    if st.st_nlink > 1:
        state.links[key] = rel


def _xattrs(where: int | str) -> list[tuple[str, bytes]]:
    follow = isinstance(where, int)
    try:
        names = os.listxattr(where, follow_symlinks=follow)
        return [(n, os.getxattr(where, n, follow_symlinks=follow)) for n in names if not n.startswith(HOST_ARTEFACTS)]
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENODATA):
            return []
        raise


def _meta_fd(src: int, dst: int) -> None:
    """Owner, then mode (chown clears setuid), xattrs, times: from ``src`` onto ``dst`` (open fds)."""
    st = os.fstat(src)
    os.chown(dst, st.st_uid, st.st_gid)
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    for key, value in _xattrs(src):
        os.setxattr(dst, key, value)
    os.utime(dst, ns=(st.st_mtime_ns, st.st_mtime_ns))


def _meta_name(src: int, dst: int, name: str, st: os.stat_result) -> None:
    """The same for a symlink or a device node, by name, never followed."""
    os.chown(name, st.st_uid, st.st_gid, dir_fd=dst, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=dst)
    for key, value in _xattrs(f"/proc/self/fd/{src}/{name}"):
        os.setxattr(f"/proc/self/fd/{dst}/{name}", key, value, follow_symlinks=False)
    os.utime(name, ns=(st.st_mtime_ns, st.st_mtime_ns), dir_fd=dst, follow_symlinks=False)
