"""Change sets -> a deterministic PAX tar stream.

Header policy, frozen under ``LAYER_FORMAT_VERSION``: PAX format with PAX
records only where needed (long or non-ASCII names, xattrs); integer mtimes clamped to the
build epoch; empty uname/gname; no atime/ctime; directories end in ``/``; whiteouts are empty
regular files. Headers are built from :class:`Entry` values, never from ``gettarinfo`` (which
would pull user names from the host).

The writer also enforces what a layer must never contain: duplicate paths, files named
``.wh.*``, hardlinks whose target is not earlier in the same layer or is a directory.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Callable, Iterable
from typing import BinaryIO, cast

from builder.errors import InputError
from builder.layer.entry import (
    WH_OPAQUE,
    WH_PREFIX,
    Change,
    Entry,
    Kind,
    Opaque,
    Whiteout,
    is_whiteout_name,
)
from builder.layer.hostfile import HostFile
from builder.oci.digest import Digest, HashingReader

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


_DEVICES = (tarfile.CHRTYPE, tarfile.BLKTYPE)
_USTAR_TAIL = tarfile.POSIX_MAGIC + _NUL * 64  # magic, version, empty uname and gname
_LIMIT7, _LIMIT11 = 8**7, 8**11


def _ustar(ti: tarfile.TarInfo) -> bytes | None:
    """The header ``tarfile`` would write for ``ti`` in PAX format, when no PAX record is needed.

    A byte-for-byte copy of ``TarInfo.tobuf(PAX_FORMAT)`` for the common case (ASCII names and
    links of at most 100 bytes, small numbers, no xattrs), an order of magnitude faster; anything
    else returns None and goes through ``tarfile``. tests/unit/layer/test_layer.py checks the equality.
    """
    if ti.pax_headers:
        return None
    return _fast_header(ti.name, ti.mode, ti.uid, ti.gid, ti.size, int(ti.mtime), ti.type, ti.linkname,
                        ti.devmajor, ti.devminor)


def _fast_header(name: str, mode: int, uid: int, gid: int, size: int, mtime: int, typeflag: bytes, link: str,
                 devmajor: int, devminor: int) -> bytes | None:
    """:func:`_ustar` from the fields themselves (no TarInfo): the per-entry cost of every layer."""
    if typeflag == tarfile.DIRTYPE and not name.endswith("/"):
        name += "/"
    if (len(name) > 100 or len(link) > 100 or not name.isascii() or not link.isascii()
            or not 0 <= size < _LIMIT11 or not 0 <= mtime < _LIMIT11 or not 0 <= uid < _LIMIT7
            or not 0 <= gid < _LIMIT7 or not 0 <= devmajor < _LIMIT7 or not 0 <= devminor < _LIMIT7):
        return None
    dev = b"%07o\0%07o\0" % (devmajor, devminor) if typeflag in _DEVICES else _NUL * 16
    head = b"%s%07o\0%07o\0%07o\0%011o\0%011o\0        %s%s%s%s" % (
        name.encode().ljust(100, _NUL), mode & 0o7777, uid, gid, size, mtime, typeflag,
        link.encode().ljust(100, _NUL), _USTAR_TAIL, dev,
    ) + _NUL * 167
    # the checksum is the sum of the header's bytes: here ASCII names and octal digits keep it far
    # below 65521, so adler32's low half (1 + sum, mod 65521) gives it, computed in C at once
    return head[:148] + b"%06o\0" % ((zlib.adler32(head) & 0xFFFF) - 1) + head[155:]


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
        self._digests: dict[str, Digest] = {}
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
        kind = e.kind
        link = ""
        if kind is Kind.HARDLINK:
            if self._seen.get(e.link) is not False:
                what = "is a directory" if self._seen.get(e.link) else "is not earlier in the same layer"
                raise InputError(f"hardlink '/{e.path}' -> '/{e.link}': the target {what}")
            link = e.link
        elif kind is Kind.SYMLINK:
            link = e.link
        devmajor, devminor = (e.devmajor, e.devminor) if kind in (Kind.CHAR, Kind.BLOCK) else (0, 0)
        size = e.size if kind is Kind.FILE else 0
        mtime = min(int(e.mtime), self._epoch)
        header = None if e.xattrs else _fast_header(e.path, e.mode, e.uid, e.gid, size, mtime, _TYPES[kind], link,
                                                    devmajor, devminor)
        if header is None:
            ti = _header(e.path, mtime)
            ti.type, ti.mode, ti.uid, ti.gid, ti.size, ti.linkname = _TYPES[kind], e.mode & 0o7777, e.uid, e.gid, size, link
            ti.devmajor, ti.devminor = devmajor, devminor
            if e.xattrs:
                ti.pax_headers = {
                    f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in sorted(e.xattrs)
                }
            header = ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        self._seen[e.path] = kind is Kind.DIR
        self.count += 1
        if size:
            if e.content is None:
                raise InputError(f"no content for '/{e.path}'")
            if isinstance(e.content, HostFile):
                self._copy_host(header, e.content, size, e.path)
            else:
                self._write(header)
                with e.content() as src:
                    self._copy(src, size, e.path)
        else:
            self._write(header)

    def _copy(self, src: BinaryIO, size: int, path: str) -> None:
        left = size
        while left:
            chunk = src.read(min(left, COPY_BUFSIZE))
            if not chunk:
                raise InputError(f"'/{path}' changed size while it was read")
            self._write(chunk)
            left -= len(chunk)
            if self._progress:  # per chunk: a 1 GB file is not seconds of silence
                self._progress(len(chunk))
        if size % tarfile.BLOCKSIZE:
            self._write(_NUL * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE))

    def _copy_host(self, header: bytes, src: HostFile, size: int, path: str) -> None:
        """Header, content and padding of a host file; one write when it is small (most are)."""
        if size <= COPY_BUFSIZE:
            data = src.read_all(size, path)
            self._write(header + data + _NUL * (-size % tarfile.BLOCKSIZE))
            if src.hashed:
                self._digests[src.path] = Digest.of(data)
            if self._progress:
                self._progress(size)
            return
        self._write(header)
        with src.stream() as raw:
            reader = HashingReader(raw) if src.hashed else raw
            self._copy(cast(BinaryIO, reader), size, path)
        if isinstance(reader, HashingReader):
            self._digests[src.path] = reader.digest()

    def close(self) -> dict[str, Digest]:
        """Write the end-of-archive marker (two zero blocks, padded to a record), as tarfile does.

        Returns the content digests of the ``hashed`` host files it copied, by host path.
        """
        self._write(_NUL * (2 * tarfile.BLOCKSIZE))
        if self._offset % tarfile.RECORDSIZE:
            self._write(_NUL * (tarfile.RECORDSIZE - self._offset % tarfile.RECORDSIZE))
        return dict(self._digests)


def write_tar(changes: Iterable[Change], out: BinaryIO, epoch: int,
              on_progress: Callable[[int], None] | None = None) -> int:
    """Write ``changes`` as one layer tar into ``out``; returns the number of entries."""
    writer = LayerTarWriter(out, epoch, on_progress)
    for change in changes:
        writer.add(change)
    writer.close()
    return writer.count
