"""The ``config:`` section (of the recipe or of a stage): what the image's config says about running it."""

from __future__ import annotations

import re

from builder.errors import RecipeError
from builder.recipe.model import ConfigSpec
from builder.recipe.scope import Scope
from builder.recipe.yamlnode import Entry, Node, Scalar, check_keys, expect_map

_CONFIG_KEYS = ("env", "entrypoint", "cmd", "workdir", "user", "ports", "volumes", "labels", "stop_signal", "author",
                "shell", "healthcheck", "onbuild")
_HEALTH_KEYS = ("test", "interval", "timeout", "start_period", "start_interval", "retries")
_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?")
_PORT = re.compile(r"([0-9]{1,5})(?:/(tcp|udp|sctp))?")
_SIGNAL = re.compile(r"(?:SIG)?[A-Z][A-Z0-9]*(?:[+-][0-9]+)?|[1-9][0-9]?")


def config(s: Scope, entry: Entry) -> ConfigSpec:
    """The ``config:`` at ``entry``."""
    m = expect_map(entry.value, "a mapping (env:, entrypoint:, cmd:, ...)")
    check_keys(m, _CONFIG_KEYS)
    get = m.get
    env, labels, workdir, author = get("env"), get("labels"), get("workdir"), get("author")
    return ConfigSpec(
        env=s.pairs(env, env_names=True) if env is not None else (),
        entrypoint=_argv(s, get("entrypoint")),
        cmd=_argv(s, get("cmd")),
        workdir=s.image_path(workdir) if workdir is not None else None,
        user=s.owner(get("user")),
        ports=tuple(_port(s, p) for p in s.items(get("ports"), "a list of ports like [8080, 53/udp]")),
        volumes=tuple(s.image_path(v) for v in s.items(get("volumes"), "a list of absolute paths")),
        labels=s.pairs(labels) if labels is not None else (),
        stop_signal=_signal(s, get("stop_signal")),
        author=s.text(author) if author is not None else None,
        shell=_shell(s, get("shell")),
        healthcheck=_healthcheck(s, get("healthcheck")),
        onbuild=tuple(s.text(i, "a Dockerfile instruction") for i in s.items(
            get("onbuild"), "a list of Dockerfile instructions, e.g. [\"RUN make\"]")),
        where=entry.key_where,
    )


def _shell(s: Scope, node: Node | None) -> tuple[str, ...] | None:
    argv = _argv(s, node)
    if argv is not None and not argv:
        raise RecipeError('must name a shell, e.g. ["/bin/bash", "-e", "-c"]', node.where if node else None)
    return argv


def _healthcheck(s: Scope, node: Node | None) -> dict[str, object] | None:
    """Docker's HEALTHCHECK: ``test`` a command list, a shell string, or ``none``; durations like
    30s or 1m30s (stored in nanoseconds, as Docker's config has them); ``retries`` a count."""
    if node is None:
        return None
    m = expect_map(node, "a mapping (test:, interval:, timeout:, start_period:, start_interval:, retries:)")
    check_keys(m, _HEALTH_KEYS)
    test = m.get("test")
    if test is None:
        raise RecipeError("needs test: (a command list, a shell string, or none)", node.where)
    if isinstance(test, Scalar) and test.tag != "null":
        text = s.text(test)
        out: dict[str, object] = {"Test": ["NONE"] if text.lower() == "none" else ["CMD-SHELL", text]}
    else:
        argv = list(s.strings(test) or ())
        if not argv:
            raise RecipeError("test: must not be empty", test.where)
        out = {"Test": argv if argv[0] in ("CMD", "CMD-SHELL", "NONE") else ["CMD", *argv]}
    for key, name in (("interval", "Interval"), ("timeout", "Timeout"), ("start_period", "StartPeriod"),
                      ("start_interval", "StartInterval")):
        value = m.get(key)
        if value is not None:
            out[name] = _duration(s, value)
    retries = m.get("retries")
    if retries is not None:
        count = s.text(retries, "a number of retries")
        if not count.isdigit():
            raise RecipeError(f"must be a whole number, got {count!r}", retries.where)
        out["Retries"] = int(count)
    return out


def _duration(s: Scope, node: Node) -> int:
    text = s.text(node, "a duration like 30s, 1m30s or 500ms")
    match = _DURATION.fullmatch(text)
    if not text or not match or not any(match.groups()):
        raise RecipeError(f"must be a duration like 30s, 1m30s or 500ms, got {text!r}", node.where)
    h, m, sec, ms = (int(g or 0) for g in match.groups())
    return ((h * 3600 + m * 60 + sec) * 1000 + ms) * 1_000_000


def _argv(s: Scope, node: Node | None) -> tuple[str, ...] | None:
    if isinstance(node, Scalar) and node.tag != "null":
        raise RecipeError(
            f'must be a list of strings, e.g. ["/bin/sh", "-c", {node.text!r}] or [{node.text!r}]', node.where
        )
    return s.strings(node)


def _port(s: Scope, node: Node) -> str:
    text = s.text(node, "a port like 8080 or 53/udp")
    match = _PORT.fullmatch(text)
    if not match or not 0 < int(match[1]) < 65536:
        raise RecipeError(f"must be a port like 8080, 8080/tcp or 53/udp, got {text!r}", node.where)
    return f"{int(match[1])}/{match[2] or 'tcp'}"


def _signal(s: Scope, node: Node | None) -> str | None:
    if node is None:
        return None
    text = s.text(node)
    if not _SIGNAL.fullmatch(text):
        raise RecipeError(f"must be a signal name like SIGTERM or a number, got {text!r}", node.where)
    return text
