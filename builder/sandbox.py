"""Run a command inside a root filesystem directory, isolated, with no daemon.

Why util-linux ``unshare`` plus a small Python child, rather than bubblewrap or a runc bundle:
``unshare`` is in every Debian/Ubuntu/Fedora base system (util-linux is essential), it creates
the namespaces (mount, PID, UTS, IPC, and network for ``network: none``; a user namespace with
uid 0 inside when pybuild is not root) and, with ``--fork``, makes our child PID 1 of the new PID
namespace, so every process the script leaves behind dies with it. The child (this module run as
``python -m builder.sandbox``) then does what needs code rather than flags: mounts ``/proc``, a
minimal ``/dev`` (null, zero, full, random, urandom, tty bound from the host; a private devpts;
``/dev/shm``), the host's ``resolv.conf``/``hosts`` read-only for ``network: host``, secrets and
caches; brings loopback up in a fresh network namespace; ``pivot_root``s into the rootfs; drops to
the step's user; and ``exec``s the shell. bubblewrap is not installed by default and runc needs a
bundle and cgroups; both would be a second moving part for the same kernel calls.

Mount points are prepared by the parent (``prepare_mounts``) with every path resolved inside the
root filesystem (an image's ``/proc -> /etc`` symlink cannot make us mount over a host path), and
the ones it had to create are removed afterwards, so the root filesystem is left as the command
left it. All mounts live in the child's private mount namespace and vanish when it exits.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import fcntl
import json
import os
import platform
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from builder import confine
from builder.errors import StepError
from builder.oci.config import DEFAULT_PATH
from builder.userns import IdMap, in_user_namespace

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_MAX_LINKS = 40


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


def secure_join(root: Path, path: str, follow_last: bool = True) -> Path:
    """``root``/``path`` with symlinks resolved as inside a chroot: never a path outside ``root``."""
    parts = [p for p in path.split("/") if p and p != "."]
    done: list[str] = []
    hops = 0
    while parts:
        name = parts.pop(0)
        if name == "..":
            if done:
                done.pop()
            continue
        candidate = root.joinpath(*done, name)
        if candidate.is_symlink() and (parts or follow_last):
            hops += 1
            if hops > _MAX_LINKS:
                raise StepError(f"too many levels of symbolic links in '/{path}'")
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        done.append(name)
    return root.joinpath(*done)


class MountPoints:
    """Creates the mount points a run needs inside the rootfs, and removes the ones it created."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.created: list[Path] = []

    def ensure(self, target: str, is_dir: bool) -> str:
        """Make ``target`` exist (dir or empty file); returns it resolved, relative to the root."""
        resolved = secure_join(self.root, target)
        rel = resolved.relative_to(self.root)
        missing = []
        probe = resolved
        while probe != self.root and not probe.exists() and not probe.is_symlink():
            missing.append(probe)
            probe = probe.parent
        for path in reversed(missing):
            last = path == resolved
            if path.is_symlink() or (path.exists() and not path.is_dir() and not last):
                raise StepError(f"cannot mount at '/{target}': '/{path.relative_to(self.root)}' is in the way")
            if last and not is_dir:
                path.touch(mode=0o644)
            else:
                path.mkdir(mode=0o755)
            self.created.append(path)
        if resolved.is_symlink() or (is_dir and not resolved.is_dir()) or (not is_dir and resolved.is_dir()):
            raise StepError(f"cannot mount at '/{target}': it is not a {'directory' if is_dir else 'file'}")
        return str(rel)

    def remove_created(self) -> None:
        """Undo ``ensure`` (deepest first); leaves anything that is no longer empty."""
        for path in reversed(self.created):
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()
                else:
                    path.unlink()
        self.created.clear()


def _unshare() -> str:
    unshare = shutil.which("unshare") or next(
        (p for p in ("/usr/bin/unshare", "/bin/unshare") if os.path.exists(p)), None)
    if unshare is None:
        raise StepError("run steps need util-linux 'unshare', which is not installed")
    return unshare


def _unshare_argv(network: str, rootless: bool) -> list[str]:
    argv = [_unshare(), "--mount", "--uts", "--ipc", "--pid", "--fork", "--kill-child"]
    if network == "none":
        argv.append("--net")
    if rootless:
        argv += ["--user", "--map-root-user"]
    return argv


