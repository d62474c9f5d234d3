"""``pybuild unpack OUT[:TAG] BUNDLE``: a runtime bundle that runc runs as is, equal to umoci's rootfs.

Images are built with the real CLI, unpacked with the real CLI, and then run with ``runc run``
(private ``--root`` state) without touching ``config.json``; the rootfs is compared with what
``umoci unpack`` makes of the same image. The first tests need no tools: they check the
conversion itself (image config -> runtime config) on images made in memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from builder.bundle import runtime_annotations, write_bundle
from builder.errors import InputError, OutputError
from builder.fs.users import resolve_user
from builder.image import Image, LayerBlob
from builder.oci.canonical import canonical_json
from builder.oci.config import append_layer, empty_config, rfc3339
from builder.oci.descriptor import Descriptor
from builder.oci.digest import Digest
from builder.oci.manifest import image_manifest
from builder.oci.mediatypes import MediaType
from builder.oci.platform import Platform
from tests.helpers import AMD64, ARM64, FIDELITY_ENTRIES, compress, make_image, make_index

from .runtimes import describe, remove_tree, run, unique_id

PASSWD = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n# comment\nbad:x:nope:1::/:/bin/sh\n"
GROUP = b"root:x:0:\napp:x:1000:\nstaff:x:50:app,other\nwheel:x:10:root,app\nnogroup:x:65534:\n"


# --------------------------------------------------------------------------------------------
# the conversion (no tools needed)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", {"uid": 0, "gid": 0}),
        ("root", {"uid": 0, "gid": 0, "additionalGids": [10]}),
        ("app", {"uid": 1000, "gid": 1000, "additionalGids": [10, 50]}),
        ("1000", {"uid": 1000, "gid": 1000}),  # numeric: primary group from passwd, no additional groups
        ("4242", {"uid": 4242, "gid": 0}),  # a uid the image does not know is used as is
        ("1000:50", {"uid": 1000, "gid": 50}),
        ("app:staff", {"uid": 1000, "gid": 50}),  # a group given: no additional groups
        ("4242:4343", {"uid": 4242, "gid": 4343}),
    ],
)
def test_user_resolution(spec: str, expected: dict[str, Any]) -> None:
    user = resolve_user(spec, PASSWD, GROUP)
    got: dict[str, Any] = {"uid": user.uid, "gid": user.gid}
    if user.additional_gids:
        got["additionalGids"] = list(user.additional_gids)
    assert got == expected


@pytest.mark.parametrize("spec", ["nobody", "app:nogroupcalledthis", "bad", "ghost:0"])
def test_unknown_user_or_group_is_an_error(spec: str) -> None:
    with pytest.raises(InputError, match="not in the image's"):
        resolve_user(spec, PASSWD, GROUP)


def test_annotations_follow_conversion_md_and_labels_win() -> None:
    config = {
        "os": "linux", "architecture": "arm64", "variant": "v8", "author": "me", "created": "1970-01-01T00:00:00Z",
        "os.features": ["a", "b"],
        "config": {"StopSignal": "SIGINT", "ExposedPorts": {"8080/tcp": {}, "53/udp": {}},
                   "Labels": {"org.opencontainers.image.os": "from-label", "x": "y"}},
    }
    p = "org.opencontainers.image."
    assert runtime_annotations(config) == {
        p + "os": "from-label", p + "architecture": "arm64", p + "variant": "v8", p + "author": "me",
        p + "created": "1970-01-01T00:00:00Z", p + "os.features": "a,b", p + "stopSignal": "SIGINT",
        p + "exposedPorts": "53/udp,8080/tcp", "x": "y",
    }


def image_with(tmp_path: Path, runtime: dict[str, Any], files: dict[str, bytes] | None = None) -> Image:
    files = files if files is not None else {"etc/passwd": PASSWD, "etc/group": GROUP, "bin/true": b""}
    return make_image(tmp_path, files, runtime=runtime)


def test_config_is_what_runc_needs(tmp_path: Path) -> None:
    image = image_with(tmp_path, {"Entrypoint": ["/bin/app"], "Cmd": ["--serve"], "Env": ["A=1"],
                                  "WorkingDir": "/srv", "User": "app"})
    write_bundle(image, tmp_path / "bundle")
    config = json.loads((tmp_path / "bundle/config.json").read_text())
    process = config["process"]
    assert config["ociVersion"] == "1.0.2"
    assert process["args"] == ["/bin/app", "--serve"]
    assert process["env"] == ["A=1", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    assert (process["cwd"], process["terminal"], process["noNewPrivileges"]) == ("/srv", False, True)
    assert process["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [10, 50]}
    assert process["capabilities"]["bounding"] == ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    assert process["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    assert config["root"] == {"path": "rootfs", "readonly": False}
    assert {m["destination"] for m in config["mounts"]} >= {"/proc", "/dev", "/dev/pts", "/sys", "/sys/fs/cgroup"}
    assert [n["type"] for n in config["linux"]["namespaces"]] == ["pid", "network", "ipc", "uts", "mount"]
    assert config["annotations"]["org.opencontainers.image.architecture"] == "amd64"
    assert (tmp_path / "bundle/rootfs/etc/passwd").read_bytes() == PASSWD


def image_of(tmp_path: Path, members: list[tuple[str, str, bytes]], runtime: dict[str, Any]) -> Image:
    """A one-layer image of (name, kind, data-or-target) members: kind file or symlink."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in members:
            ti = tarfile.TarInfo(name)
            if kind == "symlink":
                ti.type, ti.linkname = tarfile.SYMTYPE, data.decode()
                tar.addfile(ti)
            else:
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
    tar_bytes = buf.getvalue()
    data, media_type = compress(tar_bytes, "gzip")
    path = tmp_path / f"layer-{hashlib.sha256(data).hexdigest()}"
    path.write_bytes(data)
    layer = LayerBlob(Descriptor(media_type, Digest.of(data), len(data)), Digest.of(tar_bytes), path)
    cfg = append_layer(empty_config(AMD64), layer.diff_id, rfc3339(0), "test")
    cfg["config"] = runtime
    raw_config = canonical_json(cfg)
    cdesc = Descriptor(MediaType.OCI_CONFIG, Digest.of(raw_config), len(raw_config))
    raw_manifest = canonical_json(image_manifest(cdesc, [layer.descriptor]))
    return Image(raw_manifest, raw_config, MediaType.OCI_MANIFEST, (layer,), AMD64)


