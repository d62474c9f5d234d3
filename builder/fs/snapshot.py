"""A metadata snapshot of a working root, taken before and after a ``run`` command.

A ``run`` step has no other record of what its command did than the filesystem itself, so
pybuild walks the root before and after and compares the two walks (as kaniko's full
snapshot mode and umoci's mtree-based ``repack`` do); :mod:`builder.fs.diff` turns the
comparison into a layer. The walk records metadata only, never content: a content rewrite
is caught by ``ctime``, which every write, truncate, chmod, chown, link and rename updates
and no user call can set back (``utime`` can restore ``mtime``, not ``ctime``).

Symlinks are never followed (``lstat``, ``readlink``, ``l*xattr``), so the walk cannot leave
the root through a link the command created. Sockets are skipped: an image cannot hold them.
"""

from __future__ import annotations

import operator
import os
import stat
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from builder.errors import StepError
from builder.layer.entry import Kind, canon
from builder.layer.xattrs import read_xattrs

_KINDS = {
    stat.S_IFREG: Kind.FILE,
    stat.S_IFDIR: Kind.DIR,
    stat.S_IFLNK: Kind.SYMLINK,
    stat.S_IFCHR: Kind.CHAR,
    stat.S_IFBLK: Kind.BLOCK,
    stat.S_IFIFO: Kind.FIFO,
}


#: How long :func:`snapshot` waits at most for the clock to pass the newest ctime it saw.
_MAX_SETTLE_NS = 100_000_000
#: The clock file timestamps come from (linux/time.h); Python's time module does not name it.
_CLOCK_REALTIME_COARSE = 5


class Node(NamedTuple):
    """What the snapshot knows about one path (a tuple: cheap to build for every file).

    ``mode`` is the permission bits only (07777); ``dev``/``ino`` identify the inode (hardlink
    groups, replaced files); ``link`` is a symlink's target; ``rdev_*`` a device's numbers.
    """

    kind: Kind
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int
    dev: int
    ino: int
    nlink: int
    link: str
    rdev_major: int
    rdev_minor: int
    xattrs: tuple[tuple[str, bytes], ...]


#: The keywords two snapshots of one path are compared on (cf. umoci's ``MtreeKeywords``).
#: ``ctime_ns`` catches a rewrite that keeps size and mtime; ``dev``+``ino`` a file replaced
#: by another (``sed -i``, ``mv``) or a directory deleted and recreated. ``nlink`` is left
#: out on purpose: linking or unlinking changes ``ctime`` already, and the count itself is not
#: something a layer records. Changing this set changes which layers pybuild produces.
COMPARED_KEYWORDS: tuple[str, ...] = (
    "kind", "mode", "uid", "gid", "size", "mtime_ns", "ctime_ns", "dev", "ino",
    "link", "rdev_major", "rdev_minor", "xattrs",
)  # fmt: skip

_COMPARED = operator.itemgetter(*(Node._fields.index(k) for k in COMPARED_KEYWORDS))


def same(a: Node, b: Node) -> bool:
    """True when ``a`` and ``b`` agree on every compared keyword (the path is unchanged)."""
    return bool(_COMPARED(a) == _COMPARED(b))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Canonical relative path -> :class:`Node` for every path below a root.

    The root itself is not recorded: a layer has no entry for it, so a ``chmod`` of ``/`` by
    the command cannot be kept either way.
    """

    nodes: Mapping[str, Node]

    def __len__(self) -> int:
        return len(self.nodes)

    def __contains__(self, path: object) -> bool:
        return path in self.nodes

    def get(self, path: str) -> Node | None:
        return self.nodes.get(path)

    def __iter__(self) -> Iterator[str]:
        return iter(self.nodes)


def snapshot(root: Path, exclude: Collection[str] = ()) -> Snapshot:
    """Walk ``root`` without following symlinks and record every path's :class:`Node`.

    ``exclude`` holds image paths (``proc``, ``run/secrets``) whose whole subtree, the path
    included, is not looked at: mount points and other things that are never image content.

    Before returning, waits (at most 0.1 s, usually not at all) until the kernel's coarse
    clock has passed the newest ctime seen: a change made later in the same clock tick would
    otherwise get the very same ctime and a same-size, same-mtime rewrite would go unseen
    (git's "racy clean" problem).
    """
    skip = {canon(p) for p in exclude}
    nodes: dict[str, Node] = {}
    try:
        newest = _walk(os.fspath(root), skip, nodes)
    except OSError as exc:  # a path beyond PATH_MAX (an image can hold one, apply makes it): an error, not a crash
        rel = os.path.relpath(exc.filename, root) if isinstance(exc.filename, str) else "?"
        shown = rel if len(rel) <= 200 else f"{rel[:100]}...{rel[-60:]}"
        raise StepError(f"cannot snapshot the working root filesystem at '/{shown}': {exc.strerror}") from exc
    _settle(newest)
    return Snapshot(nodes)


def _walk(root: str, skip: set[str], nodes: dict[str, Node]) -> int:
    """Fill ``nodes`` with everything below ``root``; returns the newest ctime seen."""
    newest = 0
    kinds, s_ifmt, new_node, xattrs = _KINDS, stat.S_IFMT, Node, read_xattrs  # locals: this loop is hot
    stack: list[tuple[str, str]] = [(root, "")]
    while stack:
        top, prefix = stack.pop()
        with os.scandir(top) as it:
            for de in it:
                rel = prefix + de.name
                if rel in skip:
                    continue
                st = de.stat(follow_symlinks=False)
                kind = kinds.get(s_ifmt(st.st_mode))
                if kind is None:
                    continue  # a socket
                path = de.path
                ctime = st.st_ctime_ns
                link, major, minor = "", 0, 0
                if kind is Kind.SYMLINK:
                    link = os.readlink(path)
                elif kind is Kind.CHAR or kind is Kind.BLOCK:
                    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
                nodes[rel] = new_node(kind, st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
                                      ctime, st.st_dev, st.st_ino, st.st_nlink, link, major, minor, xattrs(path))
                newest = max(newest, ctime)
                if kind is Kind.DIR:
                    stack.append((path, rel + "/"))
    return newest


def _settle(newest_ctime_ns: int) -> None:
    deadline = time.monotonic_ns() + _MAX_SETTLE_NS
    while time.clock_gettime_ns(_CLOCK_REALTIME_COARSE) <= newest_ctime_ns and time.monotonic_ns() < deadline:
        time.sleep(0.001)
