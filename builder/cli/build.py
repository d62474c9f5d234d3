"""``pybuild build``: flags -> BuildOptions, the build, its outputs and the files that record it."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from builder.cli.options import (
    PROGRESS,
    QUIET,
    parse_kv,
    platforms,
    reference,
    registry_flags,
    registry_options,
    reporter,
    write_text,
)
from builder.errors import InputError
from builder.fs.overlay import overlay_in_user_namespace
from builder.layer.compress import Compression
from builder.options import BuildOptions, epoch_from_env
from builder.orchestrator import BuildResult, build, has_run_steps
from builder.output import FORMATS, write_output
from builder.progress import Reporter
from builder.sandbox.host import run_in_own_user_namespace, run_in_user_namespace
from builder.userns import in_user_namespace, subordinate_ids
from builder.workdir import work_directory

if TYPE_CHECKING:
    from builder.oci.reference import Reference

RECIPE_NAMES = ("pybuild.yaml", "recipe.yaml")
"""What a directory given as RECIPE is taken to mean, in this order."""


def _recipe_file(recipe: Path) -> Path:
    """RECIPE, or for a directory the first of RECIPE_NAMES in it."""
    if recipe.is_dir():
        for name in RECIPE_NAMES:
            if (recipe / name).is_file():
                return recipe / name
        raise InputError(f"{str(recipe)!r} is a directory with no {' or '.join(RECIPE_NAMES)} in it")
    if not recipe.is_file():
        raise InputError(f"no such recipe file: {str(recipe)!r}")
    return recipe


def _build_args(values: tuple[str, ...]) -> dict[str, str]:
    """``--build-arg NAME=VALUE``, or ``--build-arg NAME``: the value of the environment variable
    NAME, and no value at all when it is not set (as ``docker build --build-arg HTTP_PROXY``)."""
    bare = [v for v in values if "=" not in v]
    out = parse_kv(tuple(v for v in values if "=" in v), "--build-arg")
    for name in bare:
        if not name:
            raise click.UsageError("--build-arg expects NAME=VALUE or NAME")
        if name in os.environ:
            out[name] = os.environ[name]
    return out


def _ssh(values: tuple[str, ...]) -> dict[str, Path]:
    """``--ssh ID[=SOCKET]`` (BuildKit's syntax; ``default`` and no socket: ``$SSH_AUTH_SOCK``)."""
    out: dict[str, Path] = {}
    for item in values:
        sid, sep, sock = item.partition("=")
        if not sid or (sep and not sock):
            raise click.UsageError(f"--ssh expects ID or ID=SOCKET, got {item!r}")
        if not sep:
            sock = os.environ.get("SSH_AUTH_SOCK", "")
            if not sock:
                raise InputError(f"--ssh {sid}: no socket given and SSH_AUTH_SOCK is not set (is an agent running?)")
        if not os.path.exists(sock):
            raise InputError(f"--ssh {sid}: no such socket: {sock!r}")
        out[sid] = Path(sock).resolve()
    return out


def _secrets(values: tuple[str, ...], stack: contextlib.ExitStack) -> dict[str, Path]:
    """``--secret id=ID,src=PATH`` (``source=`` also accepted, as BuildKit does) or ``id=ID,env=VAR``.

    A secret from the environment goes to a 0600 file in a private directory (on ``/dev/shm``, a
    tmpfs, where there is one) for the length of the build: the sandbox copies secrets in from files.
    """
    out: dict[str, Path] = {}
    for item in values:
        fields = dict(part.partition("=")[::2] for part in item.split(","))
        sid, src, var = fields.get("id"), fields.get("src") or fields.get("source"), fields.get("env")
        if not sid or (src is None) == (var is None) or set(fields) - {"id", "src", "source", "env", "type"}:
            raise click.UsageError(f"--secret expects id=ID,src=PATH or id=ID,env=VAR, got {item!r}")
        if var is not None:
            if var not in os.environ:
                raise InputError(f"--secret {sid}: the environment variable {var} is not set")
            shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
            private = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pybuild-secret-", dir=shm)))
            path = private / "secret"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(os.environ[var])
            out[sid] = path
            continue
        path = Path(src or "")
        if not path.is_file():
            raise InputError(f"--secret {sid}: no such file: {src!r}")
        out[sid] = path.resolve()
    return out


@click.command("build")
@click.argument("recipe", type=click.Path(path_type=Path), required=False)
@click.option("-f", "--file", "recipe_file", type=click.Path(path_type=Path),
              help="The recipe (a positional argument is then the context directory).")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path),
              help="Where the image goes (optional with --push).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="oci",
              show_default=True, help="Layout directory, or one tar file.")
