"""Attack tests: hostile inputs built in code, each a finding that once got through.

Every test here drives the real CLI (or the library function the CLI calls) with an input an
adversary controls, and checks two things: the clean outcome (one ``pybuild: error:`` line, exit
code 1, no traceback) and that nothing escaped (sentinel and decoy files untouched, no host path
read or written). Memory bombs run under an address-space limit (``limited``) so a regression
fails fast with MemoryError instead of taking the machine down.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import pybuild_env

#: Address-space limit for memory-bomb runs: far above what pybuild needs (Python + isal + zstd
#: threads map ~1 GiB of address space), far below what any of the bombs would take.
AS_LIMIT = 2 << 30


def run_limited(
    *args: str | os.PathLike[str],
    cwd: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    limit: int = AS_LIMIT,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``python -m builder ARGS`` under RLIMIT_AS = ``limit`` bytes and a wall-clock ``timeout``."""

    def _limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "builder", *map(str, args)],
        cwd=cwd,
        env=pybuild_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        preexec_fn=_limit,
    )


def assert_clean_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit 1, no traceback, a ``pybuild: error:`` line that contains every needle."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert "pybuild: error:" in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


@pytest.fixture
def limited(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``limited("recipe.yaml", "-o", out, limit=..., timeout=...)``: the CLI under a memory limit."""

    def run(*args: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None, **kw: Any) -> Any:
        return run_limited(*args, cwd=cwd if cwd is not None else tmp_path, **kw)

    return run
