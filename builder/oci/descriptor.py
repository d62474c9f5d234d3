"""Content descriptors: what a manifest or index says about a blob."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from builder.errors import InputError
from builder.oci.digest import Digest
from builder.oci.platform import Platform


@dataclass(frozen=True, slots=True)
class Descriptor:
    """mediaType + digest + size (+ annotations, platform), as in image-spec descriptor.md."""

    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    artifact_type: str | None = None
    """An artifact manifest's ``artifactType`` (image-spec 1.1), repeated in the descriptors that
    point to it (an index, a referrers list) so a reader can choose without fetching."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.artifact_type is not None:
            out["artifactType"] = self.artifact_type
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Descriptor:
        """Parse a descriptor; raises ValueError/KeyError/TypeError on malformed input."""
        size = obj["size"]
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"bad descriptor size {size!r}")
        plat = obj.get("platform")
        annotations = obj.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise ValueError("descriptor annotations must be an object")
        return cls(
            media_type=str(obj["mediaType"]),
            digest=Digest.parse(str(obj["digest"])),
            size=size,
            annotations={str(k): str(v) for k, v in annotations.items()},
            platform=Platform.from_json(plat) if isinstance(plat, dict) else None,
            artifact_type=str(obj["artifactType"]) if obj.get("artifactType") is not None else None,
        )

    def with_annotations(self, annotations: Mapping[str, str]) -> Descriptor:
        return Descriptor(self.media_type, self.digest, self.size, dict(annotations), self.platform,
                          self.artifact_type)


def is_attestation(desc: Descriptor) -> bool:
    """BuildKit's attestation manifests: listed in an index, but not a runnable platform."""
    unknown = desc.platform is not None and (desc.platform.os, desc.platform.architecture) == ("unknown", "unknown")
    return unknown or desc.annotations.get("vnd.docker.reference.type") == "attestation-manifest"


def is_referrer(desc: Descriptor) -> bool:
    """An index entry for an artifact attached to an image (image-spec 1.1), not an image of its own:
    it has an ``artifactType`` and no tag. A layout lists such entries beside the images they are
    about (as ORAS does); the readers of images pass over them."""
    return desc.artifact_type is not None and "org.opencontainers.image.ref.name" not in desc.annotations


def select_platform(children: Sequence[Descriptor], want: Platform, where: object) -> Descriptor:
    """The index entry for ``want``: an exact match, else one whose variant is unspecified on either side."""
    candidates = [c for c in children if c.platform is not None and not is_attestation(c)]
    for child in candidates:
        if child.platform == want:
            return child
    for child in candidates:
        p = child.platform
        if p and (p.os, p.architecture) == (want.os, want.architecture) and not (p.variant and want.variant):
            return child
    available = ", ".join(str(c.platform) for c in candidates) or "none"
    raise InputError(f"{where}: no image for platform {want} (available: {available})")
