"""The entry store: a hit is exactly what was put, anything damaged is a miss and goes, sharing is safe."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import builder.cache.store
import builder.fs.atomic
from builder.cache import verify
from builder.cache.disk import MAX_ENTRY
from builder.cache.store import CacheHit, LayerCache
from builder.errors import OutputError
from builder.image import LayerBlob
from builder.oci.descriptor import Descriptor
from builder.oci.digest import Digest
from tests.helpers import compress, layer_tar
from tests.unit.cache.test_verify import promptly

DATA = layer_tar({"etc/hello": b"hello\n" * 1000})
KEY = "a" * 64


def built(tmp_path: Path, compression: str = "gzip", data: bytes = DATA, diff_id: Digest | None = None) -> LayerBlob:
    """A layer as a build leaves it: a blob outside the cache, its digests known."""
    raw, media_type = compress(data, compression)
    path = tmp_path / f"built-{compression}"
    path.write_bytes(raw)
    return LayerBlob(Descriptor(media_type, Digest.of(raw), len(raw)), diff_id or Digest.of(data), path, len(data),
                     verified=True)


def stored(tmp_path: Path, compression: str = "gzip") -> tuple[LayerCache, LayerBlob]:
    cache = LayerCache(tmp_path / "cache")
    layer = built(tmp_path, compression)
    cache.put(KEY, layer)
    return cache, layer


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_a_put_then_a_get_hits_with_the_cache_s_own_copy(tmp_path, compression):
    cache, layer = stored(tmp_path, compression)
    hit = cache.get(KEY)
    assert hit is not None and hit.layer is not None
    assert (hit.layer.descriptor, hit.layer.diff_id, hit.layer.uncompressed_size) == (
        layer.descriptor, layer.diff_id, layer.uncompressed_size)
    assert hit.layer.verified and hit.layer.path == cache.blobs / layer.digest.hex
    assert hit.layer.path.read_bytes() == layer.path.read_bytes()
    assert os.stat(hit.layer.path).st_ino != os.stat(layer.path).st_ino  # never a link to the build's file
    layer.path.write_bytes(b"damage to the output")
    assert cache.get(KEY) is not None  # ... does not reach the cache


def test_a_step_that_changed_nothing_hits_with_no_layer(tmp_path):
    cache = LayerCache(tmp_path / "cache")
    assert cache.get(KEY) is None
    cache.put(KEY, None)
    assert cache.get(KEY) == CacheHit(None)
    assert not cache.blobs.exists()


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def _symlink(path: Path) -> None:
    good = path.parents[4] / "elsewhere"  # outside the cache
    path.rename(good)  # the very bytes, reached through a link
    path.symlink_to(good)


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


@pytest.mark.parametrize("warm", [False, True], ids=["first-hit", "after-a-hit"])
@pytest.mark.parametrize("damage", [_flip, _truncate, _symlink, _fifo], ids=["flipped", "truncated", "symlink", "fifo"])
def test_a_damaged_blob_is_a_miss_and_goes_with_its_entry(tmp_path, damage: Callable[[Path], None], warm: bool):
    cache, layer = stored(tmp_path)
    blob = cache.blobs / layer.digest.hex
    if warm:  # what it decompresses to is recorded: the bytes are still checked on every hit
        assert cache.get(KEY) is not None and (cache.decoded / layer.digest.hex).is_file()
    damage(blob)
    assert promptly(lambda: cache.get(KEY)) is None  # a FIFO is never waited on
    assert not os.path.lexists(blob) and list(cache.entries.iterdir()) == []
    if damage is _symlink:  # what the link pointed to is not the cache's to remove
        assert (tmp_path / "elsewhere").read_bytes() == layer.path.read_bytes()
    cache.put(KEY, layer)  # the next build's put mends it
    assert cache.get(KEY) is not None


def test_a_blob_that_is_not_the_entry_s_diff_id_is_a_miss_and_only_the_entry_goes(tmp_path):
    """The blob is its digest's (another entry may name it), but decompresses to another layer."""
    cache = LayerCache(tmp_path / "cache")
    liar = built(tmp_path, diff_id=Digest.of(b"another layer"))
    cache.put(KEY, liar)
    assert cache.get(KEY) is None
    assert list(cache.entries.iterdir()) == []
    assert (cache.blobs / liar.digest.hex).read_bytes() == liar.path.read_bytes()
    cache.put(KEY, built(tmp_path))
    assert cache.get(KEY) is not None


