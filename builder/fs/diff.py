"""Two snapshots of a ``run`` step's root -> the step's layer, as a canonical change set.

The rules are those of the OCI layer changeset (image-spec ``layer.md``) and
avoid what other builders got wrong:

- an added or changed path is a full entry: a layer entry replaces the lower one (a dir's
  attributes, any other type unlinked and recreated), so a type change needs no whiteout;
- a removed path is a whiteout only when it is the topmost one removed: never below a
  removed parent, a parent that is no longer a directory (#2, #7; containerd refuses a
  whiteout under a non-directory) or a recreated one;
- a directory deleted and recreated (a new inode) is emitted with an opaque marker and all of
  its current content, or the lower children it no longer has would come back (#1);
- hardlinks are grouped by (st_dev, st_ino) among the entries of this layer only; a file
  whose partners are all in lower layers is written in full, since a layer cannot link
  outside itself (#4, #6);
- parent directories of every change are emitted (unchanged, from the after snapshot) so the
  tar never names a child before its parent (#2, #5);
- mtimes are clamped to the build epoch (README, "Reproducible").

A ``.wh.*`` name the command created is an error: it would read as a deletion (5.1 #8).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from builder.errors import InputError, StepError
from builder.fs.snapshot import Node, Snapshot, same
from builder.layer.entry import Change, Entry, Kind, Opaque, Opener, Whiteout, is_whiteout_name, parents
from builder.layer.order import canonical

_NS = 1_000_000_000
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def diff(root: Path, before: Snapshot, after: Snapshot, epoch: int) -> list[Change]:
    """The changes that turn ``before`` into ``after``, canonically ordered for the tar writer.

    ``root`` is where the files of ``after`` are: their content is read from there when the
    layer is written, not now.
    """
    old, new = before.nodes, after.nodes
    emit: set[str] = set()
    recreated: set[str] = set()
    for path, node in new.items():
        prev = old.get(path)
        if prev is None:
            emit.add(path)
        elif not same(prev, node):
            emit.add(path)
            if prev.kind is Kind.DIR and node.kind is Kind.DIR and not _same_inode(prev, node):
                recreated.add(path)

    opaque = {p for p in recreated if not any(a in recreated for a in parents(p))}
    if opaque:  # the lower content of a recreated directory is hidden: re-emit all it holds now
        emit.update(p for p in new if p not in emit and any(a in opaque for a in parents(p)))

    kept: dict[str, bool] = {}

    def is_kept(d: str) -> bool:
        """Whether directory ``d`` is the same directory before and after (so lower children stay)."""
        if d not in kept:
            a, b = old.get(d), new.get(d)
            kept[d] = (a is not None and b is not None and a.kind is Kind.DIR and b.kind is Kind.DIR
                       and _same_inode(a, b))
        return kept[d]

    whiteouts = [p for p in old if p not in new and all(is_kept(a) for a in parents(p))]
    return assemble(root, emit, whiteouts, opaque, new, epoch)


def assemble(root: Path, emit: set[str], whiteouts: list[str], opaque: set[str], new: Mapping[str, Node],
             epoch: int) -> list[Change]:
    """The layer of a decided change set: entries for ``emit`` (files read from ``root`` when the
    layer is written) and every parent they need, ``whiteouts`` and ``opaque`` markers, canonically
    ordered. Shared by the snapshot diff and the overlay upper directory's translation
    (:mod:`builder.fs.upper`), so both paths write the same bytes for the same decisions."""
    reserved = [p for p in emit if is_whiteout_name(p.rpartition("/")[2])]
    if reserved:
        path = min(reserved)  # the same one reported every time
        raise InputError(f"the command created '/{path}': a file named {path.rpartition('/')[2]!r} cannot be "
                         f"stored in an image (.wh. names mark deletions)")

    root_s = os.fspath(root)
    emit = set(emit)
    changes: list[Change] = [Whiteout(p) for p in whiteouts]
    changes.extend(Opaque(p) for p in opaque)
    changes.extend(_entries(root_s, emit, new, epoch))
    for path in [*emit, *whiteouts]:
        for parent in parents(path):
            if parent not in emit:
                dir_node = new.get(parent)
                if dir_node is None or dir_node.kind is not Kind.DIR:
                    raise StepError(f"'/{parent}' is not a directory in the snapshot of '/{path}'")
                emit.add(parent)
                changes.append(_entry(root_s, parent, dir_node, epoch))
    return canonical(changes)


def _same_inode(a: Node, b: Node) -> bool:
    return a.ino == b.ino and a.dev == b.dev


def _entries(root: str, paths: set[str], nodes: Mapping[str, Node], epoch: int) -> list[Entry]:
    """Entries for ``paths``; hardlinked non-directories grouped by inode within this set only."""
    out: list[Entry] = []
    groups: dict[tuple[int, int], list[str]] = {}
    for path in paths:
        node = nodes[path]
        if node.nlink > 1 and node.kind is not Kind.DIR:
            groups.setdefault((node.dev, node.ino), []).append(path)
        else:
            out.append(_entry(root, path, node, epoch))
    for members in groups.values():
        members.sort()
        first = members[0]
        out.append(_entry(root, first, nodes[first], epoch))
        for member in members[1:]:
            # canonical() moves the content to whichever member sorts first in the tar
            n = nodes[member]
            out.append(Entry(member, Kind.HARDLINK, n.mode, n.uid, n.gid, 0, _mtime(n, epoch), first,
                             xattrs=n.xattrs))
    return out


def _mtime(node: Node, epoch: int) -> int:
    return min(node.mtime_ns // _NS, epoch)


def _entry(root: str, path: str, n: Node, epoch: int) -> Entry:
    if n.kind is Kind.FILE:
        return Entry(path, Kind.FILE, n.mode, n.uid, n.gid, n.size, _mtime(n, epoch), xattrs=n.xattrs,
                     content=_opener(root, path, n))
    return Entry(path, n.kind, n.mode, n.uid, n.gid, 0, _mtime(n, epoch), n.link, n.rdev_major, n.rdev_minor,
                 n.xattrs)


def _opener(root: str, path: str, node: Node) -> Opener:
    """Opens ``path`` under ``root`` when the layer is written, refusing anything but the snapshotted file.

    Every component is opened with ``O_NOFOLLOW`` relative to its parent, so a symlink swapped
    in after the snapshot cannot lead outside the root; the inode, size and ctime must still
    be the snapshot's, or the layer would not be what the snapshot described.
    """

    def open_content() -> BinaryIO:
        try:
            fd = _open_beneath(root, path)
        except OSError as exc:
            raise StepError(f"cannot read '/{path}' for the layer: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            if (not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (node.dev, node.ino)
                    or st.st_size != node.size or st.st_ctime_ns != node.ctime_ns):
                raise StepError(f"'/{path}' changed after the command ended (is a process of the step still "
                                f"running?)")
        except BaseException:
            os.close(fd)
            raise
        return open(fd, "rb")

    return open_content


def _open_beneath(root: str, path: str) -> int:
    parts = path.split("/")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            sub = os.open(part, _O_DIR, dir_fd=fd)
            os.close(fd)
            fd = sub
        return os.open(parts[-1], _O_FILE, dir_fd=fd)
    finally:
        os.close(fd)
