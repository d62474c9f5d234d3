"""Read a base image's layers into a metadata tree (for the file steps built on top of it)."""

from __future__ import annotations

import tarfile
from collections.abc import Sequence
from typing import BinaryIO

from builder.errors import InputError, IntegrityError
from builder.fs.tree import WATCHED, FsTree
from builder.fs.users import read_account_file
from builder.image import LayerBlob
from builder.layer.decompress import DECODE_ERRORS, open_decompressed
from builder.layer.entry import WH_OPAQUE, WH_PREFIX, Change, Entry, Kind, Opaque, Whiteout, canon
from builder.layer.tarstream import tar_members
from builder.oci.digest import HashingReader

_KINDS = {tarfile.DIRTYPE: Kind.DIR, tarfile.SYMTYPE: Kind.SYMLINK, tarfile.LNKTYPE: Kind.HARDLINK,
          tarfile.CHRTYPE: Kind.CHAR, tarfile.BLKTYPE: Kind.BLOCK, tarfile.FIFOTYPE: Kind.FIFO}

_READ_ERRORS: tuple[type[Exception], ...] = (tarfile.TarError, *DECODE_ERRORS)


def _layer_changes(blob: LayerBlob) -> tuple[list[Change], dict[str, bytes]]:
    changes: list[Change] = []
    watched: dict[str, bytes] = {}
    with open(blob.path, "rb") as raw:
        reader = HashingReader(raw)
        try:
            with open_decompressed(reader) as stream:  # type: ignore[arg-type]
                _read_members(stream, blob, changes, watched)
            reader.drain()  # hash any trailing bytes after the tar end marker (the decoding thread has stopped)
        except _READ_ERRORS as exc:
            raise InputError(f"base layer {blob.digest.short}: unreadable ({exc})") from exc
    if reader.digest() != blob.digest:
        raise IntegrityError(f"base layer blob {blob.digest} does not match its digest "
                             f"(content hashes to {reader.digest()})")
    return changes, watched


def _read_members(stream: BinaryIO, blob: LayerBlob, changes: list[Change], watched: dict[str, bytes]) -> None:
    for tf, ti in tar_members(stream):
        try:
            path = canon(ti.name)
        except ValueError:
            raise InputError(f"base layer {blob.digest.short}: entry {ti.name!r} escapes the root") from None
        head, _, base = path.rpartition("/")
        if base == WH_OPAQUE:
            changes.append(Opaque(head))
        elif base.startswith(WH_PREFIX):
            changes.append(Whiteout(f"{head}/{base[4:]}" if head else base[4:]))
        elif path:
            kind = _KINDS.get(ti.type, Kind.FILE)
            link = canon(ti.linkname) if kind is Kind.HARDLINK else ti.linkname
            changes.append(Entry(path, kind, ti.mode & 0o7777, ti.uid, ti.gid, ti.size, int(ti.mtime),
                                 link, ti.devmajor, ti.devminor))
            if path in WATCHED and ti.isreg():
                member = tf.extractfile(ti)
                watched[path] = read_account_file(member, ti.size, path)


def update_tree(tree: FsTree, layers: Sequence[LayerBlob]) -> FsTree:
    """Apply ``layers`` (bottom to top, whiteouts honoured) to the metadata ``tree``."""
    for blob in layers:
        changes, watched = _layer_changes(blob)
        tree.apply(changes)
        for path, content in watched.items():
            tree.capture(path, content)
    return tree
