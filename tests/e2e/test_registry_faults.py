"""pybuild against a misbehaving registry: retries that work, and bad data that is refused.

Between pybuild and a real ``docker-registry`` sits :class:`~tests.e2e.registry.FaultProxy`, a
threaded proxy on 127.0.0.1 that, for the requests matching a rule, answers 503, drops the
connection (before the answer, or in the middle of its body), answers slowly (a bounded 2-3 s),
answers 401 to force a token client to authenticate again, or serves a corrupted or truncated
blob or a manifest with one digit changed. Transient faults must not fail a push or a pull;
wrong bytes must: exit 1, one ``pybuild: error:`` line naming the digest, and no OUT.

The ``test_harness_*`` tests show with skopeo alone that each fault really reaches a client
(skopeo retries none of them, and refuses the bad data itself).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from .registry import (
    USER,
    FaultProxy,
    Registry,
    assert_no_secrets,
    assert_user_error,
    docker_config_dir,
    layout_blob,
    layout_descriptor,
    layout_manifest,
    proxy_fixture,
    registry_fixture,
    secret_strings,
    sha256_digest,
    skopeo,
    unique_repo,
)
from .runtimes import describe, umoci_image

pytestmark = [pytest.mark.tools, pytest.mark.needs("docker-registry", "skopeo", "openssl")]

plain_registry = registry_fixture("plain")
token_registry = registry_fixture("token")
make_proxy = proxy_fixture()

TIMEOUT = 300  # seconds for one pybuild run: retries with backoff stay far below this

RECIPE = """\
version: 1
steps:
  - rootfs: rootfs.tar.gz
  - write: /etc/greeting
    content: "pushed through a faulty proxy\\n"
  - write: /etc/second
    content: "a second small layer\\n"
config:
  cmd: ["/bin/cat", "/etc/greeting"]
"""

BLOB = r"/blobs/sha256:"
UPLOADS = r"/blobs/uploads/"
MANIFESTS = r"/manifests/"


# --------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module")
def umoci_layout(tmp_path_factory: pytest.TempPathFactory, busybox_rootfs_tar: Path, need) -> Path:
    need("umoci")
    return umoci_image(tmp_path_factory.mktemp("umoci"), busybox_rootfs_tar, "v1", ["/bin/true"])


@pytest.fixture
def built(pybuild, ctx: Path, tmp_path: Path) -> tuple[Path, str]:
    """The recipe above built into ``tmp_path/out`` as tag ``v1``: (OUT, printed digest)."""
    (ctx / "pybuild.yaml").write_text(RECIPE)
    out = tmp_path / "out"
    result = pybuild(ctx / "pybuild.yaml", "-o", out, "-t", "v1")
    assert result.returncode == 0, describe(result)
    return out, result.stdout.strip().splitlines()[-1]


@pytest.fixture
def stored(plain_registry: Registry, umoci_layout: Path) -> tuple[str, str, dict[str, Any]]:
    """A skopeo-pushed image in the plain registry: (repo, manifest digest, manifest)."""
    repo = unique_repo("faults")
    digest = plain_registry.copy_in(f"oci:{umoci_layout}:v1", repo, "v1")
    return repo, digest, json.loads(plain_registry.raw_manifest(repo, "v1"))


@pytest.fixture
def short_tokens(token_registry: Registry):
    """The token server hands out tokens that live ``lifetime`` seconds; restored afterwards."""
    server = token_registry.token_server
    assert server is not None
    before = server.expires_in

    def set_lifetime(seconds: int) -> None:
        server.expires_in = seconds

    yield set_lifetime
    server.expires_in = before


def all_hit(*faults) -> None:
    for fault in faults:
        assert len(fault.hits) == fault.times, f"fault {fault.action} on {fault.method} {fault.pattern}: {fault.hits}"


def creds_env(tmp_path: Path, proxy: FaultProxy, registry: Registry) -> dict[str, str]:
    """Credentials in ``$DOCKER_CONFIG`` for the proxy's host (the host pybuild is told about)."""
    return {"DOCKER_CONFIG": str(docker_config_dir(tmp_path / "docker-config", {proxy.host: (USER, registry.password)}))}


def assert_refused(result, digest: str, out: Path) -> None:
    """Exit 1, one error line that names ``digest`` (at least its first 12 hex digits), no OUT.

    (The wording is pybuild's: e.g. ``...: manifest: content is sha256:..., expected sha256:...``.)
    """
    line = assert_user_error(result, f"bad data for {digest}")
    assert digest.split(":", 1)[1][:12] in line, f"the error does not name {digest}: {line}"
    assert not out.exists(), f"{out} was created by a failed pull"


# --------------------------------------------------------------------------------------------
# the harness: every fault reaches a real client (skopeo)


