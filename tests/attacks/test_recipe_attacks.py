"""Attacks through the recipe and ``copy``: substitution bombs, names no runtime can unpack, a stage's
links steering a glob onto the host, and modes that made private files world-readable."""

from __future__ import annotations

import json
import os
import re
import tarfile
from pathlib import Path

import pytest

from builder.cli import main

from .conftest import assert_clean_error, run_limited


def layers(out: Path, tag: str = "latest") -> list[dict[str, tarfile.TarInfo]]:
    """Every layer of the image ``tag`` in layout ``out``: name -> member."""
    blobs = out / "blobs" / "sha256"
    index = json.loads((out / "index.json").read_text())
    [desc] = [m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
    manifest = json.loads((blobs / desc["digest"].split(":")[1]).read_bytes())
    found = []
    for layer in manifest["layers"]:
        with tarfile.open(blobs / layer["digest"].split(":")[1]) as tf:
            found.append({m.name: m for m in tf})
    return found


def layer_files(out: Path, tag: str = "latest") -> dict[str, bytes]:
    """Content of every regular file in the image's last layer."""
    blobs = out / "blobs" / "sha256"
    index = json.loads((out / "index.json").read_text())
    [desc] = [m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
    manifest = json.loads((blobs / desc["digest"].split(":")[1]).read_bytes())
    with tarfile.open(blobs / manifest["layers"][-1]["digest"].split(":")[1]) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf if m.isreg()}  # type: ignore[union-attr]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # so errors read "recipe.yaml:LINE: ..."


def build(recipe: Path, out: Path, *args: str) -> int:
    return main([os.path.relpath(recipe), "-o", str(out), "-q", "--platform", "linux/amd64", *args])


def error_line(err: str) -> str:
    [line] = [x for x in err.splitlines() if x.startswith("pybuild: error:")]
    return line


# -- 1. substitution bombs ----------------------------------------------------------------------


def test_doubling_args_are_refused_before_the_string_is_built(tmp_path: Path) -> None:
    """25 lines whose args double each other once asked for 2 GiB (A22 = 512 * 2**22 characters)."""
    lines = ["version: 1", "args:", f'  A0: "{"x" * 512}"']
    lines += [f'  A{i}: "${{A{i - 1}}}${{A{i - 1}}}"' for i in range(1, 23)]
    lines += ["steps:", "  - write: /f", '    content: "${A22}"']
    (tmp_path / "recipe.yaml").write_text("\n".join(lines) + "\n")
    result = run_limited("recipe.yaml", "-o", "out", cwd=tmp_path, timeout=60)
    # A11 is 1 MiB exactly, the cap; A12 is the first over it, on line 3 + 12
    assert_clean_error(result, "recipe.yaml:15: args.A12: ${A11} makes this value longer than 1048576")
    assert not (tmp_path / "out").exists()


def test_many_references_to_a_large_arg_exhaust_the_recipe_budget(tmp_path: Path) -> None:
    """Each string under the cap, but 40 of them: the total budget refuses the recipe."""
    lines = ["version: 1", "args:", f'  A0: "{"x" * 512}"']
    lines += [f'  A{i}: "${{A{i - 1}}}${{A{i - 1}}}"' for i in range(1, 12)]  # A11: 1 MiB
    lines += ["config:", "  labels:"] + [f'    L{i}: "${{A11}}"' for i in range(40)]
    (tmp_path / "recipe.yaml").write_text("\n".join(lines) + "\n")
    result = run_limited("recipe.yaml", "-o", "out", cwd=tmp_path, timeout=120)
    assert_clean_error(result, "more than 16777216 characters in this recipe")
    assert re.fullmatch(r"pybuild: error: recipe\.yaml:\d+: config\.labels\.L1\d: .*", error_line(result.stderr))


def test_a_long_literal_without_references_is_not_limited(tmp_path: Path) -> None:
    """The cap is on what substitution makes; a long string as written costs only the file."""
    body = "y" * (2 << 20)
    (tmp_path / "recipe.yaml").write_text(f'version: 1\nsteps:\n  - write: /big\n    content: "{body}$$"\n')
    assert build(tmp_path / "recipe.yaml", tmp_path / "out") == 0
    assert layer_files(tmp_path / "out")["big"] == (body + "$").encode()


# -- 2. names no runtime can unpack -------------------------------------------------------------

LONG = "n" * 256  # NAME_MAX + 1
DEEP = "/" + "/".join(["d" * 200] * 21)  # 4221 bytes in components of 200


@pytest.mark.parametrize(
    ("steps", "where"),
    [
        (f"  - write: /etc/{LONG}\n    content: x\n", "recipe.yaml:3: steps[0].write"),
        (f"  - mkdir: /{LONG}/sub\n", "recipe.yaml:3: steps[0].mkdir"),
        (f"  - symlink: /{LONG}\n    target: /x\n", "recipe.yaml:3: steps[0].symlink"),
        (f"  - symlink: /l\n    target: {DEEP}\n", "recipe.yaml:4: steps[0].target"),
        (f"  - copy: f\n    to: /opt/{LONG}/\n", "recipe.yaml:4: steps[0].to"),
        (f"  - copy: {LONG}\n    to: /opt/\n", "recipe.yaml:3: steps[0].copy"),
        (f"  - remove: [/ok, /{LONG}]\n", "recipe.yaml:3: steps[0].remove[1]"),
        (f"  - run: 'true'\n    workdir: /{LONG}\n", "recipe.yaml:4: steps[0].workdir"),
        (f"  - run: 'true'\n    mounts: [cache: /{LONG}]\n", "recipe.yaml:4: steps[0].mounts[0].cache"),
        (f"  - write: {DEEP}\n    content: x\n", "recipe.yaml:3: steps[0].write"),
        (f"  - rootfs: r.tar\n    to: {DEEP}\n", "recipe.yaml:4: steps[0].to"),
    ],
    ids=["write", "mkdir", "symlink", "link-target", "copy-to", "copy-source", "remove", "workdir", "cache",
         "write-deep", "rootfs-to"],
)
def test_paths_no_runtime_can_unpack_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], steps: str, where: str
) -> None:
    (tmp_path / "f").write_text("x")
    (tmp_path / "recipe.yaml").write_text("version: 1\nsteps:\n" + steps)
    assert build(tmp_path / "recipe.yaml", tmp_path / "out") == 1
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"pybuild: error: {where}: "), line
    assert "NAME_MAX" in line or "PATH_MAX" in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key", ["workdir", "volumes"])
