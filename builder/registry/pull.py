"""Pull an image (or a whole index) from a registry into a content-addressed blob store.

The result is an :class:`~builder.image.Image` or :class:`~builder.image.ImageIndex` whose
manifest, index and config bytes are exactly the registry's (a Docker schema 2 manifest stays
one: rewriting it to OCI would change its digest, the id the user asked for) and whose
layers are files under ``DEST/blobs/<alg>/<hex>``, each verified.

``DEST`` is a :class:`~builder.blobstore.BlobStore`'s root: the cache directory, so that what
one build downloads the next one reads from disk, or a scratch directory when no cache is
usable. Never an output: temporary files appear beside the blobs while they download, and the
layout writer clones what it takes from there. Nothing is fetched that is already there and
still hashes to its digest, nor what an existing layout given as ``reuse`` holds (cloned in,
then verified); a manifest named by a tag is looked up by the digest a HEAD of the tag answers,
so a tag that has not moved costs one HEAD. For a single image, its config is fetched and its
platform checked before any layer is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.blobstore import BlobStore
from builder.errors import RegistryError
from builder.image import Image, ImageIndex, LayerBlob, image_from, select_image
from builder.layout.format import MAX_JSON, blob_path
from builder.oci.canonical import json_object
from builder.oci.descriptor import Descriptor, select_platform
from builder.oci.digest import Digest
from builder.oci.manifest import index_entries, manifest_blobs
from builder.oci.mediatypes import INDEX_TYPES, MANIFEST_TYPES
from builder.oci.platform import Platform
from builder.oci.reference import Reference
from builder.registry.client import MAX_MANIFEST, EventSink, RegistryClient, manifest_media_type, run_all
from builder.registry.options import RegistryOptions


@dataclass(frozen=True)
class Manifest:
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
    *,
    reuse: Sequence[Path] = (),
    layers: bool = True,
) -> Image | ImageIndex:
    """Fetch ``ref``: one image (an index narrowed to ``platform``), or without a platform the whole index.

    ``dest`` is the blob store's root (see the module docstring); ``reuse``: OCI layouts whose
    blobs may be taken instead of downloaded (the output a build or pull writes to). ``layers``
    False fetches manifests and configs only (``pybuild inspect``): the layers' paths are then
    where they would be stored, and are not there.
    Events: ``("manifest", digest, size)`` per manifest or index, ``("pulled", ...)`` per blob
    downloaded and ``("existing", ...)`` per blob already in the store or in a ``reuse`` layout.
    """
    emit = on_event if on_event is not None else (lambda kind, digest, size: None)
    store = BlobStore(dest)
    sources = [root for root in reuse if (root / "oci-layout").is_file()]
    with RegistryClient(ref, options) as client:
        raw, media_type, digest = _top_manifest(client, ref, store)
        emit("manifest", digest, len(raw))
        top = Descriptor(media_type, digest, len(raw))
        if media_type in MANIFEST_TYPES:
            manifests = [parse_manifest(top, raw, ref)]
        elif media_type in INDEX_TYPES:
            children = index_children(raw, ref)
            if platform is not None:
                chosen = select_platform(children, platform, ref)
                manifests = [_fetch_manifest(client, store, chosen, ref, emit)]
            else:
                manifests = [_fetch_manifest(client, store, child, ref, emit) for child in children]
        else:
            raise RegistryError(f"{ref}: unsupported manifest media type {media_type!r}")
        blobs = _Blobs(client, store, sources, emit)
        blobs.fetch([m.config for m in manifests])
        images = tuple(_image(m, blobs.read_config(m.config, ref), store, ref) for m in manifests)
        if media_type in MANIFEST_TYPES and platform is not None:
            # a single-platform image must still be the platform asked for: known from its config,
            # so a wrong one fails before any layer is downloaded
            select_image(images, platform, ref)
        if layers:
            blobs.fetch([layer for m in manifests for layer in m.layers])
    if media_type in MANIFEST_TYPES or platform is not None:
        return images[0]
    return ImageIndex(raw, images, media_type)


def _top_manifest(client: RegistryClient, ref: Reference, store: BlobStore) -> tuple[bytes, str, Digest]:
    """The manifest or index ``ref`` names: from the store when it has the digest, else from the registry.

    By digest, the store answers with no request at all. By tag, a HEAD tells the digest the tag
    points at now (only asked when the store holds anything: a first pull into an empty one goes
    straight to the GET); a registry that answers no digest, or fails the HEAD, gets the GET.
    """
    known = ref.digest
    if known is None and not store.is_empty():
        try:
            known = client.manifest_digest(ref.identifier)
        except RegistryError:
            known = None
    if known is not None:
        raw = store.read(known, MAX_MANIFEST)
        if raw is not None:
            return raw, manifest_media_type(raw, "", f"{ref}"), known
    raw, media_type, digest = client.get_manifest(ref.identifier)
    store.put(digest, raw)
    return raw, media_type, digest


def index_children(raw: bytes, ref: Reference) -> list[Descriptor]:
    """The entries of the index ``raw`` that ``ref`` named, checked."""
    try:
        return index_entries(_json(raw, f"{ref}: index", MAX_MANIFEST))
    except ValueError as exc:
        raise RegistryError(f"{ref}: {exc}") from exc


def _fetch_manifest(client: RegistryClient, store: BlobStore, desc: Descriptor, ref: Reference,
                    emit: EventSink) -> Manifest:
    """An index entry's manifest, from the store or fetched by digest; entries that are not image manifests are refused."""
    if desc.media_type not in MANIFEST_TYPES:
        raise RegistryError(f"{ref}: index entry {desc.digest} is a {desc.media_type!r}; nested indexes and "
                            f"artifacts are not supported (pull one platform with --platform)")
    if desc.size > MAX_MANIFEST:
        raise RegistryError(f"{ref}: manifest {desc.digest} is {desc.size} bytes, too large")
    raw = store.read(desc.digest, MAX_MANIFEST)
    if raw is None:
        raw, _, _ = client.get_manifest(desc.digest)
        if len(raw) == desc.size:
            store.put(desc.digest, raw)
    if len(raw) != desc.size:
        raise RegistryError(f"{ref}: manifest {desc.digest} has {len(raw)} bytes, the index says {desc.size}")
    emit("manifest", desc.digest, desc.size)
    return parse_manifest(desc, raw, ref)


