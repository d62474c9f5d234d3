"""A hostile base image's binary inside a ``run`` step, as root and rootless: nothing of the host is reachable.

The attacker is ``probe.c``, compiled static and shipped in the base image's rootfs: it tries the
escapes found against pybuild (a forged file handle to the host root's inode, mounts and remounts,
/proc/sys writes, block devices, new namespaces...) and writes one line per attempt into its layer.
Each expectation is what runc's default spec and Docker's default profile give a container, with
Docker's well-known default capability mask (``00000000a80425fb``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from tests.conftest import busybox_entries, pybuild_env, require, tar_entry, write_tar
from tests.e2e.runtimes import describe
from tests.e2e.test_rootless import as_nobody, nobody_python, userns_allowed

from .conftest import assert_clean_error

DOCKER_DEFAULT_CAPS = "00000000a80425fb"

#: attempt -> the results that mean "contained" (anything else, "ok" above all, is an escape)
CONTAINED = {
    "open_by_handle_at": {"EPERM"},
    "name_to_handle_at": {"EPERM"},
    "mount_tmpfs": {"EPERM"},
    "mount_sysfs": {"EPERM"},
    "remount_secret_rw": {"EPERM"},
    "remount_hosts_rw": {"EPERM"},
    "remount_root_dev": {"EPERM"},
    "umount_proc": {"EPERM"},
    "write_secret": {"EROFS", "EACCES"},
    "write_proc_sys": {"EROFS", "EACCES"},
    "write_sysrq": {"EROFS", "EACCES", "ENOENT"},  # ENOENT: a kernel built without magic SysRq
    "mknod_block": {"EPERM"},
    "open_made_char": {"EACCES", "EPERM"},  # made (as root) but on a nodev mount; rootless: never made
    "unshare_user": {"EPERM"},
    "unshare_mount": {"EPERM"},
    "clone3": {"ENOSYS"},
    "setns": {"EPERM"},
    "bpf": {"EPERM"},
    "keyctl": {"EPERM"},
    "kexec_load": {"EPERM"},
    "init_module": {"EPERM"},
}

RECIPE = """\
version: 1
steps:
  - rootfs: rootfs.tar.gz
  - run: /probe /run/secrets/token > /probe.out
    network: host
    mounts:
      - secret: token
      - cache: /var/cache/probe
"""


@pytest.fixture(scope="session")
def probe_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox rootfs with the static probe at /probe (compiled here: the image brings its own binary)."""
    require("gcc", "/bin/busybox")
    work = tmp_path_factory.mktemp("probe")
    binary = work / "probe"
    built = subprocess.run(["gcc", "-static", "-O1", "-o", str(binary), str(Path(__file__).with_name("probe.c"))],
                           capture_output=True, text=True, check=False)
    if built.returncode != 0:
        pytest.fail(f"cannot build the probe (CI installs gcc and libc6-dev):\n{built.stderr}")
    entries = [*busybox_entries(), tar_entry("probe", data=binary.read_bytes(), mode=0o755)]
    path = write_tar(work / "rootfs.tar.gz", entries)
    path.chmod(0o444)
    return path


def last_layer_file(out: Path, name: str) -> str:
    blobs = out / "blobs" / "sha256"
    index = json.loads((out / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    layer = blobs / manifest["layers"][-1]["digest"].split(":")[1]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer.read_bytes()))) as tar:
        member = tar.extractfile(name)
        assert member is not None, f"{name} is not in the run step's layer"
        return member.read().decode()


def parse(report: str) -> dict[str, str]:
    return dict(line.split(None, 1) for line in report.splitlines() if line.strip())


def check_contained(results: dict[str, str]) -> None:
    escapes = {k: results.get(k) for k, ok in CONTAINED.items() if results.get(k) not in ok}
    assert not escapes, f"not contained: {escapes}\nfull report: {results}"
    assert results["CapEff:"] == DOCKER_DEFAULT_CAPS, results
    assert results["CapBnd:"] == DOCKER_DEFAULT_CAPS, results
    assert results["NoNewPrivs:"] == "1", results
    assert results["Seccomp:"] == "2", results
    assert results["timer_list_bytes"] == "0", results  # masked by /dev/null
    assert results["created_mode"] == "644", results  # umask 022 inside, whatever pybuild's own


