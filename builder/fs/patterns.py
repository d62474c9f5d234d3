"""``.dockerignore``-style exclude patterns for ``copy``.

``*`` and ``?`` stay within one path segment, ``**`` spans any number of directories (zero
included, so ``**/*.pyc`` also matches a top-level ``x.pyc``), ``[...]`` is a class, and a
leading ``!`` re-includes. The last matching pattern wins, as in Docker. An excluded directory
is not entered unless an exception names a path inside it literally (:meth:`Excluder.may_reinclude`).
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from builder.errors import InputError


def _translate(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    p = pattern.strip("/")
    while i < len(p):
        c = p[i]
        if p.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif p.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = p.find("]", i + 1)
            if end < 0:
                out.append(re.escape(c))
                i += 1
            else:
                # literal inside the class: a backslash, and what Python's re would read as a
                # nested set or set operation ("[[:alpha:]]", "&&", "~~", "||")
                body = re.sub(r"([\\\[&~|])", r"\\\1", p[i + 1 : end])
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    # a pattern naming a directory also excludes everything below it
    try:
        return re.compile("".join(out) + "(?:/.*)?")
    except re.error as exc:  # "[z-a]", "[]": a user's typo, not a bug
        raise InputError(f"bad exclude pattern {pattern!r}: {exc.msg}") from None


@dataclass(frozen=True)
class Excluder:
    """Decides whether a path relative to the copy source is excluded."""

    rules: tuple[tuple[bool, re.Pattern[str]], ...]
    exceptions: tuple[str, ...] = ()
    """The ``!`` patterns as written (without the ``!``), for :meth:`may_reinclude`."""

    @classmethod
    def from_patterns(cls, patterns: tuple[str, ...]) -> Excluder:
        rules = []
        exceptions = []
        for pat in patterns:
            negate = pat.startswith("!")
            body = pat[1:] if negate else pat
            if body.strip("/"):
                rules.append((negate, _translate(body)))
                if negate:
                    exceptions.append(body.strip("/"))
        return cls(tuple(rules), tuple(exceptions))

    def may_reinclude(self, directory: str) -> bool:
        """Whether an excluded ``directory`` is walked for exceptions: only if an exception's text
        starts with the directory's literal path, as Docker's classic builder and Buildah decide
        (``exclude: [sub, "!sub/keep"]`` walks ``sub``; ``[sub, "!*/keep"]`` does not)."""
        prefix = directory + "/"
        return any((pat + "/").startswith(prefix) for pat in self.exceptions)

    def excluded(self, rel: str) -> bool:
        result = False
        for negate, rx in self.rules:
            if rx.fullmatch(rel):
                result = not negate
        return result


IGNORE_FILES = (".pybuildignore", ".dockerignore")
"""The context-wide ignore file: the first of these at the context root (one, never both)."""
MAX_IGNORE_FILE = 1 << 20


def read_ignore_file(context: Path) -> tuple[str, Excluder] | None:
    """(file name, its patterns) of the context's ignore file, or None without one.

    The ``.dockerignore`` format: one pattern per line, ``#`` comments and blank lines skipped,
    surrounding whitespace and a leading ``/`` dropped, ``!`` re-including. Paths are relative to
    the context root.
    """
    for name in IGNORE_FILES:
        path = context / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO there never blocks the build
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise InputError(f"{name}: not a regular file")
                data = f.read(MAX_IGNORE_FILE + 1)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise InputError(f"{name}: cannot read it ({exc.strerror})") from None
        if len(data) > MAX_IGNORE_FILE:
            raise InputError(f"{name}: larger than {MAX_IGNORE_FILE} bytes")
        lines = []
        for line in data.decode("utf-8", "surrogateescape").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            body = line[1:].strip() if negate else line
            body = posixpath.normpath(body.lstrip("/")) if body.strip("/") else ""
            if body and body != ".":
                lines.append(("!" if negate else "") + body)
        return name, Excluder.from_patterns(tuple(lines))
    return None
