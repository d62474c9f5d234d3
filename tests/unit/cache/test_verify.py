"""A hit's check: which file is wrong, the blob or its entry, decides what the cache removes."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import builder.cache.verify
import builder.layer.decompress
from builder.cache.verify import check_blob
from builder.oci.descriptor import Descriptor
from builder.oci.digest import Digest
from builder.oci.mediatypes import MediaType
from tests.helpers import compress, layer_tar

DATA = layer_tar({"etc/hello": b"hello\n" * 1000})
DIFF_ID = Digest.of(DATA)
COMPRESSIONS = ["gzip", "zstd", "none"]
T = TypeVar("T")


def promptly(call: Callable[[], T]) -> T:
    """``call()``'s result; a call that waits on a FIFO fails the test instead of hanging it."""
    result: list[T] = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "still waiting after 10 s"
    return result[0]


def blob(tmp_path: Path, compression: str = "gzip", data: bytes = DATA) -> tuple[Path, Descriptor]:
    raw, media_type = compress(data, compression)
    path = tmp_path / "blob"
    path.write_bytes(raw)
    return path, Descriptor(media_type, Digest.of(raw), len(raw))


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_the_layer_its_entry_names_is_ok(tmp_path, compression):
    path, desc = blob(tmp_path, compression)
    assert check_blob(path, desc, DIFF_ID, len(DATA)) == "ok"
    assert check_blob(path, desc, DIFF_ID, None) == "ok"  # an entry without the uncompressed size


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_bytes_that_are_not_the_blobs_digest_are_a_bad_blob(tmp_path, compression):
    path, desc = blob(tmp_path, compression)
    raw = path.read_bytes()
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0x01
    for damaged in (bytes(flipped), raw[:-1], raw + b"\0"):
        path.write_bytes(damaged)
        assert check_blob(path, desc, DIFF_ID, len(DATA)) == "blob"


def test_only_a_regular_file_is_read(tmp_path):
    path, desc = blob(tmp_path)
    good = tmp_path / "good"
    path.rename(good)
    path.symlink_to(good)  # the right bytes, through a link: still not served
    assert check_blob(path, desc, DIFF_ID, len(DATA)) == "blob"
    path.unlink()
    assert check_blob(path, desc, DIFF_ID, len(DATA)) == "blob"  # gone
    path.mkdir()
    assert check_blob(path, desc, DIFF_ID, len(DATA)) == "blob"
    path.rmdir()
    os.mkfifo(path)
    assert promptly(lambda: check_blob(path, desc, DIFF_ID, len(DATA))) == "blob"


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_a_right_blob_under_a_wrong_entry_is_a_bad_entry(tmp_path, compression):
    path, desc = blob(tmp_path, compression)
    assert check_blob(path, desc, Digest.of(b"another layer"), len(DATA)) == "entry"
    assert check_blob(path, desc, DIFF_ID, len(DATA) + 1) == "entry"
    assert check_blob(path, desc, DIFF_ID, len(DATA) - 1) == "entry"


@pytest.mark.parametrize(("compression", "media_type"), [
    ("gzip", MediaType.OCI_LAYER_ZSTD),
    ("zstd", MediaType.OCI_LAYER_GZIP),
    ("none", MediaType.OCI_LAYER_GZIP),
    ("gzip", MediaType.OCI_LAYER),  # read as a tar, its digest is not the diff_id
    ("none", MediaType.DOCKER_LAYER),  # the right bytes, but not a media type pybuild writes
])
def test_a_media_type_that_is_not_the_blobs_is_a_bad_entry(tmp_path, compression, media_type):
    path, desc = blob(tmp_path, compression)
    for unpacked in (len(DATA), None):
        assert check_blob(path, Descriptor(media_type, desc.digest, desc.size), DIFF_ID, unpacked) == "entry"


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_decode_cut_short_still_hashes_the_whole_blob(tmp_path, compression):
    """An entry whose uncompressed size is too small stops the decoding early; the blob is still hashed
    to its end, so it is found right (only the entry goes), however much the read-ahead had not reached."""
    data = os.urandom(16 << 20)
    path, desc = blob(tmp_path, compression, data)
    assert check_blob(path, desc, Digest.of(data), 1000) == "entry"


@pytest.mark.parametrize(("compression", "damage"), [
    ("gzip", lambda raw: raw[: len(raw) // 2]),
    ("gzip", lambda raw: raw[:8] + b"\xff" * 64),
    ("zstd", lambda raw: raw[:8] + b"\xff" * 64),
], ids=["gzip-truncated", "gzip-garbage", "zstd-garbage"])
def test_a_blob_that_does_not_decode_is_a_bad_blob(tmp_path, compression, damage):
    """Its digest is right (the entry was written for these bytes), but no layer comes out of them."""
    path, desc = blob(tmp_path, "none", damage(compress(DATA, compression)[0]))
    desc = Descriptor(compress(b"", compression)[1], desc.digest, desc.size)
    assert check_blob(path, desc, DIFF_ID, len(DATA)) == "blob"


def test_a_bomb_is_read_no_further_than_the_recorded_size(tmp_path, monkeypatch):
    """A planted blob and entry cannot make a hit decode for ever: one byte past the entry's size is enough."""
    decoded: list[int] = []
    real = builder.layer.decompress.open_decompressed  # what builder.cache.verify calls

    @contextlib.contextmanager
    def counting(source: Any) -> Iterator[Any]:
        with real(source) as stream:
            class Counted:
                def read(self, n: int = -1) -> bytes:
                    data = stream.read(n)
                    decoded.append(len(data))
                    return data
            yield Counted()

    monkeypatch.setattr(builder.cache.verify, "open_decompressed", counting)
    path, desc = blob(tmp_path, "zstd", bytes(32 << 20))
    assert check_blob(path, desc, DIFF_ID, 1000) == "entry"
    assert sum(decoded) == 1001
