"""Multi-platform builds: one recipe, one image index, per-platform inputs through ${TARGETARCH}."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from .runtimes import describe

pytestmark = [pytest.mark.tools]

RECIPE = """\
version: 1
tag: multi
platforms: [linux/amd64, linux/arm64]
steps:
  - rootfs: rootfs-${TARGETARCH}.tar.gz
  - write: /etc/platform
    content: "${TARGETPLATFORM} built on ${BUILDPLATFORM}\\n"
config:
  cmd: [/bin/cat, /etc/platform]
"""


def tiny_rootfs(path: Path) -> None:
    with tarfile.open(path, "w:gz") as tf:
        data = b"not really an arm64 system\n"
        ti = tarfile.TarInfo("README")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))


def test_two_platform_index(pybuild, ctx: Path, tmp_path: Path, oci_check, runc, need) -> None:
    need("skopeo", "umoci")
    shutil.copy(ctx / "rootfs.tar.gz", ctx / "rootfs-amd64.tar.gz")
    tiny_rootfs(ctx / "rootfs-arm64.tar.gz")
    (ctx / "pybuild.yaml").write_text(RECIPE)
    out = tmp_path / "out"
    meta = tmp_path / "meta.json"
    built = pybuild(ctx / "pybuild.yaml", "-o", out, "--metadata-file", meta, "--digest-file", tmp_path / "d")
    assert built.returncode == 0, describe(built)
    assert oci_check(out, strict=True, ref="multi").returncode == 0
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{out}:multi"], capture_output=True, text=True,
                         check=True).stdout
    index = json.loads(raw)
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert [m["platform"] for m in index["manifests"]] == [
        {"architecture": "amd64", "os": "linux"}, {"architecture": "arm64", "os": "linux"}]
    desc = json.loads(meta.read_text())
    assert (tmp_path / "d").read_text().strip() == desc["digest"]
    assert [m["platform"]["architecture"] for m in desc["manifests"]] == ["amd64", "arm64"]
    assert desc["manifests"][0]["layers"] != desc["manifests"][1]["layers"]  # per-platform rootfs
    listed = subprocess.run(["umoci", "ls", "--layout", str(out)], capture_output=True, text=True, check=True)
    assert listed.stdout.split() == ["multi"]
    # one platform out of the index (skopeo picks the host's), then umoci + runc run it
    single = tmp_path / "single"
    subprocess.run(["skopeo", "copy", f"oci:{out}:multi", f"oci:{single}:one"], capture_output=True, check=True)
    ran = runc.run(single, "one")
    assert ran.stdout.strip() == "linux/amd64 built on linux/amd64", describe(ran)


def test_run_step_for_a_foreign_platform_says_which(pybuild, ctx: Path, tmp_path: Path) -> None:
    binfmt = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    if binfmt.exists():
        pytest.skip("a qemu-aarch64 binfmt handler is registered here: the foreign run would work")
    (ctx / "pybuild.yaml").write_text(
        "version: 1\nplatform: linux/arm64\nsteps:\n  - rootfs: rootfs.tar.gz\n  - run: echo hi\n")
    failed = pybuild(ctx / "pybuild.yaml", "-o", tmp_path / "out")
    assert failed.returncode == 1
    first = next(line for line in failed.stderr.splitlines() if line.startswith("pybuild: error:"))
    assert "steps[1].run: cannot run commands for linux/arm64" in first and "qemu-user-static" in first


def test_multi_platform_docker_archive_lists_every_platform(pybuild, ctx: Path, tmp_path: Path, podman) -> None:
    """manifest.json has one entry per platform, the name on the first; podman loads and runs it."""
    shutil.copy(ctx / "rootfs.tar.gz", ctx / "rootfs-amd64.tar.gz")
    tiny_rootfs(ctx / "rootfs-arm64.tar.gz")
    (ctx / "pybuild.yaml").write_text(RECIPE)
    archive = tmp_path / "multi.tar"
    meta = tmp_path / "meta.json"
    built = pybuild(ctx / "pybuild.yaml", "-o", archive, "--format", "docker-archive", "--metadata-file", meta)
    assert built.returncode == 0, describe(built)
    with tarfile.open(archive) as tf:
        manifest = json.loads(tf.extractfile("manifest.json").read())  # type: ignore[union-attr]
    images = json.loads(meta.read_text())["manifests"]
    assert [e["Config"].split("/")[-1] for e in manifest] == [m["image_id"].split(":")[1] for m in images]
    assert [e["RepoTags"] for e in manifest] == [["multi:latest"], []]
    assert [len(e["Layers"]) for e in manifest] == [len(m["layers"]) for m in images]
    names = podman.load(archive)
    assert any(n.endswith("multi:latest") for n in names), names
    ran = podman.run("localhost/multi:latest")
    assert ran.stdout.strip() == "linux/amd64 built on linux/amd64", describe(ran)


@pytest.mark.needs("unshare", root=True)
def test_a_stage_on_the_build_platform_serves_every_target(pybuild, ctx: Path, tmp_path: Path) -> None:
    """Dockerfile's ``FROM --platform=$BUILDPLATFORM`` cross-compile idiom: the stage's run step
    runs natively (no emulation) for each target platform, sees that target's TARGETARCH, and the
    final image of each platform copies its own result."""
    shutil.copy(ctx / "rootfs.tar.gz", ctx / "rootfs-amd64.tar.gz")
    tiny_rootfs(ctx / "rootfs-arm64.tar.gz")
    (ctx / "pybuild.yaml").write_text("""\
version: 1
platforms: [linux/amd64, linux/arm64]
args: {TARGETARCH: null}
stages:
  build:
    platform: ${BUILDPLATFORM}
    steps:
      - rootfs: rootfs.tar.gz
      - run: echo "built on $(uname -m) for $TARGETARCH" > /artifact
steps:
  - rootfs: rootfs-${TARGETARCH}.tar.gz
  - copy: /artifact
    from: build
    to: /artifact
""")
    meta = tmp_path / "meta.json"
    built = pybuild(ctx / "pybuild.yaml", "-o", tmp_path / "out", "--metadata-file", meta, "-q")
    assert built.returncode == 0, describe(built)
    index = json.loads(meta.read_text())
    blobs = tmp_path / "out" / "blobs" / "sha256"
    got = []
    for image in index["manifests"]:
        data = (blobs / image["layers"][-1]["digest"].split(":")[1]).read_bytes()
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            member = tf.extractfile("artifact")
            assert member is not None
            got.append(member.read().decode().strip())
    import platform

    machine = platform.machine()
    assert got == [f"built on {machine} for amd64", f"built on {machine} for arm64"]
