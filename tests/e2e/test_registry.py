"""pybuild and real registries: push, pull, ``from:`` a registry image, ``--push``, credentials.

Each registry is Debian's ``docker-registry`` on 127.0.0.1 (see ``registry.py``): ``plain`` (no
auth), ``htpasswd`` (Basic, bcrypt) and ``token`` (Bearer JWTs from a token server in the tests).
What pybuild sends is checked with skopeo, which knows nothing of pybuild; what pybuild pulls
was put there by skopeo (from a umoci-made layout) and is checked with oci-check --strict.

The ``test_harness_*`` tests check the registries themselves with skopeo alone: when they fail,
the machine or the fixtures are broken, not pybuild.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .registry import (
    USER,
    Registry,
    assert_no_secrets,
    assert_user_error,
    b64url_decode,
    docker_config_dir,
    http_get,
    layout_blob,
    layout_descriptor,
    layout_manifest,
    proxy_fixture,
    registry_fixture,
    secret_strings,
    sha256_digest,
    skopeo,
    unique_repo,
    write_auth_json,
)
from .runtimes import Runc, describe, umoci_image

pytestmark = [pytest.mark.tools, pytest.mark.needs("docker-registry", "skopeo", "openssl")]

plain_registry = registry_fixture("plain")
htpasswd_registry = registry_fixture("htpasswd")
token_registry = registry_fixture("token")
make_proxy = proxy_fixture()

GREETING = "hello from a pushed image"
CMD = ["/bin/sh", "-c", f"echo '{GREETING}'; id -u"]

RECIPE = """\
version: 1
steps:
  - rootfs: rootfs.tar.gz
  - write: /etc/greeting
    content: "pushed by pybuild\\n"
config:
  cmd: ["/bin/cat", "/etc/greeting"]
"""

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MANIFEST_TYPES = (OCI_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json")
INDEX_TYPES = (OCI_INDEX, "application/vnd.docker.distribution.manifest.list.v2+json")


# --------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture
def registries(request: pytest.FixtureRequest) -> Callable[[str], Registry]:
    """``registries("token")`` → that session registry (so tests can be parametrized by flavour)."""
    return lambda flavour: request.getfixturevalue(f"{flavour}_registry")


@pytest.fixture(scope="module")
def umoci_layout(tmp_path_factory: pytest.TempPathFactory, busybox_rootfs_tar: Path, need) -> Path:
    """An OCI layout made without pybuild (umoci), tag ``v1``: what skopeo puts into registries."""
    need("umoci")
    return umoci_image(tmp_path_factory.mktemp("umoci"), busybox_rootfs_tar, "v1", CMD)


@pytest.fixture
def built(pybuild, ctx: Path, tmp_path: Path):
    """``built(tag="v1", *args, recipe=RECIPE)`` → (OUT, digest printed by the build)."""

    def _built(tag: str = "v1", *args: str, recipe: str = RECIPE, out: Path | None = None,
               env: dict[str, str] | None = None) -> tuple[Path, str]:  # fmt: skip
        out = out if out is not None else tmp_path / f"out-{tag}"
        (ctx / "pybuild.yaml").write_text(recipe)
        result = pybuild(ctx / "pybuild.yaml", "-o", out, "-t", tag, *args, env=env)
        assert result.returncode == 0, describe(result)
        digest = result.stdout.strip().splitlines()[-1].strip()
        assert digest.startswith("sha256:"), describe(result)
        return out, digest

    return _built


def auth_env(kind: str, tmp_path: Path, host: str, user: str, password: str) -> dict[str, str]:
    """Credentials for ``host`` through ``$DOCKER_CONFIG`` (``docker``) or ``$REGISTRY_AUTH_FILE`` (``authfile``)."""
    if kind == "docker":
        return {"DOCKER_CONFIG": str(docker_config_dir(tmp_path / "docker-config", {host: (user, password)}))}
    return {"REGISTRY_AUTH_FILE": str(write_auth_json(tmp_path / "containers" / "auth.json", {host: (user, password)}))}


def leaked(registry: Registry, *extra: str) -> list[str]:
    """Every string that must never show up in pybuild's output for this registry."""
    found = secret_strings(registry.password, *extra)
    if registry.token_server is not None:
        found += registry.token_server.tokens()
    return found


def assert_oci_check(oci_check, layout: Path, ref: str) -> None:
    result = oci_check(layout, strict=True, ref=ref)
    assert result.returncode == 0, describe(result)


