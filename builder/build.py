"""The one orchestrator: recipe + options -> Image, step by step.

For each step: changes (steps/) -> one layer blob in one pass (layer/blob) -> config history.
The result is an immutable :class:`Image`; writing it anywhere is a sink's job (sinks/).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from builder.base import load_base
from builder.errors import InputError, located
from builder.fs.apply import apply_blob
from builder.fs.scan import tree_from_layers
from builder.fs.tree import WATCHED, FsTree
from builder.image import Image, ImageIndex, LayerBlob
from builder.layer.blob import write_layer_blob
from builder.layer.entry import Change, Entry
from builder.layer.tarwriter import LayerTarWriter
from builder.oci import config as cfgmod
from builder.oci.canonical import canonical_json
from builder.oci.descriptor import Descriptor
from builder.oci.digest import Digest
from builder.oci.manifest import BASE_DIGEST, BASE_NAME, image_index, image_manifest
from builder.oci.mediatypes import MediaType
from builder.oci.platform import Platform
from builder.options import BuildOptions, default_cache_dir
from builder.progress import NullReporter, Reporter
from builder.recipe import load_recipe
from builder.registry.pull import pull
from builder.registry.reference import Reference
from builder.registry.transport import RegistryOptions
from builder.recipe.model import BaseRef, ConfigSpec, Recipe, RunStep
from builder.steps import RunContext, StepContext, changes_for, describe


@dataclass(frozen=True)
class BuildResult:
    """What a build made, and how many layers it wrote."""

    result: Image | ImageIndex
    tag: str
    layers_built: int
    layers_cached: int = 0


def _runtime_spec(spec: ConfigSpec) -> dict[str, Any]:
    """The recipe's ``config:`` in the image config's own key names."""
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
    return out


def _load_base(ref: BaseRef, context: Path, platform: Platform, workdir: Path, options: BuildOptions,
               reporter: Reporter) -> Image | None:
    if ref.kind == "scratch":
        return None
    with located(ref.where):
        if ref.kind == "stage":
            raise InputError(f"building from stages is not supported by this version of pybuild yet: {ref.value!r}")
        if ref.kind == "registry":
            return _pull_base(ref.value, platform, workdir, options, reporter)
        path = context / ref.value
        if not path.exists():
            raise InputError(f"no such base image: {ref.value!r}")
        return load_base(ref.kind, path, ref.tag, platform, workdir)


def _pull_base(text: str, platform: Platform, workdir: Path, options: BuildOptions, reporter: Reporter) -> Image:
    """A registry base: pulled (every blob verified) into the work dir, for this platform."""
    try:
        ref = Reference.parse(text)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    reporter.message(f"pulling {ref} ({platform})")
    result = pull(ref, workdir, platform, RegistryOptions(insecure=options.insecure), reporter.blob_event)
    if isinstance(result, ImageIndex):  # pull() selects a platform when given one; be strict anyway
        raise InputError(f"{ref}: expected one image for {platform}, got an index")
    return result


def _base_annotations(recipe: Recipe, base: Image | None) -> dict[str, str]:
    """``base.name``/``base.digest`` (image-spec annotations.md) for a registry base, then the recipe's own."""
    out: dict[str, str] = {}
    if base is not None and recipe.base.kind == "registry":
        out[BASE_NAME] = str(Reference.parse(recipe.base.value))
        out[BASE_DIGEST] = str(base.digest)
    out.update(recipe.annotations)
    return out


class _Workspace:
    """The working root filesystem of a stage, made only when a run step needs one.

    Holds every layer applied so far; a run step's own changes are already on disk after it runs,
    so only the layers added by other steps (and the base) need applying before the next run.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.applied = 0

    def sync(self, layers: list[LayerBlob]) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        for blob in layers[self.applied:]:
            apply_blob(self.path, blob)
        self.applied = len(layers)
        return self.path


def _run_context(workspace: _Workspace, layers: list[LayerBlob], config: dict[str, Any],
                 recipe: Recipe, options: BuildOptions, reporter: Reporter) -> RunContext:
    runtime = cfgmod.merge_runtime(config.get("config") or {}, _runtime_spec(recipe.config))
    env = dict(item.partition("=")[::2] for item in runtime.get("Env") or [])
    env.update(recipe.args)
    return RunContext(
        rootfs=workspace.sync(layers), env=env, workdir=(config.get("config") or {}).get("WorkingDir") or "/",
        secrets=options.secrets, cache_dir=options.cache_dir or default_cache_dir(), on_output=reporter.step_output,
    )


class _Layerer:
    """Turns one step's change stream into a blob while recording what it did to the tree."""

    def __init__(self, options: BuildOptions, workdir: Path, reporter: Reporter) -> None:
        self.options = options
        self.workdir = workdir
        self.reporter = reporter

    def layer(self, changes: Iterator[Change], tree: FsTree) -> LayerBlob | None:
        first = next(changes, None)
        if first is None:
            return None
        applied: list[Change] = []
        watched: dict[str, bytes] = {}

        def produce(out: BinaryIO) -> None:
            writer = LayerTarWriter(out, self.options.epoch, self.reporter.step_progress)
            for change in itertools.chain([first], changes):
                if isinstance(change, Entry):
                    if change.path in WATCHED and change.content is not None:
                        with change.content() as f:
                            watched[change.path] = f.read()
                    applied.append(change.meta())
                else:
                    applied.append(change)
                writer.add(change)
            writer.close()

        blob = write_layer_blob(produce, self.options.compression, self.options.level, self.workdir)
        tree.apply(applied)
        for path, content in watched.items():
            tree.capture(path, content)
        return blob


