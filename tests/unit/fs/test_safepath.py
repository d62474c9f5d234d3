"""One set of chroot rules, whatever the lookup: a directory on disk and a metadata tree with the
same entries resolve every path alike, and nothing resolves outside the root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.errors import InputError
from builder.fs.safepath import join_in_root, resolve_in_root
from builder.fs.tree import FsTree
from builder.layer.entry import Entry, Kind

LINKS = {
    "abs": "/usr",  # absolute: restarts at the root
    "up": "../../..",  # climbs: stops at the root
    "usr/lib64": "lib",  # relative, one level
    "usr/loop": "loop",  # a loop
    "etc/passwd-link": "/etc/passwd",
    "dangling": "/nowhere/at/all",
}
DIRS = ["usr", "usr/lib", "etc"]
FILES = ["etc/passwd", "usr/lib/libc.so"]
PATHS = ["/", "abs", "abs/lib64/libc.so", "/up/up/etc/passwd", "usr/lib64/../lib/libc.so", "etc/passwd-link",
         "dangling", "dangling/x", "abs/../../../etc", "./usr//lib/", "up/abs/lib64"]


def _disk(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for d in DIRS:
        (root / d).mkdir(parents=True)
    for f in FILES:
        (root / f).write_text("x")
    for link, target in LINKS.items():
        os.symlink(target, root / link)
    return root


def _tree() -> FsTree:
    tree = FsTree()
    tree.apply([Entry(d, Kind.DIR, 0o755) for d in DIRS] + [Entry(f, Kind.FILE) for f in FILES]
               + [Entry(p, Kind.SYMLINK, 0o777, link=t) for p, t in LINKS.items()])
    return tree


@pytest.mark.parametrize("follow_last", [True, False])
@pytest.mark.parametrize("path", PATHS)
def test_disk_and_tree_agree(tmp_path: Path, path: str, follow_last: bool) -> None:
    root = _disk(tmp_path)
    on_tree = _tree().resolve(path.lstrip("/"), follow_last=follow_last)
    joined = join_in_root(root, path, follow_last=follow_last)
    assert joined == (root / on_tree if on_tree else root)
    assert root == joined or root in joined.parents
    found = resolve_in_root(root, path, follow_last=follow_last)
    assert found in (on_tree, None)  # None: a component before the last is not a directory
    assert (found is None) == (path == "dangling/x" or (path == "dangling" and follow_last))


def test_a_loop_is_an_error_everywhere(tmp_path: Path) -> None:
    root = _disk(tmp_path)
    for resolve in (lambda p: resolve_in_root(root, p), lambda p: join_in_root(root, p), _tree().resolve):
        with pytest.raises(InputError, match="too many levels of symbolic links in '/usr/loop/x'"):
            resolve("usr/loop/x")
