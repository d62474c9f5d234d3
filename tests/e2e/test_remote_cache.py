"""A layer cache shared through a registry: runners with nothing in common but the registry.

Runner A builds with ``--cache-to``; runner B, with its own HOME and an empty cache directory,
builds with ``--cache-from`` and gets every step from the registry without compressing anything;
a changed file rebuilds only its step and the ones after it; two runners writing the same keys at
once both succeed; a damaged blob in the registry's storage, an unreachable registry and refused
credentials are misses with a warning, never a failed build or a wrong layer. Entries are checked
with skopeo, which knows nothing of pybuild.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import builder
import builder.stage as stagemod
from builder.registry.remote_cache import ARTIFACT_TYPE, TAG_PREFIX

from .registry import Registry, proxy_fixture, registry_fixture, skopeo, unique_repo, write_auth_json

pytestmark = [pytest.mark.tools, pytest.mark.needs("docker-registry", "skopeo", "openssl")]

plain_registry = registry_fixture("plain")
htpasswd_registry = registry_fixture("htpasswd")
make_proxy = proxy_fixture()

RECIPE = """\
version: 1
steps:
  - rootfs: rootfs.tar.gz
  - copy: app/
    to: /opt/app/
  - copy: conf.txt
    to: /etc/app.conf
  - run: "mkdir -p /var/lib/app && cat /etc/app.conf > /var/lib/app/state"
  - remove: [/nothing/here]
  - write: /etc/done
    content: "ok\\n"
