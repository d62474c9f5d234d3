"""Attestations on a real registry: Debian's ``docker-registry`` 2.8, which has no referrers API, so
pybuild keeps each image's referrers under the ``sha256-<hex>`` fallback tag (distribution-spec 1.1).

What pybuild pushed is read back with skopeo, which knows nothing of pybuild: the fallback-tag
index, each artifact manifest, and (``skopeo copy`` of the artifact into a layout) each blob. The
registry's API answers for ``/referrers/`` are covered against a fake registry in
``tests/unit/registry/test_referrers.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .registry import Registry, layout_blob, registry_fixture, sha256_digest, skopeo, unique_repo, write_auth_json
from .runtimes import describe

pytestmark = [pytest.mark.tools, pytest.mark.needs("docker-registry", "skopeo", "openssl")]

plain_registry = registry_fixture("plain")
token_registry = registry_fixture("token")

RECIPE = """\
version: 1
steps:
  - rootfs: rootfs.tar.gz
  - write: /etc/greeting
    content: "attested\\n"
config:
  cmd: ["/bin/cat", "/etc/greeting"]
"""
IN_TOTO = "application/vnd.in-toto+json"
SPDX = "application/spdx+json"
CYCLONEDX = "application/vnd.cyclonedx+json"


def creds_env(registry: Registry, tmp_path: Path) -> dict[str, str] | None:
    """pybuild's credentials for ``registry`` through ``$REGISTRY_AUTH_FILE`` (none for a plain one)."""
    if registry.creds is None:
        return None
    return {"REGISTRY_AUTH_FILE": str(write_auth_json(tmp_path / "auth.json", {registry.host: registry.creds}))}


def fallback_tag(digest: str) -> str:
    return digest.replace(":", "-")


def raw(registry: Registry, repo: str, tag_or_digest: str) -> bytes:
    return skopeo("inspect", "--tls-verify=false", *registry.skopeo_creds(), "--raw",
                  f"docker://{registry.ref(repo, tag_or_digest)}").stdout.encode()  # fmt: skip


def layout_referrers(layout: Path) -> dict[str, bytes]:
    """The referrer manifests (digest → bytes) a layout lists beside its images."""
    index = json.loads((layout / "index.json").read_text())
    return {e["digest"]: layout_blob(layout, e["digest"]) for e in index["manifests"] if "artifactType" in e}


def check_fallback_index(registry: Registry, repo: str, subject: str, tmp_path: Path) -> dict[str, dict[str, Any]]:
    """The subject's fallback-tag index, each manifest it lists and each blob, fetched by skopeo and
    checked against their descriptors; returns the manifests by digest."""
    index = json.loads(raw(registry, repo, fallback_tag(subject)))
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json", index
    manifests = {}
    for entry in index["manifests"]:
        body = raw(registry, repo, entry["digest"])
        assert sha256_digest(body) == entry["digest"] and len(body) == entry["size"]
        manifest = json.loads(body)
        assert manifest["subject"]["digest"] == subject
        assert manifest["artifactType"] == entry["artifactType"]
        copy = tmp_path / f"artifact-{entry['digest'][7:19]}"
        skopeo("copy", "--src-tls-verify=false", *registry.skopeo_creds("src"),
               f"docker://{registry.ref(repo, entry['digest'])}", f"oci:{copy}:artifact")  # fmt: skip
        for desc in [manifest["config"], *manifest["layers"]]:
            data = layout_blob(copy, desc["digest"])
            assert sha256_digest(data) == desc["digest"] and len(data) == desc["size"]
        manifests[entry["digest"]] = manifest
    return manifests


