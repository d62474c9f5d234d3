"""The blob store: nothing is served that does not hash to its name; bad files go; writes are atomic."""

from __future__ import annotations

import os
from pathlib import Path

from builder.blobstore import BlobStore, store_root
from builder.oci.digest import Digest

DATA = b"some blob content\n" * 100
DIGEST = Digest.of(DATA)


def _store(tmp_path: Path) -> BlobStore:
    store = BlobStore(tmp_path / "cache")
    store.put(DIGEST, DATA)
    return store


def test_put_then_get_and_read(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.get(DIGEST, len(DATA)) == tmp_path / "cache/blobs/sha256" / DIGEST.hex
    assert store.read(DIGEST, 1 << 20) == DATA
    assert not store.is_empty()
    assert [p.name for p in store.path(DIGEST).parent.iterdir()] == [DIGEST.hex]  # no temp file left


def test_absent_and_empty(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "nothing")
    assert store.is_empty()
    assert store.get(DIGEST, None) is None and store.read(DIGEST, 100) is None


def test_damaged_blob_is_a_miss_and_removed(tmp_path: Path) -> None:
    store = _store(tmp_path)
    path = store.path(DIGEST)
    path.write_bytes(DATA[:-1] + b"?")  # same size, other content
    assert store.get(DIGEST, len(DATA)) is None
    assert not path.exists()


def test_wrong_size_or_too_large_is_a_miss(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.get(DIGEST, len(DATA) - 1) is None  # the descriptor says otherwise: not this blob
    store.put(DIGEST, DATA)
    assert store.read(DIGEST, 10) is None  # more than a manifest may be


def test_fifo_and_symlink_are_never_read_and_removed(tmp_path: Path) -> None:
    store = _store(tmp_path)
    path = store.path(DIGEST)
    path.unlink()
    os.mkfifo(path)
    assert store.get(DIGEST, len(DATA)) is None  # returns at once: the FIFO is not opened for reading
    assert not path.exists()
    (tmp_path / "elsewhere").write_bytes(DATA)
    path.symlink_to(tmp_path / "elsewhere")
    assert store.read(DIGEST, 1 << 20) is None
    assert not path.is_symlink() and (tmp_path / "elsewhere").exists()


def test_adopt_clones_and_verifies(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "cache")
    source = tmp_path / "layout-blob"
    source.write_bytes(DATA)
    assert store.adopt(source, DIGEST, len(DATA)) == store.path(DIGEST)
    assert store.path(DIGEST).read_bytes() == DATA
    assert os.stat(source).st_ino != os.stat(store.path(DIGEST)).st_ino  # a copy, never a link
    source.write_bytes(b"x" * len(DATA))
    other = BlobStore(tmp_path / "cache2")
    assert other.adopt(source, DIGEST, len(DATA)) is None
    assert other.adopt(tmp_path / "missing", DIGEST, len(DATA)) is None
    assert not other.path(DIGEST).exists()
    assert list(other.path(DIGEST).parent.iterdir()) == []


def test_store_root_needs_a_usable_directory(tmp_path: Path) -> None:
    assert store_root(tmp_path / "cache") == tmp_path / "cache"
    assert (tmp_path / "cache/blobs/sha256").is_dir()
    (tmp_path / "file").write_bytes(b"")
    assert store_root(tmp_path / "file") is None  # not a directory: the pull keeps its blobs in the workdir
