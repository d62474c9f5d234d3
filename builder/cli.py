"""The ``pybuild`` command: a thin shell over the library; the only module that prints or exits.

Exit codes: 0 success; 1 a build or transfer failed (any PybuildError); 2 bad usage.
Every failure prints one first line ``pybuild: error: ...``; no traceback for user errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import errno
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from builder import __version__
from builder.build import BuildResult, build, has_run_steps
from builder.cache import LayerCache
from builder.errors import InputError, OutputError, PybuildError
from builder.image import Image, ImageIndex
from builder.inspect import describe, render_text
from builder.layer.compress import Compression
from builder.layout.format import read_json
from builder.layout.write import write_layout
from builder.oci.descriptor import is_attestation
from builder.oci.platform import Platform
from builder.options import BuildOptions, default_cache_dir, epoch_from_env
from builder.output import FORMATS, write_output
from builder.progress import JsonReporter, NullReporter, PlainReporter, Reporter, TtyReporter, human
from builder.sandbox import join_user_namespace, run_in_user_namespace
from builder.sinks.bundle import write_bundle
from builder.userns import in_user_namespace, subordinate_ids
from builder.workdir import work_directory

if TYPE_CHECKING:
    from builder.registry.reference import Reference
    from builder.registry.transport import RegistryOptions

SUBCOMMANDS = ("build", "inspect", "ls", "unpack", "push", "pull", "login", "logout", "cache", "version")
RECIPE_NAMES = ("pybuild.yaml", "recipe.yaml")
"""What a directory given as RECIPE is taken to mean, in this order."""


class _DefaultBuild(click.Group):
    """``pybuild RECIPE ...`` means ``pybuild build RECIPE ...``; a mistyped command is not a recipe."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args:
            click.echo(ctx.get_help())
            ctx.exit(0)
        first = args[0]
        if first not in SUBCOMMANDS and first not in ("--help", "-h", "--version"):
            if not first.startswith("-") and not os.path.exists(first):
                close = difflib.get_close_matches(first, SUBCOMMANDS, n=1, cutoff=0.6)
                if close:
                    raise click.UsageError(f"no such command or recipe file {first!r} (did you mean "
                                           f"'pybuild {close[0]}'?)")
            args = ["build", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultBuild, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pybuild")
def cli() -> None:
    """Build OCI images from YAML recipes, with no daemon and no Dockerfile.

    pybuild RECIPE -o OUT is the same as pybuild build RECIPE -o OUT.
    """


@cli.command("version")
def version_cmd() -> None:
    """Print pybuild's version."""
    click.echo(f"pybuild {__version__}")


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


def _reporter(quiet: bool, progress: str) -> Reporter:
    if quiet:
        return NullReporter()
    if progress == "json":
        return JsonReporter()
    if progress == "tty" or (progress == "auto" and sys.stderr.isatty()):
        return TtyReporter()
    return PlainReporter()


def _parse_kv(values: tuple[str, ...], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.UsageError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _build_args(values: tuple[str, ...]) -> dict[str, str]:
    """``--build-arg NAME=VALUE``, or ``--build-arg NAME``: the value of the environment variable
    NAME, and no value at all when it is not set (as ``docker build --build-arg HTTP_PROXY``)."""
    bare = [v for v in values if "=" not in v]
    out = _parse_kv(tuple(v for v in values if "=" in v), "--build-arg")
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


def _platforms(values: tuple[str, ...]) -> tuple[Platform, ...]:
    try:
        return tuple(Platform.parse(v) for v in values)
    except ValueError as exc:
        raise click.UsageError(f"--platform: {exc}") from exc


_INSECURE_REGISTRY = click.option("--insecure-registry", multiple=True,
                                  help="HOST[:PORT] reached over plain HTTP / unverified TLS.")
_TLS_VERIFY = click.option("--tls-verify", type=bool, default=True, show_default=True,
                           help="false: any registry may use plain HTTP or an unverified certificate.")


def _registry_flags(func: Callable[..., None]) -> Callable[..., None]:
    """The flags every command that talks to a registry takes, named as skopeo and Buildah name them."""
    flags = [
        _INSECURE_REGISTRY,
        _TLS_VERIFY,
        click.option("--authfile", type=click.Path(path_type=Path, dir_okay=False),
                     help="Credentials file (auth.json / config.json format; default as podman and docker)."),
        click.option("--creds", metavar="USER[:PASSWORD]", help="Credentials for the registries of this command."),
        click.option("--retry", type=click.IntRange(min=0), help="Retries of a failed registry request (default 4)."),
    ]
    for flag in reversed(flags):
        func = flag(func)
    return func


def _registry_options(insecure_registry: tuple[str, ...], tls_verify: bool, authfile: Path | None,
                      creds: str | None, retry: int | None) -> RegistryOptions | None:
    """The registry flags as options; None when none is given (the defaults), so that a build that
    never talks to a registry never loads the registry stack."""
    if not insecure_registry and tls_verify and authfile is None and creds is None and retry is None:
        return None
    from builder.registry.auth import Credentials
    from builder.registry.transport import RegistryOptions

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


@cli.command("build")
@click.argument("recipe", type=click.Path(path_type=Path), required=False)
@click.option("-f", "--file", "recipe_file", type=click.Path(path_type=Path),
              help="The recipe (a positional argument is then the context directory).")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path),
              help="Where the image goes (optional with --push).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="oci",
              show_default=True, help="Layout directory, or one tar file.")
