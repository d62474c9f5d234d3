"""Running one command for the benchmark: wall time, peak RSS, output, and stderr lines with arrival times.

Peak RSS comes from ``/usr/bin/time -f %M`` when it exists, else from ``os.wait4`` on the child.
Both report the kernel's ``ru_maxrss`` of the child and its waited-for descendants, i.e. the
largest single process of a pipeline, never a sum. (``getrusage(RUSAGE_CHILDREN)`` deltas are no
use for this: that ``ru_maxrss`` is the maximum over *all* children so far, so it never goes down.)

Also here: a CPU monitor that tells how much of the machine *other* processes used while we
measured, so a noisy run says so.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


@dataclass
class Completed:
    """One finished command."""

    argv: list[str]
    seconds: float
    returncode: int
    rss_kb: int | None
    stdout: str
    stderr_lines: list[tuple[float, str]] = field(default_factory=list)
    """Each stderr line with the seconds since the start at which it arrived."""

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.stderr_lines)

    def tail(self, lines: int = 3) -> str:
        """The last stderr lines, for an error message."""
        return " | ".join(line.strip() for _, line in self.stderr_lines[-lines:]) or f"exit {self.returncode}"


def run_timed(argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Completed:
    """Run ``argv`` to completion; time it from just before the fork to just after the reap."""
    argv = [str(a) for a in argv]
    with tempfile.TemporaryDirectory(prefix="pybuild-bench-run-") as tmp:
        rss_file = Path(tmp) / "rss"
        full = [GNU_TIME, "-f", "%M", "-o", str(rss_file), *argv] if GNU_TIME else argv
        with open(Path(tmp) / "stdout", "w+") as out:
            lines: list[tuple[float, str]] = []
            t0 = time.perf_counter()
            proc = subprocess.Popen(full, stdout=out, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                    env=dict(env) if env is not None else None, cwd=cwd, text=True,
                                    errors="replace")
            assert proc.stderr is not None
            for line in proc.stderr:
                lines.append((time.perf_counter() - t0, line.rstrip("\n")))
            if GNU_TIME:
                code = proc.wait()
                seconds = time.perf_counter() - t0
                rss = _gnu_time_rss(rss_file)
            else:
                _, status, usage = os.wait4(proc.pid, 0)
                seconds = time.perf_counter() - t0
                proc.returncode = code = os.waitstatus_to_exitcode(status)
                rss = int(usage.ru_maxrss)
            out.seek(0)
            stdout = out.read()
    return Completed(argv, seconds, code, rss, stdout, lines)


def _gnu_time_rss(path: Path) -> int | None:
    # GNU time writes "Command exited with non-zero status N" before the value when the command fails.
    try:
        last = path.read_text().split()[-1]
    except (OSError, IndexError):
        return None
    return int(last) if last.isdigit() else None


def rmtree(path: Path) -> None:
    """Remove a file or tree if it exists (benchmark scratch only)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _busy_jiffies() -> int | None:
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return user + nice + system + irq + softirq + steal


def _own_cpu() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def loadavg() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class CpuMonitor:
    """CPU seconds used by everything except this process and its reaped children, over a span.

    ``/proc/stat`` busy time minus our own ``getrusage`` CPU time: what is left is other work on
    the machine (an editor's test suite, a compiler) competing for the same cores.
    """

    def __init__(self) -> None:
        self._t0 = time.perf_counter()
        self._busy0 = _busy_jiffies()
        self._own0 = _own_cpu()
        self._load0 = loadavg()

    def report(self) -> dict[str, float | None]:
        wall = time.perf_counter() - self._t0
        busy1, own = _busy_jiffies(), _own_cpu() - self._own0
        foreign: float | None = None
        if busy1 is not None and self._busy0 is not None:
            hz = os.sysconf("SC_CLK_TCK")
            foreign = max(0.0, (busy1 - self._busy0) / hz - own)
        return {
            "wall_s": round(wall, 2),
            "own_cpu_s": round(own, 2),
            "other_cpu_s": None if foreign is None else round(foreign, 2),
            "other_cores_avg": None if foreign is None or wall <= 0 else round(foreign / wall, 2),
            "loadavg_start": self._load0,
            "loadavg_end": loadavg(),
        }
