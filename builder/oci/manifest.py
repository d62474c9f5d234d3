"""Image manifests and indexes as JSON, built from descriptors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from builder.oci.descriptor import Descriptor
from builder.oci.mediatypes import MediaType

REF_NAME = "org.opencontainers.image.ref.name"
BASE_NAME = "org.opencontainers.image.base.name"
BASE_DIGEST = "org.opencontainers.image.base.digest"


def image_manifest(
    config: Descriptor, layers: Sequence[Descriptor], annotations: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """An OCI image manifest (image-spec manifest.md)."""
    out: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": str(MediaType.OCI_MANIFEST),
        "config": config.to_json(),
        "layers": [layer.to_json() for layer in layers],
    }
    if annotations:
        out["annotations"] = dict(annotations)
    return out


def image_index(manifests: Sequence[Descriptor], annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """An OCI image index (image-spec image-index.md); also the shape of a layout's index.json."""
    out: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": str(MediaType.OCI_INDEX),
        "manifests": [m.to_json() for m in manifests],
    }
    if annotations:
        out["annotations"] = dict(annotations)
    return out
