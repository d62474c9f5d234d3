"""``pybuild cache prune|du|ls``: the layer cache, its run-step cache mounts and the blob store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from builder.cache.store import LayerCache
from builder.options import default_cache_dir
from builder.progress import human

_SIZE_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1024, "mi": 1024**2, "gi": 1024**3}


def _size(text: str) -> int:
    """``500M``, ``2G``, ``1GiB``, ``0`` -> bytes."""
    raw = text.strip().lower().removesuffix("b")
    digits = raw.rstrip("kmgi")
    unit = raw[len(digits):]
    if not digits.isdigit() or unit not in _SIZE_UNITS:
        raise click.UsageError(f"--max-size: not a size: {text!r} (e.g. 500M, 2G)")
    return int(digits) * _SIZE_UNITS[unit]


@click.group("cache")
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
    """Show how much the cache holds: layers, run-step cache mounts, registry blobs, extracted layers."""
    root = cache_dir or default_cache_dir()
    usage = LayerCache(root).usage()
    if as_json:
        click.echo(json.dumps(usage.to_json(root)))
        return
    total = usage.layer_bytes + usage.mount_bytes + usage.blob_bytes + usage.snapshot_bytes
    click.echo(f"{root}\n  layers  {usage.entries:>6} entries  {human(usage.layer_bytes):>10}\n"
               f"  mounts  {usage.mounts:>6} dirs     {human(usage.mount_bytes):>10}\n"
               f"  pulled  {usage.blobs:>6} blobs    {human(usage.blob_bytes):>10}\n"
               f"  extracted {usage.snapshots:>4} layers   {human(usage.snapshot_bytes):>10}\n"
               f"  total                   {human(total):>10}")


@cache_group.command("ls")
@_CACHE_DIR
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line on stdout.")
def cache_ls_cmd(cache_dir: Path | None, as_json: bool) -> None:
    """List the cached steps, most recently used first."""
    now = time.time()
    for entry in LayerCache(cache_dir or default_cache_dir()).ls():
        if as_json:
            click.echo(json.dumps(entry.to_json()))
        else:
            digest = str(entry.digest)[:19] if entry.digest else "(no change)"
            click.echo(f"{entry.key[:12]}  {digest:<19}  {human(entry.size):>10}  {_ago(now - entry.used)}")


def _ago(seconds: float) -> str:
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{int(seconds // span)}{unit} ago"
    return "just now"
