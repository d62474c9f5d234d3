"""What every step handler gets, and the shared finishing of a file step's change set."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from builder.errors import InputError
from builder.fs.tree import FsTree
from builder.fs.users import resolve_owner
from builder.layer.entry import Change, Entry, Kind, Opaque, canon
from builder.layer.order import canonical
from builder.oci.digest import Digest


class RestartLayer(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by a change stream that must be produced again another way: write the layer anew
    from ``changes`` (nothing of the abandoned attempt is kept)."""

    def __init__(self, changes: Iterator[Change]) -> None:
        super().__init__("restart the layer")
        self.changes = changes


@dataclass
class StepContext:
    """The inputs of one step: the context directory, the lower filesystem and the epoch."""

    context: Path
    tree: FsTree
    epoch: int
    stage_root: Callable[[str], Path] | None = None
    """The root filesystem of a named stage, for ``copy: ... from: STAGE``."""
    fetch: Callable[[str, Digest], Path] | None = None
    """A verified local copy of a URL's content with that digest, for ``fetch:`` steps."""

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
