"""The snapshot store: each layer extracted once, alone, kept under its diff_id for overlay mounts.

A run step on the overlay driver (:mod:`builder.fs.overlay`) mounts the snapshots of the layers
below it as overlayfs lower directories, so the cost of a step is the size of its change, not of
its base: the base's 120 MB are extracted by the first build that needs them and by no later one.

Layout, under the cache directory::

    snapshots/FLAVOR/HEX.lock     flock: shared while a build uses HEX, exclusive to make or remove it
    snapshots/FLAVOR/HEX/fs/      the layer's tree (whiteouts as 0/0 character devices)
    snapshots/FLAVOR/HEX/snapshot.json   written last: format, diff_id, whether overlay may use it
    snapshots/FLAVOR/.tmp-HEX-PID/       an extraction in progress (or left by a killed build)

FLAVOR is the xattr namespace of the opaque markers: ``trusted`` (kernel overlayfs as root) or
``user`` (overlayfs in a user namespace, mounted ``userxattr``); a tree of one is wrong for the other.

A snapshot is used only when its marker says it is complete and of this format, and its tree still
has the metadata fingerprint the marker recorded (checked once per process; a run step checks
while its command runs, and nothing made on a snapshot that fails is kept): an extraction is
made in a temp directory with the hostile-entry containment of :mod:`builder.fs.apply` (digest and
diff_id checked on every byte), flushed to disk, marked, and renamed into place, so a kill at any
point leaves either no snapshot or a whole one; what a killed build left is removed by the next
one that takes the lock. Builds hold a shared lock on each snapshot they mount, and pruning
removes only what it can lock exclusively, so a snapshot is never taken from under a running step.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from builder.errors import OutputError
from builder.fs.apply import OverlayForm, apply_blob
from builder.fs.syscalls import syncfs
from builder.image import LayerBlob
from builder.oci.digest import Digest

FORMAT = 2
"""Bump when the form of a tree changes: older snapshots are then rebuilt, never misread."""
MARKER = "snapshot.json"


@dataclass(frozen=True)
class LayerSnapshot:
    """One layer's extracted tree; ``unsafe`` says why overlayfs may not mount it ("" if it may)."""

    diff_id: Digest
    path: Path
    unsafe: str = ""
    tree: str = ""
    """The fingerprint its marker recorded (:func:`fingerprint`): what :meth:`SnapshotSession.damaged` compares."""


