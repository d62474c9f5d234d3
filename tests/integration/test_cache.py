"""The layer cache: hits replay exactly, misses are exactly what changed, nothing stale is served."""

from __future__ import annotations

import json
import os
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

import builder.layer.blob
import builder.stage
from builder.cli import main

from .test_build import make_context, manifest_digest, oci_check

BIG = 8 << 20


@pytest.fixture
def compressions(monkeypatch):
    """Counts layer blobs written (each one is a compression pass)."""
    calls: list[int] = []
    real = builder.layer.blob.write_layer_blob  # what builder.stage calls

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(builder.stage, "write_layer_blob", spy)
    return calls


def build(ctx: Path, out: Path, cache: Path, *args: str, recipe: str = "recipe.yaml") -> dict[str, Any]:
    meta = out.parent / f"{out.name}.meta.json"
    code = main([str(ctx / recipe), "-o", str(out), "-q", "--cache-dir", str(cache), "--metadata-file", str(meta),
                 "--platform", "linux/amd64", *args])
    assert code == 0
    metadata: dict[str, Any] = json.loads(meta.read_text())
    return metadata


def cached_flags(meta: dict[str, Any]) -> list[bool]:
    return [s["cached"] for s in meta["steps"]]


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    ctx = make_context(tmp_path / "ctx")
    (ctx / "app" / "big.bin").write_bytes(os.urandom(BIG))  # a large layer
    return ctx


def test_warm_rebuild_compresses_nothing_and_gives_the_same_digest(ctx, tmp_path, compressions, capsys):
    cache = tmp_path / "cache"
    t0 = time.perf_counter()
    cold = build(ctx, tmp_path / "a", cache)
    cold_time = time.perf_counter() - t0
    assert cached_flags(cold) == [False] * 7 and len(compressions) == 6
    compressions.clear()
    t0 = time.perf_counter()
    warm = build(ctx, tmp_path / "b", cache)
    warm_time = time.perf_counter() - t0
    assert cached_flags(warm) == [True] * 7
    assert warm["cache"] == {"hits": 7, "misses": 0}
    assert compressions == []  # nothing compressed
    assert warm["digest"] == cold["digest"] == manifest_digest(tmp_path / "b")
    oci_check(tmp_path / "b")
    # not a timing test (see bench/): just a loud hint if a hit were as slow as a build
    print(f"cold {cold_time:.2f}s warm {warm_time:.2f}s")


def test_one_changed_input_rebuilds_that_step_and_what_follows(ctx, tmp_path):
    cache = tmp_path / "cache"
    first = build(ctx, tmp_path / "a", cache)
    (ctx / "app" / "README").write_text("changed readme\n")  # an input of step 2 (copy)
    second = build(ctx, tmp_path / "b", cache)
    assert cached_flags(second) == [True, False, False, False, False, False, False]
    assert second["digest"] != first["digest"]
    assert second["layers"][0] == first["layers"][0]


def test_mtime_and_umask_do_not_bust_the_cache(ctx, tmp_path):
    cache = tmp_path / "cache"
    build(ctx, tmp_path / "a", cache)
    for path in (ctx / "app").rglob("*"):
        os.utime(path, (1, 1))
    os.utime(ctx / "rootfs.tar.gz", (2, 2))
    again = build(ctx, tmp_path / "b", cache)
    assert all(cached_flags(again))


def test_changed_args_bust_only_the_steps_that_use_them(ctx, tmp_path):
    cache = tmp_path / "cache"
    build(ctx, tmp_path / "a", cache)
    other = build(ctx, tmp_path / "b", cache, "--build-arg", "NAME=moon")
    assert cached_flags(other) == [True, True, False, False, False, False, False]


def test_cached_and_uncached_builds_agree(ctx, tmp_path, compressions):
    cache = tmp_path / "cache"
    warm_up = build(ctx, tmp_path / "a", cache)
    compressions.clear()
    fresh = build(ctx, tmp_path / "b", cache, "--no-cache")
    assert not any(cached_flags(fresh)) and len(compressions) == 6
    assert fresh["digest"] == warm_up["digest"]


