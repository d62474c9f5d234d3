"""An image's referrers on a registry: pushed through the referrers API, or kept under the fallback tag.

The distribution spec 1.1 gives two places for them. A registry with the referrers API indexes a
manifest with a ``subject`` when it is pushed, says so with an ``OCI-Subject`` header, and lists
the subject's referrers at ``/v2/<name>/referrers/<digest>``. A registry without it (docker-registry
2.x, older Harbor and Artifactory) stores the artifact manifest like any other; the client then
keeps an image index of the subject's referrers under the tag ``sha256-<hex>`` itself, read,
merged and written back. Readers ask the API first and fall back to the tag on a 404, as the
spec says, so a registry that gains the API later still shows what was pushed before.

The fallback tag is a read-modify-write with no lock (the spec's own caveat): two clients
attaching to one subject at the same moment can lose one of the two entries. pybuild attaches
all of a subject's referrers in one write, so that happens only when two builds of the same image
push at once, and each would write the same entries.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from builder.attest.referrer import MAX_DOCUMENT, MAX_REFERRER, Referrer, fallback_tag, read_referrer, referrers_index
from builder.errors import IntegrityError, RegistryError
from builder.image import Image, ImageIndex, images_of
from builder.oci.canonical import json_object
from builder.oci.descriptor import Descriptor
from builder.oci.digest import Digest
from builder.oci.mediatypes import MediaType
from builder.oci.reference import Reference
from builder.registry.client import MAX_MANIFEST, EventSink, RegistryClient
from builder.registry.options import RegistryOptions

UNSUPPORTED = (404,)
"""What a registry without the referrers API answers ``/referrers/`` with (distribution-spec 1.1)."""


def push_referrers(client: RegistryClient, referrers: Sequence[Referrer], emit: EventSink) -> None:
    """Store the manifests of ``referrers`` (their subjects and blobs already pushed) in ``client``'s
    repository, by digest. Where the registry does not answer with ``OCI-Subject``, each subject's
    fallback tag is brought up to date, once per subject."""
    fallback: dict[Digest, list[Referrer]] = {}
    for referrer in referrers:
        indexed = client.put_referrer(referrer.digest, referrer.raw_manifest, MediaType.OCI_MANIFEST)
        emit("manifest", referrer.digest, len(referrer.raw_manifest))
        if indexed != referrer.subject.digest:
            fallback.setdefault(referrer.subject.digest, []).append(referrer)
    for subject, attached in fallback.items():
        _update_fallback_tag(client, subject, [r.descriptor() for r in attached], emit)


def _update_fallback_tag(client: RegistryClient, subject: Digest, add: list[Descriptor], emit: EventSink) -> None:
    tag = fallback_tag(subject)
    present = _fallback_entries(client, subject)
    known = {d.digest for d in present}
    new = [d for d in add if d.digest not in known]
    if not new:
        return
    raw = referrers_index([*present, *new])
    client.put_manifest(tag, raw, MediaType.OCI_INDEX)
    emit("manifest", Digest.of(raw), len(raw))


def _fallback_entries(client: RegistryClient, subject: Digest) -> list[Descriptor]:
    """The descriptors under ``subject``'s fallback tag; none when the tag does not exist."""
    tag = fallback_tag(subject)
    if client.manifest_digest(tag) is None:
        return []
    raw, _, _ = client.get_manifest(tag)
    return _index_entries(raw, f"{client.ref.registry}/{client.repo}:{tag}")


def _index_entries(raw: bytes, where: str) -> list[Descriptor]:
    try:
        doc = json_object(raw, limit=MAX_MANIFEST)
        return [Descriptor.from_json(d) for d in doc.get("manifests") or []]
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise RegistryError(f"{where}: not a referrers index: {exc}") from None


def list_referrers(client: RegistryClient, subject: Digest, artifact_type: str | None = None) -> list[Descriptor]:
    """The descriptors of ``subject``'s referrers: the referrers API's answer, else the fallback tag's.

    The API may ignore ``artifactType`` (it says so by leaving out ``OCI-Filters-Applied``),
    so the list is filtered here too.
    """
    path = f"{client.repo}/referrers/{subject}"
    if artifact_type is not None:
        path += f"?artifactType={quote(artifact_type, safe='')}"
    reply = client.transport.request("GET", path, scopes=client.scopes, ok=(200, *UNSUPPORTED),
                                     headers={"Accept": str(MediaType.OCI_INDEX)}, limit=MAX_MANIFEST,
                                     what="referrers list")
    where = f"{client.ref.registry}/{client.repo}@{subject}: referrers"
    found = _index_entries(reply.body, where) if reply.status == 200 else _fallback_entries(client, subject)
    return [d for d in found if artifact_type is None or d.artifact_type == artifact_type]


def fetch_referrer(client: RegistryClient, desc: Descriptor) -> Referrer:
    """The referrer ``desc`` names: its manifest (checked against ``desc``) and its document."""
    where = f"{client.ref.registry}/{client.repo}@{desc.digest}"
    if desc.size > MAX_REFERRER:
        raise RegistryError(f"{where}: {desc.size} bytes is too large for a referrer manifest")
    raw, _, _ = client.get_manifest(desc.digest)
    if len(raw) != desc.size:
        raise IntegrityError(f"{where}: {len(raw)} bytes, its descriptor says {desc.size}")
    try:
        manifest = json_object(raw, limit=MAX_REFERRER)
        (layer,) = [Descriptor.from_json(d) for d in manifest["layers"]]
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise RegistryError(f"{where}: not a referrer manifest: {exc}") from None
    if layer.size > MAX_DOCUMENT:
        raise RegistryError(f"{where}: {layer.size} bytes is too large for an attestation")
    with tempfile.TemporaryDirectory(prefix="pybuild-referrer-") as scratch:
        path = Path(scratch) / "document"
        client.fetch_blob(layer.digest, layer.size, path)
        document = path.read_bytes()
    try:
        return read_referrer(raw, document)
    except ValueError as exc:
        raise RegistryError(f"{where}: {exc}") from None


def referrers_of(ref: Reference, options: RegistryOptions | None, image: Image | ImageIndex,
                 artifact_type: str | None = None) -> list[tuple[Image, list[Referrer]]]:
    """Each platform's image of ``image`` (pulled from ``ref``) with the referrers whose subject it is."""
    with RegistryClient(ref, options) as client:
        out = []
        for img in images_of(image):
            refs = [fetch_referrer(client, d) for d in list_referrers(client, img.digest, artifact_type)]
            out.append((img, [r for r in refs if r.subject.digest == img.digest]))
        return out
