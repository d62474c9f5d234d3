"""One stage's steps: each step's layer comes from the cache or is built, in order.

Kept apart from :mod:`builder.build` (which resolves bases and assembles configs and
manifests) because this is where the state of a stage lives: the layer list, the metadata tree
the file steps need, the working root filesystem the run steps need, and the cache. The tree and
the workspace are brought up to date lazily, only when a step that is not cached needs them, so a
fully cached rebuild reads no layer and compresses nothing.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from builder.cache import CacheHit, LayerCache, step_key
from builder.errors import located
from builder.fs.apply import apply_blob
from builder.fs.scan import update_tree
from builder.fs.tree import WATCHED, FsTree
from builder.fs.users import read_account_file
from builder.image import LayerBlob
from builder.layer.blob import write_layer_blob
from builder.layer.entry import Change, Entry
from builder.layer.tarwriter import LayerTarWriter
from builder.oci import config as cfgmod
from builder.oci.digest import Digest
from builder.oci.platform import Platform
from builder.options import BuildOptions, default_cache_dir
from builder.progress import Reporter, human
from builder.recipe.model import ConfigSpec, Recipe, RunStep, Step
from builder.steps import CopyScan, RunContext, StepContext, cache_inputs, changes_for, describe, prepare
from builder.steps.base import RestartLayer
from builder.steps.run import DEFAULT_SHELL, bind_inputs


def runtime_spec(spec: ConfigSpec) -> dict[str, Any]:
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
    if spec.shell is not None:
        out["Shell"] = list(spec.shell)
    if spec.healthcheck is not None:
        out["Healthcheck"] = dict(spec.healthcheck)
    if spec.onbuild:
        out["OnBuild"] = list(spec.onbuild)
    return out


@dataclass(frozen=True)
class StepRecord:
    """What happened to one step, for the output and the metadata file."""

    index: int
    created_by: str
    layer: LayerBlob | None
    cached: bool
    stage: str = ""
    """The named stage the step belongs to ("" for the final image's steps)."""


class _Workspace:
    """The working root filesystem of a stage, made only when a run step needs one.

    Holds every layer applied so far; a run step's own changes are already on disk after it runs,
    so only the layers added by other steps (and the base) need applying before the next run.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.applied = 0

    def sync(self, layers: list[LayerBlob], reporter: Reporter) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        todo = layers[self.applied:]
        if todo:
            size = sum(blob.uncompressed_size or 0 for blob in todo)
            reporter.message(f"      preparing the root filesystem: {len(todo)} layer{'s' * (len(todo) > 1)}"
                             + (f", {human(size)}" if size else ""))
        for blob in todo:
            apply_blob(self.path, blob, reporter.step_progress)
        self.applied = len(layers)
        return self.path


class _Layerer:
    """Turns one step's change stream into a blob while recording what it did to the tree."""

    def __init__(self, options: BuildOptions, workdir: Path, reporter: Reporter) -> None:
        self.options = options
        self.workdir = workdir
        self.reporter = reporter

    def layer(self, changes: Iterator[Change]) -> tuple[LayerBlob | None, _Applied]:
        for _ in range(2):  # a change stream may ask once to be redone another way (see RestartLayer)
            try:
                return self._layer(changes)
            except RestartLayer as restart:
                changes = restart.changes
        raise AssertionError("a change stream asked twice to restart")

    def _layer(self, changes: Iterator[Change]) -> tuple[LayerBlob | None, _Applied]:
        try:
            return self._write(changes)
        finally:
            # a change stream the writer stopped reading (a full disk, say) is closed here, on this
            # thread and now: left to the garbage collector, it would close its archive readers on
            # whatever thread collects it, and report the interruption as a broken input
            close = getattr(changes, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()

    def _write(self, changes: Iterator[Change]) -> tuple[LayerBlob | None, _Applied]:
        applied = _Applied([], {})
        first = next(changes, None)
        if first is None:
            return None, applied

        def produce(out: BinaryIO) -> None:
            writer = LayerTarWriter(out, self.options.epoch, self.reporter.step_progress)
            for change in itertools.chain([first], changes):
                if isinstance(change, Entry) and change.path in WATCHED and change.content is not None:
                    with change.content() as f:
                        applied.watched[change.path] = read_account_file(f, change.size, change.path)
                applied.changes.append(change)
                writer.add(change)
            writer.close()

        return write_layer_blob(produce, self.options.compression, self.options.level, self.workdir), applied


@dataclass
class _Applied:
    """A built layer's changes (and watched files' contents), for the metadata tree: applied to it
    only when a later step needs the tree, so the last layer of a build never is."""

    changes: list[Change]
    watched: dict[str, bytes]

    def apply_to(self, tree: FsTree) -> None:
        tree.apply(c.meta() if isinstance(c, Entry) else c for c in self.changes)
        for path, content in self.watched.items():
            tree.capture(path, content)


@dataclass
class StageResult:
    """The layers and config a stage ends with, and what each step did."""

    layers: list[LayerBlob]
    config: dict[str, Any]
    records: list[StepRecord] = field(default_factory=list)


class StageBuilder:
    """Runs one stage's steps on top of a base (its layers and config)."""

    def __init__(self, recipe: Recipe, platform: Platform, options: BuildOptions, context: Path, workdir: Path,
                 reporter: Reporter, cache: LayerCache | None, *, name: str = "",
                 stage_root: Callable[[str], Path] | None = None,
                 stage_chains: Mapping[str, Sequence[Digest]] | None = None) -> None:
        self.recipe, self.platform, self.options, self.name = recipe, platform, options, name
        self.stage_root, self.stage_chains = stage_root, stage_chains or {}
        self.context, self.reporter, self.cache = context, reporter, cache
        self.layerer = _Layerer(options, workdir / "layers", reporter)
        self.workdir = workdir
        self.workspace = _Workspace(workdir / "rootfs")
        self.tree: FsTree | None = None
        self.tree_layers = 0
        self.pending: _Applied | None = None  # the changes of layer ``tree_layers``, not in the tree yet

    def _tree(self, layers: list[LayerBlob]) -> FsTree:
        """The metadata tree of ``layers``, applying only the layers it has not seen."""
        if self.tree is None:
            self.tree = FsTree()
        if self.pending is not None:
            self.pending.apply_to(self.tree)
            self.pending = None
            self.tree_layers += 1
        update_tree(self.tree, layers[self.tree_layers:])
        self.tree_layers = len(layers)
        return self.tree

    def _fetch(self, url: str, digest: Digest) -> Path:
        """A ``fetch:`` step's file, from the blob store or downloaded into it (builder/fetch.py)."""
        from builder.fetch import fetch_file
        from builder.registry.options import RegistryOptions

        registry = self.options.registry or RegistryOptions()
        host = urlsplit(url).netloc
        self.reporter.message(f"      fetching {urlsplit(url)._replace(query='', fragment='').geturl()}")
        return fetch_file(url, digest, self.options.cache_dir or default_cache_dir(), self.workdir,
                          insecure=(registry.is_insecure(host) and not registry.tls_verify) or host in registry.insecure,
                          timeout=registry.timeout)

    def _shell(self, step: Step, config: dict[str, Any]) -> tuple[str, ...]:
        """A run step's shell: its own ``shell:``, else the recipe's ``config.shell`` (for the final
        image's steps), else the image's ``Shell`` (a base built with Dockerfile's SHELL), else
        ``sh -e -c``, as Docker's RUN takes SHELL."""
        own = step.shell if isinstance(step, RunStep) else None
        recipe = _scope(self.recipe, self.name)[0].shell
        inherited = (config.get("config") or {}).get("Shell")
        if own or recipe:
            return tuple(own or recipe or ())
        if isinstance(inherited, list) and inherited and all(isinstance(a, str) for a in inherited):
            return tuple(inherited)
        return DEFAULT_SHELL

    def _key(self, step: Step, layers: list[LayerBlob], config: dict[str, Any], prepared: CopyScan | None, *,
             contents: bool) -> str:
        inputs = cache_inputs(step, self.context, self.stage_chains, prepared, contents=contents)
        if isinstance(step, RunStep):
            inputs = {"env": _run_env(config, self.recipe, self.name), "workdir": _workdir(config),
                      "shell": list(self._shell(step, config))}
            if any(m.kind == "bind" for m in step.mounts):
                inputs["binds"] = bind_inputs(step, self.context, self.stage_chains)
        settings = {"platform": str(self.platform), "compression": str(self.options.compression),
                    "level": self.options.level, "epoch": self.options.epoch}
        return step_key([blob.diff_id for blob in layers], step, inputs, settings)

    def _probe(self, step: Step, layers: list[LayerBlob], config: dict[str, Any],
               prepared: CopyScan | None) -> tuple[CacheHit | None, str]:
        """The cache's answer for ``step`` and the step's shape (its key when it reads no files).

        A copy from the context is looked up by its full key (which hashes its files) only when
        the cache knows its shape: otherwise it is a certain miss, and its files are read once,
        by the layer, which records their digests for :meth:`_store`.
        """
        assert self.cache is not None
        shape = self._key(step, layers, config, prepared, contents=False)
        if not self.options.use_cache or (prepared is not None and not self.cache.knows_shape(shape)):
            return None, shape
        key = shape if prepared is None else self._key(step, layers, config, prepared, contents=True)
        return self.cache.get(key), shape

    def _store(self, step: Step, layers: list[LayerBlob], config: dict[str, Any], prepared: CopyScan | None,
               shape: str, blob: LayerBlob | None) -> None:
        assert self.cache is not None
        if prepared is None:
            self.cache.put(shape, blob)
            return
        self.cache.put(self._key(step, layers, config, prepared, contents=True), blob)
        self.cache.add_shape(shape)

    def run(self, steps: tuple[Step, ...], layers: list[LayerBlob], config: dict[str, Any]) -> StageResult:
        created = cfgmod.rfc3339(self.options.epoch)
        result = StageResult(list(layers), config)
        for i, step in enumerate(steps, 1):
            title = describe(step)
            self.reporter.step_started(i, len(steps), title.removeprefix("pybuild "))
            with located(step.where):
                prepared = prepare(step, self.context)
                hit, shape = self._probe(step, result.layers, result.config, prepared) if self.cache else (None, "")
                if hit is not None:
                    blob = hit.layer
                else:
                    blob = self._build_step(step, result.layers, result.config, prepared)
                    if self.cache is not None:
                        self._store(step, result.layers, result.config, prepared, shape, blob)
            self.reporter.step_done(blob, cached=hit is not None)
            result.records.append(StepRecord(i, title, blob, hit is not None, self.name))
            if blob is not None:
                result.layers.append(blob)
            result.config = cfgmod.append_layer(result.config, blob.diff_id if blob else None, created, title)
        return result

    def _build_step(self, step: Step, layers: list[LayerBlob], config: dict[str, Any],
                    prepared: CopyScan | None) -> LayerBlob | None:
        # a run step reads its working root filesystem, never the metadata tree: the tree is not
        # brought up to date for it (reading every lower layer again), and catches up when needed
        is_run = isinstance(step, RunStep)
        tree = FsTree() if is_run else self._tree(layers)
        ctx = StepContext(context=self.context, tree=tree, epoch=self.options.epoch, stage_root=self.stage_root,
                          fetch=self._fetch)
        run_ctx = None
        if is_run:
            run_ctx = RunContext(
                rootfs=self.workspace.sync(layers, self.reporter), platform=self.platform,
                env=_run_env(config, self.recipe, self.name), workdir=_workdir(config), shell=self._shell(step, config),
                context=self.context,
                secrets=self.options.secrets, ssh=self.options.ssh, stage_root=self.stage_root, cache_dir=self.options.cache_dir or default_cache_dir(),
                allow_insecure="security.insecure" in self.options.allow, on_output=self.reporter.step_output,
            )
        blob, applied = self.layerer.layer(changes_for(step, ctx, run_ctx, prepared))
        if blob is not None and is_run:
            self.workspace.applied = len(layers) + 1  # its changes are on disk already
        elif blob is not None:
            self.pending = applied  # the tree has ``layers``; the new layer's changes wait until needed
        return blob


def _scope(recipe: Recipe, name: str) -> tuple[ConfigSpec, Mapping[str, str], frozenset[str]]:
    """The ``config:``, argument values and declared names the steps of stage ``name`` see ("" is the
    recipe's own steps)."""
    stage = recipe.stages.get(name) if name else None
    if stage is not None:
        return stage.config, stage.args, stage.declared_args
    return recipe.config, recipe.args, recipe.declared_args


def _run_env(config: dict[str, Any], recipe: Recipe, name: str = "") -> dict[str, str]:
    """A run step's environment before its own ``env``: the image's Env, then the args the recipe declares.

    As Docker's ARG: an argument reaches a command only if the recipe declares it under ``args:``
    (a built-in such as ``TARGETARCH`` too, declared without a value); a ``--build-arg`` it does
    not declare, and the built-ins it does not, stay out of the environment (and so out of the
    step's cache key).
    """
    spec, args, declared = _scope(recipe, name)
    runtime = cfgmod.merge_runtime(config.get("config") or {}, runtime_spec(spec))
    env = dict(item.partition("=")[::2] for item in runtime.get("Env") or [])
    env.update((arg, value) for arg, value in args.items() if arg in declared)
    return env


def _workdir(config: dict[str, Any]) -> str:
    return str((config.get("config") or {}).get("WorkingDir") or "/")