def test_passwd_symlink_resolves_inside_the_rootfs(tmp_path: Path) -> None:
    """/etc/passwd as a symlink reads the image's file as in a chroot, never the host's."""
    members = [("etc/real-passwd", "file", b"imageonly:x:4321:4321::/:/bin/sh\n"),
               ("etc/passwd", "symlink", b"/etc/real-passwd")]
    write_bundle(image_of(tmp_path, members, {"Cmd": ["/x"], "User": "imageonly"}), tmp_path / "b1")
    user = json.loads((tmp_path / "b1/config.json").read_text())["process"]["user"]
    assert user == {"uid": 4321, "gid": 4321}

    # climbing out ends at the image's root: /etc/passwd -> itself, a loop, so no passwd at all
    members = [("etc/passwd", "symlink", b"../../../../../../../../etc/passwd")]
    with pytest.raises(InputError, match="unknown user 'root': not in the image's /etc/passwd"):
        write_bundle(image_of(tmp_path, members, {"Cmd": ["/x"], "User": "root"}), tmp_path / "b2")
    assert not (tmp_path / "b2").exists()


def test_no_command_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    image = image_with(tmp_path, {"Env": ["A=1"]})
    with pytest.raises(InputError, match="neither Entrypoint nor Cmd"):
        write_bundle(image, tmp_path / "out" / "bundle")
    assert os.listdir(tmp_path / "out") == []  # no bundle, no temporary directory


@pytest.mark.parametrize("kind", ["file", "nonempty-dir", "symlink"])
def test_existing_bundle_is_refused(tmp_path: Path, kind: str) -> None:
    image = image_with(tmp_path, {"Cmd": ["/bin/true"]})
    bundle = tmp_path / "bundle"
    if kind == "file":
        bundle.write_text("x")
    elif kind == "symlink":
        (tmp_path / "elsewhere").mkdir()
        bundle.symlink_to(tmp_path / "elsewhere")
    else:
        bundle.mkdir()
        (bundle / "keep").write_text("x")
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(OutputError):
        write_bundle(image, bundle)
    assert sorted(os.listdir(tmp_path)) == before


def test_empty_bundle_directory_is_used(tmp_path: Path) -> None:
    (tmp_path / "bundle").mkdir()
    write_bundle(image_with(tmp_path, {"Cmd": ["/bin/true"]}), tmp_path / "bundle")
    assert sorted(os.listdir(tmp_path / "bundle")) == ["config.json", "rootfs"]


