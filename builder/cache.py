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
sharing a cache see either nothing or a whole entry. The cache's files are its own: a blob is
cloned or copied in, never hard-linked, and the layout sink never links one into OUT, so damage
to an output never reaches the cache, nor the other way round.

Every hit reads its blob once, decompressing it on the way (:func:`_check_blob`): the blob must
match its digest and size, and what it decompresses to must match the entry's diff_id and
uncompressed size. A cache never serves bytes that do not match their digest, nor an entry whose
diff_id is not its layer's (the config would name a layer the image does not have): either is a
miss, and the bad file goes. Only regular files are read, never more than their recorded size;
a FIFO, a device or a symlink in the cache is a miss and is removed, never a wait.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
import shutil
import stat
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from builder.errors import OutputError
from builder.fs.atomic import atomic_path, clone_file, copy_hashed, open_regular, read_regular, write_atomic
from builder.image import LayerBlob
from builder.layer.compress import LAYER_FORMAT_VERSION
from builder.layer.decompress import DECODE_ERRORS, ReadAhead, open_decompressed, sniff
from builder.oci.canonical import canonical_json, json_object
from builder.oci.descriptor import Descriptor
from builder.oci.digest import Digest, HashingReader
from builder.oci.mediatypes import MediaType

MAX_ENTRY = 64 << 10
"""An entry is a few hundred bytes; anything larger than this is not one (a miss, removed)."""
_CHUNK = 1 << 20
_COMPRESSION: dict[str, str] = {MediaType.OCI_LAYER_GZIP: "gzip", MediaType.OCI_LAYER_ZSTD: "zstd"}


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
class CacheEntry:
    """One entry as ``pybuild cache ls`` shows it."""

    key: str
    digest: str | None
    """The layer blob's digest; None for a step that changed nothing."""
    size: int
    used: float
    """When a build last stored or hit it (the entry file's mtime)."""

    def to_json(self) -> dict[str, Any]:
        """The ``pybuild cache ls --json`` line (seconds since the epoch, whole)."""
        return {"key": self.key, "digest": self.digest, "size": self.size, "used": int(self.used)}


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

    def to_json(self, cache_dir: Path) -> dict[str, Any]:
        """The ``pybuild cache du --json`` object."""
        return {"cache_dir": str(cache_dir), **dataclasses.asdict(self)}


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
            entry = _read_entry(entry_path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError):
            _unlink(entry_path)
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
            _unlink(entry_path)
            return None
        path = self.blobs / digest.hex
        verdict = _check_blob(path, descriptor, diff_id, unpacked)
        if verdict != "ok":
            if verdict == "blob":  # the blob does not match its own name: it goes, and the entry with it
                _unlink(path)
            _unlink(entry_path)  # a wrong diff_id or size: the entry lies about a good blob
            return None
        return CacheHit(LayerBlob(descriptor, diff_id, path, unpacked, verified=True))

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

    @property
    def mounts(self) -> Path:
        """Where run steps' ``cache:`` mounts live (``CACHE/mounts/KEY``, see builder.steps.run)."""
        return self.root / "mounts"

    def ls(self) -> list[CacheEntry]:
        """Every readable entry, most recently used first."""
        out = []
        for path in self._entries():
            try:
                entry = _read_entry(path)
            except (OSError, ValueError, RecursionError):
                continue
            size = entry.get("size")
            digest = entry.get("digest")
            out.append(CacheEntry(path.stem, str(digest) if isinstance(digest, str) else None,
                                  size if isinstance(size, int) else 0, _mtime(path)))
        return sorted(out, key=lambda e: -e.used)

    def usage(self) -> CacheUsage:
        """What the cache holds, in entries and bytes, per part."""
        entries = sum(1 for _ in self._entries())
        blobs = sum(_size_of(p) for p in self._blob_files())
        mounts = [p for p in self.mounts.iterdir() if p.is_dir()] if self.mounts.is_dir() else []
        store = self._store_files()
        return CacheUsage(entries, blobs, len(mounts), sum(_tree_size(p) for p in mounts),
                          len(store), sum(_size_of(p) for p in store))

    def prune(self, max_bytes: int | None = None, max_age: float | None = None) -> tuple[int, int]:
        """Drop what the cache no longer needs; returns (entries and mounts removed, bytes freed).

        Always: entries that cannot be read or whose blob is gone (unreachable: they can only
        miss), and blobs no entry names (older than a minute, so not one a build is adding now).
        ``max_age`` (seconds): also entries, and run-step cache mounts, not used for that long.
        ``max_bytes``: also the least recently used entries until the layer blobs take at most that
        much; 0 empties the cache, the entries of empty steps and every cache mount included.
        Safe beside running builds: an entry goes before its blob, and a build that loses a blob
        between ``get`` and use re-hashes it.
        """
        now = time.time()
        sizes = {p.name: _size_of(p) for p in self._blob_files()}
        kept: dict[Path, str | None] = {}  # entry -> the hex of its blob (None: an empty step)
        removed = 0
        dropped: set[str] = set()  # blobs whose entries went now: not ones a build is adding
        for path in sorted(self._entries(), key=_mtime):
            try:
                entry = _read_entry(path)
                digest = entry.get("digest")
                name = digest.split(":")[-1] if isinstance(digest, str) else None
                if name is None and entry.get("empty") is not True:
                    raise ValueError("not an entry")
            except (OSError, ValueError, RecursionError):
                name = ""  # unreadable or malformed: unreachable
            stale = max_age is not None and now - _mtime(path) > max_age
            gone = name is not None and name not in sizes and not (self.blobs / (name or "-")).is_file()
            if name == "" or gone or stale or max_bytes == 0:
                removed += _unlink(path)
                dropped.add(name or "")
            else:
                kept[path] = name
        users = Counter(kept.values())
        total = sum(sizes.get(n, 0) for n in users if n)
        for path in list(kept):  # least recently used first
            if max_bytes is None or total <= max_bytes:
                break
            name = kept.pop(path)
            removed += _unlink(path)
            dropped.add(name or "")
            users[name] -= 1
            if name and users[name] == 0:
                total -= sizes.get(name, 0)
        live = set(kept.values())
        freed = 0
        for name, size in sizes.items():
            unused = name not in live and (name in dropped or now - _mtime(self.blobs / name) > 60)
            if unused and _unlink(self.blobs / name):
                freed += size
        self._prune_shapes(min((_mtime(p) for p in kept), default=None))
        store_budget = None if max_bytes is None else max(max_bytes - sum(sizes[n] for n in live if n), 0)
        store_removed, store_freed = self._prune_store(store_budget, None if max_age is None else now - max_age)
        removed += store_removed
        freed += store_freed
        if max_age is not None or max_bytes == 0:
            mounts, mount_bytes = self._prune_mounts(None if max_bytes == 0 else now - (max_age or 0))
            removed += mounts
            freed += mount_bytes
        return removed, freed

    def _prune_store(self, budget: int | None, older_than: float | None) -> tuple[int, int]:
        """The registry blob store: blobs last used before ``older_than``, then the least recently
        used until the store takes at most ``budget`` (what the layers kept leave of --max-size:
        a blob can be downloaded again, a layer had to be built), and anything there that is not a
        regular file. Leftover temp files go after a minute. A blob lost early costs one download."""
        removed = freed = 0
        now = time.time()
        files = sorted(self._store_files(), key=_mtime)
        total = sum(_size_of(p) for p in files)
        for path in files:
            size = _size_of(path)
            stale = older_than is not None and _mtime(path) < older_than
            try:
                irregular = not stat.S_ISREG(path.lstat().st_mode)
            except OSError:
                continue
            if (stale or irregular or (budget is not None and total > budget)) and _unlink(path):
                removed += 1
                freed += size
                total -= size
        for tmp in self._store_files(temporary=True):
            if now - _mtime(tmp) > 60:
                _unlink(tmp)
        return removed, freed

    def _store_files(self, *, temporary: bool = False) -> list[Path]:
        """The blob store's blobs (``temporary``: its downloads in progress or left over, ``.*``)."""
        top = self.root / "blobs"
        if not top.is_dir():
            return []
        return [p for alg in top.iterdir() if alg.is_dir() and not alg.is_symlink()
                for p in alg.iterdir() if p.name.startswith(".") == temporary]

    def _prune_mounts(self, older_than: float | None) -> tuple[int, int]:
        """Cache mounts last used before ``older_than`` (None: all). A build touches its mount's
        directory when it binds it; a mount this process cannot remove (files owned by ids of a
        rootless build's namespace) is left whole rather than half-deleted where possible."""
        if not self.mounts.is_dir():
            return 0, 0
        removed = freed = 0
        for mount in self.mounts.iterdir():
            if mount.is_symlink() or not mount.is_dir():
                continue
            if older_than is not None and _mtime(mount) >= older_than:
                continue
            size = _tree_size(mount)
            try:
                shutil.rmtree(mount)
            except OSError:
                continue
            removed += 1
            freed += size
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


