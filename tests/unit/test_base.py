"""Base images from layouts, OCI archives and docker-archives (both the OCI and the legacy form)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from builder.archive.docker import write_docker_archive
from builder.archive.oci import write_oci_archive
from builder.base import load_base
from builder.errors import InputError, IntegrityError
from builder.image import Image
from builder.layout.write import write_layout
from builder.oci.canonical import canonical_json
from builder.oci.config import append_layer, empty_config
from builder.oci.digest import Digest
from builder.oci.mediatypes import MediaType
from builder.oci.platform import Platform
from tests.helpers import AMD64, ARM64, OciCheck, compress, layer_tar, make_image, make_index


@pytest.fixture
def image(tmp_path: Path) -> Image:
    return make_image(tmp_path, {"etc/os-release": b"ID=test\n"}, runtime={"Entrypoint": ["/bin/sh"]})


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def test_oci_layout_base(tmp_path: Path, image: Image, workdir: Path) -> None:
    write_layout(tmp_path / "layout", image, "1")
    got = load_base("oci", tmp_path / "layout", "1", AMD64, workdir)
    assert got.digest == image.digest
    with pytest.raises(InputError, match=r"no image for platform linux/arm64 \(available: linux/amd64\)"):
        load_base("oci", tmp_path / "layout", "1", ARM64, workdir)


def test_oci_layout_index_selects_platform(tmp_path: Path, workdir: Path) -> None:
    amd = make_image(tmp_path, {"a": b"amd"})
    arm = make_image(tmp_path, {"a": b"arm"}, platform=ARM64)
    write_layout(tmp_path / "layout", make_index([amd, arm]), "multi")
    assert load_base("oci", tmp_path / "layout", "multi", ARM64, workdir).digest == arm.digest
    with pytest.raises(InputError, match=r"available: linux/amd64, linux/arm64"):
        load_base("oci", tmp_path / "layout", "multi", Platform("linux", "riscv64"), workdir)


def test_oci_archive_base(tmp_path: Path, image: Image, workdir: Path) -> None:
    write_oci_archive(tmp_path / "img.tar", image, "acc/app:1", 0)
    got = load_base("oci-archive", tmp_path / "img.tar", "acc/app:1", AMD64, workdir)
    assert (got.digest, got.image_id) == (image.digest, image.image_id)
    assert all(layer.verified and workdir in layer.path.parents for layer in got.layers)
    assert got.layers[0].path.read_bytes() == image.layers[0].path.read_bytes()


def test_docker_archive_with_oci_layout(tmp_path: Path, image: Image, workdir: Path) -> None:
    write_docker_archive(tmp_path / "d.tar", image, "app", 0)
    assert load_base("docker-archive", tmp_path / "d.tar", "app", AMD64, workdir).digest == image.digest
    assert load_base("docker-archive", tmp_path / "d.tar", None, AMD64, workdir).digest == image.digest
    # the docker name is not a ref in index.json: manifest.json is used instead, with a fresh manifest
    by_repo_tag = load_base("docker-archive", tmp_path / "d.tar", "app:latest", AMD64, workdir)
    assert by_repo_tag.image_id == image.image_id
    assert [la.digest for la in by_repo_tag.layers] == [la.digest for la in image.layers]


def legacy_archive(tmp_path: Path) -> tuple[Path, list[bytes], bytes]:
    """A pre-Docker-25 ``docker save`` tar: <id>/layer.tar dirs, <config>.json, a repeated layer as a symlink."""
    tars = [layer_tar({"etc/one": b"1"}), layer_tar({"etc/two": b"2"})]
    blobs = [tars[0], compress(tars[1], "gzip")[0]]
    cfg = empty_config(AMD64)
    for t in [*tars, tars[0]]:
        cfg = append_layer(cfg, Digest.of(t), "1970-01-01T00:00:00Z", "legacy")
    raw_config = canonical_json(cfg)
    chex = Digest.of(raw_config).hex
    ids = ["a" * 64, "b" * 64, "c" * 64]
    manifest = [{"Config": f"{chex}.json", "RepoTags": ["legacy:1"], "Layers": [f"{i}/layer.tar" for i in ids]}]
    path = tmp_path / "legacy.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in ((f"{chex}.json", raw_config), ("manifest.json", json.dumps(manifest).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for layer_id, blob in zip(ids[:2], blobs, strict=True):
            info = tarfile.TarInfo(f"{layer_id}/layer.tar")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        link = tarfile.TarInfo(f"{ids[2]}/layer.tar")
        link.type, link.linkname = tarfile.SYMTYPE, f"../{ids[0]}/layer.tar"
        tar.addfile(link)
    return path, blobs, raw_config


def test_legacy_docker_archive(tmp_path: Path, workdir: Path, oci_check: OciCheck) -> None:
    path, blobs, raw_config = legacy_archive(tmp_path)
    got = load_base("docker-archive", path, None, AMD64, workdir)
    assert got.raw_config == raw_config
    assert [la.descriptor.media_type for la in got.layers] == [
        MediaType.OCI_LAYER,
        MediaType.OCI_LAYER_GZIP,
        MediaType.OCI_LAYER,
    ]
    assert got.layers[0].digest == got.layers[0].diff_id == Digest.of(blobs[0])
    assert got.layers[1].digest == Digest.of(blobs[1])
    assert got.layers[2].digest == got.layers[0].digest
    assert all(la.verified for la in got.layers)
    assert load_base("docker-archive", path, "legacy:1", AMD64, workdir).digest == got.digest
    with pytest.raises(InputError, match=r"no image tagged 'other' \(tags present: 'legacy:1'\)"):
        load_base("docker-archive", path, "other", AMD64, workdir)
    out = tmp_path / "out"
    write_layout(out, got, "converted")
    result = oci_check(out)
    assert result.returncode == 0, result.stdout


def test_legacy_docker_archive_in_docker_save_order_and_gzipped(tmp_path: Path, workdir: Path) -> None:
    """The archive is read in one pass: manifest.json after the files it names (as ``docker save``
    writes it), and the whole archive gzip'd (``docker save | gzip``), give the same image."""
    import gzip

    path, _, _ = legacy_archive(tmp_path)
    expected = load_base("docker-archive", path, None, AMD64, workdir)
    reordered = tmp_path / "reordered.tar"
    with tarfile.open(path) as src, tarfile.open(reordered, "w") as dst:
        members = sorted(src.getmembers(), key=lambda m: m.name == "manifest.json")
        for member in members:
            dst.addfile(member, src.extractfile(member) if member.isreg() else None)
    with tarfile.open(reordered) as check:
        assert check.getnames()[-1] == "manifest.json"
    packed = tmp_path / "packed.tar.gz"
    packed.write_bytes(gzip.compress(reordered.read_bytes()))
    for archive in (reordered, packed):
        got = load_base("docker-archive", archive, "legacy:1", AMD64, workdir)
        assert (got.digest, [la.digest for la in got.layers]) == (expected.digest, [la.digest for la in expected.layers])
        assert all(la.path.read_bytes() == le.path.read_bytes() for la, le in zip(got.layers, expected.layers, strict=True))


