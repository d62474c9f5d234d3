"""The cache directory on disk: where each part lives, and the reads every part shares.

Under the cache directory::

    layers/entries/<key>.json     {"digest", "diff_id", "size", "uncompressed_size", "media_type"} or {"empty": true}
    layers/blobs/sha256/<hex>     the compressed layer, exactly as first built
    layers/shapes/<shape>         (empty) some entry was stored for a step of this shape
    layers/decoded/<hex>          {"diff_id", "uncompressed_size", "media_type"}: what blob <hex> was
                                  found to decompress to (builder.cache.verify), once per blob
    mounts/<key>/                 a run step's ``cache:`` mount (builder.steps.run)
    blobs/<alg>/<hex>             the registry blob store (builder.blobstore)

The store, the listing and prune all read these, and a cache shared by concurrent builds and
by whoever can write to it may hold anything: so the paths are named once, here, and an entry
is read only one way, from a regular file of bounded size.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from builder.fs.atomic import read_regular
from builder.oci.canonical import json_object

MAX_ENTRY = 64 << 10
"""An entry is a few hundred bytes; anything larger than this is not one (a miss, removed)."""


class CacheDir:
    """Every part of the cache is found through one of these, so no two readers can disagree on where it is."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.entries = root / "layers" / "entries"
        self.blobs = root / "layers" / "blobs" / "sha256"
        self.shapes = root / "layers" / "shapes"
        self.decoded = root / "layers" / "decoded"

    @property
    def mounts(self) -> Path:
        """Where run steps' ``cache:`` mounts live (``CACHE/mounts/KEY``, see builder.steps.run)."""
        return self.root / "mounts"

    @property
    def snapshots(self) -> Path:
        """Where layers are kept extracted for overlay run steps (``CACHE/snapshots``, builder/cache/snapshots.py)."""
        return self.root / "snapshots"

    def entry_files(self) -> Iterable[Path]:
        return self.entries.glob("*.json") if self.entries.is_dir() else []

    def blob_files(self) -> list[Path]:
        return [p for p in self.blobs.iterdir() if not p.name.startswith(".")] if self.blobs.is_dir() else []

    def store_files(self, *, temporary: bool = False) -> list[Path]:
        """The blob store's blobs (``temporary``: its downloads in progress or left over, ``.*``)."""
        top = self.root / "blobs"
        if not top.is_dir():
            return []
        return [p for alg in top.iterdir() if alg.is_dir() and not alg.is_symlink()
                for p in alg.iterdir() if p.name.startswith(".") == temporary]


def read_entry(path: Path) -> dict[str, Any]:
    """An entry's JSON object; only from a regular file of at most :data:`MAX_ENTRY` bytes."""
    data = read_regular(path, MAX_ENTRY)
    if len(data) > MAX_ENTRY:
        raise ValueError("too large for a cache entry")
    return json_object(data)


def size_of(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0


def tree_size(root: Path) -> int:
    """Bytes of the regular files under ``root``, links not followed, each inode counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for top, _dirs, files in os.walk(root):
        for name in files:
            try:
                st = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def unlink(path: Path) -> int:
    """1 if ``path`` was removed, else 0."""
    try:
        path.unlink()
    except OSError:
        return 0
    return 1


def mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
