"""The one orchestrator: recipe + options -> Image, step by step.

Per platform: resolve the base, run the steps (:mod:`builder.stage`: each layer from the cache or
built in one pass), then the config and the manifest. The result is an immutable
:class:`Image` (or an :class:`ImageIndex` of several); writing it anywhere is the job of
:mod:`builder.output` (layouts, archives) or :mod:`builder.registry.push`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from builder.attest.referrer import CYCLONEDX, IN_TOTO, PREDICATE_ANNOTATION, SPDX, Referrer, attach
from builder.base import load_base
from builder.cache.store import LayerCache
from builder.errors import InputError, located
from builder.fs.apply import unpack_layers
from builder.fs.overlay import OverlayUnavailable, ReadOnlyView, choose
from builder.image import Image, ImageIndex, LayerBlob, images_of
from builder.inspect import describe
from builder.layer.blob import write_layer_blob
from builder.layer.tarwriter import LayerTarWriter
from builder.oci import config as cfgmod
from builder.oci.canonical import canonical_json
from builder.oci.descriptor import Descriptor
from builder.oci.digest import Digest, sha256_file
from builder.oci.manifest import BASE_DIGEST, BASE_NAME, image_index, image_manifest
from builder.oci.mediatypes import MediaType
from builder.oci.platform import Platform
from builder.options import BuildOptions, default_cache_dir
from builder.progress import NullReporter, Reporter
from builder.recipe import load_recipe, read_recipe, recipe_for
from builder.recipe.model import BaseRef, Recipe, Step
from builder.recipe.runtime import runtime_spec
from builder.stage import StageBuilder, StageResult, StepRecord, snapshots_of
from builder.stepcache import StepCache
from builder.steps import handler_for


@dataclass(frozen=True)
class BuildResult:
    """What a build made, and what each step of each platform did (built or from the cache)."""

    result: Image | ImageIndex
    tag: str
    steps: tuple[tuple[Platform, tuple[StepRecord, ...]], ...] = ()
    base_reference: str | None = None
    """The final image's registry base, as written (a push to the same registry can mount its layers)."""
    materials: tuple[tuple[tuple[str, Digest], ...], ...] = ()
    """Per platform (in ``steps``' order): the bases and what every step read from outside the recipe."""
    recipe: Path | None = None
    args: tuple[tuple[str, str], ...] = ()
    """The build args the recipe declares, as given (the provenance's parameters)."""
    epoch: int = 0
    target: str | None = None
    referrers: tuple[Referrer, ...] = ()
    """What is attached to the images (provenance, SBOMs): every output gets them with the image."""

    def provenance(self, platform_index: int = 0) -> bytes:
        """The in-toto/SLSA provenance statement of one platform's image (see builder.attest)."""
        from builder import __version__
        from builder.attest.provenance import Material, statement

        platform, _ = self.steps[platform_index]
        image = images_of(self.result)[platform_index]
        assert self.recipe is not None
        return statement(subject_name=self.tag, subject=image.digest, recipe=self.recipe,
                         recipe_digest=sha256_file(self.recipe)[0], args=dict(self.args), platform=platform,
                         epoch=self.epoch, version=__version__, target=self.target,
                         materials=[Material(uri, d) for uri, d in self.materials[platform_index]])

    @property
    def cache_hits(self) -> int:
        return sum(r.cached for _, records in self.steps for r in records)

    @property
    def cache_misses(self) -> int:
        return sum(not r.cached for _, records in self.steps for r in records)

    @property
    def image_id(self) -> Digest:
        """What ``--iidfile`` records: the config digest, as docker and podman do; an index has no
        config, so its own digest stands for it."""
        return self.result.image_id if isinstance(self.result, Image) else self.result.digest

    def metadata(self) -> dict[str, Any]:
        """The ``--metadata-file`` object: ``inspect --json``'s, plus what each step did."""
        meta = describe(self.result, self.tag)
        meta["cache"] = {"hits": self.cache_hits, "misses": self.cache_misses}
        remote = [r.remote for _, records in self.steps for r in records if r.remote]
        if remote:
            meta["cache"]["remote"] = {"hits": remote.count("hit"), "misses": remote.count("miss")}
        meta["attestations"] = [
            {"digest": str(r.digest), "artifact_type": r.artifact_type, "subject": str(r.subject.digest),
             "predicate_type": r.annotations.get(PREDICATE_ANNOTATION)}
            for r in self.referrers
        ]
        meta["steps"] = [
            {"platform": str(platform), "step": r.index, "created_by": r.created_by, "cached": r.cached,
             "cache": r.source or None, "remote": r.remote or None, "layer": str(r.layer.digest) if r.layer else None}
            for platform, records in self.steps for r in records
        ]
        return meta


