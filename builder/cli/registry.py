"""The commands that talk to a registry: ``push``, ``pull``, ``login``, ``logout``.

The registry stack (requests, urllib3) is imported inside each command, so commands that never
reach a registry never load it.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from builder.cli.images import attached, local_image
from builder.cli.options import (
    INSECURE_REGISTRY,
    PROGRESS,
    QUIET,
    TLS_VERIFY,
    platforms,
    reference,
    registry_flags,
    registry_options,
    reporter,
    write_text,
)
from builder.errors import InputError
from builder.layout.write import write_layout
from builder.options import default_cache_dir
from builder.workdir import work_directory


@click.command("push")
@click.argument("ref", metavar="IMAGE")
@click.argument("dest", metavar="REF")
@registry_flags
@click.option("--digest-file", type=click.Path(path_type=Path), help="Write the pushed digest here.")
@QUIET
@PROGRESS
def push_cmd(ref: str, dest: str, insecure_registry: tuple[str, ...], tls_verify: bool, authfile: Path | None,
             creds: str | None, retry: int | None, digest_file: Path | None, quiet: bool, progress: str) -> None:
    """Push an image or a multi-platform index (a layout or an archive, as for inspect) to a registry.

    The attestations the layout or archive holds for it (provenance, SBOMs) go too, as referrers.
    """
    from builder.registry.push import push

    target = reference(dest, "push")
    report = reporter(quiet, progress)
    options = registry_options(insecure_registry, tls_verify, authfile, creds, retry)
    with contextlib.ExitStack() as stack:
        local = local_image(ref, stack)
        digest = push(local.image, target, options, report.blob_event, referrers=attached(local))
    if digest_file is not None:
        write_text(digest_file, f"{digest}\n")
    report.message(f"pybuild: pushed {target} {digest}")
    click.echo(str(digest))


@click.command("pull")
@click.argument("ref", metavar="REF")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="OCI layout to write.")
@click.option("--platform", "platform_text", help="os/arch[/variant]: one image instead of the whole index.")
@click.option("-t", "--tag", help="Name in the layout (default: REF's tag, else latest).")
@registry_flags
@click.option("--digest-file", type=click.Path(path_type=Path), help="Write the pulled digest here.")
@QUIET
@PROGRESS
def pull_cmd(ref: str, out: Path, platform_text: str | None, tag: str | None, insecure_registry: tuple[str, ...],
             tls_verify: bool, authfile: Path | None, creds: str | None, retry: int | None,
             digest_file: Path | None, quiet: bool, progress: str) -> None:
    """Pull an image from a registry into an OCI layout (every blob verified)."""
    from builder.blobstore import store_root
    from builder.registry.pull import pull

    source = reference(ref, "pull")
    platform = platforms((platform_text,))[0] if platform_text else None
    report = reporter(quiet, progress)
    options = registry_options(insecure_registry, tls_verify, authfile, creds, retry)
    with work_directory(out) as workdir:
        store = store_root(default_cache_dir()) or workdir / "pull"  # the cache's blob store, else the workdir
        image = pull(source, store, platform, options, report.blob_event, reuse=(out,))
        write_layout(out, image, tag or source.tag or "latest")
    if digest_file is not None:
        write_text(digest_file, f"{image.digest}\n")
    report.message(f"pybuild: pulled {source} into {out} {image.digest}")
    click.echo(str(image.digest))


@click.command("login")
@click.argument("registry")
@click.option("-u", "--username", help="Default: asked for.")
@click.option("-p", "--password", help="Visible to other users in `ps`: prefer --password-stdin.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@INSECURE_REGISTRY
@TLS_VERIFY
@click.option("--authfile", type=click.Path(path_type=Path, dir_okay=False),
              help="Write here (default: $REGISTRY_AUTH_FILE, else the auth.json podman uses).")
def login_cmd(registry: str, username: str | None, password: str | None, password_stdin: bool,
              insecure_registry: tuple[str, ...], tls_verify: bool, authfile: Path | None) -> None:
    """Check credentials against REGISTRY and keep them where podman and skopeo look."""
    from builder.registry.credentials import Credentials
    from builder.registry.login import check_login, registry_host, save_login
    from builder.registry.options import RegistryOptions

    host = registry_host(registry)
    if password_stdin:
        if password is not None:
            raise click.UsageError("--password and --password-stdin are exclusive")
        password = sys.stdin.readline().rstrip("\r\n")
    username = username or click.prompt("Username", err=True)
    if password is None:
        password = click.prompt("Password", hide_input=True, err=True)
    if not username or not password:
        raise InputError("login needs a username and a password")
    credentials = Credentials(username, password)
    check_login(host, credentials, RegistryOptions(insecure=frozenset(insecure_registry), tls_verify=tls_verify))
    path = save_login(host, credentials, authfile)
    click.echo(f"Login Succeeded (credentials for {host} in {path})", err=True)


@click.command("logout")
@click.argument("registry", required=False)
@click.option("--all", "everything", is_flag=True, help="Forget every registry's credentials.")
@click.option("--authfile", type=click.Path(path_type=Path, dir_okay=False),
              help="Default: $REGISTRY_AUTH_FILE, else the auth.json podman uses.")
def logout_cmd(registry: str | None, everything: bool, authfile: Path | None) -> None:
    """Forget the credentials `pybuild login` (or podman, or skopeo) kept for REGISTRY."""
    from builder.registry.login import registry_host, remove_login

    if (registry is None) == (not everything):
        raise click.UsageError("give a REGISTRY or --all")
    host = registry_host(registry) if registry is not None else None
    path, found = remove_login(host, authfile)
    if not found:
        raise InputError(f"not logged in to {host} (in {path})" if host else f"no credentials in {path}")
    click.echo(f"Removed login credentials for {host or 'every registry'} from {path}", err=True)
