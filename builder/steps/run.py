"""``run``: a shell script executed inside the image's working root filesystem; its effect is the layer.

Snapshot the working rootfs, run the command in the sandbox, snapshot again, diff. What the
sandbox mounts (``/proc``, ``/dev``, ``/sys``, resolv.conf and hosts, secrets, caches) lives in
the child's private mount namespace and is gone when it exits; mount points it had to create are
made before the first snapshot and removed after the second, and what is mounted over is excluded
from both, so none of it can reach the layer.
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
from typing import Any

from builder.errors import InputError, StepError
from builder.fs.apply import read_in_root
from builder.fs.diff import diff
from builder.fs.mountpoints import MountPoints
from builder.fs.safepath import in_context, join_in_root, resolve_in_root
from builder.fs.snapshot import snapshot
from builder.fs.users import resolve_user
from builder.layer.entry import Change, Entry, canon
from builder.oci import config as cfgmod
from builder.oci.config import DEFAULT_PATH
from builder.oci.digest import Digest, sha256_file
from builder.oci.platform import Platform
from builder.recipe.model import RunStep
from builder.recipe.runtime import runtime_spec
from builder.sandbox import Bind, Copy, RunSpec, run
from builder.steps.base import Changes, Lower, Scope, Services, StepPlan

ALWAYS_EXCLUDED = ("proc", "sys", "dev")
DEFAULT_SHELL = ("/bin/sh", "-e", "-c")
"""``-e``: a multi-line script stops at its first failing command, so a failed ``apt-get install`` on
line 2 fails the build instead of giving an image without the package (``sh -c`` alone reports only
the last line's status). ``shell: ["/bin/sh", "-c"]`` restores the old behaviour."""
SECRETS_DIR = "run/secrets"
SSH_SOCKET = "run/buildkit/ssh_agent.0"
"""Where an ``ssh:`` mount's agent socket appears (BuildKit's path), named by ``SSH_AUTH_SOCK``."""


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


def _excluded(step: RunStep, root: Path) -> set[str]:
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
class _Mounts:
    binds: list[Bind] = field(default_factory=list)
    tmpfs: list[str] = field(default_factory=list)
    copies: list[Copy] = field(default_factory=list)
    scratch: list[str] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


def _plan_mounts(step: RunStep, rc: RunContext, points: MountPoints, out: _Mounts) -> None:
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


def run_changes(step: RunStep, rc: RunContext) -> list[Change]:
    """Run the step's script in the working rootfs and return what it changed."""
    check_can_execute(rc.platform)
    if step.security == "insecure" and not rc.services.allow_insecure:
        raise StepError("`security: insecure` runs the command with every capability and no seccomp filter: "
                        "start the build with --allow security.insecure to permit it")
    root = rc.rootfs
    shell = list(step.shell or rc.shell)
    shell_path = join_in_root(root, shell[0])
    if not shell_path.is_file():
        raise StepError(f"the image has no {shell[0]}: a run step needs a shell "
                        "(add one in an earlier step, or set `shell:` to one the image has)")
    user = resolve_user(step.user, read_in_root(root, "etc/passwd"), read_in_root(root, "etc/group"))
    env = {"PATH": DEFAULT_PATH, "HOME": user.home, **rc.env, **step.env}
    if any(m.kind == "ssh" for m in step.mounts):
        env["SSH_AUTH_SOCK"] = "/" + SSH_SOCKET
    excluded = _excluded(step, root)
    points = MountPoints(root)
    mounts = _Mounts()
    try:
        # mount points exist in both snapshots, so neither they nor their parents' times are a change
        _plan_mounts(step, rc, points, mounts)
        before = snapshot(root, excluded)
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
        after = snapshot(root, excluded)
    finally:
        mounts.close()
        points.remove_created()
    changes = diff(root, before, after, rc.epoch)
    return _map_rootless(changes) if os.geteuid() != 0 else changes


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

    def changes(self, lower: Lower) -> Changes:
        rc = RunContext(rootfs=lower.rootfs(), platform=self.scope.platform, epoch=self.scope.epoch, env=self.env,
                        workdir=self.workdir, shell=self.shell, context=self.scope.context,
                        stage_roots=lower.stages(), services=self.scope.services)
        return Changes(iter(run_changes(self.step, rc)), in_rootfs=True)
