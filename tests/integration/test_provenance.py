"""The build's provenance statement: an in-toto Statement v1 with a SLSA provenance v1 predicate,
made from what the build read (the first piece of the attestations: not attached to images yet)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import builder
from builder.oci.digest import Digest

RECIPE = """\
version: 1
args:
  FLAVOUR: plain
steps:
  - rootfs: rootfs.tar.gz
  - copy: app/
    to: /opt/app/
  - fetch: {url}
    sha256: {sha}
    to: /opt/data.bin
  - write: /etc/flavour
    content: "${{FLAVOUR}}\\n"
"""


def _build(tmp_path: Path, ctx: Path, name: str, **options: object) -> builder.BuildResult:
    out = tmp_path / name
    with builder.work_directory(out) as workdir:
        return builder.build(ctx / "recipe.yaml", builder.BuildOptions(workdir=workdir, cache_dir=tmp_path / "cache",
                                                                       **options))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served over HTTP on 127.0.0.1 (what a ``fetch:`` step downloads from)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_statement_names_every_material_and_is_the_same_for_two_builds(
        tmp_path: Path, busybox_rootfs_tar: Path, served: tuple[Path, str]) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "app").mkdir(parents=True)
    (ctx / "rootfs.tar.gz").write_bytes(busybox_rootfs_tar.read_bytes())
    (ctx / "app" / "run.sh").write_text("#!/bin/sh\n")
    root, base = served
    (root / "data.bin").write_bytes(b"fetched bytes\n")
    sha = hashlib.sha256(b"fetched bytes\n").hexdigest()
    url = f"{base}/data.bin"
    (ctx / "recipe.yaml").write_text(RECIPE.format(url=url, sha=sha))
    secret = tmp_path / "token"
    secret.write_text("s3cr3t-value")

    first = _build(tmp_path, ctx, "one", build_args={"FLAVOUR": "spicy", "UNDECLARED": "x"},
                   secrets={"token": secret})
    second = _build(tmp_path, ctx, "two", build_args={"FLAVOUR": "spicy", "UNDECLARED": "x"},
                    secrets={"token": secret})
    raw = first.provenance()
    assert raw == second.provenance()  # deterministic: a cached rebuild says the same
    doc = json.loads(raw)
    assert doc["_type"] == "https://in-toto.io/Statement/v1"
    assert doc["predicateType"] == "https://slsa.dev/provenance/v1"
    assert doc["subject"] == [{"name": "latest", "digest": {"sha256": first.result.digest.hex}}]
    definition = doc["predicate"]["buildDefinition"]
    assert definition["externalParameters"]["args"] == {"FLAVOUR": "spicy"}  # declared args only
    recipe_sha = hashlib.sha256((ctx / "recipe.yaml").read_bytes()).hexdigest()
    assert definition["externalParameters"]["recipe"] == {"path": "recipe.yaml", "digest": {"sha256": recipe_sha}}
    deps = {d["uri"]: d["digest"]["sha256"] for d in definition["resolvedDependencies"]}
    assert deps["context:rootfs.tar.gz"] == hashlib.sha256(busybox_rootfs_tar.read_bytes()).hexdigest()
    assert deps[url] == sha
    assert "context:app/" in deps and Digest("sha256", deps["context:app/"])
    assert doc["predicate"]["runDetails"]["builder"]["version"] == {"pybuild": builder.__version__}
    assert b"s3cr3t" not in raw and str(secret).encode() not in raw

    # a changed context file is a changed material
    (ctx / "app" / "run.sh").write_text("#!/bin/sh\necho changed\n")
    third = json.loads(_build(tmp_path, ctx, "three", build_args={"FLAVOUR": "spicy"}).provenance())
    deps3 = {d["uri"]: d["digest"]["sha256"] for d in third["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert deps3["context:app/"] != deps["context:app/"]
    assert deps3["context:rootfs.tar.gz"] == deps["context:rootfs.tar.gz"]
