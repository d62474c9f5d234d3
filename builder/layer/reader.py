"""Reading a tar back into changes: the inverse of :class:`builder.layer.tarwriter.LayerTarWriter`.

One reader for every archive pybuild takes in, so they cannot disagree about what a member
means: the base scan (a base's layers into the metadata tree), the applier (layers onto a
directory, for run steps, stages and ``pybuild unpack``) and the rootfs step (a tarball into a
layer, which adds its own untrusted-archive rules on top of :func:`entry_of`).

A *layer* (:func:`read_layer`) also carries deletions: ``.wh.NAME`` is a whiteout of NAME and
``.wh..wh..opq`` makes its directory opaque. The rules for them are the image-spec's: a
whiteout is an empty regular file, its name is neither empty nor ``.``/``..``, no parent
directory's name starts with ``.wh.``, and aufs' own bookkeeping (``.wh..wh.plnk`` and the like,
in layers old Docker versions wrote) is skipped. Names are canonical (a leading ``/`` or ``./``
dropped); a name or a hardlink target that climbs above the root with ``..`` is refused.
Types tarfile does not know are regular files, as POSIX tells an extractor to read them.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from typing import Any, BinaryIO, cast

from builder.errors import InputError
from builder.layer.decompress import DECODE_ERRORS
from builder.layer.entry import WH_OPAQUE, WH_PREFIX, Change, Entry, Kind, Opaque, Whiteout, canon
from builder.layer.tarstream import tar_members
from builder.layer.xattrs import keep_from_archive

KINDS = {
    tarfile.REGTYPE: Kind.FILE,
    tarfile.AREGTYPE: Kind.FILE,
    tarfile.CONTTYPE: Kind.FILE,
    tarfile.DIRTYPE: Kind.DIR,
    tarfile.SYMTYPE: Kind.SYMLINK,
    tarfile.LNKTYPE: Kind.HARDLINK,
    tarfile.CHRTYPE: Kind.CHAR,
    tarfile.BLKTYPE: Kind.BLOCK,
    tarfile.FIFOTYPE: Kind.FIFO,
}
READ_ERRORS: tuple[type[Exception], ...] = (tarfile.TarError, *DECODE_ERRORS)
_XATTR = "SCHILY.xattr."
_AUFS_META = WH_PREFIX + WH_PREFIX  # ".wh..wh.plnk" etc.


def xattrs_of(ti: tarfile.TarInfo) -> tuple[tuple[str, bytes], ...]:
    """PAX ``SCHILY.xattr.*`` records (as Go, GNU tar and pybuild write them), sorted, host
    artefacts left out (:func:`builder.layer.xattrs.keep_from_archive`)."""
    found = [(k[len(_XATTR):], v) for k, v in ti.pax_headers.items() if k.startswith(_XATTR)]
    return tuple(sorted((n, v.encode("utf-8", "surrogateescape")) for n, v in found if keep_from_archive(n)))


def entry_of(ti: tarfile.TarInfo, path: str, link: str, *, strict: bool = False, label: str = "") -> Entry:
    """The metadata of member ``ti`` as an entry at ``path`` (no content yet).

    ``strict``: a type tarfile does not know is refused instead of read as a regular file (GNU
    sparse files are regular files either way). mtimes keep their fraction (PAX gives one).
    """
    kind = KINDS.get(ti.type, Kind.FILE if ti.isreg() or not strict else None)
    if kind is None:
        raise InputError(f"{label}: entry {ti.name!r} has an unsupported type {ti.type!r}")
    return Entry(path, kind, ti.mode & 0o7777, ti.uid, ti.gid, ti.size if kind is Kind.FILE else 0,
                 ti.mtime, link, ti.devmajor, ti.devminor, xattrs_of(ti))


class _Guarded(io.RawIOBase):
    """A member's content whose read errors (a truncated or corrupt archive) are InputError."""

    def __init__(self, raw: BinaryIO, label: str) -> None:
        self._raw, self._label = raw, label

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        try:
            return self._raw.read(n)
        except READ_ERRORS as exc:
            raise InputError(f"{self._label}: corrupt or truncated archive ({exc})") from exc

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)


def with_content(entry: Entry, tf: tarfile.TarFile, ti: tarfile.TarInfo, label: str) -> Entry:
    """``entry`` with an opener of member ``ti``'s bytes, valid until the stream moves past it."""

    def opener() -> BinaryIO:
        member = tf.extractfile(ti)
        if member is None:
            raise InputError(f"{label}: cannot read {ti.name!r}")
        return cast(BinaryIO, _Guarded(cast(BinaryIO, member), label))

    return Entry(entry.path, entry.kind, entry.mode, entry.uid, entry.gid, entry.size, entry.mtime,
                 entry.link, entry.devmajor, entry.devminor, entry.xattrs, opener)


def read_layer(stream: BinaryIO, label: str) -> Iterator[tuple[str, Change]]:
    """``(name as archived, change)`` for each member of the uncompressed layer tar ``stream``.

    An entry's content (a regular file's) can be read until the next change is asked for. The
    root directory comes as an :class:`Entry` with path "" (its metadata; a layer writer never
    writes one, other tools do).
    """
    for tf, ti in tar_members(stream):
        def fail(why: str, name: str = ti.name) -> InputError:
            return InputError(f"{label}: entry {name!r}: {why}")

        try:
            path = canon(ti.name)
        except ValueError:
            raise fail("'..' climbs above the root") from None
        head, _, base = path.rpartition("/")
        if path.startswith(_AUFS_META) and path != WH_OPAQUE:
            continue
        if any(part.startswith(WH_PREFIX) for part in head.split("/")):
            raise fail("a parent directory's name starts with '.wh.'")
        if base.startswith(WH_PREFIX):
            if not (ti.isreg() and ti.size == 0):
                raise fail("a whiteout must be an empty regular file")
            if base == WH_OPAQUE:
                yield ti.name, Opaque(head)
                continue
            if base[len(WH_PREFIX):] in ("", ".", ".."):
                raise fail("invalid whiteout name")
            yield ti.name, Whiteout(f"{head}/{base[len(WH_PREFIX):]}" if head else base[len(WH_PREFIX):])
            continue
        if not path and not ti.isdir():
            raise fail("the root can only be a directory")
        link = ti.linkname
        if ti.islnk():
            try:
                link = canon(ti.linkname)
            except ValueError:
                raise fail(f"hardlink target {ti.linkname!r} climbs above the root") from None
        entry = entry_of(ti, path, link, label=label)
        yield ti.name, with_content(entry, tf, ti, label) if entry.kind is Kind.FILE else entry
