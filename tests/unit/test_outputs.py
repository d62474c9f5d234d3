"""OCI layout and archive writers: round trips, tags, garbage collection, atomicity, concurrency, interop."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tarfile
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from builder.archive.docker import write_docker_archive
from builder.archive.manifestjson import docker_repo_tag
from builder.archive.oci import write_oci_archive
from builder.errors import InputError, IntegrityError, OutputError
from builder.fs.lock import private_sibling
from builder.image import Image, ImageIndex
from builder.layout.read import read_layout
from builder.layout.write import write_layout
from builder.oci.canonical import canonical_json
from builder.oci.descriptor import Descriptor
from builder.oci.digest import Digest
from builder.oci.manifest import REF_NAME, image_manifest
from builder.oci.mediatypes import MediaType
from builder.oci.platform import Platform
from builder.output import write_output
from tests.helpers import AMD64, ARM64, OciCheck, make_image, make_index

needs_skopeo = pytest.mark.needs("skopeo")
needs_podman = pytest.mark.needs("podman", root=True)


def blob_names(out: Path) -> set[str]:
    return {p.name for p in (out / "blobs" / "sha256").iterdir()}


def image_blob_names(image: Image) -> set[str]:
    return {image.digest.hex, image.image_id.hex, *(layer.digest.hex for layer in image.layers)}


def refs(out: Path) -> list[str]:
    index = json.loads((out / "index.json").read_bytes())
    return [m["annotations"][REF_NAME] for m in index["manifests"]]


@pytest.fixture
def image(tmp_path: Path) -> Image:
    return make_image(tmp_path, {"etc/hello": b"hello\n", "bin/app": b"#!/bin/sh\necho hi\n"})


# ---- layout ------------------------------------------------------------------------------


def test_layout_round_trip(tmp_path: Path, image: Image) -> None:
    out = tmp_path / "out"
    write_layout(out, image, "acc/app:1")
    assert json.loads((out / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((out / "index.json").read_bytes())
    assert index["manifests"] == [image.descriptor({REF_NAME: "acc/app:1"}).to_json()]
    assert index["manifests"][0]["platform"] == {"os": "linux", "architecture": "amd64"}
    got = read_layout(out, "acc/app:1")
    assert isinstance(got, Image)
    assert (got.digest, got.image_id, got.platform) == (image.digest, image.image_id, AMD64)
    assert [(la.digest, la.diff_id) for la in got.layers] == [(la.digest, la.diff_id) for la in image.layers]
    assert all(not la.verified and la.path.parent == out / "blobs" / "sha256" for la in got.layers)
    assert read_layout(out).digest == image.digest  # the only entry
    assert blob_names(out) == image_blob_names(image)
    assert not [p for p in tmp_path.iterdir() if "pybuild-tmp" in p.name]


def test_layout_passes_oci_check(tmp_path: Path, image: Image, oci_check: OciCheck) -> None:
    out = tmp_path / "out"
    write_layout(out, image, "1.0")
    write_layout(out, make_index([image, make_image(tmp_path, {"x": b"arm"}, platform=ARM64)]), "multi")
    result = oci_check(out)
    assert result.returncode == 0, result.stdout


def test_verified_blob_of_the_work_directory_is_hard_linked(tmp_path: Path, image: Image) -> None:
    """A blob this build wrote (in OUT's private work sibling, no other link) moves in without a copy."""
    out = tmp_path / "out"
    layer = image.layers[0]
    with private_sibling(out, "work", directory=True) as work:
        fresh = work / layer.digest.hex
        layer.path.rename(fresh)
        write_layout(out, dataclasses.replace(image, layers=(dataclasses.replace(layer, path=fresh),)), "1")
        assert (out / "blobs" / "sha256" / layer.digest.hex).stat().st_ino == fresh.stat().st_ino


def test_verified_blob_from_elsewhere_is_copied(tmp_path: Path, image: Image) -> None:
    """Anything else (the layer cache's files, a second link of a work file) never shares its inode with OUT."""
    out = tmp_path / "out"
    write_layout(out, image, "1")
    layer = image.layers[0]
    stored = out / "blobs" / "sha256" / layer.digest.hex
    assert stored.stat().st_ino != layer.path.stat().st_ino
    assert stored.read_bytes() == layer.path.read_bytes()
    again = tmp_path / "again"
    with private_sibling(again, "work", directory=True) as work:
        linked = work / layer.digest.hex
        linked.hardlink_to(layer.path)  # as a work file the cache had linked to would be
        write_layout(again, dataclasses.replace(image, layers=(dataclasses.replace(layer, path=linked),)), "1")
        assert (again / "blobs" / "sha256" / layer.digest.hex).stat().st_ino != linked.stat().st_ino


@pytest.mark.tools
@needs_skopeo
def test_skopeo_inspects_layout(tmp_path: Path, image: Image) -> None:
    out = tmp_path / "out"
    write_layout(out, image, "acc/app:1")
    result = subprocess.run(["skopeo", "inspect", f"oci:{out}:acc/app:1"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["Digest"] == str(image.digest)
    assert info["Layers"] == [str(la.digest) for la in image.layers]


def test_other_tags_kept_in_order(tmp_path: Path, image: Image) -> None:
    out = tmp_path / "out"
    other = make_image(tmp_path, {"b": b"b"})
    third = make_image(tmp_path, {"c": b"c"})
    write_layout(out, image, "a")
    write_layout(out, other, "b")
    write_layout(out, third, "c")
    assert refs(out) == ["a", "b", "c"]
    for tag, img in (("a", image), ("b", other), ("c", third)):
        assert read_layout(out, tag).digest == img.digest


def test_tag_replaced_in_place_and_old_blobs_collected(tmp_path: Path, image: Image, oci_check: OciCheck) -> None:
    out = tmp_path / "out"
    kept = make_image(tmp_path, {"kept": b"kept"})
    newer = make_image(tmp_path, {"etc/hello": b"changed\n"})
    write_layout(out, image, "x")
    write_layout(out, kept, "keep")
    write_layout(out, newer, "x")
    assert refs(out) == ["x", "keep"]
    assert read_layout(out, "x").digest == newer.digest
    assert blob_names(out) == image_blob_names(newer) | image_blob_names(kept)
    assert oci_check(out).returncode == 0


def test_same_image_under_a_second_tag_keeps_shared_blobs(tmp_path: Path, image: Image) -> None:
    out = tmp_path / "out"
    write_layout(out, image, "one")
    write_layout(out, image, "two")
    write_layout(out, make_image(tmp_path, {"z": b"z"}), "one")
    assert read_layout(out, "two").digest == image.digest
    assert image_blob_names(image) <= blob_names(out)


def test_index_written_and_platform_selected(tmp_path: Path) -> None:
    amd = make_image(tmp_path, {"arch": b"amd64"})
    arm = make_image(tmp_path, {"arch": b"arm64"}, platform=ARM64)
    index = make_index([amd, arm])
    out = tmp_path / "out"
    write_layout(out, index, "multi")
    whole = read_layout(out, "multi")
    assert isinstance(whole, ImageIndex)
    assert whole.digest == index.digest
    assert [img.digest for img in whole.images] == [amd.digest, arm.digest]
    picked = read_layout(out, "multi", ARM64)
    assert isinstance(picked, Image)
    assert picked.digest == arm.digest
    assert read_layout(out, "multi", Platform("linux", "arm64", "v8")).digest == arm.digest
    with pytest.raises(InputError, match=r"no image for platform linux/s390x \(available: linux/amd64, linux/arm64\)"):
        read_layout(out, "multi", Platform("linux", "s390x"))


def test_concurrent_writers_all_land(tmp_path: Path, oci_check: OciCheck) -> None:
    images = [make_image(tmp_path, {f"file{i}": str(i).encode()}) for i in range(8)]
    fresh, existing = tmp_path / "fresh", tmp_path / "existing"
    write_layout(existing, make_image(tmp_path, {"seed": b"seed"}), "seed")
    barrier = threading.Barrier(len(images))

    def run(i: int) -> None:
        barrier.wait()  # start together, so the creators of `fresh` race for the rename
        write_layout(fresh if i % 2 else existing, images[i], f"t{i}")

    with ThreadPoolExecutor(len(images)) as pool:
        for future in [pool.submit(run, i) for i in range(len(images))]:
            future.result()  # re-raises a writer's exception
    assert sorted(refs(fresh)) == ["t1", "t3", "t5", "t7"]
    assert sorted(refs(existing)) == ["seed", "t0", "t2", "t4", "t6"]
    for i, img in enumerate(images):
        assert read_layout(fresh if i % 2 else existing, f"t{i}").digest == img.digest
    assert oci_check(fresh).returncode == 0
    assert oci_check(existing).returncode == 0
    assert not [p for p in tmp_path.iterdir() if "pybuild-tmp" in p.name]


def test_concurrent_processes_all_land(tmp_path: Path, oci_check: OciCheck) -> None:
    """Separate processes (the real case: two builds) copying unverified blobs into one new OUT."""
    src, out = tmp_path / "src", tmp_path / "out"
    tags = [f"p{i}" for i in range(4)]
    for i, tag in enumerate(tags):
        write_layout(src, make_image(tmp_path, {f"f{i}": bytes([i]) * 5000}), tag)
    code = (
        "import sys; from pathlib import Path; from builder.layout.read import read_layout; from builder.layout.write import write_layout; "
        "write_layout(Path(sys.argv[2]), read_layout(Path(sys.argv[1]), sys.argv[3]), sys.argv[3])"
    )
    root = Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-c", code, str(src), str(out), t], cwd=root) for t in tags]
    assert [p.wait(timeout=60) for p in procs] == [0] * len(tags)
    assert sorted(refs(out)) == tags
    for tag in tags:
        assert read_layout(out, tag).digest == read_layout(src, tag).digest
    assert oci_check(out).returncode == 0


def corrupt_unverified(tmp_path: Path) -> Image:
    img = make_image(tmp_path, {"data": b"x" * 1000}, verified=False)
    path = img.layers[0].path
    data = bytearray(path.read_bytes())
    data[-9] ^= 0xFF  # inside the gzip trailer: same size, wrong content
    path.write_bytes(bytes(data))
    return img


def test_corrupt_unverified_blob_leaves_layout_unchanged(tmp_path: Path, image: Image) -> None:
    out = tmp_path / "out"
    write_layout(out, image, "good")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(IntegrityError, match=str(tmp_path)):
        write_layout(out, corrupt_unverified(tmp_path), "bad")
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_corrupt_unverified_blob_creates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(IntegrityError):
        write_layout(out, corrupt_unverified(tmp_path), "bad")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_unverified_blob_copied_when_good(tmp_path: Path) -> None:
    img = make_image(tmp_path, {"data": b"ok"}, verified=False)
    out = tmp_path / "out"
    write_layout(out, img, "1")
    blob = out / "blobs" / "sha256" / img.layers[0].digest.hex
    assert blob.stat().st_ino != img.layers[0].path.stat().st_ino
    assert blob.read_bytes() == img.layers[0].path.read_bytes()


def test_existing_output_must_be_a_layout(tmp_path: Path, image: Image) -> None:
    (tmp_path / "notlayout").mkdir()
    (tmp_path / "notlayout" / "README").write_text("mine")
    with pytest.raises(OutputError, match="notlayout: exists and is not an OCI image layout"):
        write_layout(tmp_path / "notlayout", image, "1")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a directory"):
        write_layout(tmp_path / "file", image, "1")
    empty = tmp_path / "empty"
    empty.mkdir()
    write_layout(empty, image, "1")
    assert read_layout(empty, "1").digest == image.digest


def test_stale_temporary_files_removed(tmp_path: Path, image: Image, oci_check: OciCheck) -> None:
    out = tmp_path / "out"
    write_layout(out, image, "1")
    (out / ".tmp-123-dead").write_bytes(b"partial blob")
    (out / "blobs" / "sha256" / "not-a-digest").write_bytes(b"junk")
    write_layout(out, make_image(tmp_path, {"n": b"n"}), "2")
    assert not (out / ".tmp-123-dead").exists()
    assert not (out / "blobs" / "sha256" / "not-a-digest").exists()
    assert oci_check(out).returncode == 0


def test_read_layout_errors(tmp_path: Path, image: Image) -> None:
    with pytest.raises(InputError, match="no such OCI image layout"):
        read_layout(tmp_path / "missing", None)
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="not an OCI image layout"):
        read_layout(tmp_path / "plain", None)
    out = tmp_path / "out"
    write_layout(out, image, "a")
    write_layout(out, make_image(tmp_path, {"b": b"b"}), "b")
    with pytest.raises(InputError, match=r"no image tagged 'nope' \(tags present: 'a', 'b'\)"):
        read_layout(out, "nope")
    with pytest.raises(InputError, match="no image tagged 'latest'"):
        read_layout(out, None)
    assert read_layout(out, str(image.digest)).digest == image.digest


def test_read_layout_checks_digests(tmp_path: Path, image: Image) -> None:
    out = tmp_path / "out"
    write_layout(out, image, "1")
    config = out / "blobs" / "sha256" / image.image_id.hex
    config.write_bytes(config.read_bytes().replace(b"amd64", b"arm64"))
    with pytest.raises(IntegrityError, match=image.image_id.hex):
        read_layout(out, "1")


def test_read_docker_media_types(tmp_path: Path, image: Image) -> None:
    layers = [Descriptor(MediaType.DOCKER_LAYER_GZIP, la.digest, la.descriptor.size) for la in image.layers]
    cdesc = Descriptor(MediaType.DOCKER_CONFIG, image.image_id, len(image.raw_config))
    manifest = image_manifest(cdesc, layers)
    manifest["mediaType"] = MediaType.DOCKER_MANIFEST
    docker = Image(canonical_json(manifest), image.raw_config, MediaType.DOCKER_MANIFEST, image.layers, AMD64)
    out = tmp_path / "out"
    write_layout(out, docker, "d")
    got = read_layout(out, "d")
    assert isinstance(got, Image)
    assert got.media_type == MediaType.DOCKER_MANIFEST
    assert got.layers[0].descriptor.media_type == MediaType.DOCKER_LAYER_GZIP


# ---- archives ----------------------------------------------------------------------------


def test_oci_archive_deterministic_and_valid(tmp_path: Path, image: Image, oci_check: OciCheck) -> None:
    first, second = tmp_path / "a.tar", tmp_path / "b.tar"
    write_oci_archive(first, image, "1.0", 1700000000)
    write_oci_archive(second, image, "1.0", 1700000000)
    assert first.read_bytes() == second.read_bytes()
    result = oci_check(first)
    assert result.returncode == 0, result.stdout
    with tarfile.open(first) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert names[:2] == ["blobs", "blobs/sha256"]
    assert set(names[2:]) == {f"blobs/sha256/{h}" for h in image_blob_names(image)} | {"index.json", "oci-layout"}
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (1700000000, 0, 0, "", "")
        assert m.mode == (0o755 if m.isdir() else 0o644)
        assert m.isdir() or m.isreg()


def test_docker_archive_manifest_and_layout(tmp_path: Path, image: Image, oci_check: OciCheck) -> None:
    out = tmp_path / "d.tar"
    write_docker_archive(out, image, "acc/app", 0)
    again = tmp_path / "again.tar"
    write_docker_archive(again, image, "acc/app", 0)
    assert out.read_bytes() == again.read_bytes()
    assert oci_check(out).returncode == 0
    with tarfile.open(out) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        repositories = json.load(tar.extractfile("repositories"))  # type: ignore[arg-type]
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    assert manifest == [
        {
            "Config": f"blobs/sha256/{image.image_id.hex}",
            "RepoTags": ["acc/app:latest"],
            "Layers": [f"blobs/sha256/{la.digest.hex}" for la in image.layers],
        }
    ]
    assert repositories == {"acc/app": {"latest": image.image_id.hex}}
    assert index["manifests"][0]["annotations"] == {REF_NAME: "acc/app"}


@pytest.mark.parametrize(
    ("tag", "repo_tag"),
    [("app", "app:latest"), ("acc/app:1", "acc/app:1"), ("localhost:5000/app", "localhost:5000/app:latest")],
)
def test_docker_repo_tag(tag: str, repo_tag: str) -> None:
    assert docker_repo_tag(tag) == repo_tag


def test_docker_archive_of_index_lists_one_platform(tmp_path: Path, oci_check: OciCheck) -> None:
    amd = make_image(tmp_path, {"arch": b"amd64"})
    arm = make_image(tmp_path, {"arch": b"arm64"}, platform=ARM64)
    out = tmp_path / "d.tar"
    write_docker_archive(out, make_index([amd, arm]), "app:1", 0)
    with tarfile.open(out) as tar:
        assert json.load(tar.extractfile("manifest.json"))[0]["Config"].endswith(amd.image_id.hex)  # type: ignore[arg-type]
    write_docker_archive(out, make_index([amd, arm]), "app:1", 0, platform=ARM64)
    with tarfile.open(out) as tar:
        assert json.load(tar.extractfile("manifest.json"))[0]["Config"].endswith(arm.image_id.hex)  # type: ignore[arg-type]
    assert oci_check(out).returncode == 0


def test_archive_replaced_atomically_and_kept_on_failure(tmp_path: Path, image: Image) -> None:
    out = tmp_path / "o.tar"
    out.write_bytes(b"old")
    write_oci_archive(out, image, "1", 0)
    good = out.read_bytes()
    with pytest.raises(IntegrityError):
        write_oci_archive(out, corrupt_unverified(tmp_path), "1", 0)
    assert out.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["o.tar"]
    with pytest.raises(OutputError, match="is a directory"):
        write_oci_archive(tmp_path, image, "1", 0)


def test_write_output_dispatches(tmp_path: Path, image: Image) -> None:
    write_output("oci", tmp_path / "layout", image, "1", 0)
    write_output("oci-archive", tmp_path / "o.tar", image, "1", 0)
    write_output("docker-archive", tmp_path / "d.tar", image, "1", 0)
    assert (tmp_path / "layout" / "index.json").is_file()
    assert (tmp_path / "o.tar").is_file() and (tmp_path / "d.tar").is_file()
    with pytest.raises(OutputError, match="unknown output format"):
        write_output("zip", tmp_path / "z", image, "1", 0)


@pytest.mark.tools
@needs_skopeo
@pytest.mark.parametrize("kind", ["oci-archive", "docker-archive"])
def test_skopeo_inspects_archives(tmp_path: Path, image: Image, kind: str) -> None:
    out = tmp_path / "img.tar"
    (write_oci_archive if kind == "oci-archive" else write_docker_archive)(out, image, "acc/app:1", 0)
    result = subprocess.run(["skopeo", "inspect", f"{kind}:{out}"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["Architecture"] == "amd64"
    if kind == "oci-archive":
        assert info["Digest"] == str(image.digest)
    assert len(info["Layers"]) == len(image.layers)


def test_layout_digest_is_canonical(tmp_path: Path, image: Image) -> None:
    out = tmp_path / "out"
    write_layout(out, image, "1")
    raw = (out / "index.json").read_bytes()
    assert raw == canonical_json(json.loads(raw))
    assert Digest.of((out / "blobs" / "sha256" / image.digest.hex).read_bytes()) == image.digest


def test_failure_midway_leaves_no_garbage(tmp_path: Path, image: Image) -> None:
    """A good new layer staged before a bad one must not stay behind in blobs/."""
    out = tmp_path / "out"
    write_layout(out, image, "good")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    base = make_image(tmp_path, {"new-good-layer": b"fine"})
    bad = make_image(tmp_path, {"data": b"y" * 1000}, base=base, verified=False)
    data = bytearray(bad.layers[1].path.read_bytes())
    data[-9] ^= 0xFF
    bad.layers[1].path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        write_layout(out, bad, "bad")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in out.iterdir()) == ["blobs", "index.json", "oci-layout"]


@pytest.mark.parametrize("tag", ["", "has space", "UPPER/../x", "-lead", "a//b"])
def test_invalid_ref_names_refused(tmp_path: Path, image: Image, tag: str) -> None:
    with pytest.raises(OutputError, match="not a valid image reference name"):
        write_layout(tmp_path / "out", image, tag)
    with pytest.raises(OutputError, match="not a valid image reference name"):
        write_oci_archive(tmp_path / "o.tar", image, tag, 0)
    assert not (tmp_path / "out").exists() and not (tmp_path / "o.tar").exists()


def test_attestation_entries_skipped_when_selecting(tmp_path: Path) -> None:
    amd = make_image(tmp_path, {"a": b"amd"})
    att = make_image(tmp_path, {"sbom.json": b"{}"}, platform=Platform("unknown", "unknown"))
    out = tmp_path / "out"
    write_layout(out, make_index([att, amd]), "t")
    assert read_layout(out, "t", AMD64).digest == amd.digest
    whole = read_layout(out, "t")
    assert isinstance(whole, ImageIndex) and len(whole.images) == 2
    write_docker_archive(tmp_path / "d.tar", whole, "t", 0)
    with tarfile.open(tmp_path / "d.tar") as tar:
        assert json.load(tar.extractfile("manifest.json"))[0]["Config"].endswith(amd.image_id.hex)  # type: ignore[arg-type]


@pytest.mark.tools
@needs_podman
@pytest.mark.parametrize("kind", ["oci-archive", "docker-archive"])
def test_podman_loads_archives(tmp_path: Path, image: Image, kind: str) -> None:
    """``podman load`` into a private store (vfs, under tmp_path): the machine's images are untouched."""
    out = tmp_path / "img.tar"
    (write_oci_archive if kind == "oci-archive" else write_docker_archive)(out, image, "acc/app:1", 0)
    with tempfile.TemporaryDirectory(prefix="pbp-", dir="/tmp") as run:  # podman wants a short runroot
        store = ["--root", str(tmp_path / "root"), "--runroot", run, "--storage-driver", "vfs"]

        def podman(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["podman", *store, *args], capture_output=True, text=True, timeout=120, check=False)

        loaded = podman("load", "-i", str(out))
        assert loaded.returncode == 0, loaded.stderr
        assert "acc/app:1" in loaded.stdout
        inspected = podman("image", "inspect", "--format", "{{.Id}}", "acc/app:1")
        assert inspected.stdout.strip() == image.image_id.hex


def test_open_regular_refuses_what_would_block_or_never_end(tmp_path: Path) -> None:
    """FIFOs open without blocking and are refused, as are symlinks (unless followed) and directories."""
    import os

    from builder.fs.atomic import NotRegularFileError, open_regular, read_regular

    (tmp_path / "file").write_bytes(b"0123456789")
    os.mkfifo(tmp_path / "fifo")  # no writer: a plain open would wait for ever
    (tmp_path / "link").symlink_to(tmp_path / "file")
    (tmp_path / "zero").symlink_to("/dev/zero")
    assert read_regular(tmp_path / "file", 4) == b"01234"  # limit + 1: the caller sees it is too long
    for name, why in (("fifo", "a FIFO"), ("link", "symbolic link"), ("zero", "symbolic link"), (".", "directory")):
        with pytest.raises(NotRegularFileError, match=why):
            open_regular(tmp_path / name)
    os.close(open_regular(tmp_path / "link", follow=True))
    with pytest.raises(NotRegularFileError, match="character device"):
        open_regular(tmp_path / "zero", follow=True)


def test_clone_file_copies_never_links(tmp_path: Path) -> None:
    from builder.fs.atomic import clone_file

    src = tmp_path / "src"
    src.write_bytes(b"x" * 3_000_000)
    clone_file(src, tmp_path / "dst", 3_000_000)
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()
    assert (tmp_path / "dst").stat().st_ino != src.stat().st_ino
    with pytest.raises(IntegrityError, match="descriptor says 5"):
        clone_file(src, tmp_path / "other", 5)
    (tmp_path / "planted").symlink_to(tmp_path / "victim")
    with pytest.raises(FileExistsError):  # O_EXCL: never written through a link at the name
        clone_file(src, tmp_path / "planted", None)
    assert not (tmp_path / "victim").exists()


def test_copy_checked_reads_no_more_than_the_size(tmp_path: Path) -> None:
    """A source longer than its descriptor says is refused after size + 1 bytes, not read to its end."""
    from builder.fs.atomic import copy_checked

    (tmp_path / "long").write_bytes(b"a" * (3 << 20))
    with pytest.raises(IntegrityError, match=r"\(11 bytes\)"):
        copy_checked(tmp_path / "long", tmp_path / "dst", Digest.of(b"a" * 10), 10)


def test_read_layout_refuses_special_files_and_huge_documents(tmp_path: Path, image: Image) -> None:
    import os

    from builder.layout.format import MAX_JSON

    out = tmp_path / "out"
    write_layout(out, image, "1")
    config = out / "blobs" / "sha256" / image.image_id.hex
    data = config.read_bytes()
    config.unlink()
    os.mkfifo(config)
    with pytest.raises(InputError, match="blob is a FIFO, not a regular file"):
        read_layout(out, "1")
    config.unlink()
    config.write_bytes(data)
    index = (out / "index.json").read_bytes()
    (out / "index.json").write_bytes(index + b" " * MAX_JSON)
    with pytest.raises(InputError, match=f"larger than {MAX_JSON} bytes"):
        read_layout(out, "1")
    (out / "index.json").write_bytes(index)
    assert read_layout(out, "1").digest == image.digest


def test_a_planted_blob_in_out_is_replaced(tmp_path: Path, image: Image) -> None:
    """A link of the right name and size in OUT's blobs is not taken for the blob: it is replaced."""
    out = tmp_path / "out"
    write_layout(out, make_image(tmp_path, {"other": b"1"}), "other")
    planted = out / "blobs" / "sha256" / image.layers[0].digest.hex
    (tmp_path / "decoy").write_bytes(b"\0" * image.layers[0].descriptor.size)
    planted.symlink_to(tmp_path / "decoy")
    write_layout(out, image, "1")
    assert not planted.is_symlink() and planted.read_bytes() == image.layers[0].path.read_bytes()
