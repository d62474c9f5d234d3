"""The flags and commands Buildah, Kaniko, skopeo and podman users reach for, through the real CLI.

``--label``/``--env``/``--annotation``/``--iidfile``/``-f``/``--target``/``--secret env=`` on a
build, ``pybuild ls``, and against real registries ``login``/``logout``, ``--authfile``,
``--creds`` and ``--retry``. What the flags change is read back with skopeo, which knows nothing
of pybuild, and credentials written by ``pybuild login`` are used by skopeo as they are.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from .registry import (
    USER,
    Registry,
    assert_no_secrets,
    assert_user_error,
    proxy_fixture,
    registry_fixture,
    secret_strings,
    skopeo,
    unique_repo,
)
from .runtimes import describe

htpasswd_registry = registry_fixture("htpasswd")
token_registry = registry_fixture("token")
plain_registry = registry_fixture("plain")
make_proxy = proxy_fixture()

RECIPE = """\
version: 1
steps:
  - rootfs: rootfs.tar.gz
  - write: /etc/greeting
    content: "hi\\n"
config:
  env: {MODE: recipe}
  labels: {org.example.from: recipe, org.example.keep: "yes"}
"""

STAGED = """\
version: 1
stages:
  tools:
    from: scratch
    steps:
      - rootfs: rootfs.tar.gz
      - write: /tools/made-in-tools
        content: "tools\\n"
steps:
  - rootfs: rootfs.tar.gz
  - copy: /tools/made-in-tools
    from: tools
    to: /opt/
  - write: /final-only
    content: "final\\n"
config:
  cmd: [/bin/cat, /opt/made-in-tools]
