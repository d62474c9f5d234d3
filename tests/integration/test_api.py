"""The public Python API: the exported names are pinned, and docs/api.md's example runs as written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import builder

REPO = Path(__file__).resolve().parents[2]

EXPORTED = [
    "__version__", "build", "BuildResult", "BuildOptions", "load_recipe", "work_directory", "write_output",
    "write_layout", "read_layout", "describe", "push", "pull", "Reference", "RegistryOptions", "Image",
    "ImageIndex", "Platform", "Compression", "Reporter", "NullReporter", "PybuildError",
]  # fmt: skip


def test_the_exported_names_are_pinned_and_all_resolve() -> None:
    assert builder.__all__ == EXPORTED
    for name in EXPORTED:
        assert getattr(builder, name) is not None, name
    assert issubclass(builder.PybuildError, Exception)


def test_no_submodule_shadows_an_exported_name() -> None:
    """Importing a submodule binds it as an attribute of its package: a module named like an
    exported name (builder/build.py and builder.build) would replace the function for every user."""
    code = ("import importlib, pkgutil, types, builder\n"
            "for m in pkgutil.walk_packages(builder.__path__, 'builder.'):\n"
            "    if not m.name.endswith(('sandbox.child', '__main__')): importlib.import_module(m.name)\n"
            "bad = [n for n in builder.__all__ if isinstance(getattr(builder, n), types.ModuleType)]\n"
            "print(bad)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.stdout.strip() == "[]"


def test_importing_builder_loads_nothing_else() -> None:
    code = "import sys, builder; print(sorted(m for m in sys.modules if m.startswith('builder')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.stdout.strip() == "['builder']"


def test_the_docs_example_runs_as_written(tmp_path: Path, busybox_rootfs_tar: Path) -> None:
    example = (REPO / "docs" / "api.md").read_text().split("```python\n")[1].split("```")[0]
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    shutil.copy(busybox_rootfs_tar, tmp_path / "examples" / "hello" / "rootfs.tar.gz")
    done = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    tag, digest = done.stdout.splitlines()[0].split()
    assert tag == "hello:latest"
    assert digest.startswith("sha256:") and (tmp_path / "out" / "index.json").is_file()
    assert done.stdout.splitlines()[1].startswith("sha256:")


def test_the_cli_reference_is_current() -> None:
    """docs/cli.md is the commands' own --help: regenerate it with scripts/cli_docs.py after a change."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import cli_docs
    finally:
        sys.path.pop(0)
    assert (REPO / "docs" / "cli.md").read_text() == cli_docs.render(), "run scripts/cli_docs.py"
