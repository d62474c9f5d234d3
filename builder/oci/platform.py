"""Platforms (os/architecture/variant) and the host's."""

from __future__ import annotations

import platform as _platform
from dataclasses import dataclass
from typing import Any

_MACHINE = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i686": ("386", None),
    "i386": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


@dataclass(frozen=True, slots=True)
class Platform:
    """An image platform as the OCI index writes it."""

    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``os/arch[/variant]``; raises ValueError with the reason."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"platform must be os/arch[/variant], got {text!r}")
        os_, arch = parts[0], parts[1]
        variant = parts[2] if len(parts) == 3 else None
        return cls(os_, arch, variant)

    @classmethod
    def host(cls) -> Platform:
        """The platform of the machine pybuild runs on."""
        arch, variant = _MACHINE.get(_platform.machine().lower(), (_platform.machine().lower(), None))
        return cls("linux", arch, variant)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Platform:
        return cls(str(obj.get("os", "")), str(obj.get("architecture", "")), obj.get("variant") or None)

    def to_json(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)
