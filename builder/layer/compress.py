"""Layer compression: gzip (default), zstd and none, each with one fixed, deterministic code path.

The same tar must always give the same compressed bytes, or the layer digest would change
from build to build. So: gzip through :mod:`builder.layer.pgzip` (fixed
blocks deflated in parallel by one pinned library, no name or time in the header); zstd always
streaming with a worker pool (the zstd output is identical for any worker count >= 1, and a
streamed frame never records a content size); fixed default levels. Changing any of this changes
digests: bump ``LAYER_FORMAT_VERSION``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from typing import BinaryIO, Protocol, cast

import zstandard

from builder.layer.pgzip import ParallelGzipWriter
from builder.oci.digest import Writable
from builder.oci.mediatypes import MediaType

LAYER_FORMAT_VERSION = 3
"""Bumped whenever tar header policy, compressor settings or a step's rules (3: owner names take
their passwd group; owned copies own the parents they create;
rootfs to: takes the archive root entry) change the bytes of a layer, so a
cache never replays a layer the present rules would not make."""


class Compression(StrEnum):
    """How layer blobs are compressed."""

    GZIP = "gzip"
    ZSTD = "zstd"
    NONE = "none"

    @property
    def media_type(self) -> MediaType:
        return {
            Compression.GZIP: MediaType.OCI_LAYER_GZIP,
            Compression.ZSTD: MediaType.OCI_LAYER_ZSTD,
            Compression.NONE: MediaType.OCI_LAYER,
        }[self]

    @property
    def default_level(self) -> int:
        return {Compression.GZIP: 3, Compression.ZSTD: 3, Compression.NONE: 0}[self]

    @property
    def levels(self) -> range:
        return {Compression.GZIP: range(1, 10), Compression.ZSTD: range(1, 23), Compression.NONE: range(1)}[self]


class CompressWriter(Protocol):
    """A writer that compresses into a sink; ``close`` flushes the trailer but not the sink."""

    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...

    def close(self) -> None: ...


@dataclass
class _Passthrough:
    sink: Writable

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        self.sink.write(data)
        return len(data)

    def close(self) -> None:
        pass


class _ZstdWriter:
    def __init__(self, sink: Writable, level: int) -> None:
        # One core builds the tar: zstd gets the others, but at least one worker, so that it runs
        # beside the tar. The bytes are the same for any worker count >= 1 (zstd's own guarantee,
        # checked in tests/unit/layer/test_layer.py); on 2 cores 1 worker beat 2 (50k files 2.40 s vs 2.87 s).
        workers = max(1, (os.cpu_count() or 2) - 1)
        cctx = zstandard.ZstdCompressor(level=level, threads=workers, write_checksum=True)
        self._writer = cctx.stream_writer(cast(BinaryIO, sink), closefd=False, write_return_read=True)

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        n: int = self._writer.write(data)
        return n

    def close(self) -> None:
        self._writer.close()  # type: ignore[no-untyped-call]


def compressor(kind: Compression, sink: Writable, level: int | None = None) -> CompressWriter:
    """A compressing writer of ``kind`` at ``level`` (the kind's default when None) into ``sink``."""
    lvl = kind.default_level if level is None else level
    if kind is Compression.GZIP:
        return ParallelGzipWriter(sink, lvl, threads=os.cpu_count() or 2)
    if kind is Compression.ZSTD:
        return _ZstdWriter(sink, lvl)
    return _Passthrough(sink)
