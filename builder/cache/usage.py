"""What the cache holds, for ``pybuild cache ls`` and ``du``: read only, so safe beside any build.

An entry that cannot be read is left out of the listing rather than failing it: ``ls`` and
``du`` report, and what to do about a damaged entry is prune's rule (:mod:`builder.cache.prune`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.cache.disk import CacheDir, mtime, read_entry, size_of, tree_size
from builder.cache.snapshots import SnapshotStore
from builder.oci.digest import Digest


@dataclass(frozen=True)
class CacheEntry:
    """One entry as ``pybuild cache ls`` shows it."""

    key: str
    digest: Digest | None
    """The layer blob's digest; None for a step that changed nothing (or an unreadable digest)."""
    size: int
    used: float
    """When a build last stored or hit it (the entry file's mtime)."""

    def to_json(self) -> dict[str, Any]:
        """The ``pybuild cache ls --json`` line (seconds since the epoch, whole)."""
        return {"key": self.key, "digest": str(self.digest) if self.digest else None, "size": self.size,
                "used": int(self.used)}


@dataclass(frozen=True)
class CacheUsage:
    """What ``pybuild cache du`` reports."""

    entries: int
    layer_bytes: int
    mounts: int
    mount_bytes: int
    blobs: int = 0
    """Registry blobs in the blob store (``CACHE/blobs``, builder/blobstore.py)."""
    blob_bytes: int = 0
    snapshots: int = 0
    """Layers kept extracted for overlay run steps (``CACHE/snapshots``, builder/cache/snapshots.py)."""
    snapshot_bytes: int = 0

    def to_json(self, cache_dir: Path) -> dict[str, Any]:
        """The ``pybuild cache du --json`` object."""
        return {"cache_dir": str(cache_dir), **dataclasses.asdict(self)}


def list_entries(cache: CacheDir) -> list[CacheEntry]:
    """Every readable entry, most recently used first."""
    out = []
    for path in cache.entry_files():
        try:
            entry = read_entry(path)
        except (OSError, ValueError, RecursionError):
            continue
        size = entry.get("size")
        out.append(CacheEntry(path.stem, _digest(entry.get("digest")), size if isinstance(size, int) else 0,
                              mtime(path)))
    return sorted(out, key=lambda e: -e.used)


def disk_usage(cache: CacheDir) -> CacheUsage:
    """What the cache holds, in entries and bytes, per part."""
    entries = sum(1 for _ in cache.entry_files())
    blobs = sum(size_of(p) for p in cache.blob_files())
    mounts = [p for p in cache.mounts.iterdir() if p.is_dir()] if cache.mounts.is_dir() else []
    store = cache.store_files()
    snapshots = [SnapshotStore(cache.snapshots, flavor).usage() for flavor in ("trusted", "user")]
    return CacheUsage(entries, blobs, len(mounts), sum(tree_size(p) for p in mounts),
                      len(store), sum(size_of(p) for p in store), sum(n for n, _ in snapshots),
                      sum(b for _, b in snapshots))


def _digest(value: object) -> Digest | None:
    try:
        return Digest.parse(value) if isinstance(value, str) else None
    except ValueError:
        return None
