"""Tar writer, canonical order, whiteouts, hardlinks and the one-pass blob pipeline."""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import tarfile

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.errors import InputError
from builder.layer.blob import write_layer_blob
from builder.layer.compress import Compression
from builder.layer.decompress import sniff
from builder.layer.entry import Change, Entry, Kind, Opaque, Whiteout, canon
from builder.layer.order import canonical
from builder.layer.tarwriter import _ustar, write_tar


def _file(path: str, data: bytes, **kw) -> Entry:
    return Entry(path, Kind.FILE, kw.pop("mode", 0o644), size=len(data), content=lambda: io.BytesIO(data), **kw)


def _tar_bytes(changes, epoch=0) -> bytes:
    buf = io.BytesIO()
    write_tar(changes, buf, epoch)
    return buf.getvalue()


def _names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [m.name for m in tf]


SAMPLE: list[Change] = [
    Entry("usr", Kind.DIR, 0o755),
    Entry("usr/bin", Kind.DIR, 0o755),
    _file("usr/bin/tool", b"#!/bin/sh\n", mode=0o4755, uid=0, gid=0, mtime=2_000_000_000),
    Entry("usr/bin/alias", Kind.HARDLINK, 0o755, link="usr/bin/tool"),
    Entry("usr/lib", Kind.SYMLINK, 0o777, link="/lib64"),
    Whiteout("usr/share"),
    Whiteout("usr/bin/gone"),
    Opaque("usr/bin"),
    Entry("dev", Kind.DIR, 0o755),
    Entry("dev/null", Kind.CHAR, 0o666, devmajor=1, devminor=3),
    Entry("dev/sda", Kind.BLOCK, 0o660, gid=6, devmajor=8, devminor=0),
    Entry("run", Kind.DIR, 0o755),
    Entry("run/fifo", Kind.FIFO, 0o600),
    _file("sbin-ping", b"\x7fELF", mode=0o755, xattrs=(("security.capability", b"\x01\x00\x00\x02\x00\x20\x00"),)),
]


def test_canonical_order_parents_opaque_whiteouts_then_children():
    names = _names(_tar_bytes(canonical(SAMPLE)))
    assert names == [
        "dev", "dev/null", "dev/sda", "run", "run/fifo", "sbin-ping",
        "usr", "usr/.wh.share", "usr/bin", "usr/bin/.wh..wh..opq", "usr/bin/.wh.gone",
        "usr/bin/alias", "usr/bin/tool", "usr/lib",
    ]


def test_hardlink_group_rerooted_so_target_comes_first():
    ordered = canonical(SAMPLE)
    alias = next(c for c in ordered if c.path == "usr/bin/alias")
    tool = next(c for c in ordered if c.path == "usr/bin/tool")
    assert isinstance(alias, Entry) and isinstance(tool, Entry)
    assert alias.kind is Kind.FILE and alias.size == len(b"#!/bin/sh\n")
    assert tool.kind is Kind.HARDLINK and tool.link == "usr/bin/alias"
    with tarfile.open(fileobj=io.BytesIO(_tar_bytes(ordered))) as tf:
        members = {m.name: m for m in tf}
        assert members["usr/bin/tool"].islnk() and members["usr/bin/tool"].linkname == "usr/bin/alias"
        f = tf.extractfile(members["usr/bin/alias"])
        assert f is not None and f.read() == b"#!/bin/sh\n"


def test_header_policy_is_deterministic():
    data = _tar_bytes(canonical(SAMPLE), epoch=1_700_000_000)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for m in tf:
            assert m.uname == "" and m.gname == ""
            assert isinstance(m.mtime, int) and m.mtime <= 1_700_000_000
            assert "atime" not in m.pax_headers and "ctime" not in m.pax_headers
            assert "mtime" not in m.pax_headers
        by_name = {x.name: x for x in tf.getmembers()}
        assert by_name["usr/bin/alias"].mode == 0o4755  # setuid kept
        assert by_name["dev/null"].ischr() and (by_name["dev/null"].devmajor, by_name["dev/null"].devminor) == (1, 3)
        assert by_name["dev/sda"].isblk() and by_name["run/fifo"].isfifo()
        assert by_name["sbin-ping"].pax_headers["SCHILY.xattr.security.capability"].encode(
            "utf-8", "surrogateescape") == b"\x01\x00\x00\x02\x00\x20\x00"
    assert data.startswith(b"dev/")  # directories are written with a trailing slash
    assert len(data) % 10240 == 0


