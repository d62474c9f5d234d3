"""Copy semantics that users migrating from a Dockerfile expect, each as Docker's COPY and Buildah give it.

Each test builds through the real CLI (in process) and reads the layer the step made.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

from builder.cli import main


def _layer(out: Path, index: int) -> dict[str, tarfile.TarInfo]:
    blobs = out / "blobs" / "sha256"
    idx = json.loads((out / "index.json").read_text())
    manifest = json.loads((blobs / idx["manifests"][0]["digest"].split(":")[1]).read_bytes())
    data = gzip.decompress((blobs / manifest["layers"][index]["digest"].split(":")[1]).read_bytes())
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: m for m in tf}


def _content(out: Path, index: int, name: str) -> bytes:
    blobs = out / "blobs" / "sha256"
    idx = json.loads((out / "index.json").read_text())
    manifest = json.loads((blobs / idx["manifests"][0]["digest"].split(":")[1]).read_bytes())
    data = gzip.decompress((blobs / manifest["layers"][index]["digest"].split(":")[1]).read_bytes())
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        member = tf.extractfile(name)
        assert member is not None
        return member.read()


def _build(tmp_path: Path, recipe: str, *args: str) -> tuple[int, Path]:
    (tmp_path / "pybuild.yaml").write_text(recipe)
    out = tmp_path / "out"
    return main([str(tmp_path / "pybuild.yaml"), "-o", str(out), "-q", *args]), out


def test_a_symlink_source_is_copied_under_its_own_name(tmp_path: Path) -> None:
    """Docker's COPY follows a source that is itself a symlink and stores the target's content under
    the link's name: ``COPY link.txt /dir/`` with ``link.txt -> target.txt`` gives ``/dir/link.txt``."""
    (tmp_path / "target.txt").write_text("content\n")
    os.symlink("target.txt", tmp_path / "link.txt")
    code, out = _build(tmp_path, "version: 1\nsteps:\n  - copy: link.txt\n    to: /dir/\n")
    assert code == 0
    members = _layer(out, 0)
    assert "dir/link.txt" in members and "dir/target.txt" not in members, sorted(members)
    assert members["dir/link.txt"].isreg()
    assert _content(out, 0, "dir/link.txt") == b"content\n"


def test_a_symlink_source_from_a_stage_keeps_its_name(tmp_path: Path) -> None:
    """The same from a stage: ``COPY --from=stage /bin/ls /test/`` with ``ls -> busybox`` is ``/test/ls``."""
    recipe = """\
version: 1
stages:
  tools:
    steps:
      - write: /bin/busybox
        content: "the binary\\n"
        mode: 0o755
      - symlink: /bin/ls
        target: busybox
steps:
  - copy: /bin/ls
    from: tools
    to: /test/
"""
    code, out = _build(tmp_path, recipe)
    assert code == 0
    members = _layer(out, 0)
    assert "test/ls" in members and "test/busybox" not in members, sorted(members)
    assert _content(out, 0, "test/ls") == b"the binary\n"


def test_a_glob_that_matches_nothing_is_fine_when_another_source_matches(tmp_path: Path, capsys) -> None:
    """Docker and Buildah accept ``COPY *.txt *.md /d/`` when only one of the patterns matches;
    only when no source matches at all is it an error."""
    (tmp_path / "a.txt").write_text("a\n")
    code, out = _build(tmp_path, "version: 1\nsteps:\n  - copy: ['*.txt', '*.md']\n    to: /d/\n")
    assert code == 0
    assert "d/a.txt" in _layer(out, 0)
    code, _ = _build(tmp_path, "version: 1\nsteps:\n  - copy: ['*.md', '*.rst']\n    to: /d/\n")
    assert code == 1
    assert "'*.md' (the pattern matched nothing)" in capsys.readouterr().err


