"""Strict YAML for recipes: pyyaml nodes turned into a small tree that remembers where each value was written.

Why not ``yaml.safe_load``: it forgets line numbers, silently keeps the last of two duplicate keys, and
turns ``0755`` into 493, ``1.0`` into a float and ``1:0`` into 60. Composing (parsing without
constructing) keeps every scalar's text as written plus its position, so an error can name the line and
the parser can read ``mode``/``tag``/``owner`` from the text the user typed.

Every node carries a :class:`Location` (file, 1-based line, key path such as ``steps[3].copy``); mapping
entries also carry the location of the key itself, which is what "unknown key" errors and step locations
point at.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import yaml

from builder.errors import Location, RecipeError

_T = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(_T + t for t in ("str", "int", "float", "bool", "null", "timestamp", "value"))
_MERGE = _T + "merge"

# A recipe is a few levels deep; these bounds turn recursive aliases and alias "bombs" (a few lines
# that expand to millions of nodes) into a clear error instead of a hang or a RecursionError.
_MAX_DEPTH = 40
_MAX_NODES = 200_000


@dataclass(frozen=True, slots=True)
class Scalar:
    """A scalar as written: ``text`` with quotes/escapes resolved but no type conversion."""

    text: str
    tag: str  # the YAML 1.1 type it would load as: str, int, float, bool, null, timestamp, value
    where: Location


@dataclass(frozen=True, slots=True)
class Seq:
    """A YAML sequence."""

    items: tuple[Node, ...]
    where: Location


@dataclass(frozen=True, slots=True)
class Entry:
    """One ``key: value`` of a mapping; ``key_where`` is the key's own line and the value's key path."""

    key: str
    key_where: Location
    value: Node


@dataclass(frozen=True, slots=True)
class Map:
    """A YAML mapping with string keys, in written order."""

    entries: dict[str, Entry]
    where: Location

    def get(self, key: str) -> Node | None:
        """The value under ``key``, or None when the key is absent."""
        entry = self.entries.get(key)
        return entry.value if entry else None


Node = Scalar | Seq | Map


def compose(text: str, file: str) -> Node:
    """Parse one YAML document into a located tree; every problem is a RecipeError."""
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # already reads (and may refuse) the first characters
        if not loader.check_node():
            raise RecipeError("the recipe is empty (a recipe starts with 'version: 1')", Location(file, 1, ""))
        root = loader.get_node()
        second = loader.get_node() if loader.check_node() else None
        if second is not None:
            line = second.start_mark.line + 1
            raise RecipeError("more than one YAML document (remove the second '---')", Location(file, line, ""))
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, file) from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        raise RecipeError(
            f"invalid YAML: character {ord(char):#06x} is not allowed", Location(file, line, "")
        ) from None
    except yaml.YAMLError as exc:  # pragma: no cover - every pyyaml error is one of the above
        raise RecipeError(f"invalid YAML: {exc}", Location(file, None, "")) from None
    except RecursionError:
        raise RecipeError("invalid YAML: nested too deeply", Location(file, None, "")) from None
    finally:
        if loader is not None:
            loader.dispose()
    if root is None:  # pragma: no cover - check_node() said there is a document
        raise RecipeError("the recipe is empty", Location(file, 1, ""))
    return _Tree(file).node(root, "", 1, 0)


def _syntax_error(exc: yaml.MarkedYAMLError, file: str) -> RecipeError:
    """The pyyaml message without its multi-line mark dumps, at the problem's line."""
    mark = exc.problem_mark or exc.context_mark
    message = f"invalid YAML: {exc.problem or exc.context or 'syntax error'}"
    if exc.context and exc.problem and exc.context_mark is not None:
        message += f" ({exc.context} on line {exc.context_mark.line + 1})"
    return RecipeError(message, Location(file, mark.line + 1 if mark else None, ""))


