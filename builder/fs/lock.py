"""The locks that make outputs safe to share: the layout lock, and private siblings beside OUT.

Temp names, atomic writes and renames are :mod:`builder.fs.atomic`'s. These live beside them, not
in ``builder.layout``, because the archive writer and the build's work directory (``builder.workdir``)
keep private siblings too.

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
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from builder.errors import OutputError
from builder.fs.atomic import tmp_path


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


@contextlib.contextmanager
def private_directory(out: Path, kind: str, what: str) -> Iterator[Path]:
    """A private (0700) :func:`private_sibling` directory of ``out``, its parents made first; a
    failure to make it is an OutputError naming ``what`` (``a work directory``, ``a bundle``)."""
    with contextlib.ExitStack() as stack:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            path = stack.enter_context(private_sibling(out, kind, directory=True, mode=0o700))
        except OSError as exc:
            raise OutputError(f"cannot create {what} beside {str(out)!r}: {exc.strerror}") from exc
        yield path