def test_a_config_only_image_has_one_empty_layer(tmp_path: Path, oci_check) -> None:
    """The image-spec's manifest schema wants at least one layer; Buildah writes an empty one for an
    image that only sets its config. Its diff_id is the sha256 of an empty tar (two zero blocks,
    padded to a 10 KiB record, as tarfile writes it), computed here, not pinned."""
    code, out = _build(tmp_path, "version: 1\nconfig:\n  cmd: [/bin/true]\n")
    assert code == 0
    blobs = out / "blobs" / "sha256"
    idx = json.loads((out / "index.json").read_text())
    manifest = json.loads((blobs / idx["manifests"][0]["digest"].split(":")[1]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())
    [layer] = manifest["layers"]
    data = gzip.decompress((blobs / layer["digest"].split(":")[1]).read_bytes())
    empty = io.BytesIO()
    tarfile.open(fileobj=empty, mode="w", format=tarfile.PAX_FORMAT).close()
    assert data == empty.getvalue()
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(data).hexdigest()]
    assert [h.get("empty_layer", False) for h in config["history"]] == [False]
    assert _layer(out, 0) == {}
    checked = oci_check(out, strict=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_an_owner_name_takes_its_primary_group_from_passwd(tmp_path: Path) -> None:
    """``owner: lp`` is 4:7 on Debian (lp's primary group is lp, gid 7), as Docker's and Buildah's
    ``COPY --chown=lp``; the same rule as ``config.user: lp``. A bare uid stays ``uid:uid``."""
    (tmp_path / "f.txt").write_text("x\n")
    recipe = """\
version: 1
steps:
  - write: /etc/passwd
    content: "root:x:0:0:root:/root:/bin/sh\\nlp:x:4:7:lp:/var/spool/lpd:/bin/sh\\n"
  - write: /etc/group
    content: "root:x:0:\\nlp:x:7:\\nstaff:x:50:\\n"
  - copy: f.txt
    to: /by-name
    owner: lp
  - copy: f.txt
    to: /by-name-and-group
    owner: lp:staff
  - copy: f.txt
    to: /by-uid
    owner: "4"
"""
    code, out = _build(tmp_path, recipe)
    assert code == 0
    owners = [(m.uid, m.gid) for i, name in [(2, "by-name"), (3, "by-name-and-group"), (4, "by-uid")]
              for m in [_layer(out, i)[name]]]
    assert owners == [(4, 7), (4, 50), (4, 4)]


OWNED_BASE = """\
version: 1
steps:
  - write: /etc/passwd
    content: "root:x:0:0:root:/root:/bin/sh\\napp:x:1000:1000::/home/app:/bin/sh\\n"
  - write: /etc/group
    content: "root:x:0:\\napp:x:1000:\\n"
  - mkdir: /existing
    mode: "0750"
"""


def test_an_owned_copy_owns_the_parents_it_creates_and_leaves_existing_ones(tmp_path: Path) -> None:
    """Docker's COPY --chown (and Kaniko's, Buildah's) create missing parent directories with the
    copy's owner; a directory that is already there keeps its owner and mode, whatever is copied
    into it."""
    (tmp_path / "f.txt").write_text("x\n")
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "g.txt").write_text("g\n")
    recipe = OWNED_BASE + """\
  - copy: f.txt
    to: /new/deep/f.txt
    owner: app
  - copy: tree/
    to: /existing/
    owner: app
"""
    code, out = _build(tmp_path, recipe)
    assert code == 0
    first = _layer(out, 3)
    assert [(first[n].uid, first[n].gid) for n in ("new", "new/deep", "new/deep/f.txt")] == [(1000, 1000)] * 3
    second = _layer(out, 4)
    assert (second["existing/g.txt"].uid, second["existing/g.txt"].gid) == (1000, 1000)
    top = second["existing"]  # re-emitted as it was (a parent of the new file), not re-owned
    assert (top.uid, top.gid, top.mode) == (0, 0, 0o750)


def test_mode_applies_to_what_is_copied_not_to_the_destination_directory(tmp_path: Path) -> None:
    """A directory source's *contents* are copied; the destination directory is not one of them.
    Buildah leaves it alone, so does pybuild: ``mode:`` sets the copied files and directories, an
    existing destination keeps its mode, and a new one gets the source directory's own mode."""
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "f").write_text("f\n")
    os.chmod(tmp_path / "tree", 0o755)
    recipe = OWNED_BASE + """\
  - copy: tree/
    to: /existing/
    mode: "0700"
  - copy: tree/
    to: /fresh/
    mode: "0700"
"""
    code, out = _build(tmp_path, recipe)
    assert code == 0
    into_existing, into_new = _layer(out, 3), _layer(out, 4)
    assert into_existing["existing"].mode == 0o750
    assert into_existing["existing/sub"].mode == 0o700 and into_existing["existing/sub/f"].mode == 0o700
    assert into_new["fresh"].mode == 0o755 and into_new["fresh/sub/f"].mode == 0o700


def test_several_sources_to_a_path_without_a_slash_make_it_a_directory(tmp_path: Path) -> None:
    """``copy: "*.txt"`` with two matches to ``/testdir``: Docker's documentation asks for a
    trailing slash, Buildah writes every match onto one file (all but the last lost) and Kaniko
    refuses. pybuild makes ``/testdir`` a directory holding both, as BuildKit does: nothing a
    source holds is silently dropped, and the trailing slash is implied by the plural."""
    (tmp_path / "a.txt").write_text("a\n")
    (tmp_path / "b.txt").write_text("b\n")
    code, out = _build(tmp_path, 'version: 1\nsteps:\n  - copy: "*.txt"\n    to: /testdir\n')
    assert code == 0
    members = _layer(out, 0)
    assert members["testdir"].isdir() and members["testdir/a.txt"].isreg() and members["testdir/b.txt"].isreg()


def _tar(path: Path, members: list[tuple[str, int, int, int]]) -> None:
    """A tar of (name, type, mode, uid) directories and small files, in the order given."""
    with tarfile.open(path, "w") as tf:
        for name, kind, mode, uid in members:
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.uid, ti.gid = bytes([kind]), mode, uid, uid
            data = b"x\n" if ti.type == tarfile.REGTYPE else b""
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))


