"""The one model both SBOM documents are written from: layers, packages and files of an image.

SPDX and CycloneDX say the same thing in different words, so they are made from the same
:class:`Inventory`, with the same element ids (:func:`element_ids`): a package is never named
one way in one document and another way in the other.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from builder.oci.digest import Digest


@dataclass(frozen=True, slots=True)
class Record:
    """One package as its database lists it, before the image's distro is known.

    ``kind``: ``deb``, ``apk``, ``rpm`` or ``pypi``. ``version`` is the full version a purl
    names (an RPM's ``VERSION-RELEASE``); ``epoch`` is an RPM's epoch ("" when none). Every field
    is a plain string so that a layer's scan caches as JSON and reads back equal.
    """

    kind: str
    name: str
    version: str
    arch: str = ""
    source: str = ""
    licence: str = ""
    epoch: str = ""

    def key(self) -> tuple[str, str, str, str, str]:
        """What makes a later layer's copy of the package "the same package": kind, name, version, arch."""
        return self.kind, self.name, self.version, self.arch, self.epoch


@dataclass(frozen=True, slots=True)
class Package:
    """A package present in the final image: its record, its purl, the database file that lists it
    and the first layer from which it has been present continuously up to the final image."""

    record: Record
    purl: str
    db: str
    layer: int

    def sort_key(self) -> tuple[str, str, str, str, str, str]:
        r = self.record
        return r.kind, r.name, r.version, r.arch, r.epoch, self.db


@dataclass(frozen=True, slots=True)
class File:
    """A regular file a file layer (copy, write, rootfs) added that is still in the final image."""

    path: str
    sha256: str
    sha1: str
    """SPDX 2.3 asks a file for a SHA1 checksum besides any other (pyspdxtools refuses one without)."""
    layer: int


@dataclass(frozen=True, slots=True)
class Layer:
    """One layer of the image, by index (0 = bottom), as the documents name it."""

    index: int
    diff_id: Digest
    digest: Digest
    media_type: str


@dataclass(frozen=True, slots=True)
class Inventory:
    """Everything an SBOM says about one image, sorted canonically (see :func:`inventory`)."""

    layers: tuple[Layer, ...]
    packages: tuple[Package, ...]
    files: tuple[File, ...]
    distro: str = ""
    """``ID=`` of the final image's os-release ("" when there is none)."""
    distro_version: str = ""


_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9.-]+")


def _clean(text: str, limit: int = 64) -> str:
    return _BAD_ID_CHARS.sub("-", text).strip("-")[:limit] or "x"


def element_ids(inv: Inventory) -> tuple[dict[int, str], dict[Package, str], dict[File, str]]:
    """Ids for every layer, package and file, valid as SPDX ids after ``SPDXRef-`` (letters,
    digits, ``.`` and ``-``) and unique: readable names, then a short hash of the whole identity.

    The hash (of what distinguishes two elements: a package's key and database, a file's path)
    keeps ids stable when another element is added, which a counter would not.
    """
    taken: set[str] = set()

    def unique(base: str, identity: str) -> str:
        digest = hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest()
        for length in (8, 16, 64):
            candidate = f"{base}-{digest[:length]}"
            if candidate not in taken:
                break
        else:  # the same identity twice: impossible for sorted, de-duplicated values; still unique
            n = 2
            while f"{candidate}-{n}" in taken:
                n += 1
            candidate = f"{candidate}-{n}"
        taken.add(candidate)
        return candidate

    layers = {layer.index: f"Layer-{layer.index}" for layer in inv.layers}
    taken.update(layers.values())
    packages = {p: unique(f"Package-{p.record.kind}-{_clean(p.record.name)}-{_clean(p.record.version, 32)}",
                          "\0".join((*p.record.key(), p.db)))
                for p in inv.packages}
    files = {f: unique(f"File-{_clean(f.path.rpartition('/')[2], 48)}", f.path) for f in inv.files}
    return layers, packages, files
