"""The recipe's ``config:`` in the image config's own key names.

One translation, used where a stage's or the final image's ``config:`` is merged over the base's
(``builder/orchestrator.py``) and where a run step needs the environment the image will have
(``builder/steps/run.py``), so both see the same Env.
"""

from __future__ import annotations

from typing import Any

from builder.recipe.model import ConfigSpec


def runtime_spec(spec: ConfigSpec) -> dict[str, Any]:
    """``spec`` as the image config's ``config`` object (only the keys the recipe sets)."""
    out: dict[str, Any] = {}
    if spec.env:
        out["Env"] = [f"{k}={v}" for k, v in spec.env]
    if spec.entrypoint is not None:
        out["Entrypoint"] = list(spec.entrypoint)
    if spec.cmd is not None:
        out["Cmd"] = list(spec.cmd)
    if spec.workdir is not None:
        out["WorkingDir"] = spec.workdir
    if spec.user is not None:
        out["User"] = spec.user
    if spec.ports:
        out["ExposedPorts"] = {p: {} for p in spec.ports}
    if spec.volumes:
        out["Volumes"] = {v: {} for v in spec.volumes}
    if spec.labels:
        out["Labels"] = dict(spec.labels)
    if spec.stop_signal is not None:
        out["StopSignal"] = spec.stop_signal
    if spec.shell is not None:
        out["Shell"] = list(spec.shell)
    if spec.healthcheck is not None:
        out["Healthcheck"] = dict(spec.healthcheck)
    if spec.onbuild:
        out["OnBuild"] = list(spec.onbuild)
    return out
