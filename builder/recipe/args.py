"""Build arguments: which value each ``${NAME}`` has, and substituting them into recipe strings.

Precedence, lowest first: ``builtin_args`` (what pybuild itself defines), the recipe's ``args:``,
then ``--build-arg`` (which may also define a name the recipe does not declare, as Docker does).
A recipe arg's default may use args declared before it (``IMAGE: "app:${VERSION}"``).

Only the ``${NAME}`` form is special, with the shell's ``${NAME:-default}`` (``default`` when NAME
is unset or empty) and ``${NAME:+alternative}`` (``alternative`` when it is set and not empty, else
nothing), as a Dockerfile has them, plus ``$$`` for a literal ``$``. A bare ``$HOME`` is left alone
so that shell-looking values (``PATH: $PATH:/opt/bin``) pass through; a malformed ``${`` is an error
rather than silently kept, because it is almost always a typo.

Substitution multiplies: ``A1: "${A0}${A0}"``, ``A2: "${A1}${A1}"``, ... doubles per line, so a
25-line recipe asks for gigabytes. So one substituted string is at most :data:`MAX_VALUE`
characters and one recipe's substitutions produce at most :data:`MAX_TOTAL` in all (a
:class:`Budget`); both are checked while the string is built, before the next value is added to it,
so the refused string never exists. Strings without a ``${NAME}`` are not counted: they cannot be
longer than the recipe file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from builder.errors import Location, RecipeError

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

MAX_VALUE = 1 << 20
"""Characters in one string after substitution (1 MiB of ASCII): far above any real path, label or
file content written inline, far below what hurts."""
MAX_NESTING = 8
"""``${A:-${B:-...}}`` levels: real recipes use two."""
MAX_TOTAL = 16 << 20
"""Characters produced by substitution in one recipe: bounds many references to a large value."""


class Budget:
    """What substitution may still produce in one recipe (see the module docstring)."""

    def __init__(self, total: int = MAX_TOTAL) -> None:
        self.left = total

    def spend(self, size: int, where: Location) -> None:
        """Take ``size`` characters, or refuse the string at ``where`` when the recipe's budget is gone."""
        if size > self.left:
            raise RecipeError(
                f"substituted values add up to more than {MAX_TOTAL} characters in this recipe "
                f"({MAX_TOTAL >> 20} MiB): reference large arguments fewer times",
                where,
            )
        self.left -= size


def substitute(text: str, args: Mapping[str, str], where: Location, budget: Budget | None = None) -> str:
    """``text`` with ``${NAME}`` replaced and ``$$`` turned into ``$``; errors are located at ``where``.

    A result longer than :data:`MAX_VALUE` is refused before the value that would make it so is
    added; a result that used a ``${NAME}`` is charged to ``budget``."""
    if "$" not in text:
        return text
    out: list[str] = []
    size = 0  # the length of "".join(out)
    expanded = False
    pos = 0
    while (dollar := text.find("$", pos)) >= 0:
        piece, after = text[pos:dollar], text[dollar + 1 : dollar + 2]
        if after == "$":
            piece += "$"
            pos = dollar + 2
        elif after == "{":
            end = _closing(text, dollar + 2, where)
            name, op, word = _parts(text[dollar + 2 : end])
            if not NAME.fullmatch(name):
                raise RecipeError(
                    f"bad argument reference ${{{text[dollar + 2 : end]}}}: a name is letters, digits and '_', "
                    "not starting with a digit, then optionally :-default or :+alternative "
                    "(write '$$' for a literal '$')",
                    where,
                )
            present = bool(args.get(name))
            if op == ":-":
                value = args[name] if present else substitute(word, args, where)
            elif op == ":+":
                value = substitute(word, args, where) if present else ""
            elif name not in args:
                raise RecipeError(
                    f"undefined argument ${{{name}}} (define it in args: or pass --build-arg {name}=...)", where
                )
            else:
                value = args[name]
            if size + len(piece) + len(value) > MAX_VALUE:
                raise RecipeError(
                    f"${{{name}}} makes this value longer than {MAX_VALUE} characters ({MAX_VALUE >> 20} MiB), "
                    "the limit for one substituted string",
                    where,
                )
            piece += value
            expanded = True
            pos = end + 1
        else:
            piece += "$"
            pos = dollar + 1
        out.append(piece)
        size += len(piece)
    tail = text[pos:]
    if expanded:
        if size + len(tail) > MAX_VALUE:
            raise RecipeError(
                f"this value is longer than {MAX_VALUE} characters ({MAX_VALUE >> 20} MiB) after substitution, "
                "the limit for one substituted string",
                where,
            )
        if budget is not None:
            budget.spend(size + len(tail), where)
    out.append(tail)
    return "".join(out)


def _closing(text: str, start: int, where: Location) -> int:
    """The index of the ``}`` that closes the ``${`` whose name starts at ``start`` (a ``:-`` or
    ``:+`` word may hold ``${...}`` of its own)."""
    depth, i = 1, start
    while i < len(text):
        if text.startswith("${", i):
            depth, i = depth + 1, i + 2
            if depth > MAX_NESTING:
                raise RecipeError(f"'${{...}}' nested more than {MAX_NESTING} deep", where)
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise RecipeError("unterminated '${' (write '$$' for a literal '$')", where)


def _parts(inner: str) -> tuple[str, str, str]:
    """``NAME``, ``NAME:-word`` or ``NAME:+word`` -> (name, operator or "", word)."""
    for op in (":-", ":+"):
        name, sep, word = inner.partition(op)
        if sep and NAME.fullmatch(name):
            return name, op, word
    return inner, "", ""


def resolve(
    declared: Sequence[tuple[str, str | None, Location]],
    build_args: Mapping[str, str] | None,
    builtin_args: Mapping[str, str] | None,
    budget: Budget | None = None,
) -> dict[str, str]:
    """The value of every argument.

    ``declared`` is the recipe's ``args:`` in written order as (name, raw default or None, where);
    a name declared without a default is defined only if a build arg or builtin gives it a value.
    """
    given = dict(build_args or {})
    values = dict(builtin_args or {})
    values.update(given)
    for name, default, where in declared:
        if name not in given and default is not None:
            values[name] = substitute(default, values, where, budget)
    # Written order for readers of the model: builtins, the recipe's own, then extra --build-args.
    order = [*(builtin_args or {}), *(name for name, _, _ in declared), *given]
    return {name: values[name] for name in dict.fromkeys(order) if name in values}
