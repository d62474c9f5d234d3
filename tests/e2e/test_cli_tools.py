"""The real CLI, checked with the real tools: oci-check, skopeo, umoci + runc, podman, containerd.

Every test builds its image from a recipe with ``python -m builder`` and then hands the result
to tools that know nothing about pybuild. The runtime helpers are verified on their own, with
a umoci-made image, in test_runtimes.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard

from tests.helpers import FIDELITY_ENTRIES

from .runtimes import Buildah, Containerd, Podman, Runc, describe, run

pytestmark = [pytest.mark.tools]

HELLO = "hello from pybuild e2e"

BASIC = """\
version: 1
steps:
  - rootfs: rootfs.tar.gz
  - write: /etc/greeting
    content: "hello from pybuild e2e\\n"
config:
  cmd: ["/bin/cat", "/etc/greeting"]
"""


# --------------------------------------------------------------------------------------------
# helpers


@pytest.fixture
def inspect(pybuild, tmp_path: Path):
    """``inspect(OUT, TAG)`` → the parsed ``pybuild inspect OUT:TAG --json``."""

    def _inspect(out: Path, tag: str | None = None) -> dict[str, Any]:
        result = pybuild("inspect", f"{out}:{tag}" if tag else str(out), "--json", cwd=tmp_path)
        assert result.returncode == 0, describe(result)
        described: dict[str, Any] = json.loads(result.stdout)
        return described

    return _inspect


def assert_oci_check(oci_check, path: Path, ref: str | None = None) -> None:
    result = oci_check(path, strict=True, ref=ref)
    assert result.returncode == 0, describe(result)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob(layout: Path, digest: str) -> bytes:
    algorithm, hex_ = digest.split(":", 1)
    return (layout / "blobs" / algorithm / hex_).read_bytes()


def layout_manifest(layout: Path, ref: str) -> dict[str, Any]:
    """The manifest that ``index.json`` names ``ref`` (read directly, no pybuild code)."""
    index = json.loads((layout / "index.json").read_text())
    for desc in index["manifests"]:
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref:
            manifest: dict[str, Any] = json.loads(blob(layout, desc["digest"]))
            return manifest
    raise AssertionError(f"no {ref!r} in {layout}/index.json: {index}")


def layer_names(layout: Path, layer: dict[str, Any]) -> list[str]:
    """Member names of a layer blob, whatever its compression."""
    data = blob(layout, layer["digest"])
    if layer["mediaType"].endswith("+zstd"):
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        return tar.getnames()


def archive_member(archive: Path, name: str) -> bytes:
    with tarfile.open(archive) as tar:
        member = tar.extractfile(name)
        assert member is not None, f"{name} is not a file in {archive}"
        with member:
            return member.read()


def ctr_ref(refs: list[str], name: str) -> str:
    """The ref containerd gave ``name`` on import: as written, or docker-normalised."""
    for candidate in (name, f"docker.io/{name}", f"docker.io/library/{name}"):
        if candidate in refs:
            return candidate
    raise AssertionError(f"{name!r} not among the imported images {refs}")


# --------------------------------------------------------------------------------------------
# the layout: oci-check, skopeo, runc


def test_layout_passes_oci_check_strict(build, ctx: Path, tmp_path: Path, oci_check) -> None:
    out = build(BASIC, tmp_path / "out", "-t", "e2e:1", context=ctx)
    assert_oci_check(oci_check, out, ref="e2e:1")


def test_skopeo_sees_the_digests_pybuild_inspect_reports(build, inspect, ctx: Path, tmp_path: Path) -> None:
    out = build(BASIC, tmp_path / "out", "-t", "e2e", context=ctx)
    info = inspect(out, "e2e")
    raw_manifest = run(["skopeo", "inspect", "--raw", f"oci:{out}:e2e"]).stdout.encode()
    raw_config = run(["skopeo", "inspect", "--config", "--raw", f"oci:{out}:e2e"]).stdout.encode()
    skopeo = json.loads(run(["skopeo", "inspect", f"oci:{out}:e2e"]).stdout)
    assert sha256(raw_manifest) == info["digest"]
    assert skopeo["Digest"] == info["digest"]
    assert sha256(raw_config) == info["image_id"]
    assert skopeo["Layers"] == [layer["digest"] for layer in info["layers"]]
    assert json.loads(raw_config)["rootfs"]["diff_ids"] == [layer["diff_id"] for layer in info["layers"]]
    assert skopeo["Os"] == info["platform"]["os"]
    assert skopeo["Architecture"] == info["platform"]["architecture"]


def test_runc_runs_the_layout(build, ctx: Path, tmp_path: Path, runc: Runc) -> None:
    out = build(BASIC, tmp_path / "out", "-t", "e2e", context=ctx)
    result = runc.run(out, "e2e")
    assert result.stdout == HELLO + "\n", describe(result)


def test_digest_and_metadata_files_match_inspect(build, inspect, ctx: Path, tmp_path: Path) -> None:
    digest_file, metadata_file = tmp_path / "digest.txt", tmp_path / "metadata.json"
    out = build(
        BASIC, tmp_path / "out", "-t", "e2e", "--digest-file", digest_file, "--metadata-file", metadata_file,
        context=ctx,
    )  # fmt: skip
    info = inspect(out, "e2e")
    assert digest_file.read_text().strip() == info["digest"]
    metadata = json.loads(metadata_file.read_text())
    assert metadata["digest"] == info["digest"]
    assert metadata["image_id"] == info["image_id"]
    assert metadata["layers"] == info["layers"]


def test_tag_is_recorded_as_given(build, inspect, ctx: Path, tmp_path: Path) -> None:
    tag = "acc/app:1"
    out = build(BASIC, tmp_path / "out", "-t", tag, context=ctx)
    index = json.loads((out / "index.json").read_text())
    names = [d.get("annotations", {}).get("org.opencontainers.image.ref.name") for d in index["manifests"]]
    assert names == [tag, None]  # the image, and its provenance (a referrer: untagged)
    assert json.loads(run(["skopeo", "inspect", f"oci:{out}:{tag}"]).stdout)["Digest"] == inspect(out, tag)["digest"]

    oci_archive = build(BASIC, tmp_path / "image.oci.tar", "-t", tag, "--format", "oci-archive", context=ctx)
    index = json.loads(archive_member(oci_archive, "index.json"))
    assert [d["annotations"].get("org.opencontainers.image.ref.name") for d in index["manifests"]] == [tag, None]

    docker_archive = build(BASIC, tmp_path / "image.docker.tar", "-t", tag, "--format", "docker-archive", context=ctx)
    assert [m["RepoTags"] for m in json.loads(archive_member(docker_archive, "manifest.json"))] == [[tag]]


def test_docker_archive_without_tag_part_gets_latest(build, ctx: Path, tmp_path: Path) -> None:
    archive = build(BASIC, tmp_path / "image.tar", "-t", "acc/app", "--format", "docker-archive", context=ctx)
    assert [m["RepoTags"] for m in json.loads(archive_member(archive, "manifest.json"))] == [["acc/app:latest"]]


# --------------------------------------------------------------------------------------------
# archives: podman and containerd


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_archive_loads_and_runs_in_podman(build, ctx: Path, tmp_path: Path, oci_check, podman: Podman,
                                          fmt: str) -> None:
    """With its provenance attached (listed in index.json), an archive still loads: podman 4 takes an
    OCI archive whose index lists one manifest only, and goes by manifest.json otherwise."""
    archive = build(BASIC, tmp_path / "image.tar", "-t", "e2e/podman:1", "--format", fmt, context=ctx)
    assert any("artifactType" in d for d in json.loads(archive_member(archive, "index.json"))["manifests"])
    assert_oci_check(oci_check, archive)
    names = podman.load(archive)
    assert any(n.endswith("e2e/podman:1") for n in names), names
    result = podman.run(names[0])
    assert result.stdout == HELLO + "\n", describe(result)


@pytest.mark.parametrize("fmt", ["oci-archive", "docker-archive"])
def test_archive_imports_and_runs_in_containerd(
    build, ctx: Path, tmp_path: Path, oci_check, containerd: Containerd, fmt: str
) -> None:
    name = f"e2e/ctr-{fmt}:1"
    archive = build(BASIC, tmp_path / "image.tar", "-t", name, "--format", fmt, context=ctx)
    assert_oci_check(oci_check, archive)
    refs = containerd.import_archive(archive)
    try:
        ref = ctr_ref(refs, name)
        if fmt == "oci-archive":  # imported as is: the name and the manifest bytes are kept
            assert ref == name
            [descriptor] = [d for d in json.loads(archive_member(archive, "index.json"))["manifests"]
                            if "artifactType" not in d]
            listed = containerd.ctr("images", "ls", f"name=={ref}").stdout
            assert descriptor["digest"] in listed, listed
        result = containerd.run(ref)
        assert result.stdout == HELLO + "\n", describe(result)
    finally:
        containerd.remove_images(*refs)


# --------------------------------------------------------------------------------------------
# compression


@pytest.mark.parametrize(("compression", "suffix"), [("zstd", "+zstd"), ("none", "tar"), ("gzip", "+gzip")])
def test_compression_passes_oci_check_and_runs(
    build, inspect, ctx: Path, tmp_path: Path, oci_check, runc: Runc, containerd: Containerd, compression: str,
    suffix: str,
) -> None:  # fmt: skip
    out = build(BASIC, tmp_path / "out", "-t", "c", "--compression", compression, context=ctx)
    assert_oci_check(oci_check, out)
    assert [layer["media_type"].endswith(suffix) for layer in inspect(out, "c")["layers"]] == [True, True]
    result = runc.run(out, "c")  # zstd: via `skopeo copy` to gzip, umoci 0.4.7 lacks zstd
    assert result.stdout == HELLO + "\n", describe(result)

    archive = build(BASIC, tmp_path / "image.tar", "-t", f"e2e/{compression}:1", "--compression", compression,
                    "--format", "oci-archive", context=ctx)  # fmt: skip
    refs = containerd.import_archive(archive)  # containerd reads zstd itself
    try:
        result = containerd.run(ctr_ref(refs, f"e2e/{compression}:1"))
        assert result.stdout == HELLO + "\n", describe(result)
    finally:
        containerd.remove_images(*refs)


# --------------------------------------------------------------------------------------------
# building on a base image


def base_ref(fmt: str, path: str, tag: str) -> str:
    return f"docker-archive:{path}" if fmt == "docker-archive" else f"{fmt}:{path}:{tag}"


# Bases live inside the build context and are named by a relative path: the library refuses
# paths outside the context (absolute `from: oci:/x` included).


@pytest.mark.parametrize("fmt", ["oci", "oci-archive", "docker-archive"])
def test_image_on_a_pybuild_base_reuses_its_layers_and_runs(
    build, inspect, ctx: Path, tmp_path: Path, oci_check, runc: Runc, fmt: str
) -> None:
    build(BASIC, ctx / f"base.{fmt}", "-t", "base", "--format", fmt, context=ctx)
    base_layout = build(BASIC, tmp_path / "base-layout", "-t", "base", context=ctx)  # the same image, as a layout
    recipe = f"""\
