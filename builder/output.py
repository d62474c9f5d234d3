"""Where a built image goes: an OCI layout directory, or one tar file (oci-archive, docker-archive).

``write_output`` is the one entry point the build uses; the format names are the CLI's
``--format`` values.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from builder.archive.docker import write_docker_archive
from builder.archive.oci import write_oci_archive
from builder.attest.referrer import Referrer
from builder.errors import OutputError
from builder.image import Image, ImageIndex
from builder.layout.write import write_layout

FORMATS = ("oci", "oci-archive", "docker-archive")


def write_output(fmt: str, out: Path, image: Image | ImageIndex, tag: str, epoch: int,
                 referrers: Sequence[Referrer] = ()) -> None:
    """Write ``image`` tagged ``tag``, and the ``referrers`` attached to it, to ``out`` in format
    ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "oci":
        write_layout(out, image, tag, referrers)
    elif fmt == "oci-archive":
        write_oci_archive(out, image, tag, epoch, referrers)
    elif fmt == "docker-archive":
        write_docker_archive(out, image, tag, epoch, referrers=referrers)
    else:
        raise OutputError(f"{out}: unknown output format {fmt!r} (expected one of {', '.join(FORMATS)})")

