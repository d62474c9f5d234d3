"""Reading compressed streams: tarballs (gzip, zstd, xz, bzip2, or none, told by content) and layers.

Every decoder runs on a thread of its own (:class:`ReadAhead`) in large GIL-free steps, beside
whoever parses the tar; multi-block xz files decode on every core (:mod:`builder.layer.xzblocks`).
The bytes are exactly those of the standard modules (gzip, LZMAFile, BZ2File, zstd frames read
across), errors included: tests/unit/layer/test_decompress.py holds each decoder to them.
"""

from __future__ import annotations

import bz2
import io
import lzma
import os
import queue
import threading
import zlib
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, cast

import zstandard
from isal import isal_zlib

from builder.layer.xzblocks import parallel_chunks

MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"BZh", "bzip2"),
)


def sniff(head: bytes) -> str:
    """Name the compression of a stream from its first bytes: gzip, zstd, xz, bzip2 or none."""
    for magic, name in MAGIC:
        if head.startswith(magic):
            return name
    return "none"


DECODE_ERRORS: tuple[type[Exception], ...] = (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError,
                                              zstandard.ZstdError)
"""What reading a stream from :func:`open_decompressed` can raise for damaged or truncated input
(bzip2 reports through OSError), so every reader of archives catches the same set."""


def open_decompressed(raw: BinaryIO) -> BinaryIO:
    """Wrap a (possibly compressed) binary stream so reads return the uncompressed bytes.

    Detection is by content, never by file name: a ``.tar.gz`` that is really xz still works.
    ``raw`` must support ``peek`` or be seekable for the sniff. A compressed stream is decoded on
    a thread of its own (:class:`ReadAhead`), beside whoever parses the tar; close the result
    before reading ``raw`` again. Closing the result never closes ``raw``.
    """
    kind = sniff(_peek(raw, 6))
    if kind == "none":
        return cast(BinaryIO, _Borrowed(raw))
    return cast(BinaryIO, ReadAhead(_DECODERS[kind](raw)))


_IN = 1 << 20
_OUT = 4 << 20
_TRUNCATED = "Compressed file ended before the end-of-stream marker was reached"


def _gzip_chunks(raw: BinaryIO) -> Iterator[bytes]:
    """Decoded gzip members, one after another, as the gzip module reads them (zero padding
    between or after members allowed) but in 1 MiB steps: each step is one long stretch without
    the GIL, where GzipFile's 8 KiB reads would hand the GIL back and forth thousands of times.

    Inflated by ISA-L (already pinned for compression; it checks the CRC32 and length trailers
    as zlib does), 2.2x faster than zlib: 148 MB of layer in 0.52 s against 1.14 s. Its errors
    are raised as ``zlib.error``, which every reader of archives already handles.
    """
    try:
        yield from _inflate(raw)
    except _INFLATE_ERROR as exc:
        raise zlib.error(str(exc)) from exc


_INFLATE_ERROR = cast(type[Exception], isal_zlib.error)


def _inflate(raw: BinaryIO) -> Iterator[bytes]:
    d = isal_zlib.decompressobj(31)
    while True:
        if d.eof:
            rest = d.unused_data.lstrip(b"\0")
            while not rest:
                more = raw.read(_IN)
                if not more:
                    return
                rest = more.lstrip(b"\0")
            d = isal_zlib.decompressobj(31)
            data = d.decompress(rest, _OUT)
        elif d.unconsumed_tail:
            data = d.decompress(d.unconsumed_tail, _OUT)
        else:
            data = d.decompress(_more(raw), _OUT)
        if data:
            yield data


def _more(raw: BinaryIO) -> bytes:
    """The next input block of a stream that has not ended: none means the file is truncated."""
    block = raw.read(_IN)
    if not block:
        raise EOFError(_TRUNCATED)
    return block


