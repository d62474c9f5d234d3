"""Session-wide runtimes for the end-to-end tests: runc (via umoci), a private containerd, podman.

Each fixture skips the test (fails it on CI) when its tools are missing or when not root.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .debian import debian_rootfs  # noqa: F401 - a fixture for every e2e module
from .runtimes import Buildah, Containerd, Podman, Runc, describe


@pytest.fixture(scope="session")
def runc(tmp_path_factory: pytest.TempPathFactory, need: Callable[..., None]) -> Iterator[Runc]:
    """``runc.run(layout, tag, args=None)`` → CompletedProcess: umoci unpack + runc run."""
    need("umoci", "runc", "skopeo", root=True)
    helper = Runc(tmp_path_factory.mktemp("runc"))
    yield helper
    helper.close()


@pytest.fixture(scope="session")
def containerd(tmp_path_factory: pytest.TempPathFactory, need: Callable[..., None]) -> Iterator[Containerd]:
    """A private containerd: ``containerd.ctr(...)``, ``.import_archive(tar)``, ``.run(ref, *cmd)``."""
    need("containerd", "ctr", "runc", root=True)
    daemon = Containerd(tmp_path_factory.mktemp("containerd")).start()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory, need: Callable[..., None]) -> Iterator[Podman]:
    """podman with private vfs storage: ``podman.load(tar)`` → names, ``podman.run(name, *cmd)``."""
    need("podman", "runc", root=True)
    helper = Podman(tmp_path_factory.mktemp("podman"))
    yield helper
    helper.close()


@pytest.fixture(scope="session")
def buildah(tmp_path_factory: pytest.TempPathFactory, need: Callable[..., None]) -> Iterator[Buildah]:
    """buildah with private vfs storage: ``.from_image("oci:OUT:TAG")``, ``.run(ctr, *cmd)``, ``.buildah(...)``."""
    need("buildah", "runc", root=True)
    helper = Buildah(tmp_path_factory.mktemp("buildah"))
    yield helper
    helper.close()


@pytest.fixture
def ctx(tmp_path: Path, busybox_rootfs_tar: Path) -> Path:
    """A build context holding the busybox ``rootfs.tar.gz``."""
    context = tmp_path / "ctx"
    context.mkdir()
    shutil.copyfile(busybox_rootfs_tar, context / "rootfs.tar.gz")
    return context


@pytest.fixture
def build(pybuild, tmp_path: Path):
    """``build(recipe_text, out, *args, context=DIR)`` → OUT; fails the test if pybuild fails."""

    def _build(
        recipe: str, out: Path, *args: str | os.PathLike[str], context: Path, name: str = "pybuild.yaml"
    ) -> Path:
        recipe_path = context / name
        recipe_path.write_text(recipe)
        result = pybuild(recipe_path, "-o", out, *args, cwd=tmp_path)
        assert result.returncode == 0, describe(result)
        return out

    return _build
