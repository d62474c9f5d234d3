"""The protocol every step kind implements, what a step is given, and the finishing of a file
step's change set.

A step kind is one :class:`StepHandler` (``describe`` for its history line, ``plan`` to read its
inputs once); its :class:`StepPlan` gives the cache key's inputs and, on a miss, its
:class:`Changes`. The stage loop (``builder/stage.py``) knows nothing about the kinds: it keys,
probes the cache, and writes what a plan yields. Adding a step kind is a model class, a parser,
and a handler registered in ``builder/steps/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from builder.errors import InputError
from builder.fs.tree import FsTree
from builder.fs.users import resolve_owner
from builder.layer.entry import Change, Entry, Kind, Opaque, canon
from builder.layer.order import canonical
from builder.oci.digest import Digest
from builder.oci.platform import Platform
from builder.recipe.model import ConfigSpec, Step

if TYPE_CHECKING:
    from builder.fs.overlay import OverlayRoot


class Redo:
    """Yielded, last, by a change stream that found it cannot finish in one pass (a tarball that
    lists a directory after its content): the layer is abandoned and written again from
    :attr:`Changes.redo`. Only :class:`Changes` streams may yield it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "REDO"


REDO: Final = Redo()


@dataclass
class Changes:
    """A step's layer as a stream of changes in canonical order, parents first."""

    stream: Iterator[Change | Redo]
    redo: Callable[[], Iterator[Change]] | None = None
    """The slower stream to write instead when ``stream`` yields :data:`REDO`."""
    in_rootfs: bool = False
    """The changes are already on disk in the working root filesystem (a run step's are)."""


def collect(changes: Changes) -> list[Change]:
    """Every change of ``changes`` as a list, following a :data:`REDO` as the layer writer does."""
    out: list[Change] = []
    for change in changes.stream:
        if isinstance(change, Redo):
            assert changes.redo is not None, "a stream without a redo yielded REDO"
            return list(changes.redo())
        out.append(change)
    return out


@dataclass(frozen=True)
class Services:
    """What the build gives steps beyond files: downloads, secrets, agents, the cache dir, output."""

    fetch: Callable[[str, Digest], Path] | None = None
    """A verified local copy of a URL's content with that digest, for ``fetch:`` steps."""
    secrets: Mapping[str, Path] = field(default_factory=dict)
    ssh: Mapping[str, Path] = field(default_factory=dict)
    """``--ssh ID=SOCKET``: agent sockets for ``ssh: ID`` mounts."""
    cache_dir: Path | None = None
    allow_insecure: bool = False
    """``--allow security.insecure`` was given."""
    on_output: Callable[[str], None] = lambda line: None


@dataclass(frozen=True)
class Scope:
    """What a step sees of its build and stage when it is planned (and keyed): no filesystem yet."""

    context: Path
    platform: Platform
    epoch: int
    config: Mapping[str, Any]
    """The image config built so far (Env, WorkingDir and Shell are what run steps read)."""
    spec: ConfigSpec = field(default_factory=ConfigSpec)
    """The ``config:`` of the recipe or stage the step belongs to."""
    args: Mapping[str, str] = field(default_factory=dict)
    declared: frozenset[str] = frozenset()
    """The argument names the recipe (or stage) declares: only those reach a run step's env."""
    stage_chains: Mapping[str, Sequence[Digest]] = field(default_factory=dict)
    """The diff_id chain of every stage built so far: what a step reading a stage is keyed by."""
    services: Services = field(default_factory=Services)


class Lower(Protocol):
    """The filesystem below a step, as the stage offers it: each view is made only when asked for,
    so a step that reads none of them (a cached one) costs no layer read."""

    def tree(self) -> FsTree:
        """The merged metadata of every layer below (file steps read this)."""
        ...

    def rootfs(self) -> Path:
        """A directory with every layer below applied (run steps run in it on the copy driver)."""
        ...

    def overlay(self) -> OverlayRoot | None:
        """The layers below as an overlay to mount (run steps run in it), or None where the overlay
        driver is not used (then :meth:`rootfs`)."""
        ...

    def overlay_failed(self, why: str) -> None:
        """The overlay could not be mounted: :meth:`rootfs` is asked next, and says why."""
        ...

    def note(self, text: str) -> None:
        """A progress line about the step's root filesystem (why the step runs again)."""
        ...

    def stages(self) -> Mapping[str, Path]:
        """The filesystems of the stages named by the plan's :attr:`StepPlan.stages`, made before
        the step runs."""
        ...


