"""Streaming the members of an untrusted tar with ``tarfile``, without its unbounded corners.

Every reader of archives (the rootfs step, the base-layer scan, layer application) walks a
stream with ``tarfile.open(mode="r|")``, and in that mode ``tarfile`` (3.11 to 3.13):

- skips the content of a member nobody read with a loop of 10 KiB reads that does not stop at
  the end of the stream, so a header that claims 2**62 bytes spins for ever;
- reads a PAX or GNU long-name record, or a sparse map, whole into memory, however large its
  header says it is: one such header in front of a gzip bomb holds the whole bomb in memory;
- lets a chain of PAX headers recurse until RecursionError, and a truncated sparse header
  fail with IndexError or ValueError, none of which is a ``TarError``;
- takes a corrupt or cut header after the first member for the end of the archive, so what
  follows is silently dropped (GNU tar and Go's ``archive/tar`` report an error): the image would
  not hold what other tools see in the same archive.

:func:`tar_members` bounds each header with its records to :data:`MAX_HEADER` bytes (Go's
``archive/tar`` refuses such records above 1 MiB too), reads past unread content itself, 1 MiB
at a time, stopping at the real end of the stream, and reports all of the above as
``tarfile.ReadError``, which every caller already turns into an error naming the archive.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from typing import BinaryIO, Self

MAX_HEADER = (1 << 20) + 4 * tarfile.RECORDSIZE
"""The most one member's headers (with PAX and GNU records, sparse maps) may take: 1 MiB, plus
what tarfile reads ahead."""
_CHUNK = 1 << 20


class _HeaderBudget:
    """The stream under tarfile: counts what tarfile reads while it parses one member's headers."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.left: int | None = MAX_HEADER  # tarfile.open() parses the first member: counted too

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if self.left is not None:
            self.left -= len(data)
            if self.left < 0:
                raise tarfile.ReadError(f"a member's headers take more than {MAX_HEADER} bytes")
        return data


class _StrictTarInfo(tarfile.TarInfo):
    """A corrupt or truncated header is an error wherever it is; only zeros (or nothing) end the archive."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        if 0 < len(buf) < tarfile.BLOCKSIZE:
            raise tarfile.ReadError("truncated tar header")
        if buf.count(0) < len(buf):  # neither a zero block (the end-of-archive marker) nor the end of the stream
            try:
                return super().frombuf(buf, encoding, errors)
            except tarfile.HeaderError as exc:
                raise tarfile.ReadError(f"corrupt tar header ({exc})") from None
        return super().frombuf(buf, encoding, errors)


def tar_members(stream: BinaryIO) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """``(tarfile, member)`` for each member of the uncompressed tar ``stream``, in order.

    The caller may read a regular member's content with ``tf.extractfile(member)`` before asking
    for the next one, or not; what it leaves is read past here. Names are decoded with
    ``surrogateescape``. Members are not kept: memory stays flat however long the archive.
    """
    budget = _HeaderBudget(stream)
    try:
        with tarfile.open(fileobj=budget, mode="r|", errors="surrogateescape",
                          tarinfo=_StrictTarInfo) as tf:  # type: ignore[call-overload]
            while True:
                budget.left = MAX_HEADER
                ti = tf.next()
                budget.left = None
                if ti is None:
                    return
                yield tf, ti
                tf.members.clear()
                left = tf.offset - tf.fileobj.tell()  # tf.offset: where the next header starts
                while left > 0:
                    got = len(tf.fileobj.read(min(left, _CHUNK)))
                    if not got:
                        raise tarfile.ReadError("unexpected end of data")
                    left -= got
    except (IndexError, ValueError, RecursionError) as exc:  # raised by tarfile's header parsing
        raise tarfile.ReadError(f"malformed header ({type(exc).__name__}: {exc})") from None