def test_harness_faults_reach_skopeo(plain_registry: Registry, make_proxy, stored, tmp_path: Path) -> None:
    repo, digest, manifest = stored
    proxy = make_proxy(plain_registry)
    layer = manifest["layers"][0]["digest"]
    source = f"docker://{proxy.ref(repo, 'v1')}"

    def pull(name: str, src: str = source) -> str:
        proc = skopeo("copy", "--src-tls-verify=false", src, f"oci:{tmp_path / name}:v1", check=False)
        return "" if proc.returncode == 0 else proc.stderr

    for action, expect in [("corrupt", ("Digest did not match",)), ("truncate", ("Digest did not match",)),
                           ("reset_body", ("connection reset", "unexpected EOF")),
                           ("reset", ("connection reset", "EOF")), ("status", ("503",))]:  # fmt: skip
        fault = proxy.add("GET", layer, action, times=None)
        error = pull(action)
        assert any(e in error for e in expect), f"{action}: {error}"
        assert fault.hits, action
        proxy.clear()
    proxy.add("GET", MANIFESTS, "flip_digest", times=None)
    assert "does not match" in pull("flip", f"docker://{proxy.ref(repo, digest)}")
    proxy.clear()
    slow = proxy.add("GET", MANIFESTS, "slow", times=1, delay=2)
    started = time.monotonic()
    assert pull("slow") == ""
    assert time.monotonic() - started >= 2 and slow.hits


def test_harness_401_and_expired_tokens_reach_skopeo(
    token_registry: Registry, make_proxy, umoci_layout: Path, short_tokens
) -> None:
    creds = token_registry.skopeo_creds("dest")
    proxy = make_proxy(token_registry, enforce_token_expiry=True)
    repo = unique_repo("faults")
    proxy.add("PUT", MANIFESTS, "unauthorized", times=1)
    proc = skopeo("copy", "--dest-tls-verify=false", *creds, f"oci:{umoci_layout}:v1",
                  f"docker://{proxy.ref(repo, 'v1')}", check=False)  # fmt: skip
    assert proc.returncode != 0 and "unauthorized" in proc.stderr, describe(proc)  # skopeo does not re-authenticate
    [refused] = proxy.seen("PUT", MANIFESTS)
    assert refused.status == 401
    proxy.clear()
    short_tokens(1)
    proxy.add("HEAD", BLOB, "slow", times=1, delay=2.5)
    proc = skopeo("copy", "--dest-tls-verify=false", *creds, f"oci:{umoci_layout}:v1",
                  f"docker://{proxy.ref(unique_repo('faults'), 'v1')}", check=False)  # fmt: skip
    assert proc.returncode != 0 and proxy.expired_refused >= 1, describe(proc)


# --------------------------------------------------------------------------------------------
# push: transient faults are retried


def test_push_survives_503s(plain_registry: Registry, make_proxy, built, pybuild) -> None:
    out, digest = built
    proxy = make_proxy(plain_registry)
    faults = [
        proxy.add("HEAD", BLOB, "status", times=1),
        proxy.add("POST", UPLOADS, "status", times=2),
        proxy.add("PUT", UPLOADS, "status", times=1),
        proxy.add("PUT", MANIFESTS, "status", times=2),
    ]
    repo = unique_repo("faults")
    result = pybuild("push", f"{out}:v1", proxy.ref(repo, "v1"), timeout=TIMEOUT)
    assert result.returncode == 0, describe(result) + f"\n{proxy.requests}"
    all_hit(*faults)
    assert plain_registry.digest(repo, "v1") == digest


def test_push_survives_connection_resets(plain_registry: Registry, make_proxy, built, pybuild, tmp_path: Path) -> None:
    out, digest = built
    proxy = make_proxy(plain_registry)
    faults = [
        proxy.add("PUT", UPLOADS, "reset", times=1),  # the blob's bytes are lost on the way
        proxy.add("PATCH", UPLOADS, "reset", times=1),  # (if the client uses PATCH at all)
        proxy.add("PUT", MANIFESTS, "reset", times=1),
        proxy.add("HEAD", BLOB, "reset", times=1),
    ]
    repo = unique_repo("faults")
    result = pybuild("push", f"{out}:v1", proxy.ref(repo, "v1"), timeout=TIMEOUT)
    assert result.returncode == 0, describe(result) + f"\n{proxy.requests}"
    all_hit(faults[0], faults[2], faults[3])
    assert plain_registry.digest(repo, "v1") == digest
    # every blob arrived whole: skopeo verifies each one on the way back
    skopeo("copy", "--src-tls-verify=false", f"docker://{plain_registry.ref(repo, 'v1')}", f"oci:{tmp_path / 'back'}:v1")


