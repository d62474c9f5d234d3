"""Rootless ``run:`` steps: pybuild as an unprivileged user gives the same layers as root.

The unprivileged build runs as ``nobody`` (``setpriv``), with the interpreter and the packages
pybuild needs copied to a world-readable place when the test's own interpreter lives somewhere
``nobody`` cannot read (pyenv under /root, a virtualenv in a private checkout).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import builder

from .runtimes import Runc, describe

pytestmark = [pytest.mark.tools]

NOBODY = 65534
RECIPE = """\
version: 1
steps:
  - rootfs: rootfs.tar.gz
  - run: |
      set -e
      mkdir -p /srv/data && echo hello > /srv/data/file && chmod 0640 /srv/data/file
      ln /srv/data/file /srv/data/link
      rm /bin/cat
      echo changed > /etc/passwd.new
  # on the first step's snapshot: its whiteout (/bin/cat) and, next, an opaque directory, made rootless
  # (the old directory lives on while the new one is made, so no driver can see the same inode again)
  - run: test ! -e /bin/cat && mv /srv/data /srv/old && mkdir /srv/data && echo again > /srv/data/new && rm -rf /srv/old
  - run: test ! -e /srv/data/file && test -e /srv/data/new && echo ok > /srv/checked
"""


def as_nobody(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv], cwd=cwd, env=env,
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600, check=False,
    )  # fmt: skip


def _package_dir(module: str) -> Path:
    mod = __import__(module)
    path = Path(mod.__file__ or "")
    return path.parent if path.name == "__init__.py" else path


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory ``nobody`` can use (tmp_path lives under root's private 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="pybuild-rootless-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def nobody_python(shared: Path, need) -> tuple[list[str], dict[str, str]]:
    """An interpreter command and environment with which ``nobody`` can import pybuild."""
    need("setpriv", "unshare", root=True)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(shared), "XDG_CACHE_HOME": str(shared / "cache")}
    site = shared / "site"
    site.mkdir()
    for module in ("builder", "yaml", "zstandard", "click", "isal"):
        src = Path(builder.__file__).parent if module == "builder" else _package_dir(module)
        dest = site / src.name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest)
    for extra in Path(_package_dir("yaml")).parent.glob("_yaml*"):
        (shutil.copytree if extra.is_dir() else shutil.copy)(extra, site / extra.name)
    subprocess.run(["chmod", "-R", "a+rX", str(shared)], check=True)
    env["PYTHONPATH"] = str(site)
    for python in ("/usr/bin/python3", sys.executable):
        probe = as_nobody([python, "-c", "import builder.cli, yaml, zstandard, click"], cwd=shared, env=env)
        if probe.returncode == 0:
            return [python, "-m", "builder"], env
    pytest.skip("no Python interpreter that an unprivileged user can run with pybuild's dependencies")


def userns_allowed(python: list[str], shared: Path, env: dict[str, str]) -> bool:
    probe = as_nobody(["unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "true"], shared, env)
    return probe.returncode == 0


def diff_ids(out: Path) -> list[str]:
    blobs = out / "blobs" / "sha256"
    index = json.loads((out / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())
    return list(config["rootfs"]["diff_ids"])


def test_rootless_run_gives_the_same_layers_as_root(pybuild, busybox_rootfs_tar: Path, shared_dir: Path,
                                                    need) -> None:
    python, env = nobody_python(shared_dir, need)
    if not userns_allowed(python, shared_dir, env):
        pytest.skip("this machine does not allow unprivileged user namespaces")
    ctx = shared_dir / "ctx"
    ctx.mkdir()
    shutil.copy(busybox_rootfs_tar, ctx / "rootfs.tar.gz")
    (ctx / "pybuild.yaml").write_text(RECIPE)
    subprocess.run(["chmod", "-R", "a+rwX", str(ctx)], check=True)

    as_root = pybuild(ctx / "pybuild.yaml", "-o", shared_dir / "root-out", "-q")
    assert as_root.returncode == 0, describe(as_root)
    rootless = as_nobody([*python, str(ctx / "pybuild.yaml"), "-o", str(shared_dir / "nobody-out"),
                          "--progress", "plain"], cwd=shared_dir, env=env)
    assert rootless.returncode == 0, describe(rootless)
    assert os.stat(shared_dir / "nobody-out").st_uid == NOBODY  # really built by nobody
    assert diff_ids(shared_dir / "nobody-out") == diff_ids(shared_dir / "root-out")
    if _linux_at_least(5, 11):  # no id range, but the build's own namespace: its run steps mount overlayfs
        assert "root filesystem: overlay of" in rootless.stderr and "copy driver" not in rootless.stderr, \
            describe(rootless)


CHOWN_RECIPE = """\
version: 1
steps:
  - rootfs: rootfs.tar.gz
  - run: |
      mkdir -p /srv && echo x > /srv/owned && chown 100:101 /srv/owned
      mkdir /srv/d && chown 65534:65534 /srv/d && chmod 0750 /srv/d
      id -u > /srv/uid
