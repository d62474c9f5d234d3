"""Attestations attached as OCI referrers: in layouts and archives, read back by the CLI, and valid
by the in-toto project's own definitions of a Statement and of SLSA provenance v1."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_oci_check, skip_or_fail

RECIPE = """\
version: 1
tag: demo
steps:
  - rootfs: rootfs.tar.gz
  - write: /etc/flavour
    content: "{flavour}\\n"
"""


@pytest.fixture
def ctx(tmp_path: Path, busybox_rootfs_tar: Path) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "rootfs.tar.gz").write_bytes(busybox_rootfs_tar.read_bytes())
    (ctx / "recipe.yaml").write_text(RECIPE.format(flavour="plain"))
    return ctx


def index_of(layout: Path) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads((layout / "index.json").read_text())["manifests"]
    return entries


def blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / digest.replace(":", "/")).read_bytes()


def referrers(layout: Path) -> list[dict[str, Any]]:
    """The referrer manifests a layout lists (untagged entries with an artifactType)."""
    return [json.loads(blob(layout, e["digest"])) for e in index_of(layout) if "artifactType" in e]


def image_digest(layout: Path, tag: str = "demo") -> str:
    [entry] = [e for e in index_of(layout) if e.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
    return str(entry["digest"])


def test_provenance_is_attached_without_changing_the_image(pybuild, ctx: Path, tmp_path: Path) -> None:
    with_, without = tmp_path / "with", tmp_path / "without"
    assert pybuild(ctx / "recipe.yaml", "-o", with_).returncode == 0
    assert pybuild(ctx / "recipe.yaml", "-o", without, "--no-attestations").returncode == 0
    assert image_digest(with_) == image_digest(without)  # the manifest is the same bytes either way
    assert referrers(without) == []
    [manifest] = referrers(with_)
    entry = next(e for e in index_of(with_) if "artifactType" in e)
    assert entry["artifactType"] == manifest["artifactType"] == "application/vnd.in-toto+json"
    assert entry["annotations"]["in-toto.io/predicate-type"] == "https://slsa.dev/provenance/v1"
    assert manifest["subject"]["digest"] == image_digest(with_)
    assert manifest["subject"]["size"] == len(blob(with_, image_digest(with_)))
    assert manifest["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    assert blob(with_, manifest["config"]["digest"]) == b"{}"
    statement = json.loads(blob(with_, manifest["layers"][0]["digest"]))
    assert statement["subject"][0]["digest"]["sha256"] == image_digest(with_).removeprefix("sha256:")
    for layout in (with_, without):
        proc = run_oci_check(layout, strict=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_two_builds_attach_the_same_bytes(pybuild, ctx: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    assert pybuild(ctx / "recipe.yaml", "-o", one, "--sbom").returncode == 0
    assert pybuild(ctx / "recipe.yaml", "-o", two, "--sbom", "--no-cache").returncode == 0
    assert (one / "index.json").read_bytes() == (two / "index.json").read_bytes()
    assert sorted(m["artifactType"] for m in referrers(one)) == sorted(
        ["application/vnd.in-toto+json", "application/spdx+json", "application/vnd.cyclonedx+json"])
    for manifest in referrers(one):  # provenance, SPDX and CycloneDX: byte for byte
        assert blob(one, manifest["layers"][0]["digest"]) == blob(two, manifest["layers"][0]["digest"])


def test_a_retagged_image_takes_its_referrers_along(pybuild, ctx: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert pybuild(ctx / "recipe.yaml", "-o", out).returncode == 0
    assert pybuild(ctx / "recipe.yaml", "-o", out, "-t", "keep").returncode == 0  # the same image, a second tag
    first = image_digest(out)
    old = referrers(out)  # one statement per tag: each names the image by the tag it was built as
    assert len(old) == 2 and {m["subject"]["digest"] for m in old} == {first}
    (ctx / "recipe.yaml").write_text(RECIPE.format(flavour="spicy"))
    assert pybuild(ctx / "recipe.yaml", "-o", out).returncode == 0
    subjects = sorted(m["subject"]["digest"] for m in referrers(out))
    assert subjects == sorted([first, first, image_digest(out)])  # "keep" still leads to the first image
    assert pybuild(ctx / "recipe.yaml", "-o", out, "-t", "keep").returncode == 0  # now nothing leads to it
    assert {m["subject"]["digest"] for m in referrers(out)} == {image_digest(out)}
    for manifest in old:  # collected with the image
        assert not (out / "blobs" / manifest["layers"][0]["digest"].replace(":", "/")).exists()
    proc = run_oci_check(out, strict=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_platform_gets_its_own(pybuild, ctx: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert pybuild(ctx / "recipe.yaml", "-o", out, "--platform", "linux/amd64", "--platform", "linux/arm64").returncode == 0
    index = json.loads(blob(out, image_digest(out)))
    children = {m["digest"]: m["platform"]["architecture"] for m in index["manifests"]}
    attached = {m["subject"]["digest"] for m in referrers(out)}
    assert attached == set(children)
    listed = json.loads(pybuild("attestations", out, "--json").stdout)
    assert sorted(r["platform"] for r in listed) == ["linux/amd64", "linux/arm64"]
    several = pybuild("attestations", out, "--type", "provenance")
    assert several.returncode == 1 and "--platform" in several.stderr
    one = pybuild("attestations", out, "--type", "provenance", "--platform", "linux/arm64")
    assert json.loads(one.stdout)["predicate"]["buildDefinition"]["externalParameters"]["platform"] == "linux/arm64"


@pytest.mark.parametrize("fmt", ["oci", "oci-archive", "docker-archive"])
def test_the_cli_reads_them_back(pybuild, ctx: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / ("out" if fmt == "oci" else "out.tar")
    assert pybuild(ctx / "recipe.yaml", "-o", out, "--format", fmt).returncode == 0
    if fmt != "oci":
        proc = run_oci_check(out, strict=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        with tarfile.open(out) as tar:
            assert "manifest.json" in tar.getnames()  # podman 4 loads it by manifest.json (test_cli_tools.py)
    listed = pybuild("attestations", out, "--json")
    assert listed.returncode == 0, listed.stderr
    [entry] = json.loads(listed.stdout)
    assert entry["artifact_type"] == "application/vnd.in-toto+json"
    printed = pybuild("attestations", out, "--type", "provenance")
    assert printed.returncode == 0, printed.stderr
    statement = json.loads(printed.stdout)
    assert statement["subject"][0]["digest"]["sha256"] == entry["subject"].removeprefix("sha256:")
    inspected = json.loads(pybuild("inspect", out, "--json").stdout)
    assert [r["digest"] for r in inspected["referrers"]] == [entry["digest"]]
    text = pybuild("inspect", out).stdout
    assert "referrers:     1" in text and "https://slsa.dev/provenance/v1" in text
    missing = pybuild("sbom", out)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1].startswith("pybuild: error: ") and "--sbom" in missing.stderr
    if fmt == "oci":
        assert len(pybuild("ls", out).stdout.strip().splitlines()) == 1  # the referrer is no image of its own


def test_provenance_is_a_valid_in_toto_statement_and_slsa_predicate(pybuild, ctx: Path, tmp_path: Path) -> None:
    """Parsed strictly (no unknown field, every type right) by the in-toto project's own protobuf
    definitions of a Statement v1 and of SLSA provenance v1, then checked by its validators."""
    try:
        from google.protobuf import json_format
        from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
        from in_toto_attestation.v1 import statement_pb2
        from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
        from in_toto_attestation.v1.statement import Statement
    except ImportError:
        skip_or_fail("in-toto-attestation is not installed (pip install in-toto-attestation)")
    out = tmp_path / "out"
    assert pybuild(ctx / "recipe.yaml", "-o", out).returncode == 0
    raw = pybuild("attestations", out, "--type", "provenance").stdout
    statement = json_format.Parse(raw, statement_pb2.Statement())
    Statement.copy_from_pb(statement).validate()
    doc = json.loads(raw)
    provenance = json_format.ParseDict(doc["predicate"], provenance_pb2.Provenance())
    definition, details = provenance.build_definition, provenance.run_details
    # the fields SLSA provenance v1 says are REQUIRED
    assert definition.build_type and definition.external_parameters and details.builder.id
    assert len(definition.resolved_dependencies) == 1
    for dependency in definition.resolved_dependencies:
        ResourceDescriptor.copy_from_pb(dependency).validate()
    with pytest.raises(json_format.ParseError):  # the strict parse does refuse what is not in the definitions
        json_format.ParseDict({**doc["predicate"], "runDetail": {}}, provenance_pb2.Provenance())
