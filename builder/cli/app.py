"""The ``pybuild`` group: ``pybuild RECIPE`` as ``pybuild build RECIPE``, its commands, and ``main``'s exit codes."""

from __future__ import annotations

import difflib
import errno
import os
import sys

import click

from builder import __version__
from builder.cli.attestations import attestations_cmd, sbom_cmd
from builder.cli.build import build_cmd
from builder.cli.cache import cache_group
from builder.cli.images import inspect_cmd, ls_cmd, unpack_cmd
from builder.cli.index import index_group
from builder.cli.registry import login_cmd, logout_cmd, pull_cmd, push_cmd
from builder.errors import PybuildError
from builder.sandbox.host import join_user_namespace

SUBCOMMANDS = ("build", "inspect", "attestations", "sbom", "ls", "unpack", "push", "pull", "login", "logout", "cache", "index", "version")


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


for _command in (build_cmd, inspect_cmd, attestations_cmd, sbom_cmd, ls_cmd, unpack_cmd, cache_group, index_group,
                 push_cmd, pull_cmd, login_cmd, logout_cmd):
    cli.add_command(_command)

#: OSErrors that say something about the machine, never about pybuild: a full disk, an exceeded
#: quota, a read-only filesystem. Where the path is known they are OutputErrors already; these are
#: the last resort for the rest (a run step's rootfs, say), so that they too give one error line.
_MACHINE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


#: How long a thread may hold the GIL while another wants it. Python's 5 ms default makes every
#: decoder, hasher and compressor thread wait up to 5 ms for the GIL after each GIL-free call while
#: the tar is built in Python; with 1 MiB calls that stalled an xz decode by 40 % (CONTRIBUTING.md,
#: "Threads and the GIL"). The process is the command line's own, so the command line sets it.
SWITCH_INTERVAL_S = 0.0002


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pybuild`` console script."""
    join_user_namespace()  # a build re-executed in a user namespace waits here for its id maps
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        # obj: the command line, for a build that re-executes itself in a user namespace
        cli.main(args=argv, prog_name="pybuild", standalone_mode=False,
                 obj=list(argv) if argv is not None else sys.argv[1:])
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