@click.option("-t", "--tag", help="Name the image is recorded under (default: the recipe's tag, else latest).")
@click.option("--target", help="Make the image of this stage, not the recipe's final image.")
@click.option("--platform", "platforms", multiple=True, help="os/arch[/variant]; repeatable.")
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
@click.option("--push", "push_ref", help="Also push the result to a registry.")
@_registry_flags
@click.option("--secret", multiple=True, help="id=ID,src=PATH or id=ID,env=VAR, for run steps.")
@click.option("--ssh", multiple=True, help="ID[=SOCKET]: an ssh-agent for run steps' ssh: ID mounts "
              "(default socket $SSH_AUTH_SOCK).")
@click.option("--allow", "allow", multiple=True, type=click.Choice(["security.insecure"]),
              help="Let run steps with `security: insecure` run unconfined (all capabilities, no seccomp).")
@click.option("--digest-file", type=click.Path(path_type=Path), help="Write the manifest (or index) digest here.")
@click.option("--iidfile", type=click.Path(path_type=Path), help="Write the image id (the config digest) here.")
@click.option("--metadata-file", type=click.Path(path_type=Path), help="Write a JSON summary here.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--progress", type=click.Choice(["auto", "plain", "tty", "json"]), default="auto", show_default=True)
def build_cmd(recipe: Path | None, recipe_file: Path | None, out: Path | None, fmt: str, tag: str | None,
              target: str | None, platforms: tuple[str, ...], build_args: tuple[str, ...], labels: tuple[str, ...],
              annotations: tuple[str, ...], env: tuple[str, ...], context: Path | None, compression: str,
              compression_level: int | None, source_date_epoch: int | None, cache_dir: Path | None, no_cache: bool,
              push_ref: str | None, insecure_registry: tuple[str, ...], tls_verify: bool, authfile: Path | None,
              creds: str | None, retry: int | None, secret: tuple[str, ...], ssh: tuple[str, ...],
              allow: tuple[str, ...],
              digest_file: Path | None, iidfile: Path | None, metadata_file: Path | None, quiet: bool,
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
    push_to = _reference(push_ref, "--push") if push_ref is not None else None
    if out is None and push_to is None:
        raise click.UsageError("Missing option '-o' / '--output' (needed unless --push is given).")
    recipe = _recipe_file(recipe)
    if context is not None and not context.is_dir():
        raise InputError(f"--context: no such directory: {str(context)!r}")
    reporter = _reporter(quiet, progress)
    if os.geteuid() != 0 and not in_user_namespace() and has_run_steps(recipe, _build_args(build_args)):
        status = _in_user_namespace(reporter)
        if status is not None:
            raise SystemExit(status)
    started = time.monotonic()
    registry = _registry_options(insecure_registry, tls_verify, authfile, creds, retry)
    with contextlib.ExitStack() as stack:
        options = BuildOptions(
            context=context, epoch=epoch_from_env(source_date_epoch), compression=kind, level=compression_level,
            platforms=_platforms(platforms), build_args=_build_args(build_args), tag=tag,
            secrets=_secrets(secret, stack), ssh=_ssh(ssh), cache_dir=cache_dir, use_cache=not no_cache, registry=registry,
            allow=frozenset(allow), target=target, labels=_parse_kv(labels, "--label"),
            env=_parse_kv(env, "--env"), annotations=_parse_kv(annotations, "--annotation"),
        )
        scratch = None
        if out is None:  # --push alone: the build's blobs live in a private temp dir until pushed
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pybuild-push-")))
        result = _build_and_write(recipe, out, scratch, fmt, options, push_to, metadata_file, reporter)
    digest, tag = str(result.result.digest), result.tag
    if digest_file is not None:
        _write_text(digest_file, digest + "\n")
    if iidfile is not None:
        image_id = result.result.image_id if isinstance(result.result, Image) else result.result.digest
        _write_text(iidfile, f"{image_id}\n")
    where = f"wrote {out} ({fmt})" if out is not None else f"pushed to {push_to}"
    reporter.message(f"pybuild: {where} {tag} {digest} in {time.monotonic() - started:.1f}s")
    click.echo(digest)


def _in_user_namespace(reporter: Reporter) -> int | None:
    """Rootless with run steps: the whole build again inside a user namespace with the user's
    subordinate ids (so ``apt-get`` and ``chown`` work); its exit status, or None to build here."""
    idmap, missing = subordinate_ids()
    why = f"a full id range needs {missing}"
    if idmap is not None:
        status, problem = run_in_user_namespace(idmap, _ARGV or sys.argv[1:])
        if status is not None:
            return status
        why = f"the subordinate ids could not be mapped ({problem})"
    reporter.message(f"warning: rootless run steps get only your own id (as uid 0): commands that switch "
                     f"users or chown to another id fail; {why}")
    return None


def _build_and_write(recipe: Path, out: Path | None, scratch: Path | None, fmt: str, options: BuildOptions,
                     push_to: Reference | None, metadata_file: Path | None, reporter: Reporter) -> BuildResult:
    """The build itself, written to OUT and/or pushed."""
    with work_directory(out if out is not None else (scratch or Path()) / "out") as workdir:
        options = dataclasses.replace(options, workdir=workdir, reuse_layouts=(out,) if out is not None else ())
        result = build(recipe, options, reporter)
        if out is not None:
            write_output(fmt, out, result.result, result.tag, options.epoch)
        if push_to is not None:  # while the blobs are still in the work directory
            from builder.registry.push import push

            reporter.message(f"pushing to {push_to}")
            base = _reference(result.base_reference, "from") if result.base_reference else None
            mount_from = base.repository if base is not None and base.registry == push_to.registry else None
            push(result.result, push_to, options.registry, reporter.blob_event, mount_from=mount_from)
    if metadata_file is not None:
        meta = describe(result.result, result.tag)
        meta["cache"] = {"hits": result.cache_hits, "misses": result.cache_misses}
        meta["steps"] = [
            {"platform": str(platform), "step": r.index, "created_by": r.created_by, "cached": r.cached,
             "layer": str(r.layer.digest) if r.layer else None}
            for platform, records in result.steps for r in records
        ]
        _write_text(metadata_file, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return result


def _write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` through a fresh temp file beside it (mkstemp: O_EXCL, a random
    name), so a link planted at a predictable name in a shared directory is never written through."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {str(path)!r}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600: the mode a plain write would give
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OutputError(f"cannot write {str(path)!r}: {exc.strerror}") from exc


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


def _open_image(text: str, stack: contextlib.ExitStack, platform: Platform | None = None,
                ) -> tuple[Image | ImageIndex, str]:
    """A local image named on the command line, and the name it goes by (its tag, else latest)."""
    from builder.base import open_local

    found = _local(text)
    if found is None:
        raise InputError(f"no such OCI layout directory or archive: {text!r} (a registry image is docker://REF)")
    kind, path, tag = found
    scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pybuild-open-")))
    image = open_local(kind, path, tag, scratch, platform)
    return image, tag or (_only_tag(path) if kind == "oci" else None) or "latest"


@cli.command("inspect")
@click.argument("ref", metavar="IMAGE")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for tools.")
@_registry_flags
def inspect_cmd(ref: str, as_json: bool, insecure_registry: tuple[str, ...], tls_verify: bool,
                authfile: Path | None, creds: str | None, retry: int | None) -> None:
    """Show every id of an image, each explained.

    IMAGE is a layout (OUT[:TAG]), an oci-archive or docker-archive file, any of them with
    skopeo's oci:, oci-archive: or docker-archive: prefix, or a registry image: docker://REF, or
    REF itself when it names its registry (localhost:5000/app:1, ghcr.io/org/app).
    """
    with contextlib.ExitStack() as stack:
        remote = _remote(ref)
        if remote is not None:
            from builder.registry.pull import pull

            options = _registry_options(insecure_registry, tls_verify, authfile, creds, retry)
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pybuild-inspect-")))
            image: Image | ImageIndex = pull(remote, scratch, None, options, layers=False)
            name = str(remote)
        else:
            image, name = _open_image(ref, stack)
        desc = describe(image, name)
    if as_json:
        click.echo(json.dumps(desc, indent=2, sort_keys=False))
    else:
        for line in render_text(desc):
            click.echo(line)


def _remote(text: str) -> Reference | None:
    """The registry image ``text`` names: ``docker://REF``, or a REF whose first component is a
    registry host, when no local path of that name exists (a mistyped directory never goes to
    Docker Hub)."""
    if text.startswith("docker://"):
        return _reference(text.removeprefix("docker://"), "inspect")
    first = text.split("/", 1)[0]
    if "/" in text and ("." in first or ":" in first or first == "localhost") and _local(text) is None:
        return _reference(text, "inspect")
    return None


def _only_tag(path: Path) -> str | None:
    try:
        index = read_json(path / "index.json")
        names = [m.get("annotations", {}).get("org.opencontainers.image.ref.name") for m in index["manifests"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return names[0] if len(names) == 1 else None


@cli.command("ls")
@click.argument("out", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, for tools.")
def ls_cmd(out: Path, as_json: bool) -> None:
    """List the images of a layout: tag, digest, platforms, size."""
    from builder.layout.read import layout_entries, read_entry
    from builder.oci.manifest import REF_NAME

    for desc in layout_entries(out):
        image = read_entry(out, desc)
        images = image.images if isinstance(image, ImageIndex) else (image,)
        runnable = [img for img in images if not is_attestation(img.descriptor())]
        platforms = [str(img.platform) for img in runnable]
        size = sum(layer.descriptor.size for img in runnable for layer in img.layers)
        tag = desc.annotations.get(REF_NAME)
        if as_json:
            click.echo(json.dumps({"tag": tag, "digest": str(desc.digest), "media_type": desc.media_type,
                                   "platforms": platforms, "size": size}))
        else:
            click.echo(f"{tag or '<none>':<24} {desc.digest}  {','.join(platforms):<24} {human(size):>10}")


@cli.command("unpack")
@click.argument("ref", metavar="IMAGE")
@click.argument("bundle", type=click.Path(path_type=Path))
def unpack_cmd(ref: str, bundle: Path) -> None:
    """Unpack an image (as for inspect) into an OCI runtime bundle (rootfs/ + config.json) that runc runs as it is."""
    with contextlib.ExitStack() as stack:
        image, _ = _open_image(ref, stack, Platform.host())
        if isinstance(image, ImageIndex):  # pragma: no cover - a platform was asked for
            raise InputError(f"{ref}: expected one image for {Platform.host()}")
        write_bundle(image, bundle)
    click.echo(f"pybuild: unpacked {ref} into {bundle}", err=True)


_SIZE_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1024, "mi": 1024**2, "gi": 1024**3}


def _size(text: str) -> int:
    """``500M``, ``2G``, ``1GiB``, ``0`` -> bytes."""
    raw = text.strip().lower().removesuffix("b")
    digits = raw.rstrip("kmgi")
    unit = raw[len(digits):]
    if not digits.isdigit() or unit not in _SIZE_UNITS:
        raise click.UsageError(f"--max-size: not a size: {text!r} (e.g. 500M, 2G)")
    return int(digits) * _SIZE_UNITS[unit]


@cli.group("cache")
def cache_group() -> None:
    """Manage the layer cache."""


_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _age(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``2w`` -> seconds."""
    raw = text.strip().lower()
    if not raw[:-1].isdigit() or raw[-1:] not in _AGE_UNITS:
        raise click.UsageError(f"--max-age: not a duration: {text!r} (e.g. 12h, 30d, 2w)")
    return int(raw[:-1]) * _AGE_UNITS[raw[-1]]


_CACHE_DIR = click.option("--cache-dir", type=click.Path(path_type=Path), help="Default $XDG_CACHE_HOME/pybuild.")


@cache_group.command("prune")
@_CACHE_DIR
@click.option("--max-size", help="Also drop least recently used layers until they take at most this (e.g. 2G).")
@click.option("--max-age", help="Also drop layers, pulled blobs and cache mounts not used for this long (e.g. 30d).")
@click.option("--all", "everything", is_flag=True, help="Empty the cache, run-step cache mounts included.")
def cache_prune_cmd(cache_dir: Path | None, max_size: str | None, max_age: str | None, everything: bool) -> None:
    """Drop unreachable cache entries; with an option, also old or least recently used ones.

    Without options only what can never be used again goes: damaged entries, entries whose blob
    is gone, blobs no entry names.
    """
    if everything and (max_size or max_age):
        raise click.UsageError("--all empties the cache: it takes no --max-size or --max-age")
    cache = LayerCache(cache_dir or default_cache_dir())
    limit = 0 if everything else (_size(max_size) if max_size is not None else None)
    removed, freed = cache.prune(limit, _age(max_age) if max_age is not None else None)
    click.echo(f"pybuild: removed {removed} cache entries, freed {human(freed)}", err=True)


@cache_group.command("du")
@_CACHE_DIR
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
def cache_du_cmd(cache_dir: Path | None, as_json: bool) -> None:
    """Show how much the cache holds: layers, run-step cache mounts, registry blobs."""
    root = cache_dir or default_cache_dir()
    usage = LayerCache(root).usage()
    if as_json:
        click.echo(json.dumps({"cache_dir": str(root), "entries": usage.entries, "layer_bytes": usage.layer_bytes,
                               "mounts": usage.mounts, "mount_bytes": usage.mount_bytes, "blobs": usage.blobs,
                               "blob_bytes": usage.blob_bytes}))
        return
    total = usage.layer_bytes + usage.mount_bytes + usage.blob_bytes
    click.echo(f"{root}\n  layers  {usage.entries:>6} entries  {human(usage.layer_bytes):>10}\n"
               f"  mounts  {usage.mounts:>6} dirs     {human(usage.mount_bytes):>10}\n"
               f"  pulled  {usage.blobs:>6} blobs    {human(usage.blob_bytes):>10}\n"
               f"  total                   {human(total):>10}")


@cache_group.command("ls")
@_CACHE_DIR
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line on stdout.")
def cache_ls_cmd(cache_dir: Path | None, as_json: bool) -> None:
    """List the cached steps, most recently used first."""
    now = time.time()
    for entry in LayerCache(cache_dir or default_cache_dir()).ls():
        if as_json:
            click.echo(json.dumps({"key": entry.key, "digest": entry.digest, "size": entry.size,
                                   "used": int(entry.used)}))
        else:
            digest = entry.digest[:19] if entry.digest else "(no change)"
            click.echo(f"{entry.key[:12]}  {digest:<19}  {human(entry.size):>10}  {_ago(now - entry.used)}")


def _ago(seconds: float) -> str:
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{int(seconds // span)}{unit} ago"
    return "just now"


def _reference(text: str, what: str) -> Reference:
    from builder.registry.reference import Reference

    try:
        return Reference.parse(text)
    except ValueError as exc:
        raise InputError(f"{what}: {exc}") from exc


@cli.command("push")
@click.argument("ref", metavar="IMAGE")
@click.argument("dest", metavar="REF")
@_registry_flags
@click.option("--digest-file", type=click.Path(path_type=Path), help="Write the pushed digest here.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--progress", type=click.Choice(["auto", "plain", "tty", "json"]), default="auto", show_default=True)
def push_cmd(ref: str, dest: str, insecure_registry: tuple[str, ...], tls_verify: bool, authfile: Path | None,
             creds: str | None, retry: int | None, digest_file: Path | None, quiet: bool, progress: str) -> None:
    """Push an image or a multi-platform index (a layout or an archive, as for inspect) to a registry."""
    from builder.registry.push import push

    target = _reference(dest, "push")
    reporter = _reporter(quiet, progress)
    options = _registry_options(insecure_registry, tls_verify, authfile, creds, retry)
    with contextlib.ExitStack() as stack:
        image, _ = _open_image(ref, stack)
        digest = push(image, target, options, reporter.blob_event)
    if digest_file is not None:
        _write_text(digest_file, f"{digest}\n")
    reporter.message(f"pybuild: pushed {target} {digest}")
    click.echo(str(digest))


@cli.command("pull")
@click.argument("ref", metavar="REF")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="OCI layout to write.")
@click.option("--platform", "platform_text", help="os/arch[/variant]: one image instead of the whole index.")
@click.option("-t", "--tag", help="Name in the layout (default: REF's tag, else latest).")
@_registry_flags
@click.option("--digest-file", type=click.Path(path_type=Path), help="Write the pulled digest here.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--progress", type=click.Choice(["auto", "plain", "tty", "json"]), default="auto", show_default=True)
def pull_cmd(ref: str, out: Path, platform_text: str | None, tag: str | None, insecure_registry: tuple[str, ...],
             tls_verify: bool, authfile: Path | None, creds: str | None, retry: int | None,
             digest_file: Path | None, quiet: bool, progress: str) -> None:
    """Pull an image from a registry into an OCI layout (every blob verified)."""
    from builder.blobstore import store_root
    from builder.registry.pull import pull

    source = _reference(ref, "pull")
    platform = _platforms((platform_text,))[0] if platform_text else None
    reporter = _reporter(quiet, progress)
    options = _registry_options(insecure_registry, tls_verify, authfile, creds, retry)
    with work_directory(out) as workdir:
        store = store_root(default_cache_dir()) or workdir / "pull"  # the cache's blob store, else the workdir
        image = pull(source, store, platform, options, reporter.blob_event, reuse=(out,))
        write_layout(out, image, tag or source.tag or "latest")
    if digest_file is not None:
        _write_text(digest_file, f"{image.digest}\n")
    reporter.message(f"pybuild: pulled {source} into {out} {image.digest}")
    click.echo(str(image.digest))


@cli.command("login")
@click.argument("registry")
@click.option("-u", "--username", help="Default: asked for.")
@click.option("-p", "--password", help="Visible to other users in `ps`: prefer --password-stdin.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@_INSECURE_REGISTRY
@_TLS_VERIFY
@click.option("--authfile", type=click.Path(path_type=Path, dir_okay=False),
              help="Write here (default: $REGISTRY_AUTH_FILE, else the auth.json podman uses).")
def login_cmd(registry: str, username: str | None, password: str | None, password_stdin: bool,
              insecure_registry: tuple[str, ...], tls_verify: bool, authfile: Path | None) -> None:
    """Check credentials against REGISTRY and keep them where podman and skopeo look."""
    from builder.registry.auth import Credentials
    from builder.registry.login import check_login, registry_host, save_login
    from builder.registry.transport import RegistryOptions

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


@cli.command("logout")
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


#: OSErrors that say something about the machine, never about pybuild: a full disk, an exceeded
#: quota, a read-only filesystem. Where the path is known they are OutputErrors already; these are
#: the last resort for the rest (a run step's rootfs, say), so that they too give one error line.
_ARGV: list[str] = []  # the command line, for a build that re-executes itself (see _in_user_namespace)
_MACHINE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


#: How long a thread may hold the GIL while another wants it. Python's 5 ms default makes every
#: decoder, hasher and compressor thread wait up to 5 ms for the GIL after each GIL-free call while
#: the tar is built in Python; with 1 MiB calls that stalled an xz decode by 40 % (CONTRIBUTING.md,
#: "Threads and the GIL"). The process is the command line's own, so the command line sets it.
SWITCH_INTERVAL_S = 0.0002


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pybuild`` console script."""
    join_user_namespace()  # a build re-executed in a user namespace waits here for its id maps
    global _ARGV
    _ARGV = list(argv) if argv is not None else sys.argv[1:]
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        cli.main(args=argv, prog_name="pybuild", standalone_mode=False)
    except PybuildError as exc:
        click.echo(f"pybuild: error: {exc}", err=True)
        if exc.detail:
            click.echo(exc.detail, err=True)
        return 1
    except click.UsageError as exc:
        click.echo(f"pybuild: error: {exc.format_message()}", err=True)
        if exc.ctx is not None:
            click.echo(f"Try '{exc.ctx.command_path} --help' for help.", err=True)
        return 2
    except click.ClickException as exc:
        click.echo(f"pybuild: error: {exc.format_message()}", err=True)
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        click.echo("pybuild: error: interrupted", err=True)
        return 130  # 128 + SIGINT, as shells and every other tool report an interrupt
    except OSError as exc:
        if exc.errno not in _MACHINE_ERRORS:
            raise  # anything else escaping is a bug: keep its traceback
        where = f"cannot write {str(exc.filename)!r}: " if exc.filename else ""
        click.echo(f"pybuild: error: {where}{exc.strerror}", err=True)
        return 1
    return 0
