"""Built or loaded images as immutable values: raw manifest and config bytes plus layer blobs.

As in go-containerregistry, the digests are always computed over the raw bytes that are
written (``digest`` = sha256 of the manifest, ``image_id`` = sha256 of the config), and a
loaded image keeps the bytes it was read from.

The rules every reader and writer (layout, archive, registry) applies to these values are here
too, one function each, so that they cannot drift apart: making an image of a manifest and its
config (:func:`image_from`), choosing one by platform (:func:`select_image`), and listing every
blob once (:func:`unique_blobs`, :func:`layout_blobs`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from builder.oci.canonical import json_object
from builder.oci.config import diff_ids, platform_of
from builder.oci.descriptor import Descriptor, is_attestation, select_platform
from builder.oci.digest import Digest
from builder.oci.manifest import manifest_blobs
from builder.oci.platform import Platform


@dataclass(frozen=True)
class LayerBlob:
    """One layer: its compressed blob (``descriptor``: digest, size, media type) and its diff_id.

    ``path`` is where the compressed bytes are. ``verified`` is True when pybuild wrote them in
    this process (so they are known to match); blobs from a base image are checked against
    their digest whenever they are copied.
    """

    descriptor: Descriptor
    diff_id: Digest
    path: Path
    uncompressed_size: int | None = None
    verified: bool = False
    mount_from: str | None = None
    """A repository of the registry the image is pushed to that holds this blob, whose bytes are not
    at ``path`` (yet): a registry cache hit the build did not need to read. A push mounts it; a
    reader must fetch it first (:meth:`builder.stepcache.StepCache.materialize`)."""

    @property
    def digest(self) -> Digest:
        """The compressed blob's digest: the name it has in ``blobs/sha256``."""
        return self.descriptor.digest


@dataclass(frozen=True)
class Image:
    """One platform's image: manifest + config bytes and the layers they name."""

    raw_manifest: bytes
    raw_config: bytes
    media_type: str
    layers: tuple[LayerBlob, ...]
    platform: Platform

    @cached_property
    def digest(self) -> Digest:
        """The image digest: sha256 of the manifest bytes, the id a registry knows."""
        return Digest.of(self.raw_manifest)

    @cached_property
    def image_id(self) -> Digest:
        """The image id: sha256 of the config bytes, the id a local store (docker, podman) shows."""
        return Digest.of(self.raw_config)

    @cached_property
    def manifest(self) -> dict[str, Any]:
        value: dict[str, Any] = json_object(self.raw_manifest)
        return value

    @cached_property
    def config(self) -> dict[str, Any]:
        value: dict[str, Any] = json_object(self.raw_config)
        return value

    @property
    def config_descriptor(self) -> Descriptor:
        return Descriptor.from_json(self.manifest["config"])

    def descriptor(self, annotations: dict[str, str] | None = None) -> Descriptor:
        """How an index points to this image."""
        return Descriptor(self.media_type, self.digest, len(self.raw_manifest), annotations or {}, self.platform)


@dataclass(frozen=True)
class ImageIndex:
    """Several platforms' images under one OCI image index (``raw_index`` lists their manifests)."""

    raw_index: bytes
    images: tuple[Image, ...]
    media_type: str = "application/vnd.oci.image.index.v1+json"

    @cached_property
    def digest(self) -> Digest:
        return Digest.of(self.raw_index)

    @cached_property
    def index(self) -> dict[str, Any]:
        value: dict[str, Any] = json_object(self.raw_index)
        return value

    def descriptor(self, annotations: dict[str, str] | None = None) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.raw_index), annotations or {})


@dataclass(frozen=True)
class Blob:
    """One blob to store or send: its digest, its size if known, and its bytes (in memory or in a file).

    ``verified`` as for :class:`LayerBlob`: a writer copies an unverified file while hashing it.
    """

    digest: Digest
    size: int | None
    data: bytes | None = None
    path: Path | None = None
    verified: bool = False
    mount_from: str | None = None
    """As :attr:`LayerBlob.mount_from`."""


