"""The stage loop and the handler registry: every step kind behind one protocol, the cache probed
for every step, and views of the lower filesystem made only when a step that is built asks."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest

import builder.stage as stagemod
from builder.cache.store import LayerCache
from builder.oci import config as cfgmod
from builder.options import BuildOptions
from builder.progress import NullReporter
from builder.recipe import load_recipe, model
from builder.stage import StageBuilder
from builder.stepcache import StepCache
from builder.steps import HANDLERS, handler_for
from tests.helpers import AMD64

PKG = Path(__file__).resolve().parents[2] / "builder"
STEP_CLASSES = {cls.__name__ for cls in typing.get_args(model.Step)}


def test_every_step_kind_has_a_handler() -> None:
    assert set(HANDLERS) == set(typing.get_args(model.Step))


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_no_type_ladder_over_step_classes(path: Path) -> None:
    """Outside the parser (which makes the steps), code asks a step's handler, never its class."""
    if path.relative_to(PKG).parts[0] == "recipe":
        return
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance":
            names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
            assert not names & STEP_CLASSES, f"{path.relative_to(PKG)}:{node.lineno} tests a step's class"


def _recipe(tmp_path: Path, steps: str):
    (tmp_path / "hello.txt").write_text("hello\n")
    (tmp_path / "recipe.yaml").write_text("version: 1\nfrom: scratch\nsteps:\n" + steps)
    return load_recipe(tmp_path / "recipe.yaml", {}, {})


def _stage(tmp_path: Path, recipe, cache: LayerCache | None, name: str) -> StageBuilder:
    options = BuildOptions(epoch=0, cache_dir=tmp_path / "cache")
    return StageBuilder(recipe, AMD64, options, tmp_path, tmp_path / name, NullReporter(),
                        StepCache(cache) if cache is not None else None)


STEPS = """\
  - mkdir: /app
  - copy: hello.txt
    to: /app/
  - write: /app/conf
    content: "x=1\\n"
  - remove: [/app/missing]
"""


def test_a_cached_rebuild_reads_no_layer_and_builds_nothing(tmp_path: Path, monkeypatch) -> None:
    recipe = _recipe(tmp_path, STEPS)
    cache = LayerCache(tmp_path / "cache" / "layers")
    first = _stage(tmp_path, recipe, cache, "one").run(recipe.steps, [], cfgmod.empty_config(AMD64))
    assert [r.cached for r in first.records] == [False, False, False, False]
    assert first.records[3].layer is None  # removes nothing: no layer

    seen: list[str] = []
    monkeypatch.setattr(stagemod, "update_tree", lambda tree, layers: seen.append("tree"))
    monkeypatch.setattr(stagemod._Layerer, "layer", lambda self, changes: pytest.fail("a cached step was built"))
    again = _stage(tmp_path, recipe, cache, "two").run(recipe.steps, [], cfgmod.empty_config(AMD64))
    assert [r.cached for r in again.records] == [True, True, True, True]
    assert [b.digest for b in again.layers] == [b.digest for b in first.layers]
    assert seen == []


def test_a_changed_file_misses_only_its_step_and_later_ones(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, STEPS)
    cache = LayerCache(tmp_path / "cache" / "layers")
    first = _stage(tmp_path, recipe, cache, "one").run(recipe.steps, [], cfgmod.empty_config(AMD64))
    (tmp_path / "hello.txt").write_text("changed\n")
    again = _stage(tmp_path, recipe, cache, "two").run(recipe.steps, [], cfgmod.empty_config(AMD64))
    assert [r.cached for r in again.records] == [True, False, False, False]
    assert again.layers[0].digest == first.layers[0].digest
    assert again.layers[1].digest != first.layers[1].digest


def test_the_copy_key_uses_the_digests_the_writer_returned(tmp_path: Path, monkeypatch) -> None:
    """A cold copy reads each file once: the tar writer hashes it as it copies it, and the entry is
    stored under the key made from those digests (no second read of the context)."""
    recipe = _recipe(tmp_path, "  - copy: hello.txt\n    to: /\n")
    cache = LayerCache(tmp_path / "cache" / "layers")
    import builder.steps.copy as copymod

    monkeypatch.setattr(copymod, "sha256_file", lambda *a: pytest.fail("the context was hashed ahead"))
    _stage(tmp_path, recipe, cache, "one").run(recipe.steps, [], cfgmod.empty_config(AMD64))
    monkeypatch.undo()
    again = _stage(tmp_path, recipe, cache, "two").run(recipe.steps, [], cfgmod.empty_config(AMD64))
    assert [r.cached for r in again.records] == [True]


def test_a_step_gets_only_the_view_it_asks_for(tmp_path: Path) -> None:
    """File steps read the metadata tree; a run step's plan asks for a rootfs, never the tree."""
    from builder.steps import Scope
    from tests.helpers import FakeLower

    recipe = _recipe(tmp_path, "  - mkdir: /x\n  - run: 'true'\n")
    scope = Scope(context=tmp_path, platform=AMD64, epoch=0, config=cfgmod.empty_config(AMD64))
    mkdir, run = recipe.steps
    lower = FakeLower(tree=None, rootfs=None)
    with pytest.raises(AssertionError, match="metadata tree"):
        handler_for(mkdir).plan(mkdir, scope).changes(lower)
    plan = handler_for(run).plan(run, scope)
    with pytest.raises(AssertionError, match="working root filesystem"):
        plan.changes(lower)
    assert lower.asked == ["tree", "rootfs"]
    assert handler_for(run).runs_commands and not handler_for(mkdir).runs_commands
