"""The commands that read an image: ``inspect``, ``ls``, ``unpack``; and how an IMAGE argument names one."""

from __future__ import annotations

import contextlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from builder.bundle import write_bundle
from builder.cache.disk import CacheDir
from builder.cli.options import reference, registry_flags, registry_options
from builder.errors import InputError, PybuildError
from builder.image import Image, ImageIndex
from builder.inspect import describe, list_entry, render_text
from builder.layout.read import layout_entries, read_entry
from builder.oci.digest import Digest
from builder.oci.manifest import REF_NAME
from builder.oci.platform import Platform
from builder.options import default_cache_dir
from builder.progress import human

if TYPE_CHECKING:
    from builder.attest.referrer import Referrer
    from builder.oci.reference import Reference


def split_ref(ref: str) -> tuple[Path, str | None]:
    """``OUT[:TAG]``: the shortest prefix that is an existing path is OUT, the rest the tag.

    That is how skopeo splits ``oci:PATH:TAG``, and it keeps tags with colons
    (``out:acc/app:1``) whole. With no such prefix, the text after the first ':' is the tag.
    """
    if Path(ref).exists() or ":" not in ref:
        return Path(ref), None
    for i, ch in enumerate(ref):
        if ch == ":" and i and Path(ref[:i]).exists():
            return Path(ref[:i]), ref[i + 1:] or None
    path, _, tag = ref.partition(":")
    return Path(path), tag or None


_KINDS = {"oci": "oci", "oci-archive": "oci-archive", "docker-archive": "docker-archive"}
"""The transports a command's IMAGE may start with, as in a recipe's ``from:`` and in skopeo."""


def _local(text: str) -> tuple[str, Path, str | None] | None:
    """(kind, path, tag) of a local image: ``oci:``/``oci-archive:``/``docker-archive:`` + path, or a
    plain path (a directory is a layout, a file an archive of either kind); None if it is not one."""
    kind, sep, rest = text.partition(":")
    if sep and kind in _KINDS:
        path, tag = split_ref(rest)
        if not path.exists():
            raise InputError(f"no such {'OCI layout directory' if kind == 'oci' else 'archive'}: {str(path)!r}")
        return _KINDS[kind], path, tag
    path, tag = split_ref(text)
    if path.is_dir():
        return "oci", path, tag
    if path.is_file():
        return "docker-archive", path, tag  # the archive reader takes OCI archives too
    return None


def open_image(text: str, stack: contextlib.ExitStack, platform: Platform | None = None,
               ) -> tuple[Image | ImageIndex, str]:
    """A local image named on the command line, and the name it goes by (its tag, else latest)."""
    local = local_image(text, stack, platform)
    return local.image, local.name


@dataclass(frozen=True)
class LocalImage:
    """A local image named on the command line, where it was read from, and the scratch directory
    an archive was extracted into (alive as long as the stack given to :func:`local_image`)."""

    kind: str
    path: Path
    tag: str | None
    image: Image | ImageIndex
    scratch: Path

    @property
    def name(self) -> str:
        """The name it goes by: its tag, else latest."""
        return self.tag or (_only_tag(self.path) if self.kind == "oci" else None) or "latest"


def local_image(text: str, stack: contextlib.ExitStack, platform: Platform | None = None) -> LocalImage:
    from builder.base import open_local

    found = _local(text)
    if found is None:
        raise InputError(f"no such OCI layout directory or archive: {text!r} (a registry image is docker://REF)")
    kind, path, tag = found
    scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pybuild-open-")))
    return LocalImage(kind, path, tag, open_local(kind, path, tag, scratch, platform), scratch)


def attached(local: LocalImage) -> list[Referrer]:
    """The referrers the layout or archive ``local`` was read from holds for its images."""
    from builder.base import local_referrers

    return [r for _, refs in local_referrers(local.kind, local.path, local.image, local.scratch) for r in refs]


def remote_image(text: str) -> Reference | None:
    """The registry image ``text`` names: ``docker://REF``, or a REF whose first component is a
    registry host, when no local path of that name exists (a mistyped directory never goes to
    Docker Hub)."""
    if text.startswith("docker://"):
        return reference(text.removeprefix("docker://"), "inspect")
    first = text.split("/", 1)[0]
    if "/" in text and ("." in first or ":" in first or first == "localhost") and _local(text) is None:
        return reference(text, "inspect")
    return None


def _only_tag(path: Path) -> str | None:
    """The tag of a layout's only image (the name an untagged IMAGE goes by), if it has exactly one."""
    try:
        names = [desc.annotations.get(REF_NAME) for desc in layout_entries(path)]
    except (PybuildError, OSError):
        return None
    return names[0] if len(names) == 1 else None


@click.command("inspect")
@click.argument("ref", metavar="IMAGE")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for tools.")
@registry_flags
def inspect_cmd(ref: str, as_json: bool, insecure_registry: tuple[str, ...], tls_verify: bool,
                authfile: Path | None, creds: str | None, retry: int | None) -> None:
    """Show every id of an image, each explained.

    IMAGE is a layout (OUT[:TAG]), an oci-archive or docker-archive file, any of them with
    skopeo's oci:, oci-archive: or docker-archive: prefix, or a registry image: docker://REF, or
    REF itself when it names its registry (localhost:5000/app:1, ghcr.io/org/app).
    """
    from builder.cli.attestations import open_with_referrers, referrer_json

    with contextlib.ExitStack() as stack:
        options = registry_options(insecure_registry, tls_verify, authfile, creds, retry)
        image, name, found = open_with_referrers(ref, stack, options)
        desc = describe(image, name)
    attached = {img.digest: [referrer_json(img, r) for r in refs] for img, refs in found}
    for entry in desc.get("manifests") or [desc]:
        entry["referrers"] = attached.get(Digest.parse(entry["digest"]), [])
    if as_json:
        click.echo(json.dumps(desc, indent=2, sort_keys=False))
    else:
        for line in render_text(desc):
            click.echo(line)


@click.command("ls")
@click.argument("out", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, for tools.")
def ls_cmd(out: Path, as_json: bool) -> None:
    """List the images of a layout: tag, digest, platforms, size."""
    for desc in layout_entries(out):
        entry = list_entry(desc, read_entry(out, desc))
        if as_json:
            click.echo(json.dumps(entry))
        else:
            click.echo(f"{entry['tag'] or '<none>':<24} {entry['digest']}  {','.join(entry['platforms']):<24} "
                       f"{human(entry['size']):>10}")


@click.command("unpack")
@click.argument("ref", metavar="IMAGE")
@click.argument("bundle", type=click.Path(path_type=Path))
def unpack_cmd(ref: str, bundle: Path) -> None:
    """Unpack an image (as for inspect) into an OCI runtime bundle (rootfs/ + config.json) that runc runs as it is."""
    with contextlib.ExitStack() as stack:
        image, _ = open_image(ref, stack, Platform.host())
        if isinstance(image, ImageIndex):  # pragma: no cover - a platform was asked for
            raise InputError(f"{ref}: expected one image for {Platform.host()}")
        copied = write_bundle(image, bundle, snapshots=CacheDir(default_cache_dir()).snapshots)
    how = " (copied from the layers' snapshots in the cache)" if copied else ""
    click.echo(f"pybuild: unpacked {ref} into {bundle}{how}", err=True)