def image_from(desc: Descriptor, raw_manifest: bytes, raw_config: bytes,
               layer: Callable[[Descriptor, Digest], LayerBlob]) -> Image:
    """The image that the manifest ``desc`` points to and its config make; ValueError if they disagree.

    Every reader (layout, archive, registry) comes here, so an image means the same whatever it was
    read from: a layer per manifest entry, paired with the config's diff_ids in order; an
    attestation's placeholder config names no diff_ids, so its layers (in-toto documents) stand
    for their own; the platform is the index entry's, else the config's. ``layer`` makes one
    :class:`LayerBlob` from a layer's descriptor and diff_id: where the reader keeps its bytes,
    and whether they are verified, are the reader's to say.
    """
    try:
        manifest = json_object(raw_manifest)
    except ValueError as exc:
        raise ValueError(f"malformed manifest: {exc}") from exc
    _, layers = manifest_blobs(manifest)
    try:
        config = json_object(raw_config)
    except ValueError as exc:
        raise ValueError(f"config {Digest.of(raw_config)}: invalid JSON: {exc}") from exc
    try:
        ids = diff_ids(config)
    except ValueError:
        ids = []
    if len(ids) != len(layers):
        if not is_attestation(desc):
            raise ValueError(f"config has {len(ids)} diff_ids but the manifest has {len(layers)} layers")
        ids = [d.digest for d in layers]
    blobs = tuple(layer(ldesc, diff_id) for ldesc, diff_id in zip(layers, ids, strict=True))
    return Image(raw_manifest, raw_config, desc.media_type, blobs, desc.platform or platform_of(config))


def select_image(images: Sequence[Image], want: Platform, where: object) -> Image:
    """The image for ``want`` among ``images`` (an index's, or the one image read), or InputError.

    By :func:`~builder.oci.descriptor.select_platform`'s rule, the one a reader applies to an
    index's entries, so choosing among images already read, or checking a single image, can
    neither pick nor refuse differently, nor say so in other words.
    """
    descriptors = [image.descriptor() for image in images]
    chosen = select_platform(descriptors, want, where)
    return images[next(i for i, desc in enumerate(descriptors) if desc is chosen)]


def runnable_images(image: Image | ImageIndex) -> list[Image]:
    """The images that run somewhere: an index's, less its attestation manifests."""
    if isinstance(image, Image):
        return [image]
    return [img for img in image.images if not is_attestation(img.descriptor())]


def images_of(image: Image | ImageIndex) -> tuple[Image, ...]:
    return image.images if isinstance(image, ImageIndex) else (image,)


def unique_blobs(images: Sequence[Image]) -> list[Blob]:
    """Every layer and config of ``images``, each once: all layers first, configs after.

    Layers first because they take longest to send; configs (and then the manifests that name
    both) after them, so a writer or a push that goes in this order never stores a document
    before what it names. Images of an index share layers, and an image may repeat one: each is
    written, uploaded or archived once.
    """
    files: list[Blob] = []
    for img in images:
        files += [Blob(layer.digest, layer.descriptor.size, None, layer.path, layer.verified, layer.mount_from)
                  for layer in img.layers]
    configs = [Blob(img.image_id, len(img.raw_config), img.raw_config) for img in images]
    return _once([*files, *configs])


def layout_blobs(image: Image | ImageIndex) -> list[Blob]:
    """Every blob an OCI layout of ``image`` holds, each once: :func:`unique_blobs`, then the manifests,
    then the index (the document that names them all comes last)."""
    images = images_of(image)
    documents = [Blob(img.digest, len(img.raw_manifest), img.raw_manifest) for img in images]
    if isinstance(image, ImageIndex):
        documents.append(Blob(image.digest, len(image.raw_index), image.raw_index))
    return _once([*unique_blobs(images), *documents])


def _once(blobs: Iterable[Blob]) -> list[Blob]:
    """``blobs`` in order, each digest the first time only."""
    found: dict[Digest, Blob] = {}
    for blob in blobs:
        found.setdefault(blob.digest, blob)
    return list(found.values())