def _load_base(ref: BaseRef, context: Path, platform: Platform, workdir: Path, options: BuildOptions,
               reporter: Reporter) -> Image | None:
    if ref.kind == "scratch":
        return None
    with located(ref.where):
        if ref.kind == "registry":
            return _pull_base(ref.value, platform, workdir, options, reporter)
        path = context / ref.value
        if not path.exists():
            raise InputError(f"no such base image: {ref.value!r}")
        return load_base(ref.kind, path, ref.tag, platform, workdir)


def _pull_base(text: str, platform: Platform, workdir: Path, options: BuildOptions, reporter: Reporter) -> Image:
    """A registry base for this platform, every blob verified: from the blob store in the cache dir (or
    the layouts of ``options.reuse_layouts``) when it has them, else downloaded into it; into the
    work dir when no cache dir is usable. ``--no-cache`` still uses the store (see builder/blobstore.py)."""
    from builder.blobstore import store_root
    from builder.oci.reference import Reference
    from builder.registry.options import RegistryOptions
    from builder.registry.pull import pull  # the registry stack loads only when a recipe needs it

    try:
        ref = Reference.parse(text)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    reporter.message(f"pulling {ref} ({platform})")
    store = store_root(options.cache_dir or default_cache_dir()) or workdir
    result = pull(ref, store, platform, options.registry or RegistryOptions(), reporter.blob_event,
                  reuse=options.reuse_layouts)
    if isinstance(result, ImageIndex):  # pull() selects a platform when given one; be strict anyway
        raise InputError(f"{ref}: expected one image for {platform}, got an index")
    return result


def _annotations(recipe: Recipe, base_ref: BaseRef, base: Image | None, options: BuildOptions) -> dict[str, str]:
    """``base.name``/``base.digest`` (image-spec annotations.md) for a registry base, then the
    recipe's own, then ``--annotation``s."""
    out: dict[str, str] = {}
    if base is not None and base_ref.kind == "registry":
        from builder.oci.reference import Reference

        out[BASE_NAME] = str(Reference.parse(base_ref.value))
        out[BASE_DIGEST] = str(base.digest)
    out.update(recipe.annotations)
    out.update(options.annotations)
    return out


def _final(recipe: Recipe, target: str | None) -> tuple[BaseRef, tuple[Step, ...]]:
    """The base and steps of the image to make: the recipe's own, or ``--target``'s stage."""
    if target is None:
        return recipe.base, recipe.steps
    stage = recipe.stages.get(target)
    if stage is None:
        known = ", ".join(sorted(recipe.stages)) or "none: the recipe has no stages:"
        raise InputError(f"--target: no stage named {target!r} (stages: {known})")
    return stage.base, stage.steps


def _needed_stages(recipe: Recipe, final: tuple[BaseRef, tuple[Step, ...]]) -> list[str]:
    """The stages ``final`` needs (through ``from:`` and ``copy from:``), dependencies first.

    The parser has already refused unknown stages and cycles.
    """
    order: list[str] = []

    def visit(base: BaseRef, steps: tuple[Step, ...]) -> None:
        names = [base.value] if base.kind == "stage" else []
        names += [name for s in steps for name in handler_for(s).reads_stages(s)]
        for name in names:
            if name not in order:
                stage = recipe.stages[name]
                visit(stage.base, stage.steps)
                if name not in order:
                    order.append(name)

    visit(*final)
    return order


