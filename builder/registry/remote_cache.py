"""A layer cache kept in a registry repository (``--cache-from`` / ``--cache-to``), shared by every
runner that can reach it.

Each entry is one OCI artifact: an image manifest with ``artifactType`` :data:`ARTIFACT_TYPE`,
the empty config (``{}``), and as its only layer the step's layer blob (none for a step that
changed nothing), tagged :func:`tag_for` the step key. It names the key and both format versions
in its annotations, and the layer's diff_id and uncompressed size in the layer's. Any registry
that takes OCI manifests stores it (docker-registry 2.x included), and ``skopeo`` or ``crane``
list and delete entries as tags.

The keys are the local cache's (parents, step, inputs, settings, layer-format version), so a
remote entry means exactly what a local one means. A writer uploads the layer blob before the
manifest that names it, and a manifest is stored whole by one PUT: a reader sees no entry or a
whole one, and two runners storing one key store the same bytes (layers are reproducible), so
both succeed. A reader trusts nothing it reads: the manifest must say it is an entry for this
very key, the blob must match its digest, and the caller checks the diff_id when it decompresses
the blob into its local cache.

The cache never fails a build: every failure is a miss (or a lost write) and one warning line. A
registry that cannot be reached, or refuses our credentials, is not asked again in the same build,
so a build whose cache registry went away costs one timeout, not one per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from builder.errors import PybuildError
from builder.image import LayerBlob
from builder.oci.canonical import canonical_json, json_object
from builder.oci.descriptor import Descriptor
from builder.oci.digest import Digest
from builder.oci.manifest import EMPTY_CONFIG, EMPTY_JSON, artifact_manifest
from builder.oci.mediatypes import MediaType
from builder.oci.reference import Reference
from builder.registry.client import RegistryClient
from builder.registry.options import RegistryOptions

ARTIFACT_TYPE = "application/vnd.pybuild.cache.layer.v1"
FORMAT = "1"
"""The entry format: bump it when the manifest's shape or annotations change meaning."""
TAG_PREFIX = "pybuild-cache-"
MAX_ENTRY = 64 << 10
"""An entry manifest is a few hundred bytes: anything much larger is not one of ours."""
LAYER_TYPES = frozenset({MediaType.OCI_LAYER, MediaType.OCI_LAYER_GZIP, MediaType.OCI_LAYER_ZSTD})

A_KEY = "dev.pybuild.cache.key"
A_FORMAT = "dev.pybuild.cache.format"
A_LAYER_FORMAT = "dev.pybuild.cache.layer-format"
A_DIFF_ID = "dev.pybuild.cache.diff-id"
A_UNCOMPRESSED = "dev.pybuild.cache.uncompressed-size"


def tag_for(key: str) -> str:
    """The tag of the entry for step key ``key`` (hex sha256): 78 characters, within the 128 allowed."""
    return TAG_PREFIX + key


@dataclass(frozen=True)
class RemoteEntry:
    """What an entry says: the step's layer (None: the step changed nothing) and its diff_id."""

    descriptor: Descriptor | None
    diff_id: Digest | None = None
    uncompressed_size: int | None = None


def entry_manifest(key: str, layer: LayerBlob | None, layer_format: int) -> bytes:
    """The manifest bytes of the entry for ``key``."""
    layers: list[Descriptor] = []
    if layer is not None:
        annotations = {A_DIFF_ID: str(layer.diff_id)}
        if layer.uncompressed_size is not None:
            annotations[A_UNCOMPRESSED] = str(layer.uncompressed_size)
        layers.append(Descriptor(layer.descriptor.media_type, layer.digest, layer.descriptor.size, annotations))
    annotations = {A_KEY: key, A_FORMAT: FORMAT, A_LAYER_FORMAT: str(layer_format)}
    return canonical_json(artifact_manifest(ARTIFACT_TYPE, layers, annotations))


def parse_entry(raw: bytes, key: str, layer_format: int) -> RemoteEntry:
    """The entry ``raw`` describes, if it is an entry of this format for ``key``; ValueError if not."""
    doc = json_object(raw, limit=MAX_ENTRY)
    if doc.get("artifactType") != ARTIFACT_TYPE:
        raise ValueError("not a pybuild cache entry")
    notes = doc.get("annotations")
    if not isinstance(notes, dict) or notes.get(A_KEY) != key:
        raise ValueError("an entry for another key")
    if notes.get(A_FORMAT) != FORMAT or notes.get(A_LAYER_FORMAT) != str(layer_format):
        raise ValueError("an entry of another format")
    layers = doc.get("layers")
    if not isinstance(layers, list) or len(layers) > 1:
        raise ValueError("not one layer")
    if not layers:
        return RemoteEntry(None)
    if not isinstance(layers[0], dict):
        raise ValueError("a malformed layer descriptor")
    desc = Descriptor.from_json(layers[0])
    if desc.media_type not in LAYER_TYPES or desc.digest.algorithm != "sha256":
        raise ValueError(f"a layer of type {desc.media_type!r}")
    diff_id = Digest.parse(desc.annotations.get(A_DIFF_ID, ""))
    size = desc.annotations.get(A_UNCOMPRESSED)
    if size is not None and not size.isdigit():
        raise ValueError("a malformed uncompressed size")
    return RemoteEntry(Descriptor(desc.media_type, desc.digest, desc.size), diff_id,
                       int(size) if size is not None else None)


