"""The reference recipes under recipes/: make their input, build them, run them with runc.

The Debian root filesystem comes from debootstrap (a minute or two, network) and is cached
in ``$PYBUILD_TEST_CACHE`` (default /tmp/pybuild-test-cache), so one CI run makes it once.
"""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from .runtimes import Runc, describe

pytestmark = [pytest.mark.tools]

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


@pytest.mark.needs("bash", "tar", "gzip", "/bin/busybox")
def test_busybox_recipe_builds_and_runs(pybuild, tmp_path: Path, oci_check, runc: Runc) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    made = script(RECIPES / "busybox" / "make-rootfs.sh", context / "rootfs.tar.gz")
    assert made.returncode == 0, describe(made)
    out = tmp_path / "out"
    built = pybuild(RECIPES / "busybox" / "busybox.yaml", "-o", out, "--context", context)
    assert built.returncode == 0, describe(built)
    checked = oci_check(out, strict=True, ref="busybox")
    assert checked.returncode == 0, describe(checked)
    ran = runc.run(out, "busybox", ["/bin/sh", "-c", 'echo "busybox ok"; echo "$PATH"'])
    assert ran.stdout == "busybox ok\n/bin\n", describe(ran)


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


@pytest.mark.slow
def test_debian_recipe_builds_and_runs(debian_rootfs: Path, pybuild, tmp_path: Path, oci_check, runc: Runc) -> None:
    out = tmp_path / "debian"
    built = pybuild(RECIPES / "debian" / "debian.yaml", "-o", out, "--context", debian_rootfs, timeout=1800)
    assert built.returncode == 0, describe(built)
    checked = oci_check(out, strict=True, ref="bookworm")
    assert checked.returncode == 0, describe(checked)
    ran = runc.run(out, "bookworm", ["/bin/bash", "-c", 'cat /etc/debian_version; echo "$PATH"; id -u'])
    version, path, uid = ran.stdout.splitlines()
    assert version.startswith("12."), describe(ran)
    assert (path, uid) == (DEBIAN_PATH, "0"), describe(ran)


@pytest.mark.slow
def test_debian_apt_get_install_in_a_run_step(debian_rootfs: Path, pybuild, tmp_path: Path, oci_check,
                                              runc: Runc) -> None:
    """A real package manager inside a run step: the layer holds the package, not apt's lists or /proc."""
    recipe = tmp_path / "apt.yaml"
    recipe.write_text(
        "version: 1\ntag: apt\nsteps:\n  - rootfs: rootfs.tar.xz\n"
        "  - run: |\n      apt-get update -q && apt-get install -y -q --no-install-recommends hello\n"
        "      rm -rf /var/lib/apt/lists/*\n"
        "    env: {DEBIAN_FRONTEND: noninteractive}\n"
        "config:\n  cmd: [/usr/bin/hello]\n"
    )
    out = tmp_path / "out"
    built = pybuild(recipe, "-o", out, "--context", debian_rootfs, "--progress", "plain", timeout=1800)
    assert built.returncode == 0, describe(built)
    assert oci_check(out, strict=True, ref="apt").returncode == 0
    ran = runc.run(out, "apt")
    assert ran.stdout.strip() == "Hello, world!", describe(ran)