class _Stages:
    """The stages built so far for one platform, and their filesystems when a step reads one.

    A stage's filesystem is a read-only overlay of its layers' snapshots where the overlay driver
    can be used (most of them were extracted for the stage's own run steps already); else its
    layers unpacked into the work directory. Both last until :meth:`close`.
    """

    def __init__(self, workdir: Path, cache: StepCache | None, options: BuildOptions, reporter: Reporter) -> None:
        self.workdir = workdir
        self.cache = cache
        self.options, self.reporter = options, reporter
        self.results: dict[str, StageResult] = {}
        self.roots: dict[str, Path] = {}
        self._open = contextlib.ExitStack()

    def root(self, name: str) -> Path:
        if name not in self.roots:
            layers = self.results[name].layers
            if self.cache is not None:
                self.cache.materialize(layers)
            self.roots[name] = self._overlay(name, layers) or self._unpacked(name, layers)
        return self.roots[name]

    def _overlay(self, name: str, layers: list[LayerBlob]) -> Path | None:
        driver = choose()
        if driver.name != "overlay" or not layers:
            return None
        session, found = snapshots_of(layers, driver, self.options, self._open, self.reporter, lambda _: None)
        if isinstance(found, str):
            return None
        try:
            root = self._open.enter_context(ReadOnlyView([snap.path for snap in found],
                                                         self.workdir / "stages" / name / "view", driver).mounted())
        except OverlayUnavailable:
            return None
        self.reporter.message(f"      stage {name}: overlay of {len(layers)} snapshot{'s' * (len(layers) > 1)}"
                              + (f" (extracted {session.extracted})" if session.extracted else ""))
        return root

    def _unpacked(self, name: str, layers: list[LayerBlob]) -> Path:
        root = self.workdir / "stages" / name / "rootfs"
        unpack_layers(root, layers)
        return root

    def close(self) -> None:
        """Unmount the stages' overlays and release their snapshots (their work files go with the
        build's work directory)."""
        self._open.close()

    def chains(self) -> dict[str, list[Digest]]:
        return {name: [blob.diff_id for blob in r.layers] for name, r in self.results.items()}


def build_image(recipe: Recipe, platform: Platform, options: BuildOptions, workdir: Path,
                reporter: Reporter, cache: StepCache | None = None,
                bases: list[tuple[str, Digest]] | None = None) -> tuple[Image, list[StepRecord]]:
    """Build one platform's image (the stages it needs first); returns it and what each step did.

    ``bases`` gets each base image read from outside the build (a registry, a layout, an archive)
    and its digest: the build's provenance names them.
    """
    context = (options.context or recipe.path.parent).resolve()
    with contextlib.closing(_Stages(workdir, cache, options, reporter)) as stages:
        return _build_image(recipe, platform, options, workdir, reporter, cache, bases, context, stages)


def _build_image(recipe: Recipe, platform: Platform, options: BuildOptions, workdir: Path, reporter: Reporter,
                 cache: StepCache | None, bases: list[tuple[str, Digest]] | None, context: Path,
                 stages: _Stages) -> tuple[Image, list[StepRecord]]:
    records: list[StepRecord] = []

    def run(name: str, base_ref: BaseRef, steps: tuple[Step, ...]) -> tuple[Image | None, StageResult]:
        here = workdir / (f"stage-{name}" if name else "main")
        stage = recipe.stages.get(name) if name else None
        built_for = stage.platform if stage is not None and stage.platform is not None else platform
        if base_ref.kind == "stage":
            upstream = stages.results[base_ref.value]
            base, layers, config = None, list(upstream.layers), dict(upstream.config)
        else:
            base = _load_base(base_ref, context, built_for, here / "base", options, reporter)
            if base is not None and bases is not None:
                where = f"docker://{base_ref.value}" if base_ref.kind == "registry" else f"{base_ref.kind}:{base_ref.value}"
                bases.append((where, base.digest))
            layers = list(base.layers) if base else []
            config = dict(base.config) if base else cfgmod.empty_config(built_for)
        builder = StageBuilder(recipe, built_for, options, context, here, reporter, cache, name=name, stages=stages)
        result = builder.run(steps, layers, config)
        records.extend(result.records)
        if stage is not None:  # its config: is part of what a from: STAGE or --target STAGE gets
            runtime = cfgmod.merge_runtime(result.config.get("config") or {}, runtime_spec(stage.config))
            result.config = cfgmod.with_runtime(result.config, runtime, cfgmod.rfc3339(options.epoch))
            if stage.config.author is not None:
                result.config["author"] = stage.config.author
        return base, result

    final = _final(recipe, options.target)
    for name in _needed_stages(recipe, final):
        reporter.message(f"== stage {name}")
        stages.results[name] = run(name, recipe.stages[name].base, recipe.stages[name].steps)[1]
    if options.target is not None:
        reporter.message(f"== stage {options.target} (--target)")
    elif recipe.stages:
        reporter.message("== final image")
    base, result = run(options.target or "", *final)
    created = cfgmod.rfc3339(options.epoch)
    layers, config = list(result.layers), result.config
    if not layers:  # config only: the image-spec's manifest schema wants a layer, so one empty one (as Buildah)
        layers.append(_empty_layer(options, workdir))
        config = cfgmod.append_layer(config, layers[0].diff_id, created, EMPTY_LAYER_HISTORY)
    spec = runtime_spec(recipe.config) if options.target is None else {}
    runtime = cfgmod.merge_runtime(cfgmod.merge_runtime(config.get("config") or {}, spec), _cli_config(options))
    config = cfgmod.with_runtime(config, runtime, created)
    if options.target is None and recipe.config.author is not None:
        config["author"] = recipe.config.author
    raw_config = canonical_json(config)
    config_desc = Descriptor(str(MediaType.OCI_CONFIG), Digest.of(raw_config), len(raw_config))
    annotations = _annotations(recipe, final[0], base, options)
    manifest = image_manifest(config_desc, [blob.descriptor for blob in layers], annotations)
    raw_manifest = canonical_json(manifest)
    image = Image(raw_manifest, raw_config, str(MediaType.OCI_MANIFEST), tuple(layers), cfgmod.platform_of(config))
    return image, records