def test_index_gives_the_requested_platform(tmp_path: Path) -> None:
    images = [make_image(tmp_path, {"arch": p.architecture.encode()}, platform=p, runtime={"Cmd": ["/x"]})
              for p in (AMD64, ARM64)]
    write_bundle(make_index(images), tmp_path / "bundle", Platform("linux", "arm64"))
    assert (tmp_path / "bundle/rootfs/arch").read_text() == "arm64"
    with pytest.raises(InputError, match="no image for platform linux/s390x"):
        write_bundle(make_index(images), tmp_path / "other", Platform("linux", "s390x"))


# --------------------------------------------------------------------------------------------
# the CLI and the real tools


@pytest.fixture
def unpack(pybuild, tmp_path: Path):
    """``unpack("OUT:TAG", BUNDLE)`` -> BUNDLE, through ``python -m builder unpack``."""

    def _unpack(ref: str, bundle: Path) -> Path:
        result = pybuild("unpack", ref, bundle, cwd=tmp_path)
        assert result.returncode == 0, describe(result)
        assert result.stderr.count("pybuild: error") == 0
        return bundle

    return _unpack


@pytest.fixture
def runc_run(tmp_path: Path, need):
    """``runc_run(BUNDLE)`` -> the finished ``runc run`` (private state dir; config.json untouched)."""
    need("runc", root=True)
    state = tmp_path / "runc-state"
    state.mkdir()
    bundles: list[Path] = []

    def _run(bundle: Path):
        bundles.append(bundle)
        cid = unique_id("unpack")
        try:
            return run(["runc", "--root", state, "run", "--bundle", bundle, cid], check=False)
        finally:
            run(["runc", "--root", state, "delete", "--force", cid], check=False)

    yield _run
    for bundle in bundles:
        remove_tree(bundle)


BASE = """\
version: 1
steps:
  - rootfs: rootfs.tar.gz
  - write: /etc/group
    content: "root:x:0:\\napp:x:1000:\\nstaff:x:50:app\\nnogroup:x:65534:\\n"
  - write: /etc/secret
    content: "base secret\\n"
  - mkdir: /home/app
    owner: "app:app"
"""

SCRIPT = ('id -u; id -g; id -G; pwd; echo "$GREETING"; echo "$PATH"; '
          "if test -e /etc/secret; then echo secret-present; else echo secret-absent; fi")

TOP = f"""\
version: 1
from: "oci:base:base"
steps:
  - remove: [/etc/secret]
config:
  env: {{GREETING: "hello from the bundle"}}
  entrypoint: ["/bin/sh", "-c"]
  cmd: [{json.dumps(SCRIPT)}]
  workdir: /home/app
  user: app
  labels: {{org.opencontainers.image.title: unpack-e2e}}
  stop_signal: SIGTERM
"""

SIMPLE = 'version: 1\nsteps:\n  - rootfs: rootfs.tar.gz\nconfig:\n  cmd: ["/bin/true"]\n'

EXPECTED = ("1000\n1000\n1000 50\n/home/app\nhello from the bundle\n"
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nsecret-absent\n")


@pytest.mark.tools
def test_unpacked_bundle_runs_in_runc_as_configured(build, unpack, runc_run, ctx: Path, tmp_path: Path) -> None:
    build(BASE, ctx / "base", "-t", "base", context=ctx, name="base.yaml")
    out = build(TOP, tmp_path / "out", "-t", "top", context=ctx)
    bundle = unpack(f"{out}:top", tmp_path / "bundle")

    assert not (bundle / "rootfs/etc/secret").exists()  # the later layer's whiteout hides the base file
    assert (bundle / "rootfs/etc/passwd").is_file()
    assert not list((bundle / "rootfs").rglob(".wh.*"))
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"]["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [50]}
    assert config["annotations"]["org.opencontainers.image.title"] == "unpack-e2e"
    assert config["annotations"]["org.opencontainers.image.stopSignal"] == "SIGTERM"

    result = runc_run(bundle)
    assert result.returncode == 0, describe(result)
    assert result.stdout == EXPECTED, describe(result)


@pytest.mark.tools
def test_unpack_without_tag_and_from_an_index(build, unpack, ctx: Path, tmp_path: Path) -> None:
    out = build(SIMPLE, tmp_path / "multi", "--platform", "linux/amd64", "--platform", "linux/arm64",
                context=ctx)
    bundle = unpack(str(out), tmp_path / "bundle")
    config = json.loads((bundle / "config.json").read_text())
    assert config["annotations"]["org.opencontainers.image.architecture"] == Platform.host().architecture
    assert (bundle / "rootfs/bin/busybox").is_file()


