"""``copy``: files from the build context into the image, with Docker COPY's destination rules.

Sources are relative to the context and never leave it: a source that resolves (through
``..`` or a symlink) outside the context is refused. Inside a copied directory, symlinks are
copied as links, never followed, so they cannot pull host files in. Times are the build
epoch. Modes are the file's own permission bits, setuid/setgid/sticky included (as Docker's
COPY keeps them), with only the group and other *write* bits cleared (:data:`_UMASK_BITS`):
a 0600 key stays 0600 and is never made readable, while a checkout made under umask 002
(0664/0775) gives the same image as one under 022 (0644/0755). ``mode`` overrides. Hardlinked
files stay hardlinked.

A copy ``from:`` a stage reads that stage's materialised filesystem: sources are resolved and
globbed inside it as in a chroot (:mod:`builder.fs.safepath`), and everything is kept as it is
there (owners, modes, devices), since it is image content already.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import InputError
from builder.fs.patterns import Excluder, read_ignore_file
from builder.fs.safepath import glob_in_root, in_context, resolve_in_root
from builder.layer.entry import WH_PREFIX, Change, Entry, Kind
from builder.layer.hostfile import HostFile
from builder.layer.xattrs import read_xattrs
from builder.oci.digest import Digest, sha256_file
from builder.recipe.model import CopyStep
from builder.steps.base import Changes, FileHandler, Lower, Scope, StepContext, StepPlan, file_context, finish

_GLOB_CHARS = set("*?[")
_UMASK_BITS = 0o022
"""Cleared from context modes: what umask 002 adds over 022 (group write), and other write, which
no checkout means to hand to every user of the image."""


def _sources(step: CopyStep, context: Path, ignore: tuple[str, Excluder] | None = None) -> list[tuple[str, Path]]:
    """(name, resolved path) of each source: a source that is a symlink is its target's content
    under the link's own name, as Docker's COPY gives it (``link.txt -> target.txt`` copied to
    ``/dir/`` is ``/dir/link.txt``). A source the context's ignore file excludes is an error, as
    Docker refuses a COPY of a ``.dockerignore``d path; a glob simply does not match it."""
    root = context.resolve()
    found: list[tuple[str, Path]] = []
    unmatched = []
    for src in step.sources:
        if _GLOB_CHARS & set(src):
            matches = sorted(glob.glob(src, root_dir=root, include_hidden=True))
            if ignore is not None:
                matches = [m for m in matches if not ignore[1].excluded(os.path.normpath(m))]
            unmatched += [] if matches else [src]
            candidates = [root / m for m in matches]
        else:
            rel = os.path.normpath(src).lstrip("/")
            if ignore is not None and rel != "." and ignore[1].excluded(rel):
                raise InputError(f"{src!r} is excluded by the context's {ignore[0]}")
            candidates = [root / src]
        for cand in candidates:
            if not os.path.lexists(cand):
                raise InputError(f"no such file or directory: {src!r}")
            found.append((cand.name, in_context(root, cand, repr(src))))
    if unmatched and not found:  # as Docker: a pattern may match nothing if another source matches
        raise InputError(f"no such file or directory: {unmatched[0]!r} (the pattern matched nothing)")
    return found


class _Walker:
    """Turns host files into entries under one destination, tracking hardlinks by (dev, ino)."""

    def __init__(self, step: CopyStep, uid: int, gid: int, epoch: int, *, preserve: bool = False,
                 hashed: bool = False) -> None:
        self.uid, self.gid, self.epoch = uid, gid, epoch
        self.hashed = hashed  # the tar writer returns content digests for the cache key (see HostFile)
        self.preserve = preserve  # from a stage: keep owners, modes, devices, clamped times
        self.keep_owner = preserve and step.owner is None
        self.mode = step.mode
        self.excluder = Excluder.from_patterns(step.exclude)
        self.ignore: Excluder | None = None
        """The context's ignore file, matched against context-relative paths (``base`` in :meth:`scan`)."""
        self.inodes: dict[tuple[int, int], str] = {}

    def own_mode(self, st: os.stat_result) -> int:
        """The mode an entry gets from its own stat, ``mode:`` aside."""
        return stat.S_IMODE(st.st_mode) if self.preserve else stat.S_IMODE(st.st_mode) & ~_UMASK_BITS

    def classify(self, host: str, dest: str, st: os.stat_result) -> tuple[Kind, int, int, str] | None:
        """Kind, layer mode, size and link target of ``host`` copied to ``dest`` (a hardlink's
        target is the first ``dest`` seen for its inode); None for what an image cannot hold.
        The one place these rules live: the layer's entries and the cache key both come from it."""
        st_mode = st.st_mode
        mode = self.mode if self.mode is not None else self.own_mode(st)  # never more permissive than on disk
        fmt = stat.S_IFMT(st_mode)
        if fmt == stat.S_IFREG:
            if st.st_nlink > 1:
                first = self.inodes.setdefault((st.st_dev, st.st_ino), dest)
                if first != dest:
                    return Kind.HARDLINK, mode, 0, first
            return Kind.FILE, mode, st.st_size, ""
        if fmt == stat.S_IFDIR:
            return Kind.DIR, mode, 0, ""
        if fmt == stat.S_IFLNK:
            return Kind.SYMLINK, 0o777, 0, os.readlink(host)
        if fmt == stat.S_IFIFO:
            return Kind.FIFO, mode, 0, ""
        if self.preserve and fmt in (stat.S_IFCHR, stat.S_IFBLK):
            return (Kind.CHAR if fmt == stat.S_IFCHR else Kind.BLOCK), mode, 0, ""
        return None  # sockets, and device nodes on the host, are not image content

    def entry(self, host: str, dest: str, st: os.stat_result) -> Entry | None:
        # positional Entry(...) arguments: this runs for every file of a context
        name = dest.rpartition("/")[2]
        if name.startswith(WH_PREFIX):
            raise InputError(f"a file named {name!r} cannot be stored in an image (.wh. names mark deletions): "
                             f"{host!r}")
        found = self.classify(host, dest, st)
        if found is None:
            return None
        kind, mode, size, link = found
        if self.preserve:
            uid, gid = (st.st_uid, st.st_gid) if self.keep_owner else (self.uid, self.gid)
            mtime = min(int(st.st_mtime), self.epoch)
        else:
            uid, gid, mtime = self.uid, self.gid, self.epoch
        xattrs = read_xattrs(host) if kind is not Kind.HARDLINK else ()
        if kind is Kind.FILE:
            return Entry(dest, kind, mode, uid, gid, size, mtime, "", 0, 0, xattrs, HostFile(host, self.hashed))
        if kind is Kind.CHAR or kind is Kind.BLOCK:
            return Entry(dest, kind, mode, uid, gid, 0, mtime, "", os.major(st.st_rdev), os.minor(st.st_rdev), xattrs)
        return Entry(dest, kind, mode, uid, gid, 0, mtime, link, 0, 0, xattrs)

    def scan(self, top: Path, rel: str = "", base: str = "") -> Iterator[tuple[str, str, os.stat_result]]:
        """``(relative path, host path, lstat)`` of everything below ``top`` that is not excluded
        (by the step's ``exclude:``, or by the context's ignore file for ``top`` at ``base`` in the
        context), parents before children, names in byte order; symlinks are never followed."""
        with os.scandir(os.path.join(top, rel) if rel else top) as it:
            items = sorted(it, key=lambda d: d.name)
        for de in items:
            sub = f"{rel}/{de.name}" if rel else de.name
            st = de.stat(follow_symlinks=False)
            is_dir = stat.S_ISDIR(st.st_mode)
            excluded = self.excluder.excluded(sub)
            walk = is_dir and (not excluded or self.excluder.may_reinclude(sub))
            if self.ignore is not None:
                in_context = f"{base}/{sub}" if base else sub
                if self.ignore.excluded(in_context):
                    excluded = True
                    walk = walk and self.ignore.may_reinclude(in_context)
            if not excluded:
                yield sub, de.path, st
            if walk:
                yield from self.scan(top, sub, base)

    def entries(self, items: list[tuple[str, str, os.stat_result]], dest: str) -> Iterator[Entry]:
        for rel, host, st in items:
            e = self.entry(host, _join(dest, rel), st)
            if e is not None:
                yield e


