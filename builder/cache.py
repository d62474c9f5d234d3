"""The layer cache: a step whose key is known replays its layer without building or compressing it.

The key (:func:`step_key`) is the sha256 of canonical JSON over everything that can change the
layer's bytes and nothing else: the parent layers (the diff_id chain), the step as written after
``${ARGS}`` substitution (its recipe location left out), the digests of its inputs (tarball
content; for ``copy``, every file's relative path, type, normalised mode, size, content digest
and link target, but never mtimes, which never reach the layer), the platform, compression and
level, the epoch and :data:`LAYER_FORMAT_VERSION`. A ``run`` step is keyed by the step (with its
resolved environment) and its parents; its cache and secret mounts are not inputs, and a
secret's content never enters a key.

On disk, under the cache directory::

    layers/entries/<key>.json     {"digest", "diff_id", "size", "uncompressed_size", "media_type"} or {"empty": true}
    layers/blobs/sha256/<hex>     the compressed layer, exactly as first built
    layers/shapes/<shape>         (empty) some entry was stored for a step of this shape

A copy's *shape* is its key with the file contents left out (names, types, modes, sizes: all
known from one directory walk). A build looks a copy up by its full key only when the cache
knows its shape; otherwise the lookup would miss anyway, so the step is built straight away and
its file digests are taken while the tar writer copies the files, and the context is read once.

Both are written to a temp file and renamed, entries after their blob, so concurrent builds
sharing a cache see either nothing or a whole entry. Every hit re-hashes its blob: a cache
never serves bytes that do not match their digest (a mismatch is a miss, and the bad file goes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import OutputError
from builder.image import LayerBlob
from builder.layer.compress import LAYER_FORMAT_VERSION
from builder.oci.canonical import canonical_json
from builder.oci.descriptor import Descriptor
from builder.oci.digest import Digest, sha256_file


def _plain(value: Any) -> Any:
    """A step (a frozen dataclass tree) as JSON data, without recipe locations."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name != "where"}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def step_key(parents: Sequence[Digest], step: object, inputs: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """The cache key of one step (hex sha256); see the module docstring for what goes in."""
    doc = {
        "format": LAYER_FORMAT_VERSION,
        "parents": [str(d) for d in parents],
        "step": {"kind": type(step).__name__, **_plain(step)},
        "inputs": inputs,  # plain JSON data already, and large for a copy: not walked again
        "settings": settings,
    }
    return Digest.of(canonical_json(doc)).hex


@dataclass(frozen=True)
class CacheHit:
    """What a key maps to: a layer, or the fact that the step changed nothing."""

    layer: LayerBlob | None


class LayerCache:
    """Content-addressed layers by step key, shared safely by concurrent builds."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.entries = root / "layers" / "entries"
        self.blobs = root / "layers" / "blobs" / "sha256"
        self.shapes = root / "layers" / "shapes"

    def knows_shape(self, shape: str) -> bool:
        """Whether an entry was ever stored for a step of this shape (a cheap, certain-miss test)."""
        marker = self.shapes / shape
        try:
            os.utime(marker)  # used: prune keeps it at least as long as its entries
        except OSError:
            return False
        return True

    def add_shape(self, shape: str) -> None:
        """Record that an entry of this shape is stored (after the entry itself)."""
        try:
            self.shapes.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.shapes / shape, b"")
        except OSError as exc:
            raise OutputError(f"cannot write the layer cache in {str(self.root)!r}: {exc.strerror}") from exc

    def get(self, key: str) -> CacheHit | None:
        """The cached result for ``key``, its blob verified; None on a miss (or a damaged entry)."""
        entry_path = self.entries / f"{key}.json"
        try:
            entry = json.loads(entry_path.read_bytes())
        except (OSError, ValueError):
            return None
        with contextlib.suppress(OSError):
            os.utime(entry_path)  # recently used: kept longest by prune()
        if entry.get("empty"):
            return CacheHit(None)
        try:
            digest = Digest.parse(entry["digest"])
            descriptor = Descriptor(str(entry["media_type"]), digest, int(entry["size"]))
            diff_id = Digest.parse(entry["diff_id"])
            path = self.blobs / digest.hex
            actual, size = sha256_file(path)
        except (OSError, KeyError, ValueError, TypeError):
            return None
        if actual != digest or size != descriptor.size:
            with contextlib.suppress(OSError):
                path.unlink()
                entry_path.unlink()
            return None
        return CacheHit(LayerBlob(descriptor, diff_id, path, entry.get("uncompressed_size"), verified=True))

    def put(self, key: str, layer: LayerBlob | None) -> None:
        """Record ``key`` -> ``layer`` (None: the step changed nothing). Failures only lose the entry."""
        try:
            self.entries.mkdir(parents=True, exist_ok=True)
            if layer is None:
                entry: dict[str, Any] = {"empty": True}
            else:
                self.blobs.mkdir(parents=True, exist_ok=True)
                target = self.blobs / layer.digest.hex
                if not target.exists():
                    _link_or_copy(layer.path, target)
                entry = {"digest": str(layer.digest), "diff_id": str(layer.diff_id), "size": layer.descriptor.size,
                         "uncompressed_size": layer.uncompressed_size, "media_type": layer.descriptor.media_type}
            _write_atomic(self.entries / f"{key}.json", canonical_json(entry))
        except OSError as exc:
            raise OutputError(f"cannot write the layer cache in {str(self.root)!r}: {exc.strerror}") from exc

    def prune(self, max_bytes: int) -> tuple[int, int]:
        """Drop least recently used entries until blobs take at most ``max_bytes``; returns (entries, bytes) removed.

        Blobs no entry names any more are removed too. Safe beside running builds: an entry is
        deleted before its blob, and a build that loses a blob between ``get`` and use re-hashes it.
        """
        entries = sorted(self._entries(), key=lambda p: _mtime(p))
        blob_of: dict[Path, str | None] = {}
        for path in entries:
            try:
                blob_of[path] = json.loads(path.read_bytes()).get("digest")
            except (OSError, ValueError):
                blob_of[path] = None
        sizes = {p.name: p.stat().st_size for p in self._blob_files()}
        total = sum(sizes.values())
        removed = freed = 0
        for path in entries:
            if total <= max_bytes and max_bytes > 0:  # 0 empties the cache, entries of empty steps too
                break
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
            digest = blob_of.pop(path)
            name = digest.split(":")[-1] if digest else None
            if name and name in sizes and name not in {(d or "").split(":")[-1] for d in blob_of.values()}:
                with contextlib.suppress(OSError):
                    (self.blobs / name).unlink()
                    total -= sizes[name]
                    freed += sizes[name]
        live = {(d or "").split(":")[-1] for d in blob_of.values()}
        for blob in self._blob_files():
            if blob.name not in live and time.time() - _mtime(blob) > 60:  # not one a build is adding now
                with contextlib.suppress(OSError):
                    freed += blob.stat().st_size
                    blob.unlink()
        self._prune_shapes(min((_mtime(p) for p in blob_of), default=None))
        return removed, freed

    def _prune_shapes(self, oldest_entry: float | None) -> None:
        """Shape markers outlive none of the entries kept: every probe and store touches a shape's
        marker around its entry's, so markers older than the oldest entry (less a minute of slack)
        are stale, and with no entry left all are. A marker lost early costs one rebuild, never a
        wrong layer."""
        if not self.shapes.is_dir():
            return
        for marker in self.shapes.iterdir():
            if oldest_entry is None or _mtime(marker) < oldest_entry - 60:
                with contextlib.suppress(OSError):
                    marker.unlink()

    def _entries(self) -> Iterable[Path]:
        return self.entries.glob("*.json") if self.entries.is_dir() else []

    def _blob_files(self) -> list[Path]:
        return [p for p in self.blobs.iterdir() if not p.name.startswith(".")] if self.blobs.is_dir() else []


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _link_or_copy(source: Path, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
    os.close(fd)
    try:
        os.unlink(tmp)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
