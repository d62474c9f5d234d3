"""Pull an image (or a whole index) from a registry into a content-addressed blob directory.

The result is an :class:`~builder.image.Image` or :class:`~builder.image.ImageIndex` whose
manifest, index and config bytes are exactly the registry's (a Docker schema 2 manifest stays
one: rewriting it to OCI would change its digest, the id the user asked for) and whose
layers are files under ``DEST/blobs/<alg>/<hex>``, each verified on the way in, so a sink
can hard-link them into a layout without reading them again.

``DEST`` is a scratch or cache directory, not an output: temporary files appear beside the
blobs while they download. A blob already there with the right size is not fetched again;
only this module writes names there, and only after checking the content.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import RegistryError
from builder.image import Image, ImageIndex, LayerBlob
from builder.oci.canonical import json_object
from builder.oci.config import diff_ids, platform_of
from builder.oci.descriptor import Descriptor, is_attestation, select_platform
from builder.oci.digest import Digest
from builder.oci.mediatypes import INDEX_TYPES, MANIFEST_TYPES
from builder.oci.platform import Platform
from builder.registry.client import MAX_MANIFEST, RegistryClient, run_all
from builder.registry.reference import Reference
from builder.registry.transport import RegistryOptions
from builder.registry.wire import MiB

MAX_CONFIG = 8 * MiB  # as the layout reader's limit for JSON documents (sinks/layout.py MAX_JSON)
EventSink = Callable[[str, Digest, int], None]


@dataclass(frozen=True)
class _Manifest:
    """A fetched image manifest, before its blobs are."""

    desc: Descriptor
    raw: bytes
    config: Descriptor
    layers: tuple[Descriptor, ...]


def pull(
    ref: Reference,
    dest: Path,
    platform: Platform | None = None,
    options: RegistryOptions | None = None,
    on_event: EventSink | None = None,
) -> Image | ImageIndex:
    """Fetch ``ref``: one image (an index narrowed to ``platform``), or without a platform the whole index.

    Events: ``("manifest", digest, size)`` per manifest or index, ``("pulled", ...)`` per blob
    downloaded and ``("existing", ...)`` per blob already in ``dest``.
    """
    emit = on_event if on_event is not None else (lambda kind, digest, size: None)
    with RegistryClient(ref, options) as client:
        raw, media_type, digest = client.get_manifest(ref.identifier)
        emit("manifest", digest, len(raw))
        top = Descriptor(media_type, digest, len(raw))
        if media_type in MANIFEST_TYPES:
            manifest = _parse_manifest(top, raw, ref)
            manifests = [manifest]
        elif media_type in INDEX_TYPES:
            children = _children(raw, ref)
            if platform is not None:
                chosen = select_platform(children, platform, ref)
                manifests = [_fetch_manifest(client, chosen, ref, emit)]
            else:
                manifests = [_fetch_manifest(client, child, ref, emit) for child in children]
        else:
            raise RegistryError(f"{ref}: unsupported manifest media type {media_type!r}")
        _fetch_blobs(client, manifests, dest, emit)
        images = tuple(_image(m, dest, ref) for m in manifests)
    if media_type in MANIFEST_TYPES:
        image = images[0]
        if platform is not None:  # a single-platform image must still be the platform asked for
            select_platform([image.descriptor()], platform, ref)
        return image
    if platform is not None:
        return images[0]
    return ImageIndex(raw, images, media_type)


def _children(raw: bytes, ref: Reference) -> list[Descriptor]:
    doc = _json(raw, f"{ref}: index", MAX_MANIFEST)
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        raise RegistryError(f"{ref}: index has no manifests list")
    try:
        return [Descriptor.from_json(e) for e in entries]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RegistryError(f"{ref}: malformed descriptor in the index: {exc}") from exc


def _fetch_manifest(client: RegistryClient, desc: Descriptor, ref: Reference, emit: EventSink) -> _Manifest:
    """An index entry's manifest, fetched by digest; entries that are not image manifests are refused."""
    if desc.media_type not in MANIFEST_TYPES:
        raise RegistryError(f"{ref}: index entry {desc.digest} is a {desc.media_type!r}; nested indexes and "
                            f"artifacts are not supported (pull one platform with --platform)")
    if desc.size > MAX_MANIFEST:
        raise RegistryError(f"{ref}: manifest {desc.digest} is {desc.size} bytes, too large")
    raw, _, _ = client.get_manifest(desc.digest)
    if len(raw) != desc.size:
        raise RegistryError(f"{ref}: manifest {desc.digest} has {len(raw)} bytes, the index says {desc.size}")
    emit("manifest", desc.digest, desc.size)
    return _parse_manifest(desc, raw, ref)


def _parse_manifest(desc: Descriptor, raw: bytes, ref: Reference) -> _Manifest:
    doc = _json(raw, f"{ref}: manifest {desc.digest}", MAX_MANIFEST)
    try:
        config = Descriptor.from_json(doc["config"])
        layers = tuple(Descriptor.from_json(d) for d in doc.get("layers") or [])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RegistryError(f"{ref}: malformed manifest {desc.digest}: {exc}") from exc
    if config.size > MAX_CONFIG:
        raise RegistryError(f"{ref}: config {config.digest} is {config.size} bytes, too large")
    return _Manifest(desc, raw, config, layers)


def _fetch_blobs(client: RegistryClient, manifests: Sequence[_Manifest], dest: Path, emit: EventSink) -> None:
    """Every config and layer once, a few at a time; each one 1 MiB at a time, so memory stays flat."""
    wanted: dict[Digest, Descriptor] = {}
    for manifest in manifests:
        for desc in (manifest.config, *manifest.layers):
            wanted.setdefault(desc.digest, desc)

    def one(desc: Descriptor) -> None:
        path = blob_path(dest, desc.digest)
        try:
            present = path.stat().st_size == desc.size
        except OSError:
            present = False
        if present:
            emit("existing", desc.digest, desc.size)
            return
        client.fetch_blob(desc.digest, desc.size, path)
        emit("pulled", desc.digest, desc.size)

    run_all(one, list(wanted.values()), client.options.parallel, "pybuild-pull")


def _image(manifest: _Manifest, dest: Path, ref: Reference) -> Image:
    raw_config = blob_path(dest, manifest.config.digest).read_bytes()
    config = _json(raw_config, f"{ref}: config {manifest.config.digest}", MAX_CONFIG)
    desc = manifest.desc
    try:
        ids = diff_ids(config)
    except ValueError:
        ids = []
    if len(ids) != len(manifest.layers):
        if not is_attestation(desc):
            raise RegistryError(f"{ref}: manifest {desc.digest} has {len(manifest.layers)} layers but its config "
                                f"has {len(ids)} diff_ids")
        ids = [d.digest for d in manifest.layers]  # attestations: in-toto documents, not layers
    layers = tuple(
        LayerBlob(ldesc, diff_id, blob_path(dest, ldesc.digest), None, True)
        for ldesc, diff_id in zip(manifest.layers, ids, strict=True)
    )
    return Image(manifest.raw, raw_config, desc.media_type, layers, desc.platform or platform_of(config))


def blob_path(root: Path, digest: Digest) -> Path:
    return root / "blobs" / digest.algorithm / digest.hex


def _json(raw: bytes, what: str, limit: int) -> dict[str, Any]:
    try:
        return json_object(raw, limit=limit)
    except ValueError as exc:
        raise RegistryError(f"{what}: invalid JSON: {exc}") from exc