class StepPlan(Protocol):
    """One step whose inputs are read (once): it gives its cache key inputs and, on a miss, its layer."""

    stages: tuple[str, ...]
    """Named stages whose filesystem the step reads (a ``copy ... from:``, a ``bind`` mount)."""
    reads_contents: bool
    """The key depends on file contents: its *shape* (``inputs(None)``) is known first, contents later."""

    def inputs(self, known: Mapping[str, Digest] | None) -> dict[str, Any]:
        """What the step reads besides its own text and its parent layers, as data for its key.

        With ``known`` None and :attr:`reads_contents`, the shape only (no file read); with a
        mapping, the contents too: digests the layer writer returned (by host path), the rest
        hashed now.
        """
        ...

    def changes(self, lower: Lower) -> Changes:
        """The layer's changes on top of ``lower``."""
        ...

    def materials(self) -> list[tuple[str, Digest]]:
        """What the step read from outside the recipe, by name and content digest (for the build's
        provenance): a tarball, a downloaded file, the context files a copy read."""
        ...


S_contra = TypeVar("S_contra", bound=Step, contravariant=True)


class StepHandler(Protocol[S_contra]):
    """One step kind."""

    runs_commands: bool
    """Its steps run a command in the image (a sandbox; rootless, a full subordinate id range)."""
    adds_files: bool
    """Its layers are files brought from outside the image (a context, a tarball, the recipe, a URL):
    the SBOM lists each with its digest. A run step's are not: its packages are what it added."""

    def reads_stages(self, step: S_contra) -> tuple[str, ...]:
        """The named stages whose filesystem ``step`` reads: they are built before its stage."""
        ...

    def describe(self, step: S_contra) -> str:
        """The history ``created_by`` of a step: what it did, as written (after ${ARGS})."""
        ...

    def plan(self, step: S_contra, scope: Scope) -> StepPlan:
        ...


@dataclass
class StepContext:
    """What a file step builds its changes from: the context directory, the lower tree, the epoch."""

    context: Path
    tree: FsTree
    epoch: int
    stage_roots: Mapping[str, Path] = field(default_factory=dict)
    """The root filesystems of the named stages the step reads (``copy: ... from: STAGE``)."""
    fetch: Callable[[str, Digest], Path] | None = None

    def owner(self, spec: str | None) -> tuple[int, int]:
        """Resolve an ``owner`` through the image's own passwd/group files."""
        return resolve_owner(spec, self.tree.watched.get("etc/passwd"), self.tree.watched.get("etc/group"))

    def image_path(self, path: str) -> str:
        """Canonical image path with symlinks in its parent directories resolved (not the last part)."""
        try:
            return self.tree.resolve(canon(path), follow_last=False)
        except ValueError as exc:
            raise InputError(str(exc)) from exc

    def parent_entry(self, path: str, owner: tuple[int, int] = (0, 0)) -> Entry:
        """A missing parent is created 0755, owned by ``owner``; an existing one is re-emitted unchanged."""
        existing = self.tree.get(path)
        if existing is not None:
            if existing.kind is not Kind.DIR:
                raise InputError(f"'/{path}' exists in the image and is not a directory")
            return existing
        return Entry(path, Kind.DIR, 0o755, owner[0], owner[1], mtime=self.epoch)

    def stage_root(self, name: str) -> Path:
        root = self.stage_roots.get(name)
        if root is None:
            raise InputError(f"stage {name!r} is not available here")
        return root


def file_context(scope: Scope, lower: Lower) -> StepContext:
    """The context of a step that reads the lower tree (every kind but ``run``)."""
    return StepContext(context=scope.context, tree=lower.tree(), epoch=scope.epoch, stage_roots=lower.stages(),
                       fetch=scope.services.fetch)


class FileHandler:
    """What most step kinds share: no command, no stage read (a kind that reads one overrides)."""

    runs_commands = False
    adds_files = False

    def reads_stages(self, step: Any) -> tuple[str, ...]:
        return ()


@dataclass
class TreePlan:
    """The plan of a step that reads only its own text and the lower tree (write, mkdir, ...)."""

    scope: Scope
    make: Callable[[StepContext], Iterable[Change]]
    stages: tuple[str, ...] = ()
    reads_contents: bool = False
    read: tuple[tuple[str, Digest], ...] = ()
    """The step's materials (a ``fetch:`` URL and the sha256 the recipe gives it)."""

    def inputs(self, known: Mapping[str, Digest] | None) -> dict[str, Any]:
        return {}

    def materials(self) -> list[tuple[str, Digest]]:
        return list(self.read)

    def changes(self, lower: Lower) -> Changes:
        return Changes(iter(self.make(file_context(self.scope, lower))))


def finish(changes: Iterable[Change], ctx: StepContext, owner: tuple[int, int] = (0, 0)) -> list[Change]:
    """Add the parent directories every change needs (missing ones owned by ``owner``: an owned
    copy's, as Docker's, Kaniko's and Buildah's ``COPY --chown`` create them), then order canonically."""
    out = {(isinstance(c, Opaque), c.path): c for c in changes}
    have = {path for _, path in out}
    for _, path in list(out):
        # climb only until an ancestor that is there: its own ancestors are seen to when it is
        parent = path.rpartition("/")[0]
        while parent and parent not in have:
            have.add(parent)
            out[(False, parent)] = ctx.parent_entry(parent, owner)
            parent = parent.rpartition("/")[0]
    return canonical(out.values())