# --------------------------------------------------------------------------------------------
# the harness: registries, token server and proxy, with skopeo only


@pytest.mark.parametrize("flavour", ["plain", "htpasswd", "token"])
def test_harness_skopeo_round_trip(registries, flavour: str, umoci_layout: Path, tmp_path: Path) -> None:
    registry = registries(flavour)
    repo = unique_repo("harness")
    local = sha256_digest(skopeo("inspect", "--raw", f"oci:{umoci_layout}:v1").stdout.encode())
    assert registry.copy_in(f"oci:{umoci_layout}:v1", repo, "v1") == local
    assert registry.inspect(repo, "v1")["Digest"] == local
    back = tmp_path / "back"
    skopeo("copy", "--src-tls-verify=false", *registry.skopeo_creds("src"), f"docker://{registry.ref(repo, 'v1')}",
           f"oci:{back}:v1")  # fmt: skip
    assert sha256_digest(skopeo("inspect", "--raw", f"oci:{back}:v1").stdout.encode()) == local
    methods = {(r.method, r.status) for r in registry.requests()}
    assert ("PUT", 201) in methods, registry.log_tail()  # the access log is readable


@pytest.mark.parametrize("flavour", ["htpasswd", "token"])
def test_harness_auth_is_enforced(registries, flavour: str, umoci_layout: Path) -> None:
    registry = registries(flavour)
    repo = unique_repo("harness")
    registry.copy_in(f"oci:{umoci_layout}:v1", repo, "v1")
    ref = f"docker://{registry.ref(repo, 'v1')}"
    wrong = skopeo("inspect", "--tls-verify=false", "--creds", f"{USER}:not-the-password", ref, check=False)
    assert wrong.returncode != 0 and "unauthorized" in wrong.stderr.lower(), describe(wrong)
    anonymous = skopeo("inspect", "--tls-verify=false", "--no-creds", ref, check=False)
    assert anonymous.returncode != 0, describe(anonymous)
    status, headers, _ = http_get(f"{registry.url}/v2/")
    challenge = {k.lower(): v for k, v in headers.items()}["www-authenticate"]
    assert status == 401
    if flavour == "token":
        assert registry.token_server is not None
        assert challenge.startswith(f'Bearer realm="{registry.token_server.realm}"'), challenge
    else:
        assert challenge.startswith("Basic"), challenge


def test_harness_token_server_issues_verifiable_jwts(token_registry: Registry) -> None:
    server = token_registry.token_server
    assert server is not None
    creds = base64.b64encode(f"{USER}:{token_registry.password}".encode()).decode()
    url = f"{server.realm}?service=pybuild-test&scope=repository:harness/x:pull,push"
    status, _, body = http_get(url, headers={"Authorization": f"Basic {creds}"})
    assert status == 200, body
    answer = json.loads(body)
    assert answer["token"] == answer["access_token"] and answer["expires_in"] == server.expires_in
    header_b64, claims_b64, _ = answer["token"].split(".")
    header, claims = json.loads(b64url_decode(header_b64)), json.loads(b64url_decode(claims_b64))
    assert header["alg"] == "RS256" and header["kid"] == server.kid
    assert len(server.kid) == 59 and server.kid.count(":") == 11  # 12 groups of 4 base32 characters
    assert claims["aud"] == "pybuild-test" and claims["iss"] == "pybuild-test-issuer" and claims["sub"] == USER
    assert claims["access"] == [{"type": "repository", "name": "harness/x", "actions": ["pull", "push"]}]
    assert {"exp", "nbf", "iat", "jti"} <= claims.keys()
    # the registry takes the token, and refuses a forged or tampered one
    assert http_get(f"{token_registry.url}/v2/", headers={"Authorization": f"Bearer {answer['token']}"})[0] == 200
    forged = server.make_token(USER, [], issuer="someone-else")
    assert http_get(f"{token_registry.url}/v2/", headers={"Authorization": f"Bearer {forged}"})[0] == 401
    tampered = answer["token"][:-8] + ("AAAAAAAA" if not answer["token"].endswith("AAAAAAAA") else "BBBBBBBB")
    assert http_get(f"{token_registry.url}/v2/", headers={"Authorization": f"Bearer {tampered}"})[0] == 401
    status, _, _ = http_get(url, headers={"Authorization": "Basic " + base64.b64encode(b"pybuild:wrong").decode()})
    assert status == 401


