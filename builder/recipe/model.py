"""The recipe as frozen values: what the parser produces and the build consumes.

Every value that a later error could be about carries a :class:`Location`, so an error found
at build time (a missing file, an unknown user) still names the recipe line it comes from.
Strings here have had ``${ARGS}`` substituted already.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from builder.errors import Location
from builder.oci.platform import Platform

BaseKind = Literal["scratch", "oci", "oci-archive", "docker-archive", "registry", "stage"]


@dataclass(frozen=True, slots=True)
class BaseRef:
    """What a stage starts ``from``.

    ``value`` is a path (as written, relative to the context) for ``oci``/``oci-archive``/
    ``docker-archive``, a reference for ``registry``, a stage name for ``stage``, "" for scratch.
    ``tag`` is the ``:TAG`` of ``oci:``/``oci-archive:`` bases, else None.
    """

    kind: BaseKind
    value: str
    tag: str | None
    where: Location


@dataclass(frozen=True, slots=True)
class RootfsStep:
    """Unpack a (compressed) tarball as one layer under ``to``."""

    source: str
    to: str
    where: Location


@dataclass(frozen=True, slots=True)
class CopyStep:
    """Files from the context (or from stage ``from_stage``) into ``to``, like Docker's COPY."""

    sources: tuple[str, ...]
    to: str
    owner: str | None
    mode: int | None
    exclude: tuple[str, ...]
    from_stage: str | None
    where: Location


@dataclass(frozen=True, slots=True)
class WriteStep:
    """A file with inline content."""

    path: str
    content: str
    mode: int | None
    owner: str | None
    where: Location


@dataclass(frozen=True, slots=True)
class FetchStep:
    """A file downloaded from an http(s) URL, accepted only if it has the recipe's sha256
    (Dockerfile's ``ADD --checksum=sha256:... URL DEST``)."""

    url: str
    sha256: str
    to: str
    """The file's path; ending in ``/``, a directory the URL's last path component goes into."""
    mode: int | None
    owner: str | None
    where: Location


@dataclass(frozen=True, slots=True)
class MkdirStep:
    """A directory (and its missing parents)."""

    path: str
    mode: int | None
    owner: str | None
    where: Location


@dataclass(frozen=True, slots=True)
class SymlinkStep:
    """A symbolic link at ``path`` pointing to ``target`` (stored as written)."""

    path: str
    target: str
    owner: str | None
    where: Location


@dataclass(frozen=True, slots=True)
class RemoveStep:
    """Whiteouts for the listed paths."""

    paths: tuple[str, ...]
    where: Location


@dataclass(frozen=True, slots=True)
class Mount:
    """A mount of a run step: ``cache: PATH``, ``secret: ID``, ``tmpfs: PATH``, ``bind:`` or ``ssh: ID``.

    ``value`` is the target in the image (a secret's id for ``secret``); ``source`` a ``bind``'s
    path in the build context, mounted read-only."""

    kind: Literal["cache", "secret", "tmpfs", "bind", "ssh"]
    value: str
    where: Location
    source: str = ""
    from_stage: str | None = None
    """A ``bind``'s stage: its source is a path of that stage's filesystem, not of the context."""


@dataclass(frozen=True, slots=True)
class RunStep:
    """A shell script run inside the image's filesystem (not substituted: args reach it as env)."""

    script: str
    shell: tuple[str, ...] | None
    env: Mapping[str, str]
    user: str | None
    workdir: str | None
    network: Literal["host", "none"]
    mounts: tuple[Mount, ...]
    where: Location
    security: Literal["sandbox", "insecure"] = "sandbox"
    """``insecure``: no capability, seccomp or /proc confinement (BuildKit's ``security.insecure``);
    refused unless the build is started with ``--allow security.insecure``."""


Step = RootfsStep | CopyStep | WriteStep | FetchStep | MkdirStep | SymlinkStep | RemoveStep | RunStep


@dataclass(frozen=True, slots=True)
class ConfigSpec:
    """The recipe's ``config:``; None/empty means "keep the base image's"."""

    env: tuple[tuple[str, str], ...] = ()
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    workdir: str | None = None
    user: str | None = None
    ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    stop_signal: str | None = None
    author: str | None = None
    """The image config's top-level ``author`` (Dockerfile's MAINTAINER / LABEL maintainer)."""
    shell: tuple[str, ...] | None = None
    """Dockerfile's SHELL: the config's ``Shell`` and the shell of the image's run steps without one."""
    healthcheck: Mapping[str, object] | None = None
    """Docker's ``Healthcheck`` object (Test, Interval, Timeout, StartPeriod, StartInterval, Retries)."""
    onbuild: tuple[str, ...] = ()
    """Dockerfile instructions recorded as ``OnBuild`` for a Docker build FROM this image."""
    where: Location | None = None


@dataclass(frozen=True, slots=True)
class Stage:
    """A named build stage with its own base and steps."""

    name: str
    base: BaseRef
    steps: tuple[Step, ...]
    where: Location
    config: ConfigSpec = field(default_factory=lambda: ConfigSpec())
    """The stage's ``config:``, applied when the stage is done: a ``from: STAGE`` inherits it, and
    ``--target STAGE`` makes an image with it."""
    args: Mapping[str, str] = field(default_factory=dict)
    """The argument values inside the stage: the recipe's, then the stage's own ``args:``."""
    declared_args: frozenset[str] = frozenset()
    """The names declared by the recipe's and the stage's ``args:`` (what its run steps see)."""
    platform: Platform | None = None
    """Dockerfile's ``FROM --platform``: the stage is built for this platform, whatever the image's
    (``platform: ${BUILDPLATFORM}`` for a stage that cross-compiles natively)."""


@dataclass(frozen=True, slots=True)
class Recipe:
    """A parsed, checked recipe."""

    path: Path
    version: int
    base: BaseRef
    platforms: tuple[Platform, ...]
    tag: str | None
    args: Mapping[str, str]
    stages: Mapping[str, Stage]
    steps: tuple[Step, ...]
    config: ConfigSpec
    annotations: Mapping[str, str] = field(default_factory=dict)
    declared_args: frozenset[str] = frozenset()
    """The names under ``args:`` (``args`` also holds built-ins and extra ``--build-arg``s)."""
