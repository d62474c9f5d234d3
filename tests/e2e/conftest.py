"""Session-wide runtimes for the end-to-end tests: runc (via umoci), a private containerd, podman.

Each fixture skips the test (fails it on CI) when its tools are missing or when not root.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from .runtimes import Buildah, Containerd, Podman, Runc


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