version: 1
from: "{base_ref(fmt, f"base.{fmt}", "base")}"
steps:
  - write: /etc/app
    content: "app layer\\n"
config:
  cmd: ["/bin/sh", "-c", "cat /etc/greeting /etc/app"]
"""
    out = build(recipe, tmp_path / "app", "-t", "app", context=ctx, name="app.yaml")
    assert_oci_check(oci_check, out)
    base_info, app_info = inspect(base_layout, "base"), inspect(out, "app")
    assert app_info["layers"][: len(base_info["layers"])] == base_info["layers"]
    assert len(app_info["layers"]) == len(base_info["layers"]) + 1
    assert app_info["history"][: len(base_info["history"])] == base_info["history"]
    result = runc.run(out, "app")
    assert result.stdout == f"{HELLO}\napp layer\n", describe(result)


def test_buildah_builds_on_the_layout(
    build, ctx: Path, tmp_path: Path, oci_check, buildah: Buildah, runc: Runc
) -> None:
    out = build(BASIC, tmp_path / "out", "-t", "e2e", context=ctx)
    container = buildah.from_image(f"oci:{out}:e2e")
    result = buildah.run(container, "/bin/cat", "/etc/greeting")
    assert result.stdout == HELLO + "\n", describe(result)
    (tmp_path / "extra.txt").write_text("added by buildah\n")
    buildah.buildah("copy", container, tmp_path / "extra.txt", "/etc/extra.txt")
    buildah.buildah("commit", "--quiet", container, f"oci:{tmp_path / 'next'}:next")
    assert_oci_check(oci_check, tmp_path / "next")
    result = runc.run(tmp_path / "next", "next", ["/bin/cat", "/etc/greeting", "/etc/extra.txt"])
    assert result.stdout == f"{HELLO}\nadded by buildah\n", describe(result)


REMOVE_BASE = """\
version: 1
steps:
  - rootfs: rootfs.tar.gz
  - write: /etc/secret
    content: "top secret\\n"
  - write: /opt/data/keep
    content: "kept\\n"
  - write: /opt/data/sub/gone
    content: "gone\\n"
