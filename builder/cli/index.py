"""``pybuild index create``: one image index from images built separately, one per platform."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import click

from builder.cli.images import attached, local_image, remote_image, split_ref
from builder.cli.options import PROGRESS, QUIET, registry_flags, registry_options, reporter, write_text
from builder.errors import InputError
from builder.image import Image, ImageIndex, images_of
from builder.layout.write import write_layout
from builder.oci.canonical import canonical_json
from builder.oci.digest import Digest
from builder.oci.manifest import image_index

if TYPE_CHECKING:
    from builder.attest.referrer import Referrer


@click.group("index")
def index_group() -> None:
    """Image indexes of images built separately (each platform natively, on its own runner)."""


@index_group.command("create")
@click.argument("target", metavar="TARGET")
@click.argument("sources", metavar="SOURCE...", nargs=-1, required=True)
@registry_flags
@click.option("--digest-file", type=click.Path(path_type=Path), help="Write the index digest here.")
@QUIET
@PROGRESS
def index_create_cmd(target: str, sources: tuple[str, ...], insecure_registry: tuple[str, ...], tls_verify: bool,
                     authfile: Path | None, creds: str | None, retry: int | None, digest_file: Path | None,
                     quiet: bool, progress: str) -> None:
    """Join the images SOURCE... (one platform each) into one image index at TARGET.

    As `docker buildx imagetools create -t TARGET SOURCE...`: TARGET is a registry reference
    (docker://REF, or REF naming its registry) or an OCI layout (oci:DIR:TAG); each SOURCE is a
    registry image or a local one (a layout or an archive, as for inspect). A source that is an
    index adds each of its platforms; two sources of one platform are refused. Into a registry,
    no layer is downloaded: images already in TARGET's repository are named as they are, images
    in another repository of the same registry are mounted, local images are pushed.
    """
    report = reporter(quiet, progress)
    remote_target = None if target.startswith("oci:") else remote_image(target)
    with contextlib.ExitStack() as stack:
        if remote_target is None:
            digest = _into_layout(target, sources, stack)
        else:
            from builder.registry.join import join_images
            from builder.registry.push import push

            options = registry_options(insecure_registry, tls_verify, authfile, creds, retry)
            refs = []
            for source in sources:
                ref = remote_image(source)
                if ref is None:  # a local image: pushed by digest into the target's repository first
                    local = local_image(source, stack)
                    ref = remote_target.with_digest(push(local.image, remote_target.with_digest(local.image.digest),
                                                         options, report.blob_event, referrers=attached(local)))
                refs.append(ref)
            digest = join_images(remote_target, refs, options, report.blob_event)
    if digest_file is not None:
        write_text(digest_file, f"{digest}\n")
    report.message(f"pybuild: wrote the index {target} {digest}")
    click.echo(str(digest))


def _into_layout(target: str, sources: tuple[str, ...], stack: contextlib.ExitStack) -> Digest:
    out, tag = split_ref(target.removeprefix("oci:"))
    images: list[Image] = []
    referrers: list[Referrer] = []
    for source in sources:
        if remote_image(source) is not None:
            raise InputError(f"{source}: a layout index joins local images; pull it first (pybuild pull)")
        local = local_image(source, stack)
        referrers += attached(local)
        for one in images_of(local.image):
            twin = next((i for i in images if i.platform == one.platform), None)
            if twin is not None:
                raise InputError(f"{source}: a second image for {one.platform}: an index names each platform once")
            images.append(one)
    index = ImageIndex(canonical_json(image_index([i.descriptor() for i in images])), tuple(images))
    write_layout(out, index, tag or "latest", referrers)
    return index.digest
