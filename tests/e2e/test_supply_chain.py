"""The SBOM of a real Debian image against what dpkg itself says inside it, and both SBOM formats
through their independent validators.

The Debian root filesystem is the ``debian_rootfs`` fixture (``debian.py``), made once per run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import skip_or_fail

from .debian import RECIPES
from .runtimes import Runc, describe

pytestmark = [pytest.mark.tools, pytest.mark.slow]

DPKG_FORMAT = "${Package}\\t${Version}\\t${Architecture}\\n"


def spdx_packages(doc: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """name -> (version, purl) of the SPDX document's dpkg packages."""
    out = {}
    for package in doc["packages"]:
        purls = [r["referenceLocator"] for r in package.get("externalRefs", []) if r["referenceType"] == "purl"]
        if purls and purls[0].startswith("pkg:deb/"):
            out[package["name"]] = (package["versionInfo"], purls[0])
    return out


def pyspdxtools() -> str:
    """spdx-tools' validator: beside this Python (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "pyspdxtools"
    found = str(beside) if beside.is_file() else shutil.which("pyspdxtools")
    if found is None:
        skip_or_fail("pyspdxtools (pip install spdx-tools) is not installed")
    assert found is not None
    return found


def test_the_debian_sbom_lists_what_dpkg_lists(debian_rootfs: Path, pybuild, tmp_path: Path, runc: Runc) -> None:
    validator = pyspdxtools()
    out = tmp_path / "debian"
    built = pybuild(RECIPES / "debian" / "debian.yaml", "-o", out, "--context", debian_rootfs, "--sbom", timeout=1800)
    assert built.returncode == 0, describe(built)
    listed = json.loads(pybuild("attestations", out, "--json").stdout)
    assert sorted(r["artifact_type"] for r in listed) == [
        "application/spdx+json", "application/vnd.cyclonedx+json", "application/vnd.in-toto+json"]

    ran = runc.run(out, "bookworm", ["dpkg-query", "-W", "-f", DPKG_FORMAT])
    dpkg = {name: (version, arch) for name, version, arch in (line.split("\t") for line in ran.stdout.splitlines())}
    assert len(dpkg) > 50, describe(ran)
    spdx_text = pybuild("sbom", out).stdout
    spdx = spdx_packages(json.loads(spdx_text))
    assert set(spdx) == set(dpkg)
    for name, (version, arch) in dpkg.items():
        assert spdx[name][0] == version, name
        assert spdx[name][1].startswith(f"pkg:deb/debian/{quote(name, safe='')}@") and f"arch={arch}" in spdx[name][1], spdx[name]

    doc = json.loads(spdx_text)
    assert doc["documentNamespace"].endswith(json.loads(pybuild("inspect", out, "--json").stdout)["digest"])
    files = {f["fileName"] for f in doc["files"]}
    assert "./usr/bin/dpkg" in files or "/usr/bin/dpkg" in files  # the rootfs step's files, each with its digest
    spdx_file = tmp_path / "debian.spdx.json"
    spdx_file.write_text(spdx_text)
    checked = subprocess.run([validator, "-i", str(spdx_file)], capture_output=True, text=True, timeout=1200,
                             check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    cyclonedx = pybuild("sbom", out, "--format", "cyclonedx").stdout
    validated = subprocess.run([sys.executable, "-c", (
        "import sys\n"
        "from cyclonedx.schema import SchemaVersion\n"
        "from cyclonedx.validation.json import JsonStrictValidator\n"
        "error = JsonStrictValidator(SchemaVersion.V1_5).validate_str(sys.stdin.read())\n"
        "sys.exit(str(error) if error else 0)\n")], input=cyclonedx, capture_output=True, text=True, timeout=600,
        check=False)
    assert validated.returncode == 0, validated.stderr
    components = {c["name"]: c["version"] for c in json.loads(cyclonedx)["components"] if c["type"] == "library"}
    assert {name: version for name, (version, _) in dpkg.items()}.items() <= components.items()
