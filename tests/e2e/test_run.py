"""``run:`` steps through the real CLI: what a command does becomes exactly its layer.

Every image built here is checked with oci-check --strict and run under runc, which must show
every effect of the run steps.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from .runtimes import describe

pytestmark = [pytest.mark.tools]


def layer_members(out: Path, tag: str, index: int) -> dict[str, tarfile.TarInfo]:
    blobs = out / "blobs" / "sha256"
    idx = json.loads((out / "index.json").read_text())
    [desc] = [m for m in idx["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
    manifest = json.loads((blobs / desc["digest"].split(":")[1]).read_bytes())
    with tarfile.open(fileobj=gzip.open(blobs / manifest["layers"][index]["digest"].split(":")[1])) as tf:
        return {m.name: m for m in tf}


EFFECTS = """\
version: 1
tag: run
args: {WHO: pybuild}
steps:
  - rootfs: rootfs.tar.gz
  - write: /etc/seed
    content: "seed\\n"
  - mkdir: /victim
  - write: /victim/inner
    content: "inner\\n"
  - mkdir: /data/keep
  - write: /data/keep/old
    content: "old\\n"
  - run: |
      set -e
      echo "adding as $WHO"
      mkdir -p /srv/app && echo hello > /srv/app/new
      echo changed > /etc/seed
      chmod 0600 /etc/seed
      chown 1000:1000 /srv/app/new
      ln /srv/app/new /srv/app/hardlink
      rm -rf /victim
      touch /victim
      rm -rf /data/keep && mkdir -p /data/keep && echo fresh > /data/keep/fresh
    env: {EXTRA: "1"}
  - run: |
      rm /victim && mkdir /victim && echo back > /victim/again
config:
  cmd: ["/bin/sh", "-c", "cat /srv/app/new /etc/seed /victim/again /data/keep/fresh; ls /data/keep; stat -c '%a %u:%g %h' /etc/seed /srv/app/new; ls /victim"]
"""


def test_run_effects_become_layers_and_run_in_runc(pybuild, ctx: Path, tmp_path: Path, oci_check, runc) -> None:
    (ctx / "pybuild.yaml").write_text(EFFECTS)
    out = tmp_path / "out"
    built = pybuild(ctx / "pybuild.yaml", "-o", out, "--progress", "plain")
    assert built.returncode == 0, describe(built)
    assert "| adding as pybuild" in built.stderr  # output streamed, prefixed by the step
    assert oci_check(out).returncode == 0
    run_layer = layer_members(out, "run", 6)
    names = set(run_layer)
    # only what changed: the new files, the modified seed, the replaced /victim, the opaque /data/keep
    assert {"srv/app/new", "srv/app/hardlink", "etc/seed", "victim", "data/keep/fresh"} <= names
    # deleted and recreated: an opaque marker, or (when the filesystem hands the new directory the
    # old inode number, so it cannot be told from the old one) a whiteout of its old content
    assert "data/keep/.wh..wh..opq" in names or "data/keep/.wh.old" in names
    assert not any(n.startswith(("proc", "dev/", "sys")) for n in names)
    assert "etc/passwd" not in names and "bin/busybox" not in names
    assert run_layer["etc/seed"].mode == 0o600
    assert (run_layer["srv/app/new"].uid, run_layer["srv/app/new"].gid) == (1000, 1000)
    assert run_layer["srv/app/hardlink"].islnk() or run_layer["srv/app/new"].islnk()
    assert all(m.mtime == 0 for m in run_layer.values())
    ran = runc.run(out, "run")
    lines = ran.stdout.splitlines()
    assert lines[:4] == ["hello", "changed", "back", "fresh"], describe(ran)
    assert lines[4] == "fresh"  # /data/keep/old is hidden by the opaque whiteout
    assert lines[5] == "600 0:0 1" and lines[6] == "644 1000:1000 2"
    assert lines[7] == "again"


def test_deterministic_run_gives_identical_layers(pybuild, ctx: Path, tmp_path: Path) -> None:
    (ctx / "pybuild.yaml").write_text(
        "version: 1\nsteps:\n  - rootfs: rootfs.tar.gz\n  - run: mkdir -p /opt/x && echo 1 > /opt/x/f && rm /bin/cat\n"
    )
    digests = []
    for name in ("a", "b"):
        built = pybuild(ctx / "pybuild.yaml", "-o", tmp_path / name, "-q")
        assert built.returncode == 0, describe(built)
        digests.append(built.stdout.strip())
    assert digests[0] == digests[1]
    layer = layer_members(tmp_path / "a", "latest", 1)
    assert sorted(layer) == ["bin", "bin/.wh.cat", "opt", "opt/x", "opt/x/f"]


def test_file_steps_after_a_run_see_what_it_did(pybuild, ctx: Path, tmp_path: Path, runc) -> None:
    """Run steps skip the metadata tree; the next file step must still see the run's user, symlink
    and directory (and the copy before the run), as if the tree had followed every layer."""
    (ctx / "note.txt").write_text("note\n")
    (ctx / "pybuild.yaml").write_text("""\
