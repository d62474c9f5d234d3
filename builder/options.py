"""Build options, frozen once the CLI (or a library caller) has made them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from builder.errors import RecipeError
from builder.layer.compress import Compression
from builder.oci.platform import Platform

if TYPE_CHECKING:  # the registry stack loads only when a build needs it
    from builder.registry.options import RegistryOptions


def epoch_from_env(value: int | None) -> int:
    """``--source-date-epoch``, else ``$SOURCE_DATE_EPOCH``, else 0 (reproducible by default).

    A malformed ``SOURCE_DATE_EPOCH`` is an error, as reproducible-builds.org asks.
    """
    if value is not None:
        return value
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env is None or env == "":
        return 0
    if not env.isdigit():
        raise RecipeError(f"SOURCE_DATE_EPOCH must be a non-negative integer, got {env!r}")
    return int(env)


@dataclass(frozen=True)
class BuildOptions:
    """Everything about a build that is not in the recipe."""

    context: Path | None = None
    """Where copy/rootfs sources and local bases are read; None = the recipe's directory."""
    epoch: int = 0
    compression: Compression = Compression.GZIP
    level: int | None = None
    platforms: tuple[Platform, ...] = ()
    build_args: Mapping[str, str] = field(default_factory=dict)
    tag: str | None = None
    workdir: Path | None = None
    """Scratch space for layer blobs; put it on OUT's filesystem so blobs are renamed, not copied."""
    secrets: Mapping[str, Path] = field(default_factory=dict)
    """``--secret id=ID,src=PATH``: files bound read-only at /run/secrets/ID in run steps."""
    ssh: Mapping[str, Path] = field(default_factory=dict)
    """``--ssh ID[=SOCKET]``: ssh-agent sockets a run step's ``ssh: ID`` mount reaches."""
    cache_dir: Path | None = None
    """Where ``cache:`` mounts of run steps, the layer cache and the registry blob store live."""
    use_cache: bool = True
    """False for ``--no-cache``: every step is built (and the cache still refreshed)."""
    registry: RegistryOptions | None = None
    """How registry bases are pulled (insecure hosts, TLS, credentials, retries); None: the defaults."""
    allow: frozenset[str] = frozenset()
    """``--allow ENTITLEMENT`` (``security.insecure``): what run steps may ask beyond the sandbox."""
    target: str | None = None
    """``--target STAGE``: that stage is the image (its base's config, the CLI's additions; not the
    recipe's ``config:``, which is the final image's)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """``--label``: config labels, over the recipe's."""
    env: Mapping[str, str] = field(default_factory=dict)
    """``--env``: config Env entries, over the recipe's (the image's, not the run steps')."""
    annotations: Mapping[str, str] = field(default_factory=dict)
    """``--annotation``: manifest annotations, over the recipe's."""
    cache_from: tuple[str, ...] = ()
    """``--cache-from REF``: registry repositories whose cache entries are read, in order, after the
    local cache (a tag or digest in REF is ignored: entries are tags of their own)."""
    cache_to: str | None = None
    """``--cache-to REF``: the registry repository every step's cache entry is written to."""
    mount_into: str | None = None
    """The registry (host) the result will be pushed to when nothing is written locally: a registry
    cache hit on that registry is then not downloaded, the push mounts it (see builder.stepcache)."""
    attestations: bool = True
    """Attach a provenance statement to every image (``--no-attestations``: none at all)."""
    sbom: bool = False
    """``--sbom``: attach an SBOM (SPDX and CycloneDX) to every image too."""
    reuse_layouts: tuple[Path, ...] = ()
    """OCI layouts (the CLI passes ``-o OUT``) whose blobs a registry base may be cloned from, verified,
    instead of downloaded; a path that is not a layout is ignored."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pybuild``, else ``~/.cache/pybuild``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pybuild"
