"""A ``run`` step's ``mounts:``: cache, tmpfs, bind (from the context or a stage), secret and ssh."""

from __future__ import annotations

import re

from builder.errors import RecipeError
from builder.recipe.model import Mount
from builder.recipe.scope import Scope
from builder.recipe.yamlnode import Node, check_keys, expect_map, expect_seq

_SECRET_ID = re.compile(r"[A-Za-z0-9_.-]+")
_KINDS = "cache: PATH, secret: ID, tmpfs: PATH, bind: {source: PATH, target: PATH} or ssh: ID"


def mounts(s: Scope, node: Node | None) -> tuple[Mount, ...]:
    """The mounts in written order; two of the same kind and value, or two ssh:, are refused."""
    if node is None:
        return ()
    found: list[Mount] = []
    for item in expect_seq(node, "a list of mounts like [cache: /var/cache/apt, secret: ID]").items:
        m = expect_map(item, f"a mapping with one key: {_KINDS}")
        check_keys(m, ("cache", "secret", "tmpfs", "bind", "ssh"))
        if len(m.entries) != 1:
            raise RecipeError(f"a mount has exactly one key: {_KINDS}", m.where)
        entry = next(iter(m.entries.values()))
        if entry.key in ("cache", "tmpfs"):
            mount = Mount("cache" if entry.key == "cache" else "tmpfs", s.image_path(entry.value, root_ok=False),
                          entry.key_where)
        elif entry.key == "bind":
            b = expect_map(entry.value, "a mapping: {source: PATH in the context, target: PATH in the image}")
            check_keys(b, ("source", "target", "from"))
            source, target, stage = b.get("source"), b.get("target"), b.get("from")
            if source is None or target is None:
                raise RecipeError("a bind mount needs source: (in the context) and target: (in the image)",
                                  b.where)
            from_stage = s.stage_ref(stage) if stage is not None else None
            if from_stage is not None:
                rel = s.image_path(source)
            else:
                rel = s.text(source, "a path in the build context")
                if not rel or rel.startswith("/") or ".." in rel.split("/") or "\0" in rel:
                    raise RecipeError(f"must be a relative path inside the build context, got {rel!r}",
                                      source.where)
            mount = Mount("bind", s.image_path(target, root_ok=False), entry.key_where, rel, from_stage)
        elif entry.key == "ssh":
            ssh_id = s.text(entry.value)
            if not _SECRET_ID.fullmatch(ssh_id):
                raise RecipeError(f"an ssh id is letters, digits, '_', '.' or '-', got {ssh_id!r}",
                                  entry.value.where)
            if any(x.kind == "ssh" for x in found):
                raise RecipeError("one ssh: mount per run step (SSH_AUTH_SOCK names one agent)", entry.key_where)
            mount = Mount("ssh", ssh_id, entry.key_where)
        else:
            secret = s.text(entry.value)
            if not _SECRET_ID.fullmatch(secret):
                raise RecipeError(
                    f"a secret id is letters, digits, '_', '.' or '-', got {secret!r}", entry.value.where
                )
            mount = Mount("secret", secret, entry.key_where)
        if any((x.kind, x.value) == (mount.kind, mount.value) for x in found):
            raise RecipeError(f"duplicate {mount.kind} mount {mount.value!r}", entry.key_where)
        found.append(mount)
    return tuple(found)