@pytest.mark.tools
def test_unpack_refuses_a_non_empty_bundle(build, pybuild, ctx: Path, tmp_path: Path) -> None:
    out = build(SIMPLE, tmp_path / "out", "-t", "x", context=ctx)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "precious").write_text("keep me")
    result = pybuild("unpack", f"{out}:x", bundle, cwd=tmp_path)
    assert result.returncode == 1, describe(result)
    assert result.stderr.startswith("pybuild: error: "), describe(result)
    assert "not empty" in result.stderr.splitlines()[0]
    assert os.listdir(bundle) == ["precious"]
    assert not [n for n in os.listdir(tmp_path) if "pybuild-unpack" in n]  # no temporary directory left


# --------------------------------------------------------------------------------------------
# pybuild unpack == umoci unpack


FIDELITY = [
    *FIDELITY_ENTRIES,
    {"name": "data/fifo", "kind": "fifo", "mode": 0o600},
    {"name": "data/sub", "kind": "dir", "mode": 0o750, "uid": 1000},
    {"name": "data/sub/deep", "data": "deep\n", "mode": 0o600},
]

FIDELITY_RECIPE = """\
version: 1
steps:
  - rootfs: fidelity.tar.gz
  - rootfs: devices.tar
  - write: /data/sub/added
    content: "second layer\\n"
  - remove: [/data/sticky, /etc/group]
  - symlink: /data/sub/link
    target: ../file
config:
  cmd: ["/bin/sh"]
"""


def devices_tar(path: Path) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, dev, mode in [("dev", tarfile.DIRTYPE, (0, 0), 0o755),
                                      ("dev/null", tarfile.CHRTYPE, (1, 3), 0o666),
                                      ("dev/loop9", tarfile.BLKTYPE, (7, 9), 0o660)]:
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.uname, ti.gname = kind, mode, "", ""
            ti.devmajor, ti.devminor = dev
            tar.addfile(ti)
    path.write_bytes(buf.getvalue())
    return path


def listing(rootfs: Path) -> tuple[dict[str, tuple[Any, ...]], set[frozenset[str]]]:
    """Every path of a rootfs: type+mode, owner, link target or content digest, device; and hardlink groups."""
    entries: dict[str, tuple[Any, ...]] = {}
    inodes: dict[int, set[str]] = {}
    for dirpath, dirnames, filenames in os.walk(rootfs):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath, name)
            s = os.lstat(p)
            rel = str(p.relative_to(rootfs))
            extra: Any = None
            if stat.S_ISLNK(s.st_mode):
                extra = os.readlink(p)
            elif stat.S_ISREG(s.st_mode):
                extra = hashlib.sha256(p.read_bytes()).hexdigest()
                inodes.setdefault(s.st_ino, set()).add(rel)
            elif stat.S_ISCHR(s.st_mode) or stat.S_ISBLK(s.st_mode):
                extra = (os.major(s.st_rdev), os.minor(s.st_rdev))
            mtime = None if stat.S_ISDIR(s.st_mode) else s.st_mtime
            entries[rel] = (oct(s.st_mode), s.st_uid, s.st_gid, extra, mtime)
    return entries, {frozenset(g) for g in inodes.values() if len(g) > 1}


@pytest.mark.tools
def test_rootfs_equals_umoci_unpack(build, unpack, rootfs_tar, ctx: Path, tmp_path: Path, need) -> None:
    need("umoci", root=True)
    rootfs_tar(ctx / "fidelity.tar.gz", extra=FIDELITY)
    devices_tar(ctx / "devices.tar")
    out = build(FIDELITY_RECIPE, tmp_path / "out", "-t", "fid", context=ctx)
    ours = unpack(f"{out}:fid", tmp_path / "ours")
    theirs = tmp_path / "theirs"
    result = run(["umoci", "unpack", "--image", f"{out}:fid", theirs], check=False)
    assert result.returncode == 0, describe(result)

    our_list, our_links = listing(ours / "rootfs")
    their_list, their_links = listing(theirs / "rootfs")
    assert sorted(our_list) == sorted(their_list)  # first the names, for a readable failure
    assert our_list == their_list
    assert our_links == their_links == {frozenset({"data/file", "data/hard"})}
    assert "data/sticky" not in our_list and "etc/group" not in our_list and "data/sub/added" in our_list
    assert stat.S_IMODE(os.lstat(ours / "rootfs").st_mode) == stat.S_IMODE(os.lstat(theirs / "rootfs").st_mode)
