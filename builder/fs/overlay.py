"""The overlay run driver: a run step's root filesystem as an overlayfs mount of layer snapshots.

The snapshots of the layers below (:mod:`builder.cache.snapshots`) are the lower directories and
a fresh, empty directory is the upper one, so preparing the root costs one ``mount`` however big
the base, and the step's layer is read from the upper directory (:mod:`builder.fs.upper`), so
writing it costs the size of the change. BuildKit's and Buildah's overlay snapshotters work the
same way.

Which driver a run step uses is chosen here (:func:`choose`), and named in the progress output:

- ``overlay``: root, with the kernel's overlayfs; or uid 0 of a user namespace (a rootless build
  is re-executed in one: with its subordinate id range, else its own id only) on Linux 5.11 or
  later, mounted ``userxattr``.
- ``overlay`` by ``fuse-overlayfs``, where the kernel's cannot be mounted and it is installed.
- ``copy``: otherwise, or when ``PYBUILD_RUN_DRIVER=copy``: every layer applied into a working
  directory, snapshotted before and after the command (:mod:`builder.fs.snapshot`).

The mount is made with ``redirect_dir=nofollow,index=off,metacopy=off`` (``nofollow``, not ``off``,
which kernels turn into ``follow``, which ``userxattr`` refuses), so the upper directory holds
only whole files and plain whiteouts, which is all an OCI layer can say: a renamed lower
directory is copied (``rename`` gets EXDEV, and ``mv`` copies), never a redirect, and a
metadata change copies the file up whole. A kernel that refuses these options is not used.

The mounts are made in a private mount namespace of the calling thread (``unshare(CLONE_NEWNS)``,
the host's mounts still propagating in), so they are never visible to the host and vanish with
the process, even one killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import errno
import os
import platform
import shutil
import subprocess
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.errors import StepError
from builder.fs.snapshot import Snapshot, snapshot
from builder.fs.syscalls import CLONE_NEWNS, MNT_DETACH, MS_PRIVATE, MS_RDONLY, MS_REC, MS_SLAVE, mount, umount, unshare
from builder.fs.upper import upper_diff
from builder.layer.entry import Change
from builder.userns import in_user_namespace

DRIVER_ENV = "PYBUILD_RUN_DRIVER"
"""``auto`` (the default), ``overlay`` or ``fuse-overlayfs`` (fail rather than copy), or ``copy``."""
OPTIONS = "redirect_dir=nofollow,index=off,metacopy=off"
MAX_LOWER = 500  # the kernel's limit on lower directories (OVL_MAX_STACK)
MAX_LAYERS = MAX_LOWER - 1
"""The most layers a mount takes (the read-only view has an empty directory at the bottom)."""


@dataclass(frozen=True)
class Driver:
    """How run steps get their root filesystem here: ``overlay`` or ``copy``, and a phrase saying why."""

    name: str
    detail: str
    fuse: bool = False
    """Mounted by ``fuse-overlayfs`` rather than the kernel's overlayfs."""

    @property
    def flavor(self) -> str:
        """The snapshot flavor (opaque markers' xattr namespace) the overlay mounts read."""
        return "user" if in_user_namespace() else "trusted"


_failed: dict[str, str] = {}  # a mount that failed once in this process: why (later steps copy at once)
_lock = threading.Lock()
_private = threading.local()


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        parts = platform.release().split(".")
        return (int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)) >= (major, minor)
    except (IndexError, ValueError):
        return False


def fuse_overlayfs() -> str | None:
    """The ``fuse-overlayfs`` program, when it and ``/dev/fuse`` are there."""
    found = shutil.which("fuse-overlayfs")
    return found if found and os.path.exists("/dev/fuse") else None


