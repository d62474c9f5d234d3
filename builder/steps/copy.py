"""``copy``: files from the build context into the image, with Docker COPY's destination rules.

Sources are relative to the context and never leave it: a source that resolves (through
``..`` or a symlink) outside the context is refused. Inside a copied directory, symlinks are
copied as links, never followed, so they cannot pull host files in. Times are the build
epoch and modes are normalised (0755 for directories and owner-executable files, 0644
otherwise, unless ``mode`` is given) so that neither mtimes nor the umask of the checkout
reach the image. Hardlinked files stay hardlinked.
"""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from builder.errors import InputError
from builder.fs.patterns import Excluder
from builder.layer.entry import Change, Entry, Kind, is_whiteout_name
from builder.oci.digest import sha256_file
from builder.recipe.model import CopyStep
from builder.sandbox import secure_join
from builder.steps.base import StepContext, finish

_GLOB_CHARS = set("*?[")


def _sources(step: CopyStep, context: Path) -> list[Path]:
    root = context.resolve()
    found: list[Path] = []
    for src in step.sources:
        if _GLOB_CHARS & set(src):
            matches = sorted(glob.glob(src, root_dir=root, include_hidden=True))
            if not matches:
                raise InputError(f"no such file or directory: {src!r} (the pattern matched nothing)")
            candidates = [root / m for m in matches]
        else:
            candidates = [root / src]
        for cand in candidates:
            if not os.path.lexists(cand):
                raise InputError(f"no such file or directory: {src!r}")
            real = Path(os.path.realpath(cand))
            if real != root and root not in real.parents:
                raise InputError(f"{src!r} leads outside the build context (to {str(real)!r})")
            found.append(real)
    return found


def _file_opener(path: str):  # type: ignore[no-untyped-def]
    return lambda: open(path, "rb")


def _default_mode(st: os.stat_result) -> int:
    if stat.S_ISDIR(st.st_mode) or st.st_mode & stat.S_IXUSR:
        return 0o755
    return 0o644


class _Walker:
    """Turns host files into entries under one destination, tracking hardlinks by (dev, ino)."""

    def __init__(self, step: CopyStep, uid: int, gid: int, epoch: int, *, preserve: bool = False) -> None:
        self.uid, self.gid, self.epoch = uid, gid, epoch
        self.preserve = preserve  # from a stage: keep owners, modes, devices, clamped times
        self.keep_owner = preserve and step.owner is None
        self.mode = step.mode
        self.excluder = Excluder.from_patterns(step.exclude)
        self.inodes: dict[tuple[int, int], str] = {}

    def entry(self, host: str, dest: str, st: os.stat_result) -> Entry | None:
        name = dest.rpartition("/")[2]
        if is_whiteout_name(name):
            raise InputError(f"a file named {name!r} cannot be stored in an image (.wh. names mark deletions): "
                             f"{host!r}")
        if self.mode is not None:
            mode = self.mode
        else:
            mode = stat.S_IMODE(st.st_mode) if self.preserve else _default_mode(st)
        common = {"uid": st.st_uid if self.keep_owner else self.uid, "gid": st.st_gid if self.keep_owner else self.gid,
                  "mtime": min(int(st.st_mtime), self.epoch) if self.preserve else self.epoch}
        fmt = stat.S_IFMT(st.st_mode)
        if fmt == stat.S_IFDIR:
            return Entry(dest, Kind.DIR, mode, **common)  # type: ignore[arg-type]
        if fmt == stat.S_IFLNK:
            return Entry(dest, Kind.SYMLINK, 0o777, link=os.readlink(host), **common)  # type: ignore[arg-type]
        if fmt == stat.S_IFREG:
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.inodes:
                return Entry(dest, Kind.HARDLINK, mode, link=self.inodes[key], **common)  # type: ignore[arg-type]
            if st.st_nlink > 1:
                self.inodes[key] = dest
            return Entry(dest, Kind.FILE, mode, size=st.st_size, content=_file_opener(host),
                         **common)  # type: ignore[arg-type]
        if fmt == stat.S_IFIFO:
            return Entry(dest, Kind.FIFO, mode, **common)  # type: ignore[arg-type]
        if self.preserve and fmt in (stat.S_IFCHR, stat.S_IFBLK):
            kind = Kind.CHAR if fmt == stat.S_IFCHR else Kind.BLOCK
            return Entry(dest, kind, mode, devmajor=os.major(st.st_rdev), devminor=os.minor(st.st_rdev),
                         **common)  # type: ignore[arg-type]
        return None  # sockets, and device nodes on the host, are not image content

    def walk(self, top: Path, dest: str, rel: str = "") -> Iterator[Entry]:
        """Entries below ``top`` (not ``top`` itself); symlinks are never followed."""
        with os.scandir(top / rel if rel else top) as it:
            items = sorted(it, key=lambda d: d.name)
        for de in items:
            sub = f"{rel}/{de.name}" if rel else de.name
            st = de.stat(follow_symlinks=False)
            is_dir = stat.S_ISDIR(st.st_mode)
            excluded = self.excluder.excluded(sub)
            if excluded and not (is_dir and self.excluder.has_negations):
                continue
            if not excluded:
                e = self.entry(de.path, _join(dest, sub), st)
                if e is not None:
                    yield e
            if is_dir:
                yield from self.walk(top, dest, sub)