def with_umask(mask: str, *args: str | os.PathLike[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI started under ``umask MASK`` (a CI runner's or a hardened login's)."""
    return subprocess.run(["sh", "-c", f'umask {mask} && exec "$@"', "sh", sys.executable, "-m", "builder",
                           *map(str, args)], cwd=cwd, env=pybuild_env(), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, check=False, timeout=300)


def prepare(ctx: Path, rootfs: Path, secret: Path) -> None:
    ctx.mkdir(parents=True)
    shutil.copy(rootfs, ctx / "rootfs.tar.gz")
    (ctx / "pybuild.yaml").write_text(RECIPE)
    secret.write_text("host secret\n")


def test_run_step_as_root_is_contained(pybuild, probe_rootfs: Path, tmp_path: Path, need) -> None:
    need("unshare", root=True)
    ctx, secret = tmp_path / "ctx", tmp_path / "token"
    prepare(ctx, probe_rootfs, secret)
    built = with_umask("027", ctx / "pybuild.yaml", "-o", tmp_path / "out", "-q", "--secret", f"id=token,src={secret}",
                       "--cache-dir", tmp_path / "cache", cwd=ctx)
    assert built.returncode == 0, describe(built)
    results = parse(last_layer_file(tmp_path / "out", "probe.out"))
    check_contained(results)
    assert results["mknod_char"] == "ok"  # a device node is data in a layer; it just cannot be opened here
    assert secret.read_text() == "host secret\n"


def test_run_step_under_a_restrictive_umask_gives_the_same_layer(pybuild, busybox_rootfs_tar: Path,
                                                                  tmp_path: Path, need) -> None:
    need("unshare", root=True)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    shutil.copy(busybox_rootfs_tar, ctx / "rootfs.tar.gz")
    (ctx / "pybuild.yaml").write_text("version: 1\nsteps:\n  - rootfs: rootfs.tar.gz\n"
                                      "  - run: mkdir -p /srv/a && echo x > /srv/a/f\n    workdir: /new/dir\n")
    digests = []
    for mask in ("022", "077"):
        result = with_umask(mask, ctx / "pybuild.yaml", "-o", tmp_path / f"out-{mask}", "-q", "--no-cache", cwd=ctx)
        assert result.returncode == 0, describe(result)
        digests.append(result.stdout.strip())
    assert digests[0] == digests[1]


def test_non_root_step_user_has_no_capabilities(pybuild, probe_rootfs: Path, tmp_path: Path, need) -> None:
    need("unshare", root=True)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    shutil.copy(probe_rootfs, ctx / "rootfs.tar.gz")
    (ctx / "pybuild.yaml").write_text("version: 1\nsteps:\n  - rootfs: rootfs.tar.gz\n"
                                      "  - run: /probe /nonexistent > /tmp/probe.out\n    user: app\n")
    built = pybuild(ctx / "pybuild.yaml", "-o", tmp_path / "out", "-q", "--no-cache")
    assert built.returncode == 0, describe(built)
    results = parse(last_layer_file(tmp_path / "out", "tmp/probe.out"))
    assert results["CapEff:"] == "0000000000000000", results
    assert results["CapBnd:"] == DOCKER_DEFAULT_CAPS, results
    assert results["open_by_handle_at"] == "EPERM" and results["mount_tmpfs"] == "EPERM", results


def test_rootless_run_step_is_contained(probe_rootfs: Path, need) -> None:
    shared = Path(tempfile.mkdtemp(prefix="pybuild-attack-"))
    try:
        shared.chmod(0o777)
        python, env = nobody_python(shared, need)
        if not userns_allowed(python, shared, env):
            pytest.skip("this machine does not allow unprivileged user namespaces")
        ctx, secret = shared / "ctx", shared / "token"
        prepare(ctx, probe_rootfs, secret)
        subprocess.run(["chmod", "-R", "a+rwX", str(ctx), str(secret)], check=True)
        built = as_nobody([*python, str(ctx / "pybuild.yaml"), "-o", str(shared / "out"), "-q",
                           "--secret", f"id=token,src={secret}", "--cache-dir", str(shared / "cache")],
                          cwd=shared, env=env)
        assert built.returncode == 0, describe(built)
        results = parse(last_layer_file(shared / "out", "probe.out"))
        check_contained(results)
        assert results["mknod_char"] == "EPERM"
        assert secret.read_text() == "host secret\n"
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_planted_cache_mount_symlink_is_refused(pybuild, busybox_rootfs_tar: Path, tmp_path: Path, need) -> None:
    """A restored CI cache whose mount entry is a symlink to a host directory: never bound."""
    need("unshare", root=True)
    decoy = tmp_path / "host-dir"
    decoy.mkdir()
    (decoy / "sentinel").write_text("host\n")
    cache = tmp_path / "cache"
    (cache / "mounts").mkdir(parents=True)
    key = hashlib.sha256(b"/var/cache/x").hexdigest()[:16]
    (cache / "mounts" / key).symlink_to(decoy)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    shutil.copy(busybox_rootfs_tar, ctx / "rootfs.tar.gz")
    (ctx / "pybuild.yaml").write_text("version: 1\nsteps:\n  - rootfs: rootfs.tar.gz\n"
                                      "  - run: rm -f /var/cache/x/sentinel; echo pwned > /var/cache/x/evil\n"
                                      "    mounts:\n      - cache: /var/cache/x\n")
    built = pybuild(ctx / "pybuild.yaml", "-o", tmp_path / "out", "-q", "--cache-dir", cache)
    assert_clean_error(built, "cache mount directory", "symbolic link")
    assert sorted(os.listdir(decoy)) == ["sentinel"]
    assert not (tmp_path / "out").exists()

    # planted as a whole: CACHE/mounts itself a symlink
    (cache / "mounts" / key).unlink()
    (cache / "mounts").rmdir()
    (cache / "mounts").symlink_to(decoy)
    built = pybuild(ctx / "pybuild.yaml", "-o", tmp_path / "out", "-q", "--cache-dir", cache)
    assert_clean_error(built, "cache mount directory", "symbolic link")
    assert sorted(os.listdir(decoy)) == ["sentinel"]


def test_nul_in_run_env_is_a_clean_error(pybuild, busybox_rootfs_tar: Path, tmp_path: Path, need) -> None:
    need("unshare", root=True)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    shutil.copy(busybox_rootfs_tar, ctx / "rootfs.tar.gz")
    (ctx / "pybuild.yaml").write_text('version: 1\nsteps:\n  - rootfs: rootfs.tar.gz\n'
                                      '  - run: "true"\n    env: {A: "x\\0y"}\n')
    built = pybuild(ctx / "pybuild.yaml", "-o", tmp_path / "out", "-q", "--no-cache")
    assert_clean_error(built, "NUL")
    assert "pybuild-sandbox" not in built.stderr


def test_insecure_steps_need_the_cli_entitlement(pybuild, probe_rootfs: Path, tmp_path: Path, need) -> None:
    """``security: insecure`` is the recipe asking; only ``--allow security.insecure`` grants it."""
    need("unshare", root=True)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    shutil.copy(probe_rootfs, ctx / "rootfs.tar.gz")
    (ctx / "pybuild.yaml").write_text("version: 1\nsteps:\n  - rootfs: rootfs.tar.gz\n"
                                      "  - run: /probe /nonexistent > /probe.out\n    security: insecure\n")
    refused = pybuild(ctx / "pybuild.yaml", "-o", tmp_path / "out", "-q", "--no-cache")
    assert_clean_error(refused, "--allow security.insecure")
    assert not (tmp_path / "out").exists()
    allowed = pybuild(ctx / "pybuild.yaml", "-o", tmp_path / "out", "-q", "--no-cache",
                      "--allow", "security.insecure")
    assert allowed.returncode == 0, describe(allowed)
    results = parse(last_layer_file(tmp_path / "out", "probe.out"))
    assert results["mount_tmpfs"] == "ok" and results["unshare_mount"] == "ok", results  # unconfined, as asked
