"""The only JSON encoder whose output gets digested.

Sorted keys, no insignificant whitespace, UTF-8: the same object always gives the
same bytes, on any machine and any Python version, so its digest is stable.
"""

from __future__ import annotations

import json
from typing import Any


def canonical_json(obj: Any) -> bytes:
    """Encode ``obj`` deterministically; digest exactly these bytes and write exactly these."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def json_object(raw: bytes) -> dict[str, Any]:
    """Parse a manifest, index or config: a JSON object, else ValueError (callers add the context)."""
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc
