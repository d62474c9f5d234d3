"""``oci-archive``: an OCI image layout in one tar file, written and read.

The archive holds exactly the layout ``builder.layout.write`` would write, so reading one is
reading that layout once its members are extracted, with the messages naming the archive.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from builder.archive.tar import DIR, extract, write_tar
from builder.errors import InputError
from builder.image import Blob, Image, ImageIndex, layout_blobs
from builder.layout.format import OCI_LAYOUT, blob_name, is_layout
from builder.layout.read import read_layout
from builder.layout.write import check_ref_name
from builder.oci.canonical import canonical_json
from builder.oci.manifest import REF_NAME, image_index
from builder.oci.platform import Platform


def write_oci_archive(out: Path, image: Image | ImageIndex, tag: str, epoch: int) -> None:
    """Write ``image`` tagged ``tag`` as an OCI layout in one tar file at ``out``."""
    check_ref_name(tag, out)
    write_tar(out, layout_members(image, tag), epoch)


def layout_members(image: Image | ImageIndex, tag: str) -> dict[str, bytes | Blob | None]:
    """Archive member name -> content (bytes, a blob, or ``DIR``) of the OCI layout."""
    members: dict[str, bytes | Blob | None] = {
        "oci-layout": OCI_LAYOUT,
        "index.json": canonical_json(image_index([image.descriptor({REF_NAME: tag})])),
        "blobs/": DIR,
    }
    for blob in layout_blobs(image):
        members[f"blobs/{blob.digest.algorithm}/"] = DIR
        members[blob_name(blob.digest)] = blob
    return members


def read_oci_archive(path: Path, tag: str | None, platform: Platform | None, workdir: Path) -> Image | ImageIndex:
    """The image tagged ``tag`` in the OCI archive ``path`` (with ``platform``, one image out of an index).

    The archive is extracted into ``workdir``, where the result's layers then live: keep it until
    they have been used.
    """
    root, _ = extract(path, workdir, docker=False)
    return read_extracted(root, path, tag, platform)


def read_extracted(root: Path, path: Path, tag: str | None, platform: Platform | None) -> Image | ImageIndex:
    """The image of the layout extracted from archive ``path`` to ``root``, its layers marked verified."""
    if not is_layout(root):
        raise InputError(f"{path}: not an OCI archive (no oci-layout or index.json)")
    try:
        image = read_layout(root, tag, platform)
    except InputError as exc:  # named after the archive, not the scratch directory it was extracted to
        raise InputError(str(exc).replace(str(root), str(path))) from None
    # every blob was hashed against its name while it was extracted, so the layers are known good
    if isinstance(image, ImageIndex):
        return dataclasses.replace(image, images=tuple(_verified(img) for img in image.images))
    return _verified(image)


def _verified(image: Image) -> Image:
    return dataclasses.replace(image, layers=tuple(dataclasses.replace(la, verified=True) for la in image.layers))
