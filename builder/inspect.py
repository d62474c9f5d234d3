"""``pybuild inspect`` and ``ls``: every id of an image, as JSON for tools and as lines for people.

Images carry several ids that are easy to confuse; the text output names each one and says
what it is the hash of, so a user can match it with what a registry, docker/podman or a
layer tarball shows.
"""

from __future__ import annotations

import json
from typing import Any

from builder.image import Image, ImageIndex, runnable_images
from builder.oci.descriptor import Descriptor
from builder.oci.manifest import REF_NAME


def describe(image: Image | ImageIndex, name: str) -> dict[str, Any]:
    """The ``pybuild inspect --json`` object for ``image`` recorded under ``name``."""
    if isinstance(image, ImageIndex):
        return {
            "name": name,
            "digest": str(image.digest),
            "media_type": image.media_type,
            # one object per platform: attestation manifests (unknown/unknown) describe no runnable image
            "manifests": [describe(img, name) for img in runnable_images(image)],
            "annotations": dict(image.index.get("annotations") or {}),
        }
    cfg = image.config
    return {
        "name": name,
        "digest": str(image.digest),
        "media_type": image.media_type,
        "image_id": str(image.image_id),
        "platform": image.platform.to_json(),
        "layers": [
            {
                "digest": str(layer.digest),
                "diff_id": str(layer.diff_id),
                "size": layer.descriptor.size,
                "media_type": layer.descriptor.media_type,
            }
            for layer in image.layers
        ],
        "config": cfg.get("config") or {},
        "history": cfg.get("history") or [],
        "created": cfg.get("created"),
        "annotations": dict(image.manifest.get("annotations") or {}),
    }


def list_entry(desc: Descriptor, image: Image | ImageIndex) -> dict[str, Any]:
    """The ``pybuild ls --json`` object of one entry of a layout's index: what it runs on, and how
    much its layers take (attestations left out: they run nowhere)."""
    runnable = runnable_images(image)
    return {"tag": desc.annotations.get(REF_NAME), "digest": str(desc.digest), "media_type": desc.media_type,
            "platforms": [str(img.platform) for img in runnable],
            "size": sum(layer.descriptor.size for img in runnable for layer in img.layers)}


def _short(digest: str) -> str:
    """``sha256:`` + 12 hex digits, as ``docker images`` shows ids."""
    alg, _, hexpart = digest.partition(":")
    return f"{alg}:{hexpart[:12]}"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def _platform(p: dict[str, Any]) -> str:
    return "/".join(str(p[k]) for k in ("os", "architecture", "variant") if p.get(k))


def render_text(desc: dict[str, Any]) -> list[str]:
    """Human-readable lines for a :func:`describe` object, one id per line with what it means."""
    if "manifests" in desc:
        lines = [
            f"name:          {desc['name']}",
            f"index digest:  {desc['digest']}  (sha256 of the image index: the id a registry knows for all platforms)",
            f"media type:    {desc['media_type']}",
        ]
        lines += _annotation_lines(desc)
        for sub in desc["manifests"]:
            lines += ["", f"--- {_platform(sub['platform'])} ---", *render_text(sub)[1:]]
        return lines
    lines = [
        f"name:          {desc['name']}",
        f"image digest:  {desc['digest']}  (sha256 of the manifest: the id a registry knows, NAME@DIGEST)",
        f"image id:      {desc['image_id']}  (sha256 of the config: the id docker/podman show)",
        f"media type:    {desc['media_type']}",
        f"platform:      {_platform(desc['platform'])}",
        f"created:       {desc.get('created') or '-'}",
        (
            f"layers:        {len(desc['layers'])} (digest = sha256 of the compressed blob, its name in blobs/; "
            "diff_id = sha256 of the uncompressed tar, listed in rootfs.diff_ids)"
        ),
    ]
    for i, layer in enumerate(desc["layers"]):
        lines.append(
            f"  [{i}] digest {_short(layer['digest'])}  diff_id {_short(layer['diff_id'])}  "
            f"{_size(layer['size'])}  {layer['media_type']}"
        )
    lines += _config_lines(desc.get("config") or {})
    lines += _annotation_lines(desc)
    history = desc.get("history") or []
    lines.append(f"history:       {len(history)} entries")
    for entry in history:
        mark = " (empty layer)" if entry.get("empty_layer") else ""
        lines.append(f"  {entry.get('created', '-')}  {entry.get('created_by', '')}{mark}")
    if "referrers" in desc:
        lines += _referrer_lines(desc["referrers"])
    return lines


def _referrer_lines(referrers: list[dict[str, Any]]) -> list[str]:
    """The documents attached to the image (OCI referrers: its subject is this manifest)."""
    lines = [f"referrers:     {len(referrers)} (documents attached to this image; pybuild attestations IMAGE)"]
    for r in referrers:
        what = r.get("predicate_type") or r["artifact_type"]
        lines.append(f"  {_short(r['digest'])}  {r['artifact_type']}  {what if what != r['artifact_type'] else ''}"
                     f"  {_size(r['size'])}".replace("    ", "  "))
    return lines


def _annotation_lines(desc: dict[str, Any]) -> list[str]:
    """The manifest's (or index's) annotations: base.name/base.digest, the recipe's, --annotation's."""
    annotations = desc.get("annotations") or {}
    return [f"annotations:   {len(annotations)}", *(f"  {k}={v}" for k, v in sorted(annotations.items()))]


def _config_lines(cfg: dict[str, Any]) -> list[str]:
    """The runtime config a container starts with; unset fields are shown as '-'."""
    lines = []
    for label, key in (
        ("entrypoint", "Entrypoint"),
        ("cmd", "Cmd"),
        ("user", "User"),
        ("workdir", "WorkingDir"),
        ("stop signal", "StopSignal"),
    ):
        value = cfg.get(key)
        shown = "-" if value in (None, "", []) else value if isinstance(value, str) else json.dumps(value)
        lines.append(f"{label + ':':<15}{shown}")
    env = cfg.get("Env") or []
    lines.append(f"env:           {len(env)} variables")
    lines += [f"  {item}" for item in env]
    ports = sorted(cfg.get("ExposedPorts") or {})
    lines.append(f"ports:         {', '.join(ports) or '-'}")
    volumes = sorted(cfg.get("Volumes") or {})
    if volumes:
        lines.append(f"volumes:       {', '.join(volumes)}")
    labels = cfg.get("Labels") or {}
    lines.append(f"labels:        {len(labels)}")
    lines += [f"  {key}={value}" for key, value in sorted(labels.items())]
    return lines
