"""Recipe features users migrating from a Dockerfile reach for, through the CLI (in process).

Each test states the Dockerfile rule it follows, in its docstring.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from builder.cli import main


def _build(ctx: Path, recipe: str, *args: str) -> tuple[int, Path]:
    (ctx / "pybuild.yaml").write_text(recipe)
    out = ctx / "out"
    return main([str(ctx / "pybuild.yaml"), "-o", str(out), "-q", *args]), out


def _manifest(out: Path) -> dict[str, Any]:
    blobs = out / "blobs" / "sha256"
    idx = json.loads((out / "index.json").read_text())
    manifest: dict[str, Any] = json.loads((blobs / idx["manifests"][0]["digest"].split(":")[1]).read_bytes())
    return manifest


def _config(out: Path) -> dict[str, Any]:
    blobs = out / "blobs" / "sha256"
    config: dict[str, Any] = json.loads((blobs / _manifest(out)["config"]["digest"].split(":")[1]).read_bytes())
    return config


def _file(out: Path, layer: int, name: str) -> bytes:
    blobs = out / "blobs" / "sha256"
    data = gzip.decompress((blobs / _manifest(out)["layers"][layer]["digest"].split(":")[1]).read_bytes())
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        member = tf.extractfile(name)
        assert member is not None
        return member.read()


def test_default_and_alternative_values(tmp_path: Path) -> None:
    """Dockerfile's ``${VAR:-word}`` (word when VAR is unset or empty) and ``${VAR:+word}`` (word
    when VAR is set and not empty, else nothing); the word may use other args."""
    recipe = """\
version: 1
args: {SET: "yes", EMPTY: "", NAME: app}
steps:
  - write: /out
    content: "${SET:-no} ${UNSET:-${NAME}-default} ${EMPTY:-was-empty} [${SET:+on}] [${UNSET:+on}]\\n"
"""
    code, out = _build(tmp_path, recipe)
    assert code == 0
    assert _file(out, 0, "out") == b"yes app-default was-empty [on] []\n"


def test_build_arg_without_a_value_takes_it_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    """``docker build --build-arg NAME`` uses the environment's NAME; unset, the arg keeps its default."""
    recipe = 'version: 1\nargs: {PROXY: none, OTHER: kept}\nsteps:\n  - write: /out\n    content: "${PROXY} ${OTHER}"\n'
    monkeypatch.setenv("PROXY", "http://proxy:3128")
    monkeypatch.delenv("OTHER", raising=False)
    code, out = _build(tmp_path, recipe, "--build-arg", "PROXY", "--build-arg", "OTHER")
    assert code == 0
    assert _file(out, 0, "out") == b"http://proxy:3128 kept"


@pytest.mark.parametrize("text", ["${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-x}}}}}}}}}", "${A:-x"])
def test_bad_or_deep_references_are_one_line_errors(tmp_path: Path, text: str, capsys) -> None:
    code, out = _build(tmp_path, f'version: 1\nsteps:\n  - write: /out\n    content: "{text}"\n')
    assert code == 1 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pybuild: error:") and "pybuild.yaml:4" in err[0], err


def test_config_author_healthcheck_onbuild_and_shell(tmp_path: Path) -> None:
    """Dockerfile's MAINTAINER (the config's ``author``), HEALTHCHECK, ONBUILD and SHELL land where
    Docker's image config has them: ``Healthcheck`` with durations in nanoseconds, a shell-string
    test as CMD-SHELL, ``OnBuild`` as written, ``Shell`` as an argv."""
    recipe = """\
version: 1
steps:
  - write: /f
    content: "x"
config:
  author: "Jane Doe <jane@example.com>"
  shell: [/bin/bash, -o, pipefail, -c]
  healthcheck:
    test: curl -f http://localhost/ || exit 1
    interval: 1m30s
    timeout: 5s
    start_period: 500ms
    retries: 3
  onbuild: ["RUN make", "COPY . /src"]
"""
    code, out = _build(tmp_path, recipe)
    assert code == 0
    config = _config(out)
    assert config["author"] == "Jane Doe <jane@example.com>"
    c = config["config"]
    assert c["Shell"] == ["/bin/bash", "-o", "pipefail", "-c"]
    assert c["Healthcheck"] == {"Test": ["CMD-SHELL", "curl -f http://localhost/ || exit 1"],
                                "Interval": 90_000_000_000, "Timeout": 5_000_000_000,
                                "StartPeriod": 500_000_000, "Retries": 3}
    assert c["OnBuild"] == ["RUN make", "COPY . /src"]
    code, out = _build(tmp_path, "version: 1\nsteps:\n  - write: /f\n    content: x\n"
                                 "config:\n  healthcheck: {test: [curl, -f, http://x/]}\n")
    assert code == 0 and _config(out)["config"]["Healthcheck"] == {"Test": ["CMD", "curl", "-f", "http://x/"]}
    code, out = _build(tmp_path, "version: 1\nsteps:\n  - write: /f\n    content: x\n"
                                 "config:\n  healthcheck: {test: none}\n")
    assert code == 0 and _config(out)["config"]["Healthcheck"] == {"Test": ["NONE"]}


@pytest.mark.parametrize("bad", ["interval: soon", "retries: many", "tset: x"])
def test_a_bad_healthcheck_is_one_located_line(tmp_path: Path, bad: str, capsys) -> None:
    code, _out = _build(tmp_path, "version: 1\nsteps:\n  - write: /f\n    content: x\n"
                                 f"config:\n  healthcheck:\n    test: [true]\n    {bad}\n")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "pybuild.yaml:8" in err[0], err


