"""``rootfs``: a (compressed) tarball streamed into one layer, never extracted to disk.

The tarball is untrusted. Two streaming passes, no temp files:

1. headers only: canonical names (a leading ``/`` is dropped, as GNU tar does; a name with a
   ``..`` component is refused, since in a layer it could only mean an escape), duplicate
   entries (the last one wins, as when tar extracts), directory metadata, and the rules a layer
   must keep (no ``.wh.*`` names, hardlinks pointing to an earlier non-directory entry);
2. content: entries in archive order, each preceded by any parent directory not yet written
   (with the archive's own metadata for it when the archive has one, so order in the archive
   never matters).

Device nodes, fifos, setuid bits, owners and xattrs are kept as data in the layer.
``security.selinux`` and overlayfs' ``trusted.overlay.*``/``user.overlay.*`` xattrs are
host artefacts and are dropped.
"""

from __future__ import annotations

import dataclasses
import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import cast

from builder.errors import InputError
from builder.fs.safepath import in_context
from builder.fs.tree import WATCHED
from builder.fs.users import read_account_file
from builder.layer.decompress import open_decompressed
from builder.layer.entry import Change, Entry, Kind, canon, is_whiteout_name, parents
from builder.layer.reader import READ_ERRORS, entry_of, with_content
from builder.layer.tarstream import tar_members
from builder.oci.digest import Digest, sha256_file
from builder.recipe.model import RootfsStep
from builder.steps.base import REDO, Changes, FileHandler, Lower, Redo, Scope, StepContext, StepPlan, file_context


@dataclass
class _Scan:
    """What pass 1 learnt: the index of the kept occurrence of each path, and dir metadata."""

    last: dict[str, int]
    dirs: dict[str, Entry]
    kinds: dict[str, Kind]


def _members(path: Path) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """Stream the archive's members; any read error becomes an InputError naming the archive."""
    closing = False  # the consumer stopped early (for an error of its own): nothing to report here
    with open(path, "rb") as raw:
        try:
            with open_decompressed(raw) as stream:
                try:
                    yield from tar_members(stream)
                except GeneratorExit:
                    closing = True
                    raise
        except READ_ERRORS as exc:
            if closing:
                return
            raise InputError(f"{path.name}: not a readable tar archive, or corrupt or truncated ({exc})") from exc


def _name(ti: tarfile.TarInfo, label: str) -> str:
    try:
        return canon(ti.name)
    except ValueError:
        raise InputError(f"{label}: entry {ti.name!r} has a '..' component that climbs out of the "
                         f"root; refusing the archive") from None


def _entry(ti: tarfile.TarInfo, path: str, link: str, epoch: int, label: str) -> Entry:
    """A member as the layer's entry: the shared reader's, with the rootfs rules on top (a type tar
    does not define is refused, times are clamped to the epoch)."""
    entry = entry_of(ti, path, link, strict=True, label=label)
    return dataclasses.replace(entry, mtime=min(int(entry.mtime), epoch))


def _scan(path: Path, prefix: str, label: str, epoch: int) -> _Scan:
    last: dict[str, int] = {}
    dirs: dict[str, Entry] = {}
    kinds: dict[str, Kind] = {}
    for i, (_, ti) in enumerate(_members(path)):
        name = _name(ti, label)
        if not name:
            if prefix and ti.isdir():  # the destination's own metadata (see _stream)
                dirs[prefix] = _entry(ti, prefix, "", epoch, label)
            continue
        base = next((part for part in name.split("/") if is_whiteout_name(part)), "")  # a parent's name too
        if base:
            raise InputError(f"{label}: entry {ti.name!r}: a file named {base!r} cannot be stored in an image "
                             "(.wh. names mark deletions)")
        full = f"{prefix}/{name}" if prefix else name
        entry = _entry(ti, full, "", epoch, label)
        last[full] = i
        kinds[full] = entry.kind
        if entry.kind is Kind.DIR:
            dirs[full] = entry
        else:
            dirs.pop(full, None)
    return _Scan(last, dirs, kinds)


def _tarball(step: RootfsStep, context: Path) -> Path:
    src = context / step.source
    if not src.is_file():
        raise InputError(f"no such file: {step.source!r}")
    return in_context(context, step.source, repr(step.source))


class RootfsHandler(FileHandler):
    adds_files = True

    def describe(self, step: RootfsStep) -> str:
        return f"pybuild rootfs {step.source} {step.to}"

    def plan(self, step: RootfsStep, scope: Scope) -> StepPlan:
        return _RootfsPlan(step, scope)


@dataclass
class _RootfsPlan:
    step: RootfsStep
    scope: Scope
    stages: tuple[str, ...] = ()
    reads_contents: bool = False

    digest: Digest | None = None

    def inputs(self, known: object) -> dict[str, str]:
        """The tarball's content digest (its name and mtime do not matter)."""
        if self.digest is None:
            self.digest = sha256_file(_tarball(self.step, self.scope.context))[0]
        return {"sha256": str(self.digest)}

    def materials(self) -> list[tuple[str, Digest]]:
        self.inputs(None)
        assert self.digest is not None
        return [(f"context:{self.step.source}", self.digest)]

    def changes(self, lower: Lower) -> Changes:
        return rootfs_changes(self.step, file_context(self.scope, lower))