class _Tree:
    """Converts composed pyyaml nodes, counting them so alias expansion stays bounded."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.count = 0

    def node(self, n: yaml.Node, keypath: str, key_line: int | None, depth: int) -> Node:
        where = Location(self.file, n.start_mark.line + 1, keypath)
        self.count += 1
        if depth > _MAX_DEPTH or self.count > _MAX_NODES:
            raise RecipeError("nested too deeply or too large (a recursive YAML alias?)", where)
        if isinstance(n, yaml.ScalarNode):
            if n.tag not in _SCALAR_TAGS:
                raise RecipeError(f"unsupported YAML tag {_short_tag(n.tag)!r}", where)
            if n.value == "" and n.style is None and key_line is not None:
                # An empty value's mark is where the next token starts, often the next line.
                where = Location(self.file, key_line, keypath)
            return Scalar(n.value, n.tag.removeprefix(_T), where)
        if isinstance(n, yaml.SequenceNode) and n.tag == _T + "seq":
            items = (self.node(item, f"{keypath}[{i}]", None, depth + 1) for i, item in enumerate(n.value))
            return Seq(tuple(items), where)
        if isinstance(n, yaml.MappingNode) and n.tag == _T + "map":
            return Map(self.entries(n, keypath, depth), where)
        raise RecipeError(f"unsupported YAML tag {_short_tag(n.tag)!r}", where)

    def entries(self, n: yaml.MappingNode, keypath: str, depth: int) -> dict[str, Entry]:
        """Keys in written order; ``<<`` merge keys fill in keys not written explicitly."""
        own: dict[str, Entry] = {}
        merged: dict[str, Entry] = {}
        for key_node, value_node in n.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE:
                for source in value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]:
                    if not isinstance(source, yaml.MappingNode):
                        raise RecipeError(
                            "'<<' must merge a mapping or a list of mappings", Location(self.file, line, keypath)
                        )
                    for key, entry in self.entries(source, keypath, depth + 1).items():
                        merged.setdefault(key, entry)
                continue
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _T + "str":
                raise RecipeError(_bad_key(key_node), Location(self.file, line, keypath))
            key = key_node.value
            child = f"{keypath}.{key}" if keypath else key
            if key in own:
                first = own[key].key_where.line
                raise RecipeError(
                    f"duplicate key {key!r} (first written on line {first})", Location(self.file, line, child)
                )
            value = self.node(value_node, child, line, depth + 1)
            own[key] = Entry(key, Location(self.file, line, child), value)
        return own | {key: entry for key, entry in merged.items() if key not in own}


def _bad_key(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode):
        return f"keys must be strings, got {node.value!r} ({_KINDS.get(node.tag, 'a value')}); quote it if you mean the text"
    return "keys must be strings, got " + ("a list" if isinstance(node, yaml.SequenceNode) else "a mapping")


def _short_tag(tag: str) -> str:
    return "!!" + tag.removeprefix(_T) if tag.startswith(_T) else tag


_KINDS = {
    _T + "null": "nothing (null)",
    _T + "int": "a number",
    _T + "float": "a number",
    _T + "bool": "a boolean",
    _T + "timestamp": "a date",
}


def describe(node: Node) -> str:
    """What a node is, in the words of a "must be X, got Y" message."""
    if isinstance(node, Map):
        return "a mapping"
    if isinstance(node, Seq):
        return "a list"
    return _KINDS.get(_T + node.tag, "a string")


def wrong_type(node: Node, expected: str) -> RecipeError:
    """``must be EXPECTED, got WHAT`` at the node."""
    return RecipeError(f"must be {expected}, got {describe(node)}", node.where)


def expect_map(node: Node, expected: str = "a mapping") -> Map:
    """The node as a mapping, else a located type error."""
    if not isinstance(node, Map):
        raise wrong_type(node, expected)
    return node


def expect_seq(node: Node, expected: str = "a list") -> Seq:
    """The node as a list, else a located type error."""
    if not isinstance(node, Seq):
        raise wrong_type(node, expected)
    return node


def expect_scalar(node: Node, expected: str = "a string") -> Scalar:
    """The node as a non-null scalar (of any YAML type: its text is what counts)."""
    if not isinstance(node, Scalar) or node.tag == "null":
        raise wrong_type(node, expected)
    return node


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for a close match, else ""."""
    options = list(choices)
    lowered = {c.lower(): c for c in options}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[close[0]]!r}?)" if close else ""


def check_keys(
    m: Map,
    allowed: Collection[str],
    required: Iterable[str] = (),
    *,
    where: Location | None = None,
    also: Collection[str] = (),
) -> None:
    """Refuse unknown keys (with a suggestion) and missing required ones.

    ``also`` are keys accepted but not listed in the hint (a step's kind key); ``where`` is the place
    a missing key is reported at (default: the mapping itself).
    """
    for key, entry in m.entries.items():
        if key in allowed or key in also:
            continue
        hint = did_you_mean(key, [*also, *allowed])
        if not hint:
            hint = f" (expected one of: {', '.join(allowed)})" if allowed else " (no other keys are allowed here)"
        raise RecipeError(f"unknown key {key!r}{hint}", entry.key_where)
    for key in required:
        if key not in m.entries:
            raise RecipeError(f"missing required key {key!r}", where or m.where)