def choose() -> Driver:
    """The driver run steps use in this process (see the module docstring)."""
    wanted = os.environ.get(DRIVER_ENV, "auto").strip() or "auto"
    if wanted not in ("auto", "overlay", "fuse-overlayfs", "copy"):
        raise StepError(f"{DRIVER_ENV}={wanted!r}: expected auto, overlay, fuse-overlayfs or copy")
    if wanted == "copy":
        return Driver("copy", f"{DRIVER_ENV}=copy")
    userns = in_user_namespace()
    why = ""
    if os.geteuid() != 0:
        why = "overlayfs needs root, or a rootless build re-executed in a user namespace"
    elif userns and not _kernel_at_least(5, 11):
        why = f"overlayfs in a user namespace needs Linux 5.11 or later (this is {platform.release()})"
    with _lock:
        why = why or _failed.get("mount", "")
        fuse_why = _failed.get("fuse", "")
    if wanted != "fuse-overlayfs" and not why:
        return Driver("overlay", "kernel overlayfs" + (" in a user namespace" if userns else ""))
    if wanted in ("auto", "fuse-overlayfs") and os.geteuid() == 0 and fuse_overlayfs() and not fuse_why:
        return Driver("overlay", "fuse-overlayfs" + (f": {why}" if why else ""), fuse=True)
    if wanted == "fuse-overlayfs":
        raise StepError(f"{DRIVER_ENV}=fuse-overlayfs, but " + (fuse_why or (
            "it is not installed (or /dev/fuse is missing)" if os.geteuid() == 0 else why)))
    if wanted == "overlay":
        raise StepError(f"{DRIVER_ENV}=overlay, but {why}")
    return Driver("copy", why + (f"; {fuse_why}" if fuse_why else ""))


def insisted() -> bool:
    """``PYBUILD_RUN_DRIVER`` names an overlay driver: a mount that fails fails the step."""
    return os.environ.get(DRIVER_ENV, "auto").strip() in ("overlay", "fuse-overlayfs")


def overlay_in_user_namespace() -> bool:
    """Whether a rootless build re-executed in a user namespace could use the overlay driver."""
    return os.environ.get(DRIVER_ENV, "auto").strip() != "copy" and (
        _kernel_at_least(5, 11) or fuse_overlayfs() is not None)


def overlay_failed(why: str, fuse: bool = False) -> None:
    """Remember that mounting failed (the rest of this build does not try that way again)."""
    with _lock:
        if fuse:
            _failed.setdefault("fuse", f"fuse-overlayfs could not mount: {why}")
        else:
            _failed.setdefault("mount", f"overlayfs could not be mounted: {why}")


def _private_mounts() -> None:
    """Put this thread in a mount namespace of its own, once: our mounts stay ours."""
    if getattr(_private, "done", False):
        return
    unshare(CLONE_NEWNS)
    try:
        mount(None, "/", None, MS_REC | MS_SLAVE)  # host mounts still reach us; ours never reach the host
    except OSError:
        mount(None, "/", None, MS_REC | MS_PRIVATE)
    _private.done = True


