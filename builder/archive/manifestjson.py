"""``manifest.json`` and ``repositories``: the files ``docker load`` (and ``podman load``'s docker
reader) go by, written beside an OCI layout in an archive.

A docker-archive always has them. An OCI archive has them when it lists referrers: ``podman
load`` (4.x) and skopeo's ``oci-archive:FILE`` read an OCI archive only when its ``index.json``
lists exactly one manifest ("more than one image in oci, choose an image"), and podman then
loads the archive by these files instead, as it does a ``docker save`` of Docker 25.
"""

from __future__ import annotations

from pathlib import Path

from builder.errors import OutputError
from builder.image import Image, ImageIndex, runnable_images, select_image
from builder.layout.format import blob_name
from builder.oci.canonical import canonical_json
from builder.oci.platform import Platform


def docker_members(image: Image | ImageIndex, tag: str, out: Path, platform: Platform | None = None,
                   ) -> dict[str, bytes | None]:
    """``manifest.json`` and ``repositories`` for ``image`` tagged ``tag``, as archive members.

    ``manifest.json`` lists every image of an index, one entry per platform, but a name can
    point at one image only: ``RepoTags`` is on the image for ``platform``, or when that is None
    on the first (non-attestation) image of the index, the recipe's first platform; the other
    platforms' entries are untagged (``docker load`` loads them by id). That keeps the file the
    same on every machine; the CLI may pass the host platform instead.
    """
    chosen = _pick(image, platform, out)
    repo_tag = docker_repo_tag(tag)
    repo, _, short = repo_tag.rpartition(":")
    others = [img for img in runnable_images(image) if img is not chosen]
    manifest = [
        {
            "Config": blob_name(img.image_id),
            "RepoTags": [repo_tag] if img is chosen else [],
            "Layers": [blob_name(layer.digest) for layer in img.layers],
        }
        for img in (chosen, *others)
    ]
    return {"manifest.json": canonical_json(manifest),
            "repositories": canonical_json({repo: {short: chosen.image_id.hex}})}


def docker_repo_tag(tag: str) -> str:
    """The ``RepoTags`` entry for ``tag``: as given, with ``:latest`` added when it has no tag part."""
    return tag if ":" in tag.rsplit("/", 1)[-1] else f"{tag}:latest"


def _pick(image: Image | ImageIndex, platform: Platform | None, out: Path) -> Image:
    if isinstance(image, Image):
        return image
    if platform is not None:
        return select_image(image.images, platform, out)
    runnable = runnable_images(image)
    if not runnable:
        raise OutputError(f"{out}: the index has no image to run, only attestations")
    return runnable[0]