def rootfs_changes(step: RootfsStep, ctx: StepContext) -> Changes:
    """Stream the tarball's entries as changes, parents first (see module docstring).

    Most tarballs (GNU tar, debootstrap, docker export) list every directory before its content
    and have no duplicates, so the first attempt is a single pass; an archive that turns out to
    need reordering ends that stream with :data:`REDO`, and the layer is written again from the
    two-pass stream. The bytes of the layer are the same either way.
    """
    label = step.source
    real = _tarball(step, ctx.context)
    prefix = ctx.image_path(step.to)

    def two_passes() -> Iterator[Change]:
        return cast(Iterator[Change], _stream(real, prefix, _scan(real, prefix, label, ctx.epoch), label, ctx))

    return Changes(_stream(real, prefix, None, label, ctx), redo=two_passes)


def _stream(path: Path, prefix: str, scan: _Scan | None, label: str, ctx: StepContext) -> Iterator[Change | Redo]:
    """Entries in archive order, parents first. With ``scan`` None (one pass), anything that would
    need a later entry's metadata (a directory listed after its content, a duplicate) ends the
    stream with :data:`REDO`; with a scan, it never does."""
    written: dict[str, Kind] = {}
    from_archive: set[str] = set()

    def ensure_parents(p: str) -> Iterator[Entry]:
        for parent in parents(p):
            if parent in written:
                if written[parent] is not Kind.DIR:
                    raise InputError(f"{label}: '/{p}' is below '/{parent}', which is not a directory")
                continue
            if scan is not None and scan.kinds.get(parent, Kind.DIR) is not Kind.DIR:
                raise InputError(f"{label}: '/{p}' is below '/{parent}', which is not a directory")
            entry = (scan.dirs.get(parent) if scan is not None else None) or ctx.parent_entry(parent)
            written[parent] = Kind.DIR
            yield entry

    if prefix:  # the destination itself waits for the archive's own "./" entry, if it has one
        yield from (ensure_parents(prefix + "/x") if scan is not None else ensure_parents(prefix))
    for i, (tf, ti) in enumerate(_members(path)):
        name = _name(ti, label)
        if not name:  # "./": the image root (never an entry), or with ``to:`` the destination, as Buildah
            if not prefix or (scan is not None and prefix in written):
                continue
            if prefix in written:
                yield REDO  # listed after content: its metadata must come first
                return
            root = _entry(ti, prefix, "", ctx.epoch, label)
            if root.kind is not Kind.DIR:
                raise InputError(f"{label}: its root entry {ti.name!r} is not a directory")
            written[prefix] = Kind.DIR
            yield root
            continue
        full = f"{prefix}/{name}" if prefix else name
        if scan is None:
            base = next((part for part in name.split("/") if is_whiteout_name(part)), "")
            if base:
                raise InputError(f"{label}: entry {ti.name!r}: a file named {base!r} cannot be stored in an image "
                                 "(.wh. names mark deletions)")
            if full in written:
                yield REDO  # a duplicate, or a directory whose content came first: needs both passes
                return
        elif scan.last.get(full) != i or full in written:
            continue  # an earlier duplicate, or a directory already written as a parent
        link = ""
        if ti.islnk():
            try:
                target = canon(ti.linkname)
            except ValueError:
                raise InputError(f"{label}: hardlink {ti.name!r} -> {ti.linkname!r} points outside the "
                                 "archive") from None
            link = f"{prefix}/{target}" if prefix else target
            if written.get(link) in (None, Kind.DIR) or (scan is None and link not in from_archive):
                raise InputError(f"{label}: hardlink {ti.name!r} -> {ti.linkname!r}: the target is "
                                 f"{'a directory' if written.get(link) else 'not an earlier entry'}")
        elif ti.issym():
            link = ti.linkname
        yield from ensure_parents(full)
        entry = _entry(ti, full, link, ctx.epoch, label)
        written[full] = entry.kind
        from_archive.add(full)
        if entry.kind is Kind.FILE:
            entry = _with_content(entry, tf, ti, label)
        yield entry
    if prefix and prefix not in written:  # an empty archive still makes its destination
        yield from ensure_parents(prefix + "/x")


def _with_content(entry: Entry, tf: tarfile.TarFile, ti: tarfile.TarInfo, label: str) -> Entry:
    """Content read straight from the archive stream; small watched files are kept in memory."""
    entry = with_content(entry, tf, ti, label)
    if entry.path in WATCHED and entry.content is not None:
        with entry.content() as member:
            data = read_account_file(member, entry.size, entry.path)
        return dataclasses.replace(entry, content=partial(io.BytesIO, data))
    return entry
