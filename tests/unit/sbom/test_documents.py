"""The SPDX and CycloneDX documents of one inventory: deterministic bytes, valid ids, the
relationships that say where each package and file came from, and the licences."""

from __future__ import annotations

import json
import re
from typing import Any

from builder.oci.digest import Digest
from builder.sbom import cyclonedx_json, inventory, spdx_json
from builder.sbom.model import File, Inventory, Layer, Package, Record, element_ids

from .factory import OS_DEBIAN, apk_installed, dpkg_status, make_image, metadata

SUBJECT = Digest.parse("sha256:" + "ab" * 32)
ARGS: dict[str, Any] = {"name": "example.org/app:1.0", "subject": SUBJECT, "created": "2024-01-02T03:04:05Z", "tool_version": "0.1.0"}


def sample(tmp_path) -> Inventory:
    return inventory(make_image(tmp_path, [
        {"etc/os-release": OS_DEBIAN, "var/lib/dpkg/status": dpkg_status(("libc6", "2.36"), ("bash", "5.2"))},
        {"lib/apk/db/installed": apk_installed(("musl", "1.2", "MIT"), ("odd", "1", "MIT BSD"),
                                                ("dual", "2", "mit or apache-2.0"), ("none", "3", ""))},
        {"app/main.py": b"print()\n", "app/data.bin": b"\0" * 10,
         "usr/lib/python3/dist-packages/x-1.dist-info/METADATA": metadata("x", "1", "License: Apache 2.0")},
    ]), [2])


def test_same_inventory_same_bytes(tmp_path):
    one, two = sample(tmp_path / "1"), sample(tmp_path / "2")
    assert spdx_json(one, **ARGS) == spdx_json(two, **ARGS)
    assert cyclonedx_json(one, **ARGS) == cyclonedx_json(two, **ARGS)
    other: dict[str, Any] = {**ARGS, "subject": Digest.parse("sha256:" + "cd" * 32)}
    assert json.loads(spdx_json(one, **other))["documentNamespace"] != json.loads(spdx_json(one, **ARGS))[
        "documentNamespace"]
    assert json.loads(cyclonedx_json(one, **other))["serialNumber"] != json.loads(cyclonedx_json(one, **ARGS))[
        "serialNumber"]


def test_spdx_document_shape_and_relationships(tmp_path):
    inv = sample(tmp_path)
    doc = json.loads(spdx_json(inv, **ARGS))
    assert doc["spdxVersion"] == "SPDX-2.3"
    assert doc["documentNamespace"] == f"urn:pybuild:sbom:sha256:{SUBJECT.hex}"
    assert doc["creationInfo"] == {"created": ARGS["created"], "creators": ["Tool: pybuild-0.1.0"]}
    ids = [e["SPDXID"] for e in doc["packages"] + doc["files"]]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"SPDXRef-[A-Za-z0-9.-]+", i) for i in ids)
    by_name = {p["name"]: p for p in doc["packages"]}
    rels = {(r["spdxElementId"], r["relationshipType"], r["relatedSpdxElement"]) for r in doc["relationships"]}
    assert ("SPDXRef-DOCUMENT", "DESCRIBES", "SPDXRef-Image") in rels
    assert (by_name["layer 2"]["checksums"] == [{"algorithm": "SHA256", "checksumValue": inv.layers[2].diff_id.hex}])
    assert str(inv.layers[2].digest) in by_name["layer 2"]["comment"]
    for name, layer in [("libc6", 0), ("musl", 1), ("x", 2)]:
        ident = by_name[name]["SPDXID"]
        assert ("SPDXRef-Image", "CONTAINS", ident) in rels
        assert (f"SPDXRef-Layer-{layer}", "CONTAINS", ident) in rels
        assert not any(r[2] == ident and r[0] not in ("SPDXRef-Image", f"SPDXRef-Layer-{layer}") for r in rels)
    files = {f["fileName"]: f for f in doc["files"]}
    assert set(files) == {"./app/data.bin", "./app/main.py",
                          "./usr/lib/python3/dist-packages/x-1.dist-info/METADATA"}
    assert ("SPDXRef-Layer-2", "CONTAINS", files["./app/main.py"]["SPDXID"]) in rels
    assert by_name["layer 2"]["filesAnalyzed"] is True and by_name["layer 0"]["filesAnalyzed"] is False
    assert by_name["libc6"]["externalRefs"][0]["referenceLocator"] == "pkg:deb/debian/libc6@2.36?arch=amd64&distro=debian-12"


def test_spdx_licences(tmp_path):
    doc = json.loads(spdx_json(sample(tmp_path), **ARGS))
    declared = {p["name"]: p["licenseDeclared"] for p in doc["packages"]}
    assert declared["musl"] == "MIT"
    assert declared["dual"] == "MIT OR Apache-2.0"
    assert declared["none"] == "NOASSERTION"
    assert declared["libc6"] == "NOASSERTION"
    refs = {e["licenseId"]: e["extractedText"] for e in doc["hasExtractedLicensingInfos"]}
    assert refs == {"LicenseRef-MIT-BSD": "MIT BSD", "LicenseRef-Apache-2.0": "Apache 2.0"}
    assert declared["odd"] == "LicenseRef-MIT-BSD" and declared["x"] == "LicenseRef-Apache-2.0"


def test_cyclonedx_document_shape(tmp_path):
    inv = sample(tmp_path)
    doc = json.loads(cyclonedx_json(inv, **ARGS))
    assert doc["specVersion"] == "1.5"
    assert re.fullmatch(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", doc["serialNumber"])
    assert doc["metadata"]["timestamp"] == ARGS["created"]
    assert doc["metadata"]["component"]["hashes"] == [{"alg": "SHA-256", "content": SUBJECT.hex}]
    comps = {c["name"]: c for c in doc["components"]}
    props = {p["name"]: p["value"] for p in comps["musl"]["properties"]}
    assert props == {"pybuild:layer": "1", "pybuild:layer:diff_id": str(inv.layers[1].diff_id),
                     "pybuild:package:database": "/lib/apk/db/installed"}
    assert comps["musl"]["licenses"] == [{"license": {"id": "MIT"}}]
    assert comps["dual"]["licenses"] == [{"expression": "MIT OR Apache-2.0"}]
    assert comps["odd"]["licenses"] == [{"license": {"name": "MIT BSD"}}]
    assert "licenses" not in comps["none"]
    assert comps["/app/main.py"]["type"] == "file"
    assert {h["alg"] for h in comps["/app/main.py"]["hashes"]} == {"SHA-1", "SHA-256"}
    assert {p["value"] for p in comps["/app/main.py"]["properties"]} >= {"2"}
    refs = [c["bom-ref"] for c in doc["components"]]
    assert len(refs) == len(set(refs))


def test_ids_unique_when_names_sanitise_alike():
    layer = Layer(0, SUBJECT, SUBJECT, "application/vnd.oci.image.layer.v1.tar")
    pkgs = tuple(Package(Record("pypi", n, "1"), f"pkg:pypi/{n}@1", "db", 0) for n in ("a b", "a+b", "a-b", "a b"))
    files = tuple(File(p, "0" * 64, "0" * 40, 0) for p in ("x/a b", "y/a+b", "a b"))
    _, package_ids, file_ids = element_ids(Inventory((layer,), pkgs, files))
    assert len(set(package_ids.values())) == 3  # the two equal packages are one value
    assert len(set(file_ids.values())) == 3
    assert all(re.fullmatch(r"[A-Za-z0-9.-]+", i) for i in [*package_ids.values(), *file_ids.values()])
