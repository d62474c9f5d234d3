"""Is a declared licence an SPDX licence expression? A small check, without the licence list.

The full SPDX licence list (hundreds of ids) ships with spdx-tools, which pybuild does not depend
on at run time. A bundled list of the licences packages commonly declare is enough: a string
made only of those ids (any case; ``+``; ``WITH`` a listed exception; ``AND``/``OR``; brackets)
becomes that expression with the ids spelled canonically, anything else is the documents'
business (``LicenseRef-...`` in SPDX, a licence *name* in CycloneDX). A rare real SPDX id missing
here is only reported less precisely, never wrongly.
"""

from __future__ import annotations

import re

KNOWN = (
    "0BSD", "AFL-2.1", "AGPL-3.0", "AGPL-3.0-only", "AGPL-3.0-or-later", "Apache-1.1", "Apache-2.0",
    "Artistic-1.0", "Artistic-1.0-Perl", "Artistic-2.0", "BSD-1-Clause", "BSD-2-Clause", "BSD-3-Clause",
    "BSD-4-Clause", "BSL-1.0", "BlueOak-1.0.0", "bzip2-1.0.6", "CC-BY-4.0", "CC-BY-SA-4.0", "CC0-1.0", "curl",
    "EPL-1.0", "EPL-2.0", "FTL", "GFDL-1.2-or-later", "GFDL-1.3-or-later", "GPL-1.0-or-later",
    "GPL-2.0", "GPL-2.0-only", "GPL-2.0-or-later", "GPL-3.0", "GPL-3.0-only", "GPL-3.0-or-later", "HPND",
    "IJG", "ISC", "LGPL-2.0-only", "LGPL-2.0-or-later", "LGPL-2.1", "LGPL-2.1-only", "LGPL-2.1-or-later",
    "LGPL-3.0", "LGPL-3.0-only", "LGPL-3.0-or-later", "libpng-2.0", "MIT", "MIT-0", "MPL-1.1", "MPL-2.0",
    "OFL-1.1", "OpenSSL", "PostgreSQL", "PSF-2.0", "Python-2.0", "Ruby", "Unicode-DFS-2016", "Unlicense",
    "Vim", "WTFPL", "X11", "Zlib", "ZPL-2.1",
)  # fmt: skip
EXCEPTIONS = (
    "Autoconf-exception-3.0", "Bison-exception-2.2", "Classpath-exception-2.0", "GCC-exception-3.1",
    "Linux-syscall-note", "LLVM-exception",
)
_IDS = {k.lower(): k for k in KNOWN}
_EXC = {k.lower(): k for k in EXCEPTIONS}
_TOKEN = re.compile(r"\s*(\(|\)|[A-Za-z0-9.+-]+)")
_MAX = 512


def spdx_expression(text: str) -> str | None:
    """``text`` as a canonically spelled SPDX expression of known licences, or None."""
    tokens: list[str] = []
    pos = 0
    text = text.strip()
    if not text or len(text) > _MAX:
        return None
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            return None
        tokens.append(m.group(1))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    out: list[str] = []
    if _expression(tokens, 0, out, 0) != len(tokens):
        return None
    return " ".join(out).replace("( ", "(").replace(" )", ")")


def _expression(tokens: list[str], i: int, out: list[str], depth: int) -> int:
    """Parse ``term ((AND|OR) term)*`` from ``tokens[i]``; the index after it, or -1."""
    i = _term(tokens, i, out, depth)
    while i >= 0 and i < len(tokens) and tokens[i].upper() in ("AND", "OR"):
        out.append(tokens[i].upper())
        i = _term(tokens, i + 1, out, depth)
    return i


def _term(tokens: list[str], i: int, out: list[str], depth: int) -> int:
    if i < 0 or i >= len(tokens):
        return -1
    if tokens[i] == "(":
        if depth > 16:
            return -1
        out.append("(")
        i = _expression(tokens, i + 1, out, depth + 1)
        if i < 0 or i >= len(tokens) or tokens[i] != ")":
            return -1
        out.append(")")
        return i + 1
    plus = tokens[i].endswith("+")
    ident = _IDS.get(tokens[i].removesuffix("+").lower())
    if ident is None or (plus and ident.endswith(("-only", "-or-later"))):
        return -1
    out.append(ident + ("+" if plus else ""))
    i += 1
    if i < len(tokens) and tokens[i].upper() == "WITH":
        exception = _EXC.get(tokens[i + 1].lower()) if i + 1 < len(tokens) else None
        if exception is None:
            return -1
        out += ["WITH", exception]
        i += 2
    return i


def is_single_id(expression: str) -> bool:
    """A valid expression (from :func:`spdx_expression`) that is one licence id, nothing more."""
    return expression in KNOWN


def licence_ref(text: str) -> str:
    """The readable part of a ``LicenseRef-`` id for a licence that is not an SPDX expression."""
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-")[:64] or "unknown"