version: 1
tag: t
steps:
  - rootfs: rootfs.tar.gz
  - copy: note.txt
    to: /opt/before/
  - run: |
      mkdir -p /srv/real && ln -s /srv/real /link
      echo 'svc:x:4242:4242::/srv:/bin/sh' >> /etc/passwd && echo 'svc:x:4242:' >> /etc/group
      rm /opt/before/note.txt
  - copy: note.txt
    to: /link/
    owner: svc
  - mkdir: /opt/before/again
config:
  cmd: ["/bin/sh", "-c", "stat -c '%u:%g %n' /srv/real/note.txt; ls -A /opt/before"]
""")
    out = tmp_path / "out"
    built = pybuild(ctx / "pybuild.yaml", "-o", out, "-q")
    assert built.returncode == 0, describe(built)
    copied = layer_members(out, "t", 3)
    assert "srv/real/note.txt" in copied, sorted(copied)
    assert "link/note.txt" not in copied  # resolved through the run's symlink, not replacing it
    assert (copied["srv/real/note.txt"].uid, copied["srv/real/note.txt"].gid) == (4242, 4242)
    ran = runc.run(out, "t")
    assert ran.stdout.splitlines() == ["4242:4242 /srv/real/note.txt", "again"], describe(ran)


def test_failing_command_stops_the_build_with_its_status(pybuild, ctx: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (ctx / "ok.yaml").write_text("version: 1\nsteps:\n  - rootfs: rootfs.tar.gz\n")
    assert pybuild(ctx / "ok.yaml", "-o", out, "-q").returncode == 0
    before = sorted(p.name for p in (out / "blobs" / "sha256").iterdir())
    (ctx / "bad.yaml").write_text(
        "version: 1\nsteps:\n  - rootfs: rootfs.tar.gz\n  - write: /x\n    content: x\n"
        "  - run: |\n      echo about to fail\n      exit 7\n"
    )
    failed = pybuild(ctx / "bad.yaml", "-o", out, "-q")
    assert failed.returncode == 1
    lines = failed.stderr.splitlines()
    first = next(line for line in lines if line.startswith("pybuild: error:"))
    assert first.endswith("bad.yaml:6: steps[2].run: command exited with status 7"), failed.stderr
    assert "about to fail" in failed.stderr
    assert sorted(p.name for p in (out / "blobs" / "sha256").iterdir()) == before


def test_a_failing_line_in_the_middle_of_a_script_fails_the_build(pybuild, ctx: Path, tmp_path: Path) -> None:
    """``sh -e``: an install that fails on line 1 is not hidden by a succeeding line 2."""
    (ctx / "r.yaml").write_text("version: 1\nsteps:\n  - rootfs: rootfs.tar.gz\n"
                                "  - run: |\n      false\n      echo still here > /marker\n")
    failed = pybuild(ctx / "r.yaml", "-o", tmp_path / "out", "-q")
    assert failed.returncode == 1 and "command exited with status 1" in failed.stderr, failed.stderr
    assert not (tmp_path / "out").exists()
    (ctx / "old.yaml").write_text("version: 1\nsteps:\n  - rootfs: rootfs.tar.gz\n"
                                  "  - run: |\n      false\n      echo still here > /marker\n"
                                  "    shell: [/bin/sh, -c]\n")
    assert pybuild(ctx / "old.yaml", "-o", tmp_path / "out", "-q").returncode == 0  # asked for: the last status


def test_config_shell_is_the_run_steps_default_and_a_base_shell_is_inherited(pybuild, ctx: Path,
                                                                               tmp_path: Path) -> None:
    """Dockerfile's SHELL: ``config.shell`` is the shell of every run step without its own, and an
    image whose config carries a ``Shell`` (a Docker-built base) gives it to the steps built on it."""
    (ctx / "r.yaml").write_text("version: 1\nsteps:\n  - rootfs: rootfs.tar.gz\n"
                                "  - run: |\n      false\n      echo $0 > /which\n"
                                "config:\n  shell: [/bin/sh, -c]\n")
    base = tmp_path / "base"
    built = pybuild(ctx / "r.yaml", "-o", base, "-q", "-t", "b")
    assert built.returncode == 0, describe(built)
    assert layer_members(base, "b", 1)["which"].size > 0
    (ctx / "derived.yaml").write_text(f"version: 1\nfrom: oci:{base}:b\nsteps:\n"
                                      "  - run: |\n      false\n      echo inherited > /inherited\n")
    derived = pybuild(ctx / "derived.yaml", "-o", tmp_path / "derived", "-q", "-t", "d")
    assert derived.returncode == 0, describe(derived)  # no -e: the base's Shell says so
    assert "inherited" in layer_members(tmp_path / "derived", "d", 2)


def test_tmpfs_and_bind_mounts(pybuild, ctx: Path, tmp_path: Path) -> None:
    """Docker's ``RUN --mount=type=tmpfs`` (a writable scratch directory that no layer keeps) and
    ``--mount=type=bind`` (a context path, read-only, never in the layer); a bind's content is an
    input of the step: changed, the step is built again."""
    (ctx / "src").mkdir()
    (ctx / "src" / "input.txt").write_text("one\n")
    (ctx / "r.yaml").write_text(
        "version: 1\nsteps:\n  - rootfs: rootfs.tar.gz\n"
        "  - run: |\n      echo scratch > /scratch/tmp\n      cat /src/input.txt > /copied\n"
        "      ! touch /src/new 2>/dev/null\n      test -d /scratch\n"
        "    mounts:\n      - tmpfs: /scratch\n      - bind: {source: src, target: /src}\n")
    cache = tmp_path / "cache"
    meta = tmp_path / "meta.json"
    built = pybuild(ctx / "r.yaml", "-o", tmp_path / "a", "-q", "-t", "t", "--cache-dir", cache,
                    "--metadata-file", meta)
    assert built.returncode == 0, describe(built)
    layer = layer_members(tmp_path / "a", "t", 1)
    assert "copied" in layer and not any(n.startswith(("scratch", "src")) for n in layer), sorted(layer)
    assert not (ctx / "src" / "new").exists()
    again = pybuild(ctx / "r.yaml", "-o", tmp_path / "b", "-q", "-t", "t", "--cache-dir", cache,
                    "--metadata-file", meta)
    assert again.returncode == 0 and json.loads(meta.read_text())["steps"][1]["cached"] is True
    (ctx / "src" / "input.txt").write_text("two\n")
    changed = pybuild(ctx / "r.yaml", "-o", tmp_path / "c", "-q", "-t", "t", "--cache-dir", cache,
                      "--metadata-file", meta)
    assert changed.returncode == 0 and json.loads(meta.read_text())["steps"][1]["cached"] is False
    (ctx / "bad.yaml").write_text("version: 1\nsteps:\n  - rootfs: rootfs.tar.gz\n  - run: true\n"
                                  "    mounts:\n      - bind: {source: ../etc, target: /x}\n")
    bad = pybuild(ctx / "bad.yaml", "-o", tmp_path / "d")
    assert bad.returncode == 1 and "inside the build context" in bad.stderr, describe(bad)


def test_a_bind_mount_from_a_stage(pybuild, ctx: Path, tmp_path: Path) -> None:
    """``RUN --mount=type=bind,from=stage,source=/out,target=/in``: a stage's files, read-only, for one
    command, never in the layer; the stage is built first, and its layers key the step."""
    (ctx / "r.yaml").write_text(
        "version: 1\nstages:\n  tools:\n    steps:\n      - rootfs: rootfs.tar.gz\n"
        "      - write: /out/made\n        content: \"from the stage\\n\"\n"
        "steps:\n  - rootfs: rootfs.tar.gz\n"
        "  - run: cat /in/made > /got && ! touch /in/x 2>/dev/null\n"
        "    mounts:\n      - bind: {from: tools, source: /out, target: /in}\n")
    built = pybuild(ctx / "r.yaml", "-o", tmp_path / "out", "-q", "-t", "t")
    assert built.returncode == 0, describe(built)
    layer = layer_members(tmp_path / "out", "t", 1)
    assert "got" in layer and layer["got"].size == len("from the stage\n")
    assert not any(n.startswith("in") for n in layer), sorted(layer)


def test_an_ssh_mount_gives_the_step_the_agent_socket_and_nothing_else(pybuild, ctx: Path,
                                                                        tmp_path: Path) -> None:
    """BuildKit's ``RUN --mount=type=ssh`` with ``--ssh default``: the agent's socket at
    /run/buildkit/ssh_agent.0, named by SSH_AUTH_SOCK; neither reaches the layer nor the cache key."""
    import socket

    sock_path = tmp_path / "agent.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    server.listen(1)
    try:
        (ctx / "r.yaml").write_text(
            "version: 1\nsteps:\n  - rootfs: rootfs.tar.gz\n"
            "  - run: test -S \"$SSH_AUTH_SOCK\" && echo \"$SSH_AUTH_SOCK\" > /checked\n"
            "    mounts:\n      - ssh: default\n")
        built = pybuild(ctx / "r.yaml", "-o", tmp_path / "out", "-q", "-t", "t", "--ssh", "default",
                        env={"SSH_AUTH_SOCK": str(sock_path)})
        assert built.returncode == 0, describe(built)
        layer = layer_members(tmp_path / "out", "t", 1)
        assert "checked" in layer and not any(n.startswith("run/") for n in layer), sorted(layer)
        missing = pybuild(ctx / "r.yaml", "-o", tmp_path / "out2", "-q", "--no-cache")
        assert missing.returncode == 1 and "--ssh default" in missing.stderr, describe(missing)
    finally:
        server.close()


def test_run_without_a_shell_says_so(pybuild, tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text("version: 1\nsteps:\n  - write: /a\n    content: a\n  - run: echo hi\n")
    failed = pybuild(tmp_path / "r.yaml", "-o", tmp_path / "out")
    assert failed.returncode == 1
    assert "steps[1].run: the image has no /bin/sh" in failed.stderr


def test_user_workdir_env_network_none(pybuild, ctx: Path, tmp_path: Path) -> None:
    (ctx / "pybuild.yaml").write_text(
        "version: 1\nsteps:\n  - rootfs: rootfs.tar.gz\n"
        "  - run: |\n      id -u > /tmp/who; pwd > /tmp/where; echo $GREETING > /tmp/env\n"
        "      cat /sys/class/net/*/operstate | wc -l > /tmp/nics\n"
        "    user: nobody\n    workdir: /tmp\n    network: none\n    env: {GREETING: hi}\n"
    )
    out = tmp_path / "out"
    built = pybuild(ctx / "pybuild.yaml", "-o", out, "-q")
    assert built.returncode == 0, describe(built)
    layer = layer_members(out, "latest", 1)
    assert layer["tmp/who"].uid == 65534


def test_secret_and_cache_mounts_never_reach_the_layer(pybuild, ctx: Path, tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cr3t-value\n")
    (ctx / "pybuild.yaml").write_text(
        "version: 1\nsteps:\n  - rootfs: rootfs.tar.gz\n"
        "  - run: |\n      wc -c < /run/secrets/token > /used\n      date > /var/cache/thing/stamp\n"
        "      ls /var/cache/thing | wc -l > /cached-count\n"
        "    mounts:\n      - secret: token\n      - cache: /var/cache/thing\n"
    )
    cache = tmp_path / "cache"
    for name in ("a", "b"):
        built = pybuild(ctx / "pybuild.yaml", "-o", tmp_path / name, "-q", "--secret", f"id=token,src={secret}",
                        "--cache-dir", cache, *(["--no-cache"] if name == "b" else []))
        assert built.returncode == 0, describe(built)
        if name == "a":  # a mount is marked used each time it is bound, so prune --max-age keeps it
            [mount] = (cache / "mounts").iterdir()
            os.utime(mount, (0, 0))
    assert mount.stat().st_mtime > 0
    layer = layer_members(tmp_path / "b", "latest", 1)
    assert "used" in layer and not any(n.startswith(("run/", "var/")) for n in layer)
    for blob in (tmp_path / "b" / "blobs" / "sha256").iterdir():
        data = blob.read_bytes()
        assert b"s3cr3t" not in data and b"s3cr3t" not in (gzip.decompress(data) if data[:2] == b"\x1f\x8b" else b"")
    assert any(cache.rglob("stamp"))  # the cache lives on between builds


def test_unpack_bundle_runs_in_runc_without_editing(pybuild, ctx: Path, tmp_path: Path, runc) -> None:
    (ctx / "pybuild.yaml").write_text(
        "version: 1\nsteps:\n  - rootfs: rootfs.tar.gz\n  - run: echo from-run > /hello\n"
        "config:\n  cmd: [/bin/cat, /hello]\n"
    )
    out = tmp_path / "out"
    assert pybuild(ctx / "pybuild.yaml", "-o", out, "-q").returncode == 0
    bundle = tmp_path / "bundle"
    unpacked = pybuild("unpack", f"{out}:latest", bundle)
    assert unpacked.returncode == 0, describe(unpacked)
    assert json.loads((bundle / "config.json").read_text())["process"]["args"] == ["/bin/cat", "/hello"]
    before = (bundle / "config.json").read_bytes()
    cid = f"pybuild-unpack-{tmp_path.name}"
    ran = subprocess.run(["runc", "--root", str(runc.state), "run", "--bundle", str(bundle), cid],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120, check=False)
    subprocess.run(["runc", "--root", str(runc.state), "delete", "--force", cid], capture_output=True, check=False)
    assert ran.returncode == 0 and ran.stdout.strip() == "from-run", describe(ran)
    assert (bundle / "config.json").read_bytes() == before  # runnable without editing


def test_run_steps_are_cached_and_secrets_do_not_key_them(pybuild, ctx: Path, tmp_path: Path) -> None:
    secret = tmp_path / "token"
    (ctx / "pybuild.yaml").write_text(
        "version: 1\nsteps:\n  - rootfs: rootfs.tar.gz\n"
        "  - run: test -s /run/secrets/token && echo built > /marker\n    mounts:\n      - secret: token\n"
    )
    cache = tmp_path / "cache"
    metas = []
    for n, value in enumerate(("first\n", "second-secret-7f3a9c\n")):
        secret.write_text(value)
        meta = tmp_path / f"m{n}.json"
        built = pybuild(ctx / "pybuild.yaml", "-o", tmp_path / f"out{n}", "-q", "--cache-dir", cache,
                        "--secret", f"id=token,src={secret}", "--metadata-file", meta)
        assert built.returncode == 0, describe(built)
        metas.append(json.loads(meta.read_text()))
    assert [s["cached"] for s in metas[1]["steps"]] == [True, True]
    assert metas[0]["digest"] == metas[1]["digest"]
    for path in cache.rglob("*"):
        if path.is_file():
            assert b"second-secret-7f3a9c" not in path.read_bytes()


def test_only_declared_args_reach_a_run_step(pybuild, ctx: Path, tmp_path: Path) -> None:
    """Docker's ARG rule: a build argument is in a RUN's environment only when the build file
    declares it; an undeclared --build-arg and the undeclared built-ins (TARGETOS, BUILDPLATFORM,
    ...) are not. A built-in declared without a value gets its built-in value."""
    (ctx / "pybuild.yaml").write_text("""\
version: 1
tag: t
args: {GREETING: hello, TARGETARCH: null, GIVEN: null}
steps:
  - rootfs: rootfs.tar.gz
  - run: env | grep -E '^(GREETING|TARGET|BUILD|GIVEN|EXTRA)' | sort > /args.txt
""")
    out = tmp_path / "out"
    built = pybuild(ctx / "pybuild.yaml", "-o", out, "-q", "--build-arg", "GIVEN=yes", "--build-arg", "EXTRA=no")
    assert built.returncode == 0, describe(built)
    blobs = out / "blobs" / "sha256"
    idx = json.loads((out / "index.json").read_text())
    manifest = json.loads((blobs / idx["manifests"][0]["digest"].split(":")[1]).read_bytes())
    with tarfile.open(fileobj=gzip.open(blobs / manifest["layers"][1]["digest"].split(":")[1])) as tf:
        member = tf.extractfile("args.txt")
        assert member is not None
        seen = member.read().decode().splitlines()
    arch = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())["architecture"]
    assert seen == ["GIVEN=yes", "GREETING=hello", f"TARGETARCH={arch}"]
