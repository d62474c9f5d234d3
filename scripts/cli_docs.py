"""Write docs/cli.md from the commands' own --help texts (tests/integration/test_api.py checks it is current).

Run from the repository root: ``.venv/bin/python3 scripts/cli_docs.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from builder.cli import cli  # after the path is set

INTRO = """# The command line reference

`pybuild RECIPE -o OUT` is `pybuild build RECIPE -o OUT`. Every command answers `--help` with what
is below. Exit status: 0 done, 1 an error of the input, the machine or a registry (one line:
`pybuild: error: ...`, and OUT is left as it was), 2 a usage error, 130 interrupted.
Machine-readable output: `--progress json` (one JSON event per line on stderr), `--digest-file`,
`--iidfile`, `--metadata-file`, and `--json` on `inspect`, `ls`, `cache ls`, `cache du`.
"""
COMMANDS = [["build"], ["inspect"], ["ls"], ["unpack"], ["push"], ["pull"], ["login"], ["logout"],
            ["cache", "ls"], ["cache", "du"], ["cache", "prune"], ["version"]]


def render() -> str:
    runner = CliRunner()
    parts = [INTRO]
    for args in COMMANDS:
        res = runner.invoke(cli, [*args, "--help"], prog_name="pybuild", terminal_width=100)
        parts.append(f"\n## `pybuild {' '.join(args)}`\n\n```\n{res.output.rstrip()}\n```\n")
    return "".join(parts)


if __name__ == "__main__":
    (ROOT / "docs" / "cli.md").write_text(render())
