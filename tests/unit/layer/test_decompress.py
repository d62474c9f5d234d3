"""open_decompressed: every format decodes to what the standard modules decode, on a read-ahead
thread, with errors where they happen in the stream and nothing left running after close."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import shutil
import subprocess
import threading
import zlib
from collections.abc import Iterator

import pytest
import zstandard

from builder.layer.decompress import ReadAhead, open_decompressed

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
def test_decodes_like_the_standard_modules(compress) -> None:
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
        _read_all(gzip.compress(b"one") + b"garbage, more than a header's worth")
    with pytest.raises(EOFError):  # shorter than a gzip header: a truncated member
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
def test_truncated_stream_gives_the_bytes_before_then_eoferror(compress) -> None:
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


# --- multi-block xz, decoded in parallel (builder/layer/xzblocks.py) ---------------------------

def _xz_file(tmp_path, data: bytes, name: str = "f.xz"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _decode_file(path) -> bytes:
    out = bytearray()
    with open(path, "rb") as raw, open_decompressed(raw) as stream:
        while chunk := stream.read(1 << 20):
            out += chunk
    return bytes(out)


PARTS = [os.urandom(1 << 20) + b"a" * (3 << 20), b"b" * 100, os.urandom(5000) * 300]


def test_concatenated_streams_decode_in_parallel_and_in_order(tmp_path) -> None:
    from builder.layer import xzblocks

    data = lzma.compress(PARTS[0]) + b"\0" * 8 + lzma.compress(PARTS[1]) + lzma.compress(PARTS[2])
    path = _xz_file(tmp_path, data)
    with open(path, "rb") as f:
        found = xzblocks.blocks(f.fileno(), len(data))
    assert found is not None and [b.uncompressed for b in found] == [len(p) for p in PARTS]
    assert _decode_file(path) == b"".join(PARTS)
    serial = bytearray()  # the serial decoder (a non-seekable source) agrees, padding included
    with open_decompressed(io.BytesIO(data)) as stream:
        while chunk := stream.read(1 << 20):
            serial += chunk
    assert bytes(serial) == b"".join(PARTS)


@pytest.mark.skipif(not shutil.which("xz"), reason="xz not installed")
def test_xz_threaded_blocks_decode_like_xz(tmp_path) -> None:
    from builder.layer import xzblocks

    raw = b"".join(PARTS) * 3
    made = subprocess.run(["xz", "-T2", "--block-size=1MiB", "-c"], input=raw, capture_output=True, check=True)
    path = _xz_file(tmp_path, made.stdout)
    with open(path, "rb") as f:
        found = xzblocks.blocks(f.fileno(), len(made.stdout))
    assert found is not None and len(found) > 4
    assert _decode_file(path) == raw


def test_a_corrupt_block_is_an_error_after_the_blocks_before_it(tmp_path) -> None:
    first, second = lzma.compress(PARTS[0]), bytearray(lzma.compress(PARTS[2]))
    second[len(second) // 2] ^= 0x55
    path = _xz_file(tmp_path, first + bytes(second))
    got = bytearray()
    with pytest.raises(lzma.LZMAError), open(path, "rb") as raw, open_decompressed(raw) as stream:
        while chunk := stream.read(1 << 20):
            got += chunk
    assert bytes(got[: len(PARTS[0])]) == PARTS[0]


def test_an_index_that_lies_about_a_size_is_an_error(tmp_path) -> None:
    from builder.layer import xzblocks

    second = bytearray(lzma.compress(PARTS[1]))  # index: 0x00, count 1, unpadded, uncompressed=100
    backward = (int.from_bytes(second[-8:-4], "little") + 1) * 4
    start = len(second) - 12 - backward
    index = bytearray(second[start:start + backward])
    assert index[:2] == b"\0\x01"
    _, at = xzblocks._read_mbi(bytes(index), 2)
    assert index[at] == 100
    index[at] = 101  # one byte more than the block holds
    index[-4:] = xzblocks._crc(bytes(index[:-4]))
    second[start:start + backward] = index
    path = _xz_file(tmp_path, lzma.compress(PARTS[0]) + bytes(second))
    with open(path, "rb") as f:
        assert xzblocks.blocks(f.fileno(), path.stat().st_size) is not None  # well-formed, so parallel
    with pytest.raises(lzma.LZMAError):
        _decode_file(path)


def test_truncated_or_trailing_garbage_falls_back_to_the_serial_decoder(tmp_path) -> None:
    data = lzma.compress(PARTS[0]) + lzma.compress(PARTS[2])
    with pytest.raises(EOFError):
        _decode_file(_xz_file(tmp_path, data[:-100], "t.xz"))
    assert _decode_file(_xz_file(tmp_path, data + b"junk after", "g.xz")) == PARTS[0] + PARTS[2]
