"""The SBOM of a built image: SPDX 2.3 and CycloneDX 1.5 JSON documents from one model.

:func:`inventory` reads the image's layers (each once, streamed, cached by diff_id under
``cache_dir/sbom``) into an :class:`Inventory`: the packages the final filesystem's databases list
(dpkg, apk, rpmdb.sqlite, Python dist-info/egg-info), each with the first layer from which it has
been present without a break, and the regular files that the file layers (copy, write, rootfs)
added and that are still there, with their checksums. :func:`spdx_json` and
:func:`cyclonedx_json` write that one model as each format's deterministic bytes.

Modules: model (the values and their ids), scan (one layer, and its cache), state (the final
filesystem, layer attribution, purls), dpkg / apk / rpm / python (one database format each),
licences (SPDX expressions of known ids), spdx and cyclonedx (the documents).
"""

from builder.sbom.cyclonedx import cyclonedx_json
from builder.sbom.model import File, Inventory, Layer, Package, Record
from builder.sbom.spdx import spdx_json
from builder.sbom.state import inventory

__all__ = ["File", "Inventory", "Layer", "Package", "Record", "cyclonedx_json", "inventory", "spdx_json"]
