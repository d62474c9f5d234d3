"""The inventory as a CycloneDX 1.5 JSON document.

The image is the BOM's ``metadata.component`` (type ``container``, its manifest digest as a
SHA-256 hash, its layers' diff_ids in order as ``pybuild:layer:diff_id`` properties); every
package is a ``library`` component with its purl, and every file of a file layer a ``file``
component with SHA-1 and SHA-256 hashes. Where each came from is in its properties:
``pybuild:layer`` (the layer index) and ``pybuild:layer:diff_id``; a package also has
``pybuild:package:database`` (the database file that lists it).

Deterministic like the SPDX document: the ``serialNumber`` is a UUID 5 of the image digest,
bom-refs are the shared element ids (:func:`builder.sbom.model.element_ids`).
"""

from __future__ import annotations

import uuid
from typing import Any

from builder.oci.canonical import canonical_json
from builder.oci.digest import Digest
from builder.sbom.licences import is_single_id, spdx_expression
from builder.sbom.model import Inventory, Layer, Package, element_ids
from builder.sbom.spdx import namespace

_ALGORITHMS = {"sha256": "SHA-256", "sha512": "SHA-512"}


def serial_number(subject: Digest) -> str:
    """``urn:uuid:`` of a name-based (version 5) UUID of the SBOM's namespace: one per image."""
    return uuid.uuid5(uuid.NAMESPACE_URL, namespace(subject)).urn


def _licences(raw: str) -> list[dict[str, Any]]:
    if not raw:
        return []
    expression = spdx_expression(raw)
    if expression is None:
        return [{"license": {"name": raw}}]
    if is_single_id(expression):
        return [{"license": {"id": expression}}]
    return [{"expression": expression}]


def _origin(layer: Layer) -> list[dict[str, str]]:
    return [{"name": "pybuild:layer", "value": str(layer.index)},
            {"name": "pybuild:layer:diff_id", "value": str(layer.diff_id)}]


def _package(package: Package, ref: str, layer: Layer) -> dict[str, Any]:
    r = package.record
    component: dict[str, Any] = {
        "type": "library", "bom-ref": ref, "name": r.name, "version": f"{r.epoch}:{r.version}" if r.epoch else r.version,
        "purl": package.purl,
        "properties": [*_origin(layer), {"name": "pybuild:package:database", "value": f"/{package.db}"}],
    }
    licences = _licences(r.licence)
    if licences:
        component["licenses"] = licences
    return component


def cyclonedx_json(inv: Inventory, *, name: str, subject: Digest, created: str, tool_version: str) -> bytes:
    """The CycloneDX 1.5 JSON BOM of ``inv`` for the image ``name`` whose manifest digest is ``subject``."""
    _, package_ids, file_ids = element_ids(inv)
    layers = {layer.index: layer for layer in inv.layers}
    components = [_package(p, package_ids[p], layers[p.layer]) for p in inv.packages]
    components += [{
        "type": "file", "bom-ref": file_ids[f], "name": f"/{f.path}",
        "hashes": [{"alg": "SHA-1", "content": f.sha1}, {"alg": "SHA-256", "content": f.sha256}],
        "properties": _origin(layers[f.layer]),
    } for f in inv.files]
    image = {
        "type": "container", "bom-ref": "Image", "name": name, "version": str(subject),
        "hashes": [{"alg": _ALGORITHMS.get(subject.algorithm, subject.algorithm.upper()), "content": subject.hex}],
        "properties": [{"name": "pybuild:layer:diff_id", "value": str(layer.diff_id)} for layer in inv.layers],
    }
    doc = {
        "bomFormat": "CycloneDX", "specVersion": "1.5", "serialNumber": serial_number(subject), "version": 1,
        "metadata": {"timestamp": created,
                     "tools": {"components": [{"type": "application", "name": "pybuild", "version": tool_version}]},
                     "component": image},
        "components": components,
    }
    return canonical_json(doc)