def _size_of(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0


def _tree_size(root: Path) -> int:
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


def _unlink(path: Path) -> int:
    """1 if ``path`` was removed, else 0."""
    try:
        path.unlink()
    except OSError:
        return 0
    return 1


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


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


def _read_entry(path: Path) -> dict[str, Any]:
    """An entry's JSON object; only from a regular file of at most :data:`MAX_ENTRY` bytes."""
    data = read_regular(path, MAX_ENTRY)
    if len(data) > MAX_ENTRY:
        raise ValueError("too large for a cache entry")
    return json_object(data)


def _check_blob(path: Path, descriptor: Descriptor, diff_id: Digest, unpacked: int | None) -> str:
    """``"ok"`` if ``path`` is the layer the entry says; ``"blob"`` if the file is not its digest's
    (or not a regular file, or does not decode); ``"entry"`` if the blob is right but the entry's
    media type, diff_id or uncompressed size is not.

    One read does it all, on three threads: one reads and hashes the compressed bytes (a hit always
    re-hashed them), one decodes them (:mod:`builder.layer.decompress`), and this one hashes what
    they decode to. Inflating dominates: measured on 2 cores, a 941 MB gzip'd layer of 1 GiB takes
    3.3 s (zstd 1.4 s, uncompressed 0.7 s) where hashing the blob alone took 0.6 s. Nothing beyond the recorded sizes (+1) is read, so a damaged or planted blob cannot
    make the check read for ever.
    """
    kind = _COMPRESSION.get(descriptor.media_type)
    if kind is None and descriptor.media_type != MediaType.OCI_LAYER:
        return "entry"
    try:
        fd = open_regular(path)
    except OSError:
        return "blob"
    try:
        with os.fdopen(fd, "rb") as raw:
            if os.fstat(fd).st_size != descriptor.size:
                return "blob"
            if kind is None:  # uncompressed: the diff_id is the digest
                plain = copy_hashed(raw, None, cap=descriptor.size)
                compressed = plain.digest()
                tar: tuple[Digest | None, int] = (compressed, plain.size)
            elif sniff(raw.peek(6)[:6]) != kind:
                return "entry"
            else:
                blob = HashingReader(raw)
                with ReadAhead(iter(functools.partial(blob.read, _CHUNK), b"")) as ahead:
                    source = io.BufferedReader(ahead, _CHUNK)
                    tar = _decoded_digest(source, unpacked)
                    while source.read(_CHUNK):  # trailing bytes after the last frame are part of the digest
                        pass
                compressed = blob.digest()
    except OSError:  # an I/O error reading the blob: as good as damaged
        return "blob"
    if tar[0] is None or compressed != descriptor.digest:
        return "blob"
    return "ok" if tar[0] == diff_id and unpacked in (None, tar[1]) else "entry"


def _decoded_digest(source: IO[bytes], unpacked: int | None) -> tuple[Digest | None, int]:
    """(sha256, size) of what ``source`` decompresses to, reading at most ``unpacked + 1`` bytes of
    it; (None, 0) if it does not decode."""
    try:
        with open_decompressed(source) as stream:  # type: ignore[arg-type]
            decoded = copy_hashed(stream, None, cap=unpacked)
    except DECODE_ERRORS:
        return None, 0
    return decoded.digest(), decoded.size