def test_compression_is_part_of_the_key(ctx, tmp_path):
    cache = tmp_path / "cache"
    build(ctx, tmp_path / "a", cache)
    zstd = build(ctx, tmp_path / "b", cache, "--compression", "zstd")
    assert not any(cached_flags(zstd))
    assert {layer["media_type"] for layer in zstd["layers"]} == {"application/vnd.oci.image.layer.v1.tar+zstd"}


def test_replayed_whiteouts_still_hide_files(ctx, tmp_path):
    cache = tmp_path / "cache"
    build(ctx, tmp_path / "a", cache)
    warm = build(ctx, tmp_path / "b", cache)
    assert warm["steps"][5]["cached"]
    blob = tmp_path / "b" / "blobs" / "sha256" / warm["layers"][5]["digest"].split(":")[1]
    with tarfile.open(blob) as tf:
        assert "etc/.wh.old.conf" in tf.getnames()


def test_a_damaged_cache_blob_is_a_miss_not_a_bad_layer(ctx, tmp_path):
    cache = tmp_path / "cache"
    first = build(ctx, tmp_path / "a", cache)
    victim = cache / "layers" / "blobs" / "sha256" / first["layers"][1]["digest"].split(":")[1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    again = build(ctx, tmp_path / "b", cache)
    assert cached_flags(again)[1] is False and again["digest"] == first["digest"]
    oci_check(tmp_path / "b")


def test_prune_bounds_the_cache(ctx, tmp_path, capsys):
    cache = tmp_path / "cache"
    build(ctx, tmp_path / "a", cache)
    blobs = cache / "layers" / "blobs" / "sha256"
    assert sum(p.stat().st_size for p in blobs.iterdir()) > BIG // 2
    assert main(["cache", "prune", "--cache-dir", str(cache), "--max-size", "1M"]) == 0
    assert sum(p.stat().st_size for p in blobs.iterdir()) <= 1 << 20
    assert main(["cache", "prune", "--cache-dir", str(cache), "--all"]) == 0
    assert list(blobs.iterdir()) == []
    assert not any(cached_flags(build(ctx, tmp_path / "b", cache)))


def test_prune_by_default_keeps_what_is_used_and_drops_the_unreachable(ctx, tmp_path, capsys):
    """Without options prune is safe to run any time: a warm cache stays warm; only entries that can
    never hit (unreadable, or their blob gone) and blobs no entry names are removed."""
    cache = tmp_path / "cache"
    build(ctx, tmp_path / "a", cache)
    entries = cache / "layers" / "entries"
    blobs = cache / "layers" / "blobs" / "sha256"
    before = sorted(p.name for p in entries.iterdir())
    (entries / ("0" * 64 + ".json")).write_text("{not json")
    stray = blobs / ("f" * 64)
    stray.write_bytes(b"nobody's blob")
    old = time.time() - 3600
    os.utime(stray, (old, old))
    orphan = json.loads(next(p for p in entries.iterdir() if "digest" in p.read_text()).read_text())
    (entries / ("1" * 64 + ".json")).write_text(json.dumps({**orphan, "digest": "sha256:" + "e" * 64}))
    capsys.readouterr()
    assert main(["cache", "prune", "--cache-dir", str(cache)]) == 0
    assert "removed 2 cache entries" in capsys.readouterr().err
    assert sorted(p.name for p in entries.iterdir()) == before
    assert not stray.exists()
    assert all(cached_flags(build(ctx, tmp_path / "b", cache)))
    # --max-age: entries not used for that long go; the ones just used stay
    for p in list(entries.iterdir())[:2]:
        os.utime(p, (old, old))
    assert main(["cache", "prune", "--cache-dir", str(cache), "--max-age", "30m"]) == 0
    assert len(list(entries.iterdir())) == len(before) - 2
    assert main(["cache", "prune", "--cache-dir", str(cache), "--max-age", "soon"]) == 2
    assert "not a duration" in capsys.readouterr().err


def test_cache_ls_and_du_report_what_is_there(ctx, tmp_path, capsys):
    cache = tmp_path / "cache"
    meta = build(ctx, tmp_path / "a", cache)
    (cache / "mounts" / "k1").mkdir(parents=True)
    (cache / "mounts" / "k1" / "pkg.deb").write_bytes(b"x" * 5000)
    capsys.readouterr()
    assert main(["cache", "ls", "--cache-dir", str(cache), "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    layer_digests = {layer["digest"] for layer in meta["layers"]}
    assert {e["digest"] for e in listed if e["digest"]} == layer_digests
    assert main(["cache", "du", "--cache-dir", str(cache), "--json"]) == 0
    usage = json.loads(capsys.readouterr().out)
    blobs = cache / "layers" / "blobs" / "sha256"
    assert usage["entries"] == len(listed) and usage["mounts"] == 1 and usage["mount_bytes"] == 5000
    assert usage["layer_bytes"] == sum(p.stat().st_size for p in blobs.iterdir())
    assert main(["cache", "du", "--cache-dir", str(cache)]) == 0
    assert "mounts" in capsys.readouterr().out
    # an old mount goes with --max-age, a fresh one stays; --all takes the rest
    (cache / "mounts" / "k2").mkdir()
    old = time.time() - 7 * 86400
    os.utime(cache / "mounts" / "k1", (old, old))
    assert main(["cache", "prune", "--cache-dir", str(cache), "--max-age", "1d"]) == 0
    assert sorted(p.name for p in (cache / "mounts").iterdir()) == ["k2"]
    assert main(["cache", "prune", "--cache-dir", str(cache), "--all"]) == 0
    assert list((cache / "mounts").iterdir()) == [] and list(blobs.iterdir()) == []


def test_concurrent_builds_share_one_cache(ctx, tmp_path):
    """Two builds at once, one cache dir, one OUT: both succeed, agree, and leave valid entries."""
    import subprocess
    import sys

    cache = tmp_path / "cache"
    procs = [
        subprocess.Popen([sys.executable, "-m", "builder", str(ctx / "recipe.yaml"), "-o", str(tmp_path / "out"),
                          "-q", "-t", f"t{n}", "--cache-dir", str(cache), "--platform", "linux/amd64"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for n in range(3)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], results
    assert len({out.strip() for out, _ in results}) == 1
    assert {manifest_digest(tmp_path / "out", f"t{n}") for n in range(3)} == {results[0][0].strip()}
    oci_check(tmp_path / "out")
    assert all(cached_flags(build(ctx, tmp_path / "again", cache)))


@pytest.fixture
def pre_reads(monkeypatch):
    """Paths of context files hashed *before* their layer is written (a second read of the context)."""
    import builder.oci.digest
    import builder.steps.copy

    reads: list[str] = []
    real = builder.oci.digest.sha256_file  # what builder.steps.copy calls

    def spy(path, *args, **kwargs):
        reads.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(builder.steps.copy, "sha256_file", spy)
    return reads


def test_a_cold_build_reads_the_context_once(ctx, tmp_path, pre_reads):
    """No cache entry of the copy's shape: a certain miss, so its digests come from the tar writer."""
    cold = build(ctx, tmp_path / "a", tmp_path / "cache")
    assert pre_reads == []
    nocache = build(ctx, tmp_path / "b", tmp_path / "cache2", "--no-cache")
    assert pre_reads == []
    assert cold["digest"] == nocache["digest"]
    warm = build(ctx, tmp_path / "c", tmp_path / "cache")  # now the shape is known: files are hashed to probe
    assert all(cached_flags(warm)) and pre_reads


def test_same_shape_different_content_is_a_miss(ctx, tmp_path):
    """Same names, modes and sizes, one byte different: the shape is known, the full key is not."""
    cache = tmp_path / "cache"
    first = build(ctx, tmp_path / "a", cache)
    big = ctx / "app" / "big.bin"
    data = bytearray(big.read_bytes())
    data[len(data) // 2] ^= 1
    big.write_bytes(bytes(data))
    second = build(ctx, tmp_path / "b", cache)
    assert cached_flags(second)[1] is False and second["digest"] != first["digest"]
    third = build(ctx, tmp_path / "c", cache)  # and the new content is now cached under its own key
    assert all(cached_flags(third)) and third["digest"] == second["digest"]


def test_prune_to_zero_forgets_shapes(ctx, tmp_path, pre_reads, capsys):
    cache = tmp_path / "cache"
    build(ctx, tmp_path / "a", cache)
    assert list((cache / "layers" / "shapes").iterdir())
    assert main(["cache", "prune", "--cache-dir", str(cache), "--max-size", "0"]) == 0
    assert not list((cache / "layers" / "shapes").iterdir())
    again = build(ctx, tmp_path / "b", cache)
    assert not any(cached_flags(again)) and pre_reads == []


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_a_hit_checks_the_diff_id_of_every_compression(ctx, tmp_path, compression):
    """A hit decompresses its blob and hashes the result: an entry whose diff_id is not its layer's is a miss."""
    cache = tmp_path / "cache"
    first = build(ctx, tmp_path / "a", cache, "--compression", compression)
    layer = first["layers"][1]
    [entry] = [p for p in (cache / "layers" / "entries").glob("*.json")
               if json.loads(p.read_bytes()).get("digest") == layer["digest"]]
    doc = json.loads(entry.read_bytes())
    assert doc["diff_id"] == layer["diff_id"]
    entry.write_text(json.dumps({**doc, "diff_id": first["layers"][0]["diff_id"]}))
    again = build(ctx, tmp_path / "b", cache, "--compression", compression)
    assert cached_flags(again)[1] is False and again["digest"] == first["digest"]
    assert json.loads(entry.read_bytes())["diff_id"] == layer["diff_id"]
    assert all(cached_flags(build(ctx, tmp_path / "c", cache, "--compression", compression)))


def test_prune_and_du_cover_the_registry_blob_store(tmp_path, capsys):
    """Pulled blobs (``CACHE/blobs``) are counted by du and go with --max-age, --max-size and --all;
    a plain prune removes only what is not a regular file there."""
    cache = tmp_path / "cache"
    store = cache / "blobs" / "sha256"
    store.mkdir(parents=True)
    old, new = store / ("a" * 64), store / ("b" * 64)
    old.write_bytes(b"o" * 3000)
    new.write_bytes(b"n" * 2000)
    long_ago = time.time() - 40 * 86400
    os.utime(old, (long_ago, long_ago))
    os.symlink("/etc/passwd", store / ("c" * 64))
    assert main(["cache", "du", "--cache-dir", str(cache), "--json"]) == 0
    usage = json.loads(capsys.readouterr().out)
    assert usage["blobs"] == 3 and usage["blob_bytes"] == 5000 + len("/etc/passwd")
    assert main(["cache", "prune", "--cache-dir", str(cache)]) == 0
    assert sorted(p.name for p in store.iterdir()) == ["a" * 64, "b" * 64]
    assert main(["cache", "prune", "--cache-dir", str(cache), "--max-age", "30d"]) == 0
    assert [p.name for p in store.iterdir()] == ["b" * 64]
    assert main(["cache", "prune", "--cache-dir", str(cache), "--max-size", "1k"]) == 0
    assert list(store.iterdir()) == []
    new.write_bytes(b"n")
    assert main(["cache", "prune", "--cache-dir", str(cache), "--all"]) == 0
    assert list(store.iterdir()) == []
