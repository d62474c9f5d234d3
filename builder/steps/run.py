"""``run``: a shell script executed inside the image's working root filesystem; its effect is the layer.

Snapshot the working rootfs, run the command in the sandbox, snapshot again, diff. What the
sandbox mounts (``/proc``, ``/dev``, ``/sys``, resolv.conf and hosts, secrets, caches) lives in
the child's private mount namespace and is gone when it exits; mount points it had to create are
made before the first snapshot and removed after the second, and what is mounted over is excluded
from both, so none of it can reach the layer.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from builder.errors import InputError, StepError
from builder.fs.apply import read_in_root
from builder.fs.diff import diff
from builder.fs.snapshot import snapshot
from builder.fs.users import resolve_user
from builder.layer.entry import Change, Entry, canon
from builder.oci.platform import Platform
from builder.recipe.model import RunStep
from builder.sandbox import DEFAULT_PATH, Bind, MountPoints, RunSpec, run, secure_join
from builder.steps.base import StepContext

ALWAYS_EXCLUDED = ("proc", "sys", "dev")
SECRETS_DIR = "run/secrets"


@dataclass
class RunContext:
    """What a run step needs beyond the file steps' context."""

    rootfs: Path
    platform: Platform
    env: Mapping[str, str]
    """The image's Env merged with the build args (the step's own env goes on top)."""
    workdir: str
    secrets: Mapping[str, Path] = field(default_factory=dict)
    cache_dir: Path | None = None
    on_output: Callable[[str], None] = lambda line: None


def _cache_source(cache_dir: Path | None, target: str) -> str:
    if cache_dir is None:
        raise InputError("cache mounts need a cache directory (--cache-dir)")
    key = hashlib.sha256(target.encode()).hexdigest()[:16]
    path = cache_dir / "mounts" / key
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _excluded(step: RunStep, root: Path) -> set[str]:
    """Paths kept out of both snapshots: what the sandbox mounts over (nothing under them can change)."""
    out = set(ALWAYS_EXCLUDED)
    targets = [m.value for m in step.mounts if m.kind == "cache"]
    if any(m.kind == "secret" for m in step.mounts):
        targets.append(SECRETS_DIR)
    for target in targets:
        out.add(str(secure_join(root, target).relative_to(root)))
    return out


def _plan_mounts(step: RunStep, rc: RunContext, points: MountPoints) -> tuple[list[Bind], list[str]]:
    """Create mount points; returns the binds and the tmpfs paths for the sandbox."""
    for name in ALWAYS_EXCLUDED:  # the sandbox mounts at these very paths, and mount(2) follows symlinks
        if points.ensure(name, is_dir=True) != name:
            raise StepError(f"cannot mount at '/{name}': it is a symbolic link in the image (as runc, pybuild "
                            "refuses to mount /proc, /sys or /dev through one)")
    binds: list[Bind] = []
    tmpfs: list[str] = []
    if step.network == "host":
        for name in ("etc/resolv.conf", "etc/hosts"):
            if os.path.isfile(f"/{name}"):
                rel = points.ensure(name, is_dir=False)
                binds.append(Bind(f"/{name}", rel, readonly=True, is_dir=False))
    secrets = [m for m in step.mounts if m.kind == "secret"]
    if secrets:
        rel = points.ensure(SECRETS_DIR, is_dir=True)
        tmpfs.append(rel)
        for mount in secrets:
            src = rc.secrets.get(mount.value)
            if src is None:
                raise InputError(f"secret {mount.value!r} was not given (--secret id={mount.value},src=PATH)")
            binds.append(Bind(str(src), f"{rel}/{mount.value}", readonly=True, is_dir=False))
    for mount in step.mounts:
        if mount.kind == "cache":
            rel = points.ensure(mount.value, is_dir=True)
            binds.append(Bind(_cache_source(rc.cache_dir, mount.value), rel, readonly=False, is_dir=True))
    return binds, tmpfs


def _map_rootless(changes: list[Change]) -> list[Change]:
    """Rootless: our own uid/gid on disk is uid/gid 0 inside the user namespace, and in the image."""
    uid, gid = os.geteuid(), os.getegid()
    out: list[Change] = []
    for c in changes:
        if isinstance(c, Entry) and (c.uid == uid or c.gid == gid):
            c = Entry(c.path, c.kind, c.mode, 0 if c.uid == uid else c.uid, 0 if c.gid == gid else c.gid, c.size,
                      c.mtime, c.link, c.devmajor, c.devminor, c.xattrs, c.content)
        out.append(c)
    return out


_QEMU_NAMES = {"amd64": "x86_64", "arm64": "aarch64", "arm": "arm", "386": "i386", "ppc64le": "ppc64le",
               "s390x": "s390x", "riscv64": "riscv64", "mips64le": "mips64el"}
BINFMT = Path("/proc/sys/fs/binfmt_misc")


def check_can_execute(platform: Platform) -> None:
    """A run step for another architecture needs a registered binfmt handler (qemu-user-static)."""
    host = Platform.host()
    if platform.os != "linux":
        raise StepError(f"run steps need a linux image, this one is for {platform}")
    if platform.architecture == host.architecture or (host.architecture, platform.architecture) == ("amd64", "386"):
        return
    name = _QEMU_NAMES.get(platform.architecture, platform.architecture)
    handler = BINFMT / f"qemu-{name}"
    try:
        enabled = handler.read_text().splitlines()[0].strip() == "enabled"
    except OSError:
        enabled = False
    if not enabled:
        raise StepError(f"cannot run commands for {platform} on this {host} machine: no binfmt handler "
                        f"{str(handler)!r} is registered (install qemu-user-static, or build without run steps)")


def run_changes(step: RunStep, ctx: StepContext, rc: RunContext) -> list[Change]:
    """Run the step's script in the working rootfs and return what it changed."""
    check_can_execute(rc.platform)
    root = rc.rootfs
    shell = list(step.shell or ("/bin/sh", "-c"))
    shell_path = secure_join(root, shell[0])
    if not shell_path.is_file():
        raise StepError(f"the image has no {shell[0]}: a run step needs a shell "
                        "(add one in an earlier step, or set `shell:` to one the image has)")
    user = resolve_user(step.user, read_in_root(root, "etc/passwd"), read_in_root(root, "etc/group"))
    env = {"PATH": DEFAULT_PATH, "HOME": user.home, **rc.env, **step.env}
    excluded = _excluded(step, root)
    points = MountPoints(root)
    try:
        # mount points exist in both snapshots, so neither they nor their parents' times are a change
        binds, tmpfs = _plan_mounts(step, rc, points)
        before = snapshot(root, excluded)
        wd = secure_join(root, step.workdir or rc.workdir or "/")
        if not wd.is_dir():
            wd.mkdir(parents=True, mode=0o755)  # as Docker's WORKDIR: part of this step's layer
        spec = RunSpec(rootfs=str(root), argv=[*shell, step.script], env=env, uid=user.uid, gid=user.gid,
                       groups=sorted({user.gid, *user.additional_gids}), workdir="/" + canon(str(wd.relative_to(root))),
                       network=step.network, binds=binds, tmpfs=tmpfs)
        status, tail = run(spec, rc.on_output)
        if status != 0:
            what = f"was killed by signal {status - 128}" if status > 128 else f"exited with status {status}"
            raise StepError(f"command {what}", detail="\n".join(f"  | {line}" for line in tail) or None)
        after = snapshot(root, excluded)
    finally:
        points.remove_created()
    changes = diff(root, before, after, ctx.epoch)
    return _map_rootless(changes) if os.geteuid() != 0 else changes