def _join(base: str, rel: str) -> str:
    return f"{base}/{rel}" if base else rel


def _stage_sources(step: CopyStep, root: Path) -> list[Path]:
    """Sources inside a stage's filesystem: absolute image paths, resolved as in a chroot."""
    found = []
    for src in step.sources:
        matches = sorted(glob.glob(src.lstrip("/"), root_dir=root, include_hidden=True)) if _GLOB_CHARS & set(src) \
            else [src]
        if not matches:
            raise InputError(f"no such file or directory in stage {step.from_stage!r}: {src!r}")
        for match in matches:
            path = secure_join(root, match)
            if not os.path.lexists(path):
                raise InputError(f"no such file or directory in stage {step.from_stage!r}: {src!r}")
            found.append(path)
    return found


def copy_changes(step: CopyStep, ctx: StepContext) -> list[Change]:
    if step.from_stage is not None:
        if ctx.stage_root is None:
            raise InputError(f"stage {step.from_stage!r} is not available here")
        sources = _stage_sources(step, ctx.stage_root(step.from_stage))
    else:
        sources = _sources(step, ctx.context)
    dest = ctx.image_path(step.to)
    to_dir = step.to.endswith("/") or len(sources) > 1 or ctx.tree.is_dir(ctx.tree.resolve(dest))
    if to_dir:
        dest = ctx.tree.resolve(dest)
    walker = _Walker(step, *ctx.owner(step.owner), ctx.epoch, preserve=step.from_stage is not None)
    changes: dict[str, Change] = {}
    for src in sources:
        st = os.lstat(src) if step.from_stage else os.stat(src)
        if stat.S_ISDIR(st.st_mode):
            # the destination directory itself: created like the source's contents, but an
            # existing one keeps its owner and mode unless the step sets them
            if dest and (step.owner is not None or step.mode is not None or not ctx.tree.is_dir(dest)):
                top = walker.entry(str(src), dest, st)
                if top is not None:
                    changes[dest] = top
            for e in walker.walk(src, dest):
                changes[e.path] = e
        else:
            target = _join(dest, src.name) if to_dir else dest
            if not target:
                raise InputError("cannot replace the image root '/' with a file")
            single = walker.entry(str(src), target, st)
            if single is not None:
                changes[target] = single
    return finish(changes.values(), ctx)


def copy_inputs(step: CopyStep, context: Path) -> list[list[object]]:
    """What a copy reads, for the layer cache key: per source, every entry's relative path, type,
    layer mode, size, link target and content digest. mtimes, owners on disk and inode numbers
    never reach the layer, so they are left out (hardlink grouping is kept via the link target).
    """
    walker = _Walker(step, 0, 0, 0)
    out: list[list[object]] = []
    for src in _sources(step, context):
        st = os.stat(src)
        if stat.S_ISDIR(st.st_mode):
            entries = list(walker.walk(src, ""))
        else:
            single = walker.entry(str(src), src.name, st)
            entries = [single] if single is not None else []
        out.append([str(src.relative_to(context.resolve())), stat.S_ISDIR(st.st_mode)])
        for e in entries:
            host = src / e.path if stat.S_ISDIR(st.st_mode) else src
            digest = str(sha256_file(host)[0]) if e.kind is Kind.FILE else ""
            out.append([e.path, str(e.kind), e.mode, e.size, e.link, digest])
    return out