def test_config_paths_are_bounded_too(tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str) -> None:
    value = f"/{LONG}" if key == "workdir" else f"[/{LONG}]"
    (tmp_path / "recipe.yaml").write_text(f"version: 1\nconfig:\n  {key}: {value}\n")
    assert build(tmp_path / "recipe.yaml", tmp_path / "out") == 1
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"pybuild: error: recipe.yaml:3: config.{key}"), line
    assert "NAME_MAX" in line


def test_names_at_the_limits_are_accepted(tmp_path: Path) -> None:
    path = "/" + "/".join(["d" * 255] * 15) + "/" + "n" * 254  # components of 255, 4095 bytes in all
    assert len(path) == 4095
    (tmp_path / "recipe.yaml").write_text(f"version: 1\nsteps:\n  - write: {path}\n    content: x\n")
    assert build(tmp_path / "recipe.yaml", tmp_path / "out") == 0
    assert path.lstrip("/") in layer_files(tmp_path / "out")


@pytest.mark.parametrize("pattern", ["[z-a]", "[]"])
def test_a_bad_exclude_pattern_is_a_located_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pattern: str
) -> None:
    """Once a re.error traceback: the pattern is the user's typo."""
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "f").write_text("x")
    (tmp_path / "recipe.yaml").write_text(f"version: 1\nsteps:\n  - copy: app/\n    to: /a/\n    exclude: ['{pattern}']\n")
    assert build(tmp_path / "recipe.yaml", tmp_path / "out") == 1
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"pybuild: error: recipe.yaml:3: steps[0].copy: bad exclude pattern '{pattern}': "), line


# -- 3. a stage's links must not steer a glob onto the host -------------------------------------


@pytest.mark.parametrize("link", ["/", "../../../../../../../../../../../../../../../../.."], ids=["root", "dotdot"])
def test_copy_from_stage_globs_inside_the_stage_never_on_the_host(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, link: str
) -> None:
    """The stage has ``/a/evil -> LINK``; ``/a/evil/HOST/decoy/n*`` must list the stage's HOST/decoy
    (chroot rules: "/" and ".." stop at the stage root), not the host's directory of that name."""
    host = tmp_path_factory.mktemp("host")
    (host / "decoy").mkdir()
    (host / "decoy" / "nstage").write_text("HOST COPY\n")
    (host / "decoy" / "nhost").write_text("HOST ONLY\n")
    recipe = f"""\
version: 1
stages:
  build:
    from: scratch
    steps:
      - symlink: /a/evil
        target: "{link}"
      - write: {host}/decoy/nstage
        content: "from the stage\\n"
      - write: {host}/decoy/nother
        content: "also the stage\\n"
steps:
  - copy: /a/evil{host}/decoy/n*
    from: build
    to: /got/
"""
    (tmp_path / "recipe.yaml").write_text(recipe)
    assert build(tmp_path / "recipe.yaml", tmp_path / "out") == 0
    files = layer_files(tmp_path / "out")
    assert files == {"got/nother": b"also the stage\n", "got/nstage": b"from the stage\n"}


