"""Filesystem atomics: files that appear whole or not at all, and reads and copies that cannot be tricked.

Outputs, cache entries, downloaded blobs and credentials all live in directories that other
processes read while pybuild writes, that concurrent builds share, or that a user (or an attacker
with a shared ``/tmp``) can plant names in. So every such file is written the same way: a new
file with an unpredictable name beside the target, created with ``O_EXCL | O_NOFOLLOW`` (never
through a link planted at a name), then renamed over the target once complete, and removed if
anything fails on the way (:func:`atomic_file`, :func:`write_atomic`; :func:`atomic_path` when
something else creates the file, a clone say). A reader sees the old content or the new, never a
part; a killed writer leaves only a dot-named temp that the directory's owner cleans up.

Reads of files others may write to go through :func:`open_regular`: a FIFO or a device planted
there would block or never end. Copies that must be a given blob go through
:func:`copy_verified`, which hashes what it copies and reads no more than the size it expects
(+1, to see that there is more).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import secrets
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Literal, Protocol, runtime_checkable

from builder.errors import IntegrityError, OutputError
from builder.oci.digest import Digest, HashingWriter, Writable

TMP_PREFIX = ".tmp-"
CHUNK = 1 << 20


def tmp_path(directory: Path, prefix: str = TMP_PREFIX) -> Path:
    """A fresh, unpredictable name in ``directory``; created by the caller."""
    return directory / f"{prefix}{os.getpid()}-{secrets.token_hex(8)}"


def masked(mode: int) -> int:
    """``mode`` less the process's umask: what a plain ``open`` would give, for files set explicitly."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def new_file(path: Path, mode: int | None = None) -> int:
    """A write-only fd on new file ``path`` (never through a link there).

    ``mode`` is set explicitly, so neither the umask nor a default ACL changes it (0600 for
    credentials, :func:`masked` bits for outputs others read); None gives what a plain ``open``
    gives, 0666 less the umask.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o666 if mode is None else 0o600)
    if mode is not None:
        try:
            os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
    return fd


@contextlib.contextmanager
def atomic_path(path: Path, prefix: str = TMP_PREFIX) -> Iterator[Path]:
    """A fresh name beside ``path`` for the block to create; renamed over ``path`` when the block
    ends, removed if it raises (to refuse a file it made, the block raises)."""
    tmp = tmp_path(path.parent, prefix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_file(path: Path, mode: int | None = None, prefix: str = TMP_PREFIX) -> Iterator[BinaryIO]:
    """A new file to write ``path``'s content to; it replaces ``path`` once the block ends (see
    :func:`new_file` for ``mode``). Raises OSError."""
    with atomic_path(path, prefix) as tmp, os.fdopen(new_file(tmp, mode), "wb") as f:
        yield f


def write_atomic(path: Path, data: bytes, mode: int | None = None, prefix: str = TMP_PREFIX) -> None:
    """Replace ``path`` with ``data``: readers see the old content or the new, never a part."""
    with atomic_file(path, mode, prefix) as f:
        f.write(data)


def write_file(path: Path, data: bytes, mode: int | None = None) -> None:
    """:func:`write_atomic` for a file the user named (``--digest-file``, an auth file): its temp is
    named after it, and a failure is the one line the user sees."""
    try:
        write_atomic(path, data, mode, prefix=f".{path.name}.tmp-")
    except OSError as exc:
        raise OutputError(f"cannot write {str(path)!r}: {exc.strerror}") from exc


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


_FICLONE = 0x40049409  # ioctl(dst, FICLONE, src): the kernel's reflink request


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
        fo = new_file(dst)
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
    block = os.read(fi, min(left, CHUNK))
    view = memoryview(block)
    while view:
        view = view[os.write(fo, view):]
    return len(block)


@runtime_checkable
class Readable(Protocol):
    """A file, or anything else read in bounded blocks (a decompressor, a HashingReader)."""

    def read(self, n: int, /) -> bytes: ...


def copy_hashed(source: Readable | Iterable[bytes], out: Writable | None, algorithm: str = "sha256",
                cap: int | None = None) -> HashingWriter:
    """Copy ``source`` (a file, or the blocks of an HTTP body) to ``out`` (None: only hash it).

    With ``cap``, a file is read no further than ``cap + 1`` bytes and blocks stop once more than
    ``cap`` came, so that whoever asks sees there is more without reading on for ever.
    """
    hashed = HashingWriter(out, algorithm)
    if isinstance(source, Readable):
        while block := source.read(CHUNK if cap is None else min(CHUNK, cap + 1 - hashed.size)):
            hashed.write(block)
        return hashed
    for block in source:
        hashed.write(block)
        if cap is not None and hashed.size > cap:
            break
    return hashed


class ContentMismatchError(IntegrityError):
    """What :func:`copy_verified` copied is not what was expected; callers that name the source
    their own way (a registry blob, a ``fetch:`` URL) translate it."""

    def __init__(self, kind: Literal["larger", "size", "digest"], actual: Digest, count: int, expected: Digest,
                 size: int | None) -> None:
        super().__init__(f"content is {actual} ({count} bytes), expected {expected}")
        self.kind, self.actual, self.count, self.expected, self.size = kind, actual, count, expected, size


def copy_verified(source: Readable | Iterable[bytes], out: Writable | None, digest: Digest, size: int | None = None,
                  *, limit: int | None = None) -> int:
    """Copy ``source`` to ``out`` (None: only check it); the bytes copied, which are ``digest``.

    ContentMismatchError otherwise: ``"larger"`` as soon as more than ``size`` (or ``limit``) bytes came,
    ``"size"`` if fewer than ``size`` did, ``"digest"`` if the content hashes to something else.
    """
    cap = size if size is not None else limit
    copied = copy_hashed(source, out, digest.algorithm, cap)
    actual = copied.digest()
    if cap is not None and copied.size > cap:
        raise ContentMismatchError("larger", actual, copied.size, digest, size)
    if size is not None and copied.size != size:
        raise ContentMismatchError("size", actual, copied.size, digest, size)
    if actual != digest:
        raise ContentMismatchError("digest", actual, copied.size, digest, size)
    return copied.size


def copy_checked(src: Path, dst: Path, digest: Digest, size: int | None) -> None:
    """Copy ``src`` to new file ``dst``, hashing on the way; IntegrityError if it is not ``digest``.

    ``src`` must be a regular file (a FIFO or a device would never end); at most ``size + 1``
    bytes of it are read, enough to see that it is too long.
    """
    with os.fdopen(open_regular(src), "rb") as fi, os.fdopen(new_file(dst), "wb") as fo:
        try:
            copy_verified(fi, fo, digest, size)
        except ContentMismatchError as exc:
            raise IntegrityError(f"{src}: {exc}") from None
