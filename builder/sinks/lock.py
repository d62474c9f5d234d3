"""The filesystem primitives that make outputs atomic and safe to share: locks, temp names, renames.

The layout lock is an ``flock`` on the directory itself (opened read-only), not a lock
file: a lock file would be an extra entry in the layout that other tools neither expect
nor clean up, and ``flock`` is released by the kernel when the process dies, so a killed
build never leaves a stale lock behind. Each call opens its own file description, so two
threads of one process exclude each other as two processes do.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from builder.errors import IntegrityError, OutputError
from builder.oci.digest import Digest

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def locked_dir(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on directory ``path`` for the duration of the block.

    Blocks until any other holder (thread or process) is done.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise OutputError(f"{path}: cannot open the layout directory to lock it: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise OutputError(f"{path}: cannot lock the layout directory: {exc.strerror}") from exc
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def tmp_path(directory: Path, prefix: str = TMP_PREFIX) -> Path:
    """A fresh, unpredictable name in ``directory``; created by the caller, so it gets the umask's mode."""
    return directory / f"{prefix}{os.getpid()}-{secrets.token_hex(8)}"


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: readers see the old content or the new, never a part."""
    tmp = tmp_path(path.parent)
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename that fails with FileExistsError if ``dst`` exists, even as an empty directory.

    Plain rename(2) silently replaces an empty directory, possibly one another build has
    just created and locked; Linux's renameat2(RENAME_NOREPLACE) closes that window. Where
    that call is missing, a check-then-rename is the best available.
    """
    func = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if func is not None:
        at_fdcwd, noreplace = -100, 1
        if func(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), noreplace) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err), str(dst))
    if dst.exists() or dst.is_symlink():
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    src.rename(dst)


def copy_checked(src: Path, dst: Path, digest: Digest, size: int | None) -> None:
    """Copy ``src`` to new file ``dst``, hashing on the way; IntegrityError if it is not ``digest``."""
    hasher = hashlib.new(digest.algorithm)
    n = 0
    with open(src, "rb") as fi, open(dst, "xb") as fo:
        while block := fi.read(1 << 20):
            hasher.update(block)
            n += len(block)
            fo.write(block)
    if hasher.hexdigest() != digest.hex or (size is not None and n != size):
        actual = f"{digest.algorithm}:{hasher.hexdigest()}"
        raise IntegrityError(f"{src}: content is {actual} ({n} bytes), expected {digest}")
