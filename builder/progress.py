"""How the build tells the user what it is doing: a Reporter protocol and its implementations.

The library never prints; it calls a Reporter. The CLI picks one: ``TtyReporter`` (a live
byte counter for long layers), ``PlainReporter`` (one line per event, for CI logs; a progress line
every few seconds of a long step), ``JsonReporter`` (``--progress json``: one JSON object per line,
for CI systems that render their own) or ``NullReporter`` (``--quiet``).
"""

from __future__ import annotations

import json
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

    def step_done(self, layer: LayerBlob | None, cached: bool = False, source: str = "") -> None: ...

    def step_output(self, line: str) -> None: ...

    def blob_event(self, kind: str, digest: Digest, size: int) -> None: ...

    def message(self, text: str) -> None: ...


class NullReporter:
    """``--quiet``: nothing at all."""

    def step_started(self, index: int, total: int, title: str) -> None:
        pass

    def step_progress(self, nbytes: int) -> None:
        pass

    def step_done(self, layer: LayerBlob | None, cached: bool = False, source: str = "") -> None:
        pass

    def step_output(self, line: str) -> None:
        pass

    def blob_event(self, kind: str, digest: Digest, size: int) -> None:
        pass

    def message(self, text: str) -> None:
        pass


def headline(title: str, width: int = 100) -> str:
    """A step's title on one line: a run step's first script line only, long ones cut."""
    lines = title.strip().splitlines() or [""]
    first = lines[0]
    more = len(lines) > 1
    if len(first) > width:
        first, more = first[: width - 1], True
    return first + (" …" if more else "")


def terminal_line(line: str) -> str:
    """What a terminal would show of a line with carriage returns (apt's and curl's progress bars):
    the text after the last one. In a log each rewrite would otherwise pile up on one long line."""
    line = line.rstrip("\r")
    return line.rsplit("\r", 1)[-1]


#: Plain mode: a progress line for a step still running after this long, then again every as long.
PLAIN_PROGRESS_EVERY_S = 5.0


class PlainReporter:
    """One line per step start and end; nothing rewritten in place (CI logs)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._t0 = 0.0
        self._bytes = 0
        self._next = 0.0

    def step_started(self, index: int, total: int, title: str) -> None:
        self._t0 = time.monotonic()
        self._next = self._t0 + PLAIN_PROGRESS_EVERY_S
        self._bytes = 0
        self._index = index
        print(f"[{index}/{total}] {headline(title)}", file=self.stream, flush=True)

    def blob_event(self, kind: str, digest: Digest, size: int) -> None:
        """A registry transfer: existing / mounted / pushed / pulled / manifest, per blob."""
        print(f"  {kind:8s} {digest.algorithm}:{digest.short} {human(size)}", file=self.stream, flush=True)

    def step_output(self, line: str) -> None:
        """A run step's output, as it comes, prefixed by the step number."""
        print(f"  {getattr(self, '_index', 0)}| {terminal_line(line)}", file=self.stream, flush=True)

    def step_progress(self, nbytes: int) -> None:
        self._bytes += nbytes
        now = time.monotonic()
        if now >= self._next:
            self._next = now + PLAIN_PROGRESS_EVERY_S
            rate = self._bytes / max(now - self._t0, 1e-6)
            print(f"      {human(self._bytes)} read ({human(rate)}/s, {now - self._t0:.0f}s)", file=self.stream,
                  flush=True)

    def step_done(self, layer: LayerBlob | None, cached: bool = False, source: str = "") -> None:
        took = time.monotonic() - self._t0
        when = (f"cached ({source})" if source else "cached") if cached else f"built in {took:.1f}s"
        if layer is None:
            print(f"      no filesystem change (empty layer), {when}", file=self.stream, flush=True)
            return
        size = human(layer.uncompressed_size or 0)
        print(f"      layer {layer.digest.short}: {size} -> {human(layer.descriptor.size)}, {when}",
              file=self.stream, flush=True)

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

    def step_done(self, layer: LayerBlob | None, cached: bool = False, source: str = "") -> None:
        self.stream.write("\r\x1b[K")
        super().step_done(layer, cached, source)


class JsonReporter:
    """``--progress json``: one JSON object per line on stderr, each with an ``event`` and the seconds
    since the build started (``t``). Byte progress is sent at most every 0.5 s per step."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._start = time.monotonic()
        self._t0 = self._start
        self._index = 0
        self._bytes = 0
        self._last = 0.0

    def _emit(self, event: str, **fields: object) -> None:
        now = time.monotonic()
        record = {"event": event, "t": round(now - self._start, 3), **fields}
        print(json.dumps(record, ensure_ascii=False, separators=(",", ":")), file=self.stream, flush=True)

    def step_started(self, index: int, total: int, title: str) -> None:
        self._t0, self._index, self._bytes, self._last = time.monotonic(), index, 0, 0.0
        self._emit("step", step=index, total=total, title=title)

    def step_progress(self, nbytes: int) -> None:
        self._bytes += nbytes
        now = time.monotonic()
        if now - self._last >= 0.5:
            self._last = now
            self._emit("progress", step=self._index, bytes=self._bytes)

    def step_done(self, layer: LayerBlob | None, cached: bool = False, source: str = "") -> None:
        self._emit("step_done", step=self._index, cached=cached, source=source or None, seconds=round(time.monotonic() - self._t0, 3),
                   layer=str(layer.digest) if layer else None,
                   size=layer.descriptor.size if layer else 0,
                   uncompressed_size=(layer.uncompressed_size or 0) if layer else 0)

    def step_output(self, line: str) -> None:
        self._emit("output", step=self._index, line=line)

    def blob_event(self, kind: str, digest: Digest, size: int) -> None:
        self._emit("blob", kind=kind, digest=str(digest), size=size)

    def message(self, text: str) -> None:
        self._emit("message", text=text.strip())
