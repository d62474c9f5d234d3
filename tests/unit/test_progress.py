"""What the build shows while it works: plain lines for logs, JSON events, headlines."""

from __future__ import annotations

import io
import json
from pathlib import Path

from builder.layer.entry import Entry, Kind
from builder.layer.tarwriter import write_tar
from builder.progress import JsonReporter, PlainReporter, headline, terminal_line


def test_headline_keeps_the_first_script_line_only() -> None:
    assert headline("run apt-get update\napt-get install -y curl\n") == "run apt-get update …"
    assert headline("copy app/ /opt/app/") == "copy app/ /opt/app/"
    assert headline("run " + "x" * 300, width=50) == "run " + "x" * 45 + " …"


def test_carriage_returns_keep_what_a_terminal_shows() -> None:
    assert terminal_line("Progress: 10%\rProgress: 50%\rProgress: 100%") == "Progress: 100%"
    assert terminal_line("dos line\r") == "dos line"


def test_plain_output_of_a_run_step_collapses_progress_bars() -> None:
    out = io.StringIO()
    r = PlainReporter(out)
    r.step_started(2, 3, "run apt-get update\nmore")
    r.step_output("Reading 0%\rReading 100%")
    assert out.getvalue().splitlines() == ["[2/3] run apt-get update …", "  2| Reading 100%"]


def test_plain_mode_reports_progress_inside_a_long_step(monkeypatch) -> None:
    clock = iter([0.0, 1.0, 6.0, 7.0, 12.0])
    monkeypatch.setattr("builder.progress.time.monotonic", lambda: next(clock))
    out = io.StringIO()
    r = PlainReporter(out)
    r.step_started(1, 1, "copy big")
    for _ in range(4):
        r.step_progress(250_000_000)
    lines = out.getvalue().splitlines()
    assert lines[0] == "[1/1] copy big"
    assert [line.split(" read")[0].strip() for line in lines[1:]] == ["500.0 MB", "1.0 GB"]


def test_json_events_are_one_object_per_line() -> None:
    out = io.StringIO()
    r = JsonReporter(out)
    r.step_started(1, 2, "write /x")
    r.step_output("hello")
    r.step_done(None)
    r.message("done")
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["step", "output", "step_done", "message"]
    assert events[0]["step"] == 1 and events[0]["total"] == 2 and events[2]["layer"] is None
    assert all(isinstance(e["t"], float) for e in events)


def test_a_large_file_reports_progress_while_it_is_copied(tmp_path: Path) -> None:
    """Per chunk, not once at the end: a 1 GB file must not be seconds of silence."""
    data = b"x" * (5 << 20)
    seen: list[int] = []
    entry = Entry("big", Kind.FILE, 0o644, 0, 0, len(data), 0, content=lambda: io.BytesIO(data))
    write_tar([entry], io.BytesIO(), 0, seen.append)
    assert len(seen) > 1 and sum(seen) == len(data)