def test_push_survives_a_slow_registry(plain_registry: Registry, make_proxy, built, pybuild) -> None:
    out, digest = built
    proxy = make_proxy(plain_registry)
    faults = [proxy.add("POST", UPLOADS, "slow", times=1, delay=2), proxy.add("PUT", MANIFESTS, "slow", times=1, delay=2)]
    repo = unique_repo("faults")
    result = pybuild("push", f"{out}:v1", proxy.ref(repo, "v1"), timeout=TIMEOUT)
    assert result.returncode == 0, describe(result)
    all_hit(*faults)
    assert plain_registry.digest(repo, "v1") == digest


# --------------------------------------------------------------------------------------------
# pull: transient faults are retried


def test_pull_survives_503_resets_and_slowness(
    plain_registry: Registry, make_proxy, stored, pybuild, oci_check, tmp_path: Path
) -> None:
    repo, digest, manifest = stored
    proxy = make_proxy(plain_registry)
    layer, config = manifest["layers"][0]["digest"], manifest["config"]["digest"]
    faults = [
        proxy.add("GET", MANIFESTS, "status", times=1),
        proxy.add("GET", MANIFESTS, "slow", times=1, delay=2),
        proxy.add("GET", config, "status", times=2),
        proxy.add("GET", layer, "reset_body", times=1),
        proxy.add("GET", layer, "reset", times=1),
        proxy.add("GET", layer, "status", times=1, status=502),
    ]
    out = tmp_path / "pulled"
    result = pybuild("pull", proxy.ref(repo, "v1"), "-o", out, timeout=TIMEOUT)
    assert result.returncode == 0, describe(result) + f"\n{proxy.requests}"
    all_hit(*faults)
    desc = layout_descriptor(out, "v1")
    assert desc["digest"] == digest
    assert sha256_digest(layout_blob(out, layer)) == layer
    checked = oci_check(out, strict=True, ref="v1")
    assert checked.returncode == 0, describe(checked)


# --------------------------------------------------------------------------------------------
# pull: wrong bytes are refused


@pytest.mark.parametrize("action", ["corrupt", "truncate"])
def test_pull_refuses_a_bad_layer(plain_registry: Registry, make_proxy, stored, pybuild, tmp_path: Path,
                                  action: str) -> None:  # fmt: skip
    repo, _, manifest = stored
    proxy = make_proxy(plain_registry)
    layer = manifest["layers"][0]["digest"]
    fault = proxy.add("GET", layer, action, times=None)  # every attempt gets the bad bytes
    out = tmp_path / "pulled"
    result = pybuild("pull", proxy.ref(repo, "v1"), "-o", out, timeout=TIMEOUT)
    assert fault.hits
    assert_refused(result, layer, out)


@pytest.mark.parametrize("action", ["corrupt", "truncate"])
def test_pull_refuses_a_bad_config(plain_registry: Registry, make_proxy, stored, pybuild, tmp_path: Path,
                                   action: str) -> None:  # fmt: skip
    repo, _, manifest = stored
    proxy = make_proxy(plain_registry)
    config = manifest["config"]["digest"]
    fault = proxy.add("GET", config, action, times=None)
    out = tmp_path / "pulled"
    result = pybuild("pull", proxy.ref(repo, "v1"), "-o", out, timeout=TIMEOUT)
    assert fault.hits
    assert_refused(result, config, out)


def test_pull_by_digest_refuses_a_changed_manifest(
    plain_registry: Registry, make_proxy, stored, pybuild, tmp_path: Path
) -> None:
    repo, digest, _ = stored
    proxy = make_proxy(plain_registry)
    fault = proxy.add("GET", MANIFESTS, "flip_digest", times=None)
    out = tmp_path / "pulled"
    result = pybuild("pull", proxy.ref(repo, digest), "-o", out, timeout=TIMEOUT)
    assert fault.hits
    assert_refused(result, digest, out)


def test_pull_by_tag_refuses_a_manifest_that_is_not_the_advertised_one(
    plain_registry: Registry, make_proxy, stored, pybuild, tmp_path: Path
) -> None:
    """The registry's Docker-Content-Digest names the manifest; one digit changed must not pass."""
    repo, _, _ = stored
    proxy = make_proxy(plain_registry)
    fault = proxy.add("GET", MANIFESTS, "corrupt", times=None)
    out = tmp_path / "pulled"
    result = pybuild("pull", proxy.ref(repo, "v1"), "-o", out, timeout=TIMEOUT)
    assert fault.hits
    assert_user_error(result, "a corrupted manifest")
    assert not out.exists()


