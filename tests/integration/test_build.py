"""The real CLI, in process: outputs, reproducibility, golden digests, errors, atomicity."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from builder.cli import main
from tests.conftest import run_oci_check

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"


def oci_check(path: Path) -> None:
    """The layout passes oci-check --strict (or, without it, oci-image-tool: see tests/conftest.py)."""
    proc = run_oci_check(path, strict=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def rootfs_tar(path: Path) -> None:
    """A small deterministic rootfs tarball with every entry type a layer must keep."""
    members: list[tuple[str, bytes, bytes | None, dict[str, Any]]] = [
        ("bin", tarfile.DIRTYPE, None, {"mode": 0o755}),
        ("bin/tool", tarfile.REGTYPE, b"#!/bin/sh\necho tool\n", {"mode": 0o4755}),
        ("bin/tool-link", tarfile.LNKTYPE, None, {"linkname": "bin/tool"}),
        ("bin/sh", tarfile.SYMTYPE, None, {"linkname": "busybox"}),
        ("etc", tarfile.DIRTYPE, None, {"mode": 0o755}),
        ("etc/passwd", tarfile.REGTYPE, b"root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n", {}),
        ("etc/group", tarfile.REGTYPE, b"root:x:0:\napp:x:1000:\n", {}),
        ("etc/old.conf", tarfile.REGTYPE, b"old", {}),
        ("dev", tarfile.DIRTYPE, None, {}),
        ("dev/null", tarfile.CHRTYPE, None, {"mode": 0o666, "devmajor": 1, "devminor": 3}),
        ("tmp", tarfile.DIRTYPE, None, {"mode": 0o1777}),
        ("home/app", tarfile.DIRTYPE, None, {"uid": 1000, "gid": 1000, "mode": 0o750}),
    ]
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        for name, type_, data, kw in members:
            ti = tarfile.TarInfo(name)
            ti.type = type_
            ti.mtime = 1_600_000_000
            for k, v in kw.items():
                setattr(ti, k, v)
            if data is not None:
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)


RECIPE = """\
version: 1
tag: "1.0"
args: {NAME: world}
steps:
  - rootfs: rootfs.tar.gz
  - copy: app/
    to: /opt/app/
    owner: app
    exclude: ["**/*.pyc"]
  - write: /etc/motd
    content: "hello ${NAME}\\n"
  - mkdir: /data
    owner: "1000:1000"
    mode: "0700"
  - symlink: /usr/bin/app
    target: /opt/app/run.sh
  - remove: [/etc/old.conf, /not/there]
  - remove: [/nothing/at/all]
config:
  entrypoint: ["/bin/sh"]
  cmd: ["-c", "cat /etc/motd"]
  env: {PATH: "/usr/bin:/bin", LANG: C.UTF-8}
  workdir: /opt/app
  user: "1000:1000"
  ports: ["8080/tcp"]
  volumes: [/data]
  labels: {org.opencontainers.image.title: demo}
  stop_signal: SIGTERM
