"""RPM packages: ``rpmdb.sqlite`` (Fedora 33+, RHEL 9, openSUSE: ``var/lib/rpm`` or ``usr/lib/sysimage/rpm``).

The database is an SQLite file whose table ``Packages`` holds one RPM header blob per package
(column ``blob``). sqlite3 needs a file, so the bytes (already read from the layer, size-capped)
go to a private temporary directory that is removed afterwards, and are opened read-only and
``immutable`` (no journal, no ``-wal`` written beside it).

Older databases (BerkeleyDB ``Packages``, ``Packages.db`` in rpm's ndb format) are not read:
they are skipped silently, and such an image's RPMs are not in its SBOM.

A header blob (rpm's ``headerExport`` without the leading magic) is: the number of index
entries and the size of the data store (two big-endian uint32), the entries (16 bytes each: tag,
type, offset into the store, count), then the store. Only a few tags are read; an entry whose
offset or string runs outside the store is ignored, and a blob that does not parse is skipped.
"""

from __future__ import annotations

import sqlite3
import struct
import tempfile
from pathlib import Path

from builder.sbom.model import Record

DATABASES = ("var/lib/rpm/rpmdb.sqlite", "usr/lib/sysimage/rpm/rpmdb.sqlite")
NAME, VERSION, RELEASE, EPOCH, LICENSE, ARCH, SOURCERPM = 1000, 1001, 1002, 1003, 1014, 1022, 1044
_INT32, _STRING, _STRING_ARRAY, _I18NSTRING = 4, 6, 8, 9
_MAX_ENTRIES = 0xFFFF  # rpm's own limit on a header's index entries
_ENTRY = struct.Struct(">iIiI")
_WANTED = {NAME, VERSION, RELEASE, EPOCH, LICENSE, ARCH, SOURCERPM}


def header_tags(blob: bytes) -> dict[int, str]:
    """The wanted tags of one header blob as strings ({} when the blob is not a header)."""
    if len(blob) < 8:
        return {}
    count, size = struct.unpack_from(">II", blob)
    start = 8 + count * _ENTRY.size
    if count > _MAX_ENTRIES or start + size > len(blob):
        return {}
    store = blob[start:start + size]
    tags: dict[int, str] = {}
    for i in range(count):
        tag, kind, offset, n = _ENTRY.unpack_from(blob, 8 + i * _ENTRY.size)
        if tag not in _WANTED or tag in tags or not 0 <= offset < size or n < 1:
            continue
        if kind == _INT32 and offset + 4 <= size:
            tags[tag] = str(struct.unpack_from(">I", store, offset)[0])
        elif kind in (_STRING, _STRING_ARRAY, _I18NSTRING):
            end = store.find(b"\0", offset)
            if end >= 0:
                tags[tag] = store[offset:end].decode("utf-8", "replace")
    return tags


def record_of(blob: bytes) -> Record | None:
    """The package one header describes; None without a name and a version (or for the
    ``gpg-pubkey`` pseudo-packages rpm keeps its trusted keys as: not software)."""
    tags = header_tags(blob)
    name, version = tags.get(NAME, ""), tags.get(VERSION, "")
    if not name or not version or name == "gpg-pubkey":
        return None
    release = tags.get(RELEASE, "")
    return Record("rpm", name, f"{version}-{release}" if release else version, tags.get(ARCH, ""),
                  tags.get(SOURCERPM, ""), tags.get(LICENSE, ""), tags.get(EPOCH, ""))


def parse(data: bytes) -> list[Record]:
    """The packages an rpmdb.sqlite database (its bytes) lists; [] for anything SQLite cannot read."""
    found: list[Record] = []
    with tempfile.TemporaryDirectory(prefix="pybuild-rpmdb-") as scratch:
        path = Path(scratch) / "rpmdb.sqlite"
        path.write_bytes(data)
        try:
            db = sqlite3.connect(f"{path.as_uri()}?mode=ro&immutable=1", uri=True)
        except sqlite3.Error:
            return found
        try:
            rows = db.execute("SELECT blob FROM Packages")
            while batch := rows.fetchmany(256):
                for (blob,) in batch:
                    record = record_of(blob) if isinstance(blob, bytes) else None
                    if record is not None:
                        found.append(record)
        except sqlite3.Error:
            pass  # what was read before the damage stands: an SBOM is a best effort on the image's database
        finally:
            db.close()
    return found
