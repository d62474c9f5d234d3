"""The value rules several sections share: paths in the image and in the context, modes, owners.

Each takes a string already substituted (:meth:`builder.recipe.scope.Scope.text` reads it from the
YAML) and the Location to blame, and returns the value the model keeps or raises RecipeError.
"""

from __future__ import annotations

import posixpath
import re

from builder.errors import Location, RecipeError

# Linux's NAME_MAX and PATH_MAX - 1: a name or path longer than these can be written into a tar, but
# no runtime can create it when it unpacks the layer (ENAMETOOLONG), so the recipe is refused.
NAME_MAX = 255
PATH_MAX = 4095

_ID_PART = re.compile(r"[^\s:/]+")


def image_path(text: str, where: Location, *, root_ok: bool = True, keep_slash: bool = False) -> str:
    """An absolute path inside the image, normalised (``/a/./b/`` -> ``/a/b``)."""
    if not text.startswith("/"):
        raise RecipeError(f"must be an absolute path inside the image, got {text!r}", where)
    if "\0" in text:
        raise RecipeError("a path cannot contain a NUL character", where)
    norm = "/" + posixpath.normpath(text).lstrip("/")
    check_length(norm, where)
    if norm == "/" and not root_ok:
        raise RecipeError("cannot be '/' itself", where)
    if keep_slash and text.endswith("/") and norm != "/":
        norm += "/"  # "into this directory", as Docker's COPY reads it
    return norm


def context_path(text: str, where: Location) -> str:
    """A path relative to the build context that stays inside it; kept as written."""
    if not text:
        raise RecipeError("must be a non-empty path relative to the build context", where)
    if "\0" in text:
        raise RecipeError("a path cannot contain a NUL character", where)
    if text.startswith("/"):
        raise RecipeError(f"must be a path relative to the build context, got {text!r}", where)
    norm = posixpath.normpath(text)
    if norm == ".." or norm.startswith("../"):
        raise RecipeError(f"escapes the build context: {text!r}", where)
    check_length(norm, where)
    return text


def mode(text: str, where: Location) -> int:
    """File mode bits from the text as written, always octal: 0755, 755, "0644" and 0o755 agree."""
    text = text.strip()
    digits = text[2:] if text[:2].lower() == "0o" else text
    if not digits or not set(digits) <= set("01234567"):
        raise RecipeError(f"must be an octal mode like 0755, got {text!r}", where)
    bits = int(digits, 8)
    if bits > 0o7777:
        raise RecipeError(f"must be at most 07777, got {text!r}", where)
    return bits


def owner(text: str, where: Location) -> str:
    """``USER`` or ``USER:GROUP``, names or numbers; names are resolved in the image at build time."""
    parts = text.split(":")
    if len(parts) > 2 or not all(_ID_PART.fullmatch(p) for p in parts):
        raise RecipeError(f"must be USER or USER:GROUP (names or numbers), got {text!r}", where)
    if any(p.isdigit() and int(p) >= 2**32 - 1 for p in parts):
        raise RecipeError(f"user and group ids must be below 4294967295, got {text!r}", where)
    return text


def check_length(path: str, where: Location) -> None:
    """Refuse a path with a component over NAME_MAX or a total over PATH_MAX bytes (see NAME_MAX)."""
    raw = path.encode("utf-8", "surrogateescape")
    if len(raw) > PATH_MAX:
        raise RecipeError(f"a path is at most {PATH_MAX} bytes (Linux's PATH_MAX), this one has {len(raw)}", where)
    longest = max(raw.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        shown = longest[:24].decode("utf-8", "replace")
        raise RecipeError(
            f"a path component is at most {NAME_MAX} bytes (Linux's NAME_MAX), {shown!r}... has {len(longest)}",
            where,
        )
