"""The canonical order of a change set, and hardlink groups that respect it.

Order (image-spec layer.md, and what runtimes need to apply a layer in one pass): a directory, then its opaque marker, then its
whiteouts, then its other children, each level compared as bytes; so parents always come
before children and whiteouts before their siblings. A hardlink must follow the entry it
links to, so within each hardlink group the member that sorts first carries the content
and the others link to it, whatever the input said.
"""

from __future__ import annotations

from collections.abc import Iterable

from builder.errors import InputError
from builder.layer.entry import Change, Entry, Kind, Opaque, Whiteout


def sort_key(change: Change) -> bytes:
    """Key placing a change at its canonical position.

    The path as bytes with each ``/`` (and the start) turned into NUL plus a rank: 0 for an
    opaque marker, 1 for a whiteout, 2 for anything else. NUL sorts below every byte a name can
    hold, so comparing keys compares paths component by component, and within one directory an
    opaque marker comes first, then whiteouts, then the other children, each in byte order.
    """
    path = change.path
    if isinstance(change, Opaque):
        body = ("/" + path).replace("/", "\0\2") if path else ""
        return (body + "\0\0").encode("utf-8", "surrogateescape")
    head, _, last = path.rpartition("/")
    body = ("/" + head).replace("/", "\0\2") if head else ""
    rank = "\0\1" if isinstance(change, Whiteout) else "\0\2"
    return (body + rank + last).encode("utf-8", "surrogateescape")


def canonical(changes: Iterable[Change]) -> list[Change]:
    """Sort a change set canonically; reject duplicates; re-root hardlink groups."""
    ordered = sorted(changes, key=sort_key)
    seen: set[tuple[bool, str]] = set()
    for change in ordered:
        tag = (change.__class__ is Opaque, change.path)
        if tag in seen:
            raise InputError(f"two entries for one path in a layer: '/{change.path}'")
        seen.add(tag)
    return _reroot_hardlinks(ordered)


def _reroot_hardlinks(ordered: list[Change]) -> list[Change]:
    links = [c for c in ordered if isinstance(c, Entry) and c.kind is Kind.HARDLINK]
    if not links:
        return ordered
    by_path = {c.path: c for c in ordered if isinstance(c, Entry)}
    groups: dict[str, list[str]] = {}
    for c in links:
        root = c.link
        seen = {c.path}
        while (t := by_path.get(root)) is not None and t.kind is Kind.HARDLINK and root not in seen:
            seen.add(root)
            root = t.link
        groups.setdefault(root, []).append(c.path)
    if not groups:
        return ordered
    replace: dict[str, Entry] = {}
    for root, members in groups.items():
        target = by_path.get(root)
        if target is None or target.kind is Kind.HARDLINK:
            continue  # the writer reports the dangling link with its name
        first = min([root, *members], key=lambda p: sort_key(by_path[p]))
        if first == root:
            for m in members:
                if by_path[m].link != root:
                    replace[m] = _link(by_path[m], root)
            continue
        replace[first] = _retarget(target, first)
        for m in [root, *members]:
            if m != first:
                replace[m] = _link(by_path[m], first)
    return [replace.get(c.path, c) if isinstance(c, Entry) else c for c in ordered]


def _link(entry: Entry, target: str) -> Entry:
    return Entry(entry.path, Kind.HARDLINK, entry.mode, entry.uid, entry.gid, 0, entry.mtime, target,
                 xattrs=entry.xattrs)


def _retarget(target: Entry, path: str) -> Entry:
    return Entry(path, target.kind, target.mode, target.uid, target.gid, target.size, target.mtime,
                 target.link, target.devmajor, target.devminor, target.xattrs, target.content)
