"""The architecture's dependency rules, checked by reading imports (see CONTRIBUTING.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "builder"

# package (or module) -> builder packages (or modules) it may import (besides itself and builder.errors)
ALLOWED = {
    # values: the vocabulary, and images as raw bytes with the rules every reader and writer shares
    "oci": set(),
    "fs.atomic": {"oci"},  # temp files, atomic writes, regular-file reads, verified copies: for everyone below
    "fs.lock": {"fs.atomic"},  # the layout lock, and private siblings beside OUT: for the writers of outputs
    "image": {"oci"},
    "attest.referrer": {"image", "oci"},  # a document attached to an image: a value, as images are
    # building layers
    "layer": {"oci", "image", "fs.atomic"},
    "fs": {"layer", "oci", "image", "userns"},  # never recipe or steps: fs is below them
    "recipe": {"oci"},
    "steps": {"recipe", "layer", "fs", "oci", "sandbox"},
    "sandbox": {"confine", "userns", "oci", "fs.syscalls"},  # fs.syscalls: mount(2) and friends, shared
    "confine": set(),
    "userns": set(),
    # readers and writers of on-disk formats and of registries (fs.atomic: temp files, verified copies;
    # fs.lock: the layout lock, private siblings)
    "layout": {"image", "attest.referrer", "oci", "fs.atomic", "fs.lock"},
    "archive": {"image", "attest.referrer", "oci", "layer", "layout", "fs.atomic", "fs.lock"},  # layer: the hardened tar reader
    "blobstore": {"oci", "fs.atomic", "layout.format"},  # layout.format: the store's names are a layout's
    "registry": {"image", "attest.referrer", "oci", "blobstore", "layout", "fs.atomic"},  # layout.format: a pull reuses a layout's blobs
    # choosing among them: a base's kind, an output's format
    "base": {"image", "attest.referrer", "oci", "layout", "archive"},
    "output": {"image", "attest.referrer", "layout", "archive"},
    # what the attestations say: the provenance from the build's inputs, the SBOM from the image's layers
    "attest": {"oci", "image"},
    "sbom": {"oci", "image", "layer", "fs.atomic"},
    # an image as a runtime bundle (fs: layers unpacked onto a directory, users resolved in it)
    "bundle": {"image", "oci", "fs", "userns", "cache.snapshots"},  # cache.snapshots: layers already extracted
    # the layer cache: above the layers it stores (layer: the format version, the decoders of a hit's check),
    # below the stages that use it
    "cache": {"oci", "image", "layer", "fs.atomic", "fs.apply", "fs.syscalls"},  # fs.apply: snapshots are extracted layers
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
    """The entry of ALLOWED that rules ``path``: its module's own (``fs.atomic``), else its package's."""
    rel = path.relative_to(PKG)
    module = ".".join(rel.with_suffix("").parts[:2])
    return module if module in ALLOWED else rel.parts[0].removesuffix(".py")


MODULES = sorted(PKG.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_follow_the_data_flow(path):
    me = area(path)
    for mod in imports_of(path):
        if mod == "click":
            assert path.parent == PKG / "cli", f"only the cli package may import click ({path})"
        if mod == "subprocess":  # the sandbox, docker-credential-* helpers, and fuse-overlayfs mounts
            allowed = area(path) == "sandbox" or path.name == "credential_helpers.py" or path == PKG / "fs/overlay.py"
            assert allowed, f"{path} runs subprocesses; only the sandbox (credential helpers, fuse-overlayfs) may"
        if not mod.startswith("builder.") or me not in ALLOWED:
            continue
        parts = mod.split(".")
        allowed = ALLOWED[me] | {me, "errors"}
        assert parts[1] in allowed or ".".join(parts[1:3]) in allowed, f"{path.relative_to(PKG)} imports {mod}"