def _join(base: str, rel: str) -> str:
    return f"{base}/{rel}" if base else rel


def _stage_sources(step: CopyStep, root: Path) -> list[tuple[str, Path]]:
    """(name, path) of sources inside a stage's filesystem: absolute image paths, resolved and
    globbed as in a chroot (:mod:`builder.fs.safepath`), so a link in the stage can never make the
    host's directories decide what is copied. A link is its target's content under its own name."""
    found = []
    unmatched = []
    for src in step.sources:
        matches = glob_in_root(root, src) if _GLOB_CHARS & set(src) else [src]
        unmatched += [] if matches else [src]
        for match in matches:
            rel = resolve_in_root(root, match)  # a source that is a link: its target
            if rel is None or not os.path.lexists(root.joinpath(rel)):
                raise InputError(f"no such file or directory in stage {step.from_stage!r}: {src!r}")
            found.append((match.rstrip("/").rpartition("/")[2] or root.joinpath(rel).name, root.joinpath(rel)))
    if unmatched and not found:
        raise InputError(f"no such file or directory in stage {step.from_stage!r}: {unmatched[0]!r}")
    return found


@dataclass
class CopyScan:
    """What a copy from the build context reads, walked once for both the cache key and the layer.

    ``sources`` holds each source with its stat and, for a directory, its entries' relative paths,
    host paths and stats. Content digests come from the tar writer, which hashes each file as it
    copies it (see :class:`HostFile`), so a cold build reads every file once; only a cache probe
    that must decide between a hit and a miss hashes files before the layer is built.
    """

    root: Path
    sources: list[tuple[Path, os.stat_result, list[tuple[str, str, os.stat_result]], str]]
    """(resolved path, stat, a directory's entries, the name a file source is copied under)."""
    rows: list[tuple[str, str, int]] | None = None
    """The key's lines (without content digests), host path and size of each regular file: made once."""


