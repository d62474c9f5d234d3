"""The rootfs step on real (and hostile) tarballs: streamed, parents first, nothing escapes."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
from pathlib import Path

import pytest
import zstandard

from builder.errors import InputError, Location
from builder.fs.tree import FsTree
from builder.layer.entry import Entry, Kind
from builder.recipe.model import RootfsStep
from builder.steps import Changes, Scope, handler_for
from builder.steps.base import Redo
from tests.helpers import AMD64, FakeLower, step_changes

WHERE = Location("recipe.yaml", 3, "steps[0].rootfs")


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], compress=None) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in members:
            if data is not None:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            else:
                tf.addfile(ti)
    raw = buf.getvalue()
    if compress:
        raw = compress(raw)
    path.write_bytes(raw)
    return path


def ti(name, type_=tarfile.REGTYPE, **kw) -> tarfile.TarInfo:
    t = tarfile.TarInfo(name)
    t.type = type_
    for k, v in kw.items():
        setattr(t, k, v)
    return t


def run(tmp_path, members, compress=None, to="/", tree=None):
    make_tar(tmp_path / "rootfs.tar", members, compress)
    changes = _changes(tmp_path, RootfsStep("rootfs.tar", to, WHERE), tree or FsTree(), 1000)
    out = []
    for change in changes.stream:
        if isinstance(change, Redo):  # the archive needs the two-pass stream: the writer starts again
            assert changes.redo is not None
            return [_eager(c) for c in changes.redo()]
        out.append(_eager(change))
    return out


def _changes(context, step, tree, epoch) -> Changes:
    plan = handler_for(step).plan(step, Scope(context=context, platform=AMD64, epoch=epoch, config={}))
    return plan.changes(FakeLower(tree))


def _eager(change):
    """Read content while the stream is positioned on it, as the tar writer does."""
    if isinstance(change, Entry) and change.content is not None:
        data = change.content().read()
        return Entry(change.path, change.kind, change.mode, change.uid, change.gid, change.size, change.mtime,
                     change.link, change.devmajor, change.devminor, change.xattrs, lambda: io.BytesIO(data))
    return change


def paths(changes):
    return [c.path for c in changes]


def test_parents_come_first_with_the_archives_own_metadata(tmp_path):
    members = [
        (ti("./etc/passwd", mode=0o644, mtime=5000), b"root:x:0:0::/root:/bin/sh\n"),
        (ti("./etc/", tarfile.DIRTYPE, mode=0o700, uid=3, mtime=10), None),
        (ti("./", tarfile.DIRTYPE, mode=0o755), None),
    ]
    changes = run(tmp_path, members)
    assert paths(changes) == ["etc", "etc/passwd"]
    assert changes[0].mode == 0o700 and changes[0].uid == 3  # from the later dir entry
    assert changes[1].mtime == 1000  # clamped to the epoch
    assert changes[0].mtime == 10


def test_special_files_owners_setuid_xattrs_survive(tmp_path):
    members = [
        (ti("bin", tarfile.DIRTYPE, mode=0o755), None),
        (ti("bin/su", mode=0o4755, uid=0, gid=0), b"ELF"),
        (ti("bin/ping", mode=0o755, pax_headers={"SCHILY.xattr.security.capability": "\x01\x00",
                                                 "SCHILY.xattr.security.selinux": "system_u"}), b"ELF"),
        (ti("home", tarfile.DIRTYPE), None),
        (ti("home/u", tarfile.DIRTYPE, mode=0o750, uid=1000, gid=1000), None),
        (ti("dev", tarfile.DIRTYPE), None),
        (ti("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3), None),
        (ti("dev/loop0", tarfile.BLKTYPE, mode=0o660, devmajor=7, devminor=0), None),
        (ti("dev/initctl", tarfile.FIFOTYPE, mode=0o600), None),
        (ti("bin/sh", tarfile.SYMTYPE, linkname="/bin/busybox"), None),
        (ti("bin/su2", tarfile.LNKTYPE, linkname="bin/su"), None),
    ]
    by = {c.path: c for c in run(tmp_path, members)}
    assert by["bin/su"].mode == 0o4755
    assert by["bin/ping"].xattrs == (("security.capability", b"\x01\x00"),)  # selinux dropped
    assert (by["home/u"].uid, by["home/u"].gid, by["home/u"].mode) == (1000, 1000, 0o750)
    assert by["dev/null"].kind is Kind.CHAR and (by["dev/null"].devmajor, by["dev/null"].devminor) == (1, 3)
    assert by["dev/loop0"].kind is Kind.BLOCK and by["dev/initctl"].kind is Kind.FIFO
    assert by["bin/sh"].kind is Kind.SYMLINK and by["bin/sh"].link == "/bin/busybox"
    assert by["bin/su2"].kind is Kind.HARDLINK and by["bin/su2"].link == "bin/su"


@pytest.mark.parametrize("compress", [None, gzip.compress, lzma.compress, bz2.compress,
                                      lambda b: zstandard.ZstdCompressor().compress(b)])
def test_compression_detected_by_content(tmp_path, compress):
    changes = run(tmp_path, [(ti("f"), b"data")], compress)
    assert paths(changes) == ["f"]
    assert changes[0].content().read() == b"data"


def test_absolute_names_are_made_relative(tmp_path):
    assert paths(run(tmp_path, [(ti("/etc/motd"), b"hi")])) == ["etc", "etc/motd"]


def test_duplicates_last_one_wins(tmp_path):
    changes = run(tmp_path, [(ti("f"), b"old"), (ti("f"), b"new")])
    assert len(changes) == 1 and changes[0].content().read() == b"new"


def test_to_prefixes_every_entry(tmp_path):
    assert paths(run(tmp_path, [(ti("a"), b"1")], to="/opt/x")) == ["opt", "opt/x", "opt/x/a"]


def test_parent_of_existing_lower_dir_keeps_its_mode(tmp_path):
    tree = FsTree()
    tree.apply([Entry("tmp", Kind.DIR, 0o1777)])
    changes = run(tmp_path, [(ti("tmp/x"), b"1")], tree=tree)
    assert changes[0].path == "tmp" and changes[0].mode == 0o1777


@pytest.mark.parametrize("members, message", [
    ([(ti("../evil"), b"x")], "climbs out of the root"),
    ([(ti("a/../../evil"), b"x")], "climbs out of the root"),
    ([(ti("etc/.wh.passwd"), b"")], "cannot be stored in an image"),
    ([(ti(".wh..wh..opq"), b"")], "cannot be stored in an image"),
    ([(ti("l", tarfile.LNKTYPE, linkname="../../etc/shadow"), None)], "points outside"),
    ([(ti("l", tarfile.LNKTYPE, linkname="later"), None), (ti("later"), b"x")], "not an earlier entry"),
    ([(ti("d", tarfile.DIRTYPE), None), (ti("l", tarfile.LNKTYPE, linkname="d"), None)], "a directory"),
    ([(ti("a", tarfile.SYMTYPE, linkname="/etc"), None), (ti("a/passwd"), b"x")], "not a directory"),
    ([(ti("f"), b"x"), (ti("f/g"), b"y")], "not a directory"),
])
def test_hostile_entries_are_refused(tmp_path, members, message):
    with pytest.raises(InputError, match=message):
        run(tmp_path, members)


def test_truncated_archive_is_an_input_error(tmp_path):
    make_tar(tmp_path / "rootfs.tar", [(ti("big"), b"x" * 100_000)])
    data = (tmp_path / "rootfs.tar").read_bytes()
    (tmp_path / "rootfs.tar").write_bytes(gzip.compress(data[:50_000]))
    with pytest.raises(InputError):
        for change in _changes(tmp_path, RootfsStep("rootfs.tar", "/", WHERE), FsTree(), 0).stream:
            if isinstance(change, Entry) and change.content:
                change.content().read()


def test_not_a_tarball(tmp_path):
    (tmp_path / "rootfs.tar").write_bytes(b"hello, this is not a tar archive" * 40)
    with pytest.raises(InputError, match=r"rootfs\.tar"):
        step_changes(RootfsStep("rootfs.tar", "/", WHERE), tmp_path, FsTree())


def test_source_outside_context_via_symlink(tmp_path):
    outside = tmp_path / "outside.tar"
    make_tar(outside, [(ti("f"), b"x")])
    ctx_dir = tmp_path / "ctx"
    ctx_dir.mkdir()
    (ctx_dir / "rootfs.tar").symlink_to(outside)
    with pytest.raises(InputError, match="outside the build context"):
        step_changes(RootfsStep("rootfs.tar", "/", WHERE), ctx_dir, FsTree())
