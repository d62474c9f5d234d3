"""Recipe file -> checked model values (:mod:`builder.recipe.model`): the file, its top-level keys and its stages.

Parsing is strict, as apko's ``KnownFields(true)`` is: an unknown key, a wrong type or a value of the
wrong shape is a :class:`RecipeError` naming the file, the line and the key path, so a typo fails the
build before any work is done instead of being silently ignored. What only the build can know (does a
source exist, does a user exist in the image) is left to the build, which still has every Location.

The file is read and composed once (:func:`read_recipe`); :func:`recipe_for` then substitutes and
checks it for one set of argument values, so a build for several platforms (each with its own
``TARGET*`` built-ins) composes the YAML once. The sections have their own modules: step kinds in
:mod:`builder.recipe.steps`, ``config:`` in :mod:`builder.recipe.config`, value rules in
:mod:`builder.recipe.values`, reading through ``${ARGS}`` in :mod:`builder.recipe.scope`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from builder.errors import InputError, Location, RecipeError
from builder.oci.platform import Platform
from builder.oci.reference import Reference
from builder.recipe import args as argsmod
from builder.recipe.config import config
from builder.recipe.model import BaseKind, BaseRef, ConfigSpec, Recipe, Stage
from builder.recipe.scope import Scope, StageGraph
from builder.recipe.steps import steps
from builder.recipe.yamlnode import (
    Entry,
    Map,
    Node,
    Scalar,
    check_keys,
    compose,
    describe,
    did_you_mean,
    expect_map,
    expect_scalar,
    expect_seq,
)

_TOP_KEYS = ("version", "from", "platform", "platforms", "tag", "args", "stages", "steps", "config", "annotations")
_STAGE_KEYS = ("from", "steps", "config", "args", "platform")
_STAGE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_PLATFORM_PART = re.compile(r"[a-z0-9_.-]+")

Declared = list[tuple[str, str | None, Location]]


@dataclass(frozen=True, slots=True)
class RecipeSource:
    """A recipe file read and composed, before any ``${ARGS}``: what :func:`recipe_for` checks."""

    path: Path
    root: Map


def load_recipe(
    path: Path,
    build_args: Mapping[str, str] | None = None,
    builtin_args: Mapping[str, str] | None = None,
) -> Recipe:
    """Read, substitute and check the recipe at ``path`` (:func:`read_recipe`, then :func:`recipe_for`)."""
    return recipe_for(read_recipe(path), build_args, builtin_args)


def read_recipe(path: Path) -> RecipeSource:
    """Read and compose the recipe at ``path``.

    Raises InputError when the file cannot be read and RecipeError when it is not a YAML mapping;
    errors are located with the path as given (``str(path)``).
    """
    file = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the recipe: {exc.strerror or exc}", Location(file, None, "")) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RecipeError("the recipe is not UTF-8 text", Location(file, line, "")) from None
    root = compose(text, file)
    if not isinstance(root, Map):
        raise RecipeError(f"the recipe must be a mapping (version: 1, steps: ...), got {describe(root)}", root.where)
    return RecipeSource(path, root)


def recipe_for(
    source: RecipeSource,
    build_args: Mapping[str, str] | None = None,
    builtin_args: Mapping[str, str] | None = None,
) -> Recipe:
    """The recipe with these argument values substituted, every value checked; RecipeError if wrong."""
    root, file = source.root, str(source.path)
    check_keys(root, _TOP_KEYS, ("version",))
    _version(root.entries["version"].value)
    budget = argsmod.Budget()  # what ${ARGS} may produce in this recipe
    declared = _declared_args(root.get("args"))
    args = argsmod.resolve(declared, build_args, builtin_args, budget)
    names = frozenset(name for name, _, _ in declared)
    stages_node = root.get("stages")
    stages_map = expect_map(stages_node, "a mapping of stage names") if stages_node is not None else None
    graph = StageGraph(_stage_names(stages_map) if stages_map else ())
    s = Scope(args, budget, graph)
    stages: dict[str, Stage] = {}
    for entry in stages_map.entries.values() if stages_map else ():
        stages[entry.key] = _stage(s, entry, build_args or {}, names, file)
    graph.check_cycles()
    base = root.get("from")
    steps_node = root.get("steps")
    config_entry = root.entries.get("config")
    annotations = root.get("annotations")
    return Recipe(
        path=source.path,
        version=1,
        base=_base(s, base) if base is not None else BaseRef("scratch", "", None, Location(file, None, "from")),
        platforms=_platforms(s, root),
        tag=_tag(s, root.get("tag")),
        args=s.args,
        stages=stages,
        steps=steps(s, steps_node) if steps_node is not None else (),
        config=config(s, config_entry) if config_entry is not None else ConfigSpec(),
        annotations=dict(s.pairs(annotations)) if annotations is not None else {},
        declared_args=names,
    )


def _version(node: Node) -> None:
    value = expect_scalar(node, "the number 1")
    if value.tag != "int":
        raise RecipeError(f"must be the number 1, got {describe(value)} {value.text!r}", node.where)
    if value.text.strip() not in ("1", "+1"):
        raise RecipeError(f"unsupported recipe version {value.text!r} (this pybuild reads version: 1)", node.where)


def _declared_args(node: Node | None) -> Declared:
    """An ``args:`` as written, (name, default, where); a null value declares a name without a default."""
    if node is None:
        return []
    declared: Declared = []
    for entry in expect_map(node, "a mapping of argument names to values").entries.values():
        if not argsmod.NAME.fullmatch(entry.key):
            raise RecipeError(
                f"bad argument name {entry.key!r}: letters, digits and '_', not starting with a digit",
                entry.key_where,
            )
        value = entry.value
        if isinstance(value, Scalar) and value.tag == "null":
            declared.append((entry.key, None, entry.key_where))
        else:
            declared.append((entry.key, expect_scalar(value).text, value.where))
    return declared


def _tag(s: Scope, node: Node | None) -> str | None:
    if node is None:
        return None
    tag = s.text(node)
    if not tag or any(c.isspace() for c in tag):
        raise RecipeError(f"must be a non-empty name without spaces, got {tag!r}", node.where)
    return tag


def _platforms(s: Scope, root: Map) -> tuple[Platform, ...]:
    one, many = root.entries.get("platform"), root.entries.get("platforms")
    if one and many:
        raise RecipeError("use either platform: or platforms:, not both", many.key_where)
    if one:
        return (_platform(s, one.value),)
    if not many:
        return ()
    seq = expect_seq(many.value, "a list of platforms like [linux/amd64, linux/arm64]")
    if not seq.items:
        raise RecipeError("must list at least one platform", seq.where)
    found: list[Platform] = []
    for item in seq.items:
        platform = _platform(s, item)
        if platform in found:
            raise RecipeError(f"duplicate platform '{platform}'", item.where)
        found.append(platform)
    return tuple(found)


def _platform(s: Scope, node: Node) -> Platform:
    text = s.text(node)
    if not all(_PLATFORM_PART.fullmatch(p) for p in text.split("/")):
        raise RecipeError(
            f"platform must be lowercase os/arch[/variant] like linux/amd64, got {text!r}", node.where
        )
    try:
        return Platform.parse(text)
    except ValueError as exc:
        raise RecipeError(str(exc), node.where) from None


# -- stages and bases -----------------------------------------------------------------------


def _stage_names(stages: Map) -> tuple[str, ...]:
    for name, entry in stages.entries.items():
        if not _STAGE_NAME.fullmatch(name):
            raise RecipeError(
                f"bad stage name {name!r}: lowercase letters, digits, '_', '.' and '-', "
                "starting with a letter or digit",
                entry.key_where,
            )
        if name == "scratch":
            raise RecipeError(
                "'scratch' is not a stage name: 'from: scratch' means the empty image", entry.key_where
            )
    return tuple(stages.entries)


def _stage(outer: Scope, entry: Entry, build_args: Mapping[str, str], recipe_declared: frozenset[str],
           file: str) -> Stage:
    body = expect_map(entry.value, "a mapping with from: and steps:")
    check_keys(body, _STAGE_KEYS)
    base, steps_node = body.get("from"), body.get("steps")
    where = Location(file, entry.key_where.line, f"{entry.key_where.keypath}.from")
    declared = _declared_args(body.get("args"))  # the recipe's args, then the stage's own over them
    args = argsmod.resolve(declared, build_args, outer.args, outer.budget) if declared else outer.args
    s = outer.within(entry.key, args)
    config_entry = body.entries.get("config")
    return Stage(
        name=entry.key,
        base=_base(s, base) if base is not None else BaseRef("scratch", "", None, where),
        steps=steps(s, steps_node) if steps_node is not None else (),
        where=entry.key_where,
        config=config(s, config_entry) if config_entry is not None else ConfigSpec(),
        args=s.args,
        declared_args=recipe_declared | {name for name, _, _ in declared},
        platform=_platform(s, body.entries["platform"].value) if "platform" in body.entries else None,
    )


def _base(s: Scope, node: Node) -> BaseRef:
    """``from:``: scratch, a stage, an image on disk (oci:, oci-archive:, docker-archive:) or a registry."""
    text = s.text(node)
    where = node.where
    if text == "scratch":
        return BaseRef("scratch", "", None, where)
    if text in s.graph.names:
        s.use_stage(text, where)
        return BaseRef("stage", text, None, where)
    kinds: tuple[BaseKind, ...] = ("oci", "oci-archive", "docker-archive")
    for kind in kinds:
        if text.startswith(kind + ":"):
            rest, tag = text[len(kind) + 1 :], None
            head, colon, tail = rest.rpartition(":")
            if kind != "docker-archive" and colon and "/" not in tail:
                rest, tag = head, tail
                if not tag:
                    raise RecipeError(f"empty tag after ':' in {text!r}", where)
            if not rest or "\0" in rest:
                raise RecipeError(f"{kind}: needs a path, got {text!r}", where)
            # a base image is not a context source: any path (absolute, or relative to the
            # context, even outside it) may name it, as with skopeo and buildah
            return BaseRef(kind, rest, tag, where)
    try:
        Reference.parse(text)  # the grammar the pull uses, so a base it would refuse fails here
    except ValueError:
        pass  # the error below names every kind of base
    else:
        return BaseRef("registry", text, None, where)
    raise RecipeError(
        f"not a valid base {text!r}: expected scratch, a stage name, oci:PATH[:TAG], oci-archive:FILE[:TAG], "
        "docker-archive:FILE or an image reference like alpine:3.20" + did_you_mean(text, s.graph.names),
        where,
    )
