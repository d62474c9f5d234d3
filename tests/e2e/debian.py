"""The Debian root filesystem the slow tests build on: debootstrap (a minute or two, network), cached.

It lives in ``$PYBUILD_TEST_CACHE`` (default /tmp/pybuild-test-cache), so one CI run makes it once.
"""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from .runtimes import describe

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
CACHE = Path(os.environ.get("PYBUILD_TEST_CACHE") or "/tmp/pybuild-test-cache")
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("PYBUILD_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def script(path: Path, *args: str | os.PathLike[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([env.get("PATH", os.defpath), "/usr/sbin", "/sbin"])
    return subprocess.run(
        ["bash", str(path), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env,
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def mirror_problem(mirror: str, suite: str) -> str | None:
    """Why the Debian mirror cannot be used from here, or None if its Release file answers."""
    url = f"{mirror.rstrip('/')}/dists/{suite}/Release"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=20) as response:
            return None if response.status == 200 else f"HTTP {response.status} for {url}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{url}: {exc}"


@pytest.fixture(scope="session")
def debian_rootfs(need: Callable[..., None]) -> Path:
    """A directory holding ``rootfs.tar.xz`` (debootstrap minbase bookworm), made once, cached."""
    need("debootstrap", "xz", "tar", "bash", root=True)
    cache = CACHE / f"debian-{DEBIAN_SUITE}-minbase"
    tarball = cache / "rootfs.tar.xz"
    if not tarball.is_file():
        problem = mirror_problem(DEBIAN_MIRROR, DEBIAN_SUITE)
        if problem:  # a network matter, not a broken runner: skip even on CI
            pytest.skip(f"debootstrap cannot reach the Debian mirror ({problem}); set PYBUILD_TEST_DEBIAN_MIRROR")
        cache.mkdir(parents=True, exist_ok=True)
        partial = cache / f"rootfs.{os.getpid()}.tar.xz"  # two sessions at once do not collide
        made = script(RECIPES / "debian" / "make-rootfs.sh", partial, DEBIAN_SUITE, DEBIAN_MIRROR, timeout=1800)
        if made.returncode != 0:
            partial.unlink(missing_ok=True)
            pytest.fail(f"make-rootfs.sh failed:\n{describe(made)}")
        os.replace(partial, tarball)
    return cache
