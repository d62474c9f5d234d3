"""Read a base image's layers into a metadata tree (for the file steps built on top of it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import BinaryIO

from builder.errors import InputError, IntegrityError
from builder.fs.tree import WATCHED, FsTree
from builder.fs.users import read_account_file
from builder.image import LayerBlob
from builder.layer.decompress import open_decompressed
from builder.layer.entry import Change, Entry
from builder.layer.reader import READ_ERRORS, read_layer
from builder.oci.digest import HashingReader


def _layer_changes(blob: LayerBlob) -> tuple[list[Change], dict[str, bytes]]:
    changes: list[Change] = []
    watched: dict[str, bytes] = {}
    with open(blob.path, "rb") as raw:
        reader = HashingReader(raw)
        try:
            with open_decompressed(reader) as stream:  # type: ignore[arg-type]
                _read_members(stream, blob, changes, watched)
            reader.drain()  # hash any trailing bytes after the tar end marker (the decoding thread has stopped)
        except READ_ERRORS as exc:
            raise InputError(f"base layer {blob.digest.short}: unreadable ({exc})") from exc
    if reader.digest() != blob.digest:
        raise IntegrityError(f"base layer blob {blob.digest} does not match its digest "
                             f"(content hashes to {reader.digest()})")
    return changes, watched


def _read_members(stream: BinaryIO, blob: LayerBlob, changes: list[Change], watched: dict[str, bytes]) -> None:
    for _, change in read_layer(stream, f"base layer {blob.digest.short}"):
        if not change.path:
            continue  # the root's own metadata: the tree has no entry for it
        if isinstance(change, Entry):
            if change.path in WATCHED and change.content is not None:
                with change.content() as member:
                    watched[change.path] = read_account_file(member, change.size, change.path)
            change = change.meta()
        changes.append(change)


def update_tree(tree: FsTree, layers: Sequence[LayerBlob]) -> FsTree:
    """Apply ``layers`` (bottom to top, whiteouts honoured) to the metadata ``tree``."""
    for blob in layers:
        changes, watched = _layer_changes(blob)
        tree.apply(changes)
        for path, content in watched.items():
            tree.capture(path, content)
    return tree
