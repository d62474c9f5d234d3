"""One image index from single-platform images built on separate runners (``pybuild index create``).

Each platform is built natively on its own runner and pushed on its own; the join then writes
the index that names them all, as ``docker buildx imagetools create`` and ``buildah manifest``
do. It reads only manifests and configs (a few kB each: the config says the platform): a layer
is never downloaded when the images already live in the target repository, and is mounted from
its repository when they live in another repository of the same registry. Only an image on
another registry has its blobs copied, streamed through a temp file one at a time.

Two sources of the same platform are refused: an index may name each platform once, or a
runtime would pick one of them arbitrarily.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.errors import InputError, RegistryError
from builder.oci.canonical import canonical_json, json_object
from builder.oci.config import platform_of
from builder.oci.descriptor import Descriptor, is_attestation
from builder.oci.digest import Digest
from builder.oci.manifest import image_index
from builder.oci.mediatypes import INDEX_TYPES, MANIFEST_TYPES, MediaType
from builder.oci.platform import Platform
from builder.oci.reference import Reference
from builder.registry.client import RegistryClient
from builder.registry.options import RegistryOptions
from builder.registry.pull import index_children, parse_manifest

EventSink = Callable[[str, Digest, int], None]


@dataclass(frozen=True)
class _Source:
    """One image of a source: its manifest bytes and digest, its blobs, and its platform."""

    ref: Reference
    raw: bytes
    media_type: str
    digest: Digest
    blobs: tuple[Descriptor, ...]
    platform: Platform


def join_images(target: Reference, sources: Sequence[Reference], options: RegistryOptions | None = None,
                on_event: EventSink | None = None) -> Digest:
    """Write at ``target`` an image index of the images ``sources`` name; returns the index digest.

    A source that is itself an index contributes each of its platforms (attestations left out).
    """
    emit = on_event if on_event is not None else (lambda kind, digest, size: None)
    images: list[_Source] = []
    seen: dict[Platform, Reference] = {}
    with tempfile.TemporaryDirectory(prefix="pybuild-join-") as scratch:
        for ref in sources:
            for image in _images(ref, options, Path(scratch)):
                if image.platform in seen:
                    raise InputError(f"{ref} and {seen[image.platform]} are both for {image.platform}: an index "
                                     "names each platform once")
                seen[image.platform] = ref
                images.append(image)
        if not images:
            raise InputError("no image to join")
        with RegistryClient(target, options, push=True) as dst:
            for image in images:
                _copy_into(dst, image, options, Path(scratch), emit)
            raw = canonical_json(image_index([Descriptor(i.media_type, i.digest, len(i.raw), platform=i.platform)
                                              for i in images]))
            dst.put_manifest(target.identifier, raw, MediaType.OCI_INDEX)
            emit("manifest", Digest.of(raw), len(raw))
            return Digest.of(raw)


def _images(ref: Reference, options: RegistryOptions | None, scratch: Path) -> list[_Source]:
    with RegistryClient(ref, options) as client:
        raw, media_type, digest = client.get_manifest(ref.identifier)
        if media_type in INDEX_TYPES:
            out = []
            for child in index_children(raw, ref):
                if is_attestation(child) or child.media_type not in MANIFEST_TYPES:
                    continue
                child_raw, child_type, _ = client.get_manifest(child.digest)
                out.append(_image(client, ref, child_raw, child_type, child.digest, scratch))
            return out
        if media_type not in MANIFEST_TYPES:
            raise RegistryError(f"{ref}: a {media_type}, not an image")
        return [_image(client, ref, raw, media_type, digest, scratch)]


def _image(client: RegistryClient, ref: Reference, raw: bytes, media_type: str, digest: Digest,
           scratch: Path) -> _Source:
    manifest = parse_manifest(Descriptor(media_type, digest, len(raw)), raw, ref)
    config, layers = manifest.config, manifest.layers
    path = scratch / config.digest.hex
    client.fetch_blob(config.digest, config.size, path)
    try:
        platform = platform_of(json_object(path.read_bytes()))
    except ValueError as exc:
        raise RegistryError(f"{ref}: config {config.digest.short}: {exc}") from None
    if not platform.os or not platform.architecture:
        raise InputError(f"{ref}: its config names no platform (os and architecture)")
    return _Source(ref, raw, media_type, digest, (config, *layers), platform)


def _copy_into(dst: RegistryClient, image: _Source, options: RegistryOptions | None, scratch: Path,
               emit: EventSink) -> None:
    """``image`` into the target repository: its blobs (mounted if they are on the same registry),
    then its manifest by digest. Nothing is sent for an image the repository already has."""
    same_repo = (image.ref.registry, image.ref.repository) == (dst.ref.registry, dst.ref.repository)
    if same_repo or dst.manifest_digest(image.digest) == image.digest:
        emit("existing", image.digest, len(image.raw))
        return
    with contextlib.ExitStack() as stack:
        src: RegistryClient | None = None
        for blob in image.blobs:
            if dst.blob_exists(blob.digest):
                emit("existing", blob.digest, blob.size)
            elif image.ref.registry == dst.ref.registry and dst.mount_blob(blob.digest, image.ref.repository):
                emit("mounted", blob.digest, blob.size)
            else:  # another registry: streamed through a temp file, one blob at a time
                src = src or stack.enter_context(RegistryClient(image.ref, options))
                path = scratch / f"copy-{blob.digest.hex}"
                src.fetch_blob(blob.digest, blob.size, path)
                try:
                    dst.upload_blob(path, blob.digest, blob.size)
                finally:
                    path.unlink(missing_ok=True)
                emit("pushed", blob.digest, blob.size)
    dst.put_manifest(image.digest, image.raw, image.media_type)
    emit("manifest", image.digest, len(image.raw))
