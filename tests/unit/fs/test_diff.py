"""Snapshots of a working root and the layer diff of a ``run`` step (builder.fs.snapshot/diff).

The targeted cases check the exact change list for each kind of change a command can make;
the property test checks the whole round trip: random tree A mutated in place into random
tree B, diffed, written as a layer tar, and applied onto a fresh copy of A, must give B.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import stat
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from builder.errors import InputError, StepError
from builder.fs.diff import diff
from builder.fs.snapshot import COMPARED_KEYWORDS, Node, snapshot
from builder.layer.entry import Change, Entry, Kind, Opaque, Whiteout
from builder.layer.tarwriter import write_tar
from builder.layer.xattrs import cap_v2 as _cap_v2

EPOCH = 4_000_000_000  # later than any file here, so real mtimes show; clamping has its own test
root_only = pytest.mark.needs(root=True)


def _diff(tmp_path: Path, setup: Callable[[Path], object], mutate: Callable[[Path], object],
          exclude: tuple[str, ...] = (), epoch: int = EPOCH) -> list[Change]:
    root = tmp_path / "root"
    root.mkdir()
    setup(root)
    before = snapshot(root, exclude)
    mutate(root)
    return diff(root, before, snapshot(root, exclude), epoch)


def _shape(changes: list[Change]) -> list[tuple[str, ...]]:
    """Changes as short tuples: ('wh', path), ('opq', path), (kind, path[, link])."""
    out: list[tuple[str, ...]] = []
    for c in changes:
        if isinstance(c, Whiteout):
            out.append(("wh", c.path))
        elif isinstance(c, Opaque):
            out.append(("opq", c.path))
        elif c.kind in (Kind.SYMLINK, Kind.HARDLINK):
            out.append((c.kind.value, c.path, c.link))
        else:
            out.append((c.kind.value, c.path))
    return out


def _entry(changes: list[Change], path: str) -> Entry:
    (found,) = [c for c in changes if isinstance(c, Entry) and c.path == path]
    return found


def _content(e: Entry) -> bytes:
    assert e.content is not None
    with e.content() as f:
        return f.read()


def _tree(root: Path, spec: dict[str, bytes | None]) -> None:
    """Paths -> content (a file) or None (a directory), parents first."""
    for rel, data in sorted(spec.items()):
        p = root / rel
        if data is None:
            p.mkdir(parents=True, exist_ok=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)


# --------------------------------------------------------------------------------------------
# targeted cases


def test_added_file_brings_its_parents(tmp_path: Path) -> None:
    changes = _diff(tmp_path, lambda r: _tree(r, {"etc": None, "usr/lib": None}),
                    lambda r: _tree(r, {"usr/lib/new/deep.txt": b"hi"}))
    assert _shape(changes) == [("dir", "usr"), ("dir", "usr/lib"), ("dir", "usr/lib/new"),
                               ("file", "usr/lib/new/deep.txt")]
    e = _entry(changes, "usr/lib/new/deep.txt")
    assert (e.size, _content(e)) == (2, b"hi")
    usr = _entry(changes, "usr")  # unchanged parent: emitted as it is on disk
    assert usr.mode == (tmp_path / "root/usr").stat().st_mode & 0o7777


def test_rewrite_with_same_size_and_mtime_is_seen_through_ctime(tmp_path: Path) -> None:
    def mutate(r: Path) -> None:
        p = r / "d/f"
        st = p.stat()
        p.write_bytes(b"BBBB")
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert p.stat().st_mtime_ns == st.st_mtime_ns

    changes = _diff(tmp_path, lambda r: _tree(r, {"d/f": b"aaaa"}), mutate)
    assert _shape(changes) == [("dir", "d"), ("file", "d/f")]
    assert _content(_entry(changes, "d/f")) == b"BBBB"


def test_chmod(tmp_path: Path) -> None:
    changes = _diff(tmp_path, lambda r: _tree(r, {"f": b"x"}), lambda r: (r / "f").chmod(0o4750))
    assert _shape(changes) == [("file", "f")]
    assert _entry(changes, "f").mode == 0o4750


@root_only
def test_chown(tmp_path: Path) -> None:
    changes = _diff(tmp_path, lambda r: _tree(r, {"f": b"x", "g": b"y"}), lambda r: os.chown(r / "f", 1000, 1001))
    assert _shape(changes) == [("file", "f")]
    assert (_entry(changes, "f").uid, _entry(changes, "f").gid) == (1000, 1001)


def test_delete_file(tmp_path: Path) -> None:
    changes = _diff(tmp_path, lambda r: _tree(r, {"d/a": b"1", "d/b": b"2"}), lambda r: (r / "d/a").unlink())
    assert _shape(changes) == [("dir", "d"), ("wh", "d/a")]


def test_delete_dir_tree_is_one_whiteout(tmp_path: Path) -> None:
    changes = _diff(tmp_path, lambda r: _tree(r, {"d/t/a/b/c": b"1", "d/t/x": b"2", "d/keep": b"3"}),
                    lambda r: shutil.rmtree(r / "d/t"))
    assert _shape(changes) == [("dir", "d"), ("wh", "d/t")]


def test_dir_replaced_by_file_has_no_whiteouts_below(tmp_path: Path) -> None:
    def mutate(r: Path) -> None:
        shutil.rmtree(r / "d/x")
        (r / "d/x").write_bytes(b"now a file")

    changes = _diff(tmp_path, lambda r: _tree(r, {"d/x/a": b"1", "d/x/sub/b": b"2"}), mutate)
    assert _shape(changes) == [("dir", "d"), ("file", "d/x")]


def test_dir_replaced_by_symlink_has_no_whiteouts_below(tmp_path: Path) -> None:
    def mutate(r: Path) -> None:
        shutil.rmtree(r / "x")
        (r / "x").symlink_to("/etc")

    changes = _diff(tmp_path, lambda r: _tree(r, {"x/a": b"1"}), mutate)
    assert _shape(changes) == [("symlink", "x", "/etc")]


def test_file_replaced_by_dir(tmp_path: Path) -> None:
    def mutate(r: Path) -> None:
        (r / "x").unlink()
        _tree(r, {"x/child": b"c"})

    changes = _diff(tmp_path, lambda r: _tree(r, {"x": b"file"}), mutate)
    assert _shape(changes) == [("dir", "x"), ("file", "x/child")]


def test_symlink_retarget(tmp_path: Path) -> None:
    def mutate(r: Path) -> None:
        (r / "l").unlink()
        (r / "l").symlink_to("../new")

    changes = _diff(tmp_path, lambda r: (r / "l").symlink_to("old"), mutate)
    assert _shape(changes) == [("symlink", "l", "../new")]


def test_deleted_and_recreated_dir_is_opaque_with_all_its_content(tmp_path: Path) -> None:
    def mutate(r: Path) -> None:
        # d/keep keeps its inode and path (moved out and back), d/keep/f is not even touched:
        # both must still be in the layer, because the opaque marker hides the lower ones
        (r / "d").rename(r / "old")
        (r / "d").mkdir()
        (r / "old/keep").rename(r / "d/keep")
        shutil.rmtree(r / "old")
        (r / "d/new").write_bytes(b"n")

    changes = _diff(tmp_path, lambda r: _tree(r, {"d/gone": b"g", "d/keep/f": b"k", "d/sub/x": b"x"}), mutate)
    assert _shape(changes) == [("dir", "d"), ("opq", "d"), ("dir", "d/keep"), ("file", "d/keep/f"),
                               ("file", "d/new")]


def test_recreated_dir_at_top_with_nested_recreated_dir_has_one_opaque(tmp_path: Path) -> None:
    def mutate(r: Path) -> None:
        (r / "a").rename(r / "old")  # new dirs made while the old exist: no inode number reuse
        _tree(r, {"a/b/c": b"2"})
        shutil.rmtree(r / "old")

    changes = _diff(tmp_path, lambda r: _tree(r, {"a/b/c": b"1", "a/b/d": b"1"}), mutate)
    assert _shape(changes) == [("dir", "a"), ("opq", "a"), ("dir", "a/b"), ("file", "a/b/c")]


def test_new_hardlink_to_a_lower_file_emits_both(tmp_path: Path) -> None:
    changes = _diff(tmp_path, lambda r: _tree(r, {"d/z": b"data", "d/other": b"o"}),
                    lambda r: os.link(r / "d/z", r / "d/a"))
    # the lower file's ctime moved (nlink++), so both are in the layer; content goes first
    assert _shape(changes) == [("dir", "d"), ("file", "d/a"), ("hardlink", "d/z", "d/a")]
    assert _content(_entry(changes, "d/a")) == b"data"


def test_hardlinks_among_new_files(tmp_path: Path) -> None:
    def mutate(r: Path) -> None:
        _tree(r, {"x/m": b"shared", "y": None})
        os.link(r / "x/m", r / "b")
        os.link(r / "x/m", r / "y/c")

    changes = _diff(tmp_path, lambda r: None, mutate)
    assert _shape(changes) == [("file", "b"), ("dir", "x"), ("hardlink", "x/m", "b"), ("dir", "y"),
                               ("hardlink", "y/c", "b")]
    assert _content(_entry(changes, "b")) == b"shared"


def test_hardlinked_fifo_is_a_hardlink_too(tmp_path: Path) -> None:
    def mutate(r: Path) -> None:
        os.mkfifo(r / "p")
        os.link(r / "p", r / "q")

    assert _shape(_diff(tmp_path, lambda r: None, mutate)) == [("fifo", "p"), ("hardlink", "q", "p")]


def test_hardlink_partner_outside_the_layer_gives_a_full_file(tmp_path: Path) -> None:
    def setup(r: Path) -> None:
        _tree(r, {"keep/x": b"data", "ex": None})
        os.link(r / "keep/x", r / "ex/y")

    def mutate(r: Path) -> None:
        with open(r / "keep/x", "r+b") as f:
            f.write(b"DA")

    changes = _diff(tmp_path, setup, mutate, exclude=("ex",))
    assert _shape(changes) == [("dir", "keep"), ("file", "keep/x")]
    assert _content(_entry(changes, "keep/x")) == b"DAta"


@root_only
def test_xattrs_kept_and_host_ones_dropped(tmp_path: Path) -> None:
    def mutate(r: Path) -> None:
        for name, value in (("user.mime", b"text/plain"), ("trusted.ok", b"\xff\x00"),
                            ("trusted.overlay.opaque", b"y"), ("user.overlay.origin", b"z")):
            os.setxattr(r / "f", name, value)

    def setup(r: Path) -> None:
        _tree(r, {"f": b"x"})
        try:
            os.setxattr(r / "f", "user.probe", b"1")
            os.removexattr(r / "f", "user.probe")
        except OSError:
            pytest.skip("no user xattrs on this filesystem")

    changes = _diff(tmp_path, setup, mutate)
    assert _shape(changes) == [("file", "f")]
    assert _entry(changes, "f").xattrs == (("trusted.ok", b"\xff\x00"), ("user.mime", b"text/plain"))


def test_v3_file_capability_is_stored_as_v2() -> None:
    caps = struct.pack("<IIII", 1 << 10, 0, 0, 0)  # permitted: cap_net_bind_service
    v3 = struct.pack("<I", 0x03000001) + caps + struct.pack("<I", 100000)
    v2 = struct.pack("<I", 0x02000001) + caps
    assert _cap_v2(v3) == v2
    assert _cap_v2(v2) == v2


@root_only
def test_fifo_and_device_nodes(tmp_path: Path) -> None:
    def mutate(r: Path) -> None:
        os.mkfifo(r / "p", 0o600)
        os.mknod(r / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.chmod(r / "null", 0o666)

    changes = _diff(tmp_path, lambda r: None, mutate)
    assert _shape(changes) == [("char", "null"), ("fifo", "p")]
    null = _entry(changes, "null")
    assert (null.devmajor, null.devminor, null.mode) == (1, 3, 0o666)


def test_socket_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def mutate(r: Path) -> None:
        monkeypatch.chdir(r)  # a relative name: AF_UNIX paths are limited to 108 bytes
        with socket.socket(socket.AF_UNIX) as s:
            s.bind("s")
        assert stat.S_ISSOCK((r / "s").lstat().st_mode)

    assert _diff(tmp_path, lambda r: None, mutate) == []


def test_whiteout_name_created_by_the_command_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"'/d/\.wh\.x'"):
        _diff(tmp_path, lambda r: _tree(r, {"d": None}), lambda r: _tree(r, {"d/.wh.x": b""}))


def test_excluded_subtree_is_ignored(tmp_path: Path) -> None:
    def mutate(r: Path) -> None:
        _tree(r, {"proc/1/status": b"x", "run/secrets/npmrc": b"token"})
        shutil.rmtree(r / "sys")

    changes = _diff(tmp_path, lambda r: _tree(r, {"sys/x": b"1", "run/secrets": None, "proc": None}), mutate,
                    exclude=("proc", "/sys", "run/secrets/"))
    assert _shape(changes) == []


def test_mtimes_are_clamped_to_the_epoch(tmp_path: Path) -> None:
    def mutate(r: Path) -> None:
        _tree(r, {"d/new": b"x", "d/old": b"y"})
        os.utime(r / "d/old", ns=(0, 1_000_000_000_999))

    changes = _diff(tmp_path, lambda r: _tree(r, {"d": None}), mutate, epoch=1_000_000)
    assert [(c.path, c.mtime) for c in changes if isinstance(c, Entry)] == [
        ("d", 1_000_000), ("d/new", 1_000_000), ("d/old", 1000)]


def test_content_is_refused_when_the_file_changed_after_the_snapshot(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    before = snapshot(root)
    _tree(root, {"d/f": b"abc"})
    changes = diff(root, before, snapshot(root), EPOCH)
    (root / "d/f").write_bytes(b"abcdef")
    with pytest.raises(StepError, match="changed after the command ended"):
        _content(_entry(changes, "d/f"))


def test_content_is_never_read_through_a_symlink(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    before = snapshot(root)
    _tree(root, {"d/f": b"abc"})
    changes = diff(root, before, snapshot(root), EPOCH)
    (root / "d").rename(tmp_path / "outside")
    (root / "d").symlink_to(tmp_path / "outside")
    with pytest.raises(StepError, match="cannot read '/d/f'"):
        _content(_entry(changes, "d/f"))


def test_snapshot_records_the_pinned_keywords(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"12345")
    node = snapshot(tmp_path).get("f")
    assert node is not None
    assert set(COMPARED_KEYWORDS) <= set(Node._fields) and "nlink" not in COMPARED_KEYWORDS
    assert (node.kind, node.size, node.mode, node.nlink) == (Kind.FILE, 5, (tmp_path / "f").stat().st_mode & 0o7777, 1)


def test_nothing_changed_is_an_empty_layer(tmp_path: Path) -> None:
    assert _diff(tmp_path, lambda r: _tree(r, {"a/b": b"1", "c": None}), lambda r: None) == []


# --------------------------------------------------------------------------------------------
# property: diff -> tar -> apply onto A gives B
#
# A tree model is path -> spec: ("dir", mode, uid, gid), ("file", inode), ("symlink", target,
# uid, gid), ("fifo", mode, uid, gid); inode -> (content, mode, uid, gid). Paths sharing an
# inode are hardlinks.

Tree = tuple[dict[str, tuple[object, ...]], dict[object, tuple[bytes, int, int, int]]]
NAMES = ("a", "b", "c", "d")
DIR_MODES = (0o755, 0o700, 0o1777, 0o2775)
FILE_MODES = (0o644, 0o600, 0o755, 0o4755, 0o2711, 0o444)
IDS = (0, 1, 1000)
CONTENT = st.one_of(st.sampled_from([b"", b"one", b"two", b"six", b"z" * 700]), st.binary(max_size=40))


@st.composite
def trees(draw: st.DrawFn, like: Tree | None = None) -> Tree:
    """A random tree; with ``like``, each path of it is kept as it is about half of the time."""
    paths: dict[str, tuple[object, ...]] = {}
    inodes: dict[object, tuple[bytes, int, int, int]] = {}
    ids = st.sampled_from(IDS)

    def fill(prefix: str, depth: int) -> None:
        names = draw(st.sets(st.sampled_from(NAMES), min_size=0 if depth else 2, max_size=len(NAMES)))
        for name in sorted(names):
            path = prefix + name
            old = like[0].get(path) if like else None
            if like and old is not None and draw(st.integers(0, 3)):  # mostly kept, to be changed in place
                if old[0] == "file":
                    inodes[old[1]] = like[1][old[1]] if draw(st.booleans()) else (
                        draw(CONTENT), draw(st.sampled_from(FILE_MODES)), draw(ids), draw(ids))
                paths[path] = old
                if old[0] == "dir" and depth < 3:
                    fill(path + "/", depth + 1)
                continue
            kind = draw(st.sampled_from(["dir", "dir", "file", "file", "link", "link", "symlink", "fifo"]))
            if kind == "dir":
                paths[path] = ("dir", draw(st.sampled_from(DIR_MODES)), draw(ids), draw(ids))
                if depth < 3:
                    fill(path + "/", depth + 1)
            elif kind == "link" and inodes:
                paths[path] = ("file", draw(st.sampled_from(sorted(inodes, key=repr))))
            elif kind in ("file", "link"):
                key = ("new", path)
                inodes[key] = (draw(CONTENT), draw(st.sampled_from(FILE_MODES)), draw(ids), draw(ids))
                paths[path] = ("file", key)
            elif kind == "symlink":
                paths[path] = ("symlink", draw(st.sampled_from(["a", "../b", "/etc/passwd", "c/a"])), draw(ids),
                               draw(ids))
            else:
                paths[path] = ("fifo", draw(st.sampled_from([0o600, 0o644])), draw(ids), draw(ids))

    fill("", 0)
    used = {spec[1] for spec in paths.values() if spec[0] == "file"}
    return paths, {k: v for k, v in inodes.items() if k in used}


def _set_meta(p: str, mode: int | None, uid: int, gid: int) -> None:
    """chown then chmod (chown clears setuid), each only when needed (both move ctime)."""
    st_ = os.lstat(p)
    if (st_.st_uid, st_.st_gid) != (uid, gid):
        os.lchown(p, uid, gid)
        st_ = os.lstat(p)
    if mode is not None and st_.st_mode & 0o7777 != mode:
        os.chmod(p, mode)


def _materialise(root: str, tree: Tree) -> None:
    paths, inodes = tree
    first: dict[object, str] = {}
    for path, spec in sorted(paths.items()):
        p = os.path.join(root, path)
        if spec[0] == "dir":
            os.mkdir(p)
        elif spec[0] == "symlink":
            os.symlink(str(spec[1]), p)
        elif spec[0] == "fifo":
            os.mkfifo(p)
        elif spec[1] in first:
            os.link(first[spec[1]], p)
        else:
            first[spec[1]] = p
            with open(p, "wb") as f:
                f.write(inodes[spec[1]][0])
    _apply_meta(root, tree)


def _apply_meta(root: str, tree: Tree) -> None:
    paths, inodes = tree
    for path, spec in sorted(paths.items(), reverse=True):
        p = os.path.join(root, path)
        if spec[0] == "file":
            _, mode, uid, gid = inodes[spec[1]]
            _set_meta(p, mode, uid, gid)
        elif spec[0] == "symlink":
            _set_meta(p, None, cast(int, spec[2]), cast(int, spec[3]))
        else:
            _set_meta(p, cast(int, spec[1]), cast(int, spec[2]), cast(int, spec[3]))


def _remove(p: str) -> None:
    if os.path.isdir(p) and not os.path.islink(p):
        shutil.rmtree(p)
    else:
        os.unlink(p)


def _mutate(root: str, a: Tree, b: Tree, recreate: dict[str, bool], trash: str) -> None:
    """Turn the materialised ``a`` into ``b`` in place, keeping whatever inodes it can.

    ``recreate``: directories to delete and make again. True: the old one is moved aside, a new
    one made (a new inode: an opaque directory) and the children ``b`` keeps are moved back
    into it, untouched; False: deleted first (ext4 then often reuses the inode number, and the
    diff must be right either way).
    """
    (apaths, _), (bpaths, binodes) = a, b
    gone: list[str] = []
    for path, spec in sorted(apaths.items()):
        p = os.path.join(root, path)
        if any(path.startswith(g + "/") for g in gone) or not os.path.lexists(p):
            continue
        new = bpaths.get(path)
        if recreate.get(path):
            aside = os.path.join(trash, str(len(os.listdir(trash))))
            os.rename(p, aside)
            os.mkdir(p)
            for name in os.listdir(aside):
                old, kept = apaths[f"{path}/{name}"], bpaths.get(f"{path}/{name}")
                if kept is not None and kept[0] == old[0] and (old[0] != "symlink" or kept[1] == old[1]):
                    os.rename(os.path.join(aside, name), os.path.join(p, name))
        elif new is None or new[0] != spec[0] or (spec[0] == "symlink" and new[1] != spec[1]) or (
                path in recreate):
            _remove(p)
            gone.append(path)
    for path, spec in sorted(bpaths.items()):
        p = os.path.join(root, path)
        if spec[0] == "dir" and not os.path.lexists(p):
            os.mkdir(p)
        elif spec[0] == "symlink" and not os.path.lexists(p):
            os.symlink(str(spec[1]), p)
        elif spec[0] == "fifo" and not os.path.lexists(p):
            os.mkfifo(p)
    groups: dict[object, list[str]] = {}
    for path, spec in sorted(bpaths.items()):
        if spec[0] == "file":
            groups.setdefault(spec[1], []).append(os.path.join(root, path))
    claimed: set[int] = set()
    for key, members in sorted(groups.items(), key=lambda kv: kv[1][0]):
        content = binodes[key][0]
        anchor = next((m for m in members if os.path.lexists(m) and os.lstat(m).st_ino not in claimed), None)
        if anchor is None:
            anchor = members[0]
            if os.path.lexists(anchor):
                os.unlink(anchor)
            with open(anchor, "wb") as f:
                f.write(content)
        else:
            st_ = os.lstat(anchor)
            with open(anchor, "rb") as f:
                same_content = f.read() == content
            if not same_content:  # rewritten in place, mtime restored: only ctime tells
                with open(anchor, "r+b") as f:
                    f.truncate()
                    f.write(content)
                os.utime(anchor, ns=(st_.st_atime_ns, st_.st_mtime_ns))
        ino = os.lstat(anchor).st_ino
        claimed.add(ino)
        for m in members:
            if m != anchor and not (os.path.lexists(m) and os.lstat(m).st_ino == ino):
                if os.path.lexists(m):
                    os.unlink(m)
                os.link(anchor, m)
    _apply_meta(root, b)
    shutil.rmtree(trash)


def _observe(root: str) -> dict[str, tuple[object, ...]]:
    """Everything the comparison covers: type, mode, owner, content/target, hardlink partners."""
    out: dict[str, tuple[object, ...]] = {}
    by_inode: dict[int, list[str]] = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(top, name)
            rel = os.path.relpath(p, root)
            st_ = os.lstat(p)
            fmt = stat.S_IFMT(st_.st_mode)
            if fmt == stat.S_IFREG:
                with open(p, "rb") as f:
                    detail: object = f.read()
                by_inode.setdefault(st_.st_ino, []).append(rel)
            elif fmt == stat.S_IFLNK:
                detail = os.readlink(p)
            else:
                detail = None
            out[rel] = (fmt, st_.st_mode & 0o7777 if fmt != stat.S_IFLNK else 0, st_.st_uid, st_.st_gid, detail)
    for members in by_inode.values():
        for rel in members:
            out[rel] = (*out[rel], tuple(sorted(members)))
    return out


def _expected(tree: Tree) -> dict[str, tuple[object, ...]]:
    paths, inodes = tree
    fmts = {"dir": stat.S_IFDIR, "file": stat.S_IFREG, "symlink": stat.S_IFLNK, "fifo": stat.S_IFIFO}
    out: dict[str, tuple[object, ...]] = {}
    for path, spec in paths.items():
        if spec[0] == "file":
            content, mode, uid, gid = inodes[spec[1]]
            partners = tuple(sorted(p for p, s in paths.items() if s == spec))
            out[path] = (stat.S_IFREG, mode, uid, gid, content, partners)
        elif spec[0] == "symlink":
            out[path] = (stat.S_IFLNK, 0, spec[2], spec[3], spec[1])
        else:
            out[path] = (fmts[str(spec[0])], spec[1], spec[2], spec[3], None)
    return out


@st.composite
def a_and_b(draw: st.DrawFn) -> tuple[Tree, Tree, dict[str, bool]]:
    a = draw(trees())
    b = draw(trees(like=a))
    both_dirs = sorted(p for p, s in b[0].items() if s[0] == "dir" and a[0].get(p, ("",))[0] == "dir")
    recreate = draw(st.dictionaries(st.sampled_from(both_dirs), st.booleans())) if both_dirs else {}
    return a, b, recreate


@root_only
@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(a_and_b())
def test_diff_applied_onto_a_gives_b(case: tuple[Tree, Tree, dict[str, bool]]) -> None:
    from builder.fs.apply import apply_layer  # being written beside this module

    a, b, recreate = case
    with tempfile.TemporaryDirectory() as tmp:
        work, fresh = os.path.join(tmp, "work"), os.path.join(tmp, "fresh")
        os.mkdir(work)
        _materialise(work, a)
        before = snapshot(Path(work))
        trash = os.path.join(tmp, "trash")
        os.mkdir(trash)
        _mutate(work, a, b, recreate, trash)
        after = snapshot(Path(work))
        assert _observe(work) == _expected(b)  # the mutation itself is right
        changes = diff(Path(work), before, after, EPOCH)
        for c in changes:  # what the examples exercised (--hypothesis-show-statistics)
            event(type(c).__name__ if not isinstance(c, Entry) else f"entry {c.kind.value}")
        buf = io.BytesIO()
        write_tar(changes, buf, EPOCH)
        os.mkdir(fresh)
        _materialise(fresh, a)
        apply_layer(Path(fresh), io.BytesIO(buf.getvalue()))
        assert _observe(fresh) == _expected(b)
