"""Base images from local files: an OCI layout, an OCI archive, or a docker-archive (``docker save``).

Each kind is read where its format is written (``builder.layout``, ``builder.archive``), so a
base is read exactly as pybuild's own outputs are. An archive is extracted, every blob hashed
on the way, so the layers of an image read from one are verified; its layer paths live in
``workdir``: keep it until the build is done with them.
"""

from __future__ import annotations

from pathlib import Path

from builder.archive.docker import read_docker_archive
from builder.archive.oci import read_oci_archive
from builder.attest.referrer import Referrer
from builder.errors import InputError
from builder.image import Image, ImageIndex, images_of, select_image
from builder.layout.format import is_layout
from builder.layout.read import layout_referrers, read_layout
from builder.oci.platform import Platform

KINDS = ("oci", "oci-archive", "docker-archive")


def open_local(kind: str, path: Path, tag: str | None, workdir: Path,
               platform: Platform | None = None) -> Image | ImageIndex:
    """The image (or index; with ``platform``, the one image for it) at ``kind:path[:tag]``.

    ``kind`` is one of :data:`KINDS`; an archive is extracted under ``workdir``, which must outlive
    the use of the result's layers. ``docker-archive`` also reads an OCI archive (``docker save``
    writes an OCI layout into its tar since Docker 25, and the readers are one).
    """
    if kind == "oci":
        return read_layout(path, tag, platform)
    if kind == "oci-archive":
        return read_oci_archive(path, tag, platform, workdir)
    if kind == "docker-archive":
        return read_docker_archive(path, tag, platform, workdir)
    raise InputError(f"{path}: unknown base image kind {kind!r} (expected one of {', '.join(KINDS)})")


def local_referrers(kind: str, path: Path, image: Image | ImageIndex, workdir: Path) -> list[tuple[Image, list[Referrer]]]:
    """Each image of ``image`` (as :func:`open_local` gave it, extracting into ``workdir`` and nothing
    else) and the referrers attached to it in the layout or archive it was read from."""
    root = path
    if kind != "oci":  # the archive's layout, extracted by open_local: the one directory in workdir
        extracted = [p for p in workdir.iterdir() if p.is_dir()]
        if len(extracted) != 1:
            raise ValueError(f"{workdir}: expected the one directory open_local extracts into")
        root = extracted[0]
    if not is_layout(root):  # a docker save of before Docker 25: nowhere to keep referrers
        return [(img, []) for img in images_of(image)]
    return [(img, layout_referrers(root, img.digest)) for img in images_of(image)]


def load_base(kind: str, path: Path, tag: str | None, platform: Platform, workdir: Path) -> Image:
    """The ``platform`` image of the base ``kind:path[:tag]`` (``kind`` is one of :data:`KINDS`)."""
    image = open_local(kind, path, tag, workdir, platform)
    if not isinstance(image, Image):
        raise InputError(f"{path}: expected one image for {platform}, found an index")
    return select_image((image,), platform, path)
