"""The layer cache's entries: a key maps to a verified layer, written so that sharing is safe.

An entry names its blob (or says the step changed nothing); a hit is served only once the blob
has been re-hashed, and its entry agrees with what the blob decompresses to (found out by
:func:`builder.cache.verify.check_blob` the first time the blob is served, and recorded under its
digest). A damaged entry or blob is removed then, so it costs one rebuild, never a wrong layer.
The paths are :mod:`builder.cache.disk`'s.

A build looks a copy up by its full key only when the cache knows its shape (see
:mod:`builder.cache.keys`); otherwise the lookup would miss anyway, so the step is built straight
away and its file digests are taken while the tar writer copies the files, and the context is
read once.

Blobs and entries are written to a temp file and renamed, entries after their blob, so
concurrent builds sharing a cache see either nothing or a whole entry. The cache's files are its
own: a blob is cloned or copied in, never hard-linked, and the layout writer never links one into
OUT, so damage to an output never reaches the cache, nor the other way round.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.cache.disk import CacheDir, read_entry, unlink
from builder.cache.prune import prune_cache
from builder.cache.usage import CacheEntry, CacheUsage, disk_usage, list_entries
from builder.cache.verify import check_blob, check_digest
from builder.errors import OutputError
from builder.fs.atomic import atomic_path, clone_file, write_atomic
from builder.image import LayerBlob
from builder.oci.canonical import canonical_json
from builder.oci.descriptor import Descriptor
from builder.oci.digest import Digest


@dataclass(frozen=True)
class CacheHit:
    """What a key maps to: a layer, or the fact that the step changed nothing."""

    layer: LayerBlob | None


class LayerCache(CacheDir):
    """Content-addressed layers by step key, shared safely by concurrent builds."""

    def knows_shape(self, shape: str) -> bool:
        """Whether an entry was ever stored for a step of this shape (a cheap, certain-miss test)."""
        marker = self.shapes / shape
        try:
            os.utime(marker, follow_symlinks=False)  # used: prune keeps it at least as long as its entries
        except OSError:
            return False
        return True

    def add_shape(self, shape: str) -> None:
        """Record that an entry of this shape is stored (after the entry itself)."""
        try:
            self.shapes.mkdir(parents=True, exist_ok=True)
            write_atomic(self.shapes / shape, b"", 0o600)
        except OSError as exc:
            raise OutputError(f"cannot write the layer cache in {str(self.root)!r}: {exc.strerror}") from exc

    def get(self, key: str) -> CacheHit | None:
        """The cached result for ``key``, its blob verified; None on a miss (or a damaged entry, then removed)."""
        entry_path = self.entries / f"{key}.json"
        try:
            entry = read_entry(entry_path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError):
            unlink(entry_path)
            return None
        with contextlib.suppress(OSError):
            os.utime(entry_path, follow_symlinks=False)  # recently used: kept longest by prune()
        if entry.get("empty") is True:
            return CacheHit(None)
        try:
            digest = Digest.parse(entry["digest"])
            descriptor = Descriptor(str(entry["media_type"]), digest, int(entry["size"]))
            diff_id = Digest.parse(entry["diff_id"])
            unpacked = entry.get("uncompressed_size")
            if digest.algorithm != "sha256" or diff_id.algorithm != "sha256" or not isinstance(unpacked, int | None):
                raise ValueError("not an entry pybuild writes")
        except (KeyError, ValueError, TypeError, AttributeError):
            unlink(entry_path)
            return None
        path = self.blobs / digest.hex
        facts = {"diff_id": str(diff_id), "media_type": descriptor.media_type, "uncompressed_size": unpacked}
        if unpacked is not None and self._decoded(digest.hex) == facts:  # decompressed once already
            verdict = check_digest(path, descriptor)
        else:
            verdict = check_blob(path, descriptor, diff_id, unpacked)
            if verdict == "ok" and unpacked is not None:
                self._record_decoded(digest.hex, facts)
        if verdict != "ok":
            if verdict == "blob":  # the blob does not match its own name: it goes, and the entry with it
                unlink(path)
            unlink(entry_path)  # a wrong diff_id or size: the entry lies about a good blob
            return None
        return CacheHit(LayerBlob(descriptor, diff_id, path, unpacked, verified=True))

    def _decoded(self, hex_: str) -> dict[str, Any] | None:
        """What blob ``hex_`` was found to decompress to, if that was recorded (and is readable)."""
        try:
            return read_entry(self.decoded / hex_)
        except (OSError, ValueError, RecursionError):
            return None

    def _record_decoded(self, hex_: str, facts: dict[str, Any]) -> None:
        """Only after :func:`check_blob` found it so: never from what a writer says it wrote."""
        with contextlib.suppress(OSError):  # a record not written costs the next hit a decompression
            self.decoded.mkdir(parents=True, exist_ok=True)
            write_atomic(self.decoded / hex_, canonical_json(facts), 0o600)

    def put(self, key: str, layer: LayerBlob | None) -> None:
        """Record ``key`` -> ``layer`` (None: the step changed nothing). Failures only lose the entry."""
        try:
            self.entries.mkdir(parents=True, exist_ok=True)
            if layer is None:
                entry: dict[str, Any] = {"empty": True}
            else:
                self.blobs.mkdir(parents=True, exist_ok=True)
                target = self.blobs / layer.digest.hex
                if not _is_file_of(target, layer.descriptor.size):  # absent, or something planted there
                    _clone_in(layer.path, target, layer.descriptor.size)
                entry = {"digest": str(layer.digest), "diff_id": str(layer.diff_id), "size": layer.descriptor.size,
                         "uncompressed_size": layer.uncompressed_size, "media_type": layer.descriptor.media_type}
            write_atomic(self.entries / f"{key}.json", canonical_json(entry), 0o600)
        except OSError as exc:
            raise OutputError(f"cannot write the layer cache in {str(self.root)!r}: {exc.strerror}") from exc

    def ls(self) -> list[CacheEntry]:
        """Every readable entry, most recently used first (:mod:`builder.cache.usage`)."""
        return list_entries(self)

    def usage(self) -> CacheUsage:
        """What the cache holds, in entries and bytes, per part (:mod:`builder.cache.usage`)."""
        return disk_usage(self)

    def prune(self, max_bytes: int | None = None, max_age: float | None = None) -> tuple[int, int]:
        """Drop what the cache no longer needs (:mod:`builder.cache.prune`, for the rules)."""
        return prune_cache(self, max_bytes, max_age)


def _clone_in(source: Path, target: Path, size: int) -> None:
    """Put a copy of ``source`` at ``target`` by rename (over whatever is there): a clone or a copy,
    never a hard link, so the cache shares no inode with the build's outputs."""
    with atomic_path(target) as tmp:
        clone_file(source, tmp, size)


def _is_file_of(path: Path, size: int) -> bool:
    try:
        st = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size
