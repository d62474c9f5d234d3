"""Push an image or an index to a registry: blobs first, then manifests, then the index.

The order is the distribution spec's: a registry checks that everything a
manifest names is already there, so layers and configs go before the manifest that names
them, and an index's children before the index. Nothing is sent twice: a manifest the
repository already has (HEAD by digest) brings all its blobs with it, so its blobs are not
even looked at, and a blob the repository has (HEAD) is skipped. A blob another repository
of the same registry has can be mounted instead of uploaded (``mount_from``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from builder.attest.referrer import Referrer
from builder.errors import RegistryError
from builder.image import Blob, Image, ImageIndex, images_of, unique_blobs
from builder.oci.digest import Digest
from builder.oci.reference import Reference
from builder.registry.client import EventSink, RegistryClient, run_all
from builder.registry.options import RegistryOptions
from builder.registry.referrers import push_referrers


def push(
    image: Image | ImageIndex,
    ref: Reference,
    options: RegistryOptions | None = None,
    on_event: EventSink | None = None,
    *,
    mount_from: str | None = None,
    referrers: Sequence[Referrer] = (),
) -> Digest:
    """Send ``image`` to ``ref`` (its tag, or its digest, which must then be the image's); returns the digest.

    ``mount_from``: a repository on the same registry that may hold some of the blobs (the
    base image's). Events: ``existing``, ``mounted`` or ``pushed`` per blob, ``manifest`` per
    manifest or index stored, ``existing`` for one the registry already had.
    """
    if ref.digest is not None and ref.digest != image.digest:
        raise RegistryError(f"{ref}: cannot push there, the image's digest is {image.digest}")
    emit = on_event if on_event is not None else (lambda kind, digest, size: None)
    images = images_of(image)
    raw_top = image.raw_index if isinstance(image, ImageIndex) else image.raw_manifest
    with RegistryClient(ref, options, push=True) as client:
        # a referrer's manifest is pushed last (its subject must be there first), its blobs with the image's
        attached = list({b.digest: b for r in referrers for b in r.blobs()[:-1]}.values())
        if client.manifest_digest(ref.identifier) == image.digest:
            emit("existing", image.digest, len(raw_top))
            run_all(lambda blob: _push_blob(client, blob, None, emit), attached, client.options.parallel,
                    "pybuild-push")
            push_referrers(client, referrers, emit)
            return image.digest
        stored = {img.digest for img in images if client.manifest_digest(img.digest) == img.digest}
        blobs = unique_blobs([img for img in images if img.digest not in stored]) + attached
        run_all(lambda blob: _push_blob(client, blob, mount_from, emit), blobs, client.options.parallel,
                "pybuild-push")
        if isinstance(image, ImageIndex):
            for img in images:
                if img.digest in stored:
                    emit("existing", img.digest, len(img.raw_manifest))
                else:
                    client.put_manifest(img.digest, img.raw_manifest, img.media_type)
                    emit("manifest", img.digest, len(img.raw_manifest))
        client.put_manifest(ref.identifier, raw_top, image.media_type)
        emit("manifest", image.digest, len(raw_top))
        push_referrers(client, referrers, emit)
    return image.digest


def _push_blob(client: RegistryClient, blob: Blob, mount_from: str | None, emit: EventSink) -> None:
    source: Path | bytes
    if blob.data is not None:
        source, size = blob.data, len(blob.data)
    else:
        assert blob.path is not None  # unique_blobs gives every blob its bytes or its file
        source = blob.path
        size = blob.size if blob.size is not None else blob.path.stat().st_size
    if client.blob_exists(blob.digest):
        emit("existing", blob.digest, size)
    elif blob.mount_from and client.mount_blob(blob.digest, blob.mount_from):
        emit("mounted", blob.digest, size)  # a registry cache hit that was never downloaded
    elif mount_from and mount_from != client.repo and client.mount_blob(blob.digest, mount_from):
        emit("mounted", blob.digest, size)
    else:
        if blob.mount_from and isinstance(source, Path) and not source.exists():
            raise RegistryError(f"{client.ref.registry}: cannot mount the cached layer {blob.digest} from "
                                f"{blob.mount_from}, and its bytes were never downloaded")
        client.upload_blob(source, blob.digest, size)
        emit("pushed", blob.digest, size)
