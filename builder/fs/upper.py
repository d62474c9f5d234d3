"""An overlay upper directory -> a run step's layer, the same bytes the snapshot diff writes.

The upper directory of an overlayfs mount holds what the command changed, in overlayfs' own
form: a deleted lower path is a 0/0 character device (a whiteout), a directory whose lower
content is hidden carries ``NS.overlay.opaque=y``, and a lower file or directory the command
only touched is there too, copied up whole. The translation to OCI keeps the rules of
:mod:`builder.fs.diff` (it ends in the same :func:`~builder.fs.diff.assemble`):

- a whiteout is a ``.wh.`` entry when the lower layers have the path;
- an opaque directory is an opaque marker when the lower layers have a directory there (over a
  file, or over nothing, there is nothing to hide), and all it holds now is emitted;
- any other path in the upper directory is a change, as any path whose ctime moved is one to the
  snapshot diff (a ``chmod -R`` that changes no mode still writes every file it touched), except
  a directory with the lower layers' mode, owner, mtime and xattrs: overlayfs copies up every
  parent of a change, so it is emitted as a parent of a change, as the snapshot diff emits it;
- what pybuild itself made in the upper directory before the command (mount points, and the
  parents they were made in) is no change unless the command changed it afterwards;
- overlayfs' xattrs never reach a layer (:func:`builder.layer.xattrs.read_xattrs` leaves them out).

Where the two drivers differ, on changes that change nothing in the image's filesystem: a file
opened for writing and closed unwritten is copied up, so it is in this driver's layer and not in
the snapshot diff's; a directory whose only change is a no-op ``chmod``/``chown`` (its ctime) is
in the snapshot diff's layer and, unless something below it changed, not in this one's.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from builder.fs.diff import assemble
from builder.fs.snapshot import Node, Snapshot, same
from builder.layer.entry import Change, Kind, parents
from builder.layer.xattrs import read_xattrs


def is_whiteout(node: Node) -> bool:
    return node.kind is Kind.CHAR and node.rdev_major == 0 and node.rdev_minor == 0


FUSE_OPAQUE = ("user.fuseoverlayfs.opaque", "trusted.overlay.opaque", "user.overlay.opaque")


def upper_diff(upper: Path, lower: Path, before: Snapshot, after: Snapshot, opaque_xattr: str,
               epoch: int, fuse: bool = False) -> list[Change]:
    """The layer of a command that ran on an overlay: ``after`` is the upper directory when it
    ended, ``before`` what was in it when it started, ``lower`` the lower layers merged.

    ``fuse``: the upper directory of ``fuse-overlayfs``, which also marks an opaque directory with
    a ``.wh..wh..opq`` file (and a ``.wh..opq`` device), writes a whiteout as a ``.wh.NAME`` file
    where it cannot make a device, and has opaque xattrs of its own."""
    up, low = os.fspath(upper), os.fspath(lower)
    new = dict(after.nodes)
    whiteouts: list[str] = []
    opaque: set[str] = set()
    marked: set[str] = set()  # fuse-overlayfs' opaque marker files: their directories
    if fuse:
        for path in [p for p in new if p.rpartition("/")[2].startswith(".wh.")]:
            head, _, name = path.rpartition("/")
            del new[path]
            if name == ".wh..wh..opq":
                marked.add(head)
            elif name != ".wh..opq":
                target = f"{head}/{name[4:]}".lstrip("/")
                if _lstat(low, target) is not None and target not in new:
                    whiteouts.append(target)
    names = FUSE_OPAQUE if fuse else (opaque_xattr,)
    for path, node in new.items():
        if is_whiteout(node):
            if _lstat(low, path) is not None:
                whiteouts.append(path)
        elif node.kind is Kind.DIR and (path in marked or any(_is_opaque(up, path, n) for n in names)):
            below = _lstat(low, path)
            if below is not None and stat.S_ISDIR(below.st_mode):
                opaque.add(path)
    opaque = {p for p in opaque if not any(a in opaque for a in parents(p))}
    emit: set[str] = set()
    for path, node in new.items():
        if is_whiteout(node):
            continue
        if path in opaque or any(a in opaque for a in parents(path)):
            emit.add(path)  # the lower content is hidden: all of it now is the layer's
            continue
        was = before.get(path)
        if was is not None:
            if not same(was, node):
                emit.add(path)
        elif node.kind is not Kind.DIR or not _same_directory(low, path, node):
            emit.add(path)
    whiteouts = [p for p in whiteouts if not any(a in opaque for a in parents(p))]
    nodes = {p: n for p, n in new.items() if not is_whiteout(n)}
    emit &= nodes.keys()
    return assemble(upper, emit, whiteouts, opaque, nodes, epoch)


def _lstat(root: str, path: str) -> os.stat_result | None:
    """``path`` in the lower layers, never through a symlink: a path exists there only below real
    directories (an image's ``a -> /etc`` must not make ``a/passwd`` the host's)."""
    here = root
    parts = path.split("/")
    try:
        for part in parts[:-1]:
            here = os.path.join(here, part)
            if not stat.S_ISDIR(os.lstat(here).st_mode):
                return None
        return os.lstat(os.path.join(here, parts[-1]))
    except (FileNotFoundError, NotADirectoryError):
        return None


def _is_opaque(root: str, path: str, name: str) -> bool:
    try:
        return os.getxattr(os.path.join(root, path), name, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _same_directory(low: str, path: str, node: Node) -> bool:
    """Whether directory ``path`` of the upper directory has the lower layers' attributes (overlayfs
    copied it up as the parent of a change, and the command did not change it)."""
    below = _lstat(low, path)
    return (below is not None and stat.S_ISDIR(below.st_mode)
            and (below.st_mode & 0o7777, below.st_uid, below.st_gid, below.st_mtime_ns)
            == (node.mode, node.uid, node.gid, node.mtime_ns)
            and read_xattrs(os.path.join(low, path)) == node.xattrs)
