"""One layer's contribution to an SBOM, read in one streamed pass, and cached by diff_id.

What a layer says about the final image does not depend on the layers around it: which paths it
adds (and as what), which it deletes (whiteouts, opaque directories), what the package databases
it carries list, and, for a file layer, the checksums of its regular files. So a scan is a value
of the layer alone (:class:`LayerScan`), keyed by its diff_id, and the final filesystem is worked
out afterwards from the scans (:mod:`builder.sbom.state`).

The layer is streamed through the one hardened reader (:func:`builder.layer.reader.read_layer`,
the whiteout rules included) and the one set of decoders (:func:`open_decompressed`); nothing is
extracted. A database file is read into memory only up to its cap (an oversized or unreadable
one lists nothing, but still replaces whatever a lower layer had at its path); every other file
is hashed in 1 MiB steps. The uncompressed stream is hashed too: a scan whose bytes are not the
layer's diff_id is an :class:`IntegrityError`, so no cache entry can describe other content.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from builder.errors import InputError, IntegrityError
from builder.fs.atomic import open_regular, read_regular, write_atomic
from builder.image import LayerBlob
from builder.layer.decompress import open_decompressed
from builder.layer.entry import Entry, Kind, Opaque, Whiteout
from builder.layer.reader import READ_ERRORS, read_layer
from builder.oci.canonical import json_object
from builder.oci.digest import HashingReader
from builder.sbom import apk, dpkg, python, rpm
from builder.sbom.model import Record

SCAN_FORMAT = 1
"""Bumped when what a scan records or how a database is read changes: older cache entries are then ignored."""
MAX_DATABASE = 64 << 20
MAX_METADATA = 1 << 20
MAX_OS_RELEASE = 64 << 10
MAX_CACHE = 256 << 20
OS_RELEASE = ("etc/os-release", "usr/lib/os-release")
_CHUNK = 1 << 20
_PARSE_ERRORS = (ValueError, LookupError, struct.error, sqlite3.Error)
"""What a database reader can raise on bytes it was not written for: that database lists nothing."""

Parser = Callable[[bytes], list[Record]]


def database_reader(path: str) -> tuple[Parser, int] | None:
    """The reader of the package database at ``path`` (canonical) and its size cap, or None."""
    if dpkg.is_database(path):
        return dpkg.parse, MAX_DATABASE
    if path in apk.DATABASES:
        return apk.parse, MAX_DATABASE
    if path in rpm.DATABASES:
        return rpm.parse, MAX_DATABASE
    if python.is_metadata(path):
        return python.parse, MAX_METADATA
    return None


@dataclass(frozen=True)
class LayerScan:
    """What one layer adds, deletes and lists.

    ``entries``: every path the layer has an entry for, as ``f`` (a regular file or a hardlink),
    ``d`` (a directory) or ``o`` (anything else). ``databases``: for each package database file
    in the layer, what it lists. ``hashes``: (sha256, sha1) of each regular file, or None when
    the layer was scanned without hashing (it is not a file layer).
    """

    entries: dict[str, str]
    whiteouts: frozenset[str]
    opaques: frozenset[str]
    databases: dict[str, tuple[Record, ...]]
    os_release: dict[str, dict[str, str]]
    hashes: dict[str, tuple[str, str]] | None


def scan_layer(blob: LayerBlob, hash_files: bool) -> LayerScan:
    """Read ``blob`` once (see the module docstring)."""
    label = f"layer {blob.digest.short}"
    acc = _Accumulator(hash_files)
    try:
        with os.fdopen(open_regular(blob.path), "rb") as raw:
            decoded = open_decompressed(raw)
            tar = HashingReader(decoded, blob.diff_id.algorithm)
            try:
                for _, change in read_layer(tar, label):  # type: ignore[arg-type]
                    acc.add(change)
                tar.drain(_CHUNK)  # the padding after the end marker is part of the diff_id
            finally:
                decoded.close()
    except READ_ERRORS as exc:
        raise InputError(f"{label}: unreadable for the SBOM ({exc})") from exc
    if tar.digest() != blob.diff_id:
        raise IntegrityError(f"layer blob {blob.digest}: uncompressed content does not match diff_id {blob.diff_id}")
    return acc.result()


class _Accumulator:
    def __init__(self, hash_files: bool) -> None:
        self.entries: dict[str, str] = {}
        self.whiteouts: set[str] = set()
        self.opaques: set[str] = set()
        self.databases: dict[str, tuple[Record, ...]] = {}
        self.os_release: dict[str, dict[str, str]] = {}
        self.hashes: dict[str, tuple[str, str]] | None = {} if hash_files else None

    def add(self, change: Entry | Whiteout | Opaque) -> None:
        if isinstance(change, Whiteout):
            self.whiteouts.add(change.path)
        elif isinstance(change, Opaque):
            self.opaques.add(change.path)
        elif change.path:
            self._entry(change)

    def _entry(self, entry: Entry) -> None:
        path = entry.path
        kind = {Kind.FILE: "f", Kind.HARDLINK: "f", Kind.DIR: "d"}.get(entry.kind, "o")
        self.entries[path] = kind
        self.databases.pop(path, None)  # a duplicate member: the last one is what the layer holds
        self.os_release.pop(path, None)
        if self.hashes is not None:
            self.hashes.pop(path, None)
        if entry.kind is Kind.HARDLINK:
            if self.hashes is not None and entry.link in self.hashes:
                self.hashes[path] = self.hashes[entry.link]
            return
        if entry.kind is not Kind.FILE or entry.content is None:
            return
        reader = database_reader(path)
        cap = reader[1] if reader else MAX_OS_RELEASE if path in OS_RELEASE else -1
        sums: tuple[Any, Any] | None
        with entry.content() as member:
            if 0 <= entry.size <= cap:
                data = member.read(cap + 1)
                self._remember(path, data, reader[0] if reader else None)
                sums = (hashlib.sha256(data), hashlib.sha1(data, usedforsecurity=False))
            else:  # a database too large to read lists nothing: not in ``databases``, it still replaces a lower one
                sums = _hash(member) if self.hashes is not None else None
        if self.hashes is not None and sums is not None:
            self.hashes[path] = (sums[0].hexdigest(), sums[1].hexdigest())

    def _remember(self, path: str, data: bytes, parse: Parser | None) -> None:
        if parse is None:
            self.os_release[path] = parse_os_release(data)
            return
        try:
            self.databases[path] = tuple(parse(data))
        except _PARSE_ERRORS:
            self.databases[path] = ()

    def result(self) -> LayerScan:
        return LayerScan(self.entries, frozenset(self.whiteouts), frozenset(self.opaques), self.databases,
                         self.os_release, self.hashes)


def _hash(member: BinaryIO) -> tuple[Any, Any]:
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(usedforsecurity=False)
    while block := member.read(_CHUNK):
        sha256.update(block)
        sha1.update(block)
    return sha256, sha1


def parse_os_release(data: bytes) -> dict[str, str]:
    """``ID`` and ``VERSION_ID`` of an os-release file (shell-style ``KEY=value``, maybe quoted)."""
    found = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key in ("ID", "VERSION_ID"):
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            found[key] = value[:64]
    return found


# --------------------------------------------------------------------------------------------
# the cache


def cached_scan(blob: LayerBlob, hash_files: bool, cache_dir: Path | None) -> LayerScan:
    """:func:`scan_layer`, through ``cache_dir/sbom/<diff_id hex>.json`` when a cache directory is given.

    An entry is used when it parses, is of this :data:`SCAN_FORMAT` and has the file hashes if
    they are wanted; anything else (a damaged, foreign or older file) is scanned again and
    rewritten. A cache that cannot be written is only a cost, never a failure of the SBOM.
    """
    if cache_dir is None:
        return scan_layer(blob, hash_files)
    path = cache_dir / "sbom" / f"{blob.diff_id.hex}.json"
    found = _load(path, str(blob.diff_id))
    if found is not None and (found.hashes is not None or not hash_files):
        return found
    scan = scan_layer(blob, hash_files)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, _dump(scan, str(blob.diff_id)))
    except OSError:
        pass
    return scan


def _dump(scan: LayerScan, diff_id: str) -> bytes:
    doc = {
        "format": SCAN_FORMAT,
        "diff_id": diff_id,
        "entries": scan.entries,
        "whiteouts": sorted(scan.whiteouts),
        "opaques": sorted(scan.opaques),
        "databases": {p: [list(_record_fields(r)) for r in rs] for p, rs in scan.databases.items()},
        "os_release": scan.os_release,
        "hashes": None if scan.hashes is None else {p: list(h) for p, h in scan.hashes.items()},
    }
    # ASCII escapes: a non-UTF-8 file name (kept as surrogates) survives the round trip.
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _record_fields(r: Record) -> tuple[str, ...]:
    return r.kind, r.name, r.version, r.arch, r.source, r.licence, r.epoch


def _load(path: Path, diff_id: str) -> LayerScan | None:
    try:
        doc = json_object(read_regular(path, MAX_CACHE), limit=MAX_CACHE)
        if doc.get("format") != SCAN_FORMAT or doc.get("diff_id") != diff_id:
            return None
        return _scan_of(doc)
    except (OSError, ValueError, TypeError, KeyError):
        return None


_SHA256, _SHA1 = re.compile("[0-9a-f]{64}"), re.compile("[0-9a-f]{40}")


def _strs(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("not a list of strings")
    return value


def _str_map(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return value


def _scan_of(doc: dict[str, Any]) -> LayerScan:
    entries = {p: k for p, k in _str_map(doc["entries"]).items() if k in ("f", "d", "o")}
    if len(entries) != len(doc["entries"]):
        raise ValueError("bad entry kind")
    databases = {}
    for p, rows in _str_map(doc["databases"]).items():
        if not isinstance(rows, list):
            raise ValueError("bad database")
        records = [_strs(row) for row in rows]
        if any(len(row) != 7 for row in records):
            raise ValueError("bad record")
        databases[p] = tuple(Record(*row) for row in records)
    os_release = {p: {k: v for k, v in _str_map(d).items() if isinstance(v, str)}
                  for p, d in _str_map(doc["os_release"]).items()}
    hashes = None
    if doc["hashes"] is not None:
        hashes = {}
        for p, h in _str_map(doc["hashes"]).items():
            sha256, sha1 = _strs(h)
            if not (_SHA256.fullmatch(sha256) and _SHA1.fullmatch(sha1)):
                raise ValueError("bad checksum")
            hashes[p] = (sha256, sha1)
    return LayerScan(entries, frozenset(_strs(doc["whiteouts"])), frozenset(_strs(doc["opaques"])), databases,
                     os_release, hashes)
