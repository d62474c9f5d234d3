"""The runnable examples under examples/: their scripts, run in a temporary copy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .runtimes import describe

pytestmark = [pytest.mark.tools]

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def example_copy(name: str, tmp_path: Path) -> Path:
    """A copy of examples/NAME (and recipes/, which its scripts use) without earlier build output."""
    ignore = shutil.ignore_patterns("out", "rootfs.tar*")
    dest = tmp_path / "examples" / name
    shutil.copytree(EXAMPLES / name, dest, symlinks=True, ignore=ignore)
    shutil.copytree(REPO / "recipes", tmp_path / "recipes", symlinks=True, ignore=ignore)
    return dest


def script_env() -> dict[str, str]:
    """The scripts run `$PYBUILD`: this interpreter, with the repository importable."""
    env = dict(os.environ)
    env["PYBUILD"] = f"{sys.executable} -m builder"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["PATH"] = os.pathsep.join([env.get("PATH", os.defpath), "/usr/sbin", "/sbin"])
    return env


def run_script(script: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(script)], cwd=cwd, env=script_env(), capture_output=True, text=True, timeout=600,
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


@pytest.mark.needs("bash", "tar", "gzip", "/bin/busybox")
def test_hello_example_builds_and_runs(tmp_path: Path, oci_check, need) -> None:
    example = example_copy("hello", tmp_path)

    built = run_script(example / "build.sh", cwd=tmp_path)  # not from its own directory
    assert built.returncode == 0, describe(built)
    assert "run.sh" in built.stdout
    result = oci_check(example / "out", strict=True, ref="hello:latest")
    assert result.returncode == 0, describe(result)

    need("umoci", "runc", root=True)
    ran = run_script(example / "run.sh", cwd=tmp_path)
    assert ran.returncode == 0, describe(ran)
    assert ran.stdout.splitlines()[0] == "Hello from pybuild", describe(ran)


@pytest.mark.needs("bash", "tar", "gzip", "/bin/busybox")
def test_hello_rootfs_script_is_reproducible(tmp_path: Path) -> None:
    script = EXAMPLES / "hello" / "make-rootfs.sh"
    digests = []
    for umask, name in ((0o022, "a.tar.gz"), (0o077, "b.tar.gz")):
        old = os.umask(umask)
        try:
            result = subprocess.run(
                ["bash", str(script), str(tmp_path / name)], capture_output=True, text=True, timeout=120, check=False
            )
        finally:
            os.umask(old)
        assert result.returncode == 0, describe(result)
        digests.append((tmp_path / name).read_bytes())
    assert digests[0] == digests[1]


def readme_recipe() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return text.split("## A recipe")[1].split("```yaml\n")[1].split("```")[0]


@pytest.mark.needs("bash", "tar", "gzip", "/bin/busybox")
def test_readme_recipe_builds_and_runs(tmp_path: Path, oci_check, need, runc) -> None:
    """What README shows a newcomer builds as written, and the image runs as its user."""
    need("unshare", root=True)
    ctx = tmp_path / "ctx"
    (ctx / "app").mkdir(parents=True)
    (ctx / "app" / "run.sh").write_text('#!/bin/sh\ncat /etc/motd\nid -u\nstat -c %U:%G /opt/app/run.sh\n')
    (ctx / "app" / "run.sh").chmod(0o755)
    (ctx / "app" / "stale.pyc").write_text("excluded")
    made = subprocess.run(["bash", str(REPO / "recipes" / "busybox" / "make-rootfs.sh"), str(ctx / "rootfs.tar.gz")],
                          capture_output=True, text=True, check=False, timeout=120)
    assert made.returncode == 0, describe(made)
    (ctx / "pybuild.yaml").write_text(readme_recipe())
    built = subprocess.run([sys.executable, "-m", "builder", str(ctx / "pybuild.yaml"), "-o", str(tmp_path / "out"),
                            "-q"], cwd=ctx, env=script_env(), capture_output=True, text=True, timeout=600, check=False)
    assert built.returncode == 0, describe(built)
    assert oci_check(tmp_path / "out", strict=True).returncode == 0
    ran = runc.run(tmp_path / "out", "1.0")
    assert ran.stdout.splitlines() == ["hello from pybuild", "1000", "app:app"], describe(ran)
