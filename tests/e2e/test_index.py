"""``pybuild index create``: images built for one platform each, on separate runners, joined into one
image index, in a registry (without downloading a layer) or in a layout. Checked with skopeo and
umoci, which know nothing of pybuild."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .registry import Registry, proxy_fixture, registry_fixture, skopeo, unique_repo
from .runtimes import describe

pytestmark = [pytest.mark.tools, pytest.mark.needs("docker-registry", "skopeo", "openssl", "umoci")]

plain_registry = registry_fixture("plain")
make_proxy = proxy_fixture()

RECIPE = """\
version: 1
steps:
  - rootfs: rootfs.tar.gz
  - write: /etc/arch
    content: "${TARGETARCH}\\n"
config:
  cmd: ["/bin/cat", "/etc/arch"]
"""


def _push_platform(pybuild: Any, ctx: Path, tmp_path: Path, platform: str, ref: str) -> str:
    out = tmp_path / platform.replace("/", "-")
    result = pybuild(ctx / "recipe.yaml", "-o", out, "--platform", platform, "--push", ref, "-q")
    assert result.returncode == 0, describe(result)
    digest: str = result.stdout.strip()
    return digest


def test_two_runners_joined_in_a_third_repository_without_downloading_a_layer(
        pybuild: Any, ctx: Path, tmp_path: Path, plain_registry: Registry, make_proxy: Any) -> None:
    (ctx / "recipe.yaml").write_text(RECIPE)
    amd_repo, arm_repo, joined = unique_repo("amd"), unique_repo("arm"), unique_repo("multi")
    amd = _push_platform(pybuild, ctx, tmp_path, "linux/amd64", plain_registry.ref(amd_repo, "1"))
    arm = _push_platform(pybuild, ctx, tmp_path, "linux/arm64", plain_registry.ref(arm_repo, "1"))

    proxy = make_proxy(plain_registry)  # counts what the join asks for
    result = pybuild("index", "create", f"{proxy.host}/{joined}:1", f"{proxy.host}/{amd_repo}:1",
                     f"{proxy.host}/{arm_repo}:1")
    assert result.returncode == 0, describe(result)
    index = json.loads(skopeo("inspect", "--raw", "--tls-verify=false",
                              f"docker://{plain_registry.ref(joined, '1')}").stdout)
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert {(m["platform"]["architecture"], m["digest"]) for m in index["manifests"]} == {("amd64", amd),
                                                                                         ("arm64", arm)}
    assert result.stdout.strip().startswith("sha256:")
    # no layer was downloaded: the only blobs read are the two configs; the layers were mounted
    blob_gets = [r.path for r in proxy.requests if r.method == "GET" and "/blobs/" in r.path]
    assert len(blob_gets) == 2, blob_gets
    assert proxy.count("POST", r"mount=") >= 2

    # each platform's image is whole in the joined repository: skopeo copies it, umoci unpacks it
    for arch in ("amd64", "arm64"):
        layout = tmp_path / f"check-{arch}"
        skopeo("copy", "--src-tls-verify=false", "--override-arch", arch,
               f"docker://{plain_registry.ref(joined, '1')}", f"oci:{layout}:x")
        bundle = tmp_path / f"bundle-{arch}"
        subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:x", str(bundle)], check=True,
                       capture_output=True)
        assert (bundle / "rootfs" / "etc" / "arch").read_text() == f"{arch}\n"


def test_two_images_of_one_platform_are_refused(pybuild: Any, ctx: Path, tmp_path: Path,
                                                plain_registry: Registry) -> None:
    (ctx / "recipe.yaml").write_text(RECIPE)
    one, two = unique_repo("one"), unique_repo("two")
    _push_platform(pybuild, ctx, tmp_path, "linux/amd64", plain_registry.ref(one, "1"))
    _push_platform(pybuild, ctx, tmp_path, "linux/amd64", plain_registry.ref(two, "1"))
    result = pybuild("index", "create", plain_registry.ref(unique_repo("multi"), "1"), plain_registry.ref(one, "1"),
                     plain_registry.ref(two, "1"))
    assert result.returncode == 1
    assert result.stderr.startswith("pybuild: error: ") and "linux/amd64" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_layouts_joined_into_a_layout(pybuild: Any, ctx: Path, tmp_path: Path, oci_check: Any) -> None:
    (ctx / "recipe.yaml").write_text(RECIPE)
    for platform in ("linux/amd64", "linux/arm64"):
        out = tmp_path / platform.replace("/", "-")
        result = pybuild(ctx / "recipe.yaml", "-o", out, "--platform", platform, "-q")
        assert result.returncode == 0, describe(result)
    joined = tmp_path / "joined"
    result = pybuild("index", "create", f"oci:{joined}:multi", f"oci:{tmp_path / 'linux-amd64'}",
                     f"oci:{tmp_path / 'linux-arm64'}")
    assert result.returncode == 0, describe(result)
    checked = oci_check(joined)
    assert checked.returncode == 0, describe(checked)
    raw = json.loads(skopeo("inspect", "--raw", f"oci:{joined}:multi").stdout)
    assert sorted(m["platform"]["architecture"] for m in raw["manifests"]) == ["amd64", "arm64"]