def scan_copy(step: CopyStep, context: Path) -> CopyScan:
    """Walk a copy step's sources in the build context (never for a copy from a stage)."""
    walker = _Walker(step, 0, 0, 0)
    ignore = read_ignore_file(context.resolve())
    walker.ignore = ignore[1] if ignore is not None else None
    root = context.resolve()
    sources = []
    for name, src in _sources(step, context, ignore):
        st = os.stat(src)
        base = "" if src == root else str(src.relative_to(root))
        sources.append((src, st, list(walker.scan(src, base=base)) if stat.S_ISDIR(st.st_mode) else [], name))
    return CopyScan(root, sources)


def copy_changes(step: CopyStep, ctx: StepContext, scan: CopyScan | None = None) -> list[Change]:
    if step.from_stage is not None:
        walker = _Walker(step, *ctx.owner(step.owner), ctx.epoch, preserve=True)
        sources = []
        for name, src in _stage_sources(step, ctx.stage_root(step.from_stage)):
            st = os.lstat(src)
            sources.append((src, st, list(walker.scan(src)) if stat.S_ISDIR(st.st_mode) else [], name))
    else:
        scan = scan or scan_copy(step, ctx.context)
        walker = _Walker(step, *ctx.owner(step.owner), ctx.epoch, hashed=True)
        sources = scan.sources
    dest = ctx.image_path(step.to)
    to_dir = step.to.endswith("/") or len(sources) > 1 or ctx.tree.is_dir(ctx.tree.resolve(dest))
    if to_dir:
        dest = ctx.tree.resolve(dest)
    changes: dict[str, Change] = {}
    for src, st, items, name in sources:
        if stat.S_ISDIR(st.st_mode):
            # the destination directory itself is not copied (a directory source's *contents* are):
            # an existing one is left as it is, owner and mode, as Docker and Buildah leave it; a
            # new one gets the copy's owner and the source directory's own mode, not ``mode:``
            if dest and not ctx.tree.is_dir(dest) and dest not in changes:
                top = walker.entry(str(src), dest, st)
                if top is not None:
                    changes[dest] = dataclasses.replace(top, mode=walker.own_mode(st))
            for e in walker.entries(items, dest):
                changes[e.path] = e
        else:
            target = _join(dest, name) if to_dir else dest
            if not target:
                raise InputError("cannot replace the image root '/' with a file")
            single = walker.entry(str(src), target, st)
            if single is not None:
                changes[target] = single
    return finish(changes.values(), ctx, (walker.uid, walker.gid) if step.owner is not None else (0, 0))


_EMPTY_SHA256 = hashlib.sha256().hexdigest()