def test_harness_proxy_forwards_and_counts(plain_registry: Registry, make_proxy, umoci_layout: Path) -> None:
    proxy = make_proxy(plain_registry)
    repo = unique_repo("harness")
    for _ in range(2):
        skopeo("copy", "--dest-tls-verify=false", f"oci:{umoci_layout}:v1", f"docker://{proxy.ref(repo, 'v1')}")
    uploads = proxy.seen("POST", r"/blobs/uploads/")
    assert len(uploads) == 2, proxy.requests  # config + layer, the first time only
    assert plain_registry.digest(repo, "v1") == sha256_digest(
        skopeo("inspect", "--raw", f"oci:{umoci_layout}:v1").stdout.encode()
    )


# --------------------------------------------------------------------------------------------
# push


@pytest.mark.parametrize("insecure", [False, True], ids=["default-insecure", "insecure-registry-flag"])
def test_push_shows_in_skopeo_with_the_built_digest(
    plain_registry: Registry, built, pybuild, insecure: bool, oci_check, tmp_path: Path
) -> None:
    out, digest = built("v1")
    repo = unique_repo()
    flags = ["--insecure-registry", plain_registry.host] if insecure else []
    result = pybuild("push", f"{out}:v1", plain_registry.ref(repo, "1.0"), *flags)
    assert result.returncode == 0, describe(result)
    assert plain_registry.digest(repo, "1.0") == digest
    assert plain_registry.inspect(repo, "1.0")["Digest"] == digest
    # the registry holds exactly the bytes of the layout: manifest and config
    assert plain_registry.raw_manifest(repo, "1.0") == layout_blob(out, digest)
    config_digest = layout_manifest(out, "v1")["config"]["digest"]
    assert sha256_digest(plain_registry.raw_manifest(repo, "1.0", config=True)) == config_digest
    # and skopeo can take it back into a layout that oci-check accepts
    back = tmp_path / "back"
    skopeo("copy", "--src-tls-verify=false", f"docker://{plain_registry.ref(repo, '1.0')}", f"oci:{back}:1.0")
    assert_oci_check(oci_check, back, "1.0")


def test_push_to_localhost_is_plain_http_by_default(plain_registry: Registry, built, pybuild) -> None:
    out, digest = built("v1")
    repo = unique_repo()
    result = pybuild("push", f"{out}:v1", f"localhost:{plain_registry.port}/{repo}:v1")
    assert result.returncode == 0, describe(result)
    assert plain_registry.digest(repo, "v1") == digest


def test_build_with_push_flag(plain_registry: Registry, built) -> None:
    repo = unique_repo()
    _, digest = built("v1", "--push", plain_registry.ref(repo, "pushed"))
    assert plain_registry.digest(repo, "pushed") == digest


def test_push_without_an_output_directory(plain_registry: Registry, pybuild, ctx: Path, tmp_path: Path) -> None:
    """``--push`` alone, as with ``buildah bud --push`` / Kaniko: no -o needed, nothing left behind."""
    repo = unique_repo()
    (ctx / "pybuild.yaml").write_text(RECIPE)
    before = set(tmp_path.iterdir())
    result = pybuild(ctx / "pybuild.yaml", "--push", plain_registry.ref(repo, "only"), "-q")
    assert result.returncode == 0, describe(result)
    assert plain_registry.digest(repo, "only") == result.stdout.strip()
    assert set(tmp_path.iterdir()) == before


def test_second_push_uploads_nothing(plain_registry: Registry, built, pybuild, make_proxy) -> None:
    out, digest = built("v1")
    proxy = make_proxy(plain_registry)
    repo = unique_repo()
    first = pybuild("push", f"{out}:v1", proxy.ref(repo, "v1"))
    assert first.returncode == 0, describe(first)
    layers = layout_manifest(out, "v1")["layers"]
    assert proxy.count("POST", r"/blobs/uploads/") >= len(layers) + 1, proxy.requests  # layers + config
    proxy.clear()
    mark = plain_registry.log_mark()
    second = pybuild("push", f"{out}:v1", proxy.ref(repo, "v1"))
    assert second.returncode == 0, describe(second)
    assert proxy.count(None, r"/blobs/uploads/") == 0, proxy.requests
    assert not [r for r in plain_registry.requests(mark) if "/blobs/uploads/" in r.path]
    assert plain_registry.digest(repo, "v1") == digest


# --------------------------------------------------------------------------------------------
# pull