class OverlayRoot:
    """One run step's root: lower directories (bottom first), and ``work`` for upper, work and mount
    point. :meth:`mounted` mounts it; :meth:`changes` reads the step's layer from the upper directory."""

    def __init__(self, lowers: Sequence[Path], work: Path, driver: Driver,
                 announce: Callable[[], None] | None = None, check: Callable[[], str] | None = None) -> None:
        if not lowers or len(lowers) > MAX_LAYERS:
            raise ValueError(f"{len(lowers)} lower directories")
        self.announce = announce
        """Called once the overlay is mounted (the progress line naming the driver)."""
        self.check = check
        """Run on a thread of its own while the overlay is mounted (the command runs meanwhile): why
        the lower directories cannot be trusted, or "". Not "" means :class:`SnapshotDamaged` when
        the mount is left, so nothing made on them is kept."""
        self.lowers = list(lowers)
        self.work = work.absolute()  # the links made to its parts must not be relative
        self.driver = driver
        self.path = self.work / "merged"
        self.upper = self.work / "upper"
        self.opaque_xattr = f"{driver.flavor}.overlay.opaque"
        self.lower_view = self.work / "lower"
        self._tmpfs: Path | None = None
        self._before: Snapshot | None = None

    @contextlib.contextmanager
    def mounted(self) -> Iterator[Path]:
        """The merged root for the duration of the block (the command runs in it), and beside it
        the lower layers alone, read-only (what the upper directory is compared with).

        When the work directory's filesystem cannot hold an upper directory (overlayfs itself, as
        in a container, or NFS), the upper directory is on a tmpfs of this mount namespace instead,
        kept until :meth:`remove` (the layer is read from it after the command)."""
        with contextlib.ExitStack() as stack:
            try:
                merged, lower = stack.enter_context(_stack(self.work, self.lowers, self.driver, writable=True))
            except OSError as first:
                try:
                    tmpfs = self.work / "tmpfs"
                    tmpfs.mkdir(parents=True, exist_ok=True)
                    _private_mounts()
                    mount("tmpfs", str(tmpfs), "tmpfs", 0, "mode=0700")
                    self._tmpfs = tmpfs
                    merged, lower = stack.enter_context(
                        _stack(self.work, self.lowers, self.driver, writable=True, upper_base=tmpfs))
                except OSError:
                    overlay_failed(str(first), self.driver.fuse)
                    raise OverlayUnavailable(str(first)) from first
                self.upper = tmpfs / "upper"
            self.path, self.lower_view = merged, lower
            if self.announce is not None:
                self.announce()
            checked = _Checking(self.check)
            try:
                yield merged
            except Exception as exc:  # the command's failure too means nothing on a damaged tree
                why = checked.result()
                if why:
                    raise SnapshotDamaged(why) from exc
                raise
            # (an interrupt goes straight through: the check is a daemon thread)
            why = checked.result()
            if why:
                raise SnapshotDamaged(why)

    lower_view: Path

    def begin(self, excluded: Collection[str]) -> None:
        """What is in the upper directory before the command (mount points and their parents)."""
        self._before = snapshot(self.upper, excluded)

    def changes(self, excluded: Collection[str], epoch: int) -> list[Change]:
        """The command's layer, while the lower view is still mounted."""
        assert self._before is not None, "changes() before begin()"
        after = snapshot(self.upper, excluded)
        return upper_diff(self.upper, self.lower_view, self._before, after, self.opaque_xattr, epoch,
                          fuse=self.driver.fuse)

    def remove(self) -> None:
        """The upper directory and the rest of ``work`` (after the layer is written)."""
        if self._tmpfs is not None:
            with contextlib.suppress(OSError):
                umount(str(self._tmpfs), MNT_DETACH)
        shutil.rmtree(self.work, ignore_errors=True)


class ReadOnlyView:
    """A stage's filesystem for the steps that read it (``copy: from:``, ``bind: from:``): its
    snapshots mounted read-only, never a second extraction of its layers."""

    def __init__(self, lowers: Sequence[Path], work: Path, driver: Driver) -> None:
        if not lowers or len(lowers) > MAX_LAYERS:
            raise ValueError(f"{len(lowers)} lower directories")
        self.lowers, self.work, self.driver = list(lowers), work.absolute(), driver

    @contextlib.contextmanager
    def mounted(self) -> Iterator[Path]:
        with contextlib.ExitStack() as stack:
            try:
                _, lower = stack.enter_context(_stack(self.work, self.lowers, self.driver, writable=False))
            except OSError as exc:
                overlay_failed(str(exc), self.driver.fuse)
                raise OverlayUnavailable(str(exc)) from exc
            yield lower


