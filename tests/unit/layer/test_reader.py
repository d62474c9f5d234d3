"""The layer reader is the tar writer's inverse, and the one place the whiteout rules live: the base
scan and the applier, which both read through it, can no longer disagree about a layer."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from builder.errors import InputError
from builder.fs.apply import apply_layer
from builder.layer.entry import Change, Entry, Kind, Opaque, Whiteout
from builder.layer.order import canonical
from builder.layer.reader import read_layer
from builder.layer.tarwriter import write_tar

EPOCH = 1_700_000_000


def _file(path: str, data: bytes, **kw) -> Entry:
    return Entry(path, Kind.FILE, size=len(data), content=lambda: io.BytesIO(data), **kw)


CHANGES: list[Change] = [
    Entry("etc", Kind.DIR, 0o755, mtime=5),
    _file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", mode=0o644, mtime=7),
    Entry("etc/link", Kind.SYMLINK, 0o777, link="/etc/passwd"),
    Entry("etc/hard", Kind.HARDLINK, 0o644, link="etc/passwd"),
    Entry("dev", Kind.DIR, 0o755),
    Entry("dev/null", Kind.CHAR, 0o666, devmajor=1, devminor=3),
    Entry("run", Kind.DIR, 0o755),
    Entry("run/fifo", Kind.FIFO, 0o600, uid=10, gid=20),
    Entry("usr", Kind.DIR, 0o755, xattrs=(("user.note", b"kept"),)),
    _file("usr/suid", b"#!/bin/sh\n", mode=0o4755, xattrs=(("security.capability", b"\x01" * 20),)),
    Opaque("var"),
    Whiteout("opt/gone"),
]


def _tar(changes, epoch=EPOCH) -> bytes:
    buf = io.BytesIO()
    write_tar(canonical(changes), buf, epoch)
    return buf.getvalue()


def _read(data: bytes):
    out: list[tuple[Change, bytes | None]] = []
    for _, change in read_layer(io.BytesIO(data), "test"):
        if isinstance(change, Entry) and change.content is not None:
            with change.content() as f:
                out.append((change.meta(), f.read()))
        else:
            out.append((change, None))
    return out


def test_reading_what_the_writer_wrote_gives_the_changes_back() -> None:
    got = _read(_tar(CHANGES))
    want: list[tuple[Change, bytes | None]] = []
    for c in canonical(CHANGES):
        if isinstance(c, Entry):
            data = c.content().read() if c.content else None
            want.append((Entry(c.path, c.kind, c.mode, c.uid, c.gid, c.size, c.mtime, c.link, c.devmajor,
                               c.devminor, c.xattrs), data))
        else:
            want.append((c, None))
    assert got == want


def _raw(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data, kind in members:
            ti = tarfile.TarInfo(name)
            ti.type = kind
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize(("members", "message"), [
    ([("a/../../x", b"", tarfile.REGTYPE)], "'..' climbs above the root"),
    ([("a/.wh.b/c", b"", tarfile.REGTYPE)], "a parent directory's name starts with '.wh.'"),
    ([("a/.wh.b", b"x", tarfile.REGTYPE)], "a whiteout must be an empty regular file"),
    ([("a/.wh.b", b"", tarfile.DIRTYPE)], "a whiteout must be an empty regular file"),
    ([("a/.wh...", b"", tarfile.REGTYPE)], "invalid whiteout name"),
    ([("./", b"", tarfile.REGTYPE)], "the root can only be a directory"),
])
def test_the_scan_and_the_applier_refuse_the_same_layers(tmp_path: Path, members, message: str) -> None:
    """One rule set: what the applier refuses, the scan (which reads a base for file steps) refuses too."""
    data = _raw(members)
    with pytest.raises(InputError, match=message):
        _read(data)
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(InputError, match=message):
        apply_layer(root, io.BytesIO(data), label="test")


def test_aufs_bookkeeping_is_skipped_and_unknown_types_are_files() -> None:
    data = _raw([(".wh..wh.plnk/1.2", b"", tarfile.REGTYPE), ("odd", b"abc", b"Z")])
    got = _read(data)
    assert [(c.path, c.kind if isinstance(c, Entry) else None, content) for c, content in got] == [
        ("odd", Kind.FILE, b"abc")]
