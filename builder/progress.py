"""How the build tells the user what it is doing: a Reporter protocol and its implementations.

The library never prints; it calls a Reporter. The CLI picks one: ``TtyReporter`` (a live
byte counter for long layers), ``PlainReporter`` (one line per event, for CI logs) or
``NullReporter`` (``--quiet``).
"""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO

from builder.image import LayerBlob
from builder.oci.digest import Digest


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class Reporter(Protocol):
    """Receives build events; implementations decide how (and whether) to show them."""

    def step_started(self, index: int, total: int, title: str) -> None: ...

    def step_progress(self, nbytes: int) -> None: ...

    def step_done(self, layer: LayerBlob | None, cached: bool = False) -> None: ...

    def step_output(self, line: str) -> None: ...

    def blob_event(self, kind: str, digest: Digest, size: int) -> None: ...

    def message(self, text: str) -> None: ...


class NullReporter:
    """``--quiet``: nothing at all."""

    def step_started(self, index: int, total: int, title: str) -> None:
        pass

    def step_progress(self, nbytes: int) -> None:
        pass

    def step_done(self, layer: LayerBlob | None, cached: bool = False) -> None:
        pass

    def step_output(self, line: str) -> None:
        pass

    def blob_event(self, kind: str, digest: Digest, size: int) -> None:
        pass

    def message(self, text: str) -> None:
        pass


class PlainReporter:
    """One line per step start and end; nothing rewritten in place (CI logs)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._t0 = 0.0
        self._bytes = 0

    def step_started(self, index: int, total: int, title: str) -> None:
        self._t0 = time.monotonic()
        self._bytes = 0
        self._index = index
        print(f"[{index}/{total}] {title}", file=self.stream, flush=True)

    def blob_event(self, kind: str, digest: Digest, size: int) -> None:
        """A registry transfer: existing / mounted / pushed / pulled / manifest, per blob."""
        print(f"  {kind:8s} {digest.algorithm}:{digest.short} {human(size)}", file=self.stream, flush=True)

    def step_output(self, line: str) -> None:
        """A run step's output, as it comes, prefixed by the step number."""
        print(f"  {getattr(self, '_index', 0)}| {line}", file=self.stream, flush=True)

    def step_progress(self, nbytes: int) -> None:
        self._bytes += nbytes

    def step_done(self, layer: LayerBlob | None, cached: bool = False) -> None:
        took = time.monotonic() - self._t0
        if layer is None:
            print("      no filesystem change (empty layer)", file=self.stream, flush=True)
            return
        size = human(layer.uncompressed_size or 0)
        print(f"      layer {layer.digest.short}: {size} -> {human(layer.descriptor.size)} "
              f"({'cached' if cached else f'{took:.1f}s'})", file=self.stream, flush=True)

    def message(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


class TtyReporter(PlainReporter):
    """PlainReporter plus a live, in-place byte counter while a layer is written."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._last = 0.0

    def step_progress(self, nbytes: int) -> None:
        super().step_progress(nbytes)
        now = time.monotonic()
        if now - self._last > 0.2:
            self._last = now
            rate = self._bytes / max(now - self._t0, 1e-6)
            self.stream.write(f"\r      {human(self._bytes)} read ({human(rate)}/s)\x1b[K")
            self.stream.flush()

    def step_done(self, layer: LayerBlob | None, cached: bool = False) -> None:
        self.stream.write("\r\x1b[K")
        super().step_done(layer, cached)
