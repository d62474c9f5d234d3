"""Registry bases and pulls are content-addressed and reused (issue 12 item 3), against a real registry.

The base is built by pybuild and pushed straight to the registry; every pull then goes through a
:class:`FaultProxy`, which records each request, so "downloaded nothing" is a count of ``GET
/blobs/`` requests that saw the wire. The blob store lives in ``--cache-dir`` (``pybuild pull``:
``$XDG_CACHE_HOME/pybuild``) under ``blobs/sha256/<hex>``; a blob is reused only after it is
hashed again, so a damaged one is downloaded again and the output is still right (oci-check).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform as host_platform
import re
from pathlib import Path
from typing import Any

import pytest

from .registry import (
    FaultProxy,
    Registry,
    layout_blob,
    layout_descriptor,
    layout_manifest,
    proxy_fixture,
    registry_fixture,
    unique_repo,
)
from .runtimes import describe

pytestmark = [pytest.mark.tools, pytest.mark.needs("docker-registry", "skopeo", "openssl")]

plain_registry = registry_fixture("plain")
make_proxy = proxy_fixture()

BASE_RECIPE = """\
version: 1
steps:
  - rootfs: rootfs.tar.gz
  - write: /etc/base
    content: "base\\n"
"""

DERIVED = """\
version: 1
from: {base}
steps:
  - write: /etc/derived
    content: "derived\\n"
"""

#: A platform the host is not (pybuild builds the base for the host's).
OTHER = "linux/s390x" if host_platform.machine() not in ("s390x",) else "linux/riscv64"


def _hex(digest: str) -> str:
    return digest.partition(":")[2]


@pytest.fixture
def base(pybuild, ctx: Path, tmp_path: Path, plain_registry: Registry) -> tuple[str, dict[str, Any]]:
    """A two-layer single-manifest image pushed to the registry: (repo, its manifest)."""
    repo = unique_repo("reuse")
    (ctx / "base.yaml").write_text(BASE_RECIPE)
    out = tmp_path / "base-out"
    result = pybuild(ctx / "base.yaml", "-o", out, "-t", "base", "-q", "--cache-dir", tmp_path / "base-cache",
                     "--push", plain_registry.ref(repo, "v1"))
    assert result.returncode == 0, describe(result)
    return repo, layout_manifest(out, "base")


def _blob_gets(proxy: FaultProxy) -> list[str]:
    return [r.path for r in proxy.seen("GET", r"/blobs/sha256:")]


def _build(pybuild, ctx: Path, out: Path, cache: Path, recipe: str, *args: str):
    (ctx / "pybuild.yaml").write_text(recipe)
    return pybuild(ctx / "pybuild.yaml", "-o", out, "-t", "derived", "--progress", "plain", "--cache-dir", cache,
                   *args)


@pytest.fixture
def warm(pybuild, ctx: Path, tmp_path: Path, plain_registry: Registry, make_proxy, base):
    """A first build FROM the registry base through a counting proxy, into ``out1`` with the cache
    dir ``cache``: (repo, base manifest, proxy, recipe, cache dir, the build's result)."""
    repo, manifest = base
    proxy = make_proxy(plain_registry)
    recipe = DERIVED.format(base=proxy.ref(repo, "v1"))
    cache = tmp_path / "cache"
    first = _build(pybuild, ctx, tmp_path / "out1", cache, recipe)
    assert first.returncode == 0, describe(first)
    return repo, manifest, proxy, recipe, cache, first


def _events(stderr: str, kind: str) -> list[str]:
    """The short digests of the ``kind`` lines (``existing``/``pulled``) of ``--progress plain``."""
    return re.findall(rf"\b{kind} +(sha256:[0-9a-f]+)", stderr)  # (lines of parallel downloads may run together)


def test_second_build_from_a_registry_base_downloads_no_blob(
    pybuild, ctx: Path, tmp_path: Path, plain_registry: Registry, warm, oci_check
) -> None:
    _repo, manifest, proxy, recipe, cache, _first = warm
    wanted = {manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])}
    assert {p.rsplit("/", 1)[1] for p in _blob_gets(proxy)} == wanted, proxy.requests
    assert all((cache / "blobs/sha256" / _hex(d)).is_file() for d in wanted)

    for n, extra in enumerate([(), ("--no-cache",)], start=2):  # --no-cache rebuilds steps, still reuses blobs
        proxy.clear()
        again = _build(pybuild, ctx, tmp_path / f"out{n}", cache, recipe, *extra)
        assert again.returncode == 0, describe(again)
        assert _blob_gets(proxy) == [], proxy.requests
        assert proxy.count("GET", "/manifests/") == 0, proxy.requests  # the tag re-resolved by a HEAD alone
        assert proxy.count("HEAD", "/manifests/v1") == 1, proxy.requests
        assert len(_events(again.stderr, "existing")) == len(wanted), again.stderr
        assert _events(again.stderr, "pulled") == [], again.stderr
        assert layout_descriptor(tmp_path / f"out{n}", "derived")["digest"] == again.stdout.strip()
        result = oci_check(tmp_path / f"out{n}", strict=True, ref="derived")
        assert result.returncode == 0, describe(result)