@pytest.mark.parametrize("flavour", ["plain", "token"])
def test_build_push_attaches_provenance_and_sboms(request: pytest.FixtureRequest, flavour: str, pybuild,
                                                  ctx: Path, tmp_path: Path) -> None:  # fmt: skip
    registry: Registry = request.getfixturevalue(f"{flavour}_registry")
    env = creds_env(registry, tmp_path)
    repo = unique_repo("attest")
    (ctx / "pybuild.yaml").write_text(RECIPE)
    out = tmp_path / "out"
    result = pybuild(ctx / "pybuild.yaml", "-o", out, "-t", "v1", "--sbom", "--push", registry.ref(repo, "v1"),
                     env=env)  # fmt: skip
    assert result.returncode == 0, describe(result)
    digest = result.stdout.strip().splitlines()[-1]
    assert sha256_digest(raw(registry, repo, "v1")) == digest  # the image is what the layout holds

    manifests = check_fallback_index(registry, repo, digest, tmp_path)
    assert sorted(m["artifactType"] for m in manifests.values()) == sorted([IN_TOTO, SPDX, CYCLONEDX])
    assert set(manifests) == set(layout_referrers(out))  # the same referrers, byte for byte, as the layout's

    listed = pybuild("attestations", f"docker://{registry.ref(repo, 'v1')}", "--json", env=env)
    assert listed.returncode == 0, describe(listed)
    assert {r["digest"] for r in json.loads(listed.stdout)} == set(manifests)
    for kind in ("provenance", "spdx"):
        remote = pybuild("attestations", f"docker://{registry.ref(repo, 'v1')}", "--type", kind,
                         env=env)  # fmt: skip
        local = pybuild("attestations", f"{out}:v1", "--type", kind)
        assert remote.returncode == 0 and local.returncode == 0, describe(remote) + describe(local)
        assert remote.stdout == local.stdout and remote.stdout.startswith("{")


def test_push_of_a_layout_carries_its_referrers_once(plain_registry: Registry, pybuild, ctx: Path,
                                                     tmp_path: Path) -> None:  # fmt: skip
    (ctx / "pybuild.yaml").write_text(RECIPE)
    out = tmp_path / "out"
    assert pybuild(ctx / "pybuild.yaml", "-o", out, "-t", "v1").returncode == 0
    repo = unique_repo("attest")
    for tag in ("v1", "v1", "again"):  # the image is there already the second and third time
        pushed = pybuild("push", f"{out}:v1", plain_registry.ref(repo, tag))
        assert pushed.returncode == 0, describe(pushed)
    digest = pushed.stdout.strip()
    manifests = check_fallback_index(plain_registry, repo, digest, tmp_path)
    assert list(manifests) == list(layout_referrers(out))  # one entry, not three
    assert [m["artifactType"] for m in manifests.values()] == [IN_TOTO]


def test_no_attestations_pushes_no_fallback_tag(plain_registry: Registry, pybuild, ctx: Path, tmp_path: Path) -> None:
    (ctx / "pybuild.yaml").write_text(RECIPE)
    repo = unique_repo("attest")
    result = pybuild(ctx / "pybuild.yaml", "--no-attestations", "--push", plain_registry.ref(repo, "v1"), "-q")
    assert result.returncode == 0, describe(result)
    digest = result.stdout.strip()
    tags = json.loads(skopeo("list-tags", "--tls-verify=false", f"docker://{plain_registry.host}/{repo}").stdout)
    assert tags["Tags"] == ["v1"]
    with_att = pybuild(ctx / "pybuild.yaml", "--push", plain_registry.ref(repo, "v2"), "-q")
    assert with_att.returncode == 0 and with_att.stdout.strip() == digest  # the same image either way
    tags = json.loads(skopeo("list-tags", "--tls-verify=false", f"docker://{plain_registry.host}/{repo}").stdout)
    assert sorted(tags["Tags"]) == sorted(["v1", "v2", fallback_tag(digest)])


def test_multi_platform_referrers_per_platform(plain_registry: Registry, pybuild, ctx: Path, tmp_path: Path) -> None:
    (ctx / "pybuild.yaml").write_text(RECIPE)
    repo = unique_repo("attest")
    result = pybuild(ctx / "pybuild.yaml", "--platform", "linux/amd64", "--platform", "linux/arm64",
                     "--push", plain_registry.ref(repo, "m"), "-q")  # fmt: skip
    assert result.returncode == 0, describe(result)
    index = json.loads(raw(plain_registry, repo, "m"))
    assert sha256_digest(raw(plain_registry, repo, "m")) == result.stdout.strip()
    for entry in index["manifests"]:  # each platform's image has its own statement
        manifests = check_fallback_index(plain_registry, repo, entry["digest"], tmp_path)
        assert [m["artifactType"] for m in manifests.values()] == [IN_TOTO]
    listed = pybuild("attestations", f"docker://{plain_registry.ref(repo, 'm')}", "--json")
    assert listed.returncode == 0, describe(listed)
    assert sorted(r["platform"] for r in json.loads(listed.stdout)) == ["linux/amd64", "linux/arm64"]
