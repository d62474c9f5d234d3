"""The merged metadata of an image's filesystem so far (what the lower layers add up to).

File steps need it to emit parent directories with their existing owner and mode (so
writing ``/tmp/x`` never resets ``/tmp`` to 0755), to follow symlinks in destination paths,
to know what a ``remove`` deletes, and to read ``/etc/passwd`` and ``/etc/group`` for owner
names. Only metadata is kept, plus the content of those two small files.
"""

from __future__ import annotations

from collections.abc import Iterable

from builder.fs.safepath import resolve_chroot
from builder.layer.entry import Change, Entry, Kind, Opaque, Whiteout

WATCHED = frozenset({"etc/passwd", "etc/group"})


class FsTree:
    """Path -> Entry (no content) for every path of the merged lower layers."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._children: dict[str, set[str]] = {"": set()}
        self.watched: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, path: str) -> Entry | None:
        """The entry at canonical ``path`` (no symlink following); the root is a dir."""
        if path == "":
            return Entry("", Kind.DIR, 0o755)
        return self._entries.get(path)

    def is_dir(self, path: str) -> bool:
        e = self.get(path)
        return e is not None and e.kind is Kind.DIR

    def children(self, path: str) -> list[str]:
        return sorted(self._children.get(path, ()))

    def _remove(self, path: str) -> None:
        for child in list(self._children.get(path, ())):
            self._remove(f"{path}/{child}" if path else child)
        self._children.pop(path, None)
        if path in self._entries:
            del self._entries[path]
            head, _, base = path.rpartition("/")
            self._children.get(head, set()).discard(base)
        self.watched.pop(path, None)

    def _set(self, entry: Entry) -> None:
        old = self._entries.get(entry.path)
        if old is not None and (old.kind is not Kind.DIR or entry.kind is not Kind.DIR):
            self._remove(entry.path)
        head, _, base = entry.path.rpartition("/")
        parent = head
        while parent not in self._children:  # a layer may omit parent dirs; keep the tree whole
            self._entries.setdefault(parent, Entry(parent, Kind.DIR, 0o755))
            self._children[parent] = set()
            grand, _, name = parent.rpartition("/")
            self._children.setdefault(grand, set()).add(name)
            parent = grand
        self._children[head].add(base)
        meta = entry.meta()
        if entry.kind is Kind.HARDLINK:
            target = self._entries.get(entry.link)
            if target is not None:
                meta = Entry(entry.path, target.kind, target.mode, target.uid, target.gid, target.size,
                             target.mtime, target.link, target.devmajor, target.devminor, target.xattrs)
        self._entries[entry.path] = meta
        if entry.kind is Kind.DIR:
            self._children.setdefault(entry.path, set())

    def apply(self, changes: Iterable[Change]) -> None:
        """Apply one layer: deletions (opaque first) hide lower paths, then entries are set."""
        adds: list[Entry] = []
        for change in changes:
            if isinstance(change, Opaque):
                for child in self.children(change.path):
                    self._remove(f"{change.path}/{child}" if change.path else child)
            elif isinstance(change, Whiteout):
                self._remove(change.path)
            else:
                adds.append(change)
        for entry in adds:
            if entry.path:
                self._set(entry)

    def capture(self, path: str, content: bytes) -> None:
        """Remember the content of a watched file (``/etc/passwd``, ``/etc/group``)."""
        if path in WATCHED:
            self.watched[path] = content

    def resolve(self, path: str, follow_last: bool = True) -> str:
        """Resolve symlinks in canonical ``path`` as the image would, confined to its root (the
        chroot rules of :func:`builder.fs.safepath.resolve_chroot`, over this tree's entries)."""

        def readlink(rel: str) -> str | None:
            entry = self._entries.get(rel)
            return entry.link if entry is not None and entry.kind is Kind.SYMLINK else None

        resolved = resolve_chroot(path, readlink, follow_last=follow_last)
        assert resolved is not None  # without is_dir, every path resolves
        return resolved
