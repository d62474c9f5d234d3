"""What several commands share: flags defined once, and their values turned into the library's options."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from builder.errors import InputError
from builder.fs.atomic import masked, write_file
from builder.oci.platform import Platform
from builder.progress import JsonReporter, NullReporter, PlainReporter, Reporter, TtyReporter

if TYPE_CHECKING:
    from builder.oci.reference import Reference
    from builder.registry.options import RegistryOptions

QUIET = click.option("-q", "--quiet", is_flag=True, help="No progress output.")
PROGRESS = click.option("--progress", type=click.Choice(["auto", "plain", "tty", "json"]), default="auto",
                        show_default=True)
INSECURE_REGISTRY = click.option("--insecure-registry", multiple=True,
                                 help="HOST[:PORT] reached over plain HTTP / unverified TLS.")
TLS_VERIFY = click.option("--tls-verify", type=bool, default=True, show_default=True,
                          help="false: any registry may use plain HTTP or an unverified certificate.")


def reporter(quiet: bool, progress: str) -> Reporter:
    if quiet:
        return NullReporter()
    if progress == "json":
        return JsonReporter()
    if progress == "tty" or (progress == "auto" and sys.stderr.isatty()):
        return TtyReporter()
    return PlainReporter()


def parse_kv(values: tuple[str, ...], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.UsageError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def platforms(values: tuple[str, ...]) -> tuple[Platform, ...]:
    try:
        return tuple(Platform.parse(v) for v in values)
    except ValueError as exc:
        raise click.UsageError(f"--platform: {exc}") from exc


def registry_flags(func: Callable[..., None]) -> Callable[..., None]:
    """The flags every command that talks to a registry takes, named as skopeo and Buildah name them."""
    flags = [
        INSECURE_REGISTRY,
        TLS_VERIFY,
        click.option("--authfile", type=click.Path(path_type=Path, dir_okay=False),
                     help="Credentials file (auth.json / config.json format; default as podman and docker)."),
        click.option("--creds", metavar="USER[:PASSWORD]", help="Credentials for the registries of this command."),
        click.option("--retry", type=click.IntRange(min=0), help="Retries of a failed registry request (default 4)."),
    ]
    for flag in reversed(flags):
        func = flag(func)
    return func


def registry_options(insecure_registry: tuple[str, ...], tls_verify: bool, authfile: Path | None,
                     creds: str | None, retry: int | None) -> RegistryOptions | None:
    """The registry flags as options; None when none is given (the defaults), so that a build that
    never talks to a registry never loads the registry stack."""
    if not insecure_registry and tls_verify and authfile is None and creds is None and retry is None:
        return None
    from builder.registry.credentials import Credentials
    from builder.registry.options import RegistryOptions

    if authfile is not None and not authfile.is_file():
        raise InputError(f"--authfile: no such file: {str(authfile)!r}")
    credentials = None
    if creds is not None:
        user, sep, password = creds.partition(":")
        if not user:
            raise click.UsageError("--creds expects USER[:PASSWORD]")
        if not sep:
            password = click.prompt(f"Password for {user}", hide_input=True, err=True)
        credentials = Credentials(user, password)
    extra = {"retries": retry} if retry is not None else {}
    return RegistryOptions(insecure=frozenset(insecure_registry), tls_verify=tls_verify, authfile=authfile,
                           credentials=credentials, **extra)


def reference(text: str, what: str) -> Reference:
    from builder.oci.reference import Reference

    try:
        return Reference.parse(text)
    except ValueError as exc:
        raise InputError(f"{what}: {exc}") from exc


def write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (``--digest-file`` and the like), with the mode a plain write would give."""
    write_file(path, text.encode("utf-8"), masked(0o666))
