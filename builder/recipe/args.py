"""Build arguments: which value each ``${NAME}`` has, and substituting them into recipe strings.

Precedence, lowest first: ``builtin_args`` (what pybuild itself defines), the recipe's ``args:``,
then ``--build-arg`` (which may also define a name the recipe does not declare, as Docker does).
A recipe arg's default may use args declared before it (``IMAGE: "app:${VERSION}"``).

Only the ``${NAME}`` form is special, plus ``$$`` for a literal ``$``. A bare ``$HOME`` is left alone
so that shell-looking values (``PATH: $PATH:/opt/bin``) pass through; a malformed ``${`` is an error
rather than silently kept, because it is almost always a typo.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from builder.errors import Location, RecipeError

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def substitute(text: str, args: Mapping[str, str], where: Location) -> str:
    """``text`` with ``${NAME}`` replaced and ``$$`` turned into ``$``; errors are located at ``where``."""
    if "$" not in text:
        return text
    out: list[str] = []
    pos = 0
    while (dollar := text.find("$", pos)) >= 0:
        out.append(text[pos:dollar])
        after = text[dollar + 1 : dollar + 2]
        if after == "$":
            out.append("$")
            pos = dollar + 2
        elif after == "{":
            end = text.find("}", dollar + 2)
            if end < 0:
                raise RecipeError("unterminated '${' (write '$$' for a literal '$')", where)
            name = text[dollar + 2 : end]
            if not NAME.fullmatch(name):
                raise RecipeError(
                    f"bad argument reference ${{{name}}}: a name is letters, digits and '_', "
                    "not starting with a digit (write '$$' for a literal '$')",
                    where,
                )
            if name not in args:
                raise RecipeError(
                    f"undefined argument ${{{name}}} (define it in args: or pass --build-arg {name}=...)", where
                )
            out.append(args[name])
            pos = end + 1
        else:
            out.append("$")
            pos = dollar + 1
    out.append(text[pos:])
    return "".join(out)


def resolve(
    declared: Sequence[tuple[str, str | None, Location]],
    build_args: Mapping[str, str] | None,
    builtin_args: Mapping[str, str] | None,
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
            values[name] = substitute(default, values, where)
    # Written order for readers of the model: builtins, the recipe's own, then extra --build-args.
    order = [*(builtin_args or {}), *(name for name, _, _ in declared), *given]
    return {name: values[name] for name in dict.fromkeys(order) if name in values}
