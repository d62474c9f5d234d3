"""The step kinds of ``steps:`` (the recipe's and each stage's): one function and one :data:`KINDS` row each.

A new step kind is a model value (:mod:`builder.recipe.model`), a function here that reads it, its row
in :data:`KINDS` (the keys it allows and requires) and its handler in :mod:`builder.steps`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from builder.errors import RecipeError
from builder.oci.digest import Digest
from builder.recipe import values
from builder.recipe.model import (
    CopyStep,
    FetchStep,
    MkdirStep,
    RemoveStep,
    RootfsStep,
    RunStep,
    Step,
    SymlinkStep,
    WriteStep,
)
from builder.recipe.mounts import mounts
from builder.recipe.scope import Scope
from builder.recipe.yamlnode import (
    Entry,
    Map,
    Node,
    Seq,
    check_keys,
    did_you_mean,
    expect_map,
    expect_scalar,
    expect_seq,
)


def steps(s: Scope, node: Node) -> tuple[Step, ...]:
    """A ``steps:`` list."""
    return tuple(step(s, item) for item in expect_seq(node, "a list of steps").items)


def step(s: Scope, node: Node) -> Step:
    """One step: a mapping whose one kind key (``copy:``, ``run:``, ...) says how to read the rest."""
    m = expect_map(node, "a mapping such as {copy: SRC, to: DEST}")
    kinds = [key for key in m.entries if key in KINDS]
    if not kinds:  # most likely a misspelt kind: suggest one if any key is close
        known = [*KINDS, *{key for kind in KINDS.values() for key in kind.keys}]
        for entry in m.entries.values():
            if entry.key not in known and (hint := did_you_mean(entry.key, known)):
                raise RecipeError(f"unknown key {entry.key!r}{hint}", entry.key_where)
        raise RecipeError(f"a step needs one of: {', '.join(KINDS)}", m.where)
    if len(kinds) > 1:
        raise RecipeError(
            f"a step has one kind, this one has both {kinds[0]!r} and {kinds[1]!r} (make two steps)",
            m.entries[kinds[1]].key_where,
        )
    entry = m.entries[kinds[0]]
    kind = KINDS[entry.key]
    check_keys(m, kind.keys, kind.required, where=entry.key_where, also=(entry.key,))
    return kind.parse(s, m, entry)


def _rootfs(s: Scope, m: Map, kind: Entry) -> Step:
    to = m.get("to")
    return RootfsStep(
        source=values.context_path(s.text(kind.value), kind.value.where),
        to=s.image_path(to) if to is not None else "/",
        where=kind.key_where,
    )


def _copy(s: Scope, m: Map, kind: Entry) -> Step:
    stage = m.get("from")
    from_stage = s.stage_ref(stage) if stage is not None else None
    items = kind.value.items if isinstance(kind.value, Seq) else (kind.value,)
    if isinstance(kind.value, Seq) and not items:
        raise RecipeError("must name at least one source", kind.value.where)
    if from_stage:  # paths in that stage's filesystem
        sources = tuple(s.image_path(item) for item in items)
    else:
        sources = tuple(
            values.context_path(s.text(item, "a path or a list of paths"), item.where) for item in items
        )
    return CopyStep(
        sources=sources,
        to=s.image_path(m.entries["to"].value, keep_slash=True),
        owner=s.owner(m.get("owner")),
        mode=s.mode(m.get("mode")),
        exclude=s.strings(m.get("exclude")) or (),
        from_stage=from_stage,
        where=kind.key_where,
    )


def _write(s: Scope, m: Map, kind: Entry) -> Step:
    return WriteStep(
        path=s.image_path(kind.value, root_ok=False),
        content=s.text(m.entries["content"].value),
        mode=s.mode(m.get("mode")),
        owner=s.owner(m.get("owner")),
        where=kind.key_where,
    )


def _fetch(s: Scope, m: Map, kind: Entry) -> Step:
    url = s.text(kind.value, "an http:// or https:// URL")
    split = urlsplit(url)
    if split.scheme not in ("http", "https") or not split.hostname:
        raise RecipeError(f"must be an http:// or https:// URL, got {url!r}", kind.value.where)
    if split.username or split.password:
        raise RecipeError("credentials do not belong in a recipe's URL", kind.value.where)
    digest_node = m.entries["sha256"].value
    digest = s.text(digest_node, "the file's sha256 (64 hex digits)").lower().removeprefix("sha256:")
    try:
        Digest.parse(f"sha256:{digest}")  # the one rule of what a sha256 digest is
    except ValueError:
        raise RecipeError(f"must be the file's sha256, 64 hex digits, got {digest!r}", digest_node.where) from None
    return FetchStep(
        url=url,
        sha256=digest,
        to=s.image_path(m.entries["to"].value, root_ok=False, keep_slash=True),
        mode=s.mode(m.get("mode")),
        owner=s.owner(m.get("owner")),
        where=kind.key_where,
    )


def _mkdir(s: Scope, m: Map, kind: Entry) -> Step:
    return MkdirStep(
        path=s.image_path(kind.value),
        mode=s.mode(m.get("mode")),
        owner=s.owner(m.get("owner")),
        where=kind.key_where,
    )


def _symlink(s: Scope, m: Map, kind: Entry) -> Step:
    target = m.entries["target"].value
    text = s.text(target)
    if not text or "\0" in text:
        raise RecipeError("must be a non-empty path", target.where)
    if len(text.encode("utf-8", "surrogateescape")) > values.PATH_MAX:
        raise RecipeError(f"a link target is at most {values.PATH_MAX} bytes (Linux's PATH_MAX)", target.where)
    return SymlinkStep(
        path=s.image_path(kind.value, root_ok=False),
        target=text,
        owner=s.owner(m.get("owner")),
        where=kind.key_where,
    )


def _remove(s: Scope, m: Map, kind: Entry) -> Step:
    items = kind.value.items if isinstance(kind.value, Seq) else (kind.value,)
    if not items:
        raise RecipeError("must name at least one path", kind.value.where)
    return RemoveStep(tuple(s.image_path(item, root_ok=False) for item in items), kind.key_where)


def _run(s: Scope, m: Map, kind: Entry) -> Step:
    script = expect_scalar(kind.value, "a shell script (a string)")  # not substituted: the shell reads ${X}
    if not script.text.strip():
        raise RecipeError("the script is empty", script.where)
    shell_node, env, workdir, network = m.get("shell"), m.get("env"), m.get("workdir"), m.get("network")
    shell = s.strings(shell_node)
    if shell_node is not None and not shell:
        raise RecipeError('must not be empty (e.g. ["/bin/sh", "-c"])', shell_node.where)
    net = s.text(network) if network is not None else "host"
    if network is not None and net not in ("host", "none"):
        raise RecipeError(f"must be 'host' or 'none', got {net!r}", network.where)
    security_node = m.get("security")
    security = s.text(security_node) if security_node is not None else "sandbox"
    if security_node is not None and security not in ("sandbox", "insecure"):
        raise RecipeError(f"must be 'sandbox' or 'insecure', got {security!r}", security_node.where)
    return RunStep(
        script=script.text,
        shell=shell,
        env=dict(s.pairs(env, env_names=True)) if env is not None else {},
        user=s.owner(m.get("user")),
        workdir=s.image_path(workdir) if workdir is not None else None,
        network="none" if net == "none" else "host",
        mounts=mounts(s, m.get("mounts")),
        where=kind.key_where,
        security="insecure" if security == "insecure" else "sandbox",
    )


@dataclass(frozen=True, slots=True)
class Kind:
    """How one step kind is read: ``parse(scope, step mapping, kind entry)``, the other keys it allows,
    and those of them it requires."""

    parse: Callable[[Scope, Map, Entry], Step]
    keys: tuple[str, ...]
    required: tuple[str, ...] = ()


# In the order "a step needs one of: ..." lists them.
KINDS: dict[str, Kind] = {
    "rootfs": Kind(_rootfs, ("to",)),
    "copy": Kind(_copy, ("to", "owner", "mode", "exclude", "from"), ("to",)),
    "write": Kind(_write, ("content", "mode", "owner"), ("content",)),
    "fetch": Kind(_fetch, ("sha256", "to", "mode", "owner"), ("sha256", "to")),
    "mkdir": Kind(_mkdir, ("mode", "owner")),
    "symlink": Kind(_symlink, ("target", "owner"), ("target",)),
    "remove": Kind(_remove, ()),
    "run": Kind(_run, ("shell", "env", "user", "workdir", "network", "mounts", "security")),
}