EMPTY_LAYER_HISTORY = "pybuild: empty layer (an image has at least one)"


def _cli_config(options: BuildOptions) -> dict[str, object]:
    """``--env``/``--label`` in the image config's key names; merged after the recipe's ``config:``."""
    out: dict[str, object] = {}
    if options.env:
        out["Env"] = [f"{k}={v}" for k, v in options.env.items()]
    if options.labels:
        out["Labels"] = dict(options.labels)
    return out


def _empty_layer(options: BuildOptions, workdir: Path) -> LayerBlob:
    """An empty tar (the end-of-archive blocks only), compressed as the build's other layers."""

    def produce(out: BinaryIO) -> None:
        LayerTarWriter(out, options.epoch).close()

    workdir.mkdir(parents=True, exist_ok=True)
    return write_layer_blob(produce, options.compression, options.level, workdir)


def build(recipe_path: Path, options: BuildOptions, reporter: Reporter | None = None) -> BuildResult:
    """Parse ``recipe_path`` and build it for every platform asked for.

    One platform gives an :class:`Image`; several give an :class:`ImageIndex` of them.
    ``options.workdir`` must be set: blobs are written there.
    """
    reporter = reporter or NullReporter()
    if options.workdir is None:
        raise ValueError("options.workdir is required")
    # composed once; substituted and checked for the first platform (to learn the platforms), then per platform
    source = read_recipe(recipe_path)
    first = recipe_for(source, options.build_args, _builtin_args(options.platforms[0] if options.platforms
                                                                 else Platform.host()))
    platforms = options.platforms or first.platforms or (Platform.host(),)
    for name in unused_build_args(first, options.build_args):
        reporter.message(f"warning: --build-arg {name} is not declared in args: nor used as ${{{name}}} "
                         "by the recipe (a typo?)")
    cache = _step_cache(options, reporter)
    images: list[Image] = []
    steps: list[tuple[Platform, tuple[StepRecord, ...]]] = []
    materials: list[tuple[tuple[str, Digest], ...]] = []
    try:
        for n, platform in enumerate(platforms):
            builtins = _builtin_args(platform)
            recipe = recipe_for(source, options.build_args, builtins)
            if len(platforms) > 1:
                reporter.message(f"== {platform}")
            bases: list[tuple[str, Digest]] = []
            image, records = build_image(recipe, platform, options, options.workdir / f"p{n}", reporter, cache,
                                         bases)
            images.append(image)
            steps.append((platform, tuple(records)))
            materials.append(tuple(bases) + tuple(m for r in records for m in r.materials))
        if options.attestations and options.sbom:  # every layer is read: lazy registry hits are fetched
            for image in images:
                cache.materialize(image.layers)
    finally:
        cache.close()
    tag = options.tag or first.tag or "latest"
    base_ref = first.base.value if first.base.kind == "registry" else None
    declared = first.declared_args.union(*(stage.declared_args for stage in first.stages.values()))
    args = tuple(sorted((k, v) for k, v in options.build_args.items() if k in declared))
    result: Image | ImageIndex = images[0]
    if len(images) > 1:
        result = ImageIndex(canonical_json(image_index([img.descriptor() for img in images])), tuple(images))
    built = BuildResult(result, tag, tuple(steps), base_ref, tuple(materials), recipe_path, args, options.epoch,
                        options.target)
    if options.attestations:
        built = dataclasses.replace(built, referrers=attestations(built, options, reporter))
    return built