"""
STEPS = 6


@pytest.fixture
def cache_ctx(ctx: Path) -> Path:
    (ctx / "recipe.yaml").write_text(RECIPE)
    (ctx / "app").mkdir()
    (ctx / "app" / "main.sh").write_text("#!/bin/sh\necho hi\n")
    (ctx / "app" / "data.bin").write_bytes(os.urandom(1 << 16))
    (ctx / "conf.txt").write_text("mode=1\n")
    return ctx


def runner(tmp_path: Path, name: str, ctx: Path, *args: str, env: dict[str, str] | None = None, out: bool = True,
           ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """A build as a fresh CI runner makes it: its own HOME, cache directory and output (``out``)."""
    home = tmp_path / name
    home.mkdir(exist_ok=True)
    meta = home / "meta.json"
    proc = subprocess.run(
        [sys.executable, "-m", "builder", "build", str(ctx / "recipe.yaml"), *(["-o", str(home / "out")] if out else []),
         "--cache-dir", str(home / "cache"), "--metadata-file", str(meta), *args],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "HOME": str(home), "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})},
    )
    return proc, (json.loads(meta.read_text()) if proc.returncode == 0 else {})


def built(meta: dict[str, Any]) -> list[int]:
    return [s["step"] for s in meta["steps"] if not s["cached"]]


def cache_tags(registry: Registry, repo: str) -> list[str]:
    listed = json.loads(skopeo("list-tags", "--tls-verify=false", f"docker://{registry.host}/{repo}").stdout)
    return sorted(t for t in listed["Tags"] if t.startswith(TAG_PREFIX))


def test_a_fresh_runner_gets_every_step_from_the_registry(plain_registry: Registry, cache_ctx: Path,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = f"{plain_registry.host}/{unique_repo('cache')}"
    a, meta_a = runner(tmp_path, "a", cache_ctx, "--cache-to", repo)
    assert a.returncode == 0, a.stderr
    assert len(built(meta_a)) == STEPS

    # every entry is an OCI artifact that skopeo reads: the step's layer, or none for an empty step
    tags = cache_tags(plain_registry, repo.partition("/")[2])
    assert len(tags) == STEPS
    layers = []
    for tag in tags:
        raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{repo}:{tag}").stdout)
        assert raw["artifactType"] == ARTIFACT_TYPE and raw["annotations"]["dev.pybuild.cache.key"] in tag
        layers += [layer["digest"] for layer in raw["layers"]]
    assert sorted(layers) == sorted(s["layer"] for s in meta_a["steps"] if s["layer"])

    # runner B, in this process: a spy shows that no layer is written, so nothing is compressed
    def no_layers(*args: Any, **kw: Any) -> Any:
        raise AssertionError("runner B built a layer")

    monkeypatch.setattr(stagemod, "write_layer_blob", no_layers)
    home = tmp_path / "b"
    out = home / "out"
    monkeypatch.setenv("HOME", str(home))
    with builder.work_directory(out) as workdir:
        options = builder.BuildOptions(workdir=workdir, cache_dir=home / "cache", cache_from=(repo,))
        result = builder.build(cache_ctx / "recipe.yaml", options)
        builder.write_output("oci", out, result.result, result.tag, options.epoch)
    meta_b = result.metadata()
    assert meta_b["cache"]["misses"] == 0 and meta_b["cache"]["remote"] == {"hits": STEPS, "misses": 0}
    assert {s["cache"] for s in meta_b["steps"]} == {repo}
    assert str(result.result.digest) == meta_a["digest"]


def test_a_changed_file_rebuilds_its_step_and_the_later_ones(plain_registry: Registry, cache_ctx: Path,
                                                             tmp_path: Path) -> None:
    repo = f"{plain_registry.host}/{unique_repo('cache')}"
    a, _ = runner(tmp_path, "a", cache_ctx, "--cache-to", repo)
    assert a.returncode == 0, a.stderr
    (cache_ctx / "conf.txt").write_text("mode=2\n")
    b, meta_b = runner(tmp_path, "b", cache_ctx, "--cache-from", repo)
    assert b.returncode == 0, b.stderr
    assert built(meta_b) == [3, 4, 5, 6]  # the changed copy and every step above it (their parents changed)
    assert [s["remote"] for s in meta_b["steps"]] == ["hit", "hit", "miss", "miss", "miss", "miss"]
    assert "cached (" + repo + ")" in b.stderr
    # --cache-from alone is read-only: runner B added no entry
    assert len(cache_tags(plain_registry, repo.partition("/")[2])) == STEPS


def test_two_runners_writing_the_same_keys_at_once(plain_registry: Registry, cache_ctx: Path, tmp_path: Path) -> None:
    repo = f"{plain_registry.host}/{unique_repo('cache')}"
    procs = []
    for name in ("a", "b"):
        home = tmp_path / name
        home.mkdir()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "builder", "build", "-q", str(cache_ctx / "recipe.yaml"), "-o", str(home / "out"),
             "--cache-dir", str(home / "cache"), "--cache-to", repo],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "HOME": str(home), "PYTHONPATH": os.pathsep.join(sys.path)}))
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert results[0][0] == results[1][0]  # the same manifest digest
    c, meta_c = runner(tmp_path, "c", cache_ctx, "--cache-from", repo)  # every entry verifies: all hits
    assert c.returncode == 0, c.stderr
    assert built(meta_c) == [] and "warning" not in c.stderr


def _blob_data(registry: Registry, digest: str) -> Path:
    hexpart = digest.removeprefix("sha256:")
    return registry.storage / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"


def test_a_damaged_blob_in_the_registry_is_a_miss_never_a_wrong_layer(plain_registry: Registry, cache_ctx: Path,
                                                                       tmp_path: Path) -> None:
    repo = f"{plain_registry.host}/{unique_repo('cache')}"
    a, meta_a = runner(tmp_path, "a", cache_ctx, "--cache-to", repo)
    assert a.returncode == 0, a.stderr
    copied = next(s for s in meta_a["steps"] if s["step"] == 2)["layer"]
    data = _blob_data(plain_registry, copied)
    damaged = bytearray(data.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    data.write_bytes(bytes(damaged))
    b, meta_b = runner(tmp_path, "b", cache_ctx, "--cache-from", repo)
    assert b.returncode == 0, b.stderr
    assert 2 in built(meta_b)
    assert f"warning: cache {repo}" in b.stderr
    assert meta_b["digest"] == meta_a["digest"]  # rebuilt, the same layer as before the damage


def test_a_registry_gone_mid_build_is_a_cold_build_with_one_warning(plain_registry: Registry, cache_ctx: Path,
                                                                     tmp_path: Path, make_proxy: Any) -> None:
    repo_path = unique_repo("cache")
    a, meta_a = runner(tmp_path, "a", cache_ctx, "--cache-to", f"{plain_registry.host}/{repo_path}")
    assert a.returncode == 0, a.stderr
    proxy = make_proxy(plain_registry)
    proxy.add(None, "/manifests/", "reset", times=None)  # the registry answers /v2/, then is gone
    b, meta_b = runner(tmp_path, "b", cache_ctx, "--cache-from", f"{proxy.host}/{repo_path}",
                       "--cache-to", f"{proxy.host}/{repo_path}", "--retry", "0")
    assert b.returncode == 0, b.stderr
    assert len(built(meta_b)) == STEPS and meta_b["digest"] == meta_a["digest"]
    warnings = [line for line in b.stderr.splitlines() if line.startswith("warning: cache")]
    assert len(warnings) == 1, b.stderr
    assert "not used for the rest of this build" in warnings[0]


def test_refused_credentials_are_a_warning_and_the_cache_works_with_them(htpasswd_registry: Registry,
                                                                          cache_ctx: Path, tmp_path: Path) -> None:
    repo = f"{htpasswd_registry.host}/{unique_repo('cache')}"
    (user, password), = htpasswd_registry.users.items()
    authfile = write_auth_json(tmp_path / "auth.json", {htpasswd_registry.host: (user, password)})
    a, _ = runner(tmp_path, "a", cache_ctx, "--cache-to", repo, "--authfile", str(authfile))
    assert a.returncode == 0, a.stderr
    assert password not in a.stderr
    b, meta_b = runner(tmp_path, "b", cache_ctx, "--cache-from", repo, env={"REGISTRY_AUTH_FILE": "/nonexistent"})
    assert b.returncode == 0, b.stderr
    assert len(built(meta_b)) == STEPS and "warning: cache" in b.stderr
    c, meta_c = runner(tmp_path, "c", cache_ctx, "--cache-from", repo, "--authfile", str(authfile))
    assert c.returncode == 0, c.stderr
    assert built(meta_c) == []


def _layer_gets(proxy: Any, digests: set[str]) -> list[str]:
    return [r.path for r in proxy.requests if r.method == "GET" and any(d in r.path for d in digests)]


def test_a_push_to_the_cache_registry_mounts_remote_hits_without_downloading_them(
        plain_registry: Registry, cache_ctx: Path, tmp_path: Path, make_proxy: Any) -> None:
    repo_path = unique_repo("cache")
    a, meta_a = runner(tmp_path, "a", cache_ctx, "--cache-to", f"{plain_registry.host}/{repo_path}")
    assert a.returncode == 0, a.stderr
    layers = {s["layer"] for s in meta_a["steps"] if s["layer"]}
    proxy = make_proxy(plain_registry)  # counts what runner B asks for
    app = f"{proxy.host}/{unique_repo('app')}:1"
    b, meta_b = runner(tmp_path, "b", cache_ctx, "--cache-from", f"{proxy.host}/{repo_path}", "--push", app, out=False)
    assert b.returncode == 0, b.stderr
    assert built(meta_b) == [] and meta_b["digest"] == meta_a["digest"]
    assert _layer_gets(proxy, layers) == []  # not one layer downloaded: the push mounted them all
    assert proxy.count("POST", "mount=") >= len(layers)
    pushed = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{app}").stdout)
    assert {layer["digest"] for layer in pushed["layers"]} == layers

    # a later step that misses reads the filesystem below it: then, and only then, the layers come down
    (cache_ctx / "recipe.yaml").write_text(RECIPE.replace('content: "ok\\n"', 'content: "changed\\n"'))
    proxy.requests.clear()
    c, meta_c = runner(tmp_path, "c", cache_ctx, "--cache-from", f"{proxy.host}/{repo_path}", "--push", app, out=False)
    assert c.returncode == 0, c.stderr
    assert built(meta_c) == [STEPS]
    lower = {s["layer"] for s in meta_a["steps"] if s["layer"] and s["step"] < STEPS}
    assert _layer_gets(proxy, layers - lower) == []  # the changed step's old layer is never fetched
    assert len(_layer_gets(proxy, lower)) == len(lower)  # each lower layer once, for the write step's tree
    layout = tmp_path / "check"
    skopeo("copy", "--src-tls-verify=false", f"docker://{app}", f"oci:{layout}:x")
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:x", str(bundle)], check=True,
                   capture_output=True)
    assert (bundle / "rootfs" / "etc" / "done").read_text() == "changed\n"
    assert (bundle / "rootfs" / "var" / "lib" / "app" / "state").read_text() == "mode=1\n"


def test_a_missing_repository_is_one_warning_and_a_cold_build(plain_registry: Registry, cache_ctx: Path,
                                                               tmp_path: Path) -> None:
    repo = f"{plain_registry.host}/{unique_repo('nothing')}"
    b, meta_b = runner(tmp_path, "b", cache_ctx, "--cache-from", repo)
    assert b.returncode == 0, b.stderr
    assert len(built(meta_b)) == STEPS
    warnings = [line for line in b.stderr.splitlines() if line.startswith("warning: cache")]
    assert warnings == [f"warning: cache {repo}: no such repository (yet): every step is a miss"], b.stderr