@pytest.mark.parametrize("insecure", [False, True], ids=["default-insecure", "insecure-registry-flag"])
def test_pull_skopeo_pushed_image_keeps_its_digest(
    plain_registry: Registry, umoci_layout: Path, pybuild, oci_check, tmp_path: Path, insecure: bool
) -> None:
    repo = unique_repo()
    digest = plain_registry.copy_in(f"oci:{umoci_layout}:v1", repo, "v1")
    out = tmp_path / "pulled"
    flags = ["--insecure-registry", plain_registry.host] if insecure else []
    result = pybuild("pull", plain_registry.ref(repo, "v1"), "-o", out, *flags)
    assert result.returncode == 0, describe(result)
    desc = layout_descriptor(out, "v1")
    assert desc["digest"] == digest and desc["mediaType"] in MANIFEST_TYPES
    assert sha256_digest(layout_blob(out, digest)) == digest
    assert_oci_check(oci_check, out, "v1")


def test_pull_names_the_image_after_the_tag_or_latest_or_t(
    plain_registry: Registry, umoci_layout: Path, pybuild, oci_check, tmp_path: Path
) -> None:
    repo = unique_repo()
    digest = plain_registry.copy_in(f"oci:{umoci_layout}:v1", repo, "latest")
    out = tmp_path / "pulled"
    result = pybuild("pull", f"{plain_registry.host}/{repo}", "-o", out)
    assert result.returncode == 0, describe(result)
    assert layout_descriptor(out, "latest")["digest"] == digest
    named = tmp_path / "named"
    result = pybuild("pull", plain_registry.ref(repo, digest), "-o", named, "-t", "acc/app:1")
    assert result.returncode == 0, describe(result)
    assert layout_descriptor(named, "acc/app:1")["digest"] == digest
    assert_oci_check(oci_check, named, "acc/app:1")


def test_pulled_image_runs_under_runc(plain_registry: Registry, umoci_layout: Path, pybuild, runc: Runc,
                                      tmp_path: Path) -> None:  # fmt: skip
    repo = unique_repo()
    plain_registry.copy_in(f"oci:{umoci_layout}:v1", repo, "v1")
    out = tmp_path / "pulled"
    result = pybuild("pull", plain_registry.ref(repo, "v1"), "-o", out)
    assert result.returncode == 0, describe(result)
    assert runc.run(out, "v1").stdout.splitlines() == [GREETING, "0"]


# --------------------------------------------------------------------------------------------
# from: a registry image


def test_build_from_registry_image_reuses_its_layers_and_runs(
    plain_registry: Registry, umoci_layout: Path, built, pybuild, runc: Runc, oci_check
) -> None:
    repo = unique_repo("base")
    base_ref = plain_registry.ref(repo, "v1")
    base_digest = plain_registry.copy_in(f"oci:{umoci_layout}:v1", repo, "v1")
    base_manifest = json.loads(plain_registry.raw_manifest(repo, "v1"))
    recipe = f"""\
version: 1
from: {base_ref}
steps:
  - write: /etc/derived
    content: "derived\\n"
  - run: echo ran > /etc/ran
config:
  cmd: ["/bin/sh", "-c", "cat /etc/derived /etc/ran; echo '{GREETING}'"]
"""
    out, digest = built("derived", recipe=recipe)
    manifest = layout_manifest(out, "derived")
    assert layout_descriptor(out, "derived")["digest"] == digest
    base_layers = [layer["digest"] for layer in base_manifest["layers"]]
    assert [layer["digest"] for layer in manifest["layers"]][: len(base_layers)] == base_layers
    assert len(manifest["layers"]) == len(base_layers) + 2
    annotations = manifest.get("annotations", {})
    assert annotations.get("org.opencontainers.image.base.name") == base_ref, annotations
    assert annotations.get("org.opencontainers.image.base.digest") == base_digest, annotations
    shown = pybuild("inspect", "--json", f"{out}:derived")  # and inspect shows them
    assert json.loads(shown.stdout)["annotations"] == annotations
    assert_oci_check(oci_check, out, "derived")
    assert runc.run(out, "derived").stdout.splitlines() == ["derived", "ran", GREETING]