def test_a_rootfs_archive_root_entry_sets_its_destination(tmp_path: Path) -> None:
    """``rootfs: x.tar`` with ``to: /t``: the archive's own ``./`` entry (its owner and mode) is the
    destination directory's, as Buildah's ADD applies it; without ``to:`` the root stays the
    image's. The same in one pass (``./`` first) and when ``./`` comes after its content."""
    first = [("./", ord("5"), 0o700, 1234), ("./f", ord("0"), 0o644, 0)]
    _tar(tmp_path / "first.tar", first)
    _tar(tmp_path / "late.tar", [first[1], first[0]])
    _tar(tmp_path / "empty.tar", [])
    recipe = ("version: 1\nsteps:\n  - rootfs: first.tar\n    to: /t\n  - rootfs: late.tar\n    to: /u\n"
              "  - rootfs: empty.tar\n    to: /v\n  - rootfs: first.tar\n")
    code, out = _build(tmp_path, recipe)
    assert code == 0
    for index, dest in [(0, "t"), (1, "u")]:
        members = _layer(out, index)
        assert (members[dest].mode, members[dest].uid) == (0o700, 1234), dest
        assert members[f"{dest}/f"].isreg()
    assert (_layer(out, 2)["v"].mode, _layer(out, 2)["v"].uid) == (0o755, 0)
    assert sorted(_layer(out, 3)) == ["f"]


def test_copy_keeps_xattrs_from_the_context_and_from_a_stage(tmp_path: Path) -> None:
    """Docker's COPY and Buildah keep a file's extended attributes; so does every step here, with one
    policy (builder/fs/xattrs.py): user.* and trusted.* data and file capabilities, never the host's
    SELinux label or overlayfs bookkeeping. An xattr is part of the copy's cache key."""
    import pytest

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "tool").write_text("#!/bin/sh\n")
    try:
        os.setxattr(ctx / "tool", "user.origin", b"context")
    except OSError:
        pytest.skip("this filesystem does not take user.* xattrs")
    os.setxattr(ctx / "tool", "user.overlay.opaque", b"y")  # overlayfs bookkeeping: never kept
    with tarfile.open(ctx / "base.tar", "w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("bin/ping")
        ti.size, ti.mode = 2, 0o755
        ti.pax_headers = {"SCHILY.xattr.user.from": "stage", "SCHILY.xattr.security.selinux": "host_t"}
        tf.addfile(ti, io.BytesIO(b"x\n"))
    recipe = """\
version: 1
stages:
  base:
    steps:
      - rootfs: base.tar
steps:
  - copy: tool
    to: /usr/bin/tool
  - copy: /bin/ping
    from: base
    to: /bin/ping
"""
    meta = tmp_path / "meta.json"
    code, out = _build(ctx, recipe, "--metadata-file", str(meta), "--cache-dir", str(tmp_path / "cache"))
    assert code == 0
    tool = _layer(out, 0)["usr/bin/tool"]
    assert tool.pax_headers.get("SCHILY.xattr.user.origin") == "context"
    assert "SCHILY.xattr.user.overlay.opaque" not in tool.pax_headers
    ping = _layer(out, 1)["bin/ping"]
    assert ping.pax_headers.get("SCHILY.xattr.user.from") == "stage"
    assert not any("selinux" in k for k in ping.pax_headers)
    os.setxattr(ctx / "tool", "user.origin", b"changed")
    code, again = _build(ctx, recipe, "--metadata-file", str(meta), "--cache-dir", str(tmp_path / "cache"))
    assert code == 0 and not json.loads(meta.read_text())["steps"][-2]["cached"]
    assert _layer(again, 0)["usr/bin/tool"].pax_headers.get("SCHILY.xattr.user.origin") == "changed"


def test_an_excluded_directory_is_entered_only_for_an_exception_naming_it(tmp_path: Path) -> None:
    """Docker's classic builder and Buildah skip an excluded directory unless an exception (``!``)
    starts with that directory's literal path: ``[sub, "!*/f"]`` leaves ``sub/f`` out, while
    ``[sub, "!sub/f"]`` brings it back."""
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "sub" / "f").write_text("f\n")
    (tmp_path / "src" / "sub" / "g").write_text("g\n")
    (tmp_path / "src" / "top").write_text("t\n")
    recipe = """\
version: 1
steps:
  - copy: src/
    to: /a/
    exclude: [sub, "!*/f"]
  - copy: src/
    to: /b/
    exclude: [sub, "!sub/f"]
"""
    code, out = _build(tmp_path, recipe)
    assert code == 0
    assert sorted(_layer(out, 0)) == ["a", "a/top"]
    assert sorted(_layer(out, 1)) == ["b", "b/sub", "b/sub/f", "b/top"]
