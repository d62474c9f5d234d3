"""``run``: a shell script executed inside the image's root filesystem; its effect is the layer.

The root is an overlay mount of the layers' snapshots where the kernel allows it, and the layer
is the translated upper directory (:mod:`builder.fs.overlay`); elsewhere it is a working copy of
every layer, snapshotted before and after the command and diffed (:class:`CopyRoot`). Both give
the same layer for the same command. What the sandbox mounts (``/proc``, ``/dev``, ``/sys``, resolv.conf and hosts, secrets, caches) lives in
the child's private mount namespace and is gone when it exits; mount points it had to create are
made before the first snapshot and removed after the second, and what is mounted over is excluded
from both, so none of it can reach the layer (the mounts are planned in :mod:`builder.steps.mounts`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from builder.errors import StepError
from builder.fs.apply import read_in_root
from builder.fs.diff import diff
from builder.fs.mountpoints import MountPoints
from builder.fs.overlay import DRIVER_ENV, OverlayUnavailable, SnapshotDamaged, insisted
from builder.fs.safepath import join_in_root
from builder.fs.snapshot import Snapshot, snapshot
from builder.fs.users import resolve_user
from builder.layer.entry import Change, Entry, canon
from builder.oci import config as cfgmod
from builder.oci.config import DEFAULT_PATH
from builder.oci.digest import Digest
from builder.oci.platform import Platform
from builder.recipe.model import RunStep
from builder.recipe.runtime import runtime_spec
from builder.sandbox.host import run
from builder.sandbox.spec import RunSpec
from builder.steps.base import Changes, Lower, Scope, Services, StepPlan
from builder.steps.mounts import SSH_SOCKET, Mounts, bind_inputs, plan_mounts
from builder.steps.mounts import excluded as mounts_excluded

DEFAULT_SHELL = ("/bin/sh", "-e", "-c")
"""``-e``: a multi-line script stops at its first failing command, so a failed ``apt-get install`` on
line 2 fails the build instead of giving an image without the package (``sh -c`` alone reports only
the last line's status). ``shell: ["/bin/sh", "-c"]`` restores the old behaviour."""


@dataclass
class RunContext:
    """What a run step runs with: a working root filesystem, never the file steps' metadata tree."""

    rootfs: Path
    platform: Platform
    epoch: int
    env: Mapping[str, str]
    """The image's Env merged with the build args (the step's own env goes on top)."""
    workdir: str
    shell: tuple[str, ...] = DEFAULT_SHELL
    """The shell for a step without its own ``shell:`` (the recipe's or the image's SHELL)."""
    context: Path | None = None
    """The build context, where ``bind:`` mounts' sources are."""
    stage_roots: Mapping[str, Path] = field(default_factory=dict)
    """The filesystems of the stages ``bind:`` mounts read ``from:``."""
    services: Services = field(default_factory=Services)


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


def _make_workdir(root: Path, wd: Path) -> None:
    """As Docker's WORKDIR: created in this step's layer, 0755 whatever pybuild's umask."""
    missing = []
    probe = wd
    while probe != root and not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for path in reversed(missing):
        path.mkdir(mode=0o755)
        path.chmod(0o755)


class RunRoot(Protocol):
    """Where a run step's command runs, and how its layer is read afterwards: the copy driver's
    working directory (:class:`CopyRoot`) or an overlay mount (:class:`builder.fs.overlay.OverlayRoot`)."""

    path: Path

    def mounted(self) -> contextlib.AbstractContextManager[Path]: ...

    def begin(self, excluded: Collection[str]) -> None: ...

    def changes(self, excluded: Collection[str], epoch: int) -> list[Change]: ...


class CopyRoot:
    """The copy driver: every layer applied into one directory, snapshotted before and after."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._before: Snapshot | None = None

    def mounted(self) -> contextlib.AbstractContextManager[Path]:
        return contextlib.nullcontext(self.path)

    def begin(self, excluded: Collection[str]) -> None:
        self._before = snapshot(self.path, excluded)

    def changes(self, excluded: Collection[str], epoch: int) -> list[Change]:
        assert self._before is not None, "changes() before begin()"
        return diff(self.path, self._before, snapshot(self.path, excluded), epoch)


def run_changes(step: RunStep, rc: RunContext, where: RunRoot | None = None) -> list[Change]:
    """Run the step's script in its root filesystem and return what it changed.

    ``where`` is how the root is made and read (``rc.rootfs`` on the copy driver when not given).
    """
    check_can_execute(rc.platform)
    if step.security == "insecure" and not rc.services.allow_insecure:
        raise StepError("`security: insecure` runs the command with every capability and no seccomp filter: "
                        "start the build with --allow security.insecure to permit it")
    where = where or CopyRoot(rc.rootfs)
    with where.mounted() as root:
        changes = _run_in(step, rc, root, where)
    return _map_rootless(changes) if os.geteuid() != 0 else changes


def _run_in(step: RunStep, rc: RunContext, root: Path, where: RunRoot) -> list[Change]:
    shell = list(step.shell or rc.shell)
    shell_path = join_in_root(root, shell[0])
    if not shell_path.is_file():
        raise StepError(f"the image has no {shell[0]}: a run step needs a shell "
                        "(add one in an earlier step, or set `shell:` to one the image has)")
    user = resolve_user(step.user, read_in_root(root, "etc/passwd"), read_in_root(root, "etc/group"))
    env = {"PATH": DEFAULT_PATH, "HOME": user.home, **rc.env, **step.env}
    if any(m.kind == "ssh" for m in step.mounts):
        env["SSH_AUTH_SOCK"] = "/" + SSH_SOCKET
    rc = dataclasses.replace(rc, rootfs=root)
    excluded = mounts_excluded(step, root)
    points = MountPoints(root)
    mounts = Mounts()
    try:
        # mount points exist in both snapshots, so neither they nor their parents' times are a change
        plan_mounts(step, rc, points, mounts)
        where.begin(excluded)
        wd = join_in_root(root, step.workdir or rc.workdir or "/")
        if not wd.is_dir():
            _make_workdir(root, wd)
        spec = RunSpec(rootfs=str(root), argv=[*shell, step.script], env=env, uid=user.uid, gid=user.gid,
                       groups=sorted({user.gid, *user.additional_gids}), workdir="/" + canon(str(wd.relative_to(root))),
                       network=step.network, binds=mounts.binds, tmpfs=mounts.tmpfs, copies=mounts.copies,
                       scratch=mounts.scratch,
                       confined=step.security != "insecure")
        status, tail = run(spec, rc.services.on_output, fds=tuple(mounts.fds))
        if status != 0:
            what = f"was killed by signal {status - 128}" if status > 128 else f"exited with status {status}"
            raise StepError(f"command {what}", detail="\n".join(f"  | {line}" for line in tail) or None)
        return where.changes(excluded, rc.epoch)
    finally:
        mounts.close()
        points.remove_created()


def image_env(scope: Scope) -> dict[str, str]:
    """A run step's environment before its own ``env``: the image's Env (the recipe's ``config.env``
    over the base's), then the args the recipe declares.

    As Docker's ARG: an argument reaches a command only if the recipe declares it under ``args:``
    (a built-in such as ``TARGETARCH`` too, declared without a value); a ``--build-arg`` it does
    not declare, and the built-ins it does not, stay out of the environment (and so out of the
    step's cache key).
    """
    runtime = cfgmod.merge_runtime(scope.config.get("config") or {}, runtime_spec(scope.spec))
    env = dict(item.partition("=")[::2] for item in runtime.get("Env") or [])
    env.update((arg, value) for arg, value in scope.args.items() if arg in scope.declared)
    return env


def image_workdir(scope: Scope) -> str:
    return str((scope.config.get("config") or {}).get("WorkingDir") or "/")


def image_shell(step: RunStep, scope: Scope) -> tuple[str, ...]:
    """A run step's shell: its own ``shell:``, else the recipe's ``config.shell``, else the image's
    ``Shell`` (a base built with Dockerfile's SHELL), else ``sh -e -c``, as Docker's RUN takes SHELL."""
    if step.shell or scope.spec.shell:
        return tuple(step.shell or scope.spec.shell or ())
    inherited = (scope.config.get("config") or {}).get("Shell")
    if isinstance(inherited, list) and inherited and all(isinstance(a, str) for a in inherited):
        return tuple(inherited)
    return DEFAULT_SHELL


class RunHandler:
    runs_commands = True
    adds_files = False

    def reads_stages(self, step: RunStep) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.from_stage for m in step.mounts if m.from_stage))

    def describe(self, step: RunStep) -> str:
        return f"pybuild run {step.script}"

    def plan(self, step: RunStep, scope: Scope) -> StepPlan:
        return _RunPlan(step, scope, image_env(scope), image_workdir(scope), image_shell(step, scope),
                        self.reads_stages(step))


@dataclass
class _RunPlan:
    """Keyed by what the command sees besides the lower layers: its environment, workdir, shell and
    bind mounts' contents; never a secret or a cache mount's contents."""

    step: RunStep
    scope: Scope
    env: dict[str, str]
    workdir: str
    shell: tuple[str, ...]
    stages: tuple[str, ...]
    reads_contents: bool = False

    def inputs(self, known: object) -> dict[str, Any]:
        inputs: dict[str, Any] = {"env": self.env, "workdir": self.workdir, "shell": list(self.shell)}
        if any(m.kind == "bind" for m in self.step.mounts):
            inputs["binds"] = bind_inputs(self.step, self.scope.context, self.scope.stage_chains)
        return inputs

    def materials(self) -> list[tuple[str, Digest]]:
        """Each bind mount from the context, by the digest of what it shows the command."""
        context = [m for m in self.step.mounts if m.kind == "bind" and m.from_stage is None]
        if not context:
            return []
        named = [[m.source, m.value] for m in context]
        rows = [r for r in bind_inputs(self.step, self.scope.context, self.scope.stage_chains) if r[:2] in named]
        return [(f"context:{r[0]}", Digest.of("\n".join(r).encode("utf-8", "surrogateescape"))) for r in rows]

    def changes(self, lower: Lower, attempt: int = 1) -> Changes:
        where = lower.overlay()
        if where is not None:
            try:
                return Changes(iter(run_changes(self.step, self._context(where.path, lower), where)))
            except OverlayUnavailable as exc:
                damaged = isinstance(exc, SnapshotDamaged)  # found while the command ran: its layer is not kept
                if damaged and attempt == 1:
                    lower.note(f"{exc}: extracting it again, and running the step again")
                    return self.changes(lower, attempt + 1)
                why = str(exc) if damaged else f"overlayfs could not be mounted: {exc}"
                if insisted():
                    raise StepError(f"{DRIVER_ENV}: {why}") from exc
                lower.overlay_failed(why)  # a mount that failed: later steps copy at once
        rc = self._context(lower.rootfs(), lower)
        return Changes(iter(run_changes(self.step, rc)), in_rootfs=True)

    def _context(self, rootfs: Path, lower: Lower) -> RunContext:
        return RunContext(rootfs=rootfs, platform=self.scope.platform, epoch=self.scope.epoch, env=self.env,
                          workdir=self.workdir, shell=self.shell, context=self.scope.context,
                          stage_roots=lower.stages(), services=self.scope.services)
