"""``describe`` gives exactly the ``inspect --json`` object; ``render_text`` explains every id."""

from __future__ import annotations

import json
from pathlib import Path

from builder.inspect import describe, render_text
from builder.layout.read import read_layout
from builder.layout.write import write_layout
from builder.oci.platform import Platform
from tests.helpers import ARM64, make_image, make_index

RUNTIME = {
    "Entrypoint": ["/bin/app"],
    "Cmd": ["--help"],
    "Env": ["PATH=/usr/bin:/bin"],
    "User": "1000:1000",
    "WorkingDir": "/app",
    "ExposedPorts": {"8080/tcp": {}},
    "Labels": {"org.opencontainers.image.title": "app"},
}


def test_describe_image_shape(tmp_path: Path) -> None:
    base = make_image(tmp_path, {"etc/os": b"base"}, epoch=100)
    image = make_image(tmp_path, {"app": b"x" * 100}, base=base, runtime=RUNTIME, epoch=1700000000)
    desc = describe(image, "1.0")
    assert list(desc) == [
        "name", "digest", "media_type", "image_id", "platform", "layers", "config", "history", "created",
        "annotations",
    ]  # fmt: skip
    assert desc["name"] == "1.0"
    assert desc["digest"] == str(image.digest)
    assert desc["media_type"] == "application/vnd.oci.image.manifest.v1+json"
    assert desc["image_id"] == str(image.image_id)
    assert desc["platform"] == {"os": "linux", "architecture": "amd64"}
    assert desc["layers"] == [
        {
            "digest": str(layer.digest),
            "diff_id": str(layer.diff_id),
            "size": layer.descriptor.size,
            "media_type": "application/vnd.oci.image.layer.v1.tar+gzip",
        }
        for layer in image.layers
    ]
    assert len(desc["layers"]) == 2
    assert desc["config"] == RUNTIME
    assert [h["created"] for h in desc["history"]] == ["1970-01-01T00:01:40Z", "2023-11-14T22:13:20Z"]
    assert desc["created"] == "2023-11-14T22:13:20Z"
    assert json.loads(json.dumps(desc)) == desc


def test_describe_index_shape(tmp_path: Path) -> None:
    amd = make_image(tmp_path, {"a": b"amd"})
    arm = make_image(tmp_path, {"a": b"arm"}, platform=ARM64)
    attestation = make_image(tmp_path, {"sbom.json": b"{}"}, platform=Platform("unknown", "unknown"))
    index = make_index([amd, arm, attestation])
    desc = describe(index, "multi")
    assert list(desc) == ["name", "digest", "media_type", "manifests", "annotations"]
    assert desc["digest"] == str(index.digest)
    assert desc["media_type"] == "application/vnd.oci.image.index.v1+json"
    assert [m["platform"]["architecture"] for m in desc["manifests"]] == ["amd64", "arm64"]
    assert desc["manifests"][1] == describe(arm, "multi")


def test_describe_same_after_layout_round_trip(tmp_path: Path) -> None:
    image = make_image(tmp_path, {"a": b"a"}, runtime=RUNTIME)
    write_layout(tmp_path / "out", image, "t")
    assert describe(read_layout(tmp_path / "out", "t"), "t") == describe(image, "t")


def test_render_text_explains_every_id(tmp_path: Path) -> None:
    image = make_image(tmp_path, {"app": b"x"}, runtime=RUNTIME)
    text = "\n".join(render_text(describe(image, "acc/app:1")))
    layer = image.layers[0]
    assert f"image digest:  {image.digest}" in text and "sha256 of the manifest" in text
    assert f"image id:      {image.image_id}" in text and "sha256 of the config" in text
    assert f"digest sha256:{layer.digest.short}" in text
    assert f"diff_id sha256:{layer.diff_id.short}" in text
    assert "compressed blob" in text and "uncompressed tar" in text
    assert "application/vnd.oci.image.layer.v1.tar+gzip" in text
    assert "platform:      linux/amd64" in text
    for fragment in ('["/bin/app"]', '["--help"]', "PATH=/usr/bin:/bin", "1000:1000", "/app", "8080/tcp"):
        assert fragment in text
    assert "org.opencontainers.image.title=app" in text
    assert "test layer ['app']" in text


def test_render_text_index(tmp_path: Path) -> None:
    amd = make_image(tmp_path, {"a": b"amd"})
    arm = make_image(tmp_path, {"a": b"arm"}, platform=ARM64)
    lines = render_text(describe(make_index([amd, arm]), "multi"))
    assert lines[1].startswith("index digest:")
    assert "--- linux/arm64 ---" in lines
    assert sum(line.startswith("image id:") for line in lines) == 2