"""

PROBE = (
    "for p in /etc/secret /opt/data/sub /opt/data/sub/gone /opt/data/keep /etc/passwd; do "
    'if test -e $p; then echo "$p present"; else echo "$p absent"; fi; done'
)
PROBE_EXPECTED = (
    "/etc/secret absent\n/opt/data/sub absent\n/opt/data/sub/gone absent\n/opt/data/keep present\n/etc/passwd present\n"
)


def test_remove_step_hides_base_files_in_real_runtimes(
    build, ctx: Path, tmp_path: Path, oci_check, runc: Runc, containerd: Containerd
) -> None:
    build(REMOVE_BASE, ctx / "base", "-t", "base", context=ctx, name="base.yaml")
    recipe = f"""\
version: 1
from: "oci:base:base"
steps:
  - remove: [/etc/secret, /opt/data/sub]
config:
  cmd: ["/bin/sh", "-c", {json.dumps(PROBE)}]
"""
    out = build(recipe, tmp_path / "out", "-t", "rm", context=ctx)
    assert_oci_check(oci_check, out)
    top = layout_manifest(out, "rm")["layers"][-1]
    names = {n.removeprefix("./").rstrip("/") for n in layer_names(out, top)}
    assert {"etc/.wh.secret", "opt/data/.wh.sub"} <= names, names
    assert "opt/data/sub/.wh.gone" not in names  # only the topmost deleted path

    result = runc.run(out, "rm")
    assert result.stdout == PROBE_EXPECTED, describe(result)

    archive = build(recipe, tmp_path / "rm.tar", "-t", "e2e/rm:1", "--format", "oci-archive", context=ctx)
    refs = containerd.import_archive(archive)
    try:
        result = containerd.run(ctr_ref(refs, "e2e/rm:1"))
        assert result.stdout == PROBE_EXPECTED, describe(result)
    finally:
        containerd.remove_images(*refs)


# --------------------------------------------------------------------------------------------
# file fidelity from a rootfs tarball



FIDELITY_RECIPE = """\
version: 1
steps:
  - rootfs: fidelity.tar.gz
