"""Step handlers: each turns one recipe step into the ordered changes of its layer."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from builder.errors import StepError
from builder.layer.entry import Change
from builder.oci.digest import Digest
from builder.recipe.model import (
    CopyStep,
    FetchStep,
    MkdirStep,
    RemoveStep,
    RootfsStep,
    RunStep,
    Step,
    SymlinkStep,
    WriteStep,
)
from builder.steps.base import StepContext
from builder.steps.copy import CopyScan, copy_changes, copy_inputs, scan_copy
from builder.steps.files import fetch_changes, mkdir_changes, remove_changes, symlink_changes, write_changes
from builder.steps.rootfs import rootfs_changes, rootfs_inputs
from builder.steps.run import RunContext, run_changes

__all__ = ["CopyScan", "RunContext", "StepContext", "cache_inputs", "changes_for", "describe", "prepare"]


def prepare(step: Step, context: Path) -> CopyScan | None:
    """What ``step`` reads from the build context, read once and shared by its cache key and its
    layer: the walk of a copy's sources; None for every other step."""
    if isinstance(step, CopyStep) and step.from_stage is None:
        return scan_copy(step, context)
    return None


def changes_for(step: Step, ctx: StepContext, run: RunContext | None = None,
                prepared: CopyScan | None = None) -> Iterator[Change]:
    """The ordered changes ``step`` makes on top of ``ctx.tree`` (``run`` is needed for run steps;
    ``prepared`` is what :func:`prepare` read for it)."""
    if isinstance(step, RootfsStep):
        return rootfs_changes(step, ctx)
    if isinstance(step, CopyStep):
        return iter(copy_changes(step, ctx, prepared))
    if isinstance(step, WriteStep):
        return iter(write_changes(step, ctx))
    if isinstance(step, FetchStep):
        return iter(fetch_changes(step, ctx))
    if isinstance(step, MkdirStep):
        return iter(mkdir_changes(step, ctx))
    if isinstance(step, SymlinkStep):
        return iter(symlink_changes(step, ctx))
    if isinstance(step, RemoveStep):
        return iter(remove_changes(step, ctx))
    if isinstance(step, RunStep):
        if run is None:
            raise StepError("run steps need a working root filesystem")
        return iter(run_changes(step, ctx, run))
    raise AssertionError(f"unknown step {step!r}")


def cache_inputs(step: Step, context: Path, stages: Mapping[str, Sequence[Digest]], prepared: CopyScan | None,
                 *, contents: bool = True) -> dict[str, Any]:
    """What a step reads besides its own text and its parent layers, as data for its cache key.

    A copy from a stage is keyed by that stage's layers (its diff_id chain), which determine
    every byte it can read. A copy from the context is keyed by its files (``prepared``), their
    contents only when ``contents`` (else its shape: see :func:`builder.steps.copy.copy_inputs`).
    """
    if isinstance(step, RootfsStep):
        return rootfs_inputs(step, context)
    if isinstance(step, CopyStep) and step.from_stage:
        return {"stage": [str(d) for d in stages.get(step.from_stage, ())]}
    if isinstance(step, CopyStep):
        return {"files": copy_inputs(step, prepared or scan_copy(step, context), contents=contents)}
    return {}


def describe(step: Step) -> str:
    """The history ``created_by`` of a step: what it did, as written (after ${ARGS})."""
    if isinstance(step, RootfsStep):
        return f"pybuild rootfs {step.source} {step.to}"
    if isinstance(step, CopyStep):
        extra = "".join(
            f" --{k}={v}"
            for k, v in (("from", step.from_stage), ("chown", step.owner),
                         ("chmod", None if step.mode is None else f"{step.mode:04o}"))
            if v is not None
        )
        excl = "".join(f" --exclude={p}" for p in step.exclude)
        return f"pybuild copy{extra}{excl} {' '.join(step.sources)} {step.to}"
    if isinstance(step, WriteStep):
        return f"pybuild write {step.path} ({len(step.content.encode())} bytes)"
    if isinstance(step, FetchStep):
        return f"pybuild fetch {step.url} sha256:{step.sha256} {step.to}"
    if isinstance(step, MkdirStep):
        return f"pybuild mkdir {step.path}"
    if isinstance(step, SymlinkStep):
        return f"pybuild symlink {step.path} -> {step.target}"
    if isinstance(step, RemoveStep):
        return f"pybuild remove {' '.join(step.paths)}"
    return f"pybuild run {step.script}"