def parse_manifest(desc: Descriptor, raw: bytes, ref: Reference) -> Manifest:
    """The config and layers the image manifest ``raw`` names, checked (a pull and a join read them alike)."""
    doc = _json(raw, f"{ref}: manifest {desc.digest}", MAX_MANIFEST)
    try:
        config, layers = manifest_blobs(doc)
    except ValueError as exc:
        raise RegistryError(f"{ref}: manifest {desc.digest}: {exc}") from exc
    if config.size > MAX_JSON:
        raise RegistryError(f"{ref}: config {config.digest} is {config.size} bytes, too large")
    return Manifest(desc, raw, config, layers)


class _Blobs:
    """Where each config and layer comes from: the store (verified), a reuse layout (cloned, verified), or the registry."""

    def __init__(self, client: RegistryClient, store: BlobStore, sources: Sequence[Path], emit: EventSink) -> None:
        self.client, self.store, self.sources, self.emit = client, store, sources, emit

    def fetch(self, descs: Sequence[Descriptor]) -> None:
        """Every blob once, a few at a time; each download 1 MiB at a time, so memory stays flat."""
        wanted: dict[Digest, Descriptor] = {}
        for desc in descs:
            wanted.setdefault(desc.digest, desc)
        run_all(self._one, list(wanted.values()), self.client.options.parallel, "pybuild-pull")

    def _one(self, desc: Descriptor) -> None:
        if self.store.get(desc.digest, desc.size) is not None:
            self.emit("existing", desc.digest, desc.size)
            return
        for root in self.sources:
            if self.store.adopt(blob_path(root, desc.digest), desc.digest, desc.size) is not None:
                self.emit("existing", desc.digest, desc.size)
                return
        self.client.fetch_blob(desc.digest, desc.size, self.store.path(desc.digest))
        self.emit("pulled", desc.digest, desc.size)

    def read_config(self, desc: Descriptor, ref: Reference) -> bytes:
        """A config's bytes (fetched just before), hashed again as they are read."""
        raw = self.store.read(desc.digest, MAX_JSON)
        if raw is None:  # removed or damaged since it was fetched: once more from the registry
            self._one(desc)
            raw = self.store.read(desc.digest, MAX_JSON)
        if raw is None or len(raw) != desc.size:
            raise RegistryError(f"{ref}: config {desc.digest} could not be stored and read back")
        return raw


def _image(manifest: Manifest, raw_config: bytes, store: BlobStore, ref: Reference) -> Image:
    """The image of a fetched manifest and config; its layers are (or will be) verified files of the store."""
    try:
        return image_from(manifest.desc, manifest.raw, raw_config,
                          lambda desc, diff_id: LayerBlob(desc, diff_id, store.path(desc.digest), None, True))
    except ValueError as exc:
        raise RegistryError(f"{ref}: manifest {manifest.desc.digest}: {exc}") from exc


def _json(raw: bytes, what: str, limit: int) -> dict[str, Any]:
    try:
        return json_object(raw, limit=limit)
    except ValueError as exc:
        raise RegistryError(f"{what}: invalid JSON: {exc}") from exc