def test_tar_is_identical_under_shuffled_input():
    ref = _tar_bytes(canonical(SAMPLE))
    rng = random.Random(7)
    for _ in range(20):
        shuffled = SAMPLE[:]
        rng.shuffle(shuffled)
        assert _tar_bytes(canonical(shuffled)) == ref


@pytest.mark.parametrize("changes, message", [
    ([_file("a/.wh.x", b"")], "cannot be stored in an image"),
    ([Entry("a", Kind.DIR), Entry("a/l", Kind.HARDLINK, link="a/missing")], "not earlier in the same layer"),
    ([Entry("a", Kind.DIR), Entry("l", Kind.HARDLINK, link="a")], "is a directory"),
    ([_file("x", b"1"), _file("x", b"2")], "two entries for one path"),
    ([Whiteout("x"), _file("x", b"2")], "both deleted and added"),
])
def test_writer_refuses_what_a_layer_cannot_hold(changes, message):
    with pytest.raises(InputError, match=message):
        _tar_bytes(changes)


def test_canonical_refuses_duplicates():
    with pytest.raises(InputError, match="two entries"):
        canonical([_file("x", b"1"), _file("x", b"2")])


def test_file_that_shrinks_while_read_is_an_input_error():
    entry = Entry("x", Kind.FILE, size=100, content=lambda: io.BytesIO(b"short"))
    with pytest.raises(InputError, match="changed size"):
        _tar_bytes([entry])


@pytest.mark.parametrize("path, expected", [
    ("/usr//bin/", "usr/bin"), ("./etc/passwd", "etc/passwd"), ("/", ""), ("a/b/../c", "a/c"), ("", ""),
])
def test_canon(path, expected):
    assert canon(path) == expected


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/.."])
def test_canon_refuses_escape(path):
    with pytest.raises(ValueError):
        canon(path)


@pytest.mark.parametrize("kind", list(Compression))
def test_blob_pipeline_ids_match_the_bytes(tmp_path, kind):
    big = bytes(random.Random(1).getrandbits(8) for _ in range(300_000)) * 8  # > several chunks
    changes = canonical([_file("big", big), Entry("d", Kind.DIR, 0o755)])
    blob = write_layer_blob(lambda out: write_tar(changes, out, 0),  # type: ignore[arg-type]  # its count is dropped
                            kind, None, tmp_path)
    raw = blob.path.read_bytes()
    assert blob.path.name == blob.digest.hex == hashlib.sha256(raw).hexdigest()
    assert blob.descriptor.size == len(raw)
    assert blob.descriptor.media_type == kind.media_type
    assert sniff(raw[:6]) == {"gzip": "gzip", "zstd": "zstd", "none": "none"}[kind.value]
    plain = {
        Compression.GZIP: lambda: gzip.decompress(raw),
        Compression.ZSTD: lambda: zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read(),
        Compression.NONE: lambda: raw,
    }[kind]()
    assert blob.diff_id.hex == hashlib.sha256(plain).hexdigest()
    assert blob.uncompressed_size == len(plain)
    again = write_layer_blob(lambda out: write_tar(changes, out, 0),  # type: ignore[arg-type]  # its count is dropped
                             kind, None, tmp_path / "2")
    assert again.digest == blob.digest  # compression is deterministic


def test_gzip_header_has_no_name_or_time(tmp_path):
    blob = write_layer_blob(
        lambda out: write_tar([Entry("d", Kind.DIR)], out, 0),  # type: ignore[arg-type]  # its count is dropped
        Compression.GZIP, None, tmp_path)
    head = blob.path.read_bytes()[:10]
    assert head[3] == 0  # FLG: no FNAME
    assert head[4:8] == b"\0\0\0\0"  # MTIME = 0


