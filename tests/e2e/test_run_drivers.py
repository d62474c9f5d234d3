"""The overlay and copy run drivers write the same layers: one recipe, built on each, same diff_ids.

Each run step below does one kind of change to what lower layers made, so a difference names the
case: deletions of lower files and directories, a directory replaced by a file and back, a hardlink
to a lower file, a lower file's xattrs carried through a change, setuid files, a no-op ``chmod -R``,
renames of lower files and directories, and a directory deleted and made again. The overlay build
must have used the overlay (its progress says so), and the image must run in runc.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import pybuild_env

from .runtimes import describe

pytestmark = [pytest.mark.tools]

XATTRS = {"SCHILY.xattr.user.note": "kept through copy-up", "SCHILY.xattr.trusted.tag": "t"}

RECIPE = """\
version: 1
tag: drivers
steps:
  - rootfs: rootfs.tar.gz
  - rootfs: data.tar.gz
  - run: rm /data/file
  - run: rm -rf /data/tree
  - run: rm -rf /data/d2 && echo now-a-file > /data/d2
  - run: rm /data/d2 && mkdir /data/d2 && echo back > /data/d2/x
  - run: ln /data/lower /data/linked
  - run: chmod 0600 /data/xattr && echo more >> /data/xattr
  - run: chmod 4755 /data/tool && cp /bin/busybox /data/suid && chmod 4711 /data/suid
  - run: chmod -R a+rX /data/perm
  - run: mv /data/movefile /data/moved && mv /data/movedir /data/moveddir
  - run: rm -rf /data/again && mkdir /data/again && echo fresh > /data/again/new
  - run: mkdir -p /usr/local/bin && echo deep > /usr/local/bin/deep && rm -rf /data/tree2/sub && touch /data/tree2
  - run: rm /data/etc && mkdir -p /data/etc/ssl && echo mine > /data/etc/passwd
  - run: mkfifo /data/fifo && ln -s /data/lower /data/sym && rm /data/sym2 && ln -s elsewhere /data/sym2
config:
  cmd: ["/bin/sh", "-c", "cat /data/d2/x /data/linked /data/again/new /usr/local/bin/deep; ls /data/tree2; stat -c '%a' /data/suid /data/tool"]
