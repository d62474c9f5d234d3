"""Step handlers: one per step kind, found by the step's type (see :mod:`builder.steps.base`)."""

from __future__ import annotations

from typing import Any

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
from builder.steps.base import Changes, Lower, Scope, Services, StepHandler, StepPlan, collect
from builder.steps.copy import CopyHandler
from builder.steps.files import FetchHandler, MkdirHandler, RemoveHandler, SymlinkHandler, WriteHandler
from builder.steps.rootfs import RootfsHandler
from builder.steps.run import RunHandler

__all__ = ["HANDLERS", "Changes", "Lower", "Scope", "Services", "StepHandler", "StepPlan", "collect", "handler_for"]

HANDLERS: dict[type, StepHandler[Any]] = {
    RootfsStep: RootfsHandler(),
    CopyStep: CopyHandler(),
    WriteStep: WriteHandler(),
    FetchStep: FetchHandler(),
    MkdirStep: MkdirHandler(),
    SymlinkStep: SymlinkHandler(),
    RemoveStep: RemoveHandler(),
    RunStep: RunHandler(),
}
"""Every step kind of :data:`builder.recipe.model.Step` and its handler (a test checks none is missing)."""


def handler_for(step: Step) -> StepHandler[Any]:
    return HANDLERS[type(step)]