def _stream_chunks(raw: BinaryIO, make: Callable[[], Any], trailing_error: type[Exception], *,
                   padding: bool = False) -> Iterator[bytes]:
    """Decoded xz or bzip2 streams, one after another, as LZMAFile and BZ2File read them (data after
    the last stream that is not a stream is ignored), in 1 MiB steps (see :func:`_gzip_chunks`).

    With ``padding`` (xz), zero bytes between streams in groups of four are stream padding, as the
    xz format and ``xz -d`` have them (LZMAFile would stop there); so the serial and the parallel
    (:mod:`builder.layer.xzblocks`) decoders give the same bytes for every file.
    """
    d = make()
    while True:
        if d.eof:
            rest = d.unused_data or raw.read(_IN)
            zeros = 0
            while padding and rest and not rest.lstrip(b"\0"):  # all padding so far: read on
                zeros += len(rest)
                rest = raw.read(_IN)
            if padding and rest:
                stripped = rest.lstrip(b"\0")
                zeros += len(rest) - len(stripped)
                if zeros % 4:
                    return  # not padding: trailing data, ignored as LZMAFile does
                rest = stripped
            if not rest:
                return
            d = make()
            try:
                data = d.decompress(rest, _OUT)
            except trailing_error:
                return
        else:
            data = d.decompress(_more(raw) if d.needs_input else b"", _OUT)
        if data:
            yield data


def _xz_chunks(raw: BinaryIO) -> Iterator[bytes]:
    """Blocks decoded on every core when the file is multi-block (see :mod:`builder.layer.xzblocks`)."""
    parallel = parallel_chunks(raw, os.cpu_count() or 1)
    return parallel if parallel is not None else _stream_chunks(raw, lzma.LZMADecompressor, lzma.LZMAError, padding=True)


def _bzip2_chunks(raw: BinaryIO) -> Iterator[bytes]:
    return _stream_chunks(raw, bz2.BZ2Decompressor, OSError)


def _zstd_chunks(raw: BinaryIO) -> Iterator[bytes]:
    reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=_IN, read_across_frames=True, closefd=False)
    while chunk := reader.read(_OUT):
        yield chunk


_DECODERS: dict[str, Callable[[BinaryIO], Iterator[bytes]]] = {
    "gzip": _gzip_chunks, "zstd": _zstd_chunks, "xz": _xz_chunks, "bzip2": _bzip2_chunks,
}


class ReadAhead(io.RawIOBase):
    """Runs a decoder (an iterator of byte chunks) on a worker thread, a few MiB ahead of the reader.

    Decompressors (zlib, liblzma, libzstd, libbz2) release the GIL while they decode, so an
    xz rootfs decodes on one core while the tar is parsed, hashed and recompressed on the other:
    the step costs about the decode alone instead of decode + everything else. Memory stays
    bounded (``depth`` chunks). Errors reach the reader exactly where they happened in the
    stream: after the bytes that came before them, as the same exception. ``close`` stops and
    joins the thread.
    """

    def __init__(self, chunks: Iterator[bytes], depth: int = 4) -> None:
        super().__init__()
        self._chunks = chunks
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._chunk = memoryview(b"")
        self._done = False
        self._thread = threading.Thread(target=self._fill, name="pybuild-readahead", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        while not self._stop.is_set():
            try:
                item: bytes | BaseException = next(self._chunks, b"")
            except BaseException as exc:  # noqa: BLE001 - re-raised in the reader's thread
                item = exc
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if not item or isinstance(item, BaseException):
                return

    def readable(self) -> bool:
        return True

    def _next(self) -> bool:
        """Load the next chunk; False at the end of the stream."""
        if self._done:
            return False
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if not item:
            self._done = True
            return False
        self._chunk = memoryview(item)
        return True

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            parts = [bytes(self._chunk)]
            while self._next():
                parts.append(bytes(self._chunk))
            self._chunk = memoryview(b"")
            return b"".join(parts)
        if not self._chunk and (n == 0 or not self._next()):
            return b""
        out = self._chunk[:n]
        self._chunk = self._chunk[len(out):]
        return bytes(out)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._stop.set()
            self._thread.join()
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()  # a decoder's own threads (see xzblocks) stop now, not when collected
        super().close()


class _Borrowed(io.RawIOBase):
    """An uncompressed stream as it is, except that closing it leaves ``raw`` open."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._raw = raw

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        return self._raw.read(-1 if n is None else n)

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _peek(raw: BinaryIO, n: int) -> bytes:
    if raw.seekable():
        pos = raw.tell()
        head = raw.read(n)
        raw.seek(pos)
        return head
    peek = getattr(raw, "peek", None)
    if peek is None:
        raise ValueError("stream is neither seekable nor peekable")
    data: bytes = peek(n)
    return data[:n]
