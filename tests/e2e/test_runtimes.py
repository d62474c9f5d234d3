"""The runtime helpers themselves, checked with an image made WITHOUT pybuild (umoci + skopeo).

If these fail, the machine or the harness is broken, not pybuild: look here first when the
tests in test_cli_tools.py fail at the run step.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .runtimes import Buildah, Containerd, Podman, Runc, describe, run, umoci_image

pytestmark = [pytest.mark.tools, pytest.mark.needs("umoci", "skopeo")]

GREETING = "hello from a umoci image"
CMD = ["/bin/sh", "-c", f"echo '{GREETING}'; id -u"]


@pytest.fixture(scope="module")
def reference_layout(tmp_path_factory: pytest.TempPathFactory, busybox_rootfs_tar: Path) -> Path:
    return umoci_image(tmp_path_factory.mktemp("umoci"), busybox_rootfs_tar, "ref", CMD)


def test_umoci_layout_passes_oci_check(reference_layout: Path, oci_check) -> None:
    result = oci_check(reference_layout, strict=True, ref="ref")
    assert result.returncode == 0, describe(result)


def test_runc_runs_umoci_image(runc: Runc, reference_layout: Path) -> None:
    result = runc.run(reference_layout, "ref")
    assert result.stdout.splitlines() == [GREETING, "0"], describe(result)


def test_runc_runs_zstd_layout_through_skopeo(runc: Runc, reference_layout: Path, tmp_path: Path) -> None:
    zstd = tmp_path / "zstd"
    run(["skopeo", "copy", "--dest-compress-format", "zstd", f"oci:{reference_layout}:ref", f"oci:{zstd}:z"])
    result = runc.run(zstd, "z", args=["/bin/echo", "zstd ok"])
    assert result.stdout == "zstd ok\n", describe(result)


@pytest.mark.parametrize("transport", ["oci-archive", "docker-archive"])
def test_containerd_imports_and_runs_skopeo_archive(
    containerd: Containerd, reference_layout: Path, tmp_path: Path, transport: str
) -> None:
    archive = tmp_path / f"{transport}.tar"
    name = f"harness/{transport}:1"
    run(["skopeo", "copy", f"oci:{reference_layout}:ref", f"{transport}:{archive}:{name}"])
    refs = containerd.import_archive(archive)
    assert name in refs or f"docker.io/{name}" in refs, refs
    ref = name if name in refs else f"docker.io/{name}"
    try:
        result = containerd.run(ref)
        assert result.stdout.splitlines() == [GREETING, "0"], describe(result)
    finally:
        containerd.remove_images(*refs)


def test_podman_loads_and_runs_skopeo_docker_archive(podman: Podman, reference_layout: Path, tmp_path: Path) -> None:
    archive = tmp_path / "docker.tar"
    run(["skopeo", "copy", f"oci:{reference_layout}:ref", f"docker-archive:{archive}:harness/podman:1"])
    names = podman.load(archive)
    assert any(n.endswith("harness/podman:1") for n in names), names
    result = podman.run(names[0])
    assert result.stdout.splitlines() == [GREETING, "0"], describe(result)


def test_buildah_builds_on_umoci_layout(buildah: Buildah, reference_layout: Path, tmp_path: Path, oci_check) -> None:
    container = buildah.from_image(f"oci:{reference_layout}:ref")
    result = buildah.run(container, "/bin/sh", "-c", f"echo '{GREETING}'")
    assert result.stdout == GREETING + "\n", describe(result)
    buildah.buildah("commit", "--quiet", container, f"oci:{tmp_path / 'next'}:next")
    checked = oci_check(tmp_path / "next", strict=True, ref="next")
    assert checked.returncode == 0, describe(checked)