def build_image(recipe: Recipe, platform: Platform, options: BuildOptions, workdir: Path,
                reporter: Reporter) -> tuple[Image, int]:
    """Build one platform's image; returns it and the number of layers written."""
    context = (options.context or recipe.path.parent).resolve()
    base = _load_base(recipe.base, context, platform, workdir / "base", options, reporter)
    epoch = options.epoch
    created = cfgmod.rfc3339(epoch)
    layers: list[LayerBlob] = list(base.layers) if base else []
    config: dict[str, Any] = dict(base.config) if base else cfgmod.empty_config(platform)
    tree: FsTree | None = None
    layerer = _Layerer(options, workdir / "layers", reporter)
    workspace = _Workspace(workdir / "rootfs")
    built = 0
    for i, step in enumerate(recipe.steps, 1):
        title = describe(step)
        reporter.step_started(i, len(recipe.steps), title.removeprefix("pybuild "))
        with located(step.where):
            if tree is None:
                tree = tree_from_layers(layers) if layers else FsTree()
            ctx = StepContext(context=context, tree=tree, epoch=epoch)
            run_ctx = None
            if isinstance(step, RunStep):
                run_ctx = _run_context(workspace, layers, config, recipe, options, reporter)
            blob = layerer.layer(changes_for(step, ctx, run_ctx), tree)
        reporter.step_done(blob)
        if blob is not None:
            layers.append(blob)
            built += 1
            if isinstance(step, RunStep):
                workspace.applied = len(layers)  # its changes are on disk already
        config = cfgmod.append_layer(config, blob.diff_id if blob else None, created, title)
    runtime = cfgmod.merge_runtime(config.get("config") or {}, _runtime_spec(recipe.config))
    config = cfgmod.with_runtime(config, runtime, created)
    raw_config = canonical_json(config)
    config_desc = Descriptor(str(MediaType.OCI_CONFIG), Digest.of(raw_config), len(raw_config))
    manifest = image_manifest(config_desc, [blob.descriptor for blob in layers], _base_annotations(recipe, base))
    raw_manifest = canonical_json(manifest)
    image = Image(raw_manifest, raw_config, str(MediaType.OCI_MANIFEST), tuple(layers),
                  cfgmod.platform_of(config))
    return image, built


def build(recipe_path: Path, options: BuildOptions, reporter: Reporter | None = None) -> BuildResult:
    """Parse ``recipe_path`` and build it for every platform asked for.

    One platform gives an :class:`Image`; several give an :class:`ImageIndex` of them.
    ``options.workdir`` must be set: blobs are written there.
    """
    reporter = reporter or NullReporter()
    if options.workdir is None:
        raise ValueError("options.workdir is required")
    first = load_recipe(recipe_path, options.build_args)
    platforms = options.platforms or first.platforms or (Platform.host(),)
    images: list[Image] = []
    built = 0
    for n, platform in enumerate(platforms):
        builtins = _builtin_args(platform)
        recipe = load_recipe(recipe_path, options.build_args, builtins)
        if len(platforms) > 1:
            reporter.message(f"== {platform}")
        image, count = build_image(recipe, platform, options, options.workdir / f"p{n}", reporter)
        images.append(image)
        built += count
    tag = options.tag or first.tag or "latest"
    if len(images) == 1:
        return BuildResult(images[0], tag, built)
    raw_index = canonical_json(image_index([img.descriptor() for img in images]))
    return BuildResult(ImageIndex(raw_index, tuple(images)), tag, built)


def _builtin_args(platform: Platform) -> dict[str, str]:
    host = Platform.host()
    return {
        "TARGETPLATFORM": str(platform),
        "TARGETOS": platform.os,
        "TARGETARCH": platform.architecture,
        "TARGETVARIANT": platform.variant or "",
        "BUILDPLATFORM": str(host),
        "BUILDOS": host.os,
        "BUILDARCH": host.architecture,
    }
