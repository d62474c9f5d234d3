"""Change sets -> a deterministic PAX tar stream.

Header policy (FIELD-NOTES 5.7), frozen under ``LAYER_FORMAT_VERSION``: PAX format with PAX
records only where needed (long or non-ASCII names, xattrs); integer mtimes clamped to the
build epoch; empty uname/gname; no atime/ctime; directories end in ``/``; whiteouts are empty
regular files. Headers are built from :class:`Entry` values, never from ``gettarinfo`` (which
would pull user names from the host).

The writer also enforces what a layer must never contain: duplicate paths, files named
``.wh.*``, hardlinks whose target is not earlier in the same layer or is a directory.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Callable, Iterable
from typing import BinaryIO

from builder.errors import InputError
from builder.layer.entry import (
    WH_OPAQUE,
    WH_PREFIX,
    Change,
    Entry,
    HostFile,
    Kind,
    Opaque,
    Whiteout,
    is_whiteout_name,
)

_TYPES = {
    Kind.FILE: tarfile.REGTYPE,
    Kind.DIR: tarfile.DIRTYPE,
    Kind.SYMLINK: tarfile.SYMTYPE,
    Kind.HARDLINK: tarfile.LNKTYPE,
    Kind.CHAR: tarfile.CHRTYPE,
    Kind.BLOCK: tarfile.BLKTYPE,
    Kind.FIFO: tarfile.FIFOTYPE,
}
COPY_BUFSIZE = 1 << 20


def _header(name: str, epoch: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.uname = ti.gname = ""
    ti.mtime = epoch
    ti.mode = 0o644
    return ti


def _split(path: str) -> tuple[str, str]:
    head, _, base = path.rpartition("/")
    return (head + "/" if head else ""), base


_NUL = b"\0"


def _dev(ti: tarfile.TarInfo, number: int) -> bytes:
    """Device numbers only for device nodes; NUL-filled otherwise (as tarfile writes them)."""
    return b"%07o\0" % number if ti.type in (tarfile.CHRTYPE, tarfile.BLKTYPE) else _NUL * 8


def _ustar(ti: tarfile.TarInfo) -> bytes | None:
    """The header ``tarfile`` would write for ``ti`` in PAX format, when no PAX record is needed.

    A byte-for-byte copy of ``TarInfo.tobuf(PAX_FORMAT)`` for the common case (ASCII names and
    links of at most 100 bytes, small numbers, no xattrs), an order of magnitude faster; anything
    else returns None and goes through ``tarfile``. tests/unit/test_layer.py checks the equality.
    """
    name = ti.name + "/" if ti.type == tarfile.DIRTYPE and not ti.name.endswith("/") else ti.name
    link = ti.linkname
    if (ti.pax_headers or len(name) > 100 or len(link) > 100 or not name.isascii() or not link.isascii()
            or not 0 <= ti.size < 8**11 or not 0 <= ti.mtime < 8**11 or not 0 <= ti.uid < 8**7
            or not 0 <= ti.gid < 8**7 or not 0 <= ti.devmajor < 8**7 or not 0 <= ti.devminor < 8**7):
        return None
    head = b"".join((
        name.encode().ljust(100, _NUL), b"%07o\0" % (ti.mode & 0o7777), b"%07o\0" % ti.uid, b"%07o\0" % ti.gid,
        b"%011o\0" % ti.size, b"%011o\0" % int(ti.mtime), b"        ", ti.type, link.encode().ljust(100, _NUL),
        tarfile.POSIX_MAGIC, _NUL * 64, _dev(ti, ti.devmajor), _dev(ti, ti.devminor), _NUL * 167,
    ))  # fmt: skip
    chksum = sum(head)
    return head[:148] + b"%06o\0" % chksum + head[155:]


class LayerTarWriter:
    """Writes changes, in the order given, as one layer tar into ``out``.

    Callers give changes in canonical order (:func:`builder.layer.order.canonical`) or, for
    tarball passthrough, archive order with parents first; the writer checks the rules either way.
    The bytes are those of ``tarfile`` in PAX format (headers from :func:`_ustar` or
    ``TarInfo.tobuf``, content padded to 512 bytes, two zero blocks and padding to a 10240-byte
    record at the end), written straight to ``out`` without a ``TarFile`` in between.
    """

    def __init__(self, out: BinaryIO, epoch: int, on_progress: Callable[[int], None] | None = None) -> None:
        self._out = out
        self._offset = 0
        self._epoch = epoch
        self._seen: dict[str, bool] = {}  # path -> is a directory
        self._whiteouts: set[str] = set()
        self._progress = on_progress
        self.count = 0

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self._offset += len(data)

    def _addfile(self, ti: tarfile.TarInfo) -> None:
        self._write(_ustar(ti) or ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def add(self, change: Change) -> None:
        if isinstance(change, Opaque):
            self._add_marker(change.path + "/" + WH_OPAQUE if change.path else WH_OPAQUE)
        elif isinstance(change, Whiteout):
            head, base = _split(change.path)
            if change.path in self._seen:
                raise InputError(f"'/{change.path}' is both deleted and added in one layer")
            self._whiteouts.add(change.path)
            self._add_marker(head + WH_PREFIX + base)
        else:
            self._add_entry(change)

    def _add_marker(self, name: str) -> None:
        if name in self._seen:
            raise InputError(f"two entries for one path in a layer: '/{name}'")
        self._seen[name] = False
        self._addfile(_header(name, self._epoch))
        self.count += 1

    def _add_entry(self, e: Entry) -> None:
        if not e.path:
            return  # the root itself is never an entry of a layer
        _, base = _split(e.path)
        if is_whiteout_name(base):
            raise InputError(f"a file named '{base}' cannot be stored in an image (.wh. names mark deletions): "
                             f"'/{e.path}'")
        if e.path in self._whiteouts:
            raise InputError(f"'/{e.path}' is both deleted and added in one layer")
        if e.path in self._seen:
            raise InputError(f"two entries for one path in a layer: '/{e.path}'")
        ti = _header(e.path, min(int(e.mtime), self._epoch))
        ti.type = _TYPES[e.kind]
        ti.mode = e.mode & 0o7777
        ti.uid, ti.gid = e.uid, e.gid
        if e.kind is Kind.HARDLINK:
            if self._seen.get(e.link) is not False:
                what = "is a directory" if self._seen.get(e.link) else "is not earlier in the same layer"
                raise InputError(f"hardlink '/{e.path}' -> '/{e.link}': the target {what}")
            ti.linkname = e.link
        elif e.kind is Kind.SYMLINK:
            ti.linkname = e.link
        elif e.kind in (Kind.CHAR, Kind.BLOCK):
            ti.devmajor, ti.devminor = e.devmajor, e.devminor
        if e.xattrs:
            ti.pax_headers = {
                f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in sorted(e.xattrs)
            }
        self._seen[e.path] = e.kind is Kind.DIR
        self.count += 1
        if e.kind is Kind.FILE and e.size:
            if e.content is None:
                raise InputError(f"no content for '/{e.path}'")
            ti.size = e.size
            if isinstance(e.content, HostFile):
                self._copy_host(_ustar(ti) or ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"), e.content,
                                e.size, e.path)
            else:
                self._addfile(ti)
                with e.content() as src:
                    self._copy(src, e.size, e.path)
            if self._progress:
                self._progress(e.size)
        else:
            self._addfile(ti)

    def _copy(self, src: BinaryIO, size: int, path: str) -> None:
        left = size
        while left:
            chunk = src.read(min(left, COPY_BUFSIZE))
            if not chunk:
                raise InputError(f"'/{path}' changed size while it was read")
            self._write(chunk)
            left -= len(chunk)
        if size % tarfile.BLOCKSIZE:
            self._write(_NUL * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE))

    def _copy_host(self, header: bytes, src: HostFile, size: int, path: str) -> None:
        """Header, content and padding of a host file; one write when it is small (most are)."""
        try:
            fd = os.open(src.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            raise InputError(f"cannot read {src.path!r}: {exc.strerror}") from exc
        pad = _NUL * (-size % tarfile.BLOCKSIZE)
        h = hashlib.sha256() if src.digests is not None else None
        try:
            if size <= COPY_BUFSIZE:
                data = os.read(fd, size)
                while len(data) < size and (more := os.read(fd, size - len(data))):
                    data += more
                if len(data) < size:
                    raise InputError(f"'/{path}' changed size while it was read")
                if h is not None:
                    h.update(data)
                self._write(header + data + pad)
            else:
                self._write(header)
                left = size
                while left:
                    chunk = os.read(fd, min(left, COPY_BUFSIZE))
                    if not chunk:
                        raise InputError(f"'/{path}' changed size while it was read")
                    if h is not None:
                        h.update(chunk)
                    self._write(chunk)
                    left -= len(chunk)
                self._write(pad)
        except OSError as exc:
            raise InputError(f"cannot read {src.path!r}: {exc.strerror}") from exc
        finally:
            os.close(fd)
        if h is not None and src.digests is not None:
            src.digests[src.path] = h.hexdigest()

    def close(self) -> None:
        """Write the end-of-archive marker (two zero blocks, padded to a record), as tarfile does."""
        self._write(_NUL * (2 * tarfile.BLOCKSIZE))
        if self._offset % tarfile.RECORDSIZE:
            self._write(_NUL * (tarfile.RECORDSIZE - self._offset % tarfile.RECORDSIZE))


def write_tar(changes: Iterable[Change], out: BinaryIO, epoch: int,
              on_progress: Callable[[int], None] | None = None) -> int:
    """Write ``changes`` as one layer tar into ``out``; returns the number of entries."""
    writer = LayerTarWriter(out, epoch, on_progress)
    for change in changes:
        writer.add(change)
    writer.close()
    return writer.count
