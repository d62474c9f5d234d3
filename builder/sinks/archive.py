"""The OCI layout as one tar file: ``oci-archive``, and ``docker-archive`` (the same plus Docker's index).

A docker-archive here is what ``docker save`` writes since Docker 25 (moby/moby#44598): a
valid OCI layout with ``manifest.json`` and ``repositories`` beside it, so ``docker load``,
``podman load``, ``ctr images import`` and OCI tools all read the same file.

Both are deterministic: names sorted, every time ``epoch``, owner 0:0 with no names, modes
0644/0755, PAX headers only where a name or size needs them. Blobs are streamed from their
files, never loaded whole, and the archive is written to a locked temporary file beside OUT
and renamed over it, so OUT is either the old file or the complete new one, even if the
process is killed (the next build removes the temporary file a dead process left).
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from builder.errors import InputError, IntegrityError, OutputError
from builder.image import Blob, Image, ImageIndex, layout_blobs, runnable_images, select_image
from builder.layout.format import OCI_LAYOUT
from builder.layout.write import check_ref_name
from builder.oci.canonical import canonical_json
from builder.oci.manifest import REF_NAME, image_index
from builder.oci.platform import Platform
from builder.sinks.lock import NotRegularFileError, open_regular, private_sibling

_DIR = None  # marks a directory entry among the archive's members


class _HashingReader:
    """Reads through ``raw`` while hashing, so an unverified blob is checked as it is archived."""

    def __init__(self, raw: IO[bytes], algorithm: str) -> None:
        self._raw = raw
        self.hasher = hashlib.new(algorithm)

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.hasher.update(data)
        return data


def write_oci_archive(out: Path, image: Image | ImageIndex, tag: str, epoch: int) -> None:
    """Write ``image`` tagged ``tag`` as an OCI layout in one tar file at ``out``."""
    check_ref_name(tag, out)
    _write(out, _layout_members(image, tag), epoch)


def write_docker_archive(
    out: Path, image: Image | ImageIndex, tag: str, epoch: int, platform: Platform | None = None
) -> None:
    """Write the OCI archive plus ``manifest.json`` and ``repositories`` for ``docker load``.

    ``manifest.json`` lists every image of an index, one entry per platform, but a name can
    point at one image only: ``RepoTags`` is on the image for ``platform``, or when that is None
    on the first (non-attestation) image of the index, the recipe's first platform; the other
    platforms' entries are untagged (``docker load`` loads them by id). That keeps the file the
    same on every machine; the CLI may pass the host platform instead. ``index.json`` still names
    the whole index, for the loaders that read it (Docker 25+, containerd, podman).
    """
    check_ref_name(tag, out)
    chosen = _pick(image, platform, out)
    repo_tag = docker_repo_tag(tag)
    repo, _, short = repo_tag.rpartition(":")
    members = _layout_members(image, tag)
    others = [img for img in runnable_images(image) if img is not chosen]
    manifest = [
        {
            "Config": f"blobs/{img.image_id.algorithm}/{img.image_id.hex}",
            "RepoTags": [repo_tag] if img is chosen else [],
            "Layers": [f"blobs/{layer.digest.algorithm}/{layer.digest.hex}" for layer in img.layers],
        }
        for img in (chosen, *others)
    ]
    members["manifest.json"] = canonical_json(manifest)
    members["repositories"] = canonical_json({repo: {short: chosen.image_id.hex}})
    _write(out, members, epoch)


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


def _layout_members(image: Image | ImageIndex, tag: str) -> dict[str, bytes | Blob | None]:
    """Archive member name -> content (bytes, a blob, or ``_DIR``) of the OCI layout."""
    members: dict[str, bytes | Blob | None] = {
        "oci-layout": OCI_LAYOUT,
        "index.json": canonical_json(image_index([image.descriptor({REF_NAME: tag})])),
        "blobs/": _DIR,
    }
    for blob in layout_blobs(image):
        members[f"blobs/{blob.digest.algorithm}/"] = _DIR
        members[f"blobs/{blob.digest.algorithm}/{blob.digest.hex}"] = blob
    return members


def _info(name: str, epoch: int, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name.rstrip("/"))  # tarfile adds the trailing '/' of a directory itself
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.size = size
    info.mtime = epoch
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write(out: Path, members: Mapping[str, bytes | Blob | None], epoch: int) -> None:
    """Write the archive to a private sibling of ``out`` and rename it over ``out`` once complete.

    The sibling is locked while it is written, so if this process dies the next build removes it
    (see ``builder.sinks.lock``); several writers each rename a complete file, and the last wins.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.is_dir():
            raise OutputError(f"{out}: is a directory; an archive output must be a file")
        with private_sibling(out, "tmp", directory=False) as tmp:
            with open(tmp, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for name in sorted(members):
                    _add(tar, name, members[name], epoch)
            tmp.replace(out)
    except OSError as exc:
        raise OutputError(f"{out}: cannot write: {exc.strerror or exc}") from exc


def _add(tar: tarfile.TarFile, name: str, content: bytes | Blob | None, epoch: int) -> None:
    if content is None:
        tar.addfile(_info(name, epoch, directory=True))
    elif isinstance(content, bytes):
        tar.addfile(_info(name, epoch, len(content)), io.BytesIO(content))
    elif content.data is not None:
        tar.addfile(_info(name, epoch, len(content.data)), io.BytesIO(content.data))
    elif content.path is not None:
        _add_file(tar, name, content, content.path, epoch)


def _add_file(tar: tarfile.TarFile, name: str, blob: Blob, path: Path, epoch: int) -> None:
    """Stream one blob file into the archive, checking its size and (unless verified) its digest.

    Only a regular file is read (a FIFO or a device would never end), and only as many bytes as
    its size when opened: the tar header is written with that size.
    """
    try:
        with os.fdopen(open_regular(path), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if blob.size is not None and size != blob.size:
                raise IntegrityError(f"{path}: {size} bytes, descriptor says {blob.size}")
            reader = _HashingReader(f, blob.digest.algorithm)
            tar.addfile(_info(name, epoch, size), reader)
    except NotRegularFileError as exc:
        raise InputError(f"{path}: blob source is {exc.strerror}") from exc
    except FileNotFoundError as exc:
        raise InputError(f"{path}: blob source missing") from exc
    if not blob.verified and reader.hasher.hexdigest() != blob.digest.hex:
        actual = f"{blob.digest.algorithm}:{reader.hasher.hexdigest()}"
        raise IntegrityError(f"{path}: content is {actual}, expected {blob.digest}")