def copy_inputs(step: CopyStep, scan: CopyScan, known: Mapping[str, Digest] | None) -> str:
    """What a copy reads, for the layer cache key, as one digest: per source, every entry's
    relative path, type, layer mode, size, link target, kept xattrs and content digest. mtimes, owners on disk
    and inode numbers never reach the layer, so they are left out (hardlink grouping is kept via
    the link target).

    With ``known`` None the content digests are left out: that is the step's *shape*, known
    without reading a file (see :meth:`builder.cache.store.LayerCache.knows_shape`). Otherwise they come
    from ``known`` (what the layer writer hashed while it copied, by host path) or, for files not
    read yet, by hashing them now. One text line per entry, hashed: this runs for every file of
    a context, twice per build.
    """
    if scan.rows is None:
        scan.rows = _key_rows(step, scan)
    if known is not None:
        lines = [f"{row}\0{_content_digest(known, host, size)}" if host else row for row, host, size in scan.rows]
    else:
        lines = [row for row, _, _ in scan.rows]
    return "sha256:" + hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def _key_rows(step: CopyStep, scan: CopyScan) -> list[tuple[str, str, int]]:
    """``(line, host path of a regular file or "", size)`` per entry, by the entries' own rules
    (:meth:`_Walker.classify`), without making the entries."""
    walker = _Walker(step, 0, 0, 0)
    rows: list[tuple[str, str, int]] = []
    for src, st, items, name in scan.sources:
        is_dir = stat.S_ISDIR(st.st_mode)
        rows.append((f"source\0{src.relative_to(scan.root)}\0{is_dir}", "", 0))
        for rel, host, est in items if is_dir else [(name, str(src), st)]:
            found = walker.classify(host, rel, est)
            if found is not None:
                kind, mode, size, link = found
                xattrs = "".join(f"\0{k}={v.hex()}" for k, v in read_xattrs(host)) if kind is not Kind.HARDLINK else ""
                rows.append((f"{rel}\0{kind}\0{mode}\0{size}\0{link}{xattrs}", host if kind is Kind.FILE else "", size))
    return rows


def _content_digest(known: Mapping[str, Digest], host: str, size: int) -> str:
    digest = known.get(host)
    if digest is not None:
        return digest.hex
    return _EMPTY_SHA256 if size == 0 else sha256_file(host)[0].hex


class CopyHandler(FileHandler):
    adds_files = True

    def reads_stages(self, step: CopyStep) -> tuple[str, ...]:
        return (step.from_stage,) if step.from_stage is not None else ()

    def describe(self, step: CopyStep) -> str:
        extra = "".join(
            f" --{k}={v}"
            for k, v in (("from", step.from_stage), ("chown", step.owner),
                         ("chmod", None if step.mode is None else f"{step.mode:04o}"))
            if v is not None
        )
        excl = "".join(f" --exclude={p}" for p in step.exclude)
        return f"pybuild copy{extra}{excl} {' '.join(step.sources)} {step.to}"

    def plan(self, step: CopyStep, scope: Scope) -> StepPlan:
        if step.from_stage is not None:
            return _StagePlan(step, scope, self.reads_stages(step))
        return _ContextPlan(step, scope, scan_copy(step, scope.context))


@dataclass
class _StagePlan:
    """A copy from a stage is keyed by that stage's layers (its diff_id chain), which determine
    every byte it can read."""

    step: CopyStep
    scope: Scope
    stages: tuple[str, ...]
    reads_contents: bool = False

    def inputs(self, known: object) -> dict[str, Any]:
        return {"stage": [str(d) for d in self.scope.stage_chains.get(self.stages[0], ())]}

    def materials(self) -> list[tuple[str, Digest]]:
        return []  # the stage's own layers: made by this build, not read from outside it

    def changes(self, lower: Lower) -> Changes:
        return Changes(iter(copy_changes(self.step, file_context(self.scope, lower))))


@dataclass
class _ContextPlan:
    """A copy from the context: its sources walked once (``scan``), for the key and the layer."""

    step: CopyStep
    scope: Scope
    scan: CopyScan
    stages: tuple[str, ...] = ()
    reads_contents: bool = True
    read: Digest | None = None
    """The digest of what the copy read (every file's path, mode and content), once known."""

    def inputs(self, known: Mapping[str, Digest] | None) -> dict[str, Any]:
        files = copy_inputs(self.step, self.scan, known)
        if known is not None:
            self.read = Digest.parse(files)
        return {"files": files}

    def materials(self) -> list[tuple[str, Digest]]:
        if self.read is None:
            self.inputs({})
        assert self.read is not None
        return [(f"context:{','.join(self.step.sources)}", self.read)]

    def changes(self, lower: Lower) -> Changes:
        return Changes(iter(copy_changes(self.step, file_context(self.scope, lower), self.scan)))
