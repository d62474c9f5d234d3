"""What a run step mounts besides the root: secrets, cache directories, ssh agents, tmpfs and binds.

Planned here, in the build's own mount namespace, and carried out by the sandbox's child: every
mount point is made inside the root filesystem first (:class:`builder.fs.mountpoints.MountPoints`),
every source is opened and checked here (a cache directory without following symlinks and owned by
this build; a bind source inside the build context or a stage) and handed down as an fd, and what
is mounted over is kept out of both snapshots, so none of it can reach the layer.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from builder.errors import InputError, StepError
from builder.fs.mountpoints import MountPoints
from builder.fs.safepath import in_context, join_in_root, resolve_in_root
from builder.oci.digest import Digest, sha256_file
from builder.recipe.model import RunStep
from builder.sandbox.spec import Bind, Copy

if TYPE_CHECKING:
    from builder.steps.run import RunContext

ALWAYS_EXCLUDED = ("proc", "sys", "dev")
SECRETS_DIR = "run/secrets"
SSH_SOCKET = "run/buildkit/ssh_agent.0"
"""Where an ``ssh:`` mount's agent socket appears (BuildKit's path), named by ``SSH_AUTH_SOCK``."""


def _open_own_dir(parent: int, name: str, shown: str) -> int:
    """``name`` under the directory fd ``parent``, created if missing, opened without following a symlink.

    A shared or restored cache directory is not trusted: an entry planted as a symlink, or a
    directory someone else owns, would otherwise be bound writable into the sandbox.
    """
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o755, dir_fd=parent)
        os.chmod(name, 0o755, dir_fd=parent, follow_symlinks=False)  # not the umask's choice
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except OSError as exc:
        why = "it is a symbolic link" if exc.errno in (errno.ELOOP, errno.ENOTDIR) else exc.strerror
        raise StepError(f"refusing the cache mount directory {shown!r}: {why}") from exc
    st = os.fstat(fd)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise StepError(f"refusing the cache mount directory {shown!r}: it is owned by uid {st.st_uid}, "
                        f"not by this build (uid {os.geteuid()})")
    return fd


def _cache_key(target: str) -> str:
    return hashlib.sha256(target.encode()).hexdigest()[:16]


def _cache_fd(cache_dir: Path | None, target: str) -> int:
    """An fd of the cache mount's directory (``CACHE/mounts/KEY``), checked; the sandbox binds the fd."""
    if cache_dir is None:
        raise InputError("cache mounts need a cache directory (--cache-dir)")
    key = _cache_key(target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    top = os.open(cache_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the user's own choice: followed
    try:
        mounts = _open_own_dir(top, "mounts", str(cache_dir / "mounts"))
    finally:
        os.close(top)
    try:
        fd = _open_own_dir(mounts, key, str(cache_dir / "mounts" / key))
    finally:
        os.close(mounts)
    with contextlib.suppress(OSError):
        os.utime(fd)  # used now: `pybuild cache prune --max-age` keeps it
    return fd


def excluded(step: RunStep, root: Path) -> set[str]:
    """Paths kept out of both snapshots: what the sandbox mounts over (nothing under them can change)."""
    out = set(ALWAYS_EXCLUDED)
    targets = [m.value for m in step.mounts if m.kind in ("cache", "tmpfs", "bind")]
    if any(m.kind == "ssh" for m in step.mounts):
        targets.append("/" + SSH_SOCKET)
    if any(m.kind == "secret" for m in step.mounts):
        targets.append(SECRETS_DIR)
    for target in targets:
        out.add(str(join_in_root(root, target).relative_to(root)))
    return out


@dataclass
class Mounts:
    binds: list[Bind] = field(default_factory=list)
    tmpfs: list[str] = field(default_factory=list)
    copies: list[Copy] = field(default_factory=list)
    scratch: list[str] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


def plan_mounts(step: RunStep, rc: RunContext, points: MountPoints, out: Mounts) -> None:
    """Create mount points, and fill ``out`` with the binds, tmpfs, copies and fds for the sandbox."""
    for name in ALWAYS_EXCLUDED:  # the sandbox mounts at these very paths, and mount(2) follows symlinks
        if points.ensure(name, is_dir=True) != name:
            raise StepError(f"cannot mount at '/{name}': it is a symbolic link in the image (as runc, pybuild "
                            "refuses to mount /proc, /sys or /dev through one)")
    if step.network == "host":
        for name in ("etc/resolv.conf", "etc/hosts"):
            if os.path.isfile(f"/{name}"):
                rel = points.ensure(name, is_dir=False)
                out.binds.append(Bind(f"/{name}", rel, readonly=True, is_dir=False))
    secrets = [m for m in step.mounts if m.kind == "secret"]
    if secrets:
        rel = points.ensure(SECRETS_DIR, is_dir=True)
        out.tmpfs.append(rel)
        for mount in secrets:
            src = rc.services.secrets.get(mount.value)
            if src is None:
                raise InputError(f"secret {mount.value!r} was not given (--secret id={mount.value},src=PATH)")
            out.copies.append(Copy(str(src), f"{rel}/{mount.value}"))
    for mount in step.mounts:
        if mount.kind == "cache":
            rel = points.ensure(mount.value, is_dir=True)
            cache_dir = rc.services.cache_dir
            fd = _cache_fd(cache_dir, mount.value)
            out.fds.append(fd)
            source = str(cache_dir / "mounts" / _cache_key(mount.value)) if cache_dir else ""
            out.binds.append(Bind(source, rel, readonly=False, is_dir=True, nodev=True, checked_fd=fd))
        elif mount.kind == "ssh":
            sock = rc.services.ssh.get(mount.value)
            if sock is None:
                raise InputError(f"ssh agent {mount.value!r} was not given (--ssh {mount.value}[=SOCKET])")
            st = os.stat(sock)
            if not stat.S_ISSOCK(st.st_mode):
                raise InputError(f"--ssh {mount.value}: {str(sock)!r} is not a socket")
            rel = points.ensure(SSH_SOCKET, is_dir=False)
            out.binds.append(Bind(str(sock), rel, readonly=False, is_dir=False, nodev=True))
        elif mount.kind == "tmpfs":
            out.scratch.append(points.ensure(mount.value, is_dir=True))
        elif mount.kind == "bind":
            real, is_dir = bind_source(rc.context, mount.source, rc.stage_roots, mount.from_stage)
            rel = points.ensure(mount.value, is_dir=is_dir)
            fd = os.open(real, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            out.fds.append(fd)
            out.binds.append(Bind(str(real), rel, readonly=True, is_dir=is_dir, nodev=True, checked_fd=fd))


def bind_source(context: Path | None, source: str, stage_roots: Mapping[str, Path] | None = None,
                from_stage: str | None = None) -> tuple[Path, bool]:
    """A ``bind:`` mount's source: a path of the build context, or of a stage's filesystem
    (resolved there as in a chroot), never outside it."""
    if from_stage is not None:
        root = (stage_roots or {}).get(from_stage)
        if root is None:
            raise InputError(f"stage {from_stage!r} is not available here")
        top = root.resolve()
        inside = resolve_in_root(top, source)
        if inside is None or not os.path.lexists(top / inside):
            raise InputError(f"bind source {source!r}: no such file or directory in stage {from_stage!r}")
        real = top / inside
        return real, real.is_dir()
    if context is None:
        raise InputError("bind mounts need a build context")
    real = in_context(context, source, f"bind source {source!r}")
    if not real.exists():
        raise InputError(f"bind source {source!r}: no such file or directory in the build context")
    return real, real.is_dir()


def bind_inputs(step: RunStep, context: Path, stage_chains: Mapping[str, Sequence[Digest]] | None = None,
                ) -> list[list[str]]:
    """What a run step's ``bind:`` mounts show it, for the cache key: per mount from the context,
    every file's path, mode, size and content digest (a changed source is a changed step, as
    BuildKit keys them); from a stage, that stage's diff_id chain, which decides every byte."""
    out: list[list[str]] = []
    for mount in step.mounts:
        if mount.kind != "bind":
            continue
        if mount.from_stage is not None:
            out.append([mount.from_stage, mount.source, mount.value,
                        *(str(d) for d in (stage_chains or {}).get(mount.from_stage, ()))])
            continue
        real, is_dir = bind_source(context, mount.source)
        rows = [mount.source, mount.value]
        tops = [(str(real), "")] if not is_dir else []
        if is_dir:
            for top, dirs, files in os.walk(real):
                dirs.sort()
                for name in sorted(files + [d for d in dirs if os.path.islink(os.path.join(top, d))]):
                    path = os.path.join(top, name)
                    tops.append((path, os.path.relpath(path, real)))
        for path, rel in tops:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                rows.append(f"{rel}\0{stat.S_IMODE(st.st_mode):o}\0{st.st_size}\0{sha256_file(path)[0]}")
            elif stat.S_ISLNK(st.st_mode):
                rows.append(f"{rel}\0link\0{os.readlink(path)}")
        out.append(rows)
    return out