config:
  cmd: ["/bin/sh"]
"""


@pytest.fixture
def fidelity_image(build, rootfs_tar, ctx: Path, tmp_path: Path, oci_check) -> Path:
    rootfs_tar(ctx / "fidelity.tar.gz", extra=FIDELITY_ENTRIES)
    out: Path = build(FIDELITY_RECIPE, tmp_path / "out", "-t", "fid", context=ctx)
    assert_oci_check(oci_check, out)
    return out


def test_hardlink_and_symlinks_survive_into_the_runc_rootfs(fidelity_image: Path, tmp_path: Path, runc: Runc) -> None:
    bundle = runc.unpack(fidelity_image, "fid", tmp_path / "bundle")
    data = bundle / "rootfs" / "data"
    file_, hard = os.lstat(data / "file"), os.lstat(data / "hard")
    assert (hard.st_ino, hard.st_nlink) == (file_.st_ino, 2)
    assert os.readlink(data / "sym") == "file"
    assert os.readlink(data / "abs") == "/etc/passwd"
    assert os.readlink(data / "dangling") == "/nonexistent"

    script = "cat /data/hard; readlink /data/sym; cat /data/sym; stat -c %h /data/file; head -n1 /data/abs"
    result = runc.run_bundle(bundle, ["/bin/sh", "-c", script])
    assert result.stdout == "payload\nfile\npayload\n2\nroot:x:0:0:root:/root:/bin/sh\n", describe(result)


def test_owners_and_special_mode_bits_survive_umoci_unpack(fidelity_image: Path, tmp_path: Path, runc: Runc) -> None:
    bundle = runc.unpack(fidelity_image, "fid", tmp_path / "bundle")
    data = bundle / "rootfs" / "data"
    expected = {
        "owned": (1000, 1000, 0o640),
        "suid": (1000, 1000, 0o4755),
        "sgid": (1000, 1000, 0o2775),
        "sticky": (0, 0, 0o1777),
        "file": (0, 0, 0o644),
    }
    found = {}
    for name in expected:
        st = os.lstat(data / name)
        found[name] = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
    assert found == expected
    tmp = os.lstat(bundle / "rootfs" / "tmp")
    assert stat.S_IMODE(tmp.st_mode) == 0o1777

    result = runc.run_bundle(bundle, ["/bin/stat", "-c", "%n %u:%g", "/data/suid", "/data/owned"])
    assert result.stdout == "/data/suid 1000:1000\n/data/owned 1000:1000\n", describe(result)


# --------------------------------------------------------------------------------------------
# reproducibility


REPRO_RECIPE = """\
version: 1
steps:
  - rootfs: rootfs.tar.gz
  - copy: app/
    to: /opt/app/
  - copy: app/bin/run.sh
    to: /usr/local/bin/run
    mode: "0755"
  - write: /etc/motd
    content: "reproducible\\n"
  - mkdir: /var/lib/app
  - symlink: /usr/bin/app
    target: /opt/app/bin/run.sh
