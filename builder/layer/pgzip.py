"""Parallel, deterministic gzip: the same bytes whatever the number of threads.

As pigz does: the input is cut into fixed-size blocks; each block is deflated on its own, with the
32 KiB of input before it as the preset dictionary, and ends with a sync flush (the last one
finishes the stream); the raw deflate pieces are concatenated behind one gzip header and followed by
the CRC-32 and size of the whole input. Each piece depends only on its block, the 32 KiB before it,
the level and the deflate library, never on which thread compressed it or when, so the blob (and
its digest) is reproducible while every core works. Decoders see one ordinary gzip member.

Levels 1-3 (3 is the default) use ISA-L (python-isal, pinned in pyproject.toml): it deflates
~5-10x faster than zlib's level 6 for ~8% more bytes, releases the GIL, and, being one pinned
implementation bundled in the wheel, gives the same bytes on every machine. Levels 4-9 use the
standard library's zlib (smaller, much slower; its bytes follow the system's zlib version). See
CONTRIBUTING.md for the measurements behind the choice.
"""

from __future__ import annotations

import collections
import struct
import zlib
from concurrent.futures import Future, ThreadPoolExecutor

from isal import isal_zlib

from builder.oci.digest import Writable

BLOCK_SIZE = 1 << 20
"""Part of the output format: changing it changes every gzip digest (bump LAYER_FORMAT_VERSION)."""
DICT_SIZE = 32 << 10
# gzip header: magic, CM=deflate, FLG=0 (no name, no comment), MTIME=0, XFL=0, OS=255 (unknown)
HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def _deflate(level: int, block: bytes, dictionary: bytes, last: bool) -> bytes:
    mod = isal_zlib if level <= 3 else zlib
    if dictionary:
        comp = mod.compressobj(level, mod.DEFLATED, -15, 9, 0, dictionary)
    else:
        comp = mod.compressobj(level, mod.DEFLATED, -15)
    out: bytes = comp.compress(block)
    out += comp.flush(mod.Z_FINISH if last else mod.Z_SYNC_FLUSH)
    return out


class ParallelGzipWriter:
    """A write-only gzip stream into ``sink``, deflating blocks on ``threads`` worker threads.

    At most ``2 * threads`` blocks are in flight, so memory stays bounded (a few MiB).
    ``close`` writes the last block and the trailer; it does not close ``sink``.
    """

    def __init__(self, sink: Writable, level: int, threads: int = 2) -> None:
        self._sink = sink
        self._level = level
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="pybuild-gzip")
        self._inflight: collections.deque[Future[bytes]] = collections.deque()
        self._limit = 2 * max(1, threads)
        self._buf = bytearray()
        self._tail = b""  # the last DICT_SIZE bytes of input already handed out
        self._crc = 0
        self._size = 0
        sink.write(HEADER)

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        self._buf += data
        while len(self._buf) > BLOCK_SIZE:  # keep one block back: only close() knows which is last
            self._submit(bytes(self._buf[:BLOCK_SIZE]), last=False)
            del self._buf[:BLOCK_SIZE]
        return len(data)

    def _submit(self, block: bytes, last: bool) -> None:
        self._inflight.append(self._pool.submit(_deflate, self._level, block, self._tail, last))
        self._tail = (self._tail + block)[-DICT_SIZE:]
        while len(self._inflight) >= self._limit:
            self._sink.write(self._inflight.popleft().result())

    def close(self) -> None:
        try:
            self._submit(bytes(self._buf), last=True)
            self._buf.clear()
            while self._inflight:
                self._sink.write(self._inflight.popleft().result())
            self._sink.write(struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF))
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