# ----------------------------------------------------------------------------------------------
# rootless builds with a full id range: the whole build re-executed inside a user namespace

_USERNS_ENV = "PYBUILD_USERNS_FDS"  # "READY,GO": the pipes between a re-executed build and its parent


def run_in_user_namespace(idmap: IdMap, argv: list[str]) -> tuple[int | None, str]:
    """Run ``python -m builder ARGV`` in a new user namespace mapped by ``idmap``; (its exit status, "").

    The child is started by ``unshare --user`` and waits (:func:`join_user_namespace`) until the
    parent has written its maps with the setuid helpers ``newuidmap``/``newgidmap`` (an
    unprivileged process may map only its own id; the helpers check ``/etc/subuid`` and
    ``/etc/subgid``), as Podman and Buildah do. If a helper refuses, the child is told to stop
    and this returns (None, what the helper said): the caller builds with the single mapping.
    An interrupt reaches the child through the terminal's process group; the parent only waits
    for it and passes its status on (130 after Ctrl-C).
    """
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    env = dict(os.environ, **{_USERNS_ENV: f"{ready_w},{go_r}"})
    try:
        proc = subprocess.Popen([_unshare(), "--user", sys.executable, "-m", "builder", *argv], env=env,
                                pass_fds=(ready_w, go_r))
    except OSError as exc:
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)
        return None, f"cannot start unshare: {exc.strerror}"
    os.close(ready_w)
    os.close(go_r)
    problem = ""
    try:
        with open(ready_r, "rb") as ready:
            if ready.read(1) != b"r":
                problem = "the re-executed build did not start"
        for tool, args in (("newuidmap", idmap.uid_args()), ("newgidmap", idmap.gid_args())):
            if problem:
                break
            done = subprocess.run([tool, str(proc.pid), *args], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                said = (done.stderr or done.stdout).strip().splitlines()
                problem = f"{tool} failed" + (f": {said[-1]}" if said else f" (exit status {done.returncode})")
        with contextlib.suppress(BrokenPipeError):
            os.write(go_w, b"0" if problem else b"1")
    finally:
        os.close(go_w)
        status = _wait_passing_interrupts(proc)
    return (None, problem) if problem else (status, "")


def _wait_passing_interrupts(proc: subprocess.Popen[bytes]) -> int:
    while True:
        try:
            status = proc.wait()
            break
        except KeyboardInterrupt:
            continue  # the child got the same SIGINT and exits on its own, with 130
    return 128 - status if status < 0 else status


def join_user_namespace() -> None:
    """In a build re-executed by :func:`run_in_user_namespace`: wait for the maps, then start again as uid 0.

    Called first thing by the CLI; does nothing in any other process. The process was executed
    before its maps existed, as an unmapped user, so it holds no capabilities in its namespace;
    executing itself once more, now as uid 0 there, gives it root's (the kernel's rule for exec).
    """
    fds = os.environ.pop(_USERNS_ENV, None)
    if fds is None:
        return
    ready, go = (int(fd) for fd in fds.split(","))
    os.write(ready, b"r")
    os.close(ready)
    answer = os.read(go, 1)
    os.close(go)
    if answer != b"1":
        os._exit(125)  # the parent builds without the range and says why
    with contextlib.suppress(OSError):
        os.setgroups([])  # the host's supplementary groups are unmapped (nogroup) in here
    os.execv(sys.executable, sys.orig_argv)


def _check_strings(spec: RunSpec) -> None:
    """What execve(2) cannot take is a clean error here, not a traceback from the child."""
    for text in [*spec.argv, *spec.env.values()]:
        if "\0" in text:
            raise StepError(f"a NUL character cannot be passed to a command: {text[:40]!r}")
    for name in spec.env:
        if not name or "\0" in name or "=" in name:
            raise StepError(f"not a valid environment variable name: {name[:40]!r}")


def run(spec: RunSpec, on_output: Callable[[str], None], tail: int = 20,
        fds: tuple[int, ...] = ()) -> tuple[int, list[str]]:
    """Run ``spec`` isolated and confined; stream its merged output line by line to ``on_output``.

    ``fds`` are kept open for the child (the ``/proc/self/fd/N`` sources of its binds). Returns
    (exit status, the last ``tail`` lines). A status above 128 is a signal (128 + N).
    """
    _check_strings(spec)
    missing = confine.available()
    if missing is not None:
        raise StepError(missing)
    rootless = os.geteuid() != 0
    argv = [*_unshare_argv(spec.network, rootless), sys.executable, "-m", "builder.sandbox"]
    payload = json.dumps(asdict(spec))
    env = {"PATH": os.environ.get("PATH", DEFAULT_PATH), "PYTHONPATH": os.pathsep.join(sys.path)}
    last: collections.deque[str] = collections.deque(maxlen=tail)
    try:
        proc = subprocess.Popen([*argv, payload], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, start_new_session=False, pass_fds=fds)
    except OSError as exc:
        raise StepError(f"cannot start the sandbox: {exc.strerror}") from exc
    assert proc.stdout is not None
    try:
        with proc.stdout:
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                last.append(line)
                on_output(line)
    except BaseException:
        # an interrupt (or a failing reporter): unshare --kill-child takes the whole sandbox with it
        proc.kill()
        proc.wait()
        raise
    status = proc.wait()
    if status < 0:
        status = 128 - status
    return status, list(last)


# ----------------------------------------------------------------------------------------------
# the child: runs inside the new namespaces, as ``python -m builder.sandbox SPEC_JSON``

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217, "armv7l": 218}

