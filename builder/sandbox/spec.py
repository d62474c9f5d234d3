"""What the sandbox is asked to do: the values that cross from the build to the child as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Bind:
    """A host path bound into the sandbox at ``target`` (relative to the rootfs, resolved inside it)."""

    source: str
    target: str
    readonly: bool
    is_dir: bool
    nodev: bool = False
    """Also ``nosuid,nodev``: for directories the build writes (cache mounts), never for device binds."""
    checked_fd: int = -1
    """An fd of ``source`` the parent opened and checked (without following symlinks) and handed down
    (``run(..., fds=[N])``). The kernel binds only paths of the caller's mount namespace, so the child
    opens ``source`` again and binds it only if it is the very inode the parent checked: a path
    swapped for a symlink meanwhile cannot redirect the mount."""


@dataclass(frozen=True)
class Copy:
    """A host file copied into the sandbox (into one of its tmpfs): secrets, never bound."""

    source: str
    target: str


@dataclass(frozen=True)
class RunSpec:
    """Everything the child needs; crosses the process boundary as JSON."""

    rootfs: str
    argv: list[str]
    env: dict[str, str]
    uid: int
    gid: int
    groups: list[int]
    workdir: str
    network: str
    binds: list[Bind] = field(default_factory=list)
    tmpfs: list[str] = field(default_factory=list)
    """Canonical paths (relative to the rootfs) that get a private tmpfs, filled with ``copies`` and then
    made read-only, e.g. run/secrets."""
    copies: list[Copy] = field(default_factory=list)
    scratch: list[str] = field(default_factory=list)
    """Canonical paths that get a private, writable tmpfs (``tmpfs:`` mounts): gone with the command."""
    confined: bool = True
    """False only for ``security: insecure`` steps (allowed by the CLI): no confine.* at all."""


def spec_to_json(spec: RunSpec) -> str:
    return json.dumps(asdict(spec))


def spec_from_json(text: str) -> RunSpec:
    data: dict[str, Any] = json.loads(text)
    data["binds"] = [Bind(**b) for b in data.get("binds", [])]
    data["copies"] = [Copy(**c) for c in data.get("copies", [])]
    return RunSpec(**data)
