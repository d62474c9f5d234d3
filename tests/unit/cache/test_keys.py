"""Step keys: every part of the recipe changes the key, a recipe location never does, and the key is stable."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

import builder.cache.keys
from builder.cache.keys import step_key
from builder.errors import Location
from builder.layer.compress import LAYER_FORMAT_VERSION
from builder.oci.digest import Digest
from builder.recipe.model import Mount, RunStep

WHERE = Location("recipe.yaml", 7, "steps[2]")
STEP = RunStep(script="make install", shell=None, env={"CC": "gcc"}, user=None, workdir="/src", network="none",
               mounts=(Mount("cache", "/root/.cache", WHERE),), where=WHERE)
PARENTS = [Digest.of(b"base layer")]
INPUTS: dict[str, Any] = {"files": [["a", "file", 420, 3, "sha256:" + "0" * 64, None]]}
SETTINGS: dict[str, Any] = {"platform": "linux/amd64", "compression": "gzip", "level": None, "epoch": 0}


def key(**changes: Any) -> str:
    args: dict[str, Any] = {"parents": PARENTS, "step": STEP, "inputs": INPUTS, "settings": SETTINGS, **changes}
    return step_key(**args)


def test_the_key_of_a_step_is_pinned(monkeypatch):
    """Every cache on disk is keyed by this recipe: a change to it must be a LAYER_FORMAT_VERSION bump."""
    monkeypatch.setattr(builder.cache.keys, "LAYER_FORMAT_VERSION", 3)
    assert key() == "7bdafd7cbf37e9766e19bf63d9c9203aff04a727c3c5cf63adbc2421eec52bb3"


@pytest.mark.parametrize("changes", [
    {"parents": []},
    {"parents": [*PARENTS, Digest.of(b"another layer")]},
    {"parents": [Digest.of(b"another layer"), *PARENTS]},
    {"step": dataclasses.replace(STEP, script="make check")},
    {"step": dataclasses.replace(STEP, env={"CC": "clang"})},
    {"step": dataclasses.replace(STEP, mounts=(Mount("cache", "/var/cache/apt", WHERE),))},
    {"inputs": {"files": [["a", "file", 420, 3, "sha256:" + "1" * 64, None]]}},
    {"inputs": {}},
    {"settings": {**SETTINGS, "compression": "zstd"}},
    {"settings": {**SETTINGS, "epoch": 1}},
    {"settings": {**SETTINGS, "platform": "linux/arm64"}},
], ids=["no-parent", "more-parents", "parents-reordered", "script", "env", "mount", "input-digest", "no-inputs",
        "compression", "epoch", "platform"])
def test_every_part_of_the_recipe_changes_the_key(changes):
    assert key(**changes) != key()


def test_the_kind_of_step_is_part_of_the_key():
    @dataclasses.dataclass(frozen=True)
    class Write:
        path: str
        where: Location

    @dataclasses.dataclass(frozen=True)
    class Mkdir:  # the very same fields: only the kind tells them apart
        path: str
        where: Location

    assert key(step=Write("/x", WHERE)) != key(step=Mkdir("/x", WHERE))


def test_the_layer_format_version_changes_every_key(monkeypatch):
    before = key()
    monkeypatch.setattr(builder.cache.keys, "LAYER_FORMAT_VERSION", LAYER_FORMAT_VERSION + 1)
    assert key() != before


def test_a_recipe_location_never_reaches_the_key():
    """Moving a step in its file, or renaming the file, must not rebuild it: the layer is the same."""
    moved = Location("other/recipe.yaml", 70, "stages.build.steps[5]")
    step = dataclasses.replace(STEP, where=moved, mounts=(Mount("cache", "/root/.cache", moved),))
    assert key(step=step) == key()