def test_build_from_pybuild_pushed_image_with_credentials(
    token_registry: Registry, built, pybuild, tmp_path: Path
) -> None:
    env = auth_env("docker", tmp_path, token_registry.host, USER, token_registry.password)
    base_out, _ = built("base")
    repo = unique_repo("base")
    pushed = pybuild("push", f"{base_out}:base", token_registry.ref(repo, "b1"), env=env)
    assert pushed.returncode == 0, describe(pushed)
    base_digest = token_registry.digest(repo, "b1")
    recipe = f"""\
version: 1
from: {token_registry.ref(repo, "b1")}
steps:
  - write: /etc/derived
    content: "derived\\n"
"""
    out, _ = built("derived", recipe=recipe, out=tmp_path / "derived", env=env)
    base_layers = [layer["digest"] for layer in layout_manifest(base_out, "base")["layers"]]
    layers = [layer["digest"] for layer in layout_manifest(out, "derived")["layers"]]
    assert layers[: len(base_layers)] == base_layers and len(layers) == len(base_layers) + 1
    assert layout_manifest(out, "derived")["annotations"]["org.opencontainers.image.base.digest"] == base_digest


# --------------------------------------------------------------------------------------------
# several platforms


MULTI = """\
version: 1
steps:
  - rootfs: rootfs.tar.gz
  - write: /etc/multi
    content: "one recipe, two platforms\\n"
"""


def test_multi_platform_push_and_pull(plain_registry: Registry, built, pybuild, oci_check, tmp_path: Path) -> None:
    out, digest = built("multi", "--platform", "linux/amd64", "--platform", "linux/arm64", recipe=MULTI)
    repo = unique_repo("multi")
    result = pybuild("push", f"{out}:multi", plain_registry.ref(repo, "m1"))
    assert result.returncode == 0, describe(result)

    raw = plain_registry.raw_manifest(repo, "m1")
    index: dict[str, Any] = json.loads(raw)
    assert sha256_digest(raw) == digest
    assert index["mediaType"] in INDEX_TYPES, index
    by_arch = {m["platform"]["architecture"]: m for m in index["manifests"]}
    assert sorted(by_arch) == ["amd64", "arm64"] and {m["platform"]["os"] for m in index["manifests"]} == {"linux"}
    for entry in index["manifests"]:  # every manifest of the index is there, by digest
        got = skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{plain_registry.ref(repo, entry['digest'])}")
        assert sha256_digest(got.stdout.encode()) == entry["digest"]

    whole = tmp_path / "whole"
    result = pybuild("pull", plain_registry.ref(repo, "m1"), "-o", whole)
    assert result.returncode == 0, describe(result)
    desc = layout_descriptor(whole, "m1")
    assert desc["digest"] == digest and desc["mediaType"] in INDEX_TYPES
    assert_oci_check(oci_check, whole, "m1")

    arm = tmp_path / "arm64"
    result = pybuild("pull", plain_registry.ref(repo, "m1"), "-o", arm, "--platform", "linux/arm64")
    assert result.returncode == 0, describe(result)
    desc = layout_descriptor(arm, "m1")
    assert desc["digest"] == by_arch["arm64"]["digest"] and desc["mediaType"] in MANIFEST_TYPES
    config = json.loads(layout_blob(arm, json.loads(layout_blob(arm, desc["digest"]))["config"]["digest"]))
    assert config["architecture"] == "arm64"
    assert_oci_check(oci_check, arm, "m1")


# --------------------------------------------------------------------------------------------
# credentials


@pytest.mark.parametrize("source", ["docker", "authfile"], ids=["DOCKER_CONFIG", "REGISTRY_AUTH_FILE"])
@pytest.mark.parametrize("flavour", ["htpasswd", "token"])
def test_credentials_push_and_pull(
    registries, flavour: str, source: str, built, pybuild, oci_check, tmp_path: Path
) -> None:
    registry = registries(flavour)
    env = auth_env(source, tmp_path, registry.host, USER, registry.password)
    out, digest = built("v1")
    repo = unique_repo("auth")
    pushed = pybuild("push", f"{out}:v1", registry.ref(repo, "v1"), env=env)
    assert pushed.returncode == 0, describe(pushed)
    assert registry.digest(repo, "v1") == digest
    pulled_out = tmp_path / "pulled"
    pulled = pybuild("pull", registry.ref(repo, "v1"), "-o", pulled_out, env=env)
    assert pulled.returncode == 0, describe(pulled)
    assert layout_descriptor(pulled_out, "v1")["digest"] == digest
    assert_oci_check(oci_check, pulled_out, "v1")
    for proc in (pushed, pulled):
        assert_no_secrets(proc, leaked(registry))