@click.option("-t", "--tag", help="Name the image is recorded under (default: the recipe's tag, else latest).")
@click.option("--target", help="Make the image of this stage, not the recipe's final image.")
@click.option("--platform", "platform_texts", multiple=True, help="os/arch[/variant]; repeatable.")
@click.option("--build-arg", "build_args", multiple=True,
              help="KEY=VALUE (or KEY: its value from the environment); overrides the recipe's args.")
@click.option("--label", "labels", multiple=True, help="KEY=VALUE: a config label, over the recipe's.")
@click.option("--annotation", "annotations", multiple=True, help="KEY=VALUE: a manifest annotation, over the recipe's.")
@click.option("--env", "env", multiple=True, help="KEY=VALUE: an Env entry of the image config, over the recipe's.")
@click.option("--context", type=click.Path(path_type=Path, file_okay=False), help="Where sources are read.")
@click.option("--compression", type=click.Choice([c.value for c in Compression]), default="gzip", show_default=True)
@click.option("--compression-level", type=int, help="gzip 1-9 (default 3; 1-3 ISA-L, 4-9 zlib), zstd 1-22 (default 3).")
@click.option("--source-date-epoch", type=click.IntRange(min=0), help="Build timestamp (default $SOURCE_DATE_EPOCH, else 0).")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Layer cache and run-step cache mounts "
              "(default $XDG_CACHE_HOME/pybuild).")
@click.option("--no-cache", is_flag=True, help="Build every step (the cache is still refreshed).")
@click.option("--cache-from", "cache_from", multiple=True, metavar="REF",
              help="A registry repository to read cached layers from, after the local cache; repeatable, in order.")
@click.option("--cache-to", "cache_to", metavar="REF",
              help="A registry repository to write every step's cached layer to (read too when also a --cache-from).")
@click.option("--push", "push_ref", help="Also push the result to a registry.")
@registry_flags
@click.option("--secret", multiple=True, help="id=ID,src=PATH or id=ID,env=VAR, for run steps.")
@click.option("--ssh", multiple=True, help="ID[=SOCKET]: an ssh-agent for run steps' ssh: ID mounts "
              "(default socket $SSH_AUTH_SOCK).")
@click.option("--allow", "allow", multiple=True, type=click.Choice(["security.insecure"]),
              help="Let run steps with `security: insecure` run unconfined (all capabilities, no seccomp).")
@click.option("--sbom", is_flag=True, help="Attach an SBOM (SPDX 2.3 and CycloneDX 1.5) to the image as well.")
@click.option("--no-attestations", is_flag=True,
              help="Attach nothing to the image (by default a provenance statement is attached).")