class SnapshotStore:
    """``CACHE/snapshots/FLAVOR``: take snapshots with :meth:`using`, which holds their locks."""

    def __init__(self, root: Path, flavor: str) -> None:
        if flavor not in ("trusted", "user"):
            raise ValueError(flavor)
        self.root = root / flavor
        self.flavor = flavor

    @contextlib.contextmanager
    def using(self) -> Iterator[SnapshotSession]:
        """A session whose snapshots stay (shared locks) until the block ends."""
        session = SnapshotSession(self)
        try:
            yield session
        finally:
            session.close()

    def _read_marker(self, hex_: str, verify: bool = False) -> LayerSnapshot | None:
        """The snapshot named ``hex_`` if its marker says it is complete and of this format; with
        ``verify``, only if its tree is also still the one the marker describes (see :func:`fingerprint`)."""
        directory = self.root / hex_
        try:
            with open(directory / MARKER, "rb") as f:
                marker = json.loads(f.read(1 << 16))
        except (OSError, ValueError):
            return None
        if (not isinstance(marker, dict) or marker.get("format") != FORMAT
                or str(marker.get("diff_id")).partition(":")[2] != hex_
                or marker.get("xattrs") != self.flavor or not (directory / "fs").is_dir()):
            return None
        if verify and not _verified(directory / "fs", str(marker.get("tree"))):
            return None
        unsafe = marker.get("unsafe")
        return LayerSnapshot(Digest.parse(marker["diff_id"]), directory / "fs", unsafe if isinstance(unsafe, str) else "",
                             str(marker.get("tree")))

    def extract(self, blob: LayerBlob, hex_: str, on_progress: Callable[[int], None] | None) -> LayerSnapshot:
        """Make the snapshot of ``blob`` (the caller holds its exclusive lock)."""
        self._remove_leftovers(hex_)
        tmp = self.root / f".tmp-{hex_}-{os.getpid()}"
        try:
            (tmp / "fs").mkdir(parents=True)
            form = OverlayForm(self.flavor)
            apply_blob(tmp / "fs", blob, on_progress, overlay=form)
            _syncfs(tmp)  # the tree is on disk before a marker can say it is complete
            tree = fingerprint(tmp / "fs")
            marker = {"format": FORMAT, "diff_id": str(blob.diff_id), "xattrs": self.flavor, "unsafe": form.unsafe,
                      "tree": tree}
            with open(tmp / MARKER, "x") as f:
                json.dump(marker, f)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, self.root / hex_)
            _fsync_dir(self.root)
            _remember(self.root / hex_ / "fs", tree)
        except BaseException:
            _remove(tmp)
            raise
        return LayerSnapshot(blob.diff_id, self.root / hex_ / "fs", form.unsafe, tree)

    def _remove_leftovers(self, hex_: str) -> None:
        """A snapshot without a valid marker, and extractions of killed builds (we hold the lock)."""
        for path in self.root.glob(f".tmp-{hex_}-*"):
            _remove(path)
        if (self.root / hex_).exists():
            _remove(self.root / hex_)

    def prune(self, remove: Callable[[str, float], bool]) -> tuple[int, int]:
        """Remove each snapshot for which ``remove(hex diff_id, last used)`` is true and no build
        uses now, and every incomplete one. Returns (snapshots removed, bytes freed)."""
        removed = freed = 0
        if not self.root.is_dir():
            return 0, 0
        locks = {p.name.removesuffix(".lock") for p in self.root.glob("*.lock")}
        orphans = {p.name.split("-")[1] for p in self.root.glob(".tmp-*-*")}
        orphans |= {p.name for p in self.root.iterdir() if not p.name.startswith(".") and p.is_dir()}
        for hex_ in sorted(locks | orphans):
            lock = self.root / f"{hex_}.lock"
            try:
                used = lock.stat().st_mtime
            except OSError:
                used = 0.0
            if self._read_marker(hex_) is not None and not remove(hex_, used):
                continue
            fd = _open_lock(lock)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # in use
                size = _tree_size(self.root / hex_)
                try:
                    self._remove_leftovers(hex_)
                except OSError:
                    continue  # files of a rootless build's namespace ids: pybuild there can remove them
                with contextlib.suppress(OSError):
                    lock.unlink()
                removed, freed = removed + 1, freed + size
            finally:
                os.close(fd)
        return removed, freed

    def usage(self) -> tuple[int, int]:
        """(complete snapshots, bytes) in the store."""
        if not self.root.is_dir():
            return 0, 0
        hexes = [p.name for p in self.root.iterdir() if not p.name.startswith(".") and p.is_dir()]
        return len(hexes), sum(_tree_size(self.root / h) for h in hexes)


