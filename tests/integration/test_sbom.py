"""The SBOM of a real build, checked by independent validators: spdx-tools (the SPDX project's
own parser and validator, the library behind ``pyspdxtools -i``) and cyclonedx-python-lib's
strict JSON schema validation of CycloneDX 1.5. Missing validators skip locally, fail on CI."""

from __future__ import annotations

import gzip
import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import builder
from builder.image import Image
from builder.oci.config import rfc3339
from builder.sbom import cyclonedx_json, inventory, spdx_json
from tests.conftest import skip_or_fail
from tests.helpers import layer_tar
from tests.unit.sbom.factory import OS_DEBIAN, apk_installed, dpkg_status, make_image, metadata

RECIPE = """\
version: 1
steps:
  - rootfs: rootfs.tar.gz
  - copy: app/
    to: /opt/app/
  - write: /etc/motd
    content: "hello\\n"
"""


def validator(module: str) -> ModuleType:
    """Import a validator's module, or skip (locally) / fail (on CI) the test without it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        skip_or_fail(f"needs the Python package providing {module} (pip install spdx-tools cyclonedx-python-lib)")
        raise


def spdx_problems(path: Path) -> list[str]:
    parse = validator("spdx_tools.spdx.parser.parse_anything")
    validate = validator("spdx_tools.spdx.validation.document_validator")
    document = parse.parse_file(str(path))
    return [m.validation_message for m in validate.validate_full_spdx_document(document)]


def cyclonedx_problem(raw: bytes) -> str | None:
    validation = validator("cyclonedx.validation.json")
    schema = validator("cyclonedx.schema")
    error = validation.JsonStrictValidator(schema.SchemaVersion.V1_5).validate_str(raw.decode())
    return None if error is None else str(error).splitlines()[0]


def built(tmp_path: Path) -> Image:
    ctx = tmp_path / "ctx"
    (ctx / "app" / "lib" / "tool-1.0.dist-info").mkdir(parents=True)
    (ctx / "app" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (ctx / "app" / "lib" / "tool-1.0.dist-info" / "METADATA").write_bytes(
        metadata("tool", "1.0", "License-Expression: Apache-2.0 OR MIT"))
    rootfs = layer_tar({
        "etc/os-release": OS_DEBIAN,
        "var/lib/dpkg/status": dpkg_status(("libc6", "1:2.36-9+deb12u4"), ("bash", "5.2.15-2+b2"),
                                           source="glibc (2.36-9)"),
        "usr/lib/python3/dist-packages/six-1.16.0.dist-info/METADATA": metadata("six", "1.16.0", "License: MIT"),
        "usr/lib/python3/dist-packages/odd-0.1.dist-info/METADATA": metadata("odd", "0.1", "License: Odd (c) me"),
        "bin/sh": b"\x7fELF not really",
    })
    (ctx / "rootfs.tar.gz").write_bytes(gzip.compress(rootfs, mtime=0))
    (ctx / "recipe.yaml").write_text(RECIPE)
    with builder.work_directory(tmp_path / "out") as workdir:
        result = builder.build(ctx / "recipe.yaml", builder.BuildOptions(workdir=workdir, cache_dir=tmp_path / "cache"))
        assert isinstance(result.result, Image)
        image = result.result
        inv = inventory(image, range(len(image.layers)), tmp_path / "cache")
        (tmp_path / "spdx.json").write_bytes(spdx_json(inv, **_args(image)))
        (tmp_path / "cdx.json").write_bytes(cyclonedx_json(inv, **_args(image)))
    return image


def _args(image: Image) -> dict[str, Any]:
    return {"name": "sbom-test:latest", "subject": image.digest, "created": rfc3339(0),
            "tool_version": builder.__version__}


def test_spdx_of_a_built_image_is_valid(tmp_path):
    image = built(tmp_path)
    assert spdx_problems(tmp_path / "spdx.json") == []
    doc = json.loads((tmp_path / "spdx.json").read_text())
    names = {p["name"] for p in doc["packages"]}
    assert {"libc6", "bash", "six", "odd", "tool", "layer 0", "layer 1", "layer 2"} <= names
    files = {f["fileName"] for f in doc["files"]}
    assert {"./opt/app/run.sh", "./etc/motd", "./bin/sh", "./var/lib/dpkg/status"} <= files
    assert len(image.layers) == 3


def test_cyclonedx_of_a_built_image_is_valid(tmp_path):
    built(tmp_path)
    raw = (tmp_path / "cdx.json").read_bytes()
    assert cyclonedx_problem(raw) is None
    comps = {c["name"]: c for c in json.loads(raw)["components"]}
    assert comps["tool"]["licenses"] == [{"expression": "Apache-2.0 OR MIT"}]
    assert {p["name"]: p["value"] for p in comps["/opt/app/run.sh"]["properties"]}["pybuild:layer"] == "1"


def test_the_validators_catch_what_they_should(tmp_path):
    """Each validator refuses a document broken the way a bug here would break it, so the
    tests above cannot pass by validating nothing."""
    built(tmp_path)
    doc = json.loads((tmp_path / "spdx.json").read_text())
    doc["files"][0]["checksums"] = [c for c in doc["files"][0]["checksums"] if c["algorithm"] != "SHA1"]
    doc["packages"][-1]["licenseDeclared"] = "LicenseRef-not-declared"
    broken = tmp_path / "broken.spdx.json"
    broken.write_text(json.dumps(doc))
    problems = " ".join(spdx_problems(broken))
    assert "SHA1" in problems and "LicenseRef-not-declared" in problems

    cdx = json.loads((tmp_path / "cdx.json").read_text())
    cdx["serialNumber"] = "urn:uuid:not-a-uuid"
    assert cyclonedx_problem(json.dumps(cdx).encode()) is not None


@pytest.mark.parametrize("licence", ["MIT", "GPL-2.0-or-later WITH Linux-syscall-note", "(MIT OR Apache-2.0) AND Zlib",
                                     "GPL-2.0+", "weird licence!", "BSD-3-Clause AND custom"])
def test_licences_both_ways_valid(tmp_path, licence):
    image = make_image(tmp_path, [{"lib/apk/db/installed": apk_installed(("p", "1", licence))}])
    inv = inventory(image, [])
    args: dict[str, Any] = {"name": "x", "subject": image.digest, "created": rfc3339(0), "tool_version": "0"}
    (tmp_path / "s.json").write_bytes(spdx_json(inv, **args))
    assert spdx_problems(tmp_path / "s.json") == []
    assert cyclonedx_problem(cyclonedx_json(inv, **args)) is None


def test_every_bundled_licence_id_is_on_the_spdx_list():
    from builder.sbom.licences import EXCEPTIONS, KNOWN

    licensing = validator("license_expression").get_spdx_licensing()
    assert [k for k in KNOWN if licensing.validate(k).errors] == []
    assert [e for e in EXCEPTIONS if licensing.validate(f"MIT WITH {e}").errors] == []


def test_purls_parse_back(tmp_path):
    packageurl = validator("packageurl")
    image = make_image(tmp_path, [{"etc/os-release": OS_DEBIAN,
                                   "var/lib/dpkg/status": dpkg_status(("libc6", "1:2.36-9+deb12u4"))}])
    (package,) = inventory(image, []).packages
    parsed = packageurl.PackageURL.from_string(package.purl)
    assert (parsed.type, parsed.namespace, parsed.name, parsed.version) == ("deb", "debian", "libc6",
                                                                              "1:2.36-9+deb12u4")
    assert parsed.qualifiers == {"arch": "amd64", "distro": "debian-12"}


def test_pyspdxtools_cli_accepts_the_document(tmp_path):
    """The validator as a user runs it: ``pyspdxtools -i FILE`` (beside this interpreter, or on PATH)."""
    beside = Path(sys.executable).parent / "pyspdxtools"
    tool = str(beside) if beside.is_file() else shutil.which("pyspdxtools")
    if tool is None:
        skip_or_fail("needs pyspdxtools (pip install spdx-tools)")
    assert tool is not None
    built(tmp_path)
    done = subprocess.run([tool, "-i", str(tmp_path / "spdx.json")], capture_output=True, text=True, timeout=300,
                          check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = json.loads((tmp_path / "spdx.json").read_text())
    broken["documentNamespace"] = "not a uri"
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    done = subprocess.run([tool, "-i", str(tmp_path / "broken.json")], capture_output=True, text=True, timeout=300,
                          check=False, stdin=subprocess.DEVNULL)
    assert done.returncode != 0
