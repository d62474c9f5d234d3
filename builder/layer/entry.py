"""What a layer is made of: entries (files, dirs, links, devices) and deletions.

Paths are canonical: relative, ``/``-separated, no ``.`` or ``..`` components, no leading or
trailing slash (``usr/bin/env``). The tar writer adds the trailing ``/`` of directories.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import BinaryIO

Opener = Callable[[], BinaryIO]
"""Returns a fresh reader of a file's content each time it is called (go-containerregistry's Opener)."""


WH_PREFIX = ".wh."
WH_OPAQUE = ".wh..wh..opq"


class Kind(StrEnum):
    """The type of a filesystem entry."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"


@dataclass(frozen=True, slots=True)
class Entry:
    """An added or changed path with everything a layer records about it.

    ``mode`` holds permission bits only (07777: setuid, setgid, sticky included); the type is
    ``kind``. ``link`` is a symlink's target as written, or a hardlink's canonical target path
    in the same layer. ``content`` opens a regular file's bytes (exactly ``size`` of them).
    """

    path: str
    kind: Kind
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime: float = 0
    """Seconds since the epoch; a fraction where the source has one (PAX times): the tar writer
    writes whole seconds, clamped to the build epoch."""
    link: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()
    content: Opener | None = field(default=None, compare=False, repr=False)

    def meta(self) -> Entry:
        """The same entry without its content opener (for metadata trees)."""
        return Entry(self.path, self.kind, self.mode, self.uid, self.gid, self.size, self.mtime,
                     self.link, self.devmajor, self.devminor, self.xattrs)


@dataclass(frozen=True, slots=True)
class Whiteout:
    """``path`` (and everything under it) existed in a lower layer and is deleted."""

    path: str


@dataclass(frozen=True, slots=True)
class Opaque:
    """Directory ``path``'s lower-layer children are hidden (``.wh..wh..opq``)."""

    path: str


Change = Entry | Whiteout | Opaque


def canon(path: str) -> str:
    """Canonical form of an image path: ``/usr//bin/`` -> ``usr/bin``; ``/`` -> ``""``.

    Raises ValueError for a path that climbs above the root (``../x``): in a layer that is
    an escape, never something to clamp silently.
    """
    if not path:
        return ""
    depth = 0
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            depth -= 1
            if depth < 0:
                raise ValueError(f"path {path!r} escapes the root")
        else:
            depth += 1
    return posixpath.normpath("/" + path).lstrip("/")


def parents(path: str) -> list[str]:
    """Ancestors of a canonical path, outermost first: ``a/b/c`` -> ``["a", "a/b"]``."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def is_whiteout_name(name: str) -> bool:
    """True for a basename that is reserved for whiteouts (``.wh.*``), which no real file may use."""
    return name.startswith(WH_PREFIX)
