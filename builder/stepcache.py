"""Where a step's layer may already be: the local layer cache first, then each ``--cache-from``
repository in order; and where a step's layer goes: the local cache, and the ``--cache-to``
repository.

Every step is looked up in every cache: a miss in one step never stops the lookup of the next
(a later step's key may be there though an earlier one is not, for instance after a ``--no-cache``
build stored everything). A remote hit is downloaded into the local cache and then read back
through it, so it is verified exactly as a local hit is (digest, size, and the diff_id of what it
decompresses to) before a build uses it; a remote entry that fails is a miss with a warning.

When the image is pushed to the registry a cache repository lives on, and nothing is written
locally (``BuildOptions.mount_into``), a remote hit is not downloaded at all: its layer carries
``mount_from`` and the push mounts it. Its bytes are fetched (digest checked) only if a later step
reads the filesystem below it (:meth:`StepCache.materialize`); its diff_id is then checked when
the layer is applied or scanned. Until then the entry's diff_id is taken as written by the
runner that stored it, as a registry's mount is taken for the blob it names.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from builder.cache.store import CacheHit, LayerCache
from builder.errors import RegistryError
from builder.image import LayerBlob

if TYPE_CHECKING:  # the registry stack loads only when a build names a cache repository
    from builder.registry.remote_cache import RegistryCache


@dataclass(frozen=True)
class Found:
    """A cache's answer: the hit, and which cache gave it (``local`` or a repository's name)."""

    hit: CacheHit
    source: str


class StepCache:
    """The local cache with the remote ones behind it (see the module docstring)."""

    def __init__(self, local: LayerCache, readers: Sequence[RegistryCache] = (), writer: RegistryCache | None = None,
                 mount_into: str | None = None) -> None:
        self.local = local
        self.readers = list(readers)
        self.writer = writer
        self.mount_into = mount_into

    @property
    def has_remotes(self) -> bool:
        return bool(self.readers)

    def knows_shape(self, shape: str) -> bool:
        """Whether a step of this shape may be cached: with remote caches, always (their shapes are
        not known here, and hashing a context is cheaper than a wasted build)."""
        return self.has_remotes or self.local.knows_shape(shape)

    def get(self, key: str, workdir: Path) -> Found | None:
        hit = self.local.get(key)
        if hit is not None:
            return Found(hit, "local")
        for remote in self.readers:
            entry = remote.lookup(key)
            if entry is None:
                continue
            if entry.descriptor is None:
                self.local.put(key, None)
                return Found(CacheHit(None), remote.name)
            workdir.mkdir(parents=True, exist_ok=True)
            if self.mount_into is not None and remote.ref.registry == self.mount_into:
                lazy = remote.adopt(entry, workdir / f"lazy-{entry.descriptor.digest.hex}")
                if lazy is not None:
                    return Found(CacheHit(dataclasses.replace(lazy, mount_from=remote.ref.repository)), remote.name)
            path = workdir / f"remote-{key}"
            try:
                blob = remote.adopt(entry, path)
                if blob is None or not remote.fetch(blob):
                    continue
                self.local.put(key, blob)
            finally:
                with contextlib.suppress(OSError):
                    path.unlink()
            hit = self.local.get(key)  # read back through the local cache: the diff_id is checked there
            if hit is not None:
                return Found(hit, remote.name)
        return None

    def materialize(self, layers: Sequence[LayerBlob]) -> None:
        """Fetch the bytes of every layer in ``layers`` that a lazy remote hit left in its registry."""
        for layer in layers:
            if layer.mount_from is None or layer.path.exists():
                continue
            remote = next((r for r in self.readers if r.ref.repository == layer.mount_from), None)
            if remote is None or not remote.fetch(layer):
                raise RegistryError(f"cannot download the cached layer {layer.digest} from {layer.mount_from}")

    def put(self, key: str, layer: LayerBlob | None, source: str = "") -> None:
        """Record a step's layer: built (``source`` "") or found in the cache named ``source``. The
        ``--cache-to`` repository gets every step's entry, hits included, unless it has it already."""
        if source == "":
            self.local.put(key, layer)
        if self.writer is None or source == self.writer.name:
            return
        if source == "" or not self.writer.has(key):
            self.writer.store(key, layer)

    def add_shape(self, shape: str) -> None:
        self.local.add_shape(shape)

    def close(self) -> None:
        for remote in {id(r): r for r in [*self.readers, *([self.writer] if self.writer else [])]}.values():
            remote.close()
