"""``pybuild attestations`` and ``pybuild sbom``: the documents attached to an image, listed or printed.

They read the referrers of each platform's image wherever the image is: a layout's
``index.json``, an archive's blobs, or a registry (its referrers API, else the
``sha256-<hex>`` fallback tag). ``inspect`` lists the same referrers with the image.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from builder.attest.referrer import CYCLONEDX, IN_TOTO, PREDICATE_ANNOTATION, SPDX, Referrer
from builder.cli.images import local_image, remote_image
from builder.cli.options import platforms, registry_flags, registry_options
from builder.errors import InputError
from builder.image import Image, ImageIndex

if TYPE_CHECKING:
    from builder.registry.options import RegistryOptions

TYPES = {"provenance": IN_TOTO, "spdx": SPDX, "cyclonedx": CYCLONEDX}
"""``--type`` names for the artifact types pybuild attaches; any other value is taken as an artifact type."""


def open_with_referrers(text: str, stack: contextlib.ExitStack, options: RegistryOptions | None,
                        ) -> tuple[Image | ImageIndex, str, list[tuple[Image, list[Referrer]]]]:
    """The image IMAGE ``text`` names, the name it goes by, and each of its platforms' images with the
    referrers attached to it (a registry image's manifests only are read, never its layers)."""
    remote = remote_image(text)
    if remote is None:
        from builder.base import local_referrers

        local = local_image(text, stack)
        return local.image, local.name, local_referrers(local.kind, local.path, local.image, local.scratch)
    from builder.registry.pull import pull
    from builder.registry.referrers import referrers_of

    scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pybuild-inspect-")))
    image = pull(remote, scratch, None, options, layers=False)
    return image, str(remote), referrers_of(remote, options, image)


def referrer_json(image: Image, referrer: Referrer) -> dict[str, Any]:
    """One referrer as ``inspect --json`` and ``attestations --json`` show it."""
    return {"digest": str(referrer.digest), "artifact_type": referrer.artifact_type,
            "subject": str(image.digest), "platform": str(image.platform),
            "predicate_type": referrer.annotations.get(PREDICATE_ANNOTATION),
            "size": len(referrer.document), "annotations": dict(referrer.annotations)}


def kind_name(artifact_type: str) -> str:
    """``provenance``, ``spdx``, ``cyclonedx``, or the artifact type itself."""
    return next((name for name, value in TYPES.items() if value == artifact_type), artifact_type)


def _chosen(found: list[tuple[Image, list[Referrer]]], kind: str | None,
            platform_texts: tuple[str, ...]) -> list[tuple[Image, Referrer]]:
    wanted = set(platforms(platform_texts))
    artifact_type = TYPES.get(kind, kind) if kind else None
    return [(image, r) for image, refs in found for r in refs
            if (not wanted or image.platform in wanted) and (artifact_type is None or r.artifact_type == artifact_type)]


def _print(text: str, found: list[tuple[Image, Referrer]], what: str, hint: str) -> None:
    """The one document of ``found`` on stdout; an error naming the platforms when there are several."""
    if not found:
        raise InputError(f"{text}: no {what} attached ({hint})")
    if len(found) > 1:
        where = ", ".join(str(image.platform) for image, _ in found)
        raise InputError(f"{text}: {len(found)} {what} documents ({where}): choose one with --platform")
    sys.stdout.buffer.write(found[0][1].document)
    sys.stdout.buffer.flush()


@click.command("attestations")
@click.argument("ref", metavar="IMAGE")
@click.option("--type", "kind", metavar="TYPE",
              help="Print the document of this type: provenance, spdx, cyclonedx, or an artifact type.")
@click.option("--platform", "platform_texts", multiple=True, help="Only this platform's image (os/arch[/variant]).")
@click.option("--json", "as_json", is_flag=True, help="List as one JSON array, for tools.")
@registry_flags
def attestations_cmd(ref: str, kind: str | None, platform_texts: tuple[str, ...], as_json: bool,
                     insecure_registry: tuple[str, ...], tls_verify: bool, authfile: Path | None,
                     creds: str | None, retry: int | None) -> None:
    """List what is attached to an image (provenance, SBOMs), or print one document with --type.

    IMAGE is named as for inspect: a layout (OUT[:TAG]), an archive, or a registry image.
    """
    with contextlib.ExitStack() as stack:
        options = registry_options(insecure_registry, tls_verify, authfile, creds, retry)
        found = _chosen(open_with_referrers(ref, stack, options)[2], kind, platform_texts)
    if kind is not None and not as_json:
        _print(ref, found, kind, "see pybuild attestations IMAGE for what is")
        return
    if as_json:
        click.echo(json.dumps([referrer_json(image, r) for image, r in found], indent=2))
        return
    for image, r in found:
        click.echo(f"{image.platform!s:<16} {kind_name(r.artifact_type):<12} {r.digest}  {len(r.document)} bytes")


@click.command("sbom")
@click.argument("ref", metavar="IMAGE")
@click.option("--format", "fmt", type=click.Choice(["spdx", "cyclonedx"]), default="spdx", show_default=True)
@click.option("--platform", "platform_texts", multiple=True, help="This platform's image (os/arch[/variant]).")
@registry_flags
def sbom_cmd(ref: str, fmt: str, platform_texts: tuple[str, ...], insecure_registry: tuple[str, ...],
             tls_verify: bool, authfile: Path | None, creds: str | None, retry: int | None) -> None:
    """Print the SBOM attached to an image (built with --sbom): SPDX 2.3 or CycloneDX JSON."""
    with contextlib.ExitStack() as stack:
        options = registry_options(insecure_registry, tls_verify, authfile, creds, retry)
        found = _chosen(open_with_referrers(ref, stack, options)[2], fmt, platform_texts)
    _print(ref, found, f"{fmt} SBOM", "build the image with --sbom")
