"""Applying layers onto a directory: fidelity, whiteout semantics, and hostile layers that must stay inside root.

Hostile layers run against a real tree: a sentinel directory beside ``root`` is snapshotted
(every path, type, mode, owner, size, content digest, link target, mtime, link count) before
and after, and must not change. Absolute symlink targets in the table point at that sentinel's
real path, so an implementation that followed them would be caught, not write to the host's /etc.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import tempfile
import traceback
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.errors import InputError, IntegrityError
from builder.fs.apply import apply_blob, apply_layer, read_in_root, unpack_layers
from builder.image import LayerBlob
from builder.oci.descriptor import Descriptor
from builder.oci.digest import Digest
from builder.oci.mediatypes import MediaType

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (owners, device nodes)")

Entry = tuple[tarfile.TarInfo, bytes | None]


# --------------------------------------------------------------------------------------------
# helpers


def ent(name: str, kind: str = "file", data: bytes | str = b"", *, mode: int | None = None, uid: int = 0,
        gid: int = 0, target: str = "", mtime: float = 0, dev: tuple[int, int] = (0, 0),
        xattrs: dict[str, str] | None = None) -> Entry:
    """One tar member; kind: file, dir, symlink, hardlink, fifo, chr, blk."""
    ti = tarfile.TarInfo(name)
    ti.uid, ti.gid, ti.mtime, ti.uname, ti.gname = uid, gid, mtime, "", ""
    payload = None
    types = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
             "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE}
    ti.type = types[kind]
    ti.mode = mode if mode is not None else {"dir": 0o755, "symlink": 0o777}.get(kind, 0o644)
    if kind == "file":
        payload = data.encode() if isinstance(data, str) else data
        ti.size = len(payload)
    ti.linkname = target
    ti.devmajor, ti.devminor = dev
    if xattrs:
        ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
    return ti, payload


def wh(name: str) -> Entry:
    return ent(name)


def layer(*entries: Entry) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for ti, payload in entries:
            tar.addfile(ti, io.BytesIO(payload) if payload is not None else None)
    return buf.getvalue()


def apply(root: Path, *entries: Entry) -> None:
    apply_layer(root, io.BytesIO(layer(*entries)), label="test")


def snapshot(top: Path, skip: Path | None = None) -> dict[str, tuple[Any, ...]]:
    """Everything about a tree, without following any symlink (``skip``: a subtree left out)."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        if skip is not None and Path(dirpath) == skip:
            dirnames[:] = []
            continue
        for name in [*dirnames, *filenames, "."]:
            p = Path(dirpath, name)
            if p == skip:
                continue
            s = os.lstat(p)
            extra: Any = None
            if stat.S_ISLNK(s.st_mode):
                extra = os.readlink(p)
            elif stat.S_ISREG(s.st_mode):
                extra = hashlib.sha256(p.read_bytes()).hexdigest()
            out[os.path.relpath(p, top)] = (s.st_mode, s.st_uid, s.st_gid, s.st_size, s.st_nlink, s.st_mtime_ns,
                                            s.st_ino, extra)
    return out


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """What a layer author sees: path -> (type, mode, content or target) for the whole root."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath, name)
            s = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISDIR(s.st_mode):
                out[rel] = ("dir", stat.S_IMODE(s.st_mode))
            elif stat.S_ISLNK(s.st_mode):
                out[rel] = ("symlink", os.readlink(p))
            elif not stat.S_ISREG(s.st_mode):
                out[rel] = ("special", stat.S_IFMT(s.st_mode))
            else:
                out[rel] = ("file", stat.S_IMODE(s.st_mode), p.read_bytes())
    return out


def blob_of(tmp_path: Path, tar: bytes, compression: str = "gzip") -> LayerBlob:
    if compression == "gzip":
        data, mt = gzip.compress(tar, mtime=0), MediaType.OCI_LAYER_GZIP
    elif compression == "zstd":
        data, mt = zstandard.ZstdCompressor().compress(tar), MediaType.OCI_LAYER_ZSTD
    else:
        data, mt = tar, MediaType.OCI_LAYER
    digest = Digest.of(data)
    path = tmp_path / f"blob-{digest.hex}"
    path.write_bytes(data)
    return LayerBlob(Descriptor(mt, digest, len(data)), Digest.of(tar), path)


def xattrs_supported(path: Path, name: str = "user.pybuild-probe") -> bool:
    probe = path / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, name, b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


# --------------------------------------------------------------------------------------------
# fidelity


@ROOT_ONLY
def test_every_kind_of_entry_is_applied_with_its_metadata(root: Path) -> None:
    apply(
        root,
        ent("bin", "dir", mtime=1000),
        ent("bin/tool", data="#!/bin/sh\n", mode=0o4755, uid=1000, gid=1001, mtime=1234567890),
        ent("bin/link", "hardlink", target="bin/tool"),
        ent("bin/rel", "symlink", target="tool", mtime=42),
        ent("bin/abs", "symlink", target="/etc/passwd"),
        ent("bin/dangling", "symlink", target="/nonexistent"),
        ent("dev", "dir", mode=0o700),
        ent("dev/null", "chr", mode=0o666, dev=(1, 3)),
        ent("dev/loop0", "blk", mode=0o660, gid=6, dev=(7, 0)),
        ent("dev/pipe", "fifo", mode=0o620),
        ent("shared", "dir", mode=0o2775, uid=1000, gid=1000),
        ent("tmp", "dir", mode=0o1777),
        ent("/abs/file", data="leading slash dropped"),  # missing parent made 0755
    )
    tool = os.lstat(root / "bin/tool")
    assert (stat.S_IMODE(tool.st_mode), tool.st_uid, tool.st_gid, tool.st_mtime) == (0o4755, 1000, 1001, 1234567890)
    assert (root / "bin/tool").read_text() == "#!/bin/sh\n"
    link = os.lstat(root / "bin/link")
    assert (link.st_ino, link.st_nlink) == (tool.st_ino, 2)
    assert os.readlink(root / "bin/rel") == "tool" and os.lstat(root / "bin/rel").st_mtime == 42
    assert os.readlink(root / "bin/abs") == "/etc/passwd"
    assert os.readlink(root / "bin/dangling") == "/nonexistent"
    assert os.lstat(root / "bin").st_mtime == 1000  # set after its children were written
    null = os.lstat(root / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3) and stat.S_IMODE(null.st_mode) == 0o666
    loop = os.lstat(root / "dev/loop0")
    assert stat.S_ISBLK(loop.st_mode) and loop.st_rdev == os.makedev(7, 0) and loop.st_gid == 6
    assert stat.S_ISFIFO(os.lstat(root / "dev/pipe").st_mode)
    assert stat.S_IMODE(os.lstat(root / "dev").st_mode) == 0o700
    shared = os.lstat(root / "shared")
    assert (stat.S_IMODE(shared.st_mode), shared.st_uid) == (0o2775, 1000)
    assert stat.S_IMODE(os.lstat(root / "tmp").st_mode) == 0o1777
    assert (root / "abs/file").read_text() == "leading slash dropped"
    assert stat.S_IMODE(os.lstat(root / "abs").st_mode) == 0o755


def test_xattrs_are_set_and_host_artefacts_dropped(root: Path) -> None:
    if not xattrs_supported(root):
        pytest.skip("no user xattrs on this filesystem")
    apply(root, ent("f", xattrs={"user.color": "blue", "user.overlay.opaque": "y", "security.selinux": "x"}),
          ent("d", "dir", xattrs={"user.kind": "dir"}))
    assert os.getxattr(root / "f", "user.color") == b"blue"
    assert "user.overlay.opaque" not in os.listxattr(root / "f")
    assert "security.selinux" not in os.listxattr(root / "f") or os.getxattr(root / "f", "security.selinux") != b"x"
    assert os.getxattr(root / "d", "user.kind") == b"dir"


def test_binary_xattr_values_survive(root: Path) -> None:
    if not xattrs_supported(root):
        pytest.skip("no user xattrs on this filesystem")
    value = b"\x01\x00\xff\xfe"
    ti, payload = ent("f")
    ti.pax_headers = {"SCHILY.xattr.user.bin": value.decode("utf-8", "surrogateescape")}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, errors="surrogateescape") as tar:
        tar.addfile(ti, io.BytesIO(payload or b""))
    apply_layer(root, io.BytesIO(buf.getvalue()))
    assert os.getxattr(root / "f", "user.bin") == value


def test_dir_over_dir_updates_attributes_and_keeps_children(root: Path) -> None:
    apply(root, ent("d", "dir", mode=0o755), ent("d/keep", data="x"))
    apply(root, ent("d", "dir", mode=0o700, mtime=5))
    assert (root / "d/keep").read_text() == "x"
    assert stat.S_IMODE(os.lstat(root / "d").st_mode) == 0o700 and os.lstat(root / "d").st_mtime == 5


def test_file_content_is_replaced_not_written_through(root: Path) -> None:
    apply(root, ent("f", data="old"), ent("h", "hardlink", target="f"))
    apply(root, ent("f", data="new"))
    assert (root / "f").read_text() == "new"
    assert (root / "h").read_text() == "old"  # unlink then create: the other link keeps the old inode


def test_hardlink_to_a_lower_layer_file(root: Path) -> None:
    apply(root, ent("lib/a", data="shared"))
    apply(root, ent("lib/b", "hardlink", target="lib/a"))
    assert os.lstat(root / "lib/b").st_ino == os.lstat(root / "lib/a").st_ino


def test_parent_symlinks_resolve_inside_root(root: Path) -> None:
    apply(root, ent("usr/lib64", "dir"), ent("lib", "symlink", target="usr/lib64"),
          ent("abs", "symlink", target="/usr/lib64"))
    apply(root, ent("lib/x", data="1"), ent("abs/y", data="2"))
    assert (root / "usr/lib64/x").read_text() == "1" and (root / "usr/lib64/y").read_text() == "2"
    assert os.path.islink(root / "lib")


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_apply_blob_and_unpack_layers(tmp_path: Path, compression: str) -> None:
    lower = blob_of(tmp_path, layer(ent("etc", "dir"), ent("etc/a", data="a"), ent("etc/b", data="b")), compression)
    upper = blob_of(tmp_path, layer(ent("etc", "dir"), wh("etc/.wh.a"), ent("etc/c", data="c")), compression)
    unpack_layers(tmp_path / "new" / "root", [lower, upper])
    assert sorted(os.listdir(tmp_path / "new/root/etc")) == ["b", "c"]


def test_apply_blob_refuses_a_corrupted_blob(tmp_path: Path, root: Path) -> None:
    blob = blob_of(tmp_path, layer(*(ent(f"f{i}", data=os.urandom(2000)) for i in range(20))))
    data = bytearray(blob.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="does not match"):
        apply_blob(root, blob)


def test_apply_blob_hashes_trailing_bytes(tmp_path: Path, root: Path) -> None:
    blob = blob_of(tmp_path, layer(ent("f", data="x")), "none")
    with open(blob.path, "ab") as f:
        f.write(b"\0" * 4096)  # still a valid tar, but not the blob the descriptor names
    with pytest.raises(IntegrityError):
        apply_blob(root, blob)


def test_a_truncated_stream_is_an_input_error(root: Path) -> None:
    data = layer(ent("f", data=b"x" * 5000))
    with pytest.raises(InputError, match="test"):
        apply_layer(root, io.BytesIO(data[:1024]), label="test")


# --------------------------------------------------------------------------------------------
# whiteouts


def test_whiteouts_delete_lower_paths(root: Path) -> None:
    apply(root, ent("a", "dir"), ent("a/b", "dir"), ent("a/b/c", data="c"), ent("a/d", data="d"), ent("e", data="e"))
    apply(root, ent("a", "dir"), wh("a/.wh.b"), wh(".wh.e"), wh(".wh.never-existed"), wh("missing/dir/.wh.x"))
    assert tree(root) == {"a": ("dir", 0o755), "a/d": ("file", 0o644, b"d")}
    assert not (root / "missing").exists()  # a whiteout creates no parents


def test_whiteout_does_not_delete_what_the_same_layer_added(root: Path) -> None:
    apply(root, ent("x", data="lower"))
    apply(root, ent("x", data="upper"), wh(".wh.x"))
    assert (root / "x").read_text() == "upper"


def test_opaque_whiteout_hides_lower_children_only(root: Path) -> None:
    apply(root, ent("d", "dir"), ent("d/old", data="o"), ent("d/sub", "dir"), ent("d/sub/deep", data="x"),
          ent("other", data="kept"))
    # the marker after same-layer children (allowed: consumers must accept any order)
    apply(root, ent("d", "dir"), ent("d/new", data="n"), ent("d/sub", "dir"), ent("d/sub/fresh", data="f"),
          wh("d/.wh..wh..opq"))
    assert tree(root) == {
        "d": ("dir", 0o755), "d/new": ("file", 0o644, b"n"), "d/sub": ("dir", 0o755),
        "d/sub/fresh": ("file", 0o644, b"f"), "other": ("file", 0o644, b"kept"),
    }


def test_opaque_whiteout_before_children(root: Path) -> None:
    apply(root, ent("d", "dir"), ent("d/old", data="o"))
    apply(root, ent("d", "dir"), wh("d/.wh..wh..opq"), ent("d/new", data="n"))
    assert sorted(os.listdir(root / "d")) == ["new"]


@pytest.mark.parametrize(
    ("lower", "upper", "expected"),
    [
        pytest.param([ent("p", "dir"), ent("p/c", data="c")], [ent("p", data="file")], {"p": ("file", 0o644, b"file")},
                     id="dir-to-file"),
        pytest.param([ent("p", data="file")], [ent("p", "dir"), ent("p/c", data="c")],
                     {"p": ("dir", 0o755), "p/c": ("file", 0o644, b"c")}, id="file-to-dir"),
        pytest.param([ent("t", "dir"), ent("t/x", data="x"), ent("p", "symlink", target="t")],
                     [ent("p", "dir"), ent("p/c", data="c")],
                     {"t": ("dir", 0o755), "t/x": ("file", 0o644, b"x"), "p": ("dir", 0o755),
                      "p/c": ("file", 0o644, b"c")}, id="symlink-to-dir"),
        pytest.param([ent("p", "dir"), ent("p/c", data="c")], [ent("p", "symlink", target="elsewhere")],
                     {"p": ("symlink", "elsewhere")}, id="dir-to-symlink"),
        pytest.param([ent("p", "fifo")], [ent("p", "symlink", target="x")], {"p": ("symlink", "x")},
                     id="fifo-to-symlink"),
    ],
)
def test_type_changes_replace_the_old_path(root: Path, lower: list[Entry], upper: list[Entry],
                                           expected: dict[str, Any]) -> None:
    apply(root, *lower)
    apply(root, *upper)
    assert tree(root) == expected


# --------------------------------------------------------------------------------------------
# hostile layers


def hostile_cases(outside: str) -> list[Any]:
    """(id, entries, expected): expected is "error" (InputError) or a path under root that must exist.

    ``outside`` is the sentinel's real absolute path; ``../outside`` reaches it from root too.
    """
    rel = outside.lstrip("/")
    chain = [ent(f"l{i}", "symlink", target=f"l{i + 1}") for i in range(45)]
    return [
        ("dotdot", [ent("../outside/evil", data="x")], "error"),
        ("dotdot-deep", [ent("a/../../outside/evil", data="x")], "error"),
        ("dotdot-dir", [ent("../outside/newdir", "dir")], "error"),
        ("absolute-name", [ent(f"{outside}/evil", data="x")], f"{rel}/evil"),
        ("abs-symlink-parent", [ent("a", "symlink", target=outside), ent("a/evil", data="x")], f"{rel}/evil"),
        ("abs-symlink-file-over", [ent("a", "symlink", target=f"{outside}/file"), ent("a", data="x")], "a"),
        ("abs-symlink-etc", [ent("a", "symlink", target="/etc"), ent("a/pybuild-escape-test", data="x")],
         "etc/pybuild-escape-test"),
        ("rel-symlink-parent", [ent("a", "symlink", target="../outside"), ent("a/evil", data="x")], "outside/evil"),
        ("rel-symlink-far", [ent("a", "symlink", target="../../../../../.."), ent(f"a/{rel}/evil", data="x")],
         f"{rel}/evil"),
        ("root-dotdot-symlink", [ent("a", "symlink", target="/../.."), ent("a/outside/evil", data="x")],
         "outside/evil"),
        ("symlink-chain", [ent("a", "symlink", target="b"), ent("b", "symlink", target="c/d"),
                           ent("c", "symlink", target="../.."), ent("a/evil", data="x")], "d/evil"),
        ("symlink-loop", [ent("a", "symlink", target="b"), ent("b", "symlink", target="a"),
                          ent("a/evil", data="x")], "error"),
        ("symlink-self-loop", [ent("a", "symlink", target="a"), ent("a/evil", data="x")], "error"),
        ("symlink-long-chain", [*chain, ent("l45", "dir"), ent("l0/evil", data="x")], "error"),
        ("mkdir-p-through-symlink", [ent("a", "symlink", target="../outside"),
                                     ent("a/new/deep/file", data="x")], "outside/new/deep/file"),
        ("dir-replaced-by-symlink", [ent("d", "dir", mtime=7), ent("d/x", data="x"),
                                     ent("d", "symlink", target=outside), ent("d/y", data="y")], f"{rel}/y"),
        ("dir-replaced-by-rel-symlink", [ent("d", "dir", mtime=7), ent("d/sub", "dir", mtime=7),
                                         ent("d", "symlink", target="../outside")], "d"),
        ("device-through-symlink", [ent("a", "symlink", target=outside), ent("a/null", "fifo")], f"{rel}/null"),
        ("hardlink-dotdot", [ent("h", "hardlink", target="../outside/file")], "error"),
        ("hardlink-etc-shadow", [ent("h", "hardlink", target="/etc/shadow")], "error"),
        ("hardlink-abs-sentinel", [ent("h", "hardlink", target=f"{outside}/file")], "error"),
        ("hardlink-through-symlink", [ent("a", "symlink", target=outside), ent("h", "hardlink", target="a/file")],
         "error"),
        ("hardlink-through-rel-symlink", [ent("a", "symlink", target="../outside"),
                                          ent("h", "hardlink", target="a/file")], "error"),
        ("hardlink-to-symlink-outside", [ent("s", "symlink", target=f"{outside}/file"),
                                         ent("h", "hardlink", target="s"), ent("h", data="overwrite")], "h"),
        ("hardlink-into-symlinked-dir", [ent("t", data="t"), ent("a", "symlink", target=outside),
                                         ent("a/h", "hardlink", target="t")], f"{rel}/h"),
        ("hardlink-to-dir", [ent("d", "dir"), ent("h", "hardlink", target="d")], "error"),
        ("hardlink-missing", [ent("h", "hardlink", target="nope")], "error"),
        ("whiteout-through-symlink", [ent("a", "symlink", target=outside), wh("a/.wh.file")], "a"),
        ("whiteout-through-rel-symlink", [ent("a", "symlink", target="../outside"), wh("a/.wh.file")], "a"),
        ("whiteout-etc-symlink", [ent("a", "symlink", target="/etc"), wh("a/.wh.passwd")], "a"),
        ("opaque-through-symlink", [ent("a", "symlink", target=outside), wh("a/.wh..wh..opq")], "a"),
        ("opaque-through-rel-symlink", [ent("a", "symlink", target="../outside"), wh("a/.wh..wh..opq")], "a"),
        ("whiteout-dotdot", [wh("../../.wh.x")], "error"),
        ("whiteout-dotdot-inner", [wh("a/../../.wh.outside")], "error"),
        ("whiteout-of-dotdot", [wh(".wh...")], "error"),
        ("whiteout-of-dot", [wh("a/.wh..")], "error"),
        ("bare-whiteout", [wh(".wh.")], "error"),
        ("whiteout-with-content", [ent(".wh.x", data="not empty")], "error"),
        ("whiteout-as-dir", [ent(".wh.x", "dir")], "error"),
        ("whiteout-as-symlink", [ent(".wh.x", "symlink", target=outside)], "error"),
        ("whiteout-named-parent", [ent(".wh.x/y", data="y")], "error"),
        ("root-as-file", [ent("./", data="x")], "error"),
        ("root-as-symlink", [ent(".", "symlink", target=outside)], "error"),
        ("file-as-parent", [ent("f", data="x"), ent("f/y", data="y")], "error"),
        ("symlink-to-file-as-parent", [ent("f", data="x"), ent("s", "symlink", target="f"), ent("s/y", data="y")],
         "error"),
    ]


def host_stat(path: str) -> tuple[int, ...]:
    s = os.lstat(path)
    return s.st_ino, s.st_mode, s.st_uid, s.st_size, s.st_nlink, s.st_mtime_ns


HOSTILE_IDS = [case[0] for case in hostile_cases("/x")]


@pytest.mark.parametrize("case", HOSTILE_IDS)
def test_hostile_layer_stays_inside_root(tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "file").write_text("sentinel")
    (outside / "dir/inner").write_text("inner")
    os.symlink("file", outside / "link")
    os.utime(outside / "dir", ns=(10**9, 10**9))
    root = tmp_path / "root"
    root.mkdir()
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text("root:x:0:0::/:/bin/sh\n")
    host = {p: host_stat(p) for p in ("/etc/passwd", "/etc/shadow", "/etc") if os.path.exists(p)}
    before = snapshot(tmp_path, skip=root)

    _, entries, expected = next(c for c in hostile_cases(str(outside)) if c[0] == case)
    if expected == "error":
        with pytest.raises(InputError, match=r"test: entry "):
            apply(root, *entries)
    else:
        apply(root, *entries)
        assert os.path.lexists(root / expected), sorted(snapshot(root))

    assert snapshot(tmp_path, skip=root) == before
    assert {p: host_stat(p) for p in host} == host
    assert not os.path.lexists("/etc/pybuild-escape-test")


def test_a_lower_layers_symlink_is_no_way_out(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "file").write_text("sentinel")
    root = tmp_path / "root"
    root.mkdir()
    before = snapshot(outside)
    apply(root, ent("abs", "symlink", target=str(outside)), ent("rel", "symlink", target="../outside"))
    apply(root, ent("abs/file", data="x"), ent("rel/file", data="y"), wh("abs/.wh.other"), ent("abs/d", "dir"))
    apply(root, ent("h", "hardlink", target="rel/file"), wh("rel/.wh.file"), wh("abs/.wh..wh..opq"))
    assert snapshot(outside) == before
    assert os.path.islink(root / "abs") and os.path.islink(root / "rel")
    assert (root / "h").read_text() == "y"  # linked to root/outside/file, which the whiteout then removed
    assert os.listdir(root / "outside") == [] and os.listdir(root / str(outside).lstrip("/")) == []


def test_hostile_error_message_is_one_line(root: Path) -> None:
    with pytest.raises(InputError) as info:
        apply(root, ent("a/../../x", data="x"))
    assert str(info.value) == "test: entry 'a/../../x': '..' climbs above the root"


# --------------------------------------------------------------------------------------------
# reading inside the root


def test_read_in_root_resolves_symlinks_inside(tmp_path: Path, root: Path) -> None:
    apply(root, ent("etc", "dir"), ent("etc/shadow", data="image shadow"),
          ent("etc/passwd", "symlink", target="/etc/shadow"), ent("etc/rel", "symlink", target="../../../etc/shadow"),
          ent("etc/loop", "symlink", target="loop"), ent("etc/fifo", "fifo"), ent("etc/dir", "dir"))
    assert read_in_root(root, "etc/passwd") == b"image shadow"
    assert read_in_root(root, "etc/rel") == b"image shadow"
    assert read_in_root(root, "/etc/shadow") == b"image shadow"
    for path in ("etc/loop", "etc/fifo", "etc/dir", "etc/missing", "etc/shadow/x", "", "etc/.."):
        assert read_in_root(root, path) is None, path
    with pytest.raises(InputError, match="larger"):
        read_in_root(root, "etc/shadow", limit=4)


# --------------------------------------------------------------------------------------------
# not root


def unprivileged_apply(root: Path) -> None:
    apply(root, ent("ro", "dir", mode=0o555), ent("ro/f", uid=1000, gid=1000), ent("null", "chr", dev=(1, 3)),
          ent("pipe", "fifo", mode=0o600))
    assert os.lstat(root / "ro/f").st_uid == os.geteuid()  # the owner could not be set: left as is
    assert stat.S_IMODE(os.lstat(root / "ro").st_mode) == 0o755  # u+rwx kept so layers can write into it
    assert not os.path.lexists(root / "null")  # no device node, and nothing else in its place
    assert stat.S_ISFIFO(os.lstat(root / "pipe").st_mode)
    apply(root, ent("ro/g", data="second layer"))


@ROOT_ONLY
def test_unprivileged_apply_skips_owners_and_devices() -> None:
    with tempfile.TemporaryDirectory(prefix="pybuild-apply-") as top:
        os.chmod(top, 0o755)
        target = Path(top, "root")
        target.mkdir()
        os.chown(target, 65534, 65534)
        pid = os.fork()
        if pid == 0:  # the child drops to nobody and never returns into pytest
            code = 1
            try:
                os.setgroups([])
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
                unprivileged_apply(target)
                code = 0
            except BaseException:  # noqa: BLE001  # reported, then the child exits non-zero
                traceback.print_exc()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the unprivileged child failed (traceback on stderr)"


# --------------------------------------------------------------------------------------------
# property: random layers against a model of image-spec whiteout semantics


NAMES = ["a", "b", "c"]
path_st = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
op_st = st.one_of(
    st.tuples(st.just("file"), path_st, st.sampled_from([0o644, 0o600, 0o755]), st.binary(max_size=3)),
    st.tuples(st.just("dir"), path_st, st.sampled_from([0o755, 0o700, 0o750]), st.just(b"")),
    st.tuples(st.just("wh"), path_st, st.just(0), st.just(b"")),
    st.tuples(st.just("opq"), path_st, st.just(0), st.just(b"")),
)
layers_st = st.lists(st.lists(op_st, max_size=6), min_size=1, max_size=4)

Op = tuple[str, str, int, bytes]


def well_formed(ops: list[Op]) -> list[Op]:
    """One layer as a generator SHOULD write it: unique names, parent dirs before children."""
    emitted: dict[str, str] = {}
    out: list[Op] = []
    for kind, path, mode, data in ops:
        parts = path.split("/")
        if kind == "wh":
            parent, name = "/".join(parts[:-1]), f".wh.{parts[-1]}"
        elif kind == "opq":
            parent, name = path, ".wh..wh..opq"
        else:
            parent, name = "/".join(parts[:-1]), parts[-1]
        full = f"{parent}/{name}" if parent else name
        ancestors = ["/".join(parts[:i]) for i in range(1, len(parent.split("/")) + 1)] if parent else []
        if full in emitted or any(emitted.get(a, "dir") != "dir" for a in ancestors):
            continue
        for a in ancestors:
            if a not in emitted:
                emitted[a] = "dir"
                out.append(("dir", a, 0o755, b""))
        emitted[full] = kind
        out.append((kind, path, mode, data))
    return out


def model_apply(state: dict[str, tuple[Any, ...]], ops: list[Op]) -> None:
    """image-spec layer.md: deletions hit lower layers only (applied first), then additions in order."""

    def drop(path: str, keep_self: bool = False) -> None:
        for p in [p for p in state if p.startswith(path + "/") or (p == path and not keep_self)]:
            del state[p]

    for kind, path, _, _ in ops:
        if kind == "wh":
            drop(path)
        elif kind == "opq":
            drop(path, keep_self=True)
    for kind, path, mode, data in ops:
        if kind == "dir":
            if state.get(path, ("",))[0] != "dir":
                drop(path)
            state[path] = ("dir", mode)
        elif kind == "file":
            drop(path)
            state[path] = ("file", mode, data)


def to_entries(ops: list[Op]) -> list[Entry]:
    out = []
    for kind, path, mode, data in ops:
        if kind == "wh":
            head, _, base = path.rpartition("/")
            out.append(wh(f"{head}/.wh.{base}" if head else f".wh.{base}"))
        elif kind == "opq":
            out.append(wh(f"{path}/.wh..wh..opq"))
        else:
            out.append(ent(path, kind, data, mode=mode))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers_st)
def test_random_layers_match_the_whiteout_model(layers: list[list[Op]]) -> None:
    state: dict[str, tuple[Any, ...]] = {}
    with tempfile.TemporaryDirectory(prefix="pybuild-prop-") as top:
        root = Path(top)
        for ops in layers:
            ops = well_formed(ops)
            model_apply(state, ops)
            apply(root, *to_entries(ops))
            assert tree(root) == state, ops


def test_apply_blob_checks_the_diff_id(tmp_path: Path, root: Path) -> None:
    good = blob_of(tmp_path, layer(ent("f", data="x")))
    wrong = LayerBlob(good.descriptor, Digest.of(b"another tar"), good.path)
    with pytest.raises(IntegrityError, match="diff_id"):
        apply_blob(root, wrong)
