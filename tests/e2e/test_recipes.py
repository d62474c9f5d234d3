"""The reference recipes under recipes/: make their input, build them, run them with runc.

The Debian root filesystem is the ``debian_rootfs`` fixture (``debian.py``), made once per run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .debian import DEBIAN_PATH, RECIPES, script
from .runtimes import Runc, describe

pytestmark = [pytest.mark.tools]


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