config:
  env: {PATH: "/usr/local/bin:/usr/bin:/bin"}
  cmd: ["/opt/app/bin/run.sh"]
"""

APP_FILES = {
    "app/bin/run.sh": ("#!/bin/sh\necho reproducible app\n", 0o755),
    "app/lib/data.txt": ("some data\n", 0o644),
    "app/lib/deeper/more.txt": ("more data\n", 0o644),
    "app/README": ("readme\n", 0o644),
}


def make_repro_context(root: Path, rootfs: Path, umask: int, seed: int) -> Path:
    """A context written under ``umask``, files created in a seed-dependent order, random times.

    Permission bits are then set explicitly (copy keeps modes "as on disk"), so the only
    differences between two contexts are those the build must ignore: location, mtimes/atimes,
    creation order, the umask in force when writing.
    """
    rng = random.Random(seed)
    old = os.umask(umask)
    try:
        root.mkdir(parents=True)
        shutil.copyfile(rootfs, root / "rootfs.tar.gz")
        (root / "pybuild.yaml").write_text(REPRO_RECIPE)
        items = list(APP_FILES.items())
        rng.shuffle(items)
        for rel, (content, _) in items:
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    finally:
        os.umask(old)
    for rel, (_, mode) in APP_FILES.items():
        (root / rel).chmod(mode)
    for path in sorted((root / "app").rglob("*"), reverse=True):
        if path.is_dir():
            path.chmod(0o755)
    (root / "app").chmod(0o755)
    for path in [root, *root.rglob("*")]:
        when = rng.randrange(1_000_000_000, 1_900_000_000)
        os.utime(path, (when + rng.randrange(1000), when), follow_symlinks=False)
    return root


def test_same_recipe_from_two_contexts_gives_the_same_digest(
    pybuild, inspect, busybox_rootfs_tar: Path, tmp_path: Path, oci_check
) -> None:
    one = make_repro_context(tmp_path / "one" / "ctx", busybox_rootfs_tar, umask=0o022, seed=1)
    two = make_repro_context(tmp_path / "two" / "deeper" / "ctx", busybox_rootfs_tar, umask=0o077, seed=2)
    results = []
    for context, umask, cwd, recipe in (
        (one, 0o022, one, "pybuild.yaml"),
        (two, 0o077, tmp_path, two / "pybuild.yaml"),
    ):
        out = context.parent / "out"
        old = os.umask(umask)  # the build itself also runs under a different umask
        try:
            result = pybuild(recipe, "-o", out, "-t", "repro", "--source-date-epoch", "1700000000", cwd=cwd)
        finally:
            os.umask(old)
        assert result.returncode == 0, describe(result)
        assert_oci_check(oci_check, out)
        results.append(inspect(out, "repro"))
    first, second = results
    assert first["digest"] == second["digest"], json.dumps(results, indent=1)
    assert first == second
    assert first["created"].startswith("2023-11-14T22:13:20")


def test_epoch_from_environment_equals_the_flag(pybuild, inspect, ctx: Path, tmp_path: Path) -> None:
    (ctx / "pybuild.yaml").write_text(BASIC)
    flag = pybuild(ctx / "pybuild.yaml", "-o", tmp_path / "flag", "-t", "e", "--source-date-epoch", "1700000000")
    env = pybuild(ctx / "pybuild.yaml", "-o", tmp_path / "env", "-t", "e", env={"SOURCE_DATE_EPOCH": "1700000000"})
    assert flag.returncode == 0, describe(flag)
    assert env.returncode == 0, describe(env)
    assert inspect(tmp_path / "flag", "e")["digest"] == inspect(tmp_path / "env", "e")["digest"]
