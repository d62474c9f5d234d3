"""The ``pybuild`` command: a thin shell over the library, and the only code that prints or exits.

Each command parses its flags into the library's options, calls the library and prints what it
returns; documents (``--json``, ``--metadata-file``) are the library's objects, only serialised
here. Exit codes: 0 success; 1 a build or transfer failed (any PybuildError); 2 bad usage; 130
interrupted. Every failure prints one first line ``pybuild: error: ...``; no traceback for user
errors.
"""

from builder.cli.app import cli, main

__all__ = ["cli", "main"]