_libc = ctypes.CDLL(None, use_errno=True)


def _enc(text: str | None) -> bytes | None:
    return text.encode() if text is not None else None


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    if _libc.mount(_enc(source), _enc(target), _enc(fstype), ctypes.c_ulong(flags), _enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype or 'bind'} on {target}: {os.strerror(err)}")


def _bind(source: str, target: str, readonly: bool, nodev: bool = False) -> None:
    _mount(source, target, None, MS_BIND | MS_REC)
    if readonly or nodev:
        extra = (MS_RDONLY if readonly else 0) | MS_NOSUID | MS_NODEV
        _mount(None, target, None, MS_REMOUNT | MS_BIND | extra | _locked_flags(target))


#: statvfs f_flag bits -> the mount flags a remount must repeat (inside a user namespace the kernel
#: refuses a remount that would clear a flag the outer mount had: it is locked).
_STATVFS_TO_MS = {os.ST_RDONLY: MS_RDONLY, os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV,
                  os.ST_NOEXEC: MS_NOEXEC, os.ST_NOATIME: 1024, os.ST_NODIRATIME: 2048, os.ST_RELATIME: 1 << 21}


def _locked_flags(path: str) -> int:
    have = os.statvfs(path).f_flag
    return sum(ms for st, ms in _STATVFS_TO_MS.items() if have & st)


def _confine_proc(root: str) -> None:
    """Mask and write-protect the /proc and /sys paths runc masks (``confine.MASKED_PATHS``...)."""
    for rel in confine.MASKED_PATHS:
        path = f"{root}/{rel}"
        if os.path.isdir(path) and not os.path.islink(path):
            _mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0k,mode=555")
        elif os.path.exists(path) and not os.path.islink(path):
            _bind("/dev/null", path, readonly=False)
    for rel in confine.READONLY_PATHS:
        path = f"{root}/{rel}"
        if os.path.exists(path) and not os.path.islink(path):
            _mount(path, path, None, MS_BIND | MS_REC)
            _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
                   | _locked_flags(path))


def _copy_in(copy: Copy, root: str) -> None:
    """A secret as a copy on the private tmpfs: nothing the command does can reach the host file."""
    target = f"{root}/{copy.target}"
    with open(copy.source, "rb") as src, open(target, "xb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.chmod(target, 0o444)


def _loopback_up() -> None:
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, siocgifflags, ifreq))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


