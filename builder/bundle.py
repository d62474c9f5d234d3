"""``pybuild unpack``: an image as an OCI runtime bundle (``rootfs/`` + ``config.json``) that runc runs as is.

The config follows image-spec ``conversion.md``: Entrypoint + Cmd, Env, WorkingDir and User
become ``process``; os, architecture, author, created, stop signal, exposed ports and the labels
become ``annotations`` (labels win on conflicts). Everything the image does not say is what
``runc spec`` writes (capabilities, mounts, namespaces, masked paths), except that the root is
writable and there is no terminal, so ``runc run`` works without a console socket. Volumes get no
mounts: conversion.md allows that, and the data then simply lives in the rootfs.

A bundle is built in a private sibling of BUNDLE (:mod:`builder.fs.lock`: locked while in use,
removed by the next run if its process died) and renamed into place at the end, so a failure (a
corrupt layer, an unknown user) or a kill leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from builder.cache.snapshots import SnapshotStore
from builder.errors import InputError, OutputError
from builder.fs.apply import read_in_root, unpack_layers
from builder.fs.copytree import copy_tree
from builder.fs.lock import private_directory
from builder.fs.overlay import MAX_LAYERS, OverlayUnavailable, ReadOnlyView, choose
from builder.fs.users import MAX_ACCOUNT_FILE, resolve_user
from builder.image import Image, ImageIndex, select_image
from builder.oci.config import DEFAULT_PATH
from builder.oci.platform import Platform
from builder.userns import in_user_namespace

OCI_VERSION = "1.0.2"
HOSTNAME = "pybuild"

# Exactly what `runc spec` (runc 1.1) writes: the defaults a user of runc expects.
_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
_MOUNTS: list[dict[str, Any]] = [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
     "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
     "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
]
_MASKED = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
           "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"]
_READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
_NAMESPACES = ["pid", "network", "ipc", "uts", "mount"]
# conversion.md's implicit annotations: image config key -> annotation suffix
_ANNOTATED = {"os": "os", "architecture": "architecture", "variant": "variant", "os.version": "os.version",
              "author": "author", "created": "created"}
_PREFIX = "org.opencontainers.image."


def write_bundle(image: Image | ImageIndex, bundle: Path, platform: Platform | None = None,
                 snapshots: Path | None = None) -> bool:
    """Unpack ``image`` (from an index: the one for ``platform``, default the host's) into ``bundle``.

    ``bundle`` must not exist or be an empty directory; it is replaced by the finished bundle
    in one rename. The bundle directory is 0700: the rootfs holds the image's setuid files and
    device nodes, which other local users must not reach.

    ``snapshots``: a snapshot store (``CACHE/snapshots``). As root, when it holds every layer of the
    image already extracted, the rootfs is a copy of their overlay instead of the layers applied
    again (no decompression; the result is the same tree). Returns whether it was.
    """
    chosen = image if isinstance(image, Image) else select_image(image.images, platform or Platform.host(), "the index")
    _check_target(bundle)
    with private_directory(bundle, "unpack", "a bundle") as tmp:
        try:
            rootfs = tmp / "rootfs"
            rootfs.mkdir(mode=0o755)
            rootfs.chmod(0o755)  # an image without a root entry still gets a usable root
            copied = snapshots is not None and _copy_snapshots(chosen, snapshots, rootfs)
            if not copied:
                unpack_layers(rootfs, chosen.layers)
            config = runtime_config(chosen.config, rootfs)
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            tmp.rename(bundle)  # atomic; replaces an empty directory, refuses anything else
        except OSError as exc:
            raise OutputError(f"cannot write bundle {str(bundle)!r}: {exc.strerror or exc}") from exc
    return copied


def _copy_snapshots(image: Image, store_root: Path, rootfs: Path) -> bool:
    """The rootfs copied from a read-only overlay of the image's layer snapshots, when the store has
    all of them (True); else nothing is done (False). Only as root: in a user namespace the owners
    the overlay shows are the namespace's."""
    driver = choose()
    if os.geteuid() != 0 or in_user_namespace() or driver.name != "overlay" or not image.layers \
            or len(image.layers) > MAX_LAYERS:
        return False
    with SnapshotStore(store_root, driver.flavor).using() as session:
        found = [session.peek(blob) for blob in image.layers]
        paths = [snap.path for snap in found if snap is not None and not snap.unsafe]
        if len(paths) != len(image.layers):
            return False
        with tempfile.TemporaryDirectory(prefix="pybuild-unpack-view-") as work:
            try:
                with ReadOnlyView(paths, Path(work), driver).mounted() as view:
                    copy_tree(view, rootfs)
            except OverlayUnavailable:
                return False
    return True


def _check_target(bundle: Path) -> None:
    if bundle.is_symlink() or (bundle.exists() and not bundle.is_dir()):
        raise OutputError(f"bundle {str(bundle)!r} exists and is not a directory")
    try:
        if bundle.is_dir() and any(bundle.iterdir()):
            raise OutputError(f"bundle directory {str(bundle)!r} is not empty")
    except OSError as exc:
        raise OutputError(f"cannot read {str(bundle)!r}: {exc.strerror}") from exc


def runtime_config(config: dict[str, Any], rootfs: Path) -> dict[str, Any]:
    """The runtime-spec ``config.json`` for an image config, users resolved in ``rootfs``."""
    inner = config.get("config") or {}
    if not isinstance(inner, dict):
        raise InputError("image config: 'config' is not an object")
    args = [*_strings(inner, "Entrypoint"), *_strings(inner, "Cmd")]
    if not args:
        raise InputError("the image has neither Entrypoint nor Cmd: nothing to run")
    env = _strings(inner, "Env")
    if not any(e.startswith("PATH=") for e in env):
        env.append(f"PATH={DEFAULT_PATH}")  # runc execs args[0] through PATH; conversion.md allows additions
    cwd = inner.get("WorkingDir") or "/"
    if not isinstance(cwd, str):
        raise InputError("image config: WorkingDir is not a string")
    user_spec = inner.get("User") or ""
    if not isinstance(user_spec, str):
        raise InputError("image config: User is not a string")
    passwd, group = (read_in_root(rootfs, f"etc/{name}", MAX_ACCOUNT_FILE) for name in ("passwd", "group"))
    resolved = resolve_user(user_spec, passwd, group)
    user: dict[str, Any] = {"uid": resolved.uid, "gid": resolved.gid}
    if resolved.additional_gids:
        user["additionalGids"] = list(resolved.additional_gids)
    caps = {kind: list(_CAPS) for kind in ("bounding", "effective", "permitted")}
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False, "user": user, "args": args, "env": env,
            "cwd": cwd if cwd.startswith("/") else f"/{cwd}", "capabilities": caps,
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}], "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": HOSTNAME,
        "mounts": [dict(m) for m in _MOUNTS],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in _NAMESPACES],
            "maskedPaths": list(_MASKED),
            "readonlyPaths": list(_READONLY),
        },
        "annotations": runtime_annotations(config),
    }


def _strings(obj: dict[str, Any], key: str) -> list[str]:
    value = obj.get(key) or []
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise InputError(f"image config: {key} is not a list of strings")
    return list(value)


def runtime_annotations(config: dict[str, Any]) -> dict[str, str]:
    """conversion.md's annotations: implicit ones from the config, then the labels (which win)."""
    out: dict[str, str] = {}
    for key, name in _ANNOTATED.items():
        if isinstance(config.get(key), str) and config[key]:
            out[_PREFIX + name] = config[key]
    features = config.get("os.features")
    if isinstance(features, list) and features:
        out[_PREFIX + "os.features"] = ",".join(map(str, features))
    inner = config.get("config") or {}
    if isinstance(inner.get("StopSignal"), str) and inner["StopSignal"]:
        out[_PREFIX + "stopSignal"] = inner["StopSignal"]
    if isinstance(inner.get("ExposedPorts"), dict) and inner["ExposedPorts"]:
        out[_PREFIX + "exposedPorts"] = ",".join(sorted(inner["ExposedPorts"]))
    labels = inner.get("Labels") or {}
    if isinstance(labels, dict):
        out.update({k: v for k, v in labels.items() if isinstance(v, str)})
    return out
