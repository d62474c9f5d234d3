"""From the layers' scans to the final image: which databases and files survive, from which layer.

The rules are the image-spec's, as :mod:`builder.layer.reader` reads them and the applier
(:mod:`builder.fs.apply`) carries them out: a later layer *touches* a path when it has an entry
for it (which replaces it), a whiteout of it or of a parent, an opaque marker on a parent (which
hides every lower child, however deep), or a non-directory entry at a parent (which replaces the
directory). Markers hide only lower layers, never the layer's own entries.

So a path's content in the final image is the one of the topmost layer with an entry for it,
provided no layer above touches it. A package's layer is found by walking down from there: while
the next lower layer that touches the database is a copy of it listing the same package (name,
version, arch, in the same database file), the package was already there.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from urllib.parse import quote

from builder.image import Image
from builder.layer.entry import parents
from builder.sbom.model import File, Inventory, Layer, Package, Record
from builder.sbom.python import normalise
from builder.sbom.scan import OS_RELEASE, LayerScan, cached_scan

_ENTRY, _REMOVED = "entry", "removed"


def _touch(scan: LayerScan, path: str) -> str | None:
    """How ``scan``'s layer touches the lower layers' ``path``: replaced (an entry), removed, or not at all."""
    if path in scan.entries:
        return _ENTRY
    if path in scan.whiteouts:
        return _REMOVED
    for parent in parents(path):
        if parent in scan.whiteouts or parent in scan.opaques or scan.entries.get(parent, "d") != "d":
            return _REMOVED
    return None


def _survives(scans: Sequence[LayerScan], path: str, layer: int) -> bool:
    """Layer ``layer``'s entry at ``path`` is still there in the final image."""
    return all(_touch(scans[j], path) is None for j in range(layer + 1, len(scans)))


def _final(scans: Sequence[LayerScan], path: str, kept: dict[int, bool]) -> int | None:
    """The layer whose regular file at ``path`` is the final image's, or None."""
    for i in range(len(scans) - 1, -1, -1):
        touch = _touch(scans[i], path)
        if touch is None:
            continue
        return i if touch == _ENTRY and scans[i].entries[path] == "f" and kept.get(i, True) else None
    return None


def _first_layer(scans: Sequence[LayerScan], path: str, top: int, record: Record) -> int:
    first = top
    key = record.key()
    for j in range(top - 1, -1, -1):
        touch = _touch(scans[j], path)
        if touch is None:
            continue
        if touch != _ENTRY or not any(r.key() == key for r in scans[j].databases.get(path, ())):
            break
        first = j
    return first


def _distro(scans: Sequence[LayerScan]) -> dict[str, str]:
    for path in OS_RELEASE:  # /etc/os-release first; on Debian it is a symlink to the other
        top = _final(scans, path, {i: path in s.os_release for i, s in enumerate(scans)})
        if top is not None:
            return scans[top].os_release[path]
    return {}


def purl(record: Record, distro: str, distro_version: str) -> str:
    """The package URL of ``record`` in an image of ``distro`` (os-release ``ID``, may be "")."""
    def enc(text: str) -> str:
        return quote(text, safe=":")

    if record.kind == "pypi":
        return f"pkg:pypi/{enc(normalise(record.name))}@{enc(record.version)}"
    namespace = distro or {"deb": "debian", "apk": "alpine"}.get(record.kind, "")
    qualifiers = {"arch": record.arch}
    if distro and distro_version:
        qualifiers["distro"] = f"{distro}-{distro_version}"
    if record.kind == "rpm":
        qualifiers["epoch"] = record.epoch
    query = "&".join(f"{k}={enc(v)}" for k, v in sorted(qualifiers.items()) if v)
    ns = f"{enc(namespace.lower())}/" if namespace else ""
    return f"pkg:{record.kind}/{ns}{enc(record.name)}@{enc(record.version)}" + (f"?{query}" if query else "")


def _text(path: str) -> str:
    """A path as document text: a non-UTF-8 name (kept as surrogates) with its bad bytes replaced."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def inventory(image: Image, file_layers: Collection[int], cache_dir: Path | None = None) -> Inventory:
    """The layers, packages and files of ``image`` (see the module docstring and :mod:`builder.sbom`).

    ``file_layers``: indices of the layers made by copy, write and rootfs steps, whose regular
    files are listed (and hashed); every layer is read for package databases.
    """
    wanted = set(file_layers)
    scans = [cached_scan(blob, i in wanted, cache_dir) for i, blob in enumerate(image.layers)]
    release = _distro(scans)
    distro = "".join(c for c in release.get("ID", "").lower() if c.isalnum() or c in "._-")
    version = release.get("VERSION_ID", "")

    packages: dict[tuple[tuple[str, ...], str], Package] = {}
    for path in sorted({p for scan in scans for p in scan.databases}):
        top = _final(scans, path, {i: path in s.databases for i, s in enumerate(scans)})
        if top is None:
            continue
        for record in scans[top].databases[path]:
            key = ((*record.key(),), path)
            if key not in packages:
                packages[key] = Package(record, purl(record, distro, version), path,
                                        _first_layer(scans, path, top, record))

    files = []
    for i in sorted(wanted):
        hashes = scans[i].hashes if 0 <= i < len(scans) else None
        for path, (sha256, sha1) in sorted((hashes or {}).items()):
            if _survives(scans, path, i):
                files.append(File(_text(path), sha256, sha1, i))

    layers = tuple(Layer(i, blob.diff_id, blob.digest, str(blob.descriptor.media_type))
                   for i, blob in enumerate(image.layers))
    return Inventory(layers, tuple(sorted(packages.values(), key=Package.sort_key)),
                     tuple(sorted(files, key=lambda f: f.path)), distro, version)
