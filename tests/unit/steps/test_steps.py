"""File steps against a metadata tree: Docker COPY rules, owners, parents, whiteouts."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from builder.errors import InputError, Location
from builder.fs.tree import FsTree
from builder.layer.entry import Entry, Kind, Whiteout
from builder.recipe.model import CopyStep, MkdirStep, RemoveStep, SymlinkStep, WriteStep
from tests.helpers import step_changes

W = Location("recipe.yaml", 1, "steps[0]")
PASSWD = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
GROUP = b"root:x:0:\nstaff:x:50:\n"


def base_tree() -> FsTree:
    tree = FsTree()
    tree.apply([
        Entry("etc", Kind.DIR, 0o755), Entry("etc/passwd", Kind.FILE), Entry("etc/group", Kind.FILE),
        Entry("tmp", Kind.DIR, 0o1777), Entry("usr", Kind.DIR, 0o755), Entry("usr/lib64", Kind.DIR, 0o755),
        Entry("lib", Kind.SYMLINK, 0o777, link="usr/lib64"), Entry("var", Kind.DIR),
        Entry("var/cache", Kind.DIR), Entry("var/cache/apt", Kind.DIR), Entry("var/cache/apt/x", Kind.FILE),
    ])
    tree.capture("etc/passwd", PASSWD)
    tree.capture("etc/group", GROUP)
    return tree


def changes(step, tmp_path: Path, tree: FsTree | None = None):
    return step_changes(step, tmp_path, tree or base_tree(), 42)


def copy(sources, to, **kw):
    return CopyStep(tuple(sources), to, kw.get("owner"), kw.get("mode"), tuple(kw.get("exclude", ())), None, W)


@pytest.fixture
def context(tmp_path: Path) -> Path:
    (tmp_path / "app" / "sub").mkdir(parents=True)
    (tmp_path / "app" / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(tmp_path / "app" / "run.sh", 0o700)
    (tmp_path / "app" / "data.txt").write_text("data")
    os.chmod(tmp_path / "app" / "data.txt", 0o600)
    (tmp_path / "app" / "sub" / "x.pyc").write_text("pyc")
    (tmp_path / "app" / "top.pyc").write_text("pyc")
    (tmp_path / "app" / "link").symlink_to("/etc/shadow")
    os.link(tmp_path / "app" / "data.txt", tmp_path / "app" / "sub" / "hard.txt")
    (tmp_path / "single.conf").write_text("conf")
    return tmp_path


def by_path(chs):
    return {c.path: c for c in chs}


def test_copy_dir_contents_into_to(context):
    got = by_path(changes(copy(["app/"], "/opt/app/"), context))
    assert set(got) == {"opt", "opt/app", "opt/app/run.sh", "opt/app/data.txt", "opt/app/sub",
                        "opt/app/sub/x.pyc", "opt/app/top.pyc", "opt/app/link", "opt/app/sub/hard.txt"}
    assert got["opt/app/run.sh"].mode == 0o700  # as on disk: never more permissive in the image
    assert got["opt/app/data.txt"].mode == 0o600
    assert got["opt/app/link"].kind is Kind.SYMLINK and got["opt/app/link"].link == "/etc/shadow"
    assert all(c.mtime == 42 for c in got.values() if c.path.startswith("opt/app"))
    # hardlinks stay hardlinks, the first in canonical order carries the content
    assert got["opt/app/data.txt"].kind is Kind.FILE
    assert got["opt/app/sub/hard.txt"].kind is Kind.HARDLINK and got["opt/app/sub/hard.txt"].link == "opt/app/data.txt"


def test_copy_exclude_double_star_matches_top_level(context):
    got = by_path(changes(copy(["app"], "/opt/app", exclude=["**/*.pyc"]), context))
    assert "opt/app/top.pyc" not in got and "opt/app/sub/x.pyc" not in got and "opt/app/run.sh" in got


def test_copy_exclude_negation(context):
    got = by_path(changes(copy(["app"], "/o", exclude=["sub", "!sub/x.pyc"]), context))
    assert "o/sub/x.pyc" in got and "o/sub/hard.txt" not in got


def test_copy_file_to_path_or_into_dir(context):
    assert "etc/app.conf" in by_path(changes(copy(["single.conf"], "/etc/app.conf"), context))
    assert "etc/single.conf" in by_path(changes(copy(["single.conf"], "/etc/"), context))
    assert "etc/single.conf" in by_path(changes(copy(["single.conf"], "/etc"), context))  # existing dir


def test_copy_owner_mode_and_existing_parent_kept(context):
    got = by_path(changes(copy(["single.conf"], "/tmp/x/"), context))
    assert got["tmp"].mode == 0o1777  # an existing parent is re-emitted as it is
    assert (got["tmp/x"].mode, got["tmp/x"].uid) == (0o755, 0)
    got = by_path(changes(copy(["single.conf"], "/srv/c", owner="app:staff", mode=0o600), context))
    assert (got["srv/c"].uid, got["srv/c"].gid, got["srv/c"].mode) == (1000, 50, 0o600)


def test_copy_follows_symlinks_in_destination_inside_the_image(context):
    got = by_path(changes(copy(["single.conf"], "/lib/"), context))
    assert "usr/lib64/single.conf" in got


def test_copy_glob(context):
    got = by_path(changes(copy(["app/*.sh", "single.*"], "/b/"), context))
    assert {"b/run.sh", "b/single.conf"} <= set(got)


@pytest.mark.parametrize("src, message", [
    ("missing/", "no such file or directory: 'missing/'"),
    ("nomatch*", "matched nothing"),
])
def test_copy_missing(context, src, message):
    with pytest.raises(InputError, match=message):
        changes(copy([src], "/x/"), context)


def test_copy_symlink_leading_out_of_context_is_refused(context, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret").write_text("s")
    (context / "escape").symlink_to(outside / "secret")
    with pytest.raises(InputError, match="outside the build context"):
        changes(copy(["escape"], "/x"), context)


def test_copy_whiteout_named_file_is_refused(context):
    (context / "app" / ".wh.bad").write_text("")
    with pytest.raises(InputError, match="cannot be stored in an image"):
        changes(copy(["app/"], "/opt/"), context)


def test_unknown_owner(context):
    with pytest.raises(InputError, match="unknown user 'nobody'"):
        changes(copy(["single.conf"], "/x", owner="nobody"), context)


def test_write_mkdir_symlink(tmp_path):
    got = by_path(changes(WriteStep("/etc/motd", "hi\n", None, None, W), tmp_path))
    assert got["etc/motd"].content().read() == b"hi\n" and got["etc/motd"].mode == 0o644
    got = by_path(changes(MkdirStep("/data/x", 0o700, "1000", W), tmp_path))
    assert (got["data/x"].mode, got["data/x"].uid, got["data/x"].gid) == (0o700, 1000, 1000)
    assert (got["data"].mode, got["data"].uid) == (0o755, 0)
    got = by_path(changes(SymlinkStep("/usr/bin/py", "python3", None, W), tmp_path))
    assert got["usr/bin/py"].link == "python3"


def test_write_onto_a_directory_is_an_error(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        changes(WriteStep("/tmp", "x", None, None, W), tmp_path)


def test_remove_topmost_only_and_missing_ignored(tmp_path):
    got = changes(RemoveStep(("/var/cache", "/var/cache/apt/x", "/not/there"), W), tmp_path)
    assert [c for c in got if isinstance(c, Whiteout)] == [Whiteout("var/cache")]
    assert [c.path for c in got] == ["var", "var/cache"]  # the parent dir, then the whiteout
    assert changes(RemoveStep(("/nothing",), W), tmp_path) == []


def test_remove_through_symlinked_parent(tmp_path):
    tree = base_tree()
    tree.apply([Entry("usr/lib64/libx.so", Kind.FILE)])
    got = changes(RemoveStep(("/lib/libx.so",), W), tmp_path, tree)
    assert Whiteout("usr/lib64/libx.so") in got


def test_tree_capture_for_written_passwd(tmp_path):
    tree = FsTree()
    entry = Entry("etc/passwd", Kind.FILE, content=lambda: io.BytesIO(PASSWD))
    tree.apply([entry])
    etc = tree.get("etc")
    assert etc is not None and etc.kind is Kind.DIR  # parents are implied


def test_safepath_resolves_and_globs_as_in_a_chroot(tmp_path: Path) -> None:
    from builder.fs.safepath import glob_in_root, resolve_in_root

    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    for name in ("na", "nb", ".nhidden", "other"):
        (root / "dir" / name).write_text(name)
    (root / "abs").symlink_to("/")
    (root / "up").symlink_to("../../../../../../..")
    (root / "dir" / "nlink").symlink_to("/dir/na")
    (root / "dir" / "ndangling").symlink_to("/nowhere")
    (root / "file").write_text("f")
    assert resolve_in_root(root, "/abs/dir/na") == "dir/na"
    assert resolve_in_root(root, "/up/up/dir/../../dir/nb") == "dir/nb"  # '..' stops at the root
    assert resolve_in_root(root, "/dir/nlink") == "dir/na"
    assert resolve_in_root(root, "/dir/nlink", follow_last=False) == "dir/nlink"
    assert resolve_in_root(root, "/dir/missing") == "dir/missing"  # the last part may be missing
    assert resolve_in_root(root, "/missing/x") is None and resolve_in_root(root, "/file/x") is None
    # links on the way resolve inside the root; a matched link (even a dangling one) stays itself
    assert glob_in_root(root, "/abs/dir/n*") == ["dir/na", "dir/nb", "dir/ndangling", "dir/nlink"]
    assert glob_in_root(root, "/up/dir/.n*") == ["dir/.nhidden"]
    assert glob_in_root(root, "/*/na") == ["dir/na"]  # 'file' is no directory; /abs/na is /na: missing
    assert glob_in_root(root, "/dir/[!n]*") == ["dir/.nhidden", "dir/other"]  # dot files too, as include_hidden
