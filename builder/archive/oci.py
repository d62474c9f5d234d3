"""``oci-archive``: an OCI image layout in one tar file, written and read.

The archive holds exactly the layout ``builder.layout.write`` would write, so reading one is
reading that layout once its members are extracted, with the messages naming the archive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from builder.archive.manifestjson import docker_members
from builder.archive.tar import DIR, extract, write_tar
from builder.attest.referrer import Referrer
from builder.errors import InputError
from builder.image import Blob, Image, ImageIndex, layout_blobs
from builder.layout.format import OCI_LAYOUT, blob_name, is_layout
from builder.layout.read import read_layout
from builder.layout.write import check_ref_name, referrer_blobs
from builder.oci.canonical import canonical_json
from builder.oci.manifest import REF_NAME, image_index
from builder.oci.platform import Platform


def write_oci_archive(out: Path, image: Image | ImageIndex, tag: str, epoch: int,
                      referrers: Sequence[Referrer] = ()) -> None:
    """Write ``image`` tagged ``tag`` (and its ``referrers``) as an OCI layout in one tar file at ``out``.

    With referrers, the archive also carries ``manifest.json`` (see :mod:`builder.archive.manifestjson`),
    so that it loads wherever it loaded without them.
    """
    check_ref_name(tag, out)
    members = layout_members(image, tag, referrers)
    if referrers:
        members.update(docker_members(image, tag, out))
    write_tar(out, members, epoch)


def layout_members(image: Image | ImageIndex, tag: str,
                   referrers: Sequence[Referrer] = ()) -> dict[str, bytes | Blob | None]:
    """Archive member name -> content (bytes, a blob, or ``DIR``) of the OCI layout: the one
    :func:`builder.layout.write.write_layout` makes, referrers listed untagged beside the image."""
    entries = [image.descriptor({REF_NAME: tag}), *(r.descriptor() for r in referrers)]
    members: dict[str, bytes | Blob | None] = {
        "oci-layout": OCI_LAYOUT,
        "index.json": canonical_json(image_index(entries)),
        "blobs/": DIR,
    }
    for blob in referrer_blobs(layout_blobs(image), referrers):
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