def test_copy_from_stage_link_loop_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = """\
version: 1
stages:
  build:
    steps:
      - symlink: /a
        target: /b
      - symlink: /b
        target: /a/x
steps:
  - copy: /a/*
    from: build
    to: /got/
"""
    (tmp_path / "recipe.yaml").write_text(recipe)
    assert build(tmp_path / "recipe.yaml", tmp_path / "out") == 1
    line = error_line(capsys.readouterr().err)
    assert line.startswith("pybuild: error: recipe.yaml:10: steps[0].copy: "), line


# -- 4. copy keeps the permission bits from disk, minus group/other write ----------------------

MODES = {"key": 0o600, "tool": 0o755, "shared": 0o664, "script": 0o775, "private-dir": 0o700,
         "group-dir": 0o775, "setuid": 0o4755, "readonly": 0o400}
EXPECTED = {"key": 0o600, "tool": 0o755, "shared": 0o644, "script": 0o755, "private-dir": 0o700,
            "group-dir": 0o755, "setuid": 0o4755, "readonly": 0o400}


def mode_context(root: Path) -> Path:
    (root / "app").mkdir(parents=True)
    for name, mode in MODES.items():
        path = root / "app" / name
        if name.endswith("-dir"):
            path.mkdir()
            (path / "inner").write_text(name)
        else:
            path.write_text(name)
        path.chmod(mode)
    (root / "recipe.yaml").write_text("version: 1\nsteps:\n  - copy: app/\n    to: /app/\n")
    return root


def test_copy_keeps_modes_from_disk_and_clears_only_group_and_other_write(tmp_path: Path) -> None:
    ctx = mode_context(tmp_path / "ctx")
    assert build(ctx / "recipe.yaml", tmp_path / "out") == 0
    [layer] = layers(tmp_path / "out")
    got = {name.removeprefix("app/"): m.mode for name, m in layer.items() if name.count("/") == 1}
    assert got == EXPECTED, {k: oct(v) for k, v in got.items()}


def test_copy_mode_key_still_overrides(tmp_path: Path) -> None:
    ctx = mode_context(tmp_path / "ctx")
    (ctx / "recipe.yaml").write_text("version: 1\nsteps:\n  - copy: app/key\n    to: /k\n    mode: '0644'\n")
    assert build(ctx / "recipe.yaml", tmp_path / "out") == 0
    [layer] = layers(tmp_path / "out")
    assert layer["k"].mode == 0o644


def umask_context(root: Path, umask: int) -> Path:
    """A checkout as git makes it under ``umask``: files 0666 & ~umask, executables 0777 & ~umask."""
    old = os.umask(umask)
    try:
        (root / "app" / "bin").mkdir(parents=True)
        (root / "app" / "README").write_text("readme\n")
        (root / "app" / "bin" / "run").write_text("#!/bin/sh\n")
        os.chmod(root / "app" / "bin" / "run", 0o777 & ~umask)
        (root / "recipe.yaml").write_text("version: 1\nsteps:\n  - copy: app/\n    to: /app/\n")
    finally:
        os.umask(old)
    return root


def test_checkouts_under_umask_002_and_022_give_the_same_image(tmp_path: Path) -> None:
    digests = []
    for umask in (0o022, 0o002):
        ctx = umask_context(tmp_path / f"ctx{umask:o}", umask)
        out = tmp_path / f"out{umask:o}"
        assert build(ctx / "recipe.yaml", out) == 0
        index = json.loads((out / "index.json").read_text())
        digests.append(index["manifests"][0]["digest"])
        [layer] = layers(out)
        assert (layer["app/README"].mode, layer["app/bin/run"].mode, layer["app/bin"].mode) == (0o644, 0o755, 0o755)
    assert digests[0] == digests[1]


def test_a_mode_change_on_disk_is_a_cache_miss(tmp_path: Path) -> None:
    """The cache key holds the layer mode: 0644 -> 0600 must rebuild, 0644 -> 0664 must not."""
    ctx = mode_context(tmp_path / "ctx")
    cache = tmp_path / "cache"

    def run(name: str) -> tuple[bool, int]:
        meta = tmp_path / f"{name}.json"
        assert build(ctx / "recipe.yaml", tmp_path / name, "--cache-dir", str(cache), "--metadata-file", str(meta)) == 0
        [step] = json.loads(meta.read_text())["steps"]
        [layer] = layers(tmp_path / name)
        return step["cached"], layer["app/shared"].mode

    (ctx / "app" / "shared").chmod(0o644)
    assert run("first") == (False, 0o644)
    (ctx / "app" / "shared").chmod(0o664)
    assert run("group-writable") == (True, 0o644)
    (ctx / "app" / "shared").chmod(0o600)
    assert run("private") == (False, 0o600)
