"""Pruning: what the cache no longer needs goes, safely beside running builds.

Always: entries that cannot be read or whose blob is gone (unreachable: they can only miss), and
blobs no entry names (older than a minute, so not one a build is adding now); entries by age or
by size only when asked. Safe beside running builds: an entry goes before its blob, and a build
that loses a blob between ``get`` and use re-hashes it.
"""

from __future__ import annotations

import contextlib
import shutil
import stat
import time
from collections import Counter
from pathlib import Path

from builder.cache.disk import CacheDir, mtime, read_entry, size_of, tree_size, unlink
from builder.cache.snapshots import SnapshotStore


def prune_cache(cache: CacheDir, max_bytes: int | None = None, max_age: float | None = None) -> tuple[int, int]:
    """Drop what the cache no longer needs; returns (entries and mounts removed, bytes freed).

    ``max_age`` (seconds): also entries, and run-step cache mounts, not used for that long.
    ``max_bytes``: also the least recently used entries until the layer blobs take at most that
    much; 0 empties the cache, the entries of empty steps and every cache mount included.
    """
    now = time.time()
    sizes = {p.name: size_of(p) for p in cache.blob_files()}
    kept: dict[Path, str | None] = {}  # entry -> the hex of its blob (None: an empty step)
    removed = 0
    dropped: set[str] = set()  # blobs whose entries went now: not ones a build is adding
    for path in sorted(cache.entry_files(), key=mtime):
        try:
            entry = read_entry(path)
            digest = entry.get("digest")
            name = digest.split(":")[-1] if isinstance(digest, str) else None
            if name is None and entry.get("empty") is not True:
                raise ValueError("not an entry")
        except (OSError, ValueError, RecursionError):
            name = ""  # unreadable or malformed: unreachable
        stale = max_age is not None and now - mtime(path) > max_age
        gone = name is not None and name not in sizes and not (cache.blobs / (name or "-")).is_file()
        if name == "" or gone or stale or max_bytes == 0:
            removed += unlink(path)
            dropped.add(name or "")
        else:
            kept[path] = name
    users = Counter(kept.values())
    total = sum(sizes.get(n, 0) for n in users if n)
    for path in list(kept):  # least recently used first
        if max_bytes is None or total <= max_bytes:
            break
        name = kept.pop(path)
        removed += unlink(path)
        dropped.add(name or "")
        users[name] -= 1
        if name and users[name] == 0:
            total -= sizes.get(name, 0)
    live = set(kept.values())
    freed = 0
    for name, size in sizes.items():
        unused = name not in live and (name in dropped or now - mtime(cache.blobs / name) > 60)
        if unused and unlink(cache.blobs / name):
            freed += size
    _prune_shapes(cache, min((mtime(p) for p in kept), default=None))
    _prune_decoded(cache)
    store_budget = None if max_bytes is None else max(max_bytes - sum(sizes[n] for n in live if n), 0)
    store_removed, store_freed = _prune_store(cache, store_budget, None if max_age is None else now - max_age)
    removed += store_removed
    freed += store_freed
    snap_removed, snap_freed = _prune_snapshots(cache, kept, now, max_bytes, max_age)
    removed += snap_removed
    freed += snap_freed
    if max_age is not None or max_bytes == 0:
        mounts, mount_bytes = _prune_mounts(cache, None if max_bytes == 0 else now - (max_age or 0))
        removed += mounts
        freed += mount_bytes
    return removed, freed


def _prune_store(cache: CacheDir, budget: int | None, older_than: float | None) -> tuple[int, int]:
    """The registry blob store: blobs last used before ``older_than``, then the least recently
    used until the store takes at most ``budget`` (what the layers kept leave of --max-size:
    a blob can be downloaded again, a layer had to be built), and anything there that is not a
    regular file. Leftover temp files go after a minute. A blob lost early costs one download."""
    removed = freed = 0
    now = time.time()
    files = sorted(cache.store_files(), key=mtime)
    total = sum(size_of(p) for p in files)
    for path in files:
        size = size_of(path)
        stale = older_than is not None and mtime(path) < older_than
        try:
            irregular = not stat.S_ISREG(path.lstat().st_mode)
        except OSError:
            continue
        if (stale or irregular or (budget is not None and total > budget)) and unlink(path):
            removed += 1
            freed += size
            total -= size
    for tmp in cache.store_files(temporary=True):
        if now - mtime(tmp) > 60:
            unlink(tmp)
    return removed, freed


SNAPSHOT_GRACE = 24 * 3600
"""How long a snapshot no cache entry names is kept after its last use (a base image's layers,
which have no entry, are mounted by every build on that base)."""


def _prune_snapshots(cache: CacheDir, kept: dict[Path, str | None], now: float, max_bytes: int | None,
                     max_age: float | None) -> tuple[int, int]:
    """Snapshots (builder/cache/snapshots.py) go with the layer cache: ``--all`` takes every one no
    build is using, ``--max-age`` those not used for that long, ``--max-size`` those no kept entry
    names, and any prune those no kept entry names and unused for :data:`SNAPSHOT_GRACE`."""
    named: set[str] = set()
    for path in kept:
        with contextlib.suppress(OSError, ValueError, RecursionError):
            diff_id = read_entry(path).get("diff_id")
            if isinstance(diff_id, str):
                named.add(diff_id.partition(":")[2])

    def remove(hex_: str, used: float) -> bool:
        if max_bytes == 0 or (max_age is not None and now - used > max_age):
            return True
        return hex_ not in named and (max_bytes is not None or now - used > SNAPSHOT_GRACE)

    removed = freed = 0
    for flavor in ("trusted", "user"):
        r, f = SnapshotStore(cache.snapshots, flavor).prune(remove)
        removed, freed = removed + r, freed + f
    return removed, freed


def _prune_mounts(cache: CacheDir, older_than: float | None) -> tuple[int, int]:
    """Cache mounts last used before ``older_than`` (None: all). A build touches its mount's
    directory when it binds it; a mount this process cannot remove (files owned by ids of a
    rootless build's namespace) is left whole rather than half-deleted where possible."""
    if not cache.mounts.is_dir():
        return 0, 0
    removed = freed = 0
    for mount in cache.mounts.iterdir():
        if mount.is_symlink() or not mount.is_dir():
            continue
        if older_than is not None and mtime(mount) >= older_than:
            continue
        size = tree_size(mount)
        try:
            shutil.rmtree(mount)
        except OSError:
            continue
        removed += 1
        freed += size
    return removed, freed


def _prune_decoded(cache: CacheDir) -> None:
    """A record of what a blob decompresses to goes with its blob (it would stay true, but the
    directory would only grow)."""
    if not cache.decoded.is_dir():
        return
    for record in cache.decoded.iterdir():
        if not (cache.blobs / record.name).is_file():
            unlink(record)


def _prune_shapes(cache: CacheDir, oldest_entry: float | None) -> None:
    """Shape markers outlive none of the entries kept: every probe and store touches a shape's
    marker around its entry's, so markers older than the oldest entry (less a minute of slack)
    are stale, and with no entry left all are. A marker lost early costs one rebuild, never a
    wrong layer."""
    if not cache.shapes.is_dir():
        return
    for marker in cache.shapes.iterdir():
        if oldest_entry is None or mtime(marker) < oldest_entry - 60:
            with contextlib.suppress(OSError):
                marker.unlink()