@contextlib.contextmanager
def _stack(work: Path, lowers: Sequence[Path], driver: Driver, writable: bool,
           upper_base: Path | None = None) -> Iterator[tuple[Path, Path]]:
    """Mount ``lowers`` (bottom first) in ``work``: read-only at ``work/lower`` and, when
    ``writable``, with ``work/upper`` at ``work/merged``. Yields (merged, lower).

    The lower directories are named ``/proc/self/fd/N/I``, links to the snapshots: a mount's
    options are one page at most, and 100 layers of cache paths would not fit. An empty directory
    is the bottom of the read-only stack, which overlayfs wants two lower directories for.
    """
    # absolute: the links' targets are read from links_dir, fuse-overlayfs' from its own directory
    work, upper_base = work.absolute(), (upper_base or work).absolute()
    everything = [work / "empty", *(lower.absolute() for lower in lowers)]
    for name in ("merged", "l", "lower", "empty"):
        (work / name).mkdir(parents=True, exist_ok=True)
    for name in ("upper", "work"):
        (upper_base / name).mkdir(parents=True, exist_ok=True)
    if driver.fuse:  # a program's argv, not a page of mount options: the paths themselves
        with _fuse_stack(work, everything, upper_base, writable) as mounted_pair:
            yield mounted_pair
        return
    links_dir = work / "l"
    for old in links_dir.iterdir():  # a second attempt
        old.unlink()
    for i, lower in enumerate(everything):
        (links_dir / str(i)).symlink_to(lower)
    (links_dir / "upper").symlink_to(upper_base / "upper")
    (links_dir / "work").symlink_to(upper_base / "work")
    links = os.open(links_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fd = f"/proc/self/fd/{links}"
    extra = ",userxattr" if driver.flavor == "user" else ""
    mounted: list[str] = []
    try:
        _private_mounts()
        if writable:
            stack = ":".join(f"{fd}/{i}" for i in reversed(range(1, len(everything))))
            mount("overlay", str(work / "merged"), "overlay", 0,
                  f"lowerdir={stack},upperdir={fd}/upper,workdir={fd}/work,{OPTIONS}{extra}")
            mounted.append(str(work / "merged"))
        stack = ":".join(f"{fd}/{i}" for i in reversed(range(len(everything))))
        mount("overlay", str(work / "lower"), "overlay", MS_RDONLY,
              f"lowerdir={stack},redirect_dir=nofollow,metacopy=off{extra}")
        mounted.append(str(work / "lower"))
        yield work / "merged", work / "lower"
    finally:  # a failed mount too: what was mounted is undone
        _unmount(mounted)
        os.close(links)


def _unmount(targets: list[str]) -> None:
    for target in reversed(targets):
        with contextlib.suppress(OSError):
            umount(target, MNT_DETACH)


@contextlib.contextmanager
def _fuse_stack(work: Path, everything: Sequence[Path], upper_base: Path,
                writable: bool) -> Iterator[tuple[Path, Path]]:
    """:func:`_stack` by ``fuse-overlayfs`` (it reads the same snapshots: 0/0 whiteouts, the
    opaque xattrs): each mount is a daemon of this mount namespace, gone when it is unmounted."""
    program = fuse_overlayfs()
    if program is None:
        raise OSError(errno.ENOENT, "fuse-overlayfs is not installed")
    for path in [*everything, upper_base]:
        if any(c in str(path) for c in ":,="):
            raise OSError(errno.EINVAL, f"fuse-overlayfs cannot take the path {str(path)!r}")
    _private_mounts()
    mounted: list[str] = []

    def fuse_mount(target: Path, options: str) -> None:
        done = subprocess.run([program, "-o", options, str(target)], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, check=False, timeout=60)
        said = [line for line in (done.stderr or "").splitlines() if "unknown argument ignored" not in line]
        if done.returncode != 0:
            raise OSError(errno.EIO, f"fuse-overlayfs: {said[-1] if said else f'exit status {done.returncode}'}")
        mounted.append(str(target))

    try:
        if writable:
            stack = ":".join(str(p) for p in reversed(everything[1:]))
            fuse_mount(work / "merged", f"lowerdir={stack},upperdir={upper_base / 'upper'},"
                                        f"workdir={upper_base / 'work'}")
        fuse_mount(work / "lower", "lowerdir=" + ":".join(str(p) for p in reversed(everything)))
        yield work / "merged", work / "lower"
    finally:
        _unmount(mounted)


class OverlayUnavailable(StepError):  # noqa: N818 - a condition the caller handles, not a failure
    """The overlay could not be mounted; the step is run again on the copy driver."""


class SnapshotDamaged(OverlayUnavailable):
    """A lower directory's check failed after the command ran on it: the step runs again, on
    snapshots extracted again."""


class _Checking:
    """``check()`` on a thread started now; :meth:`result` waits for it (an error in it is its answer)."""

    def __init__(self, check: Callable[[], str] | None) -> None:
        self._why = ""
        self._thread: threading.Thread | None = None
        if check is not None:
            def run() -> None:
                try:
                    self._why = check()
                except Exception as exc:  # noqa: BLE001 - reported as the reason, on the step's thread
                    self._why = f"its check failed: {exc}"
            self._thread = threading.Thread(target=run, name="pybuild-snapshot-check", daemon=True)
            self._thread.start()

    def result(self) -> str:
        if self._thread is not None:
            self._thread.join()
        return self._why
