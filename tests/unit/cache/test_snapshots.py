"""The snapshot store: layers extracted once in overlay form, used only when complete, safe to share."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from builder.cache import snapshots as snapshots_module
from builder.cache.snapshots import MARKER, SnapshotStore
from builder.errors import IntegrityError
from tests.unit.fs.test_apply import blob_of, ent, layer, wh

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts (0/0 devices) and trusted.* xattrs need root")


def store(tmp_path: Path) -> SnapshotStore:
    return SnapshotStore(tmp_path / "snapshots", "trusted" if os.geteuid() == 0 else "user")


@needs_root
def test_a_layer_becomes_an_overlay_lower_directory(tmp_path: Path) -> None:
    blob = blob_of(tmp_path, layer(ent("etc", "dir"), ent("etc/a", data="a"), wh("etc/.wh.gone"),
                                   ent("var", "dir"), wh("var/.wh..wh..opq"), ent("var/new", data="n")))
    with store(tmp_path).using() as session:
        snap = session.get(blob)
    assert not snap.unsafe
    st = os.lstat(snap.path / "etc/gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(snap.path / "var", "trusted.overlay.opaque") == b"y"
    assert (snap.path / "etc/a").read_text() == "a" and (snap.path / "var/new").read_text() == "n"
    assert not list(snap.path.glob("**/.wh.*"))


def test_a_second_session_reuses_the_snapshot(tmp_path: Path) -> None:
    blob = blob_of(tmp_path, layer(ent("f", data="1")))
    s = store(tmp_path)
    with s.using() as first:
        path = first.get(blob).path
        inode = os.lstat(path / "f").st_ino
        assert first.extracted == 1
    snapshots_module._checked.clear()  # a later build: it verifies the tree, and uses it
    with s.using() as second:
        assert second.get(blob).path == path and second.extracted == 0
    assert os.lstat(path / "f").st_ino == inode


@pytest.mark.parametrize("damage", ["no marker", "bad marker", "other format", "no tree", "a file rewritten",
                                    "a file added", "a file removed", "a mode changed"])
def test_an_incomplete_or_damaged_snapshot_is_rebuilt(tmp_path: Path, damage: str) -> None:
    blob = blob_of(tmp_path, layer(ent("f", data="1")))
    s = store(tmp_path)
    with s.using() as session:
        snap = session.get(blob)
    marker = snap.path.parent / MARKER
    if damage == "no marker":
        marker.unlink()
    elif damage == "bad marker":
        marker.write_text("{not json")
    elif damage == "other format":
        marker.write_text(marker.read_text().replace('"format": 2', '"format": 1'))
    elif damage == "no tree":
        os.rename(snap.path, snap.path.parent / "moved")
    elif damage == "a file rewritten":  # same size, same mtime: only its ctime tells
        st = os.stat(snap.path / "f")
        (snap.path / "f").write_text("2")
        os.utime(snap.path / "f", ns=(st.st_atime_ns, st.st_mtime_ns))
    elif damage == "a file added":
        (snap.path / "extra").write_text("")
    elif damage == "a file removed":
        (snap.path / "f").unlink()
    else:
        (snap.path / "f").chmod(0o600)
    (snap.path.parent / "planted").write_text("")  # whatever was there goes with it
    snapshots_module._checked.clear()  # as a later build would: it walks the tree once
    with s.using() as session:
        again = session.get(blob)
        assert session.extracted == 1
    assert (again.path / "f").read_text() == "1" and not (again.path.parent / "planted").exists()


def test_a_build_killed_while_extracting_leaves_nothing_a_later_build_uses(tmp_path: Path) -> None:
    """SIGKILL in the middle of the extraction (after some MB): the next session rebuilds the snapshot,
    and removes what the killed one left."""
    big = [ent(f"d/f{i}", data=os.urandom(256 * 1024)) for i in range(40)]
    blob = blob_of(tmp_path, layer(ent("d", "dir"), *big))
    script = textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        from builder.cache.snapshots import SnapshotStore
        from builder.image import LayerBlob
        from builder.oci.descriptor import Descriptor
        from builder.oci.digest import Digest
        from builder.oci.mediatypes import MediaType
        blob = LayerBlob(Descriptor(MediaType.OCI_LAYER_GZIP, Digest.parse({str(blob.digest)!r}),
                                    {blob.descriptor.size}), Digest.parse({str(blob.diff_id)!r}), Path({str(blob.path)!r}))
        seen = [0]
        def progress(n):
            seen[0] += n
            if seen[0] > 4 << 20:
                os.kill(os.getpid(), signal.SIGKILL)
        with SnapshotStore(Path({str(tmp_path / "snapshots")!r}), {store(tmp_path).flavor!r}).using() as s:
            s.get(blob, progress)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == -9, done.stderr
    root = store(tmp_path).root
    leftovers = list(root.glob(".tmp-*"))
    assert leftovers, "the kill came after the extraction"  # the test killed it in the middle
    assert not (root / blob.diff_id.hex).exists()
    with store(tmp_path).using() as session:
        snap = session.get(blob)
        assert session.extracted == 1
    assert len(list((snap.path / "d").iterdir())) == 40 and not list(root.glob(".tmp-*"))


def test_a_corrupt_blob_makes_no_snapshot(tmp_path: Path) -> None:
    blob = blob_of(tmp_path, layer(*(ent(f"f{i}", data=os.urandom(3000)) for i in range(10))))
    data = bytearray(blob.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.path.write_bytes(bytes(data))
    s = store(tmp_path)
    with s.using() as session, pytest.raises(IntegrityError):
        session.get(blob)
    assert not list(s.root.iterdir()) or all(p.suffix == ".lock" for p in s.root.iterdir())


def test_what_overlayfs_would_misread_is_marked_unsafe(tmp_path: Path) -> None:
    implicit = blob_of(tmp_path, layer(ent("usr/bin/tool", data="t")))  # no usr/ or usr/bin/ entries
    listed = blob_of(tmp_path, layer(ent("usr", "dir"), ent("usr/bin", "dir"), ent("usr/bin/tool", data="t")))
    with store(tmp_path).using() as session:
        assert "does not list directory '/usr'" in session.get(implicit).unsafe
        assert session.get(listed).unsafe == ""
    if os.geteuid() == 0:
        device = blob_of(tmp_path, layer(ent("dev", "dir"), ent("dev/zero0", "chr", dev=(0, 0))))
        with store(tmp_path).using() as session:
            assert "0/0 character device" in session.get(device).unsafe


def test_prune_spares_snapshots_in_use_and_those_it_is_told_to_keep(tmp_path: Path) -> None:
    a = blob_of(tmp_path, layer(ent("a", data="a")))
    b = blob_of(tmp_path, layer(ent("b", data="b")))
    c = blob_of(tmp_path, layer(ent("c", data="c")))
    s = store(tmp_path)
    with s.using() as session:
        for blob in (a, b, c):
            session.get(blob)
    with s.using() as busy:
        busy.get(a)
        removed, freed = s.prune(lambda hex_, used: hex_ != b.diff_id.hex)
        assert removed == 1 and freed > 0  # c: a is in use, b is kept
    assert sorted(p.name for p in s.root.iterdir() if not p.name.endswith(".lock")) == sorted(
        [a.diff_id.hex, b.diff_id.hex])
    assert s.prune(lambda hex_, used: time.time() - used < 3600)[0] == 2  # both were used just now
    assert s.usage() == (0, 0)


def test_two_builds_that_need_one_snapshot_extract_it_once(tmp_path: Path) -> None:
    blob = blob_of(tmp_path, layer(ent("d", "dir"), *(ent(f"d/f{i}", data=os.urandom(64 * 1024)) for i in range(60))))
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from builder.cache.snapshots import SnapshotStore
        from builder.image import LayerBlob
        from builder.oci.descriptor import Descriptor
        from builder.oci.digest import Digest
        from builder.oci.mediatypes import MediaType
        blob = LayerBlob(Descriptor(MediaType.OCI_LAYER_GZIP, Digest.parse({str(blob.digest)!r}),
                                    {blob.descriptor.size}), Digest.parse({str(blob.diff_id)!r}), Path({str(blob.path)!r}))
        while time.time() < {time.time() + 1.5}:
            pass  # both start together
        with SnapshotStore(Path({str(tmp_path / "snapshots")!r}), {store(tmp_path).flavor!r}).using() as s:
            snap = s.get(blob)
            print(s.extracted, len(list((snap.path / "d").iterdir())))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    answers = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(a[0] for a in answers) == ["0", "1"] and all(a[1] == "60" for a in answers), answers
