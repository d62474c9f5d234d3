"""What an OCI image layout is on disk, for its writer, its reader, its collector and the archives.

The names (``oci-layout``, ``index.json``, ``blobs/<alg>/<hex>``) are the image-layout spec's;
every JSON file of a layout is read by :func:`read_json`, bounded in size before it is parsed,
so a hostile or damaged layout costs at most :data:`MAX_JSON` bytes of memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from builder.errors import InputError, OutputError
from builder.fs.atomic import read_regular
from builder.oci.canonical import canonical_json, json_object
from builder.oci.digest import Digest

OCI_LAYOUT = canonical_json({"imageLayoutVersion": "1.0.0"})
MAX_JSON = 8 << 20
"""index.json, manifests, indexes and configs larger than this are refused, never loaded: the
registry client's manifest limit (registries take at least 4 MB), so what pybuild pulls it can
read back, and a 400 MiB ``index.json`` costs nothing."""


def is_layout(root: Path) -> bool:
    """Whether ``root`` has the two files every layout has (its blobs are checked as they are read)."""
    return (root / "oci-layout").is_file() and (root / "index.json").is_file()


def blob_name(digest: Digest) -> str:
    """A blob's name in a layout, and in an archive of one: its digest, so a name is a promise of the content."""
    return f"blobs/{digest.algorithm}/{digest.hex}"


def blob_path(root: Path, digest: Digest) -> Path:
    return root / blob_name(digest)


def blob_digest(name: str) -> Digest | None:
    """The digest a name in a layout promises, if it is a blob's name (the inverse of :func:`blob_name`)."""
    top, _, rest = name.partition("/")
    algorithm, _, hexpart = rest.partition("/")
    try:
        return Digest.parse(f"{algorithm}:{hexpart}") if top == "blobs" else None
    except ValueError:
        return None


def load_index(path: Path, error: type[InputError | OutputError]) -> dict[str, Any]:
    """A layout's index.json; a damaged one is the reader's bad input, or the writer's unusable OUT."""
    try:
        index = read_json(path)
    except (OSError, ValueError, RecursionError) as exc:
        raise error(f"{path}: cannot read the layout index: {reason(exc)}") from exc
    if not isinstance(index.get("manifests"), list):
        raise error(f"{path}: not an image index (no manifests list)")
    return index


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from regular file ``path`` of at most :data:`MAX_JSON` bytes (ValueError if larger)."""
    data = read_regular(path, MAX_JSON)
    if len(data) > MAX_JSON:
        raise ValueError(f"larger than {MAX_JSON} bytes")
    return json_object(data)


def reason(exc: BaseException) -> str:
    """Why a JSON file could not be read, in a user's words: the system's reason, not an exception's."""
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