"""


def data_tar(rootfs_tar, path: Path) -> Path:
    """The lower layer the run steps change."""
    extra = [
        {"name": "data", "kind": "dir"},
        {"name": "data/file", "data": "gone\n"},
        {"name": "data/tree", "kind": "dir"},
        {"name": "data/tree/a", "data": "a\n"},
        {"name": "data/tree/sub", "kind": "dir"},
        {"name": "data/tree/sub/b", "data": "b\n"},
        {"name": "data/d2", "kind": "dir"},
        {"name": "data/d2/inner", "data": "inner\n"},
        {"name": "data/lower", "data": "linked\n"},
        {"name": "data/xattr", "data": "x\n"},
        {"name": "data/tool", "data": "#!/bin/sh\n", "mode": 0o755},
        {"name": "data/perm", "kind": "dir", "mode": 0o755},
        {"name": "data/perm/r", "data": "r\n", "mode": 0o644},
        {"name": "data/perm/sub", "kind": "dir", "mode": 0o755},
        {"name": "data/perm/sub/s", "data": "s\n", "mode": 0o644},
        {"name": "data/movefile", "data": "m\n"},
        {"name": "data/movedir", "kind": "dir"},
        {"name": "data/movedir/in", "data": "in\n"},
        {"name": "data/again", "kind": "dir"},
        {"name": "data/again/old", "data": "old\n"},
        {"name": "data/tree2", "kind": "dir"},
        {"name": "data/tree2/keep", "data": "keep\n"},
        {"name": "data/tree2/sub", "kind": "dir"},
        {"name": "data/tree2/sub/c", "data": "c\n"},
        {"name": "data/sym2", "kind": "symlink", "target": "lower"},
        {"name": "data/etc", "kind": "symlink", "target": "/etc"},  # replaced by a directory: never read through
    ]
    made = rootfs_tar(path, extra, busybox=False)
    # a lower file with xattrs: re-written with them as PAX records
    with tarfile.open(made) as tf:
        members = [(m, tf.extractfile(m).read() if m.isfile() else None) for m in tf]  # type: ignore[union-attr]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as out:
        for m, data in members:
            if m.name == "data/xattr":
                m.pax_headers = dict(XATTRS)
            out.addfile(m, io.BytesIO(data) if data is not None else None)
    path.write_bytes(gzip.compress(raw.getvalue(), mtime=0))
    return path


def diff_ids(out: Path) -> list[str]:
    blobs = out / "blobs" / "sha256"
    [desc] = json.loads((out / "index.json").read_text())["manifests"]
    manifest = json.loads((blobs / desc["digest"].split(":")[1]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())
    return list(config["rootfs"]["diff_ids"])


def layer_names(out: Path, index: int) -> set[str]:
    blobs = out / "blobs" / "sha256"
    [desc] = json.loads((out / "index.json").read_text())["manifests"]
    manifest = json.loads((blobs / desc["digest"].split(":")[1]).read_bytes())
    with tarfile.open(blobs / manifest["layers"][index]["digest"].split(":")[1]) as tf:
        return set(tf.getnames())


def build_with(pybuild, ctx: Path, out: Path, driver: str, home: Path) -> Any:
    home.mkdir(exist_ok=True)
    return pybuild(ctx / "pybuild.yaml", "-o", out, "--progress", "plain", "--no-attestations",
                   env={"PYBUILD_RUN_DRIVER": driver, "HOME": str(home), "XDG_CACHE_HOME": str(home / "cache")})


def build_both(pybuild, ctx: Path, tmp_path: Path, rootfs_tar, recipe: str, driver: str = "overlay") -> tuple[Any, Any]:
    """``recipe`` (on the busybox root and the data layer) built on the copy driver into ``tmp_path/copy``
    and on ``driver`` (overlay: the kernel's, or fuse-overlayfs) into ``tmp_path/overlay``, each with an
    empty cache."""
    if os.geteuid() != 0:
        pytest.skip("the overlay driver as tested here needs root")
    data_tar(rootfs_tar, ctx / "data.tar.gz")
    (ctx / "pybuild.yaml").write_text(recipe)
    copy = build_with(pybuild, ctx, tmp_path / "copy", "copy", tmp_path / "h-copy")
    assert copy.returncode == 0, describe(copy)
    overlay = build_with(pybuild, ctx, tmp_path / "overlay", driver, tmp_path / "h-overlay")
    assert overlay.returncode == 0, describe(overlay)
    return copy, overlay


@pytest.mark.parametrize("driver", ["overlay", "fuse-overlayfs"])
def test_overlay_and_copy_drivers_write_the_same_layers(pybuild, ctx: Path, tmp_path: Path, rootfs_tar, oci_check,
                                                        runc, need, driver: str) -> None:
    if driver == "fuse-overlayfs":
        need("fuse-overlayfs")
        if not os.path.exists("/dev/fuse"):  # a kernel without FUSE: not a missing tool, skip even on CI
            pytest.skip("this kernel has no /dev/fuse")
    copy, overlay = build_both(pybuild, ctx, tmp_path, rootfs_tar, RECIPE, driver)
    assert f"({'fuse-overlayfs' if driver != 'overlay' else 'kernel overlayfs'}" in overlay.stderr, overlay.stderr
    assert "root filesystem: overlay of" in overlay.stderr and "copy driver" not in overlay.stderr, overlay.stderr
    assert "root filesystem: copy driver (PYBUILD_RUN_DRIVER=copy)" in copy.stderr
    steps = [line.strip() for line in RECIPE.splitlines() if line.strip().startswith("- ")]
    pairs = list(zip(diff_ids(tmp_path / "copy"), diff_ids(tmp_path / "overlay"), strict=True))
    again = next(i for i, step in enumerate(steps) if "/data/again" in step)
    mismatched = [(steps[i], a, b) for i, (a, b) in enumerate(pairs) if a != b and i != again]
    assert not mismatched, mismatched
    # A directory deleted and made again: the overlay knows (an opaque directory); the snapshot diff
    # knows only when the filesystem gave the new directory a new inode number, else it writes a
    # whiteout of each old child, which hides the same files.
    copied, overlaid = layer_names(tmp_path / "copy", again), layer_names(tmp_path / "overlay", again)
    assert "data/again/.wh..wh..opq" in overlaid and "data/again/.wh.old" not in overlaid, overlaid
    if pairs[again][0] == pairs[again][1]:
        assert copied == overlaid
    else:
        assert copied == overlaid - {"data/again/.wh..wh..opq"} | {"data/again/.wh.old"}, (copied, overlaid)
    assert oci_check(tmp_path / "overlay").returncode == 0
    ran = runc.run(tmp_path / "overlay", "drivers")
    assert ran.stdout.splitlines() == ["back", "linked", "fresh", "deep", "keep", "4711", "4755"], describe(ran)


def test_an_image_made_on_the_overlay_driver_loads_and_runs_in_podman_and_containerd(
        pybuild, ctx: Path, tmp_path: Path, rootfs_tar, oci_check, podman, containerd) -> None:
    """The recipe of every kind of change, its run steps on the overlay driver, as an archive: podman
    and containerd apply its whiteouts and opaque directories themselves, and the image sees what it
    does in runc."""
    if os.geteuid() != 0:
        pytest.skip("the overlay driver as tested here needs root")
    data_tar(rootfs_tar, ctx / "data.tar.gz")
    (ctx / "pybuild.yaml").write_text(RECIPE)
    home = tmp_path / "home"
    home.mkdir()
    archive = tmp_path / "drivers.tar"
    built = pybuild(ctx / "pybuild.yaml", "-o", archive, "--format", "oci-archive", "-t", "e2e/drivers:1",
                    "--progress", "plain", "--no-attestations",
                    env={"PYBUILD_RUN_DRIVER": "overlay", "HOME": str(home), "XDG_CACHE_HOME": str(home / "cache")})
    assert built.returncode == 0, describe(built)
    assert "root filesystem: overlay of" in built.stderr and "copy driver" not in built.stderr, built.stderr
    assert oci_check(archive).returncode == 0
    expected = ["back", "linked", "fresh", "deep", "keep", "4711", "4755"]
    names = podman.load(archive)
    ran = podman.run(names[0])
    assert ran.stdout.splitlines() == expected, describe(ran)
    refs = containerd.import_archive(archive)
    try:
        [ref] = [r for r in refs if r.endswith("e2e/drivers:1")]
        ran = containerd.run(ref)
        assert ran.stdout.splitlines() == expected, describe(ran)
    finally:
        containerd.remove_images(*refs)


def test_a_second_build_extracts_nothing(pybuild, ctx: Path, tmp_path: Path) -> None:
    """The snapshots stay in the cache: the next build (a cache miss) mounts them as they are."""
    if os.geteuid() != 0:
        pytest.skip("the overlay driver as tested here needs root")
    recipe = "version: 1\nsteps:\n  - rootfs: rootfs.tar.gz\n  - run: echo {n} > /n\n  - run: cat /n\n"
    home = tmp_path / "home"
    for n, extracted in ((1, True), (2, False)):
        (ctx / "pybuild.yaml").write_text(recipe.format(n=n))
        built = build_with(pybuild, ctx, tmp_path / f"o{n}", "overlay", home)
        assert built.returncode == 0, describe(built)
        first = [line for line in built.stderr.splitlines() if "root filesystem: overlay of 1 snapshot" in line]
        assert first and ("extracted 1 layer" in first[0]) == extracted, built.stderr
        # the second run step's snapshot (the layer of the first) is always new: its content changed
        assert "root filesystem: overlay of 2 snapshots (kernel overlayfs; extracted 1 layer" in built.stderr


def test_relative_cache_and_output_paths_still_mount_the_overlay(pybuild, ctx: Path, tmp_path: Path) -> None:
    """``--cache-dir cache -o out`` from the working directory: the overlay's lower directories are
    links to the snapshots, which must not be read relative to the links' own directory."""
    if os.geteuid() != 0:
        pytest.skip("the overlay driver as tested here needs root")
    for n in (1, 2):  # the second build mounts snapshots the first one made
        (ctx / "pybuild.yaml").write_text(f"version: 1\nsteps:\n  - rootfs: rootfs.tar.gz\n  - run: echo {n} > /n\n")
        built = pybuild("pybuild.yaml", "-o", f"out{n}", "--cache-dir", "cache", "--progress", "plain",
                        "--no-attestations", cwd=ctx, env={"PYBUILD_RUN_DRIVER": "overlay"})
        assert built.returncode == 0, describe(built)
        assert "root filesystem: overlay of 1 snapshot (kernel overlayfs" in built.stderr, built.stderr


def test_a_snapshot_changed_after_extraction_is_caught_and_nothing_made_on_it_is_kept(pybuild, ctx: Path,
                                                                                    tmp_path: Path) -> None:
    """A snapshot is checked while the command runs on it: when its tree changed since it was
    extracted (same size, mtime put back: only its ctime tells), the step's result is dropped, the
    layer is extracted again and the step runs again, so the image is as if nothing had happened."""
    if os.geteuid() != 0:
        pytest.skip("the overlay driver as tested here needs root")
    recipe = ("version: 1\nsteps:\n  - rootfs: rootfs.tar.gz\n  - write: /data/v\n    content: \"good\\n\"\n"
              "  - run: cat /data/v > /seen-{n}\n")
    home = tmp_path / "home"

    def built(n: int, driver: str = "overlay", where: Path = home) -> tuple[Any, Path]:
        (ctx / "pybuild.yaml").write_text(recipe.format(n=n))
        done = build_with(pybuild, ctx, tmp_path / f"o{n}-{driver}", driver, where)
        assert done.returncode == 0, describe(done)
        return done, tmp_path / f"o{n}-{driver}"

    _, first = built(1)
    written = diff_ids(first)[1].split(":")[1]
    [tree] = (home / "cache").glob(f"**/snapshots/trusted/{written}/fs")
    st = os.stat(tree / "data" / "v")
    (tree / "data" / "v").write_text("evil\n")
    os.utime(tree / "data" / "v", ns=(st.st_atime_ns, st.st_mtime_ns))

    again, second = built(2)
    assert f"the snapshot of layer {written[:12]} changed after it was extracted: extracting it again" \
        in again.stderr, again.stderr
    assert again.stderr.count("root filesystem: overlay of 2 snapshots") == 2
    assert "overlay of 2 snapshots (kernel overlayfs; extracted 1 layer" in again.stderr
    _, copied = built(2, "copy", tmp_path / "h-copy")
    assert diff_ids(second) == diff_ids(copied)
    seen = [line for line in layer_contents(second, -1) if line[0] == "seen-2"]
    assert seen == [("seen-2", b"good\n")]

    third, _ = built(3)  # the snapshot extracted again is whole: mounted as it is
    assert "root filesystem: overlay of 2 snapshots (kernel overlayfs)" in third.stderr, third.stderr


def test_a_damaged_snapshot_a_stage_view_shares_with_the_run_step_is_extracted_again_without_a_hang(
        pybuild, ctx: Path, tmp_path: Path) -> None:
    """The run step's overlay and a stage it binds share a damaged snapshot. The stage's view is
    mounted before the step starts and checks before it mounts, so it extracts the snapshot again
    (under the exclusive lock, before the overlay takes a shared one on it), and the step runs
    once, on good snapshots: the two checks never wait for each other's lock."""
    if os.geteuid() != 0:
        pytest.skip("the overlay driver as tested here needs root")
    recipe = ("version: 1\nstages:\n  tools:\n    steps:\n      - rootfs: rootfs.tar.gz\n"
              "      - write: /data/v\n        content: \"good\\n\"\n"
              "steps:\n  - rootfs: rootfs.tar.gz\n  - write: /data/v\n    content: \"good\\n\"\n"
              "  - run: cat /data/v /tools/data/v > /seen-{n}\n"
              "    mounts:\n      - bind: {{source: /, target: /tools, from: tools}}\n")
    home = tmp_path / "home"
    env = {"PYBUILD_RUN_DRIVER": "overlay", "HOME": str(home), "XDG_CACHE_HOME": str(home / "cache")}
    home.mkdir()
    runs = []
    for n in (1, 2):
        (ctx / "pybuild.yaml").write_text(recipe.format(n=n))
        done = pybuild(ctx / "pybuild.yaml", "-o", tmp_path / f"o{n}", "--progress", "plain", "--no-attestations",
                       env=env, timeout=120)
        assert done.returncode == 0, describe(done)
        runs.append(done)
        if n == 1:
            written = diff_ids(tmp_path / "o1")[1].split(":")[1]
            [tree] = (home / "cache").glob(f"**/snapshots/trusted/{written}/fs")
            st = os.stat(tree / "data" / "v")
            (tree / "data" / "v").write_text("evil\n")
            os.utime(tree / "data" / "v", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert "stage tools: overlay of 2 snapshots (extracted 1)" in runs[1].stderr, runs[1].stderr
    assert "changed after it was extracted" not in runs[1].stderr
    assert [c for c in layer_contents(tmp_path / "o2", -1) if c[0] == "seen-2"] == [("seen-2", b"good\ngood\n")]


def layer_contents(out: Path, index: int) -> list[tuple[str, bytes]]:
    blobs = out / "blobs" / "sha256"
    [desc] = json.loads((out / "index.json").read_text())["manifests"]
    manifest = json.loads((blobs / desc["digest"].split(":")[1]).read_bytes())
    with tarfile.open(blobs / manifest["layers"][index]["digest"].split(":")[1]) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf if m.isfile()]  # type: ignore[union-attr]


STAGES = """\
version: 1
tag: staged
stages:
  build:
    steps:
      - rootfs: rootfs.tar.gz
      - rootfs: data.tar.gz
      - run: rm -rf /data/tree && mkdir -p /out && echo built > /out/result && ln /data/lower /out/link
steps:
  - rootfs: rootfs.tar.gz
  - copy: /data/
    from: build
    to: /copied/
  - copy: /out/
    from: build
    to: /out/
  - run: cat /from-build/out/result > /seen
    mounts:
      - bind: {source: /, target: /from-build, from: build}
"""


def test_stage_filesystems_are_overlays_of_snapshots_and_copy_the_same(pybuild, ctx: Path, tmp_path: Path,
                                                                       rootfs_tar) -> None:
    """``copy: from: STAGE`` and ``bind: from: STAGE`` read the stage through a read-only overlay of
    its snapshots (no second extraction); the layers are those of the copy driver's unpacked stage."""
    copy, overlay = build_both(pybuild, ctx, tmp_path, rootfs_tar, STAGES)
    assert "stage build: overlay of 3 snapshots" in overlay.stderr, overlay.stderr
    assert diff_ids(tmp_path / "copy") == diff_ids(tmp_path / "overlay")
    assert overlay.stdout.strip() == copy.stdout.strip()
    copied = layer_names(tmp_path / "overlay", 1)
    assert "copied/file" in copied and "copied/tree" not in copied and "copied/tree2/keep" in copied


def test_an_output_on_overlayfs_gets_its_upper_directory_on_a_tmpfs(pybuild, ctx: Path, tmp_path: Path, need) -> None:
    """As in a container whose root is overlayfs: the work directory beside OUT cannot hold an upper
    directory, so the overlay driver puts it on a private tmpfs, and the image is the same."""
    if os.geteuid() != 0:
        pytest.skip("mounting overlayfs for the test needs root")
    need("unshare", "mount", root=True)
    (ctx / "pybuild.yaml").write_text("version: 1\nsteps:\n  - rootfs: rootfs.tar.gz\n"
                                      "  - run: echo one > /one && rm /bin/cat\n  - run: cat /one > /two\n")
    plain = build_with(pybuild, ctx, tmp_path / "plain", "copy", tmp_path / "h1")
    assert plain.returncode == 0, describe(plain)
    for name in ("lower", "upper", "work", "merged"):
        (tmp_path / "ovl" / name).mkdir(parents=True)
    o = tmp_path / "ovl"
    script = (f"mount -t overlay overlay -o lowerdir={o}/lower,upperdir={o}/upper,workdir={o}/work {o}/merged && "
              f"exec {sys.executable} -m builder {ctx}/pybuild.yaml -o {o}/merged/out --progress plain "
              "--no-attestations")
    env = pybuild_env({"PYBUILD_RUN_DRIVER": "overlay", "HOME": str(tmp_path / "h2")})
    (tmp_path / "h2").mkdir()
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, describe(done)
    assert done.stderr.count("root filesystem: overlay of") == 2 and "copy driver" not in done.stderr, done.stderr
    assert done.stdout.strip() == plain.stdout.strip()


def tree_of(top: Path) -> dict[str, tuple[Any, ...]]:
    """Everything a layer can say about each path below ``top`` (inode numbers as hardlink groups)."""
    out: dict[str, tuple[Any, ...]] = {}
    groups: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath, name)
            st = os.lstat(p)
            rel = str(p.relative_to(top))
            link = os.readlink(p) if p.is_symlink() else ""
            group = groups.setdefault(st.st_ino, rel) if st.st_nlink > 1 and not p.is_dir() else ""
            xattrs = () if p.is_symlink() else tuple(sorted((k, os.getxattr(p, k)) for k in os.listxattr(p)))
            size = st.st_size if not p.is_dir() else 0
            content = p.read_bytes() if p.is_file() and not p.is_symlink() else b""
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, size, st.st_mtime_ns, st.st_rdev, link, group, xattrs,
                        content)
    return out


def test_unpack_copies_the_snapshots_a_build_left_and_gets_the_same_tree(pybuild, ctx: Path, tmp_path: Path,
                                                                          rootfs_tar) -> None:
    """After a build whose run steps extracted every layer, ``pybuild unpack`` copies their overlay
    instead of applying the layers again; the rootfs is the same, entry by entry, as applying gives."""
    build_both(pybuild, ctx, tmp_path, rootfs_tar, RECIPE.replace("config:", '  - run: "true"\nconfig:'))
    env = {"HOME": str(tmp_path / "h-overlay"), "XDG_CACHE_HOME": str(tmp_path / "h-overlay" / "cache")}
    copied = pybuild("unpack", tmp_path / "overlay", tmp_path / "b-copied", env=env)
    assert copied.returncode == 0, describe(copied)
    assert "copied from the layers' snapshots" in copied.stderr, copied.stderr
    (tmp_path / "empty-home").mkdir()
    applied = pybuild("unpack", tmp_path / "overlay", tmp_path / "b-applied",
                      env={"HOME": str(tmp_path / "empty-home"), "XDG_CACHE_HOME": str(tmp_path / "empty-home/c")})
    assert applied.returncode == 0, describe(applied)
    assert "snapshots" not in applied.stderr
    a, b = tree_of(tmp_path / "b-applied" / "rootfs"), tree_of(tmp_path / "b-copied" / "rootfs")
    assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())
    different = {path: (a[path], b[path]) for path in a if a[path] != b[path]}
    assert not different, different
    root_a, root_b = os.lstat(tmp_path / "b-applied" / "rootfs"), os.lstat(tmp_path / "b-copied" / "rootfs")
    assert stat.S_IMODE(root_a.st_mode) == stat.S_IMODE(root_b.st_mode)
    assert (tmp_path / "b-applied" / "config.json").read_bytes() == (tmp_path / "b-copied" / "config.json").read_bytes()
