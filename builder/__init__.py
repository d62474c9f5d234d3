"""pybuild: build OCI images from YAML recipes, with no daemon and no Dockerfile.

The library is what the ``pybuild`` command runs; the names below are its public surface (see
docs/api.md for an example). They load on first use, so ``import builder`` costs nothing and
the registry stack loads only for a push or a pull. The library never prints and never exits:
progress goes to a :class:`Reporter` (``NullReporter`` by default) and every failure a user can
cause is a :class:`PybuildError`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "build": "builder.orchestrator",
    "BuildResult": "builder.orchestrator",
    "BuildOptions": "builder.options",
    "load_recipe": "builder.recipe",
    "work_directory": "builder.workdir",
    "write_output": "builder.output",
    "write_layout": "builder.layout.write",
    "read_layout": "builder.layout.read",
    "describe": "builder.inspect",
    "push": "builder.registry.push",
    "pull": "builder.registry.pull",
    "Reference": "builder.oci.reference",
    "RegistryOptions": "builder.registry.options",
    "Image": "builder.image",
    "ImageIndex": "builder.image",
    "Platform": "builder.oci.platform",
    "Compression": "builder.layer.compress",
    "Reporter": "builder.progress",
    "NullReporter": "builder.progress",
    "PybuildError": "builder.errors",
}
__all__ = [
    "__version__", "build", "BuildResult", "BuildOptions", "load_recipe", "work_directory", "write_output",
    "write_layout", "read_layout", "describe", "push", "pull", "Reference", "RegistryOptions", "Image",
    "ImageIndex", "Platform", "Compression", "Reporter", "NullReporter", "PybuildError",
]  # fmt: skip
assert __all__[1:] == list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'builder' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