def spy_on_decompression(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The blobs the cache decompresses from now on (by name), in order."""
    names: list[str] = []

    def check_blob(path: Path, *args: Any) -> Any:
        names.append(path.name)
        return verify.check_blob(path, *args)

    monkeypatch.setattr(builder.cache.store, "check_blob", check_blob)
    return names


def test_a_blob_is_decompressed_on_its_first_hit_only(tmp_path, monkeypatch):
    cache, layer = stored(tmp_path)
    decompressed = spy_on_decompression(monkeypatch)
    for _ in range(3):
        hit = cache.get(KEY)
        assert hit is not None and hit.layer is not None and hit.layer.diff_id == layer.diff_id
    assert decompressed == [layer.digest.hex]
    # another entry naming the same blob agrees with the record: no decompression either
    cache.put("b" * 64, layer)
    assert cache.get("b" * 64) is not None and len(decompressed) == 1


def test_an_entry_that_disagrees_with_its_blob_s_record_is_decompressed_and_goes(tmp_path):
    cache, layer = stored(tmp_path)
    assert cache.get(KEY) is not None  # recorded
    path = cache.entries / f"{KEY}.json"
    entry = json.loads(path.read_bytes())
    path.write_text(json.dumps({**entry, "diff_id": str(Digest.of(b"another layer"))}))
    assert cache.get(KEY) is None
    assert not path.exists() and (cache.blobs / layer.digest.hex).is_file()  # the blob is good: it stays


@pytest.mark.parametrize("record", [b"{garbage", b"{}", json.dumps({"diff_id": str(Digest.of(b"x"))}).encode()],
                         ids=["not-json", "empty", "wrong"])
def test_a_damaged_record_costs_a_decompression_never_a_miss(tmp_path, monkeypatch, record: bytes):
    cache, layer = stored(tmp_path)
    assert cache.get(KEY) is not None
    (cache.decoded / layer.digest.hex).write_bytes(record)
    decompressed = spy_on_decompression(monkeypatch)
    assert cache.get(KEY) is not None and decompressed == [layer.digest.hex]
    assert cache.get(KEY) is not None and decompressed == [layer.digest.hex]  # recorded again


@pytest.mark.parametrize("entry", [
    b"{not json",
    b"[]",
    json.dumps({"digest": "sha256:" + "0" * 64}).encode(),
    json.dumps({"empty": True, "pad": "x" * MAX_ENTRY}).encode(),
], ids=["not-json", "not-an-object", "missing-fields", "too-large"])
def test_an_entry_pybuild_did_not_write_is_a_miss_and_goes(tmp_path, entry: bytes):
    cache, _ = stored(tmp_path)
    (cache.entries / f"{KEY}.json").write_bytes(entry)
    assert cache.get(KEY) is None
    assert list(cache.entries.iterdir()) == []


def test_an_entry_that_is_a_fifo_is_a_miss_not_a_wait(tmp_path):
    cache, _ = stored(tmp_path)
    path = cache.entries / f"{KEY}.json"
    path.unlink()
    os.mkfifo(path)
    assert promptly(lambda: cache.get(KEY)) is None
    assert not os.path.lexists(path)


def test_a_hit_marks_its_entry_used(tmp_path):
    """prune() drops the least recently used first: a hit must count as a use."""
    cache, _ = stored(tmp_path)
    path = cache.entries / f"{KEY}.json"
    os.utime(path, (1000, 1000))
    assert cache.get(KEY) is not None
    assert path.stat().st_mtime > time.time() - 60


def test_a_put_replaces_what_was_planted_at_its_blob(tmp_path):
    cache = LayerCache(tmp_path / "cache")
    layer = built(tmp_path)
    cache.blobs.mkdir(parents=True)
    (tmp_path / "secret").write_bytes(b"not yours")
    (cache.blobs / layer.digest.hex).symlink_to(tmp_path / "secret")
    cache.put(KEY, layer)
    assert not (cache.blobs / layer.digest.hex).is_symlink()
    assert (tmp_path / "secret").read_bytes() == b"not yours"
    assert cache.get(KEY) is not None


def test_concurrent_puts_of_one_key_all_succeed_and_the_entry_verifies(tmp_path, monkeypatch):
    """Builds sharing a cache store the same step at the same moment: no put may fail or tear another's."""
    real_clone = builder.fs.atomic.clone_file  # what builder.cache.store calls

    def slow_clone(*args: Any) -> None:  # a big layer: every put is mid-copy while the others start theirs
        real_clone(*args)
        time.sleep(0.02)

    monkeypatch.setattr(builder.cache.store, "clone_file", slow_clone)
    cache = LayerCache(tmp_path / "cache")
    threads, rounds = 6, 5
    layers = {}  # (round, thread) -> a blob of that round's layer, made by that thread's build
    for r in range(rounds):
        data = layer_tar({"big": os.urandom(1 << 16)})
        for t in range(threads):
            (tmp_path / f"{r}-{t}").mkdir()
            layers[r, t] = built(tmp_path / f"{r}-{t}", "none", data)
    start = threading.Barrier(threads)
    errors: list[OutputError] = []
    hits: list[CacheHit | None] = []

    def build(t: int) -> None:
        for r in range(rounds):
            start.wait()  # every build puts this round's layer at once: its blob is not there yet
            try:
                cache.put(f"{r:064}", layers[r, t])
            except OutputError as exc:  # what a failed put raises: collected, asserted below
                errors.append(exc)
            hits.append(cache.get(f"{r:064}"))

    workers = [threading.Thread(target=build, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    assert len(hits) == threads * rounds and all(hit is not None for hit in hits)
    assert all(cache.get(f"{r:064}") is not None for r in range(rounds))
    assert sorted(p.name for p in cache.blobs.iterdir()) == sorted({layer.digest.hex for layer in layers.values()})
    assert len(list(cache.entries.iterdir())) == rounds  # no temp file left


def test_shapes_are_known_once_added(tmp_path):
    cache = LayerCache(tmp_path / "cache")
    assert not cache.knows_shape("s" * 64)
    cache.add_shape("s" * 64)
    assert cache.knows_shape("s" * 64) and not cache.knows_shape("t" * 64)
    marker = cache.shapes / ("s" * 64)
    os.utime(marker, (1000, 1000))
    assert cache.knows_shape("s" * 64)
    assert marker.stat().st_mtime > time.time() - 60  # a probe is a use: prune keeps the marker


def test_a_cache_that_cannot_be_written_says_where(tmp_path):
    (tmp_path / "cache").write_text("a file, not a directory")
    cache = LayerCache(tmp_path / "cache")
    prefix = f"cannot write the layer cache in {str(tmp_path / 'cache')!r}: "
    with pytest.raises(OutputError) as put:
        cache.put(KEY, built(tmp_path))
    with pytest.raises(OutputError) as shape:
        cache.add_shape("s" * 64)
    assert str(put.value).startswith(prefix) and str(shape.value).startswith(prefix)
    assert cache.get(KEY) is None and not cache.knows_shape("s" * 64)