def test_build_into_a_layout_holding_the_base_downloads_no_blob(
    pybuild, ctx: Path, tmp_path: Path, plain_registry: Registry, make_proxy, base, oci_check
) -> None:
    """A fresh cache dir, but -o OUT already has the base's layers: they are cloned from OUT, verified.

    The base's config is not part of the derived image, so it is the one blob fetched."""
    repo, manifest = base
    proxy = make_proxy(plain_registry)
    recipe = DERIVED.format(base=proxy.ref(repo, "v1"))
    out = tmp_path / "out"
    first = _build(pybuild, ctx, out, tmp_path / "cache1", recipe)
    assert first.returncode == 0, describe(first)
    proxy.clear()
    again = _build(pybuild, ctx, out, tmp_path / "cache2", recipe)
    assert again.returncode == 0, describe(again)
    assert [p.rsplit("/", 1)[1] for p in _blob_gets(proxy)] == [manifest["config"]["digest"]], proxy.requests
    layer = manifest["layers"][0]["digest"]
    assert (tmp_path / "cache2/blobs/sha256" / _hex(layer)).stat().st_ino != (out / "blobs/sha256" / _hex(layer)).stat().st_ino
    result = oci_check(out, strict=True, ref="derived")
    assert result.returncode == 0, describe(result)


def test_pull_into_a_layout_that_has_the_blobs_downloads_none(
    pybuild, tmp_path: Path, plain_registry: Registry, make_proxy, base, oci_check
) -> None:
    repo, manifest = base
    proxy = make_proxy(plain_registry)
    out = tmp_path / "pulled"
    first = pybuild("pull", proxy.ref(repo, "v1"), "-o", out, env={"XDG_CACHE_HOME": str(tmp_path / "xdg1")})
    assert first.returncode == 0, describe(first)
    assert len(_blob_gets(proxy)) == 1 + len(manifest["layers"]), proxy.requests
    proxy.clear()
    # another tag into the same layout, with an empty cache: every blob is in OUT already
    again = pybuild("pull", proxy.ref(repo, "v1"), "-o", out, "-t", "again", "--progress", "plain",
                    env={"XDG_CACHE_HOME": str(tmp_path / "xdg2")})
    assert again.returncode == 0, describe(again)
    assert _blob_gets(proxy) == [], proxy.requests
    assert len(_events(again.stderr, "existing")) == 1 + len(manifest["layers"]), again.stderr
    assert layout_descriptor(out, "again")["digest"] == layout_descriptor(out, "v1")["digest"]
    result = oci_check(out, strict=True, ref="again")
    assert result.returncode == 0, describe(result)


def test_a_damaged_blob_in_the_store_is_downloaded_again(
    pybuild, ctx: Path, tmp_path: Path, plain_registry: Registry, warm, oci_check
) -> None:
    _repo, manifest, proxy, recipe, cache, _first = warm
    store = cache / "blobs/sha256"
    layer, config = manifest["layers"][0]["digest"], manifest["config"]["digest"]
    blob = store / _hex(layer)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, wrong content: only a hash can tell
    blob.write_bytes(bytes(data))
    (store / _hex(config)).unlink()
    os.mkfifo(store / _hex(config))  # a FIFO where the config was: never read (it would block), replaced
    proxy.clear()
    again = _build(pybuild, ctx, tmp_path / "out2", cache, recipe)
    assert again.returncode == 0, describe(again)
    assert sorted(p.rsplit("/", 1)[1] for p in _blob_gets(proxy)) == sorted([layer, config]), proxy.requests
    for digest in (layer, config):
        assert hashlib.sha256((store / _hex(digest)).read_bytes()).hexdigest() == _hex(digest)
    assert hashlib.sha256(layout_blob(tmp_path / "out2", layer)).hexdigest() == _hex(layer)
    result = oci_check(tmp_path / "out2", strict=True, ref="derived")
    assert result.returncode == 0, describe(result)
    assert layout_manifest(tmp_path / "out2", "derived")["layers"][0]["digest"] == layer


def test_a_damaged_manifest_in_the_store_is_fetched_again(
    pybuild, ctx: Path, tmp_path: Path, plain_registry: Registry, warm
) -> None:
    repo, _, proxy, recipe, cache, first = warm
    digest = plain_registry.digest(repo, "v1")
    stored = cache / "blobs/sha256" / _hex(digest)
    stored.write_bytes(json.dumps({"schemaVersion": 2, "layers": []}).encode())  # not what its name says
    proxy.clear()
    again = _build(pybuild, ctx, tmp_path / "out2", cache, recipe)
    assert again.returncode == 0, describe(again)
    assert proxy.count("GET", "/manifests/v1") == 1, proxy.requests
    assert _blob_gets(proxy) == [], proxy.requests
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == _hex(digest)
    assert again.stdout.strip() == first.stdout.strip()


@pytest.mark.parametrize("command", ["pull", "build"])
def test_a_single_image_of_another_platform_fails_before_any_layer_is_fetched(
    pybuild, ctx: Path, tmp_path: Path, plain_registry: Registry, make_proxy, base, command: str
) -> None:
    repo, manifest = base
    proxy = make_proxy(plain_registry)
    if command == "pull":
        result = pybuild("pull", proxy.ref(repo, "v1"), "-o", tmp_path / "pulled", "--platform", OTHER)
    else:
        result = _build(pybuild, ctx, tmp_path / "out", tmp_path / "cache", DERIVED.format(base=proxy.ref(repo, "v1")),
                        "--platform", OTHER)
    assert result.returncode == 1, describe(result)
    assert f"no image for platform {OTHER}" in result.stderr, describe(result)
    layers = {layer["digest"] for layer in manifest["layers"]}
    fetched = {p.rsplit("/", 1)[1] for p in _blob_gets(proxy)}
    assert fetched == {manifest["config"]["digest"]}, proxy.requests
    assert not fetched & layers
