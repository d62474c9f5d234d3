"""Python distributions: ``*.dist-info/METADATA`` and ``*.egg-info/PKG-INFO`` (or a ``*.egg-info`` file).

Wherever they are in the image (site-packages of any interpreter, a venv under /opt, ...): the
file's place is what makes it a distribution's metadata, nothing else is looked for. Read with
the standard library's email parser (the core metadata format is RFC 822 headers). The licence
is ``License-Expression`` (PEP 639), else a one-line ``License`` field, else the licence
classifiers; a free-text licence (some projects paste the whole licence) is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from email.parser import HeaderParser
from email.policy import compat32

from builder.sbom.model import Record

_MAX_LICENCE = 200
_CLASSIFIERS = {
    "MIT License": "MIT",
    "Apache Software License": "Apache-2.0",
    "BSD License": "BSD-3-Clause",
    "ISC License (ISCL)": "ISC",
    "Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
    "Python Software Foundation License": "PSF-2.0",
    "GNU General Public License v2 (GPLv2)": "GPL-2.0-only",
    "GNU General Public License v3 (GPLv3)": "GPL-3.0-only",
    "GNU Lesser General Public License v3 (LGPLv3)": "LGPL-3.0-only",
    "The Unlicense (Unlicense)": "Unlicense",
}
"""``License :: OSI Approved :: X`` classifiers that name one SPDX licence unambiguously enough."""


def is_metadata(path: str) -> bool:
    """``path`` (canonical) is a distribution's metadata file."""
    head, _, base = path.rpartition("/")
    parent = head.rpartition("/")[2]
    return ((base == "METADATA" and parent.endswith(".dist-info"))
            or (base == "PKG-INFO" and parent.endswith(".egg-info"))
            or (base.endswith(".egg-info") and len(base) > len(".egg-info")))


def normalise(name: str) -> str:
    """A project name as PEP 503 (and the pypi purl type) compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse(data: bytes) -> list[Record]:
    """The one distribution a metadata file describes ([] without a name and a version)."""
    fields = HeaderParser(policy=compat32).parsestr(data.decode("utf-8", "replace"))
    name, version = _one_line(fields.get("Name")), _one_line(fields.get("Version"))
    if not name or not version:
        return []
    return [Record("pypi", name, version, licence=_licence(fields.get_all("License-Expression") or [],
                                                           fields.get_all("License") or [],
                                                           fields.get_all("Classifier") or []))]


def _licence(expressions: Sequence[object], licences: Sequence[object], classifiers: Sequence[object]) -> str:
    for value in (*expressions, *licences):
        text = _one_line(value)
        if text and text.upper() not in ("UNKNOWN", "NONE"):
            return text
    found = []
    for classifier in classifiers:
        head, _, tail = _one_line(classifier).rpartition(" :: ")
        if head.startswith("License ::") and tail in _CLASSIFIERS and _CLASSIFIERS[tail] not in found:
            found.append(_CLASSIFIERS[tail])
    return " AND ".join(found)


def _one_line(value: object) -> str:
    """A field's value when it is a short single line, else ""."""
    if not isinstance(value, str):
        return ""
    text = value.strip()
    return text if len(text) <= _MAX_LICENCE and "\n" not in text else ""
