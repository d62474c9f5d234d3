"""open_decompressed: every format decodes to what the standard modules decode, on a read-ahead
thread, with errors where they happen in the stream and nothing left running after close."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import threading
import zlib
from collections.abc import Iterator

import pytest
import zstandard

from builder.layer.compress import ReadAhead, open_decompressed

PAYLOAD = os.urandom(3 << 20) + b"tar" * 2_000_000  # incompressible and compressible parts, > several chunks


def _read_all(data: bytes, step: int = 777_777) -> bytes:
    out = bytearray()
    with open_decompressed(io.BytesIO(data)) as stream:
        while chunk := stream.read(step):
            out += chunk
    return bytes(out)


@pytest.mark.parametrize("compress", [
    gzip.compress, lzma.compress, bz2.compress, zstandard.ZstdCompressor().compress, lambda b: b,
], ids=["gzip", "xz", "bzip2", "zstd", "none"])
def test_decodes_like_the_standard_modules(compress) -> None:  # type: ignore[no-untyped-def]
    assert _read_all(compress(PAYLOAD)) == PAYLOAD


def test_read_all_at_once_and_readinto() -> None:
    data = gzip.compress(PAYLOAD)
    with open_decompressed(io.BytesIO(data)) as stream:
        head = bytearray(1000)
        assert stream.readinto(head) == 1000  # type: ignore[attr-defined]
        assert bytes(head) + stream.read() == PAYLOAD
        assert stream.read(10) == b""


def test_gzip_members_and_zero_padding_as_gzip_reads_them() -> None:
    data = gzip.compress(b"one ") + b"\0" * 5000 + gzip.compress(b"two") + b"\0" * 3
    assert _read_all(data) == gzip.decompress(data) == b"one two"


def test_gzip_garbage_after_a_member_is_an_error() -> None:
    with pytest.raises(zlib.error):
        _read_all(gzip.compress(b"one") + b"garbage")


def test_xz_streams_concatenated_and_trailing_garbage_ignored_as_lzma_does() -> None:
    data = lzma.compress(b"a" * 10) + lzma.compress(b"b" * 10)
    assert _read_all(data) == lzma.decompress(data) == b"a" * 10 + b"b" * 10
    assert _read_all(data + b"not xz") == b"a" * 10 + b"b" * 10


def test_zstd_frames_concatenated() -> None:
    c = zstandard.ZstdCompressor()
    assert _read_all(c.compress(b"x" * 100) + c.compress(b"y" * 100)) == b"x" * 100 + b"y" * 100


@pytest.mark.parametrize("compress", [gzip.compress, lzma.compress, bz2.compress],
                         ids=["gzip", "xz", "bzip2"])
def test_truncated_stream_gives_the_bytes_before_then_eoferror(compress) -> None:  # type: ignore[no-untyped-def]
    data = compress(PAYLOAD)[: -200]
    got = bytearray()
    with pytest.raises(EOFError), open_decompressed(io.BytesIO(data)) as stream:
        while chunk := stream.read(1 << 16):
            got += chunk
    assert len(got) >= 1 << 20 and PAYLOAD.startswith(bytes(got))


def test_corrupt_xz_raises_the_decoders_own_error() -> None:
    data = bytearray(lzma.compress(PAYLOAD))
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(lzma.LZMAError):
        _read_all(bytes(data))


def test_close_mid_stream_stops_the_thread_and_leaves_raw_open() -> None:
    raw = io.BytesIO(gzip.compress(PAYLOAD * 4))
    before = threading.active_count()
    stream = open_decompressed(raw)
    assert stream.read(10) == PAYLOAD[:10]
    stream.close()
    assert threading.active_count() == before
    assert not raw.closed
    raw.read()  # the caller may go on reading (and hashing) what is left


def test_the_decoder_runs_ahead_of_the_reader_but_boundedly() -> None:
    produced: list[int] = []

    def chunks() -> Iterator[bytes]:
        for i in range(100):
            produced.append(i)
            yield b"x" * 10

    ahead = ReadAhead(chunks(), depth=3)
    assert ahead.read(5) == b"xxxxx"
    for _ in range(100):
        if len(produced) >= 5:
            break
        threading.Event().wait(0.01)
    assert 4 <= len(produced) <= 6  # one being read, three queued, one waiting to be put
    ahead.close()
