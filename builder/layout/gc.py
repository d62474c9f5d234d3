"""Garbage collection of an OCI layout: every blob no tag leads to any more is deleted.

Reachability is read from the documents on disk, not from the images pybuild knows: a
layout may hold other tools' images, artifacts, referrers (``subject``) and nested indexes,
and whatever a document names is kept, looked into only when it is a manifest or an index.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from builder.layout.format import blob_path, read_json
from builder.oci.digest import Digest
from builder.oci.mediatypes import INDEX_TYPES, MANIFEST_TYPES


def collect_garbage(root: Path) -> None:
    """Delete every blob not reachable from ``index.json``; do nothing if reachability is unknowable."""
    keep = _reachable(root)
    if keep is None or not (root / "blobs").is_dir():
        return
    for algdir in sorted((root / "blobs").iterdir()):
        if algdir.is_dir() and not algdir.is_symlink():
            for entry in algdir.iterdir():
                if Digest(algdir.name, entry.name) not in keep and not entry.is_dir():
                    entry.unlink(missing_ok=True)


def _reachable(root: Path) -> set[Digest] | None:
    """The digest of every blob reachable from index.json: manifests, indexes, configs, layers.

    Blobs of unknown media types are kept but not looked into. None when a manifest or index on
    the way cannot be read: better to keep garbage than to delete what a broken document names.
    """
    try:
        entries: list[Any] = list(read_json(root / "index.json")["manifests"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    return reachable([root], entries)


def reachable(roots: Sequence[Path], entries: Sequence[Any]) -> set[Digest] | None:
    """The digest of every blob reachable from the descriptors ``entries`` (JSON objects), their
    documents read from the first of the layout directories ``roots`` that has them."""
    stack = list(entries)
    keep: set[Digest] = set()
    while stack:
        entry = stack.pop()
        try:
            digest = Digest.parse(str(entry.get("digest")))
        except (ValueError, AttributeError):  # not a descriptor
            continue
        if digest in keep:
            continue
        keep.add(digest)
        if entry.get("mediaType") in MANIFEST_TYPES | INDEX_TYPES:
            try:
                doc = read_json(next((p for r in roots if (p := blob_path(r, digest)).exists()),
                                     blob_path(roots[0], digest)))
                stack += [doc.get("config"), doc.get("subject"), *(doc.get("layers") or [])]
                stack += [*(doc.get("manifests") or []), *(doc.get("blobs") or [])]
            except (OSError, ValueError, AttributeError, TypeError, RecursionError):
                return None
    return keep