def test_failed_pull_leaves_an_existing_layout_as_it_was(
    plain_registry: Registry, make_proxy, stored, built, pybuild, tmp_path: Path, oci_check
) -> None:
    repo, digest, _ = stored
    out = tmp_path / "pulled"
    first = pybuild("pull", plain_registry.ref(repo, "v1"), "-o", out)
    assert first.returncode == 0, describe(first)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # another image, whose last layer is its own: that layer arrives corrupt
    other_layout, _ = built
    other = unique_repo("faults")
    plain_registry.copy_in(f"oci:{other_layout}:v1", other, "v2")
    own_layer = layout_manifest(other_layout, "v1")["layers"][-1]["digest"]
    proxy = make_proxy(plain_registry)
    proxy.add("GET", own_layer, "corrupt", times=None)
    second = pybuild("pull", proxy.ref(other, "v2"), "-o", out, timeout=TIMEOUT)
    line = assert_user_error(second, "a corrupt layer into an existing layout")
    assert own_layer.split(":")[1][:12] in line, line
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert layout_descriptor(out, "v1")["digest"] == digest
    checked = oci_check(out, strict=True, ref="v1")
    assert checked.returncode == 0, describe(checked)


# --------------------------------------------------------------------------------------------
# token auth: a 401 mid-push, and tokens that expire mid-push


def test_push_authenticates_again_after_a_401(
    token_registry: Registry, make_proxy, built, pybuild, tmp_path: Path
) -> None:
    out, digest = built
    server = token_registry.token_server
    assert server is not None
    proxy = make_proxy(token_registry)
    env = creds_env(tmp_path, proxy, token_registry)
    faults = [proxy.add("PUT", UPLOADS, "unauthorized", times=1), proxy.add("PUT", MANIFESTS, "unauthorized", times=1)]
    repo = unique_repo("faults")
    result = pybuild("push", f"{out}:v1", proxy.ref(repo, "v1"), env=env, timeout=TIMEOUT)
    assert result.returncode == 0, describe(result) + f"\n{proxy.requests}"
    all_hit(*faults)
    assert server.issued_after(faults[1].hits[0]) >= 1, "no new token after the 401 on the manifest"
    assert token_registry.digest(repo, "v1") == digest
    assert_no_secrets(result, [*secret_strings(token_registry.password), *server.tokens()])


def test_pull_authenticates_again_after_a_401(
    token_registry: Registry, make_proxy, umoci_layout: Path, pybuild, oci_check, tmp_path: Path
) -> None:
    server = token_registry.token_server
    assert server is not None
    repo = unique_repo("faults")
    digest = token_registry.copy_in(f"oci:{umoci_layout}:v1", repo, "v1")
    manifest = json.loads(token_registry.raw_manifest(repo, "v1"))
    proxy = make_proxy(token_registry)
    fault = proxy.add("GET", manifest["layers"][0]["digest"], "unauthorized", times=1)
    out = tmp_path / "pulled"
    result = pybuild("pull", proxy.ref(repo, "v1"), "-o", out, env=creds_env(tmp_path, proxy, token_registry),
                     timeout=TIMEOUT)  # fmt: skip
    assert result.returncode == 0, describe(result) + f"\n{proxy.requests}"
    assert fault.hits and server.issued_after(fault.hits[0]) >= 1
    assert layout_descriptor(out, "v1")["digest"] == digest
    checked = oci_check(out, strict=True, ref="v1")
    assert checked.returncode == 0, describe(checked)
    assert_no_secrets(result, [*secret_strings(token_registry.password), *server.tokens()])


def test_push_outlives_its_token(
    token_registry: Registry, make_proxy, built, pybuild, tmp_path: Path, short_tokens
) -> None:
    """Tokens live 2 s; the proxy refuses expired ones (the registry would allow 60 s of leeway);
    the first upload is held 4 s, so what follows it needs a new token (one fetched while it was
    held, by the other uploads, has expired too by then)."""
    out, digest = built
    server = token_registry.token_server
    assert server is not None
    short_tokens(2)
    proxy = make_proxy(token_registry, enforce_token_expiry=True)
    slow = proxy.add("POST", UPLOADS, "slow", times=1, delay=4)
    repo = unique_repo("faults")
    result = pybuild("push", f"{out}:v1", proxy.ref(repo, "v1"), env=creds_env(tmp_path, proxy, token_registry),
                     timeout=TIMEOUT)  # fmt: skip
    assert result.returncode == 0, describe(result) + f"\n{proxy.requests}"
    assert slow.hits and server.issued_after(slow.hits[0] + slow.delay) >= 1, "no token fetched after the old one expired"
    assert token_registry.digest(repo, "v1") == digest
    assert_no_secrets(result, [*secret_strings(token_registry.password), *server.tokens()])
