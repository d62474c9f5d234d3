"""Real inputs for the SBOM tests: layer tars (gzip, zstd, plain) holding package databases built
here, byte for byte as their tools write them, and images made of those layers."""

from __future__ import annotations

import io
import sqlite3
import struct
import tarfile
from collections.abc import Sequence
from pathlib import Path

from builder.image import Image, LayerBlob
from builder.oci.canonical import canonical_json
from builder.oci.config import append_layer, empty_config, rfc3339
from builder.oci.descriptor import Descriptor
from builder.oci.digest import Digest
from builder.oci.manifest import image_manifest
from builder.oci.mediatypes import MediaType
from tests.helpers import AMD64, compress

#: A member: bytes (a regular file), "dir", "whiteout" (``.wh.NAME`` beside it), "opaque"
#: (``NAME/.wh..wh..opq``), ("symlink", target) or ("hardlink", target).
Member = bytes | str | tuple[str, str]


def layer_tar(members: dict[str, Member]) -> bytes:
    """An uncompressed layer tar with ``members`` in the given order (no parent directories added)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, what in members.items():
            head, _, base = name.rpartition("/")
            if what == "whiteout":
                name, what = f"{head}/.wh.{base}" if head else f".wh.{base}", b""
            elif what == "opaque":
                name, what = f"{name}/.wh..wh..opq", b""
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            if isinstance(what, bytes):
                info.size = len(what)
                tar.addfile(info, io.BytesIO(what))
            elif what == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                assert isinstance(what, tuple)
                info.type = tarfile.SYMTYPE if what[0] == "symlink" else tarfile.LNKTYPE
                info.linkname = what[1]
                tar.addfile(info)
    return buf.getvalue()


def make_image(tmp_path: Path, layers: Sequence[dict[str, Member]], compressions: Sequence[str] = ()) -> Image:
    """An image of one layer per member dict (compressed as ``compressions`` says, default gzip)."""
    store = tmp_path / "blobs"
    store.mkdir(parents=True, exist_ok=True)
    cfg = empty_config(AMD64)
    blobs = []
    for i, members in enumerate(layers):
        tar = layer_tar(members)
        data, media_type = compress(tar, compressions[i] if i < len(compressions) else "gzip")
        digest = Digest.of(data)
        (store / digest.hex).write_bytes(data)
        blobs.append(LayerBlob(Descriptor(media_type, digest, len(data)), Digest.of(tar), store / digest.hex,
                               len(tar), True))
        cfg = append_layer(cfg, Digest.of(tar), rfc3339(0), f"layer {i}")
    raw_config = canonical_json(cfg)
    cdesc = Descriptor(MediaType.OCI_CONFIG, Digest.of(raw_config), len(raw_config))
    raw_manifest = canonical_json(image_manifest(cdesc, [b.descriptor for b in blobs]))
    return Image(raw_manifest, raw_config, MediaType.OCI_MANIFEST, tuple(blobs), AMD64)


def dpkg_status(*packages: tuple[str, str], status: str = "install ok installed", arch: str = "amd64",
                source: str = "") -> bytes:
    """A dpkg status file listing ``(name, version)`` packages, with the fields dpkg writes."""
    out = []
    for name, version in packages:
        src = f"Source: {source}\n" if source else ""
        out.append(f"Package: {name}\nStatus: {status}\nPriority: optional\nSection: libs\n"
                   f"Installed-Size: 100\nMaintainer: Someone <a@b.c>\nArchitecture: {arch}\n{src}"
                   f"Version: {version}\nDepends: libc6 (>= 2.34)\nDescription: the {name} package\n"
                   f" A longer description.\n .\n Second paragraph.\n")
    return "\n".join(out).encode()


def apk_installed(*packages: tuple[str, str, str], arch: str = "x86_64") -> bytes:
    """An apk ``installed`` database listing ``(name, version, licence)`` packages (origin = name)."""
    out = []
    for name, version, licence in packages:
        out.append(f"C:Q1abcdefghijklmnopqrstuvwxyz0123=\nP:{name}\nV:{version}\nA:{arch}\nS:1000\nI:2000\n"
                   f"T:the {name} package\nU:https://example.org\nL:{licence}\no:{name}\nm:Someone <a@b.c>\n"
                   f"t:1700000000\nc:0123456789abcdef\nD:so:libc.musl-x86_64.so.1\nF:usr/bin\nR:{name}\n"
                   f"a:0:0:755\nZ:Q1abcdefghijklmnopqrstuvwxyz0123=\n")
    return ("\n".join(out) + "\n").encode()


STRING, INT32, STRING_ARRAY = 6, 4, 8


def rpm_header(tags: dict[int, str | int]) -> bytes:
    """An RPM header blob as rpmdb.sqlite stores it: index count, store size, entries, store."""
    entries, store = b"", b""
    for tag, value in sorted(tags.items()):
        if isinstance(value, int):
            store += b"\0" * (-len(store) % 4)  # INT32 data is aligned, as rpm writes it
            entries += struct.pack(">iIiI", tag, INT32, len(store), 1)
            store += struct.pack(">I", value)
        else:
            entries += struct.pack(">iIiI", tag, STRING, len(store), 1)
            store += value.encode() + b"\0"
    return struct.pack(">II", len(tags), len(store)) + entries + store


def rpm_package(name: str, version: str, release: str, arch: str = "x86_64", licence: str = "MIT",
                epoch: int | None = None) -> bytes:
    tags: dict[int, str | int] = {1000: name, 1001: version, 1002: release, 1022: arch, 1014: licence,
                                  1044: f"{name}-{version}-{release}.src.rpm"}
    if epoch is not None:
        tags[1003] = epoch
    return rpm_header(tags)


def rpmdb(tmp_path: Path, *blobs: bytes) -> bytes:
    """The bytes of an rpmdb.sqlite with rpm's ``Packages`` table holding ``blobs``."""
    path = tmp_path / "rpmdb-build.sqlite"
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL)")
    db.executemany("INSERT INTO Packages (blob) VALUES (?)", [(b,) for b in blobs])
    db.commit()
    db.close()
    return path.read_bytes()


def metadata(name: str, version: str, *extra: str) -> bytes:
    """A core metadata file (METADATA / PKG-INFO) with ``extra`` header lines and a body."""
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", "Summary: a thing", *extra]
    return ("\n".join(lines) + "\n\nThe long description.\nLicense: not a header\n").encode()


OS_DEBIAN = b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n'