"""


def skopeo_config(layout: Path, tag: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(skopeo("inspect", "--config", f"oci:{layout}:{tag}").stdout)
    return config


def skopeo_manifest(layout: Path, tag: str) -> tuple[dict[str, Any], str]:
    raw = skopeo("inspect", "--raw", f"oci:{layout}:{tag}").stdout
    return json.loads(raw), raw


pytestmark = [pytest.mark.tools, pytest.mark.needs("skopeo")]


def test_label_env_annotation_and_iidfile_as_skopeo_reads_them(pybuild, ctx: Path, tmp_path: Path) -> None:
    (ctx / "pybuild.yaml").write_text(RECIPE)
    out, iid, digest_file = tmp_path / "out", tmp_path / "iid", tmp_path / "digest"
    built = pybuild(ctx / "pybuild.yaml", "-o", out, "-q", "--label", "org.example.from=cli", "--label", "new=1",
                    "--env", "MODE=cli", "--env", "EXTRA=a=b", "--annotation", "org.example.note=from the cli",
                    "--iidfile", iid, "--digest-file", digest_file)
    assert built.returncode == 0, describe(built)
    config = skopeo_config(out, "latest")["config"]
    assert config["Labels"] == {"org.example.from": "cli", "org.example.keep": "yes", "new": "1"}
    assert "MODE=cli" in config["Env"] and "EXTRA=a=b" in config["Env"]
    assert not any(e == "MODE=recipe" for e in config["Env"])
    manifest, _ = skopeo_manifest(out, "latest")
    assert manifest["annotations"]["org.example.note"] == "from the cli"
    raw_config = skopeo("inspect", "--raw", "--config", f"oci:{out}:latest").stdout.encode()
    assert iid.read_text().strip() == "sha256:" + hashlib.sha256(raw_config).hexdigest()
    assert manifest["config"]["digest"] == iid.read_text().strip()
    assert digest_file.read_text().strip() == built.stdout.strip() != iid.read_text().strip()
    shown = pybuild("inspect", "--json", out)
    assert json.loads(shown.stdout)["annotations"] == {"org.example.note": "from the cli"}
    assert "  org.example.note=from the cli" in pybuild("inspect", out).stdout.splitlines()
    meta = tmp_path / "meta.json"
    again = pybuild(ctx / "pybuild.yaml", "-o", out, "-q", "--annotation", "a.b=c", "--metadata-file", meta)
    assert again.returncode == 0 and json.loads(meta.read_text())["annotations"] == {"a.b": "c"}
    bad = pybuild(ctx / "pybuild.yaml", "-o", tmp_path / "bad", "--label", "novalue")
    assert bad.returncode == 2 and "--label expects KEY=VALUE" in bad.stderr and not (tmp_path / "bad").exists()


def test_file_flag_takes_the_context_as_its_argument(pybuild, ctx: Path, tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "image.yaml").write_text(RECIPE)  # rootfs.tar.gz is in ctx, not beside the recipe
    out = tmp_path / "out"
    built = pybuild("-f", recipes / "image.yaml", ctx, "-o", out, "-q")
    assert built.returncode == 0, describe(built)
    same = pybuild("build", "--file", recipes / "image.yaml", "--context", ctx, "-o", tmp_path / "out2", "-q")
    assert same.returncode == 0 and same.stdout == built.stdout, describe(same)
    both = pybuild("-f", recipes / "image.yaml", ctx, "--context", ctx, "-o", tmp_path / "out3")
    assert both.returncode == 2 and "context" in both.stderr


def test_target_makes_the_image_of_one_stage(pybuild, ctx: Path, tmp_path: Path) -> None:
    (ctx / "pybuild.yaml").write_text(STAGED)
    out = tmp_path / "out"
    built = pybuild(ctx / "pybuild.yaml", "-o", out, "--target", "tools", "-t", "tools")
    assert built.returncode == 0, describe(built)
    assert "== stage tools (--target)" in built.stderr and "final image" not in built.stderr
    config = skopeo_config(out, "tools")
    assert [h.get("created_by", "") for h in config["history"]][-1].startswith("pybuild write /tools/made-in-tools")
    assert len(config["rootfs"]["diff_ids"]) == 2
    assert "Cmd" not in config["config"]  # the recipe's config: is the final image's
    final = pybuild(ctx / "pybuild.yaml", "-o", out, "-q", "-t", "final")
    assert final.returncode == 0, describe(final)
    assert len(skopeo_config(out, "final")["rootfs"]["diff_ids"]) == 3
    missing = pybuild(ctx / "pybuild.yaml", "-o", tmp_path / "none", "--target", "tool")
    assert "no stage named 'tool' (stages: tools)" in assert_user_error(missing)
    assert not (tmp_path / "none").exists()


def test_ls_lists_tags_digests_and_platforms(pybuild, ctx: Path, tmp_path: Path) -> None:
    (ctx / "pybuild.yaml").write_text(RECIPE)
    out = tmp_path / "out"
    one = pybuild(ctx / "pybuild.yaml", "-o", out, "-q", "-t", "one", "--platform", "linux/amd64")
    many = pybuild(ctx / "pybuild.yaml", "-o", out, "-q", "-t", "many", "--platform", "linux/amd64",
                   "--platform", "linux/arm64/v8")
    assert one.returncode == 0 and many.returncode == 0, describe(many)
    listed = pybuild("ls", out, "--json")
    assert listed.returncode == 0, describe(listed)
    rows = {row["tag"]: row for row in map(json.loads, listed.stdout.splitlines())}
    assert rows["one"]["digest"] == one.stdout.strip() and rows["one"]["platforms"] == ["linux/amd64"]
    assert rows["many"]["digest"] == many.stdout.strip()
    assert rows["many"]["platforms"] == ["linux/amd64", "linux/arm64/v8"]
    text = pybuild("ls", out)
    assert any(line.startswith("many ") and many.stdout.strip() in line for line in text.stdout.splitlines())
    assert "not an OCI image layout" in assert_user_error(pybuild("ls", ctx))


@pytest.mark.needs("runc", root=True)
def test_secret_from_an_environment_variable(pybuild, ctx: Path, tmp_path: Path) -> None:
    (ctx / "pybuild.yaml").write_text(
        "version: 1\nsteps:\n  - rootfs: rootfs.tar.gz\n"
        "  - run: test \"$(tr a-z A-Z < /run/secrets/tok)\" = ENV-SECRET-VALUE && echo ok > /checked\n"
        "    mounts:\n      - secret: tok\n"
    )
    out = tmp_path / "out"
    built = pybuild(ctx / "pybuild.yaml", "-o", out, "--secret", "id=tok,env=MY_TOKEN", env={"MY_TOKEN": "env-secret-value"})
    assert built.returncode == 0, describe(built)
    for blob in (out / "blobs" / "sha256").iterdir():
        assert b"env-secret-value" not in blob.read_bytes()
    unset = pybuild(ctx / "pybuild.yaml", "-o", tmp_path / "o2", "--secret", "id=tok,env=NOT_SET_ANYWHERE")
    assert "NOT_SET_ANYWHERE is not set" in assert_user_error(unset)
    both = pybuild(ctx / "pybuild.yaml", "-o", tmp_path / "o3", "--secret", "id=tok,env=A,src=/etc/hostname")
    assert both.returncode == 2 and "id=ID,env=VAR" in both.stderr


# --------------------------------------------------------------------------------------------
# registries: login, logout, --authfile, --creds, --retry


@pytest.fixture
def image(pybuild, ctx: Path, tmp_path: Path) -> Path:
    (ctx / "pybuild.yaml").write_text(RECIPE)
    out = tmp_path / "image"
    assert pybuild(ctx / "pybuild.yaml", "-o", out, "-q", "-t", "v1").returncode == 0
    return out


@pytest.mark.needs("docker-registry", "openssl")
@pytest.mark.parametrize("flavour", ["htpasswd", "token"])
def test_login_writes_what_skopeo_and_push_use_and_logout_forgets_it(
    request, flavour: str, image: Path, pybuild, tmp_path: Path
) -> None:
    registry: Registry = request.getfixturevalue(f"{flavour}_registry")
    env = {"XDG_RUNTIME_DIR": str(tmp_path / "run")}  # the default file: $XDG_RUNTIME_DIR/containers/auth.json
    wrong = pybuild("login", registry.host, "-u", USER, "--password-stdin", input="wrong-password\n", env=env)
    assert_user_error(wrong, "a login the registry refuses")
    auth = tmp_path / "run" / "containers" / "auth.json"
    assert not auth.exists(), "refused credentials must not be written"
    ok = pybuild("login", registry.host, "-u", USER, "--password-stdin", input=registry.password + "\n", env=env)
    assert ok.returncode == 0 and "Login Succeeded" in ok.stderr, describe(ok)
    assert_no_secrets(ok, secret_strings(registry.password))
    assert auth.stat().st_mode & 0o077 == 0
    assert registry.host in json.loads(auth.read_text())["auths"]
    repo = unique_repo("login")
    pushed = pybuild("push", f"{image}:v1", registry.ref(repo, "v1"), env=env)
    assert pushed.returncode == 0, describe(pushed)
    seen = skopeo("inspect", "--tls-verify=false", "--authfile", auth, f"docker://{registry.ref(repo, 'v1')}")
    assert json.loads(seen.stdout)["Digest"] == pushed.stdout.strip()
    out = pybuild("logout", registry.host, env=env)
    assert out.returncode == 0, describe(out)
    assert json.loads(auth.read_text())["auths"] == {}
    assert_user_error(pybuild("push", f"{image}:v1", registry.ref(repo, "v2"), env=env), "after logout")
    assert "not logged in" in assert_user_error(pybuild("logout", registry.host, env=env))


@pytest.mark.needs("docker-registry", "openssl")
def test_authfile_and_creds_flags(htpasswd_registry: Registry, image: Path, pybuild, tmp_path: Path) -> None:
    registry = htpasswd_registry
    authfile = tmp_path / "elsewhere.json"
    login = pybuild("login", registry.host, "--authfile", authfile, "-u", USER, "-p", registry.password)
    assert login.returncode == 0, describe(login)
    repo = unique_repo("flags")
    assert_user_error(pybuild("push", f"{image}:v1", registry.ref(repo, "v0")), "no credentials anywhere")
    with_file = pybuild("push", f"{image}:v1", registry.ref(repo, "v1"), "--authfile", authfile)
    assert with_file.returncode == 0, describe(with_file)
    with_creds = pybuild("pull", registry.ref(repo, "v1"), "-o", tmp_path / "pulled", "-q",
                         "--creds", f"{USER}:{registry.password}")
    assert with_creds.returncode == 0 and with_creds.stdout == with_file.stdout, describe(with_creds)
    assert_no_secrets(with_creds, secret_strings(registry.password))
    wrong = pybuild("pull", registry.ref(repo, "v1"), "-o", tmp_path / "p2", "--creds", f"{USER}:nope")
    assert_user_error(wrong, "--creds with a wrong password")
    missing = pybuild("push", f"{image}:v1", registry.ref(repo, "v1"), "--authfile", tmp_path / "absent.json")
    assert "--authfile: no such file" in assert_user_error(missing)


@pytest.mark.needs("docker-registry")
def test_retry_flag_bounds_the_attempts(plain_registry: Registry, make_proxy, image: Path, pybuild) -> None:
    proxy = make_proxy(plain_registry)
    repo = unique_repo("retry")
    proxy.add("PUT", r"/manifests/", "status", times=2, status=503)
    once = pybuild("push", f"{image}:v1", proxy.ref(repo, "v1"), "--retry", "0")
    assert "503" in assert_user_error(once, "--retry 0 gives up at the first 503")
    assert proxy.count("PUT", r"/manifests/") == 1
    again = pybuild("push", f"{image}:v1", proxy.ref(repo, "v1"), "--retry", "2")
    assert again.returncode == 0, describe(again)


# --------------------------------------------------------------------------------------------
# inspect, push, unpack take what build writes, and skopeo's prefixes


@pytest.mark.needs("docker-registry")
def test_inspect_push_and_unpack_take_archives_and_prefixes(
    plain_registry: Registry, pybuild, ctx: Path, tmp_path: Path
) -> None:
    (ctx / "pybuild.yaml").write_text(RECIPE + "  cmd: [/bin/cat, /etc/greeting]\n")
    digests = {}
    for fmt, name in [("oci", "layout"), ("oci-archive", "image.oci.tar"), ("docker-archive", "image.docker.tar")]:
        built = pybuild(ctx / "pybuild.yaml", "-o", tmp_path / name, "--format", fmt, "-q", "-t", "app:1",
                        "--platform", "linux/amd64")
        assert built.returncode == 0, describe(built)
        digests[name] = built.stdout.strip()
    assert len(set(digests.values())) == 1  # the same image in all three
    digest = digests["layout"]
    layout, oci_tar, docker_tar = tmp_path / "layout", tmp_path / "image.oci.tar", tmp_path / "image.docker.tar"
    for source in [f"{layout}:app:1", f"oci:{layout}:app:1", str(oci_tar), f"oci-archive:{oci_tar}:app:1",
                   str(docker_tar), f"docker-archive:{docker_tar}"]:
        shown = pybuild("inspect", "--json", source)
        assert shown.returncode == 0, describe(shown)
        assert json.loads(shown.stdout)["digest"] == digest, source
    repo = unique_repo("archive")
    pushed = pybuild("push", f"oci-archive:{oci_tar}", plain_registry.ref(repo, "v1"))
    assert pushed.returncode == 0 and pushed.stdout.strip() == digest, describe(pushed)
    assert plain_registry.digest(repo, "v1") == digest
    bundle = tmp_path / "bundle"
    unpacked = pybuild("unpack", docker_tar, bundle)
    assert unpacked.returncode == 0, describe(unpacked)
    assert (bundle / "rootfs" / "etc" / "greeting").read_text() == "hi\n"
    assert json.loads((bundle / "config.json").read_text())["process"]["args"] == ["/bin/cat", "/etc/greeting"]
    missing = pybuild("inspect", f"oci-archive:{tmp_path / 'absent.tar'}")
    assert "no such archive" in assert_user_error(missing)
    wrong_tag = pybuild("inspect", f"{oci_tar}:v9")
    line = assert_user_error(wrong_tag)
    assert str(oci_tar) in line and "tags present: 'app:1'" in line and "pybuild-open" not in line


@pytest.mark.needs("docker-registry")
def test_inspect_a_registry_image_fetches_no_layer(plain_registry: Registry, make_proxy, pybuild, ctx: Path,
                                                   tmp_path: Path) -> None:
    (ctx / "pybuild.yaml").write_text(RECIPE)
    repo = unique_repo("inspect")
    out = tmp_path / "out"
    built = pybuild(ctx / "pybuild.yaml", "-o", out, "-q", "--platform", "linux/amd64", "--platform", "linux/arm64",
                    "--push", plain_registry.ref(repo, "multi"))
    assert built.returncode == 0, describe(built)
    local = json.loads(pybuild("inspect", "--json", out).stdout)
    proxy = make_proxy(plain_registry)
    for source in (proxy.ref(repo, "multi"), f"docker://{proxy.ref(repo, 'multi')}"):
        shown = pybuild("inspect", "--json", source)
        assert shown.returncode == 0, describe(shown)
        remote = json.loads(shown.stdout)
        assert remote["digest"] == local["digest"] == built.stdout.strip()
        assert [m["layers"] for m in remote["manifests"]] == [m["layers"] for m in local["manifests"]]
        assert [m["image_id"] for m in remote["manifests"]] == [m["image_id"] for m in local["manifests"]]
    layer_digests = {la["digest"].split(":")[1] for m in local["manifests"] for la in m["layers"]}
    fetched = {r.path.rsplit(":", 1)[-1] for r in proxy.seen("GET", "/blobs/")}
    assert fetched and not fetched & layer_digests  # configs only
    assert "docker://" in assert_user_error(pybuild("inspect", "no-such-dir:v1"))
