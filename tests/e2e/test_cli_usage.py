"""What a newcomer types first: mistyped commands, a bare `pybuild`, a directory as the recipe, Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import pybuild_env

from .runtimes import describe


def test_a_mistyped_command_is_answered_with_did_you_mean(pybuild, tmp_path: Path) -> None:
    result = pybuild("inpsect", "out")
    assert result.returncode == 2, describe(result)
    assert "did you mean 'pybuild inspect'" in result.stderr, describe(result)
    assert "Missing option" not in result.stderr


def test_version_and_bare_pybuild(pybuild) -> None:
    version = pybuild("version")
    assert version.returncode == 0 and version.stdout.startswith("pybuild "), describe(version)
    bare = pybuild()
    assert bare.returncode == 0 and "Usage:" in bare.stdout and "error" not in bare.stderr, describe(bare)


def test_a_directory_as_recipe_means_its_pybuild_yaml(pybuild, tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "pybuild.yaml").write_text("version: 1\nsteps:\n  - write: /hello\n    content: hi\n")
    built = pybuild(app, "-o", tmp_path / "out", "-q")
    assert built.returncode == 0, describe(built)
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = pybuild(empty, "-o", tmp_path / "out2", "-q")
    assert missing.returncode == 1 and "no pybuild.yaml or recipe.yaml" in missing.stderr, describe(missing)


def test_output_is_required_unless_pushing(pybuild, tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text("version: 1\nsteps:\n  - write: /hello\n    content: hi\n")
    result = pybuild(tmp_path / "r.yaml")
    assert result.returncode == 2 and "--output" in result.stderr, describe(result)


def test_an_interrupt_exits_130_and_leaves_no_output(busybox_rootfs_tar: Path, tmp_path: Path, need) -> None:
    need("unshare", root=True)
    shutil.copy(busybox_rootfs_tar, tmp_path / "rootfs.tar.gz")
    (tmp_path / "r.yaml").write_text("version: 1\nsteps:\n  - rootfs: rootfs.tar.gz\n"
                                     "  - run: echo started; sleep 60\n")
    proc = subprocess.Popen([sys.executable, "-m", "builder", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "out"),
                             "--progress", "plain"], cwd=tmp_path, env=pybuild_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    seen = ""
    while "started" not in seen and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
    if "started" not in seen:
        proc.kill()
        pytest.fail(f"the run step never started:\n{seen}")
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, seen + err)
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if "pybuild-work" in p.name]


def test_unknown_platforms_are_refused_with_a_suggestion(pybuild, tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text("version: 1\nsteps:\n  - write: /hello\n    content: hi\n")
    typo = pybuild(tmp_path / "r.yaml", "-o", tmp_path / "out", "--platform", "linux/amd46")
    assert typo.returncode == 2 and "unknown architecture 'amd46' (did you mean 'amd64'?)" in typo.stderr, describe(typo)
    (tmp_path / "p.yaml").write_text("version: 1\nplatforms: [linux/arm64/v7]\nsteps:\n  - write: /a\n    content: a\n")
    variant = pybuild(tmp_path / "p.yaml", "-o", tmp_path / "out")
    assert variant.returncode == 1 and "p.yaml:2: platforms[0]: unknown variant of arm64 'v7'" in variant.stderr, \
        describe(variant)
    assert not (tmp_path / "out").exists()
    ok = pybuild(tmp_path / "r.yaml", "-o", tmp_path / "out", "-q", "--platform", "linux/arm/v7")
    assert ok.returncode == 0, describe(ok)


def test_an_unused_build_arg_is_warned_about(pybuild, tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text("version: 1\nargs: {USED: a}\nsteps:\n  - write: /hello\n"
                                     "    content: ${USED}${REFERENCED}\n")
    result = pybuild(tmp_path / "r.yaml", "-o", tmp_path / "out", "--progress", "plain", "--build-arg", "USED=1",
                     "--build-arg", "REFERENCED=2", "--build-arg", "VERISON=3")
    assert result.returncode == 0, describe(result)
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "--build-arg VERISON" in warnings[0], describe(result)


def test_progress_json_is_only_json_lines(pybuild, busybox_rootfs_tar: Path, tmp_path: Path, need) -> None:
    need("unshare", root=True)
    import json

    shutil.copy(busybox_rootfs_tar, tmp_path / "rootfs.tar.gz")
    (tmp_path / "r.yaml").write_text("version: 1\nsteps:\n  - rootfs: rootfs.tar.gz\n"
                                     "  - run: |\n      echo one\n      printf 'a\\rb\\n'\n")
    result = pybuild(tmp_path / "r.yaml", "-o", tmp_path / "out", "--progress", "json", "--no-cache")
    assert result.returncode == 0, describe(result)
    events = [json.loads(line) for line in result.stderr.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds.count("step") == 2 and kinds.count("step_done") == 2, kinds
    assert [e["line"] for e in events if e["event"] == "output"] == ["one", "a\rb"]
    assert events[-1]["event"] == "message" and result.stdout.strip() in events[-1]["text"]


@pytest.mark.needs(root=True)
@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_a_full_disk_gives_one_line_and_nothing_after_it(pybuild, ctx: Path, tmp_path: Path,
                                                          compression: str) -> None:
    """ENOSPC while a layer is written: one ``pybuild: error:`` line naming the full disk, no
    traceback after it (the archive reader stopped mid-stream is not reported as a broken input),
    and OUT is not created."""
    import tarfile

    big = ctx / "big.bin"
    big.write_bytes(os.urandom(6 << 20))
    with tarfile.open(ctx / "big.tar.gz", "w:gz") as tf:
        tf.add(big, "big.bin")
    (ctx / "r1.yaml").write_text("version: 1\nsteps:\n  - rootfs: rootfs.tar.gz\n  - rootfs: big.tar.gz\n")
    (ctx / "r2.yaml").write_text("version: 1\nsteps:\n  - rootfs: rootfs.tar.gz\n  - copy: big.bin\n    to: /x\n")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(small)], check=True)
    try:
        for recipe in ("r1.yaml", "r2.yaml"):
            result = pybuild(ctx / recipe, "-o", small / "out", "--compression", compression, "--no-cache", "-q")
            assert result.returncode == 1, describe(result)
            assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, describe(result)
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and "No space left on device" in lines[0], describe(result)
            assert os.listdir(small) == [], os.listdir(small)
    finally:
        subprocess.run(["umount", str(small)], check=False)