@pytest.mark.parametrize("operation", ["push", "pull"])
@pytest.mark.parametrize("flavour", ["htpasswd", "token"])
def test_wrong_credentials_fail_with_one_line_and_no_secret(
    registries, flavour: str, operation: str, built, pybuild, umoci_layout: Path, tmp_path: Path
) -> None:
    registry = registries(flavour)
    repo = unique_repo("auth")
    registry.copy_in(f"oci:{umoci_layout}:v1", repo, "v1")
    wrong_password = "wrong-" + registry.password[::-1]
    env = auth_env("docker", tmp_path, registry.host, USER, wrong_password)
    out = tmp_path / "pulled"
    if operation == "push":
        layout, _ = built("v1")
        result = pybuild("push", f"{layout}:v1", registry.ref(repo, "v2"), env=env)
    else:
        result = pybuild("pull", registry.ref(repo, "v1"), "-o", out, env=env)
    assert_user_error(result, f"{operation} with a wrong password")
    assert_no_secrets(result, leaked(registry, wrong_password))
    assert not out.exists()
    if operation == "push":
        gone = skopeo("inspect", "--tls-verify=false", *registry.skopeo_creds(), "--raw",
                      f"docker://{registry.ref(repo, 'v2')}", check=False)  # fmt: skip
        assert gone.returncode != 0, "nothing may have been tagged"


@pytest.mark.parametrize("flavour", ["htpasswd", "token"])
def test_missing_credentials_fail_cleanly(registries, flavour: str, umoci_layout: Path, pybuild, tmp_path: Path) -> None:
    registry = registries(flavour)
    repo = unique_repo("auth")
    registry.copy_in(f"oci:{umoci_layout}:v1", repo, "v1")
    out = tmp_path / "pulled"
    result = pybuild("pull", registry.ref(repo, "v1"), "-o", out)  # clean_env: an empty DOCKER_CONFIG
    assert_user_error(result, "pull without credentials")
    assert not out.exists()



def test_push_of_a_derived_image_mounts_its_base_layers(
    plain_registry: Registry, umoci_layout: Path, built, pybuild, ctx: Path, tmp_path: Path
) -> None:
    """--push to the registry the base came from mounts the base's layers instead of uploading them."""
    repo = unique_repo("mbase")
    plain_registry.copy_in(f"oci:{umoci_layout}:v1", repo, "v1")
    recipe = f"version: 1\nfrom: {plain_registry.ref(repo, 'v1')}\nsteps:\n  - write: /x\n    content: x\n"
    (ctx / "pybuild.yaml").write_text(recipe)
    target = plain_registry.ref(unique_repo("derived"), "v1")
    result = pybuild(ctx / "pybuild.yaml", "-o", tmp_path / "out", "--push", target, "--progress", "plain",
                     "--no-attestations")  # the provenance's two blobs would be uploads too
    assert result.returncode == 0, describe(result)
    events = [line.split()[0] for line in result.stderr.splitlines() if line.startswith("  ")]
    assert "mounted" in events and events.count("pushed") == 2, result.stderr  # our layer + the config


def test_multi_platform_build_from_a_registry_index_selects_each_base(
    plain_registry: Registry, built, pybuild, tmp_path: Path
) -> None:
    """from: an index, built for two platforms: each platform's image starts from its own base manifest."""
    base_recipe = "version: 1\nsteps:\n  - write: /etc/arch\n    content: \"${TARGETARCH}\\n\"\n"
    out, _ = built("base", "--platform", "linux/amd64", "--platform", "linux/arm64", recipe=base_recipe)
    repo = unique_repo("mbase")
    assert pybuild("push", f"{out}:base", plain_registry.ref(repo, "b1")).returncode == 0
    base_index = json.loads(plain_registry.raw_manifest(repo, "b1"))
    base_layers = {
        m["platform"]["architecture"]: json.loads(plain_registry.raw_manifest(repo, m["digest"]))["layers"]
        for m in base_index["manifests"]
    }
    assert base_layers["amd64"] != base_layers["arm64"]
    recipe = (f"version: 1\nfrom: {plain_registry.ref(repo, 'b1')}\nplatforms: [linux/amd64, linux/arm64]\n"
              "steps:\n  - write: /etc/child\n    content: child\n")
    child, _ = built("child", recipe=recipe, out=tmp_path / "child")
    index = layout_descriptor(child, "child")
    children = json.loads(layout_blob(child, index["digest"]))["manifests"]
    for entry in children:
        manifest = json.loads(layout_blob(child, entry["digest"]))
        arch = entry["platform"]["architecture"]
        assert manifest["layers"][:-1] == base_layers[arch], arch
