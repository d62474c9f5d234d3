"""The filesystem primitives that make outputs atomic and safe to share: locks, temp names, renames.

The layout lock is an ``flock`` on the directory itself (opened read-only), not a lock
file: a lock file would be an extra entry in the layout that other tools neither expect
nor clean up, and ``flock`` is released by the kernel when the process dies, so a killed
build never leaves a stale lock behind. Each call opens its own file description, so two
threads of one process exclude each other as two processes do.

Whatever a build keeps beside OUT (its work directory, a new layout or archive being written) is a
*private sibling* ``.OUTNAME.pybuild-KIND-PID-RANDOM`` that its process holds an ``flock`` on for as
long as it exists. A sibling whose lock can be taken belongs to a process that died (SIGKILL, power
loss), so the next build into the same place removes it. Creating a sibling and taking its lock, and
looking for dead ones, happen under a short ``flock`` on the parent directory, so a cleaner never
sees a sibling in the instant between its creation and its locking.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from builder.errors import IntegrityError, OutputError
from builder.oci.digest import Digest

TMP_PREFIX = ".tmp-"
_CHUNK = 1 << 20


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


def sibling_prefix(out: Path, kind: str = "") -> str:
    """The name prefix of ``out``'s private siblings (of one ``kind``: work, tmp; or of any kind)."""
    return f".{out.name}.pybuild-{kind}"


@contextlib.contextmanager
def _guard(directory: Path) -> Iterator[bool]:
    """Hold an ``flock`` on ``directory`` (True), or nothing if it cannot be opened or locked (False)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        fd = -1
    locked = False
    try:
        if fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX)
                locked = True
        yield locked
    finally:
        if fd >= 0:
            os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def remove_dead_siblings(out: Path) -> None:
    """Remove the private siblings of ``out`` whose processes are gone (their lock can be taken).

    Entries that cannot be opened or locked are left alone: a sibling is only removed when it is
    certain that nobody holds it. A live build's siblings are never touched.
    """
    parent, prefix = out.parent, sibling_prefix(out)
    dead: list[tuple[Path, int]] = []
    with _guard(parent) as guarded:
        if not guarded:
            return
        try:
            names = [n for n in os.listdir(parent) if n.startswith(prefix)]
        except OSError:
            return
        for name in names:
            try:
                fd = os.open(parent / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)  # held by a live process (or locks unsupported): not ours to remove
                continue
            dead.append((parent / name, fd))
    for path, fd in dead:  # outside the guard: holding their locks keeps other cleaners off them
        try:
            _remove(path)
        finally:
            os.close(fd)


@contextlib.contextmanager
def private_sibling(out: Path, kind: str, *, directory: bool, mode: int = 0o777) -> Iterator[Path]:
    """A new empty directory (or file) beside ``out``, locked by this process while the block runs.

    ``mode`` (less the umask) is the directory's; a file gets 0666 less the umask. Dead siblings
    of ``out`` are removed first. The sibling is removed when the block ends unless the block
    renamed it (to ``out``: a new layout or archive moving into place). Raises OSError when it
    cannot be created.
    """
    remove_dead_siblings(out)
    parent = out.parent
    with _guard(parent):
        path = tmp_path(parent, sibling_prefix(out, f"{kind}-"))
        if directory:
            path.mkdir(mode)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except OSError:
                path.rmdir()
                raise
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        with contextlib.suppress(OSError):  # no flock here (some network filesystems): never cleaned, never lost
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        yield path
    finally:
        try:
            _remove(path)
        finally:
            os.close(fd)


def tmp_path(directory: Path, prefix: str = TMP_PREFIX) -> Path:
    """A fresh, unpredictable name in ``directory``; created by the caller, so it gets the umask's mode."""
    return directory / f"{prefix}{os.getpid()}-{secrets.token_hex(8)}"


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: readers see the old content or the new, never a part."""
    tmp = tmp_path(path.parent)
    try:
        with open(tmp, "xb") as f:  # O_EXCL: never through a link planted at the name
            f.write(data)
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


class NotRegularFileError(OSError):
    """A path that must be a regular file is a FIFO, a device, a directory or a symbolic link."""


_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


def open_regular(path: Path, *, follow: bool = False) -> int:
    """A read-only fd on regular file ``path``; NotRegularFileError (an OSError) for anything else.

    Blobs, indexes and cache entries are read from directories others may write to. Opening a
    FIFO blocks until a writer comes and reading a device (``/dev/zero``) never ends, so the
    open never blocks (``O_NONBLOCK``), a symlink is refused unless ``follow`` (``O_NOFOLLOW``:
    a content-addressed file has no reason to be one), and the type is checked on the open fd,
    so nothing swapped in after a check is read.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS | (0 if follow else os.O_NOFOLLOW))
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            raise NotRegularFileError(errno.ELOOP, "a symbolic link, not a regular file", str(path)) from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegularFileError(errno.EINVAL, f"{_KIND.get(stat.S_IFMT(mode), 'special file')}, not a regular file",
                             str(path))
    return fd


