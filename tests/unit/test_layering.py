"""The architecture's dependency rules, checked by reading imports (see CONTRIBUTING.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "builder"

# package (or module) -> builder packages it may import (besides itself and builder.errors)
ALLOWED = {
    # values: the vocabulary, and images as raw bytes with the rules every reader and writer shares
    "oci": set(),
    "image": {"oci"},
    # building layers
    "layer": {"oci", "image"},
    "fs": {"layer", "oci", "image", "userns"},
    "recipe": {"oci"},
    "steps": {"recipe", "layer", "fs", "oci", "sandbox"},
    "sandbox": {"confine", "userns", "oci"},
    "confine": set(),
    "userns": set(),
    # readers and writers of on-disk formats and of registries (sinks.lock: regular-file reads, clones,
    # temp names, private siblings)
    "sinks": {"image", "oci", "fs"},
    "layout": {"image", "oci", "sinks"},  # sinks.lock only
    "archive": {"image", "oci", "layer", "layout", "sinks"},  # layer: the hardened tar reader; sinks.lock only
    "blobstore": {"oci", "sinks"},  # sinks.lock only
    "registry": {"image", "oci", "blobstore", "layout"},  # layout.format: a pull reuses a layout's blobs
    # choosing among them: a base's kind, an output's format
    "base": {"image", "oci", "layout", "archive"},
    "output": {"image", "layout", "archive"},
    # showing an image, and a build's progress
    "inspect": {"image", "oci"},
    "progress": {"image", "oci"},
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def area(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


MODULES = sorted(PKG.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_follow_the_data_flow(path):
    me = area(path)
    for mod in imports_of(path):
        if mod == "click":
            assert path.name == "cli.py", f"only cli.py may import click ({path})"
        if mod == "subprocess":  # the sandbox, and docker-credential-* helpers
            assert path.name in ("sandbox.py", "auth.py"), f"{path} runs subprocesses; only the sandbox may"
        if not mod.startswith("builder.") or me not in ALLOWED:
            continue
        target = mod.split(".")[1]
        assert target in ALLOWED[me] | {me, "errors"}, f"{path.relative_to(PKG)} imports {mod}"