class RegistryCache:
    """One cache repository: looked up by step key, written when ``write``.

    ``warn`` gets one line per failure; after a failure that would repeat for every step (the
    registry unreachable, credentials refused), the cache is off for the rest of the build.
    """

    def __init__(self, ref: Reference, options: RegistryOptions | None, *, write: bool, layer_format: int,
                 warn: Callable[[str], None]) -> None:
        self.ref, self.options, self.write, self.layer_format = ref, options, write, layer_format
        self.name = f"{ref.registry}/{ref.repository}"
        self._warn = warn
        self._client: RegistryClient | None = None
        self.off = False
        self._config_stored = False
        self._repository_checked = False

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _connect(self) -> RegistryClient:
        if self._client is None:
            self._client = RegistryClient(self.ref, self.options, push=self.write)
        return self._client

    def _failed(self, doing: str, exc: Exception) -> None:
        """A failure: a warning; the cache goes off unless it was about one entry only."""
        about_entry = isinstance(exc, ValueError)
        what = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not about_entry:
            self.off = True
        self._warn(f"warning: cache {self.name}: {doing}: {what}"
                   + ("" if about_entry else " (not used for the rest of this build)"))

    def lookup(self, key: str) -> RemoteEntry | None:
        """The entry for ``key``; None on a miss, a malformed entry, or any failure (warned)."""
        if self.off:
            return None
        try:
            client = self._connect()
            tag = tag_for(key)
            if client.manifest_digest(tag) is None:
                self._check_repository(client)
                return None
            raw, _, _ = client.get_manifest(tag)
            return parse_entry(raw, key, self.layer_format)
        except (ValueError, TypeError, KeyError, RecursionError) as exc:  # the entry, not the registry
            self._failed(f"entry {key[:12]}", ValueError(f"malformed ({exc})"))
            return None
        except (PybuildError, OSError) as exc:
            self._failed(f"reading entry {key[:12]}", exc)
            return None

    def _check_repository(self, client: RegistryClient) -> None:
        """On the first miss, whether the repository exists at all: a mistyped --cache-from would
        otherwise be a silent cold build. Not an error: the first --cache-to creates it."""
        if self._repository_checked:
            return
        self._repository_checked = True
        reply = client.transport.request("GET", f"{client.repo}/tags/list", scopes=client.scopes, ok=(200, 404))
        if reply.status == 404:
            self._warn(f"warning: cache {self.name}: no such repository (yet): every step is a miss")

    def adopt(self, entry: RemoteEntry, path: Path) -> LayerBlob | None:
        """The layer the entry describes, its bytes to be at ``path`` (:meth:`fetch`); its diff_id is
        checked when the local cache reads it back, or when it is applied."""
        if entry.descriptor is None or entry.diff_id is None:
            return None
        return LayerBlob(entry.descriptor, entry.diff_id, path, entry.uncompressed_size)

    def fetch(self, layer: LayerBlob) -> bool:
        """An adopted layer's bytes into its path (digest and size checked); False (warned) if that
        failed. Asked even when the cache went off: a lazy layer's build cannot go on without them."""
        try:
            self._connect().fetch_blob(layer.digest, layer.descriptor.size, layer.path)
            return True
        except (PybuildError, OSError) as exc:
            self._warn(f"warning: cache {self.name}: downloading {layer.digest.short}: {exc}")
            return False

    def has(self, key: str) -> bool:
        """Whether the repository has an entry for ``key`` (False on any failure)."""
        if self.off:
            return False
        try:
            return self._connect().manifest_digest(tag_for(key)) is not None
        except (PybuildError, OSError) as exc:
            self._failed("checking an entry", exc)
            return False

    def store(self, key: str, layer: LayerBlob | None) -> None:
        """Upload the entry for ``key``: the blobs first, then the manifest (failures are warned)."""
        if self.off or not self.write:
            return
        try:
            client = self._connect()
            if not self._config_stored:
                if not client.blob_exists(EMPTY_CONFIG.digest):
                    client.upload_blob(EMPTY_JSON, EMPTY_CONFIG.digest, EMPTY_CONFIG.size)
                self._config_stored = True
            mounted = layer is not None and layer.mount_from is not None and (
                client.blob_exists(layer.digest) or client.mount_blob(layer.digest, layer.mount_from))
            if layer is not None and not mounted and not client.blob_exists(layer.digest):
                client.upload_blob(layer.path, layer.digest, layer.descriptor.size)
            client.put_manifest(tag_for(key), entry_manifest(key, layer, self.layer_format), MediaType.OCI_MANIFEST)
        except (PybuildError, OSError) as exc:
            self._failed(f"writing entry {key[:12]}", exc)
