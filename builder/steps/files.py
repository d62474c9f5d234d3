"""The small file steps: write, fetch, mkdir, symlink, remove; each reads only its own text (and,
for fetch, a download verified by the digest the recipe gives) and the lower tree."""

from __future__ import annotations

import io
import os
from urllib.parse import urlsplit

from builder.errors import InputError
from builder.layer.entry import Change, Entry, Kind, Whiteout
from builder.layer.hostfile import HostFile
from builder.oci.digest import Digest
from builder.recipe.model import FetchStep, MkdirStep, RemoveStep, SymlinkStep, WriteStep
from builder.steps.base import FileHandler, Scope, StepContext, StepPlan, TreePlan, finish


def _target(ctx: StepContext, path: str) -> str:
    resolved = ctx.image_path(path)
    if not resolved:
        raise InputError("cannot replace the image root '/'")
    return resolved


def write_changes(step: WriteStep, ctx: StepContext) -> list[Change]:
    path = _target(ctx, step.path)
    if ctx.tree.is_dir(path):
        raise InputError(f"'{step.path}' is a directory in the image")
    data = step.content.encode()
    uid, gid = ctx.owner(step.owner)
    mode = 0o644 if step.mode is None else step.mode
    entry = Entry(path, Kind.FILE, mode, uid, gid, len(data), ctx.epoch, content=lambda: io.BytesIO(data))
    return finish([entry], ctx)


def mkdir_changes(step: MkdirStep, ctx: StepContext) -> list[Change]:
    path = ctx.image_path(step.path)
    if not path:
        raise InputError("'/' always exists")
    uid, gid = ctx.owner(step.owner)
    mode = 0o755 if step.mode is None else step.mode
    return finish([Entry(path, Kind.DIR, mode, uid, gid, mtime=ctx.epoch)], ctx)


def symlink_changes(step: SymlinkStep, ctx: StepContext) -> list[Change]:
    path = _target(ctx, step.path)
    if ctx.tree.is_dir(path):
        raise InputError(f"'{step.path}' is a directory in the image")
    uid, gid = ctx.owner(step.owner)
    return finish([Entry(path, Kind.SYMLINK, 0o777, uid, gid, mtime=ctx.epoch, link=step.target)], ctx)


def remove_changes(step: RemoveStep, ctx: StepContext) -> list[Change]:
    """Whiteouts for the listed paths that exist; only the topmost of nested ones.

    A path that does not exist is not an error (``rm -f`` semantics): recipes often remove
    caches that only some base images have. A step that removes nothing adds no layer.
    """
    targets = sorted({_target(ctx, p) for p in step.paths})
    kept: list[str] = []
    for path in targets:
        if ctx.tree.get(path) is None:
            continue
        if any(path.startswith(k + "/") for k in kept):
            continue
        kept.append(path)
    if not kept:
        return []
    return finish([Whiteout(p) for p in kept], ctx)


def fetch_changes(step: FetchStep, ctx: StepContext) -> list[Change]:
    """The downloaded file (see builder/fetch.py), 0600 unless ``mode:`` says (as Docker's ADD of a
    URL); into a directory ``to:`` under the URL's last path component."""
    if ctx.fetch is None:
        raise InputError("fetch steps need a download function")
    host = ctx.fetch(step.url, Digest("sha256", step.sha256))
    path = _target(ctx, step.to)
    if step.to.endswith("/") or ctx.tree.is_dir(path):
        name = urlsplit(step.url).path.rstrip("/").rpartition("/")[2]
        if not name or name in (".", ".."):
            raise InputError(f"cannot name a file after {step.url!r}: give to: a file name")
        path = f"{path}/{name}"
    uid, gid = ctx.owner(step.owner)
    mode = 0o600 if step.mode is None else step.mode
    size = os.stat(host).st_size
    entry = Entry(path, Kind.FILE, mode, uid, gid, size, ctx.epoch, content=HostFile(str(host)))
    return finish([entry], ctx, (uid, gid) if step.owner is not None else (0, 0))


class WriteHandler(FileHandler):
    adds_files = True

    def describe(self, step: WriteStep) -> str:
        return f"pybuild write {step.path} ({len(step.content.encode())} bytes)"

    def plan(self, step: WriteStep, scope: Scope) -> StepPlan:
        return TreePlan(scope, lambda ctx: write_changes(step, ctx))


class FetchHandler(FileHandler):
    """Keyed by the URL and digest of its text: the digest decides every byte, so no download is
    needed to probe the cache."""

    adds_files = True

    def describe(self, step: FetchStep) -> str:
        return f"pybuild fetch {step.url} sha256:{step.sha256} {step.to}"

    def plan(self, step: FetchStep, scope: Scope) -> StepPlan:
        return TreePlan(scope, lambda ctx: fetch_changes(step, ctx), read=((step.url, Digest("sha256", step.sha256)),))


class MkdirHandler(FileHandler):
    def describe(self, step: MkdirStep) -> str:
        return f"pybuild mkdir {step.path}"

    def plan(self, step: MkdirStep, scope: Scope) -> StepPlan:
        return TreePlan(scope, lambda ctx: mkdir_changes(step, ctx))


class SymlinkHandler(FileHandler):
    def describe(self, step: SymlinkStep) -> str:
        return f"pybuild symlink {step.path} -> {step.target}"

    def plan(self, step: SymlinkStep, scope: Scope) -> StepPlan:
        return TreePlan(scope, lambda ctx: symlink_changes(step, ctx))


class RemoveHandler(FileHandler):
    def describe(self, step: RemoveStep) -> str:
        return f"pybuild remove {' '.join(step.paths)}"

    def plan(self, step: RemoveStep, scope: Scope) -> StepPlan:
        return TreePlan(scope, lambda ctx: remove_changes(step, ctx))
