"""Prune's rules, each on a small cache built by hand: what is reachable or recent stays, the rest goes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from builder.cache.store import LayerCache
from builder.image import LayerBlob
from builder.oci.descriptor import Descriptor
from builder.oci.digest import Digest
from builder.oci.mediatypes import MediaType

DAY = 86400


def aged(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)
    return path


@pytest.fixture
def cache(tmp_path: Path) -> LayerCache:
    return LayerCache(tmp_path / "cache")


def put(cache: LayerCache, key: str, content: bytes | None, age: float) -> Path:
    """An entry used ``age`` seconds ago; its blob (uncompressed: ``content`` itself) is fresh."""
    layer = None
    if content is not None:
        source = cache.root.parent / f"built-{key}"
        source.write_bytes(content)
        digest = Digest.of(content)
        layer = LayerBlob(Descriptor(MediaType.OCI_LAYER, digest, len(content)), digest, source, len(content))
    cache.put(key, layer)
    return aged(cache.entries / f"{key}.json", age)


def blob(cache: LayerCache, content: bytes) -> Path:
    return cache.blobs / Digest.of(content).hex


def keys(cache: LayerCache) -> list[str]:
    return sorted(p.stem for p in cache.entries.iterdir())


X, Y, Z = b"x" * 1000, b"y" * 1000, b"z" * 1000


def test_a_plain_prune_keeps_every_reachable_entry_and_any_blob_a_build_may_be_adding(cache):
    put(cache, "old", X, 30 * DAY)
    put(cache, "empty", None, 30 * DAY)  # a step that changed nothing: reachable without a blob
    put(cache, "new", Y, 0)
    (cache.entries / "odd.json").write_text('{"size": 3}')  # JSON, but neither a layer nor an empty step
    adding = cache.blobs / ("a" * 64)  # a blob whose entry is not written yet
    adding.write_bytes(b"1" * 10)
    left = cache.blobs / ("b" * 64)  # ... and one whose build is long gone
    left.write_bytes(b"2" * 20)
    aged(left, 120)
    assert cache.prune() == (1, 20)
    assert keys(cache) == ["empty", "new", "old"]
    assert blob(cache, X).exists() and blob(cache, Y).exists() and adding.exists() and not left.exists()


def test_max_size_drops_the_least_recently_used_first(cache):
    put(cache, "a", X, 300)
    put(cache, "b", Y, 200)
    put(cache, "c", Z, 100)
    assert cache.prune(max_bytes=2500) == (1, 1000)
    assert keys(cache) == ["b", "c"] and not blob(cache, X).exists()
    assert cache.prune(max_bytes=1000) == (1, 1000)
    assert keys(cache) == ["c"] and not blob(cache, Y).exists() and blob(cache, Z).exists()


def test_a_blob_two_entries_name_counts_once_and_goes_with_the_last_of_them(cache):
    put(cache, "a", X, 300)
    put(cache, "b", X, 200)
    put(cache, "c", Y, 100)
    assert cache.prune(max_bytes=1500) == (2, 1000)  # dropping "a" alone freed nothing
    assert keys(cache) == ["c"] and not blob(cache, X).exists()


def test_a_blob_s_record_of_what_it_decompresses_to_goes_with_it(cache):
    put(cache, "old", X, 30 * DAY)
    put(cache, "new", Y, 0)
    assert cache.get("old") is not None and cache.get("new") is not None  # both recorded
    aged(cache.entries / "old.json", 30 * DAY)
    cache.prune(max_age=DAY)
    assert sorted(p.name for p in cache.decoded.iterdir()) == [Digest.of(Y).hex]


def test_max_age_drops_old_entries_and_their_blobs_at_once(cache):
    put(cache, "old", X, 2 * DAY)  # its blob was touched a moment ago, by the put
    put(cache, "old-empty", None, 2 * DAY)
    put(cache, "shared-old", Y, 2 * DAY)
    put(cache, "shared-new", Y, 60)
    assert cache.prune(max_age=DAY) == (3, 1000)
    assert keys(cache) == ["shared-new"]
    assert not blob(cache, X).exists() and blob(cache, Y).exists()


def test_shape_markers_outlive_no_kept_entry(cache):
    put(cache, "kept", X, 1000)
    for name, age in (("stale", 2000), ("slack", 1030), ("fresh", 0)):
        cache.add_shape(name)
        aged(cache.shapes / name, age)
    cache.prune()
    assert sorted(p.name for p in cache.shapes.iterdir()) == ["fresh", "slack"]
    (cache.entries / "kept.json").unlink()
    cache.prune()
    assert list(cache.shapes.iterdir()) == []  # no entry left: no shape can be a hit


def test_cache_mounts_go_only_by_age_or_with_everything(cache):
    mount = cache.mounts / "k"
    mount.mkdir(parents=True)
    (mount / "pkg.deb").write_bytes(b"p" * 100)
    aged(mount, 365 * DAY)
    assert cache.prune() == (0, 0)
    assert cache.prune(max_bytes=1) == (0, 0)  # a size bound is about layers and pulled blobs
    assert mount.is_dir()
    assert cache.prune(max_bytes=0) == (1, 100)
    assert not mount.exists()


def test_the_blob_store_gets_what_the_kept_layers_leave_of_max_size(cache):
    put(cache, "layer", X, 0)
    store = cache.root / "blobs" / "sha256"
    store.mkdir(parents=True)
    older, newer = store / ("1" * 64), store / ("2" * 64)
    older.write_bytes(b"o" * 600)
    newer.write_bytes(b"n" * 300)
    aged(older, 200)
    aged(newer, 100)
    assert cache.prune(max_bytes=1500) == (1, 600)  # 500 left for the store: its least recently used goes
    assert keys(cache) == ["layer"] and not older.exists() and newer.exists()


def test_the_blob_store_s_leftover_downloads_go_after_a_minute(cache):
    store = cache.root / "blobs" / "sha256"
    store.mkdir(parents=True)
    running, left = store / ".tmp-1-running", store / ".tmp-2-left"
    running.write_bytes(b"r")
    left.write_bytes(b"l")
    aged(left, 120)
    assert cache.prune() == (0, 0)
    assert running.exists() and not left.exists()


def test_snapshots_go_with_the_layer_cache(cache, tmp_path):
    """Named by a kept entry: kept; unnamed and unused for a day: gone; --max-size: every unnamed one;
    --max-age: every one unused that long; --all: all."""
    from builder.cache.snapshots import SnapshotStore
    from tests.unit.fs.test_apply import blob_of, ent, layer

    store = SnapshotStore(cache.root / "snapshots", "trusted" if os.geteuid() == 0 else "user")
    blobs = {name: blob_of(tmp_path, layer(ent(name, data=name))) for name in ("named", "stale", "fresh")}
    with store.using() as session:
        for b in blobs.values():
            session.get(b)
    cache.put("k", blobs["named"])
    aged(store.root / f"{blobs['stale'].diff_id.hex}.lock", 2 * DAY)
    aged(store.root / f"{blobs['named'].diff_id.hex}.lock", 40 * DAY)

    def left() -> set[str]:
        return {n for n, b in blobs.items() if (store.root / b.diff_id.hex).is_dir()}

    cache.prune()
    assert left() == {"named", "fresh"}
    cache.prune(max_bytes=10**9)
    assert left() == {"named"}
    cache.prune(max_age=30 * DAY)
    assert left() == set()
    with store.using() as session:
        session.get(blobs["fresh"])
    assert cache.usage().snapshots == 1
    cache.prune(max_bytes=0)
    assert left() == set() and cache.usage().snapshots == 0
