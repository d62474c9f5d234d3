"""The image config (image-spec config.md) as a JSON object, and the edits a build makes to it.

The config is kept as the parsed JSON dict rather than a dataclass on purpose: a base image's
config may carry fields pybuild does not model (``container_config``, ``docker_version``,
``ArgsEscaped``...), and the spec says unknown fields must survive. Every edit here returns
a new dict; nothing mutates its input.
"""

from __future__ import annotations

import copy
import datetime as _dt
from collections.abc import Mapping, Sequence
from typing import Any

from builder.oci.digest import Digest
from builder.oci.platform import Platform

JSON = dict[str, Any]

#: Docker's default PATH: a ``scratch`` image's Env starts with it (as Buildah and BuildKit do), run
#: steps get it when the image sets none, and a runtime bundle gets it when the config has none.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def rfc3339(epoch: int) -> str:
    """``created`` timestamps: whole seconds, UTC, ``Z`` suffix."""
    return _dt.datetime.fromtimestamp(epoch, tz=_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def empty_config(platform: Platform) -> JSON:
    """The config of ``scratch``: no layers, no history, Docker's default PATH."""
    cfg: JSON = {
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {"Env": [f"PATH={DEFAULT_PATH}"]},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [],
    }
    if platform.variant:
        cfg["variant"] = platform.variant
    return cfg


def diff_ids(cfg: Mapping[str, Any]) -> list[Digest]:
    """The config's diff_ids, validated; raises ValueError on a malformed config."""
    rootfs = cfg.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
        raise ValueError("config has no rootfs.diff_ids list")
    return [Digest.parse(str(d)) for d in rootfs["diff_ids"]]


def append_layer(cfg: Mapping[str, Any], diff_id: Digest | None, created: str, created_by: str) -> JSON:
    """One step's worth of change: a diff_id (None for an empty layer) and its history entry."""
    out = copy.deepcopy(dict(cfg))
    entry: JSON = {"created": created, "created_by": created_by}
    if diff_id is None:
        entry["empty_layer"] = True
    else:
        out.setdefault("rootfs", {"type": "layers", "diff_ids": []})
        out["rootfs"]["diff_ids"] = [*out["rootfs"].get("diff_ids", []), str(diff_id)]
    out["history"] = [*out.get("history", []), entry]
    return out


def _env_map(env: Sequence[str]) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in env:
        key, _, value = item.partition("=")
        result[key] = value
    return result


def merge_runtime(base: Mapping[str, Any], spec: Mapping[str, Any]) -> JSON:
    """Merge a recipe's ``config:`` (already in OCI key names) over the base's ``config`` object.

    Env and Labels merge by key, ports and volumes are unions, and the rest replace, as a
    Dockerfile's ENV/LABEL/EXPOSE/VOLUME/ENTRYPOINT do. Setting Entrypoint without Cmd
    clears the base's Cmd, as Docker does, so a base image's arguments never reach a new
    program by accident.
    """
    out = copy.deepcopy(dict(base))
    for key, value in spec.items():
        if key == "Env":
            merged = _env_map(out.get("Env") or [])
            merged.update(_env_map(value))
            out["Env"] = [f"{k}={v}" for k, v in merged.items()]
        elif key in ("Labels", "ExposedPorts", "Volumes"):
            merged_obj = dict(out.get(key) or {})
            merged_obj.update(value)
            out[key] = merged_obj
        else:
            out[key] = copy.deepcopy(value)
    if "Entrypoint" in spec and "Cmd" not in spec:
        out.pop("Cmd", None)
    return out


def with_runtime(cfg: Mapping[str, Any], runtime: Mapping[str, Any], created: str) -> JSON:
    """Replace the runtime ``config`` object and set ``created``."""
    out = copy.deepcopy(dict(cfg))
    out["config"] = dict(runtime)
    out["created"] = created
    return out


def platform_of(cfg: Mapping[str, Any]) -> Platform:
    return Platform(str(cfg.get("os", "")), str(cfg.get("architecture", "")), cfg.get("variant") or None)
