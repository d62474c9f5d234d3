"""One stage's steps: each step's layer comes from the cache or is built, in order.

Kept apart from :mod:`builder.orchestrator` (which resolves bases and assembles configs and
manifests) because this is where the state of a stage lives: the layer list, the metadata tree
the file steps need, the working root filesystem the run steps need, and the cache. It knows no
step kind: each step's handler (:mod:`builder.steps`) plans it, gives its key's inputs, and on a
miss its changes. The tree and the workspace are brought up to date lazily, only when a step that
is not cached asks for them, so a fully cached rebuild reads no layer and compresses nothing.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlsplit

from builder.cache.disk import CacheDir
from builder.cache.keys import step_key
from builder.cache.snapshots import LayerSnapshot, SnapshotSession, SnapshotStore
from builder.errors import InputError, located
from builder.fs.apply import apply_blob
from builder.fs.overlay import MAX_LAYERS, Driver, OverlayRoot, choose
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
from builder.recipe.model import Recipe, Step
from builder.stepcache import Found, StepCache
from builder.steps import Changes, Scope, Services, StepPlan, handler_for
from builder.steps.base import Redo


class StageRoots(Protocol):
    """The stages built before this one: their diff_id chains (for keys) and, made on request,
    their filesystems (for a step that reads one)."""

    def chains(self) -> Mapping[str, Sequence[Digest]]: ...

    def root(self, name: str) -> Path: ...


@dataclass(frozen=True)
class StepRecord:
    """What happened to one step, for the output and the metadata file."""

    index: int
    created_by: str
    layer: LayerBlob | None
    stage: str = ""
    """The named stage the step belongs to ("" for the final image's steps)."""
    source: str = ""
    """Which cache the layer came from: ``local``, a cache repository's name, or "" (built)."""
    remote: str = ""
    """``hit`` or ``miss`` when the step was looked up in a cache repository, else ""."""
    materials: tuple[tuple[str, Digest], ...] = ()
    """What the step read from outside the recipe (:meth:`builder.steps.StepPlan.materials`)."""
    adds_files: bool = False
    """Its handler's :attr:`~builder.steps.StepHandler.adds_files`."""

    @property
    def cached(self) -> bool:
        """The layer came from a cache (``source`` names which)."""
        return bool(self.source)


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


def snapshots_of(layers: list[LayerBlob], driver: Driver, options: BuildOptions, stack: contextlib.ExitStack,
                 reporter: Reporter, materialize: Callable[[list[LayerBlob]], None], *, verify: bool = True,
                 ) -> tuple[SnapshotSession, list[LayerSnapshot] | str]:
    """The snapshots of ``layers`` (bottom first), made where missing and locked until ``stack``
    closes; or why overlayfs cannot mount them (then the caller uses the layers themselves).
    Without ``verify``, the caller checks them (:meth:`SnapshotSession.damaged`)."""
    store = SnapshotStore(CacheDir(options.cache_dir or default_cache_dir()).snapshots, driver.flavor)
    session = stack.enter_context(store.using())
    if not layers or len(layers) > MAX_LAYERS:
        return session, f"{len(layers)} layers: overlayfs takes 1 to {MAX_LAYERS}"
    materialize(layers)
    found = []
    for blob in layers:
        snap = session.get(blob, reporter.step_progress, verify=verify)
        if snap.unsafe:
            return session, f"layer {blob.diff_id.short} cannot be an overlay lower directory: {snap.unsafe}"
        found.append(snap)
    return session, found


class _Redo(Exception):  # noqa: N818 - the writer's own signal, never leaves this module
    """A change stream yielded REDO: abandon this attempt (its temp blob is removed)."""


@dataclass
class _Built:
    """A built layer's changes (and watched files' contents), for the metadata tree: applied to it
    only when a later step needs the tree, so the last layer of a build never is. ``digests`` are
    the content digests the tar writer computed while it copied hashed host files."""

    blob: LayerBlob | None
    changes: list[Change] = field(default_factory=list)
    watched: dict[str, bytes] = field(default_factory=dict)
    digests: dict[str, Digest] = field(default_factory=dict)

    def apply_to(self, tree: FsTree) -> None:
        tree.apply(c.meta() if isinstance(c, Entry) else c for c in self.changes)
        for path, content in self.watched.items():
            tree.capture(path, content)


class _Layerer:
    """Turns one step's change stream into a blob while recording what it did to the tree."""

    def __init__(self, options: BuildOptions, workdir: Path, reporter: Reporter) -> None:
        self.options = options
        self.workdir = workdir
        self.reporter = reporter

    def layer(self, changes: Changes) -> _Built:
        try:
            return self._closing(changes.stream)
        except _Redo:
            assert changes.redo is not None, "a change stream without a redo yielded REDO"
        return self._closing(changes.redo())

    def _closing(self, changes: Iterator[Change | Redo]) -> _Built:
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

    def _write(self, changes: Iterator[Change | Redo]) -> _Built:
        first = next(changes, None)
        if first is None:
            return _Built(None)
        if isinstance(first, Redo):
            raise _Redo
        built = _Built(None)

        def produce(out: BinaryIO) -> None:
            writer = LayerTarWriter(out, self.options.epoch, self.reporter.step_progress)
            for change in itertools.chain([first], changes):
                if isinstance(change, Redo):
                    raise _Redo
                if isinstance(change, Entry) and change.path in WATCHED and change.content is not None:
                    with change.content() as f:
                        built.watched[change.path] = read_account_file(f, change.size, change.path)
                built.changes.append(change)
                writer.add(change)
            built.digests = writer.close()

        built.blob = write_layer_blob(produce, self.options.compression, self.options.level, self.workdir)
        return built


class _Lower:
    """The stage's filesystem below one step, each view made only if the step asks (see
    :class:`builder.steps.Lower`)."""

    def __init__(self, builder: StageBuilder, layers: list[LayerBlob], roots: Mapping[str, Path]) -> None:
        self._builder, self._layers, self._roots = builder, layers, roots

    def tree(self) -> FsTree:
        self._builder.materialize(self._layers)
        return self._builder.tree_of(self._layers)

    def rootfs(self) -> Path:
        self._builder.materialize(self._layers)
        self._builder.reporter.message(f"      root filesystem: copy driver ({self._builder.copy_reason()})")
        return self._builder.workspace.sync(self._layers, self._builder.reporter)

    def overlay(self) -> OverlayRoot | None:
        return self._builder.overlay_root(self._layers)

    def overlay_failed(self, why: str) -> None:
        self._builder.copy_because(why)

    def note(self, text: str) -> None:
        self._builder.reporter.message(f"      {text}")

    def stages(self) -> Mapping[str, Path]:
        return self._roots


@dataclass
class StageResult:
    """The layers and config a stage ends with, and what each step did."""

    layers: list[LayerBlob]
    config: dict[str, Any]
    records: list[StepRecord] = field(default_factory=list)


class StageBuilder:
    """Runs one stage's steps on top of a base (its layers and config)."""

    def __init__(self, recipe: Recipe, platform: Platform, options: BuildOptions, context: Path, workdir: Path,
                 reporter: Reporter, cache: StepCache | None, *, name: str = "",
                 stages: StageRoots | None = None) -> None:
        self.recipe, self.platform, self.options, self.name = recipe, platform, options, name
        self.stages = stages
        self.chains = stages.chains() if stages is not None else {}
        self.context, self.reporter, self.cache = context, reporter, cache
        self.layerer = _Layerer(options, workdir / "layers", reporter)
        self.workdir = workdir
        self.workspace = _Workspace(workdir / "rootfs")
        self.tree: FsTree | None = None
        self.tree_layers = 0
        self.pending: _Built | None = None  # the changes of layer ``tree_layers``, not in the tree yet
        self._after_step = contextlib.ExitStack()
        self._overlays = 0
        self._copy_reason = ""
        stage = recipe.stages.get(name) if name else None
        self.spec, self.args, self.declared = ((stage.config, stage.args, stage.declared_args) if stage is not None
                                               else (recipe.config, recipe.args, recipe.declared_args))
        self.services = Services(fetch=self._fetch, secrets=options.secrets, ssh=options.ssh,
                                 cache_dir=options.cache_dir or default_cache_dir(),
                                 allow_insecure="security.insecure" in options.allow, on_output=reporter.step_output)

    def materialize(self, layers: list[LayerBlob]) -> None:
        """The bytes of lazy registry cache hits among ``layers``, before anything reads them."""
        if self.cache is not None:
            self.cache.materialize(layers)

    def tree_of(self, layers: list[LayerBlob]) -> FsTree:
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

    def overlay_root(self, layers: list[LayerBlob]) -> OverlayRoot | None:
        """The overlay a run step on ``layers`` runs in, or None when it must use the copy driver
        (:meth:`copy_reason` says why). Its snapshots stay locked, and its upper directory on disk,
        until the step's layer is written (:meth:`_build`)."""
        driver = choose()
        if driver.name != "overlay":
            self._copy_reason = driver.detail
            return None
        session, found = snapshots_of(layers, driver, self.options, self._after_step, self.reporter, self.materialize,
                                      verify=False)  # checked while the command runs (OverlayRoot)
        if isinstance(found, str):
            self._copy_reason = found
            return None
        made = (f"; extracted {session.extracted} layer{'s' * (session.extracted > 1)}, "
                f"{human(session.extracted_bytes)}" if session.extracted else "")
        line = (f"      root filesystem: overlay of {len(layers)} snapshot{'s' * (len(layers) > 1)} "
                f"({driver.detail}{made})")
        self._overlays += 1
        root = OverlayRoot([snap.path for snap in found], self.workdir / f"overlay-{self._overlays}", driver,
                           announce=lambda: self.reporter.message(line), check=lambda: session.damaged(found))
        self._after_step.callback(root.remove)
        return root

    def copy_because(self, why: str) -> None:
        """Why the next :meth:`copy_reason` is what it is (a mount that failed)."""
        self._copy_reason = why

    def copy_reason(self) -> str:
        reason, self._copy_reason = self._copy_reason, ""
        return reason or choose().detail

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

    def _scope(self, config: dict[str, Any]) -> Scope:
        return Scope(context=self.context, platform=self.platform, epoch=self.options.epoch, config=config,
                     spec=self.spec, args=self.args, declared=self.declared,
                     stage_chains=self.chains, services=self.services)

    def _key(self, step: Step, layers: list[LayerBlob], inputs: dict[str, Any]) -> str:
        settings = {"platform": str(self.platform), "compression": str(self.options.compression),
                    "level": self.options.level, "epoch": self.options.epoch}
        return step_key([blob.diff_id for blob in layers], step, inputs, settings)

    def _probe(self, step: Step, plan: StepPlan, layers: list[LayerBlob]) -> tuple[Found | None, str, str]:
        """The caches' answer for ``step``, the step's shape, and its key ("" when not looked up).

        A step that reads file contents (a copy from the context) is looked up by its full key
        (which hashes its files) only when a cache may know its shape: otherwise it is a certain
        miss, and its files are read once, by the layer writer, which returns their digests for
        :meth:`_store`. Its shape is its key when it reads no file contents.
        """
        assert self.cache is not None
        shape = self._key(step, layers, plan.inputs(None))
        if not self.options.use_cache or (plan.reads_contents and not self.cache.knows_shape(shape)):
            return None, shape, ""
        key = self._key(step, layers, plan.inputs({})) if plan.reads_contents else shape
        return self.cache.get(key, self.workdir / "remote"), shape, key

    def _store(self, step: Step, plan: StepPlan, layers: list[LayerBlob], shape: str, blob: LayerBlob | None,
               key: str, source: str = "", digests: Mapping[str, Digest] | None = None) -> None:
        """Record a built step (``source`` "") or a hit from ``source`` in the caches."""
        assert self.cache is not None
        if plan.reads_contents and not key:
            key = self._key(step, layers, plan.inputs(digests or {}))
        self.cache.put(key or shape, blob, source)
        if plan.reads_contents and source != "local":
            self.cache.add_shape(shape)

    def run(self, steps: tuple[Step, ...], layers: list[LayerBlob], config: dict[str, Any]) -> StageResult:
        created = cfgmod.rfc3339(self.options.epoch)
        result = StageResult(list(layers), config)
        for i, step in enumerate(steps, 1):
            handler = handler_for(step)
            title = handler.describe(step)
            self.reporter.step_started(i, len(steps), title.removeprefix("pybuild "))
            with located(step.where):
                plan = handler.plan(step, self._scope(result.config))
                found, shape, key = self._probe(step, plan, result.layers) if self.cache else (None, "", "")
                if found is not None:
                    blob, source = found.hit.layer, found.source
                    self._store(step, plan, result.layers, shape, blob, key, source)
                else:
                    built = self._build(plan, result.layers)
                    blob, source = built.blob, ""
                    if self.cache is not None:
                        self._store(step, plan, result.layers, shape, blob, key, digests=built.digests)
            self.reporter.step_done(blob, cached=found is not None, source=source)
            remote = "" if self.cache is None or not self.cache.has_remotes or source == "local" else (
                "hit" if source else "miss")
            with located(step.where):
                materials = tuple(plan.materials())
            result.records.append(StepRecord(i, title, blob, self.name, source, remote, materials,
                                              handler.adds_files))
            if blob is not None:
                result.layers.append(blob)
            result.config = cfgmod.append_layer(result.config, blob.diff_id if blob else None, created, title)
        return result

    def _build(self, plan: StepPlan, layers: list[LayerBlob]) -> _Built:
        roots = {name: self._stage_root(name) for name in plan.stages}
        with self._after_step:  # an overlay's snapshots and upper directory, kept until the layer is written
            changes = plan.changes(_Lower(self, layers, roots))
            built = self.layerer.layer(changes)
        if built.blob is not None and changes.in_rootfs:
            self.workspace.applied = len(layers) + 1  # its changes are on disk already
        elif built.blob is not None:
            self.pending = built  # the tree has ``layers``; the new layer's changes wait until needed
        return built

    def _stage_root(self, name: str) -> Path:
        if self.stages is None:
            raise InputError(f"stage {name!r} is not available here")
        return self.stages.root(name)