_KIND = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
         stat.S_IFDIR: "a directory", stat.S_IFSOCK: "a socket"}


def read_regular(path: Path, limit: int, *, follow: bool = False) -> bytes:
    """The content of regular file ``path`` (see :func:`open_regular`), at most ``limit + 1`` bytes.

    A result longer than ``limit`` means the file is too large: the caller names the limit.
    """
    with os.fdopen(open_regular(path, follow=follow), "rb") as f:
        return f.read(limit + 1)


_FICLONE = 0x40049409  # ioctl(dst, FICLONE, src): <linux/fs.h>


def clone_file(src: Path, dst: Path, size: int | None) -> None:
    """New file ``dst`` with the content of regular file ``src``, never sharing its inode.

    A reflink where the filesystem has them (btrfs, XFS: instant, and the extents are copied on
    write, so damage to one copy never reaches the other), else ``copy_file_range`` (the kernel
    copies, no bytes through Python), else read/write. ``size``: what ``src`` must hold
    (IntegrityError otherwise); at most that much is copied, so a file that grows is no trap.
    """
    fi = open_regular(src)
    try:
        have = os.fstat(fi).st_size
        if size is not None and have != size:
            raise IntegrityError(f"{src}: {have} bytes, descriptor says {size}")
        fo = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        try:
            try:
                fcntl.ioctl(fo, _FICLONE, fi)
            except OSError:
                _copy_range(fi, fo, have)
            if os.fstat(fo).st_size != have:
                raise IntegrityError(f"{src}: changed while it was copied")
        finally:
            os.close(fo)
    finally:
        os.close(fi)


def _copy_range(fi: int, fo: int, size: int) -> None:
    """Copy ``size`` bytes from ``fi`` to ``fo`` (both at offset 0), in the kernel when it can."""
    done = 0
    while done < size:
        try:
            n = os.copy_file_range(fi, fo, size - done)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                raise
            n = _copy_some(fi, fo, size - done)
        if n == 0:
            break  # src got shorter: the caller's size check reports it
        done += n


def _copy_some(fi: int, fo: int, left: int) -> int:
    block = os.read(fi, min(left, _CHUNK))
    view = memoryview(block)
    while view:
        view = view[os.write(fo, view):]
    return len(block)


def copy_checked(src: Path, dst: Path, digest: Digest, size: int | None) -> None:
    """Copy ``src`` to new file ``dst``, hashing on the way; IntegrityError if it is not ``digest``.

    ``src`` must be a regular file (a FIFO or a device would never end); at most ``size + 1``
    bytes of it are read, enough to see that it is too long.
    """
    hasher = hashlib.new(digest.algorithm)
    n = 0
    with os.fdopen(open_regular(src), "rb") as fi, open(dst, "xb") as fo:
        while block := fi.read(_CHUNK if size is None else min(_CHUNK, size + 1 - n)):
            hasher.update(block)
            n += len(block)
            fo.write(block)
    if hasher.hexdigest() != digest.hex or (size is not None and n != size):
        actual = f"{digest.algorithm}:{hasher.hexdigest()}"
        raise IntegrityError(f"{src}: content is {actual} ({n} bytes), expected {digest}")
