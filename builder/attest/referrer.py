"""Documents attached to an image as OCI referrers (image-spec 1.1 ``subject``).

A referrer is an artifact manifest: the empty config, one layer holding the document (a
provenance statement, an SBOM), an ``artifactType`` saying what the document is, and a
``subject`` naming the image it is about. The image itself is not touched: its manifest, and
so its digest, are the same with attestations or without, and a tool that knows nothing of
referrers sees the image it always saw.

Where the referrers of an image live is each output's business: a layout lists them in its
``index.json`` beside the image (as ORAS and regctl do), an archive holds that layout, and a
registry answers the referrers API or keeps the ``sha256-<hex>`` fallback tag
(:mod:`builder.registry.referrers`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from builder.image import Blob
from builder.oci.canonical import canonical_json, json_object
from builder.oci.descriptor import Descriptor
from builder.oci.digest import Digest
from builder.oci.manifest import CREATED, EMPTY_CONFIG, EMPTY_JSON, artifact_manifest
from builder.oci.mediatypes import MediaType

PREDICATE_ANNOTATION = "in-toto.io/predicate-type"
"""The annotation that names an in-toto statement's predicate type (as BuildKit and cosign write it),
so a reader can pick the provenance among a subject's referrers without fetching each one."""

IN_TOTO = "application/vnd.in-toto+json"
SPDX = "application/spdx+json"
CYCLONEDX = "application/vnd.cyclonedx+json"
MAX_REFERRER = 64 << 10
"""A referrer manifest names two blobs: anything much larger is not one."""
MAX_DOCUMENT = 256 << 20
"""The largest attestation document read back into memory (an SBOM listing every file of a large
image is tens of megabytes)."""


@dataclass(frozen=True)
class Referrer:
    """One artifact manifest whose ``subject`` is an image, and the one document it carries."""

    raw_manifest: bytes
    document: bytes
    artifact_type: str
    subject: Descriptor
    annotations: Mapping[str, str]

    @cached_property
    def digest(self) -> Digest:
        return Digest.of(self.raw_manifest)

    @cached_property
    def manifest(self) -> dict[str, Any]:
        value: dict[str, Any] = json_object(self.raw_manifest, limit=MAX_REFERRER)
        return value

    @property
    def document_descriptor(self) -> Descriptor:
        return Descriptor.from_json(self.manifest["layers"][0])

    def descriptor(self) -> Descriptor:
        """How an index or a referrers list points to this manifest: with its artifactType and annotations."""
        return Descriptor(str(MediaType.OCI_MANIFEST), self.digest, len(self.raw_manifest),
                          dict(self.annotations), None, self.artifact_type)

    def blobs(self) -> list[Blob]:
        """What the manifest names (the empty config, the document), then the manifest itself."""
        return [Blob(EMPTY_CONFIG.digest, EMPTY_CONFIG.size, EMPTY_JSON),
                Blob(Digest.of(self.document), len(self.document), self.document),
                Blob(self.digest, len(self.raw_manifest), self.raw_manifest)]


def attach(subject: Descriptor, artifact_type: str, document: bytes, created: str,
           annotations: Mapping[str, str] | None = None) -> Referrer:
    """The referrer carrying ``document`` (of media type ``artifact_type``) about ``subject``.

    ``created`` (RFC 3339, from the build epoch) is the one annotation every referrer has: the
    referrers API repeats manifest annotations, and clients sort by it to take the newest.
    """
    notes = {CREATED: created, **(annotations or {})}
    layer = Descriptor(artifact_type, Digest.of(document), len(document))
    subject = Descriptor(subject.media_type, subject.digest, subject.size)
    raw = canonical_json(artifact_manifest(artifact_type, [layer], notes, subject))
    return Referrer(raw, document, artifact_type, subject, notes)


def read_referrer(raw: bytes, document: bytes) -> Referrer:
    """A referrer from its manifest bytes and its document's; ValueError if they are not one."""
    doc = json_object(raw, limit=MAX_REFERRER)
    try:
        subject = Descriptor.from_json(doc["subject"])
        layers = [Descriptor.from_json(d) for d in doc["layers"]]
        artifact_type = str(doc.get("artifactType") or Descriptor.from_json(doc["config"]).media_type)
        notes = {str(k): str(v) for k, v in (doc.get("annotations") or {}).items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"not a referrer manifest: {exc}") from exc
    if len(layers) != 1 or layers[0].digest != Digest.of(document) or layers[0].size != len(document):
        raise ValueError("the document does not match the referrer's layer")
    return Referrer(raw, document, artifact_type, subject, notes)


def referrers_index(referrers: Sequence[Descriptor]) -> bytes:
    """The image index the referrers API returns, and the fallback tag holds: the referrers' descriptors."""
    return canonical_json({"schemaVersion": 2, "mediaType": str(MediaType.OCI_INDEX),
                           "manifests": [d.to_json() for d in referrers]})


def fallback_tag(subject: Digest) -> str:
    """The referrers tag schema's tag for ``subject`` (distribution-spec 1.1): ``<alg>-<hex>``."""
    return f"{subject.algorithm}-{subject.hex}"