@pytest.mark.parametrize("name", [".dockerignore", ".pybuildignore"])
def test_the_context_ignore_file_filters_every_copy(tmp_path: Path, name: str, capsys) -> None:
    """A ``.dockerignore`` (or pybuild's own ``.pybuildignore``, which wins) at the context root:
    what it matches is left out of every copy from the context, an exception brings a path back,
    a glob does not match ignored paths, and naming an ignored source is an error, as in Docker."""
    for rel in ("app/main.py", "app/secret.env", "app/cache/x.pyc", "app/cache/keep.txt", "notes.txt",
                "build/out.bin"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    (tmp_path / name).write_text("# comments and blank lines are skipped\n\n**/*.env\n/app/cache\n"
                                 "!app/cache/keep.txt\nbuild\n")
    if name == ".pybuildignore":
        (tmp_path / ".dockerignore").write_text("app\n")  # not read: .pybuildignore is there
    recipe = 'version: 1\nsteps:\n  - copy: app/\n    to: /app/\n  - copy: "*.txt"\n    to: /t/\n'
    code, out = _build(tmp_path, recipe)
    assert code == 0, capsys.readouterr().err
    blobs = out / "blobs" / "sha256"
    data = gzip.decompress((blobs / _manifest(out)["layers"][0]["digest"].split(":")[1]).read_bytes())
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        names = sorted(m.name for m in tf)
    assert names == ["app", "app/cache", "app/cache/keep.txt", "app/main.py"]
    code, _out = _build(tmp_path, "version: 1\nsteps:\n  - copy: build/out.bin\n    to: /x\n")
    err = capsys.readouterr().err
    assert code == 1 and f"'build/out.bin' is excluded by the context's {name}" in err


def test_stage_config_and_args(tmp_path: Path) -> None:
    """A Dockerfile stage has its own ENV/LABEL/CMD (inherited by ``FROM stage``) and its own ARGs
    (the global ones visible, a stage's default over them, ``--build-arg`` over both). The same with
    ``config:`` and ``args:`` under a stage; ``--target`` gives the stage's own config."""
    recipe = """\
version: 1
args: {WHO: global, KEPT: g}
stages:
  base:
    args: {WHO: stage-default, ONLY: "${KEPT}-only"}
    steps:
      - write: /who
        content: "${WHO} ${ONLY}"
    config:
      env: {FROM_STAGE: "1"}
      labels: {stage: base}
      cmd: [/bin/stage]
from: base
steps:
  - write: /final
    content: "${WHO}"
config:
  labels: {final: "yes"}
"""
    code, out = _build(tmp_path, recipe)
    assert code == 0
    assert _file(out, 0, "who") == b"stage-default g-only"
    assert _file(out, 1, "final") == b"global"  # the stage's args stay in the stage
    c = _config(out)["config"]
    assert "FROM_STAGE=1" in c["Env"] and c["Labels"] == {"stage": "base", "final": "yes"}
    assert c["Cmd"] == ["/bin/stage"]
    code, out = _build(tmp_path, recipe, "--build-arg", "WHO=cli", "--target", "base")
    assert code == 0
    assert _file(out, 0, "who") == b"cli g-only"
    assert _config(out)["config"]["Labels"] == {"stage": "base"}


@pytest.fixture
def http_files(tmp_path: Path):
    """A plain HTTP server on 127.0.0.1 serving ``tmp_path/www``; returns (base URL, root, GET paths)."""
    import functools
    import http.server
    import threading

    root = tmp_path / "www"
    root.mkdir()
    seen: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root, seen
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_a_url_with_a_pinned_checksum(tmp_path: Path, http_files, capsys) -> None:
    """Dockerfile's ``ADD --checksum=sha256:... URL DEST``: the file is accepted only with that
    digest, is mode 0600 unless ``mode:`` says, is downloaded once (kept by digest in the cache),
    and a wrong checksum or a 404 is one located error line."""
    import hashlib

    base, www, seen = http_files
    data = b"#!/bin/sh\necho tool\n" * 100
    (www / "tool.sh").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    recipe = (f"version: 1\nsteps:\n  - fetch: {base}/tool.sh\n    sha256: {digest}\n    to: /usr/bin/\n"
              f"  - fetch: {base}/tool.sh\n    sha256: sha256:{digest}\n    to: /opt/t\n    mode: '0755'\n")
    cache = str(tmp_path / "cache")
    code, out = _build(ctx, recipe, "--cache-dir", cache)
    assert code == 0, capsys.readouterr().err
    assert _file(out, 0, "usr/bin/tool.sh") == data and _file(out, 1, "opt/t") == data
    blobs = out / "blobs" / "sha256"
    raw = gzip.decompress((blobs / _manifest(out)["layers"][1]["digest"].split(":")[1]).read_bytes())
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        assert tf.getmember("opt/t").mode == 0o755
    raw = gzip.decompress((blobs / _manifest(out)["layers"][0]["digest"].split(":")[1]).read_bytes())
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        assert tf.getmember("usr/bin/tool.sh").mode == 0o600
    assert seen == ["/tool.sh"]  # the second step found it in the blob store
    code, _out = _build(ctx, recipe, "--cache-dir", cache, "--no-cache")
    assert code == 0 and seen == ["/tool.sh"]  # a rebuild of the steps reads the stored file, re-hashed
    capsys.readouterr()
    (www / "tool.sh").write_bytes(data + b"tampered\n")
    code, _out = _build(ctx, recipe, "--cache-dir", str(tmp_path / "other-cache"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "pybuild.yaml:3" in err[0] and "the recipe says" in err[0], err
    code, _out = _build(ctx, recipe.replace("tool.sh", "missing.sh"), "--cache-dir", str(tmp_path / "c3"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "404" in err[0], err
