"""Reading an OCI layout: the image (or index) a tag names, every manifest, index and config checked.

Documents are checked against their descriptors' size and digest before they are parsed, and
only regular files are opened (a FIFO would block, a device never end, a link lead anywhere).
Layers come back unverified: they are checked whenever they are copied or unpacked.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from builder.attest.referrer import MAX_DOCUMENT, Referrer, read_referrer
from builder.errors import InputError, IntegrityError
from builder.fs.atomic import ContentMismatchError, NotRegularFileError, copy_verified, open_regular
from builder.image import Image, ImageIndex, LayerBlob, image_from
from builder.layout.format import MAX_JSON, blob_path, is_layout, load_index, reason
from builder.oci.canonical import json_object
from builder.oci.descriptor import Descriptor, is_referrer, select_platform
from builder.oci.digest import Digest
from builder.oci.manifest import REF_NAME, index_entries, manifest_blobs
from builder.oci.mediatypes import INDEX_TYPES, MANIFEST_TYPES
from builder.oci.platform import Platform


def read_layout(path: Path, tag: str | None = None, platform: Platform | None = None) -> Image | ImageIndex:
    """The image tagged ``tag`` in layout ``path``; with ``platform``, one image out of an index.

    ``tag`` None picks the only entry, else the one tagged ``latest``. Manifest, index and
    config bytes are checked against their digests here; layers come back unverified and are
    checked when copied.
    """
    desc = find_ref(layout_entries(path), tag, path)
    return _load(path, desc, platform, 0)


def layout_entries(path: Path, referrers: bool = False) -> list[Descriptor]:
    """The descriptors of a layout's ``index.json``, in its order (each tag's, and untagged ones):
    its images, or with ``referrers`` its referrers (:func:`builder.oci.descriptor.is_referrer`)."""
    if not path.exists():
        raise InputError(f"{path}: no such OCI image layout")
    if not is_layout(path):
        raise InputError(f"{path}: not an OCI image layout (no oci-layout or index.json)")
    index = load_index(path / "index.json", InputError)
    return [d for d in _entries(index, path / "index.json") if is_referrer(d) == referrers]


def layout_referrers(path: Path, subject: Digest) -> list[Referrer]:
    """The referrers of ``subject`` that the layout lists, each manifest and document verified."""
    found = []
    for desc in layout_entries(path, referrers=True):
        raw, manifest = read_json_blob(path, desc)
        try:
            if Descriptor.from_json(manifest["subject"]).digest != subject:
                continue
            (layer,) = manifest_blobs(manifest)[1]
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{blob_path(path, desc.digest)}: not a referrer manifest: {exc}") from None
        if layer.size > MAX_DOCUMENT:
            raise InputError(f"{blob_path(path, layer.digest)}: {layer.size} bytes is too large for an attestation")
        document, _ = _read_blob(path, layer)
        try:
            found.append(read_referrer(raw, document))
        except ValueError as exc:
            raise InputError(f"{blob_path(path, desc.digest)}: {exc}") from None
    return found


def read_entry(path: Path, desc: Descriptor) -> Image | ImageIndex:
    """The image or index one of :func:`layout_entries` names, its JSON verified."""
    return _load(path, desc, None, 0)


def find_ref(entries: Sequence[Descriptor], tag: str | None, where: Path) -> Descriptor:
    """The descriptor of ``tag`` (a ref name, or a digest) among a layout's index entries."""
    entries = [d for d in entries if not is_referrer(d)]
    if tag is None:
        if len(entries) == 1:
            return entries[0]
        tag = "latest"
    for desc in entries:
        if desc.annotations.get(REF_NAME) == tag or str(desc.digest) == tag:
            return desc
    tags = ", ".join(repr(d.annotations[REF_NAME]) for d in entries if REF_NAME in d.annotations) or "none"
    raise InputError(f"{where}: no image tagged {tag!r} (tags present: {tags})")


def _entries(index: dict[str, Any], where: Path) -> list[Descriptor]:
    try:
        return index_entries(index)
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from exc


def read_json_blob(root: Path, desc: Descriptor) -> tuple[bytes, dict[str, Any]]:
    """A manifest, index or config: its bytes, checked against the descriptor's size and digest, and its object.

    Only a regular file is opened, and no more than the descriptor's size (+1, to see excess) is read.
    """
    path = blob_path(root, desc.digest)
    if desc.size > MAX_JSON:
        raise InputError(f"{path}: {desc.size} bytes is too large for a manifest, index or config")
    data, path = _read_blob(root, desc)
    try:
        return data, json_object(data)
    except (ValueError, RecursionError) as exc:
        raise InputError(f"{path}: invalid JSON: {reason(exc)}") from exc


def _read_blob(root: Path, desc: Descriptor) -> tuple[bytes, Path]:
    """A small blob's bytes, checked against its descriptor, and where it is (for messages)."""
    path = blob_path(root, desc.digest)
    kept = io.BytesIO()
    try:
        with os.fdopen(open_regular(path), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size != desc.size:  # not read at all: it cannot be the blob
                raise IntegrityError(f"{path}: {size} bytes, descriptor says {desc.size}")
            copy_verified(f, kept, desc.digest, desc.size)
    except ContentMismatchError as exc:  # not the blob, or it changed since its size was taken
        if exc.kind == "digest":
            raise IntegrityError(f"{path}: content is {exc.actual}, expected {desc.digest}") from None
        raise IntegrityError(f"{path}: {exc.count} bytes, descriptor says {desc.size}") from None
    except NotRegularFileError as exc:
        raise InputError(f"{path}: blob is {exc.strerror}") from exc
    except OSError as exc:
        raise InputError(f"{path}: blob missing from the layout") from exc
    return kept.getvalue(), path


def _load(root: Path, desc: Descriptor, platform: Platform | None, depth: int) -> Image | ImageIndex:
    where = blob_path(root, desc.digest)
    if desc.media_type in MANIFEST_TYPES:
        return load_image(root, desc)
    if desc.media_type not in INDEX_TYPES or depth > 3:
        raise InputError(f"{where}: unsupported media type {desc.media_type!r}")
    raw, index = read_json_blob(root, desc)
    children = _entries(index, where)
    if platform is not None:
        return _load(root, select_platform(children, platform, where), platform, depth + 1)
    images = []
    for child in children:
        if child.media_type not in MANIFEST_TYPES:
            raise InputError(f"{where}: nested {child.media_type!r} entries are not supported without a platform")
        images.append(load_image(root, child))
    return ImageIndex(raw, tuple(images), desc.media_type)


def load_image(root: Path, desc: Descriptor) -> Image:
    """One image manifest, its config and (unverified) layer blobs from layout ``root``."""
    where = blob_path(root, desc.digest)
    raw_manifest, manifest = read_json_blob(root, desc)
    try:
        cdesc, _ = manifest_blobs(manifest)
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from exc
    raw_config, _ = read_json_blob(root, cdesc)
    try:
        return image_from(desc, raw_manifest, raw_config, lambda ldesc, diff_id: _layer(root, ldesc, diff_id))
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from exc


def _layer(root: Path, desc: Descriptor, diff_id: Digest) -> LayerBlob:
    path = blob_path(root, desc.digest)
    try:
        mode = path.lstat().st_mode
    except OSError:
        raise InputError(f"{path}: layer blob missing from the layout") from None
    if not stat.S_ISREG(mode):  # a FIFO would block its readers, a device never end, a link lead anywhere
        raise InputError(f"{path}: layer blob is not a regular file")
    return LayerBlob(desc, diff_id, path, None, False)