"""


@pytest.fixture
def nobody_subids() -> Iterator[None]:
    """``nobody`` gets a subordinate id range in /etc/subuid and /etc/subgid (restored afterwards)."""
    saved: dict[Path, bytes | None] = {}
    for path in (Path("/etc/subuid"), Path("/etc/subgid")):
        saved[path] = path.read_bytes() if path.exists() else None
        with path.open("a") as f:
            f.write(f"{NOBODY}:200000:65536\n")
    try:
        yield
    finally:
        for path, data in saved.items():
            if data is None:
                path.unlink()
            else:
                path.write_bytes(data)


def _setup(shared_dir: Path, busybox_rootfs_tar: Path, recipe: str) -> Path:
    ctx = shared_dir / "ctx"
    ctx.mkdir()
    shutil.copy(busybox_rootfs_tar, ctx / "rootfs.tar.gz")
    (ctx / "pybuild.yaml").write_text(recipe)
    subprocess.run(["chmod", "-R", "a+rwX", str(ctx)], check=True)
    return ctx


def _linux_at_least(major: int, minor: int) -> bool:
    release = os.uname().release.split(".")
    return (int(release[0]), int("".join(c for c in release[1] if c.isdigit()) or 0)) >= (major, minor)


def test_rootless_with_subordinate_ids_chowns_as_root_does(pybuild, busybox_rootfs_tar: Path, shared_dir: Path,
                                                           need, nobody_subids: None) -> None:
    """With a range in /etc/subuid, a rootless run step may chown to any id, and the layer is root's."""
    need("newuidmap", "newgidmap", root=True)
    python, env = nobody_python(shared_dir, need)
    if not userns_allowed(python, shared_dir, env):
        pytest.skip("this machine does not allow unprivileged user namespaces")
    ctx = _setup(shared_dir, busybox_rootfs_tar, CHOWN_RECIPE)
    as_root = pybuild(ctx / "pybuild.yaml", "-o", shared_dir / "root-out", "-q")
    assert as_root.returncode == 0, describe(as_root)
    rootless = as_nobody([*python, str(ctx / "pybuild.yaml"), "-o", str(shared_dir / "nobody-out")],
                         cwd=shared_dir, env=env)
    assert rootless.returncode == 0, describe(rootless)
    assert "warning" not in rootless.stderr, describe(rootless)
    # uid 0 of the build's user namespace mounts overlayfs itself (Linux 5.11+), userxattr snapshots
    if _linux_at_least(5, 11):
        assert "root filesystem: overlay of 1 snapshot (kernel overlayfs in a user namespace" in rootless.stderr, \
            describe(rootless)
        assert "copy driver" not in rootless.stderr, describe(rootless)
    assert os.stat(shared_dir / "nobody-out").st_uid == NOBODY
    assert diff_ids(shared_dir / "nobody-out") == diff_ids(shared_dir / "root-out")
    leftovers = [p for p in Path(tempfile.gettempdir()).glob("pybuild-*") if p.stat().st_uid >= 200000]
    assert not leftovers, leftovers  # the work directory went, removed inside the namespace


def test_rootless_without_subordinate_ids_says_what_is_missing(busybox_rootfs_tar: Path, shared_dir: Path,
                                                               need) -> None:
    python, env = nobody_python(shared_dir, need)
    if not userns_allowed(python, shared_dir, env):
        pytest.skip("this machine does not allow unprivileged user namespaces")
    ctx = _setup(shared_dir, busybox_rootfs_tar, CHOWN_RECIPE)
    rootless = as_nobody([*python, str(ctx / "pybuild.yaml"), "-o", str(shared_dir / "nobody-out")],
                         cwd=shared_dir, env=env)
    assert rootless.returncode == 1, describe(rootless)  # chown 100:101 cannot work with one id
    assert "a subordinate id range for user 'nobody' in /etc/subuid" in rootless.stderr, describe(rootless)


@pytest.mark.slow
def test_rootless_apt_get_install_on_debian(debian_rootfs: Path, shared_dir: Path, need, nobody_subids: None,
                                           runc: Runc) -> None:
    """apt drops to ``_apt`` (setgroups, seteuid) and dpkg chowns: rootless, that needs the full id range."""
    need("newuidmap", "newgidmap", root=True)
    python, env = nobody_python(shared_dir, need)
    if not userns_allowed(python, shared_dir, env):
        pytest.skip("this machine does not allow unprivileged user namespaces")
    ctx = shared_dir / "ctx"
    ctx.mkdir()
    shutil.copy(debian_rootfs / "rootfs.tar.xz", ctx / "rootfs.tar.xz")
    (ctx / "apt.yaml").write_text(
        "version: 1\ntag: apt\nsteps:\n  - rootfs: rootfs.tar.xz\n"
        "  - run: |\n      apt-get update -q && apt-get install -y -q --no-install-recommends hello\n"
        "      rm -rf /var/lib/apt/lists/*\n"
        "    env: {DEBIAN_FRONTEND: noninteractive}\n"
        "config:\n  cmd: [/usr/bin/hello]\n"
    )
    subprocess.run(["chmod", "-R", "a+rwX", str(ctx)], check=True)
    out = shared_dir / "out"
    built = as_nobody([*python, str(ctx / "apt.yaml"), "-o", str(out), "--progress", "plain"], cwd=shared_dir,
                      env=env)
    assert built.returncode == 0, describe(built)
    assert "warning" not in built.stderr, describe(built)
    ran = runc.run(out, "apt")
    assert ran.stdout.strip() == "Hello, world!", describe(ran)
