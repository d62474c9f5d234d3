"""Debian packages: ``var/lib/dpkg/status`` and distroless' ``var/lib/dpkg/status.d/*``.

Both are paragraphs of RFC 822 style fields separated by blank lines; each paragraph is read
with the standard library's header parser. Only installed packages count: a paragraph whose
``Status`` state (its third word) is ``installed`` (``install ok installed``, ``hold ok
installed``), or one without a ``Status`` field (distroless writes status.d files without one).
A paragraph missing a name or a version is skipped, never an error: the database is the image's.
"""

from __future__ import annotations

import re
from email.parser import HeaderParser
from email.policy import compat32

from builder.sbom.model import Record

STATUS = "var/lib/dpkg/status"
STATUS_D = "var/lib/dpkg/status.d/"
_PARAGRAPHS = re.compile(r"\n[ \t]*\n")


def is_database(path: str) -> bool:
    """``path`` (canonical) is a dpkg database file: the status file, or a status.d entry (not its .md5sums)."""
    if path == STATUS:
        return True
    if not path.startswith(STATUS_D):
        return False
    name = path[len(STATUS_D):]
    return bool(name) and "/" not in name and not name.endswith(".md5sums")


def parse(data: bytes) -> list[Record]:
    """The installed packages a status file lists."""
    text = data.decode("utf-8", "replace").replace("\r\n", "\n")
    parser = HeaderParser(policy=compat32)
    found = []
    for paragraph in _PARAGRAPHS.split(text):
        if not paragraph.strip():
            continue
        fields = parser.parsestr(paragraph.strip("\n") + "\n")
        name, version = _field(fields.get("Package")), _field(fields.get("Version"))
        status = _field(fields.get("Status")).split()
        if not name or not version or (status and (len(status) != 3 or status[2] != "installed")):
            continue
        source = _field(fields.get("Source")).partition(" ")[0]  # "glibc (2.36-9)": the name only
        found.append(Record("deb", name, version, _field(fields.get("Architecture")), source))
    return found


def _field(value: object) -> str:
    """A single-line field's value ("" when absent or not a plain string)."""
    return value.strip() if isinstance(value, str) else ""
