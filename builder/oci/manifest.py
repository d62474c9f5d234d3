"""Image manifests and indexes as JSON: built from descriptors, and read back into them."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

from builder.oci.descriptor import Descriptor
from builder.oci.digest import Digest
from builder.oci.mediatypes import MediaType

REF_NAME = "org.opencontainers.image.ref.name"
BASE_NAME = "org.opencontainers.image.base.name"
BASE_DIGEST = "org.opencontainers.image.base.digest"
CREATED = "org.opencontainers.image.created"

EMPTY_JSON = b"{}"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = Descriptor(EMPTY_TYPE, Digest.of(EMPTY_JSON), len(EMPTY_JSON))
"""The config of an artifact that has none (image-spec 1.1 manifest.md, "Guidelines for artifact usage")."""


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


def artifact_manifest(artifact_type: str, layers: Sequence[Descriptor], annotations: Mapping[str, str] | None = None,
                      subject: Descriptor | None = None) -> dict[str, Any]:
    """An artifact manifest (image-spec 1.1): an image manifest with ``artifactType``, the empty config
    (its two bytes inline as ``data``, so a reader need not fetch them) and, for a referrer, a ``subject``."""
    out = image_manifest(EMPTY_CONFIG, layers, annotations)
    out["config"]["data"] = base64.b64encode(EMPTY_JSON).decode()
    out["artifactType"] = artifact_type
    if subject is not None:
        out["subject"] = Descriptor(subject.media_type, subject.digest, subject.size).to_json()
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


def manifest_blobs(manifest: Mapping[str, Any]) -> tuple[Descriptor, tuple[Descriptor, ...]]:
    """The config and the layers an image manifest names; ValueError if it is malformed.

    Apart from :func:`builder.image.image_from` because a pull must fetch these before it has the
    config.
    """
    try:
        config = Descriptor.from_json(manifest["config"])
        layers = tuple(Descriptor.from_json(d) for d in manifest.get("layers") or [])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed manifest: {exc}") from exc
    return config, layers


def index_entries(index: Mapping[str, Any]) -> list[Descriptor]:
    """The descriptors an image index lists, in its order; ValueError without a list of them, or for a bad one.

    One reading for a layout's index.json, the indexes inside it and a registry's, so an index
    one reader takes the others take too.
    """
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise ValueError("index has no manifests list")
    try:
        return [Descriptor.from_json(e) for e in entries]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed descriptor in the index: {exc}") from exc
