"""The inventory as an SPDX 2.3 JSON document.

Elements: the image (a package, ``primaryPackagePurpose`` CONTAINER, checksum = the manifest
digest), each layer (a package named ``layer N``, purpose ARCHIVE, checksum = its diff_id, the
compressed blob's digest and media type in its comment), each package found in a database
(purl as a PACKAGE-MANAGER external reference, where it was found in ``sourceInfo``) and each
file of a file layer (SHA1 and SHA256). Relationships: the document DESCRIBES the image; the image
CONTAINS every layer, package and file; the layer a package or file came from CONTAINS it too
(see :mod:`builder.sbom.state` for which layer that is). A package that CONTAINS files must say
``filesAnalyzed: true`` (SPDX 2.3 makes the verification code optional then; it is left out, as
the files listed are only those of file layers, not the whole package).

Licences: a declared licence that is an SPDX expression of known ids (:mod:`builder.sbom.licences`)
is used as it is; any other is a ``LicenseRef-`` with the declared text in
``hasExtractedLicensingInfos``; none is NOASSERTION.

The bytes are canonical JSON of values derived from the image only: the namespace is the
image digest's URN, ``created`` is the caller's (the build epoch), nothing is random.
"""

from __future__ import annotations

from typing import Any

from builder.oci.canonical import canonical_json
from builder.oci.digest import Digest
from builder.sbom.licences import licence_ref, spdx_expression
from builder.sbom.model import Inventory, Package, element_ids

NOASSERTION = "NOASSERTION"
_ALGORITHMS = {"sha256": "SHA256", "sha512": "SHA512"}


def namespace(subject: Digest) -> str:
    """The document namespace: one per image (a URN, which SPDX accepts as the absolute URI it asks for)."""
    return f"urn:pybuild:sbom:{subject.algorithm}:{subject.hex}"


def _checksum(digest: Digest) -> dict[str, str]:
    return {"algorithm": _ALGORITHMS.get(digest.algorithm, digest.algorithm.upper()), "checksumValue": digest.hex}


class _Licences:
    """Declared licences as SPDX expressions, LicenseRef ids made unique in sorted order."""

    def __init__(self, packages: tuple[Package, ...]) -> None:
        self.refs: dict[str, str] = {}
        taken: set[str] = set()
        for raw in sorted({p.record.licence for p in packages if p.record.licence}):
            if spdx_expression(raw) is None:
                ident, n = f"LicenseRef-{licence_ref(raw)}", 1
                while ident in taken:
                    n += 1
                    ident = f"LicenseRef-{licence_ref(raw)}-{n}"
                taken.add(ident)
                self.refs[raw] = ident

    def declared(self, raw: str) -> str:
        if not raw:
            return NOASSERTION
        return self.refs.get(raw) or spdx_expression(raw) or NOASSERTION

    def extracted(self) -> list[dict[str, str]]:
        return [{"licenseId": ident, "name": raw, "extractedText": raw} for raw, ident in self.refs.items()]


def _version(package: Package) -> str:
    r = package.record
    return f"{r.epoch}:{r.version}" if r.epoch else r.version


def spdx_json(inv: Inventory, *, name: str, subject: Digest, created: str, tool_version: str) -> bytes:
    """The SPDX 2.3 JSON document of ``inv`` for the image ``name`` whose manifest digest is ``subject``."""
    layer_ids, package_ids, file_ids = element_ids(inv)
    licences = _Licences(inv.packages)
    image = "SPDXRef-Image"
    with_files = {f.layer for f in inv.files}
    packages: list[dict[str, Any]] = [{
        "SPDXID": image, "name": name, "versionInfo": str(subject), "downloadLocation": NOASSERTION,
        "filesAnalyzed": bool(inv.files), "checksums": [_checksum(subject)], "primaryPackagePurpose": "CONTAINER",
        "licenseConcluded": NOASSERTION, "licenseDeclared": NOASSERTION, "copyrightText": NOASSERTION,
        "comment": f"OCI image {name}, manifest {subject}",
    }]
    relationships = [_rel("SPDXRef-DOCUMENT", "DESCRIBES", image)]
    for layer in inv.layers:
        ident = f"SPDXRef-{layer_ids[layer.index]}"
        packages.append({
            "SPDXID": ident, "name": f"layer {layer.index}", "downloadLocation": NOASSERTION,
            "filesAnalyzed": layer.index in with_files, "checksums": [_checksum(layer.diff_id)],
            "primaryPackagePurpose": "ARCHIVE", "licenseConcluded": NOASSERTION, "licenseDeclared": NOASSERTION,
            "copyrightText": NOASSERTION,
            "comment": f"layer {layer.index} of the image: diff_id {layer.diff_id}, blob {layer.digest} "
                       f"({layer.media_type})",
        })
        relationships.append(_rel(image, "CONTAINS", ident))
    for package in inv.packages:
        ident = f"SPDXRef-{package_ids[package]}"
        packages.append({
            "SPDXID": ident, "name": package.record.name, "versionInfo": _version(package),
            "downloadLocation": NOASSERTION, "filesAnalyzed": False, "licenseConcluded": NOASSERTION,
            "licenseDeclared": licences.declared(package.record.licence), "copyrightText": NOASSERTION,
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                              "referenceLocator": package.purl}],
            "sourceInfo": f"listed in /{package.db}, present since layer {package.layer}",
        })
        relationships += [_rel(image, "CONTAINS", ident),
                          _rel(f"SPDXRef-{layer_ids[package.layer]}", "CONTAINS", ident)]
    files = []
    for file in inv.files:
        ident = f"SPDXRef-{file_ids[file]}"
        files.append({
            "SPDXID": ident, "fileName": f"./{file.path}",
            "checksums": [{"algorithm": "SHA1", "checksumValue": file.sha1},
                          {"algorithm": "SHA256", "checksumValue": file.sha256}],
        })
        relationships += [_rel(image, "CONTAINS", ident), _rel(f"SPDXRef-{layer_ids[file.layer]}", "CONTAINS", ident)]
    doc: dict[str, Any] = {
        "spdxVersion": "SPDX-2.3", "dataLicense": "CC0-1.0", "SPDXID": "SPDXRef-DOCUMENT", "name": name,
        "documentNamespace": namespace(subject),
        "creationInfo": {"created": created, "creators": [f"Tool: pybuild-{tool_version}"]},
        "packages": packages, "files": files, "relationships": relationships,
    }
    if licences.refs:
        doc["hasExtractedLicensingInfos"] = licences.extracted()
    return canonical_json(doc)


def _rel(element: str, kind: str, related: str) -> dict[str, str]:
    return {"spdxElementId": element, "relationshipType": kind, "relatedSpdxElement": related}