@click.option("--digest-file", type=click.Path(path_type=Path), help="Write the manifest (or index) digest here.")
@click.option("--iidfile", type=click.Path(path_type=Path), help="Write the image id (the config digest) here.")
@click.option("--metadata-file", type=click.Path(path_type=Path), help="Write a JSON summary here.")
@QUIET
@PROGRESS
def build_cmd(recipe: Path | None, recipe_file: Path | None, out: Path | None, fmt: str, tag: str | None,
              target: str | None, platform_texts: tuple[str, ...], build_args: tuple[str, ...],
              labels: tuple[str, ...], annotations: tuple[str, ...], env: tuple[str, ...], context: Path | None,
              compression: str, compression_level: int | None, source_date_epoch: int | None,
              cache_dir: Path | None, no_cache: bool, cache_from: tuple[str, ...], cache_to: str | None,
              push_ref: str | None, insecure_registry: tuple[str, ...],
              tls_verify: bool, authfile: Path | None, creds: str | None, retry: int | None,
              secret: tuple[str, ...], ssh: tuple[str, ...], allow: tuple[str, ...],
              sbom: bool, no_attestations: bool, digest_file: Path | None, iidfile: Path | None, metadata_file: Path | None, quiet: bool,
              progress: str) -> None:
    """Build RECIPE (a file, or a directory with a pybuild.yaml or recipe.yaml) into OUT."""
    kind = Compression(compression)
    if compression_level is not None and compression_level not in kind.levels:
        raise click.UsageError(f"--compression-level for {kind}: {kind.levels.start}-{kind.levels.stop - 1}")
    if recipe_file is not None and recipe is not None:  # `-f FILE CONTEXT`, as buildah bud and docker build
        if context is not None:
            raise click.UsageError("with -f, the argument is the context directory: give it or --context, not both")
        context, recipe = recipe, recipe_file
    recipe = recipe_file or recipe
    if recipe is None:
        raise click.UsageError("Missing argument 'RECIPE' (a recipe file, or -f FILE).")
    push_to = reference(push_ref, "--push") if push_ref is not None else None
    for ref in (*cache_from, *([cache_to] if cache_to else [])):
        reference(ref, "--cache-from" if ref in cache_from else "--cache-to")
    if out is None and push_to is None:
        raise click.UsageError("Missing option '-o' / '--output' (needed unless --push is given).")
    recipe = _recipe_file(recipe)
    if context is not None and not context.is_dir():
        raise InputError(f"--context: no such directory: {str(context)!r}")
    report = reporter(quiet, progress)
    if os.geteuid() != 0 and not in_user_namespace() and has_run_steps(recipe, _build_args(build_args)):
        status = _in_user_namespace(report)
        if status is not None:
            raise SystemExit(status)
    started = time.monotonic()
    registry = registry_options(insecure_registry, tls_verify, authfile, creds, retry)
    with contextlib.ExitStack() as stack:
        options = BuildOptions(
            context=context, epoch=epoch_from_env(source_date_epoch), compression=kind, level=compression_level,
            platforms=platforms(platform_texts), build_args=_build_args(build_args), tag=tag,
            secrets=_secrets(secret, stack), ssh=_ssh(ssh), cache_dir=cache_dir, use_cache=not no_cache, registry=registry,
            allow=frozenset(allow), target=target, labels=parse_kv(labels, "--label"),
            env=parse_kv(env, "--env"), annotations=parse_kv(annotations, "--annotation"),
            cache_from=cache_from, cache_to=cache_to, attestations=not no_attestations, sbom=sbom,
            # --push alone: registry cache hits on the push's registry are mounted by it, never downloaded
            mount_into=push_to.registry if out is None and push_to is not None else None,
        )
        scratch = None
        if out is None:  # --push alone: the build's blobs live in a private temp dir until pushed
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pybuild-push-")))
        result = _build_and_write(recipe, out, scratch, fmt, options, push_to, metadata_file, report)
    digest, tag = str(result.result.digest), result.tag
    if digest_file is not None:
        write_text(digest_file, digest + "\n")
    if iidfile is not None:
        write_text(iidfile, f"{result.image_id}\n")
    where = f"wrote {out} ({fmt})" if out is not None else f"pushed to {push_to}"
    report.message(f"pybuild: {where} {tag} {digest} in {time.monotonic() - started:.1f}s")
    click.echo(digest)


def _in_user_namespace(report: Reporter) -> int | None:
    """Rootless with run steps: the whole build again inside a user namespace with the user's
    subordinate ids (so ``apt-get`` and ``chown`` work); its exit status, or None to build here."""
    idmap, missing = subordinate_ids()
    why = f"a full id range needs {missing}"
    if idmap is not None:
        argv = click.get_current_context().obj  # main's command line: a build called as main(argv) has its own
        status, problem = run_in_user_namespace(idmap, argv or sys.argv[1:])
        if status is not None:
            return status
        why = f"the subordinate ids could not be mapped ({problem})"
    report.message(f"warning: rootless run steps get only your own id (as uid 0): commands that switch "
                   f"users or chown to another id fail; {why}")
    if overlay_in_user_namespace():  # one id, but a namespace of the build's own: run steps on overlayfs
        argv = click.get_current_context().obj
        return run_in_own_user_namespace(argv or sys.argv[1:])
    return None


def _build_and_write(recipe: Path, out: Path | None, scratch: Path | None, fmt: str, options: BuildOptions,
                     push_to: Reference | None, metadata_file: Path | None, report: Reporter) -> BuildResult:
    """The build itself, written to OUT and/or pushed."""
    with work_directory(out if out is not None else (scratch or Path()) / "out") as workdir:
        options = dataclasses.replace(options, workdir=workdir, reuse_layouts=(out,) if out is not None else ())
        result = build(recipe, options, report)
        if out is not None:
            write_output(fmt, out, result.result, result.tag, options.epoch, result.referrers)
        if push_to is not None:  # while the blobs are still in the work directory
            from builder.registry.push import push

            report.message(f"pushing to {push_to}")
            base = reference(result.base_reference, "from") if result.base_reference else None
            mount_from = base.repository if base is not None and base.registry == push_to.registry else None
            push(result.result, push_to, options.registry, report.blob_event, mount_from=mount_from,
                 referrers=result.referrers)
    if metadata_file is not None:
        write_text(metadata_file, json.dumps(result.metadata(), indent=2, sort_keys=True) + "\n")
    return result
