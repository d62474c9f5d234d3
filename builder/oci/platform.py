"""Platforms (os/architecture/variant) and the host's."""

from __future__ import annotations

import difflib
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


#: The values the image spec points to (Go's GOOS and GOARCH), and the variants each architecture
#: has in practice (the spec's list, plus amd64 micro-architecture levels and arm64 revisions).
KNOWN_OS = frozenset({"aix", "android", "darwin", "dragonfly", "freebsd", "illumos", "ios", "js", "linux",
                      "netbsd", "openbsd", "plan9", "solaris", "wasip1", "windows"})
KNOWN_VARIANTS: dict[str, frozenset[str]] = {
    "386": frozenset(), "amd64": frozenset({"v1", "v2", "v3", "v4"}),
    "arm": frozenset({"v5", "v6", "v7", "v8"}),
    "arm64": frozenset({"v8", "v8.0", "v8.1", "v8.2", "v8.3", "v8.4", "v8.5", "v8.6", "v8.7", "v8.8", "v8.9",
                        "v9", "v9.0", "v9.1", "v9.2", "v9.3", "v9.4", "v9.5"}),
    "loong64": frozenset(), "mips": frozenset(), "mipsle": frozenset(), "mips64": frozenset(),
    "mips64le": frozenset(), "ppc64": frozenset(), "ppc64le": frozenset(), "riscv64": frozenset(),
    "s390x": frozenset(), "wasm": frozenset(),
}  # fmt: skip


def _unknown(what: str, value: str, known: frozenset[str] | set[str]) -> ValueError:
    close = difflib.get_close_matches(value, sorted(known), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (one of: {', '.join(sorted(known))})" if known else ""
    return ValueError(f"unknown {what} {value!r}{hint}")


@dataclass(frozen=True, slots=True)
class Platform:
    """An image platform as the OCI index writes it."""

    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse a platform a user wrote, ``os/arch[/variant]``, with known values only (a typo such as
        ``linux/amd46`` would otherwise build an image no machine runs); raises ValueError with the reason.

        Platforms read from images (``from_json``) are not checked: an index may hold anything."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"platform must be os/arch[/variant], got {text!r}")
        os_, arch = parts[0], parts[1]
        variant = parts[2] if len(parts) == 3 else None
        if os_ not in KNOWN_OS:
            raise _unknown("operating system", os_, KNOWN_OS)
        if arch not in KNOWN_VARIANTS:
            raise _unknown("architecture", arch, set(KNOWN_VARIANTS))
        if variant is not None and variant not in KNOWN_VARIANTS[arch]:
            raise _unknown(f"variant of {arch}", variant, KNOWN_VARIANTS[arch])
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
