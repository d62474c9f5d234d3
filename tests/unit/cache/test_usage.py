"""``cache ls`` and ``du`` report the cache as it is: damaged entries neither fail nor stall them."""

from __future__ import annotations

import os
import time
from pathlib import Path

from builder.cache.store import LayerCache
from builder.cache.usage import CacheEntry
from builder.image import LayerBlob
from builder.oci.descriptor import Descriptor
from builder.oci.digest import Digest
from builder.oci.mediatypes import MediaType
from tests.unit.cache.test_verify import promptly


def _layer(tmp_path: Path, content: bytes) -> LayerBlob:
    source = tmp_path / "built"
    source.write_bytes(content)
    digest = Digest.of(content)
    return LayerBlob(Descriptor(MediaType.OCI_LAYER, digest, len(content)), digest, source, len(content))


def test_ls_lists_readable_entries_most_recently_used_first(tmp_path):
    cache = LayerCache(tmp_path / "cache")
    layer = _layer(tmp_path, b"l" * 700)
    cache.put("old", layer)
    cache.put("new", None)
    os.utime(cache.entries / "old.json", (1000, 1000))
    (cache.entries / "bad.json").write_text("{not json")
    os.mkfifo(cache.entries / "fifo.json")
    listed = promptly(cache.ls)
    assert [e.key for e in listed] == ["new", "old"]
    assert listed[1] == CacheEntry("old", layer.digest, 700, 1000.0)
    assert (listed[0].digest, listed[0].size) == (None, 0)
    assert listed[0].used > time.time() - 60


def test_du_counts_each_file_once_and_follows_no_link(tmp_path):
    cache = LayerCache(tmp_path / "cache")
    cache.put("k", _layer(tmp_path, b"l" * 700))
    mount = cache.mounts / "apt"
    mount.mkdir(parents=True)
    (mount / "a.deb").write_bytes(b"a" * 100)
    os.link(mount / "a.deb", mount / "same.deb")
    (tmp_path / "big").write_bytes(b"b" * 10_000)
    (mount / "link").symlink_to(tmp_path / "big")
    (cache.mounts / "not-a-mount").write_bytes(b"x")
    store = cache.root / "blobs" / "sha256"
    store.mkdir(parents=True)
    (store / ("1" * 64)).write_bytes(b"s" * 50)
    (store / ".tmp-download").write_bytes(b"t" * 5)  # in progress: not yet the store's
    usage = cache.usage()
    assert (usage.entries, usage.layer_bytes, usage.mounts, usage.mount_bytes, usage.blobs, usage.blob_bytes) == (
        1, 700, 1, 100, 1, 50)