def test_failed_producer_leaves_no_file(tmp_path):
    def produce(out):
        out.write(b"x" * (3 << 20))
        raise InputError("boom")

    with pytest.raises(InputError, match="boom"):
        write_layer_blob(produce, Compression.GZIP, None, tmp_path)
    assert list(tmp_path.iterdir()) == []


_name_parts = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters="/\0"), min_size=1,
                 max_size=60)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    parts=st.lists(_name_parts, min_size=1, max_size=3),
    type_=st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
                           tarfile.BLKTYPE, tarfile.FIFOTYPE]),
    mode=st.integers(0, 0o7777), uid=st.integers(0, 8**8), gid=st.integers(0, 8**8),
    size=st.integers(0, 8**12), mtime=st.integers(0, 8**12), link=st.text(max_size=120),
    dev=st.integers(0, 8**8),
)
def test_fast_header_is_byte_identical_to_tarfile(parts, type_, mode, uid, gid, size, mtime, link, dev):
    ti = tarfile.TarInfo("/".join(parts))
    ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = type_, mode, uid, gid, mtime
    ti.size = size if type_ == tarfile.REGTYPE else 0
    ti.uname = ti.gname = ""
    if type_ in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        ti.linkname = link
    ti.devmajor = ti.devminor = dev
    fast = _ustar(ti)
    if fast is not None:
        assert fast == ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _reference_key(change):  # the canonical order as layer.md states it: component by component
    def enc(name: str) -> bytes:
        return name.encode("utf-8", "surrogateescape")

    if isinstance(change, Opaque):
        parts = change.path.split("/") if change.path else []
        return (*((2, enc(p)) for p in parts), (0, b""))
    parts = change.path.split("/")
    return (*((2, enc(p)) for p in parts[:-1]), (1 if isinstance(change, Whiteout) else 2, enc(parts[-1])))


_NAME = st.lists(st.sampled_from(["a", "b", "-", ".", "~", " ", "é", "\udcff", "\u00ff", "z0"]),
                 min_size=1, max_size=4).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["entry", "whiteout", "opaque"]),
                          st.lists(_NAME, min_size=0, max_size=4)), min_size=2, max_size=30))
def test_sort_key_orders_as_the_component_by_component_definition(items):
    from builder.layer.order import sort_key

    changes: list[Change] = []
    for kind, parts in items:
        path = "/".join(parts)
        if kind == "opaque":
            changes.append(Opaque(path))
        elif path:
            changes.append(Whiteout(path) if kind == "whiteout" else Entry(path, Kind.DIR, 0o755))
    assert sorted(changes, key=sort_key) == sorted(changes, key=_reference_key)


def test_zstd_bytes_do_not_depend_on_the_worker_count(monkeypatch):
    """The layer digest must not depend on the machine's core count (compress.py picks cores - 1)."""
    import os

    from builder.layer.compress import compressor

    data = (os.urandom(1 << 20) + b"layer" * 400_000) * 6  # several zstd jobs

    def blob(cores: int) -> bytes:
        monkeypatch.setattr(os, "cpu_count", lambda: cores)
        out = io.BytesIO()
        w = compressor(Compression.ZSTD, out)
        for i in range(0, len(data), 1 << 20):
            w.write(data[i:i + (1 << 20)])
        w.close()
        return out.getvalue()

    one = blob(2)
    assert blob(3) == one and blob(8) == one and zstandard.ZstdDecompressor().decompressobj().decompress(one) == data


def test_fast_header_checksum_at_its_largest():
    """The adler32 shortcut for the checksum holds while the byte sum stays below 65521: the
    largest header it is used for (100-byte names and links of DEL, every number all 7s)."""
    for type_ in (tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.REGTYPE):
        ti = tarfile.TarInfo("\x7f" * 100)
        ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = type_, 0o7777, 8**7 - 1, 8**7 - 1, 8**11 - 1
        ti.uname = ti.gname = ""
        ti.size = 8**11 - 1 if type_ == tarfile.REGTYPE else 0
        ti.linkname = "\x7f" * 100 if type_ == tarfile.SYMTYPE else ""
        ti.devmajor = ti.devminor = 8**7 - 1
        fast = _ustar(ti)
        assert fast is not None and fast == ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
