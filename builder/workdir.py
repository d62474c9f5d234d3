"""Scratch space for a build, next to OUT so that finished blobs move in by rename.

The work directory is a private sibling of OUT (``.OUTNAME.pybuild-work-*``, see
``builder.fs.lock``): the build holds an ``flock`` on it for as long as it runs. A sibling
whose lock can be taken belongs to a build that died (SIGKILL, power loss): the next build into
the same place removes it, and with it whatever else dead builds left beside OUT (a new layout
or archive that never got renamed into place).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from builder.fs.lock import private_directory


@contextlib.contextmanager
def work_directory(out: Path) -> Iterator[Path]:
    """A locked, private work directory beside ``out``; removed when the build ends, however it ends."""
    with private_directory(out, "work", "a work directory") as path:
        yield path
