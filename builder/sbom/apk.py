"""Alpine packages: ``lib/apk/db/installed`` (apk-tools' "installed" database).

Paragraphs separated by blank lines of ``X:value`` lines, one letter a field: ``P`` name, ``V``
version, ``A`` architecture, ``L`` licence, ``o`` origin (the source package). A paragraph
without a name or a version is skipped.
"""

from __future__ import annotations

from builder.sbom.model import Record

DATABASES = ("lib/apk/db/installed", "usr/lib/apk/db/installed")
"""The classic place, and the one apk-tools 3 moves it to (under /usr)."""


def parse(data: bytes) -> list[Record]:
    """The packages an apk ``installed`` database lists."""
    found = []
    fields: dict[str, str] = {}
    for line in [*data.decode("utf-8", "replace").splitlines(), ""]:
        if line.strip():
            key, sep, value = line.partition(":")
            if sep and len(key) == 1:
                fields.setdefault(key, value.strip())
            continue
        if fields.get("P") and fields.get("V"):
            found.append(Record("apk", fields["P"], fields["V"], fields.get("A", ""), fields.get("o", ""),
                                fields.get("L", "")))
        fields = {}
    return found
