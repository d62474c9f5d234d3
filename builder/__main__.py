"""``python -m builder`` is the ``pybuild`` command."""

from builder.cli import main

raise SystemExit(main())
