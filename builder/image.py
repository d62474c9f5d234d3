"""Built or loaded images as immutable values: raw manifest and config bytes plus layer blobs.

As in go-containerregistry, the digests are always computed over the raw bytes that are
written (``digest`` = sha256 of the manifest, ``image_id`` = sha256 of the config), and a
loaded image keeps the bytes it was read from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from builder.oci.canonical import json_object
from builder.oci.descriptor import Descriptor
from builder.oci.digest import Digest
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
    extra_blobs: dict[Digest, Path] = field(default_factory=dict)

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