def test_legacy_plain_layer_must_match_diff_id(tmp_path: Path, workdir: Path) -> None:
    path, blobs, _ = legacy_archive(tmp_path)
    bad = tmp_path / "bad.tar"
    with tarfile.open(path) as src, tarfile.open(bad, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isreg() else None  # type: ignore[union-attr]
            if data == blobs[0]:
                data = layer_tar({"etc/one": b"tampered"})
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    with pytest.raises(IntegrityError, match="diff_id"):
        load_base("docker-archive", bad, None, AMD64, workdir)


def rewrite(src: Path, dst: Path, extra: tarfile.TarInfo, data: bytes = b"", replace: bool = False) -> None:
    """Copy archive ``src`` to ``dst`` with member ``extra`` added (or replacing the one of that name)."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tout:
        tout.addfile(extra, io.BytesIO(data) if extra.isreg() else None)
        for member in tin.getmembers():
            if not (replace and member.name == extra.name):
                tout.addfile(member, tin.extractfile(member) if member.isreg() else None)


@pytest.mark.parametrize(
    ("name", "kind", "linkname", "message"),
    [
        ("../evil", tarfile.REGTYPE, "", "escapes the archive"),
        ("/tmp/evil", tarfile.REGTYPE, "", "escapes the archive"),
        ("blobs/../../evil", tarfile.REGTYPE, "", "escapes the archive"),
        ("blobs/sha256/" + "0" * 64, tarfile.SYMTYPE, "/etc/passwd", "links are refused"),
        ("index.json", tarfile.LNKTYPE, "oci-layout", "links are refused"),
        ("oci-layout", tarfile.CHRTYPE, "", "not a regular file"),
    ],
)
def test_hostile_oci_archive_refused(
    tmp_path: Path, image: Image, workdir: Path, name: str, kind: bytes, linkname: str, message: str
) -> None:
    good, bad = tmp_path / "good.tar", tmp_path / "bad.tar"
    write_oci_archive(good, image, "1", 0)
    member = tarfile.TarInfo(name)
    member.type, member.linkname = kind, linkname
    member.size = 4 if kind == tarfile.REGTYPE else 0
    rewrite(good, bad, member, b"evil")
    with pytest.raises(InputError, match=message):
        load_base("oci-archive", bad, "1", AMD64, workdir)
    assert not (tmp_path / "evil").exists()


def test_oci_archive_blob_content_checked(tmp_path: Path, image: Image, workdir: Path) -> None:
    good, bad = tmp_path / "good.tar", tmp_path / "bad.tar"
    write_oci_archive(good, image, "1", 0)
    layer = image.layers[0]
    member = tarfile.TarInfo(f"blobs/sha256/{layer.digest.hex}")
    data = b"\0" * layer.descriptor.size
    member.size = len(data)
    rewrite(good, bad, member, data, replace=True)
    with pytest.raises(IntegrityError, match=layer.digest.hex):
        load_base("oci-archive", bad, "1", AMD64, workdir)


def test_bad_inputs(tmp_path: Path, workdir: Path) -> None:
    with pytest.raises(InputError, match="no such archive file"):
        load_base("oci-archive", tmp_path / "missing.tar", None, AMD64, workdir)
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(InputError, match=r"junk\.tar: not a readable tar archive"):
        load_base("docker-archive", tmp_path / "junk.tar", None, AMD64, workdir)
    with pytest.raises(InputError, match="unknown base image kind 'zip'"):
        load_base("zip", tmp_path / "junk.tar", None, AMD64, workdir)
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    with pytest.raises(InputError, match="not a docker-archive"):
        load_base("docker-archive", empty, None, AMD64, workdir)


def test_legacy_layer_path_escaping_refused(tmp_path: Path, workdir: Path) -> None:
    path = tmp_path / "evil.tar"
    cfg = canonical_json(append_layer(empty_config(AMD64), Digest.of(b"x"), "1970-01-01T00:00:00Z", "x"))
    manifest = json.dumps([{"Config": "c.json", "RepoTags": [], "Layers": ["../../etc/passwd"]}]).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in (("c.json", cfg), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(InputError, match=r"member '\.\./\.\./etc/passwd' is missing"):
        load_base("docker-archive", path, None, AMD64, workdir)