annotations: {org.opencontainers.image.source: "https://example.com/demo"}
"""


def make_context(root: Path, *, umask: int = 0o022, mtime: int | None = None) -> Path:
    old = os.umask(umask)
    try:
        root.mkdir(parents=True)
        (root / "recipe.yaml").write_text(RECIPE)
        rootfs_tar(root / "rootfs.tar.gz")
        app = root / "app"
        (app / "lib").mkdir(parents=True)
        (app / "run.sh").write_text("#!/bin/sh\necho run\n")
        os.chmod(app / "run.sh", 0o777 & ~umask)
        (app / "lib" / "mod.py").write_text("x = 1\n")
        (app / "lib" / "mod.pyc").write_bytes(b"junk")
        (app / "README").write_text("readme\n")
    finally:
        os.umask(old)
    if mtime is not None:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                os.utime(os.path.join(dirpath, name), (mtime, mtime))
    return root


def build(recipe: Path, out: Path, *args: str) -> int:
    return main([str(recipe), "-o", str(out), "-q", *args])


def manifest_digest(out: Path, tag: str = "1.0") -> str:
    index = json.loads((out / "index.json").read_text())
    [desc] = [m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
    digest: str = desc["digest"]
    return digest


def test_build_produces_a_valid_layout(tmp_path, capsys):
    ctx = make_context(tmp_path / "ctx")
    out = tmp_path / "out"
    assert build(ctx / "recipe.yaml", out, "--platform", "linux/amd64") == 0
    digest = capsys.readouterr().out.strip()
    assert digest == manifest_digest(out)
    oci_check(out)
    blob = lambda d: json.loads((out / "blobs" / "sha256" / d.split(":")[1]).read_bytes())
    manifest = blob(digest)
    config = blob(manifest["config"]["digest"])
    assert manifest["annotations"] == {"org.opencontainers.image.source": "https://example.com/demo"}
    assert len(manifest["layers"]) == 6  # the last remove changed nothing
    assert len(config["rootfs"]["diff_ids"]) == 6
    history = config["history"]
    assert len(history) == 7 and history[-1]["empty_layer"] is True
    assert all("empty_layer" not in h for h in history[:-1])
    assert config["created"] == "1970-01-01T00:00:00Z" and all(h["created"] == config["created"] for h in history)
    c = config["config"]
    assert c["Entrypoint"] == ["/bin/sh"] and c["Cmd"] == ["-c", "cat /etc/motd"]
    assert c["Env"] == ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"] and c["User"] == "1000:1000"
    assert c["ExposedPorts"] == {"8080/tcp": {}} and c["Volumes"] == {"/data": {}}
    assert c["WorkingDir"] == "/opt/app" and c["StopSignal"] == "SIGTERM"
    # the copy layer: owner resolved through the image's passwd, *.pyc excluded, mtimes = epoch
    layer = out / "blobs" / "sha256" / manifest["layers"][1]["digest"].split(":")[1]
    with tarfile.open(layer) as tf:
        members = {m.name: m for m in tf}
    assert "opt/app/lib/mod.pyc" not in members and "opt/app/lib/mod.py" in members
    assert members["opt/app/run.sh"].uid == 1000 and members["opt/app/run.sh"].mode == 0o755
    assert (members["opt"].uid, members["opt"].gid) == (1000, 1000)  # a parent the owned copy created
    assert all(m.mtime == 0 for m in members.values())
    # the remove layer whites out exactly the file
    layer = out / "blobs" / "sha256" / manifest["layers"][5]["digest"].split(":")[1]
    with tarfile.open(layer) as tf:
        assert [m.name for m in tf] == ["etc", "etc/.wh.old.conf"]


def test_same_recipe_from_two_contexts_gives_the_same_digest(tmp_path):
    a = make_context(tmp_path / "a", umask=0o022, mtime=1_000_000)
    # umask 002 (group-writable checkouts) must not matter; 077 would (copy keeps 0600 as 0600)
    b = make_context(tmp_path / "elsewhere" / "b", umask=0o002, mtime=1_700_000_000)
    assert build(a / "recipe.yaml", tmp_path / "oa", "--platform", "linux/amd64") == 0
    assert build(b / "recipe.yaml", tmp_path / "ob", "--platform", "linux/amd64") == 0
    assert manifest_digest(tmp_path / "oa") == manifest_digest(tmp_path / "ob")


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_golden_digest(tmp_path, compression):
    """The manifest digest of a fixed recipe is pinned: any change to layer bytes shows up here.

    If a change to tar or config output is intended, bump LAYER_FORMAT_VERSION and regenerate
    with ``PYBUILD_UPDATE_GOLDEN=1 pytest tests/integration/test_build.py -k golden``.
    """
    ctx = make_context(tmp_path / "ctx")
    out = tmp_path / "out"
    assert build(ctx / "recipe.yaml", out, "--platform", "linux/amd64", "--compression", compression,
                 "--source-date-epoch", "1700000000") == 0
    digest = manifest_digest(out)
    golden = GOLDEN / f"demo-{compression}.digest"
    if os.environ.get("PYBUILD_UPDATE_GOLDEN"):
        golden.write_text(digest + "\n")
    assert golden.read_text().strip() == digest
    oci_check(out)


def test_epoch_clamps_rootfs_times_and_sets_created(tmp_path):
    ctx = make_context(tmp_path / "ctx")
    out = tmp_path / "out"
    os.environ["SOURCE_DATE_EPOCH"] = "1234"
    try:
        assert build(ctx / "recipe.yaml", out) == 0
    finally:
        del os.environ["SOURCE_DATE_EPOCH"]
    digest = manifest_digest(out)
    blobs = out / "blobs" / "sha256"
    manifest = json.loads((blobs / digest.split(":")[1]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())
    assert config["created"] == "1970-01-01T00:20:34Z"
    with tarfile.open(blobs / manifest["layers"][0]["digest"].split(":")[1]) as tf:
        assert {m.mtime for m in tf} == {1234}  # 1_600_000_000 in the tarball, clamped


def test_layout_keeps_other_tags_and_base_layers_are_reused(tmp_path):
    ctx = make_context(tmp_path / "ctx")
    out = tmp_path / "out"
    assert build(ctx / "recipe.yaml", out, "-t", "base") == 0
    (ctx / "child.yaml").write_text(
        "version: 1\nfrom: oci:out-base:base\nsteps:\n  - write: /etc/child\n    content: child\n"
        "config:\n  cmd: [/bin/sh]\n"
    )
    # the base layout is read from the context
    os.symlink(out, ctx / "out-base")
    child = tmp_path / "child"
    assert build(ctx / "child.yaml", child, "-t", "child") == 0
    assert build(ctx / "child.yaml", out, "-t", "child") == 0
    oci_check(out)
    index = json.loads((out / "index.json").read_text())
    assert sorted(m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]
                  if "artifactType" not in m) == ["base", "child"]
    blobs = out / "blobs" / "sha256"
    base_m = json.loads((blobs / manifest_digest(out, "base").split(":")[1]).read_bytes())
    child_m = json.loads((blobs / manifest_digest(out, "child").split(":")[1]).read_bytes())
    assert child_m["layers"][:-1] == base_m["layers"]  # reused as they are, not recompressed
    base_c = json.loads((blobs / base_m["config"]["digest"].split(":")[1]).read_bytes())
    child_c = json.loads((blobs / child_m["config"]["digest"].split(":")[1]).read_bytes())
    assert child_c["history"][:-1] == base_c["history"]
    assert child_c["config"]["Cmd"] == ["/bin/sh"] and child_c["config"]["Entrypoint"] == ["/bin/sh"]
    assert child_c["config"]["Env"] == base_c["config"]["Env"]


@pytest.mark.parametrize("fmt", ["oci-archive", "docker-archive"])
def test_archives_are_layouts_too(tmp_path, fmt):
    ctx = make_context(tmp_path / "ctx")
    out = tmp_path / f"image-{fmt}.tar"
    assert build(ctx / "recipe.yaml", out, "--format", fmt, "-t", "acc/app:1") == 0
    oci_check(out)
    with tarfile.open(out) as tf:
        names = tf.getnames()
        assert "index.json" in names and "oci-layout" in names
        if fmt == "docker-archive":
            f = tf.extractfile("manifest.json")
            assert f is not None
            manifest = json.load(f)
            assert manifest[0]["RepoTags"] == ["acc/app:1"]


def test_digest_and_metadata_files(tmp_path):
    ctx = make_context(tmp_path / "ctx")
    out = tmp_path / "out"
    assert build(ctx / "recipe.yaml", out, "--digest-file", str(tmp_path / "d"),
                 "--metadata-file", str(tmp_path / "m.json")) == 0
    digest = (tmp_path / "d").read_text().strip()
    assert digest == manifest_digest(out)
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["digest"] == digest and meta["name"] == "1.0"
    assert len(meta["layers"]) == 6 and meta["cache"] == {"hits": 0, "misses": 7}  # 7 steps, one empty
    assert meta["image_id"].startswith("sha256:")
    sizes = [m["size"] for m in meta["layers"]]
    assert all(isinstance(s, int) and s > 0 for s in sizes)


def test_failed_build_leaves_out_as_it_was(tmp_path, capsys):
    ctx = make_context(tmp_path / "ctx")
    out = tmp_path / "out"
    assert build(ctx / "recipe.yaml", out) == 0
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}
    (ctx / "bad.yaml").write_text("version: 1\nsteps:\n  - write: /a\n    content: x\n  - copy: nope/\n    to: /x/\n")
    assert build(ctx / "bad.yaml", out) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"pybuild: error: {ctx / 'bad.yaml'}:5: steps[1].copy: no such file or directory: 'nope/'"
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert not any(p.name.startswith(".out.pybuild") for p in tmp_path.iterdir())  # work dir cleaned
    assert build(ctx / "bad.yaml", tmp_path / "fresh") == 1
    assert not (tmp_path / "fresh").exists()


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["build", "x.yaml", "--bogus"]) == 2
    assert capsys.readouterr().err.startswith("pybuild: error: ")
    assert main(["x.yaml"]) == 2  # -o missing


def test_missing_recipe_exit_1(tmp_path, capsys):
    assert main([str(tmp_path / "none.yaml"), "-o", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err.startswith("pybuild: error: no such recipe file")


def test_cli_subprocess_no_traceback(tmp_path):
    (tmp_path / "r.yaml").write_text("version: 1\nsteps:\n  - copy: ../etc/passwd\n    to: /x\n")
    proc = subprocess.run([sys.executable, "-m", "builder", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=REPO, check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("pybuild: error: ") and "Traceback" not in proc.stderr
    assert ":3: steps[0].copy" in proc.stderr.splitlines()[0]


def test_inspect_json_and_text(tmp_path, capsys):
    ctx = make_context(tmp_path / "ctx")
    out = tmp_path / "out"
    assert build(ctx / "recipe.yaml", out) == 0
    digest = capsys.readouterr().out.strip()
    assert main(["inspect", f"{out}:1.0", "--json"]) == 0
    desc = json.loads(capsys.readouterr().out)
    assert desc["digest"] == digest and desc["name"] == "1.0"
    assert [set(layer) for layer in desc["layers"]] == [{"digest", "diff_id", "size", "media_type"}] * 6
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert digest.split(":")[1][:12] in text


def _tar(path: Path, members: list[tuple[str, bytes, bytes | None, dict[str, Any]]]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, type_, data, kw in members:
            ti = tarfile.TarInfo(name)
            ti.type = type_
            for k, v in kw.items():
                setattr(ti, k, v)
            if data is not None:
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)


def test_rootfs_needing_two_passes_builds_through_the_restart(tmp_path, capsys):
    """A directory listed after its content (and a duplicate) sends the layer to the two-pass stream."""
    _tar(tmp_path / "r.tar", [
        ("etc/motd", tarfile.REGTYPE, b"old\n", {}),
        ("etc", tarfile.DIRTYPE, None, {"mode": 0o700, "uid": 7}),
        ("etc/motd", tarfile.REGTYPE, b"new\n", {}),
    ])
    (tmp_path / "r.yaml").write_text("version: 1\nsteps:\n  - rootfs: r.tar\n")
    assert build(tmp_path / "r.yaml", tmp_path / "out") == 0
    blobs = tmp_path / "out" / "blobs" / "sha256"
    manifest = json.loads((blobs / manifest_digest(tmp_path / "out", "latest").split(":")[1]).read_bytes())
    with tarfile.open(blobs / manifest["layers"][0]["digest"].split(":")[1]) as tf:
        members = tf.getmembers()
        assert [m.name for m in members] == ["etc", "etc/motd"]
        assert (members[0].mode, members[0].uid) == (0o700, 7)
        f = tf.extractfile(members[1])
        assert f is not None and f.read() == b"new\n"


def test_truncated_rootfs_is_one_clean_error(tmp_path, capsys):
    _tar(tmp_path / "full.tar", [("big", tarfile.REGTYPE, os.urandom(200_000), {})])
    data = (tmp_path / "full.tar").read_bytes()
    import gzip as _gzip

    (tmp_path / "r.tar.gz").write_bytes(_gzip.compress(data[:100_000]))
    (tmp_path / "r.yaml").write_text("version: 1\nsteps:\n  - rootfs: r.tar.gz\n")
    assert build(tmp_path / "r.yaml", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert err.startswith("pybuild: error: ") and "r.tar.gz" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def _config(out: Path) -> dict[str, Any]:
    blobs = out / "blobs" / "sha256"
    index = json.loads((out / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    config: dict[str, Any] = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())
    return config


@pytest.mark.parametrize(("env", "expected"), [
    ("", ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]),
    ("  env: {PATH: /bin, A: '1'}\n", ["PATH=/bin", "A=1"]),
])
def test_a_scratch_image_has_dockers_default_path(tmp_path, env, expected):
    """Buildah and BuildKit give a FROM-scratch image Docker's default PATH unless the build sets one;
    without it a runtime cannot find ``sh`` for an image's relative command."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nsteps:\n  - write: /hello\n    content: hi\nconfig:\n" + (env or "  cmd: [/hello]\n"))
    assert build(recipe, tmp_path / "out") == 0
    assert _config(tmp_path / "out")["config"]["Env"] == expected


def test_a_build_without_a_registry_never_loads_the_registry_stack(tmp_path):
    """The registry client (requests, urllib3) is imported only when a build pulls or pushes: a
    local build starts faster, and runs where those packages cannot be imported (the rootless
    re-exec as another user reads only pybuild's own dependencies)."""
    import subprocess
    import sys

    ctx = make_context(tmp_path / "ctx")
    code = ("import sys; from builder.cli import main; "
            f"rc = main([{str(ctx / 'recipe.yaml')!r}, '-o', {str(tmp_path / 'out')!r}, '-q']); "
            "print(rc, sorted(m for m in sys.modules if m.split('.')[0] in ('requests', 'urllib3')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert done.stdout.split("\n")[-2] == "0 []", done.stdout + done.stderr
