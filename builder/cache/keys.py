"""Step keys: a step whose key is known replays its layer without building or compressing it.

The key (:func:`step_key`) is the sha256 of canonical JSON over everything that can change the
layer's bytes and nothing else: the parent layers (the diff_id chain), the step as written after
``${ARGS}`` substitution (its recipe location left out), the digests of its inputs (tarball
content; for ``copy``, every file's relative path, type, normalised mode, size, content digest
and link target, but never mtimes, which never reach the layer), the platform, compression and
level, the epoch and :data:`LAYER_FORMAT_VERSION`. A ``run`` step is keyed by the step (with its
resolved environment) and its parents; its cache and secret mounts are not inputs, and a
secret's content never enters a key.

A copy's *shape* is its key with the file contents left out (names, types, modes, sizes: all
known from one directory walk); see :mod:`builder.cache.store` for what the cache does with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from builder.layer.compress import LAYER_FORMAT_VERSION
from builder.oci.canonical import canonical_json
from builder.oci.digest import Digest


def _plain(value: Any) -> Any:
    """A step (a frozen dataclass tree) as JSON data, without recipe locations."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name != "where"}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def step_key(parents: Sequence[Digest], step: object, inputs: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """The cache key of one step (hex sha256); see the module docstring for what goes in."""
    doc = {
        "format": LAYER_FORMAT_VERSION,
        "parents": [str(d) for d in parents],
        "step": {"kind": type(step).__name__, **_plain(step)},
        "inputs": inputs,  # plain JSON data already, and large for a copy: not walked again
        "settings": settings,
    }
    return Digest.of(canonical_json(doc)).hex