def _setup_dev(root: str) -> None:
    dev = f"{root}/dev"
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=65536k")
    for name in DEVICES:
        path = f"{dev}/{name}"
        with open(path, "w"):
            pass
        with contextlib.suppress(OSError):
            _bind(f"/dev/{name}", path, False)
    os.mkdir(f"{dev}/pts")
    with contextlib.suppress(OSError):
        _mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
    os.symlink("pts/ptmx", f"{dev}/ptmx")
    os.mkdir(f"{dev}/shm")
    _mount("shm", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")


def _enter_root(root: str) -> None:
    _mount(root, root, None, MS_BIND | MS_REC)
    # nodev: a device node in the image (a hostile base's block device, or one a command makes) can be
    # created and kept in a layer, never opened. Inside a user namespace no device can be made anyway.
    try:
        _mount(None, root, None, MS_REMOUNT | MS_BIND | MS_NODEV | _locked_flags(root))
    except OSError:
        if os.getuid() == 0 and not in_user_namespace():
            raise
    os.chdir(root)
    number = _PIVOT_ROOT.get(platform.machine())
    if number is not None and _libc.syscall(number, b".", b".") == 0:
        if _libc.umount2(b".", MNT_DETACH) != 0:
            raise OSError(ctypes.get_errno(), "umount old root")
    else:
        os.chroot(".")
    os.chdir("/")


def _checked_source(bind: Bind) -> str:
    if bind.checked_fd < 0:
        return bind.source
    directory = os.O_DIRECTORY if bind.is_dir else 0
    fd = os.open(bind.source, os.O_PATH | directory | os.O_NOFOLLOW)  # stays open until exec (cloexec)
    got, want = os.fstat(fd), os.fstat(bind.checked_fd)
    if (got.st_dev, got.st_ino) != (want.st_dev, want.st_ino):
        raise OSError(errno.ESTALE, f"{bind.source} was replaced while being mounted")
    return f"/proc/self/fd/{fd}"


def child(spec: RunSpec) -> None:
    """Inside the namespaces: mounts, root switch, confinement, user switch, exec. Never returns."""
    root = spec.rootfs
    seccomp = confine.Filter.build()  # libseccomp is loaded from the host, before the root switch
    last_cap = confine.last_cap()
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    with contextlib.suppress(OSError):
        _mount("sysfs", f"{root}/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _setup_dev(root)
    if spec.confined:
        _confine_proc(root)
    for rel in spec.tmpfs:
        _mount("tmpfs", f"{root}/{rel}", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755,size=65536k")
    for copy in spec.copies:
        _copy_in(copy, root)
    for rel in spec.tmpfs:
        _mount(None, f"{root}/{rel}", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
               "mode=755,size=65536k")
    for rel in spec.scratch:
        _mount("tmpfs", f"{root}/{rel}", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for bind in spec.binds:
        target = f"{root}/{bind.target}"
        if not bind.is_dir and not os.path.exists(target):
            with open(target, "w"):
                pass  # a file mount point inside a tmpfs made just now
        _bind(_checked_source(bind), target, bind.readonly, bind.nodev)
    if spec.network == "none":
        _loopback_up()
    with contextlib.suppress(OSError):
        socket.sethostname("pybuild")
    _enter_root(root)
    try:
        os.chdir(spec.workdir)
    except OSError as exc:
        raise SystemExit(f"pybuild-sandbox: cannot enter workdir {spec.workdir}: {exc.strerror}") from exc
    os.umask(0o022)  # what a step creates must not depend on the umask pybuild was started with
    if spec.confined:
        confine.drop_capabilities(last_cap)
    try:
        os.setgroups(spec.groups)
    except PermissionError:
        # a user namespace with a single mapping denies setgroups: fine unless real groups were asked
        if set(spec.groups) - {spec.gid}:
            raise
    os.setgid(spec.gid)
    os.setuid(spec.uid)
    if spec.confined:
        confine.no_new_privs()
        seccomp.load()
    sys.stdout.flush()
    try:
        os.execve(spec.argv[0], spec.argv, spec.env)
    except OSError as exc:
        hint = " (a binary for another architecture?)" if exc.errno == errno.ENOEXEC else ""
        sys.stderr.write(f"pybuild-sandbox: cannot execute {spec.argv[0]}: {exc.strerror}{hint}\n")
        sys.stderr.flush()
        os._exit(127)


def _spec_from_json(text: str) -> RunSpec:
    data: dict[str, Any] = json.loads(text)
    data["binds"] = [Bind(**b) for b in data.get("binds", [])]
    data["copies"] = [Copy(**c) for c in data.get("copies", [])]
    return RunSpec(**data)


if __name__ == "__main__":
    try:
        child(_spec_from_json(sys.argv[1]))
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"pybuild-sandbox: {exc}\n")
        sys.exit(126)
