"""Paths and globs inside an image's root, resolved as inside a chroot and never on the host: the
one resolver of the chroot rules, used on a directory that stands for an image's root (a stage's
materialised filesystem, a run step's rootfs) and on the metadata tree of lower layers.

Why not ``os.path.realpath`` or ``glob.glob(root_dir=root)``: both follow symlinks the host's way,
so a stage's ``evil -> /`` makes ``/evil/dir/n*`` list the host's ``/dir``, and the host decides
what the image gets. Here every component is looked at with ``lstat`` below ``root`` and every
symlink is resolved as the image would: an absolute target restarts at ``root``, ``..`` stops
there. A result is a canonical path relative to ``root`` ("" for the root itself) whose parents are
real directories, never links, so joining it to ``root`` names a path inside ``root``.

The root is pybuild's own build directory, not shared with a running process: a path checked here
is not swapped for a link before it is read.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Callable
from pathlib import Path

from builder.errors import InputError

MAX_LINKS = 40
"""Symlinks followed in one resolution (Linux's limit): a loop is an error, not a hang."""

_GLOB_CHARS = frozenset("*?[")


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


def resolve_chroot(path: str, readlink: Callable[[str], str | None], *, follow_last: bool = True,
                   is_dir: Callable[[str], bool] | None = None) -> str | None:
    """``path`` (absolute or relative: both mean the same) resolved under an image root.

    ``readlink(rel)`` is the link target of ``rel`` when it is a symlink, else None: the lookup
    is the caller's (a directory, a metadata tree), the rules are these. An absolute target
    restarts at the root, ``..`` stops there, at most :data:`MAX_LINKS` links are followed (a
    loop is an error, not a hang). With ``is_dir``, None when a component before the last is not
    a directory (missing included): the path cannot exist. Returns a canonical relative path.
    """
    todo = _parts(path)
    done: list[str] = []
    hops = 0
    while todo:
        name = todo.pop(0)
        if name == "..":
            if done:
                done.pop()
            continue
        here = "/".join([*done, name])
        target = readlink(here) if todo or follow_last else None
        if target is not None:
            hops += 1
            if hops > MAX_LINKS:
                raise InputError(f"too many levels of symbolic links in '/{path.lstrip('/')}'")
            if target.startswith("/"):
                done = []
            todo = _parts(target) + todo
            continue
        if todo and is_dir is not None and not is_dir(here):
            return None
        done.append(name)
    return "/".join(done)


def _disk_readlink(root: Path) -> Callable[[str], str | None]:
    def readlink(rel: str) -> str | None:
        try:
            return os.readlink(os.path.join(root, rel))
        except OSError:  # not a link, or missing: a missing component is the caller's to judge
            return None

    return readlink


def resolve_in_root(root: Path, path: str, *, follow_last: bool = True) -> str | None:
    """``path`` resolved inside the directory ``root`` (see :func:`resolve_chroot`).

    None when a component before the last is missing or not a directory (the path cannot exist);
    a missing last component is kept, so the caller can say "no such file"."""
    return resolve_chroot(path, _disk_readlink(root), follow_last=follow_last, is_dir=lambda rel: _is_dir(root, rel))


def join_in_root(root: Path, path: str, *, follow_last: bool = True) -> Path:
    """``root``/``path`` with symlinks resolved as inside a chroot: never a path outside ``root``
    (missing components are kept as they are named, for the caller to create)."""
    rel = resolve_chroot(path, _disk_readlink(root), follow_last=follow_last)
    assert rel is not None  # without is_dir, every path resolves
    return root / rel if rel else root


def glob_in_root(root: Path, pattern: str) -> list[str]:
    """What ``pattern`` matches inside ``root``, sorted by the path as matched: each match as a
    path relative to ``root`` with its parents resolved but not the match itself (a link stays a
    link: :func:`resolve_in_root` follows it).

    ``*``, ``?`` and ``[...]`` match within one component, as ``glob.glob`` with ``include_hidden``
    does (``*`` matches dot files; ``**`` is ``*``); a component without them must exist. Only
    directories below ``root`` are listed: a link on the way is resolved first, inside ``root``."""
    parts = _parts(pattern)
    found: list[tuple[str, str]] = [("", "")]  # (matched so far, resolved so far)
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        step: list[tuple[str, str]] = []
        for shown, real in found:
            if _GLOB_CHARS & set(part):
                try:
                    with os.scandir(os.path.join(root, real)) as it:  # a directory (checked below)
                        names = sorted(de.name for de in it if fnmatch.fnmatchcase(de.name, part))
                except OSError as exc:
                    raise InputError(f"cannot list '/{real}': {exc.strerror}") from None
            else:
                names = [part]
            for name in names:
                here = f"{real}/{name}" if real else name
                match = resolve_in_root(root, here, follow_last=not last)
                if last:
                    if match is None or not os.path.lexists(os.path.join(root, match)):
                        continue
                elif match is None or not _is_dir(root, match):
                    continue
                step.append((f"{shown}/{name}" if shown else name, match))
        found = step
    return [match for _, match in sorted(found)]


def _is_dir(root: Path, rel: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(os.path.join(root, rel)).st_mode)
    except OSError:
        return False


def in_context(context: Path, path: str | Path, shown: str) -> Path:
    """``path`` of the build context (relative to it, or under it) with symlinks followed on the host,
    as Docker's COPY follows a source that is a link: the real path, which must stay inside the
    context. ``shown`` names the path in the error. (Paths *inside* an image resolve with the
    chroot rules above instead.)"""
    root = context.resolve()
    real = Path(os.path.realpath(root / path))
    if real != root and root not in real.parents:
        raise InputError(f"{shown} leads outside the build context (to {str(real)!r})")
    return real
