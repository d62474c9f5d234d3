"""Small factories for tests: real images with real (deterministic) layer blobs on disk."""

from __future__ import annotations

import gzip
import io
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zstandard

from builder.image import Image, ImageIndex, LayerBlob
from builder.oci.canonical import canonical_json
from builder.oci.config import append_layer, empty_config, rfc3339
from builder.oci.descriptor import Descriptor
from builder.oci.digest import Digest
from builder.oci.manifest import image_index, image_manifest
from builder.oci.mediatypes import MediaType
from builder.oci.platform import Platform

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64")


def layer_tar(files: dict[str, bytes], epoch: int = 0) -> bytes:
    """A deterministic uncompressed layer tar holding ``files`` (and their parent directories)."""
    buf = io.BytesIO()
    dirs = sorted({"/".join(name.split("/")[:i]) for name in files for i in range(1, name.count("/") + 1)})
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted([*dirs, *files]):
            info = tarfile.TarInfo(name)
            info.mtime, info.uname, info.gname = epoch, "", ""
            if name in files:
                info.mode, info.size = 0o644, len(files[name])
                tar.addfile(info, io.BytesIO(files[name]))
            else:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
    return buf.getvalue()


def compress(data: bytes, compression: str) -> tuple[bytes, str]:
    """(compressed bytes, layer media type); gzip without a timestamp or file name."""
    if compression == "gzip":
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="", compresslevel=6) as gz:
            gz.write(data)
        return buf.getvalue(), MediaType.OCI_LAYER_GZIP
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(data), MediaType.OCI_LAYER_ZSTD
    return data, MediaType.OCI_LAYER


def make_image(
    tmp_path: Path,
    files: dict[str, bytes],
    *,
    platform: Platform = AMD64,
    base: Image | None = None,
    compression: str = "gzip",
    verified: bool = True,
    runtime: dict[str, Any] | None = None,
    epoch: int = 0,
) -> Image:
    """An image of ``base`` (or scratch) plus one layer holding ``files``, blobs under tmp_path/src-blobs."""
    tar = layer_tar(files, epoch)
    blob, media_type = compress(tar, compression)
    digest = Digest.of(blob)
    store = tmp_path / "src-blobs"
    store.mkdir(parents=True, exist_ok=True)
    path = store / digest.hex
    path.write_bytes(blob)
    layer = LayerBlob(Descriptor(media_type, digest, len(blob)), Digest.of(tar), path, len(tar), verified)
    cfg = dict(base.config) if base is not None else empty_config(platform)
    cfg = append_layer(cfg, layer.diff_id, rfc3339(epoch), f"test layer {sorted(files)}")
    cfg["created"] = rfc3339(epoch)
    if runtime is not None:
        cfg["config"] = runtime
    raw_config = canonical_json(cfg)
    layers = (*(base.layers if base else ()), layer)
    cdesc = Descriptor(MediaType.OCI_CONFIG, Digest.of(raw_config), len(raw_config))
    raw_manifest = canonical_json(image_manifest(cdesc, [lb.descriptor for lb in layers]))
    return Image(raw_manifest, raw_config, MediaType.OCI_MANIFEST, layers, platform)


def make_index(images: list[Image]) -> ImageIndex:
    raw = canonical_json(image_index([img.descriptor() for img in images]))
    return ImageIndex(raw, tuple(images))


#: The type of conftest's ``oci_check`` fixture: ``oci_check(path, strict=True, ref=None)``.
OciCheck = Callable[..., subprocess.CompletedProcess[str]]


#: Rootfs tarball entries whose metadata must survive into every runtime (see tests/conftest.tar_entry).
FIDELITY_ENTRIES = [
    {"name": "data", "kind": "dir"},
    {"name": "data/file", "data": "payload\n"},
    {"name": "data/hard", "kind": "hardlink", "target": "data/file"},
    {"name": "data/sym", "kind": "symlink", "target": "file"},
    {"name": "data/abs", "kind": "symlink", "target": "/etc/passwd"},
    {"name": "data/dangling", "kind": "symlink", "target": "/nonexistent"},
    {"name": "data/owned", "data": "mine\n", "mode": 0o640, "uid": 1000, "gid": 1000},
    {"name": "data/suid", "data": "#!/bin/sh\n", "mode": 0o4755, "uid": 1000, "gid": 1000},
    {"name": "data/sgid", "kind": "dir", "mode": 0o2775, "uid": 1000, "gid": 1000},
    {"name": "data/sticky", "kind": "dir", "mode": 0o1777},
]


class FakeLower:
    """A step's lower filesystem as the stage offers it, made from values: a metadata tree, a rootfs
    directory, stage filesystems. A view a test did not give fails, so a test shows what a step reads."""

    def __init__(self, tree: Any = None, rootfs: Path | None = None, stages: dict[str, Path] | None = None) -> None:
        self._tree, self._rootfs, self._stages = tree, rootfs, stages or {}
        self.asked: list[str] = []

    def tree(self) -> Any:
        self.asked.append("tree")
        assert self._tree is not None, "the step read the metadata tree"
        return self._tree

    def rootfs(self) -> Path:
        self.asked.append("rootfs")
        assert self._rootfs is not None, "the step asked for a working root filesystem"
        return self._rootfs

    def overlay(self) -> None:
        return None  # the copy driver: rootfs()

    def overlay_failed(self, why: str) -> None:
        raise AssertionError(why)

    def note(self, text: str) -> None:
        raise AssertionError(text)  # only the overlay driver has something to say

    def stages(self) -> dict[str, Path]:
        return self._stages


def step_changes(step: Any, context: Path, tree: Any, epoch: int = 0, **scope: Any) -> list[Any]:
    """The changes ``step``'s handler makes on top of ``tree``, as the stage loop would ask for them."""
    from builder.steps import Scope, collect, handler_for

    plan = handler_for(step).plan(step, Scope(context=context, platform=AMD64, epoch=epoch, config={}, **scope))
    return collect(plan.changes(FakeLower(tree, stages=scope.get("stages"))))