class SnapshotSession:
    """The snapshots one run step mounts, each locked shared until :meth:`close`."""

    def __init__(self, store: SnapshotStore) -> None:
        self.store = store
        self._locks: dict[str, int] = {}
        self.extracted = 0
        """How many snapshots this session had to make (the rest were in the store)..."""
        self.extracted_bytes = 0
        """... and their layers' uncompressed size."""

    def get(self, blob: LayerBlob, on_progress: Callable[[int], None] | None = None, *,
            verify: bool = True) -> LayerSnapshot:
        """The snapshot of ``blob``, made now if the store has no complete one.

        Without ``verify``, a complete snapshot is returned without walking its tree: the caller
        must check it (:meth:`damaged`) before it trusts anything made on it (a run step checks
        while its command runs, and runs again if the check fails)."""
        hex_ = blob.diff_id.hex
        store = self.store
        if hex_ in self._locks:
            found = store._read_marker(hex_)
            if found is not None:
                return found
        try:
            store.root.mkdir(parents=True, exist_ok=True)
            fd = self._lock(hex_)
            os.utime(fd)  # its last use, for pruning
            while True:
                fcntl.flock(fd, fcntl.LOCK_SH)
                found = store._read_marker(hex_, verify=verify)
                if found is not None:
                    return found
                fcntl.flock(fd, fcntl.LOCK_EX)
                found = store._read_marker(hex_, verify=True)
                if found is None:
                    found = store.extract(blob, hex_, on_progress)
                    self.extracted += 1
                    self.extracted_bytes += blob.uncompressed_size or 0
                fcntl.flock(fd, fcntl.LOCK_SH)  # not atomic: a pruner may have come between, so look again
                if store._read_marker(hex_) is not None:
                    return found
        except OSError as exc:
            raise OutputError(f"snapshot store {str(store.root)!r}: {exc.strerror or exc}") from exc

    def peek(self, blob: LayerBlob) -> LayerSnapshot | None:
        """The complete snapshot of ``blob`` if the store has one (locked shared like :meth:`get`),
        else None: never extracts."""
        hex_ = blob.diff_id.hex
        if self.store._read_marker(hex_) is None or not (self.store.root / f"{hex_}.lock").exists():
            return None
        try:
            fcntl.flock(self._lock(hex_), fcntl.LOCK_SH)
        except OSError:
            return None
        return self.store._read_marker(hex_, verify=True)

    def _lock(self, hex_: str) -> int:
        """This session's descriptor of snapshot ``hex_``'s lock file (opened, and created, once)."""
        fd = self._locks.get(hex_)
        if fd is None:
            fd = self._locks[hex_] = _open_lock(self.store.root / f"{hex_}.lock")
        return fd

    def damaged(self, snaps: list[LayerSnapshot]) -> str:
        """Check each of ``snaps`` against the fingerprint its marker recorded (walked once per
        process and snapshot: free for one this process made or checked already), :meth:`discard`
        those that fail, and say which they were ("" if none). Called on a thread of its own while
        the step's command runs: nothing else uses the session then."""
        bad = [snap for snap in snaps if not _verified(snap.path, snap.tree)]
        for snap in bad:
            self.discard(snap)
        return "".join(f"the snapshot of layer {snap.diff_id.short} changed after it was extracted; " for snap in bad
                       ).removesuffix("; ")

    def discard(self, snap: LayerSnapshot) -> None:
        """``snap`` failed its check: its marker goes, so every later :meth:`get` (this
        session's too) extracts the layer again, and this session's lock on it is released so that
        it can. Safe under a shared lock: builds that mounted the tree already keep their mounts, and
        the tree itself is removed only by the next extraction, under the exclusive lock."""
        hex_ = snap.diff_id.hex
        with contextlib.suppress(OSError):
            (self.store.root / hex_ / MARKER).unlink()
        fd = self._locks.pop(hex_, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for fd in self._locks.values():
            os.close(fd)
        self._locks.clear()


def fingerprint(tree: Path) -> str:
    """sha256 over every entry's name, type and mode, owner, size, mtime, ctime and device numbers,
    in sorted order, never following a symlink: any change to the tree after extraction (a write,
    a truncation, a chmod, a deletion, an added file) changes some entry's ctime or the listing, so
    a snapshot whose tree no longer has its marker's fingerprint is rebuilt, never mounted. A walk
    of metadata only: 35 ms for the 6,700 entries of a Debian base."""
    digest = hashlib.sha256()
    stack = [(os.fspath(tree), "")]
    while stack:
        top, prefix = stack.pop()
        with os.scandir(top) as it:
            entries = sorted(it, key=lambda de: de.name)
        for de in entries:
            st = de.stat(follow_symlinks=False)
            rel = prefix + de.name
            digest.update(f"{rel}\0{st.st_mode}\0{st.st_uid}\0{st.st_gid}\0{st.st_size}\0{st.st_mtime_ns}\0"
                          f"{st.st_ctime_ns}\0{st.st_rdev}\n".encode("utf-8", "surrogateescape"))
            if stat.S_ISDIR(st.st_mode):
                stack.append((de.path, rel + "/"))
    return digest.hexdigest()


_checked: set[tuple[str, str]] = set()  # (tree, fingerprint) verified by this process
_checked_lock = threading.Lock()


def _remember(tree: Path, value: str) -> None:
    with _checked_lock:
        _checked.add((os.fspath(tree), value))


def _verified(tree: Path, value: str) -> bool:
    """Whether ``tree`` still has fingerprint ``value`` (walked once per process and snapshot)."""
    key = (os.fspath(tree), value)
    with _checked_lock:
        if key in _checked:
            return True
    try:
        ok = fingerprint(tree) == value
    except OSError:
        return False
    if ok:
        _remember(tree, value)
    return ok


def _open_lock(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _remove(path: Path) -> None:
    """Remove a tree (directories stay writable by their owner: :mod:`builder.fs.apply` keeps them so
    when not root)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _tree_size(path: Path) -> int:
    total = 0
    for top, dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(top, name)).st_blocks * 512
        total += len(dirs) * 4096
    return total


def _syncfs(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        syncfs(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

