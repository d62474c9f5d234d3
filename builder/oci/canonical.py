"""JSON in and out: the only encoder whose output gets digested, and the one guarded decoder.

Sorted keys, no insignificant whitespace, UTF-8: the same object always gives the
same bytes, on any machine and any Python version, so its digest is stable.

Every JSON document pybuild reads from outside (manifests, indexes, configs, token replies,
credential files, layout files) goes through :func:`json_value` or :func:`json_object`, so the
rules for hostile input live here: a size cap given by the caller, strict UTF-8, and at most
:data:`MAX_DEPTH` levels of nesting. Python's decoder recurses once per level, so
``[`` x 100000 would otherwise end in a RecursionError (a traceback, and a thread whose
recursion state is left odd); it is refused before ``json.loads`` ever sees it.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

#: Levels of nesting accepted (an image index inside an annotation inside ... is 5 or 6 deep).
MAX_DEPTH = 64

#: A JSON string, closed or running to the end of the input (so that a match is always found
#: where a quote starts, and the scan stays linear however many quotes are left unclosed).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
#: Every byte that is not a bracket, deleted by ``bytes.translate``.
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
#: Brackets as signed bytes: an opener is +1, a closer -1 (0xff read as a signed char).
_SIGNS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def canonical_json(obj: Any) -> bytes:
    """Encode ``obj`` deterministically; digest exactly these bytes and write exactly these."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def json_value(raw: bytes, *, limit: int | None = None, max_depth: int = MAX_DEPTH) -> Any:
    """Parse untrusted JSON: ValueError (without any of the content) unless it is at most ``limit``
    bytes, UTF-8 and nested at most ``max_depth`` levels deep. Callers add what the document is.

    UTF-8 is required, not sniffed as ``json.loads`` does for bytes: in UTF-16 a character's
    bytes can look like a quote, which would hide brackets from the depth scan.
    """
    if limit is not None and len(raw) > limit:
        raise ValueError(f"{len(raw)} bytes, more than the limit of {limit}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 at byte {exc.start}") from None
    if raw.count(b"[") + raw.count(b"{") > max_depth and nesting_depth(raw) > max_depth:  # count: the fast path
        raise ValueError(f"nested more than {max_depth} levels deep")
    return json.loads(text)


def json_object(raw: bytes, *, limit: int | None = None, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """Parse a manifest, index or config: a JSON object, else ValueError (callers add the context).

    The same checks as :func:`json_value`.
    """
    doc = json_value(raw, limit=limit, max_depth=max_depth)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


def nesting_depth(raw: bytes) -> int:
    """How deep the brackets of ``raw`` (UTF-8 JSON) nest, outside strings; linear and in C.

    Strings are cut out by one regex pass, every byte but ``[]{}`` is deleted, and the
    running sum of +1/-1 is taken by ``accumulate`` over signed bytes. Malformed input gives
    some number (unclosed brackets count as open); ``json.loads`` then reports the syntax.
    """
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if len(brackets) <= 1:
        return len(brackets)
    return max(accumulate(memoryview(brackets.translate(_SIGNS)).cast("b")), default=0)
