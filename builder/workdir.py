"""Scratch space for a build, next to OUT so that finished blobs move in by rename.

Each build holds an exclusive ``flock`` on a file in its work directory for as long as it runs.
A directory whose lock can be taken belongs to a build that died (SIGKILL, power loss): the
next build into the same place removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from builder.errors import OutputError

_LOCK = ".lock"


def _prefix(out: Path) -> str:
    return f".{out.name}.pybuild-work-"


def clean_stale(out: Path) -> None:
    """Remove work directories of dead builds into ``out``."""
    parent = out.parent
    try:
        names = [n for n in os.listdir(parent) if n.startswith(_prefix(out))]
    except OSError:
        return
    for name in names:
        path = parent / name
        try:
            fd = os.open(path / _LOCK, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live build
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


@contextlib.contextmanager
def work_directory(out: Path) -> Iterator[Path]:
    """A locked, private work directory beside ``out``; removed when the build ends, however it ends."""
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        clean_stale(out)
        path = Path(tempfile.mkdtemp(prefix=_prefix(out), dir=parent))
    except OSError as exc:
        raise OutputError(f"cannot create a work directory next to {str(out)!r}: {exc.strerror}") from exc
    fd = os.open(path / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)