def attestations(result: BuildResult, options: BuildOptions, reporter: Reporter) -> tuple[Referrer, ...]:
    """The referrers of every platform's image: its provenance, and with ``options.sbom`` its SBOMs."""
    from builder.attest.provenance import PREDICATE_TYPE

    created = cfgmod.rfc3339(result.epoch)
    out: list[Referrer] = []
    for i, image in enumerate(images_of(result.result)):
        subject = image.descriptor()
        out.append(attach(subject, IN_TOTO, result.provenance(i), created, {PREDICATE_ANNOTATION: PREDICATE_TYPE}))
        if options.sbom:
            out += _sboms(result, i, image, options, created, reporter)
    reporter.message(f"attached {len(out)} attestation{'s' if len(out) != 1 else ''} "
                     f"({', '.join(sorted({_kind(r.artifact_type) for r in out}))})")
    return tuple(out)


def _sboms(result: BuildResult, i: int, image: Image, options: BuildOptions, created: str,
           reporter: Reporter) -> list[Referrer]:
    """The SPDX and CycloneDX documents of one platform's image, attached to it.

    Every layer is read for package databases (each layer once, its scan cached by diff_id in the
    cache directory, so a rebuild reads only the layers it made); the files of the layers that
    ``copy``, ``write``, ``fetch`` and ``rootfs`` steps made are listed with their digests.
    """
    from builder import __version__, sbom

    reporter.message(f"reading the SBOM of {image.platform}")
    added = {r.layer.digest for r in result.steps[i][1] if r.adds_files and r.layer is not None}
    file_layers = [n for n, layer in enumerate(image.layers) if layer.digest in added]
    cache_dir = options.cache_dir or default_cache_dir()
    inventory = sbom.inventory(image, file_layers, cache_dir)
    subject = image.descriptor()
    spdx = sbom.spdx_json(inventory, name=result.tag, subject=image.digest, created=created, tool_version=__version__)
    cyclonedx = sbom.cyclonedx_json(inventory, name=result.tag, subject=image.digest, created=created,
                                    tool_version=__version__)
    return [attach(subject, SPDX, spdx, created), attach(subject, CYCLONEDX, cyclonedx, created)]


def _kind(artifact_type: str) -> str:
    return {IN_TOTO: "provenance", SPDX: "SPDX SBOM", CYCLONEDX: "CycloneDX SBOM"}.get(artifact_type, artifact_type)


def _step_cache(options: BuildOptions, reporter: Reporter) -> StepCache:
    """The local layer cache, with the ``--cache-from`` repositories behind it and ``--cache-to``."""
    local = LayerCache(options.cache_dir or default_cache_dir())
    if not options.cache_from and options.cache_to is None:
        return StepCache(local)
    from builder.layer.compress import LAYER_FORMAT_VERSION
    from builder.oci.reference import Reference
    from builder.registry.remote_cache import RegistryCache

    def remote(text: str, write: bool) -> RegistryCache:
        return RegistryCache(Reference.parse(text), options.registry, write=write, layer_format=LAYER_FORMAT_VERSION,
                             warn=reporter.message)

    def same(a: str, b: str) -> bool:
        ra, rb = Reference.parse(a), Reference.parse(b)
        return (ra.registry, ra.repository) == (rb.registry, rb.repository)

    readers = [remote(text, options.cache_to is not None and same(text, options.cache_to))
               for text in options.cache_from]
    writer = next((r for r in readers if r.write), None)
    if writer is None and options.cache_to is not None:
        writer = remote(options.cache_to, True)
    return StepCache(local, readers, writer, options.mount_into)


def unused_build_args(recipe: Recipe, given: Mapping[str, str]) -> list[str]:
    """``--build-arg``s the recipe neither declares nor references as ``${NAME}``: most likely a typo
    (Docker warns of them too, as "build-args were not consumed")."""
    try:
        text = recipe.path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    declared = recipe.declared_args.union(*(stage.declared_args for stage in recipe.stages.values()))
    return [name for name in given if name not in declared and f"${{{name}}}" not in text]


def has_run_steps(recipe_path: Path, build_args: Mapping[str, str]) -> bool:
    """Whether any stage of the recipe runs a command (a rootless build then wants a full id range)."""
    recipe = load_recipe(recipe_path, build_args, _builtin_args(Platform.host()))
    steps = [*recipe.steps, *(s for stage in recipe.stages.values() for s in stage.steps)]
    return any(handler_for(step).runs_commands for step in steps)


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
