"""The one exception hierarchy of pybuild.

Every failure a user can cause or fix is a :class:`PybuildError`; the CLI catches
exactly that base and prints ``pybuild: error: FILE:LINE: KEYPATH: message``.
Anything else escaping the library is a bug and keeps its traceback::

    PybuildError                  .message, .where (Location | None), .detail
     +-- RecipeError              bad YAML, unknown key, wrong type, undefined ${VAR}
     +-- InputError               missing/unreadable context file, escape, bad tarball, bad base
     +-- StepError                a step could not be carried out (run exit status, ...)
     +-- IntegrityError           a blob whose bytes do not match its digest or size
     +-- RegistryError            a registry refused or failed a request
     +-- OutputError              OUT cannot be written, locked or read
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Location:
    """Where in a recipe something was written: file, 1-based line and key path."""

    file: Path | str
    line: int | None
    keypath: str

    def __str__(self) -> str:
        parts = [str(self.file)]
        if self.line is not None:
            parts.append(str(self.line))
        if self.keypath:
            parts.append(self.keypath)
        return ": ".join([":".join(parts[:2]), *parts[2:]])


class PybuildError(Exception):
    """Base of every error a user can act on; carries where it happened."""

    def __init__(self, message: str, where: Location | None = None, detail: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class RecipeError(PybuildError):
    """The recipe itself is wrong: syntax, keys, types, arguments."""


class InputError(PybuildError):
    """An input the recipe names is missing, unreadable, hostile or escapes the context."""


class StepError(PybuildError):
    """A step could not be carried out."""


class IntegrityError(PybuildError):
    """Bytes read do not match the digest or size that names them."""


class RegistryError(PybuildError):
    """A registry refused or failed a request."""


class OutputError(PybuildError):
    """The output cannot be written, locked or read."""


@contextlib.contextmanager
def located(where: Location) -> Iterator[None]:
    """Attach ``where`` to any PybuildError raised inside that has no location yet."""
    try:
        yield
    except PybuildError as exc:
        if exc.where is None:
            exc.where = where
        raise
