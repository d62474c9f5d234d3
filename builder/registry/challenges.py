"""What a registry's 401 asks for, and what a token is asked for: challenges and scopes.

A refused request carries ``WWW-Authenticate``: one or more challenges, each a scheme (``Basic``,
``Bearer``) with parameters (RFC 9110 §11.6.1); a Bearer challenge names the token ``realm``, the
``service`` and the ``scope`` the request needs. A scope is ``type:name:actions``
(``repository:org/app:pull,push``); a token is asked for a set of them and is good for any
request whose scopes its own cover. :class:`~builder.registry.auth.Authenticator` does the
asking; this module only reads and combines the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_ACTION_ORDER = {"pull": 0, "push": 1}


def scope_for(repository: str, actions: str) -> str:
    """The token scope for ``actions`` (``"pull"``, ``"pull,push"``) on a repository."""
    return f"repository:{repository}:{actions}"


def parse_challenges(value: str) -> list[tuple[str, dict[str, str]]]:
    """``WWW-Authenticate`` as (lowercased scheme, params) pairs, in order (RFC 9110 §11.6.1).

    Raises ValueError on text that is not a challenge list.
    """
    challenges: list[tuple[str, dict[str, str]]] = []
    pos, end = 0, len(value)
    while True:
        while pos < end and (value[pos].isspace() or value[pos] == ","):
            pos += 1
        if pos >= end:
            return challenges
        scheme = _AUTH_TOKEN.match(value, pos)
        if scheme is None:
            raise ValueError("malformed challenge")
        pos = scheme.end()
        params: dict[str, str] = {}
        while (param := _PARAM.match(value, pos)) is not None:
            raw = param.group(2)
            if raw.startswith('"'):
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
            params[param.group(1).lower()] = raw
            pos = param.end()
        challenges.append((scheme.group(0).lower(), params))


_AUTH_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_PARAM = re.compile(r"""\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,"]*)\s*(?:,|\Z)""")


def merge_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """One scope per resource with the union of its actions, in order of first mention.

    Order matters: some registries read only the first ``scope`` parameter, so the challenge's own
    scope (what the refused request needs) is passed first.
    """
    merged: dict[str, list[str]] = {}
    for scope in scopes:
        for part in scope.split():
            parsed = _parse(part)
            if parsed is None:  # not type:name:actions; keep it as it is
                merged.setdefault(part, [])
                continue
            resource, actions = parsed
            known = merged.setdefault(resource, [])
            known.extend(a for a in actions if a and a not in known)
    return tuple(
        f"{r}:{','.join(sorted(a, key=lambda x: (_ACTION_ORDER.get(x, 2), x)))}" if a else r for r, a in merged.items()
    )


def grants(scopes: Iterable[str]) -> dict[str, frozenset[str]]:
    """Each scope's resource (``repository:org/app``) and its actions; a scope of another shape stands alone."""
    out: dict[str, frozenset[str]] = {}
    for scope in scopes:
        parsed = _parse(scope)
        if parsed is None:
            out[scope] = frozenset()
        else:
            out[parsed[0]] = frozenset(parsed[1])
    return out


def _parse(scope: str) -> tuple[str, list[str]] | None:
    """(resource, actions) of a ``type:name:actions`` scope; None for a scope of another shape."""
    resource, sep, actions = scope.rpartition(":")
    return (resource, actions.split(",")) if sep and ":" in resource else None
