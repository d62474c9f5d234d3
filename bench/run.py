"""pybuild's benchmark: layer build time, size and memory next to the floors and the peers.

    python3 bench/run.py [--repeat 5] [--quick] [--corpus debian,small,big] [--json results.json] [--no-peers]

Not a test. It measures the ``pybuild`` command line only (``python -m builder`` from this
checkout), so it needs nothing but the tools it compares with, and says how much other work
shared the CPUs while it measured (``other load``).

Corpora (made once, kept under ``$PYBUILD_BENCH_CACHE``, default /var/tmp/pybuild-bench; see
``bench/corpora.py``): ``debian`` (Debian bookworm minbase: the test suite's debootstrap tarball,
else ``recipes/debian/make-rootfs.sh``, else a synthetic tree of the same shape; kept as
``rootfs.tar.xz`` and extracted), ``small`` (50,000 files, ~260 MB), ``big`` (4 files, 1 GiB).
``--quick`` uses few-MB versions, a synthetic Debian and no peers (the smoke test runs it).

For each corpus, every tool runs once per repetition, round-robin (so a slow spell of the
machine hits all tools alike), and the table shows medians of ``--repeat`` runs:

- ``pybuild gzip`` / ``pybuild zstd`` at their default levels, ``--no-cache`` into a fresh OUT:
  Debian via ``rootfs: rootfs.tar.xz`` and via ``copy: rootfs/`` (copy normalises modes and
  owners and skips device nodes; fine for timing), the others via ``copy: files/``.
  The size is the layer's from ``--metadata-file``.
- floors: what any builder must at least do, one pass with a sha256 of both sides:
  ``tar -cf - . | tee >(sha256sum) | gzip -6 | tee >(sha256sum) | wc -c`` (and ``pigz -6 -p2``,
  ``zstd -3 -T2``); for Debian also from ``xz -dc rootfs.tar.xz``.
- peers, when installed: ``umoci insert`` of the directory into a new image (the insert is
  timed; the size is the new layer's), and Buildah (vfs, private storage under the bench cache):
  ``from scratch``, then ``add`` of the ``.tar.xz`` or ``copy`` of the directory plus ``commit``
  to ``oci:`` with gzip (add + commit are timed).
- peak RSS of every command (``/usr/bin/time -f %M``, else ``os.wait4``): its largest process.

Then, on the Debian corpus: the warm rebuild of ``recipes/debian/debian.yaml`` (second build
with the same ``--cache-dir``; it must miss nothing), and the cost of a ``run:`` step: with the
rootfs step cached, a run step whose script changes each time costs (total - a warm no-op
rebuild of the same recipe); ``--progress plain`` line arrival times split it into preparing
the root filesystem (until the script's first output line) and the diff (from its last line
until the layer is written).

Last, the targets with PASS/FAIL: pybuild gzip faster than Buildah and umoci on each corpus,
gzip layer <= 1.05x umoci's, pybuild zstd <= 1.1x the ``zstd -3 -T2`` pipeline, warm rebuild
< 0.5 s, peak RSS < 150 MB on the big corpus. ``--json`` writes all of it (every run's time,
size and RSS) machine-readably. Exit status 1 when a pybuild or floor command failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contextlib

from corpora import REPO, Corpus, bench_root, prepare
from measure import Completed, CpuMonitor, loadavg, rmtree, run_timed

CORPORA = ("debian", "small", "big")

# The targets (from the performance issue).
SIZE_VS_UMOCI = 1.05
ZSTD_VS_FLOOR = 1.10
WARM_REBUILD_S = 0.5
BIG_PEAK_RSS_MB = 150.0


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class ToolError(Exception):
    """One run of a tool failed; the message says why in one line."""


@dataclass
class Sample:
    seconds: float
    rss_kb: int | None
    size: int | None


@dataclass
class Tool:
    """One row of a corpus table: how to run it once, and what its runs gave."""

    id: str
    label: str
    kind: str  # pybuild | floor | peer
    source: str  # xz | dir
    compression: str  # gzip | zstd | pigz
    run: Callable[[], Sample] | None
    skip: str | None = None
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(s.seconds for s in self.samples) if self.samples else None

    @property
    def size(self) -> int | None:
        sizes = [s.size for s in self.samples if s.size is not None]
        return sizes[-1] if sizes else None

    @property
    def peak_rss_mb(self) -> float | None:
        rss = [s.rss_kb for s in self.samples if s.rss_kb is not None]
        return max(rss) / 1024 if rss else None

    def result(self) -> dict[str, Any]:
        times = [round(s.seconds, 4) for s in self.samples]
        status = "skipped" if self.skip else ("ok" if self.samples and not self.errors else
                                              "partial" if self.samples else "failed")
        return {
            "id": self.id, "tool": self.label, "kind": self.kind, "source": self.source,
            "compression": self.compression, "status": status, "skip_reason": self.skip,
            "times_s": times, "median_s": _r(self.median), "min_s": min(times) if times else None,
            "max_s": max(times) if times else None, "size_bytes": self.size,
            "peak_rss_mb": _r(self.peak_rss_mb, 1), "rss_kb": [s.rss_kb for s in self.samples],
            "errors": self.errors,
        }


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


def _mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f}"


# --- running things ------------------------------------------------------------------------------

class Bench:
    """Shared state: where scratch goes, how pybuild is started, which peers exist."""

    def __init__(self, quick: bool, peers: bool) -> None:
        self.quick = quick
        self.mode_dir = bench_root() / ("quick" if quick else "full")
        self.work = self.mode_dir / "work"
        self.recipes = self.mode_dir / "recipes"
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                            os.environ.get("PYTHONPATH")]))}
        self.env.pop("SOURCE_DATE_EPOCH", None)
        self.peers = peers
        self.umoci = shutil.which("umoci") if peers else None
        self.buildah = shutil.which("buildah") if peers else None
        self.no_peer_reason = "--quick" if quick else "--no-peers"

    def reset_work(self) -> None:
        if self.work.exists():
            self._clean_buildah()
            _safe_rmtree(self.work)
        self.work.mkdir(parents=True)
        self.recipes.mkdir(parents=True, exist_ok=True)

    # pybuild

    def pybuild_argv(self, recipe: Path, out: Path, *args: str) -> list[str]:
        return [sys.executable, "-m", "builder", str(recipe), "-o", str(out), *args]

    def recipe(self, name: str, text: str) -> Path:
        path = self.recipes / f"{name}.yaml"
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
        return path

    def pybuild(self, recipe: Path, context: Path, compression: str) -> Sample:
        out, meta, cache = self.work / "pybuild-out", self.work / "pybuild-meta.json", self.work / "pybuild-cache"
        for p in (out, meta, cache):
            rmtree(p)
        os.sync()
        done = run_timed(self.pybuild_argv(recipe, out, "-q", "--no-cache", "--compression", compression,
                                           "--context", str(context), "--cache-dir", str(cache),
                                           "--metadata-file", str(meta)), env=self.env)
        try:
            if done.returncode != 0:
                raise ToolError(done.tail())
            info = json.loads(meta.read_text())
            size = sum(int(layer["size"]) for layer in info["layers"])
            if len(info["layers"]) != 1:
                raise ToolError(f"expected one layer, got {len(info['layers'])}")
            return Sample(done.seconds, done.rss_kb, size)
        finally:
            for p in (out, meta, cache):
                rmtree(p)

    # floors

    def floor(self, producer: str, compressor: str) -> Sample:
        script = (f"set -o pipefail; {{ {producer} | tee >(sha256sum >&3) | {compressor} "
                  "| tee >(sha256sum >&3) | wc -c >&3; } 3>&1 | cat")
        os.sync()
        done = run_timed(["bash", "-c", script], env=self.env)
        if done.returncode != 0:
            raise ToolError(done.tail())
        numbers = [int(w) for w in done.stdout.split() if w.isdigit()]
        hashes = re.findall(r"\b[0-9a-f]{64}\b", done.stdout)
        if len(numbers) != 1 or len(hashes) != 2:
            raise ToolError(f"unexpected pipeline output: {done.stdout!r}")
        return Sample(done.seconds, done.rss_kb, numbers[0])

    # umoci

    def umoci_insert(self, tree: Path) -> Sample:
        assert self.umoci is not None
        layout = self.work / "umoci"
        rmtree(layout)
        rootless = [] if os.geteuid() == 0 else ["--rootless"]
        for argv in ([self.umoci, "init", "--layout", str(layout)], [self.umoci, "new", "--image", f"{layout}:t"]):
            _check(run_timed(argv))
        os.sync()
        done = run_timed([self.umoci, "insert", *rootless, "--image", f"{layout}:t", str(tree), "/"])
        try:
            _check(done)
            return Sample(done.seconds, done.rss_kb, last_layer_size(layout, "t"))
        finally:
            rmtree(layout)

    # buildah

    def buildah_argv(self, *args: str) -> list[str]:
        assert self.buildah is not None
        return [self.buildah, "--storage-driver", "vfs", "--root", str(self.work / "buildah-root"),
                "--runroot", str(self.work / "buildah-runroot"), *args]

    def buildah_build(self, source: Path, verb: str) -> Sample:
        out = self.work / "buildah-out"
        rmtree(out)
        made = run_timed(self.buildah_argv("from", "--quiet", "scratch"))
        _check(made)
        container = made.stdout.strip().splitlines()[-1]
        try:
            os.sync()
            add = run_timed(self.buildah_argv(verb, "--quiet", container, str(source), "/"))
            _check(add)
            commit = run_timed(self.buildah_argv("commit", "--quiet", "--disable-compression=false", container,
                                                 f"oci:{out}:t"))
            _check(commit)
            rss = [r for r in (add.rss_kb, commit.rss_kb) if r is not None]
            return Sample(add.seconds + commit.seconds, max(rss) if rss else None, last_layer_size(out, "t"))
        finally:
            self._clean_buildah()
            rmtree(out)

    def _clean_buildah(self) -> None:
        if self.buildah is None or not (self.work / "buildah-root").exists():
            return
        for args in (("rm", "--all"), ("rmi", "--all", "--force")):
            subprocess.run(self.buildah_argv(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           check=False)

    def finish(self) -> None:
        """Remove the peers' private storage (it holds a copy of every corpus)."""
        self._clean_buildah()
        for name in ("buildah-root", "buildah-runroot"):
            _safe_rmtree(self.work / name)


def _check(done: Completed) -> None:
    if done.returncode != 0:
        raise ToolError(f"{Path(done.argv[0]).name} {done.argv[1] if len(done.argv) > 1 else ''}: {done.tail()}")


def _safe_rmtree(path: Path) -> None:
    """rmtree, unless something is mounted below ``path`` (never delete through a mount)."""
    if not path.exists():
        return
    prefix = str(path.resolve())
    try:
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    except OSError:
        mounts = []
    busy = [m for m in mounts if m == prefix or m.startswith(prefix + "/")]
    if busy:
        log(f"warning: not removing {path}: {busy[0]} is mounted there")
        return
    shutil.rmtree(path)


def last_layer_size(layout: Path, tag: str) -> int:
    """The size of the topmost layer of ``tag`` in an OCI layout."""
    index = json.loads((layout / "index.json").read_text())
    for desc in index["manifests"]:
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            alg, _, hexd = desc["digest"].partition(":")
            manifest = json.loads((layout / "blobs" / alg / hexd).read_text())
            return int(manifest["layers"][-1]["size"])
    raise ToolError(f"no tag {tag!r} in {layout}")


# --- one corpus ----------------------------------------------------------------------------------

FLOORS = (("gzip", "gzip -6 -c", "gzip -6"), ("pigz", "pigz -6 -p2 -c", "pigz -6 -p2"),
          ("zstd", "zstd -3 -T2 -q -c", "zstd -3 -T2"))


def corpus_tools(bench: Bench, corpus: Corpus) -> list[Tool]:
    sources: list[tuple[str, Path]] = [("dir", corpus.tree)]
    if corpus.tarball is not None:
        sources.insert(0, ("xz", corpus.tarball))
    tools: list[Tool] = []
    for source, _ in sources:
        if source == "xz":
            recipe = bench.recipe(f"{corpus.name}-rootfs", "version: 1\nsteps:\n  - rootfs: rootfs.tar.xz\n")
            how = "rootfs: .tar.xz"
        else:
            rel = corpus.tree.relative_to(corpus.context)
            recipe = bench.recipe(f"{corpus.name}-copy", f"version: 1\nsteps:\n  - copy: {rel}/\n    to: /\n")
            how = f"copy: {rel}/"
        for comp in ("gzip", "zstd"):
            tools.append(Tool(f"pybuild-{comp}-{source}", f"pybuild {comp} ({how})", "pybuild", source, comp,
                              partial(bench.pybuild, recipe, corpus.context, comp)))
    for source, path in sources:
        if source == "xz":
            producer, shown = f"xz -dc {shlex.quote(str(path))}", "xz -dc"
        else:
            producer, shown = f"tar --numeric-owner -C {shlex.quote(str(path))} -cf - .", "tar"
        floors: tuple[tuple[str, str, str], ...] = FLOORS
        if source == "xz":  # what reading the tarball alone costs: no builder can go below it
            floors = (("decode", "cat", "(decode + sha256 only)"), *FLOORS)
        for comp, cmd, label in floors:
            missing = [t for t in (cmd.split()[0], "xz" if source == "xz" else "tar") if not shutil.which(t)]
            tools.append(Tool(f"floor-{comp}-{source}", f"floor: {shown} | {label}", "floor", source, comp,
                              partial(bench.floor, producer, cmd),
                              skip=f"{missing[0]} not installed" if missing else None))
    umoci_skip = None if bench.umoci else (bench.no_peer_reason if not bench.peers else "umoci not installed")
    tools.append(Tool("umoci-dir", "umoci insert (dir)", "peer", "dir", "gzip",
                      lambda: bench.umoci_insert(corpus.tree), skip=umoci_skip))
    buildah_skip = None if bench.buildah else (bench.no_peer_reason if not bench.peers else "buildah not installed")
    for source, path in sources:
        verb = "add" if source == "xz" else "copy"
        tools.append(Tool(f"buildah-{source}", f"buildah {verb}+commit ({'.tar.xz' if source == 'xz' else 'dir'})",
                          "peer", source, "gzip", partial(bench.buildah_build, path, verb),
                          skip=buildah_skip))
    return tools


def warm_up(corpus: Corpus) -> None:
    """Read the corpus once so the first timed tool does not pay for the disk."""
    subprocess.run(f"tar -C {shlex.quote(str(corpus.tree))} -cf - . | cat > /dev/null", shell=True, check=False,
                   stderr=subprocess.DEVNULL)
    if corpus.tarball is not None:
        subprocess.run(["cat", str(corpus.tarball)], stdout=subprocess.DEVNULL, check=False)


def bench_corpus(bench: Bench, corpus: Corpus, repeat: int) -> list[Tool]:
    tools = corpus_tools(bench, corpus)
    warm_up(corpus)
    active = [t for t in tools if t.skip is None and t.run is not None]
    for rep in range(1, repeat + 1):
        for tool in active:  # round-robin: each repetition runs every tool once
            assert tool.run is not None
            try:
                sample = tool.run()
            except (ToolError, OSError, ValueError, KeyError) as exc:
                msg = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ToolError) else str(exc)
                tool.errors.append(msg)
                log(f"[{corpus.name} {rep}/{repeat}] {tool.id:18s} FAILED: {msg}")
                continue
            tool.samples.append(sample)
            rss = f"{sample.rss_kb / 1024:6.0f} MB RSS" if sample.rss_kb is not None else ""
            log(f"[{corpus.name} {rep}/{repeat}] {tool.id:18s} {sample.seconds:8.2f} s  {_mb(sample.size):>8s} MB"
                f"  {rss}")
    return tools


def table_rows(tools: list[Tool]) -> list[dict[str, Any]]:
    """Every tool's result plus its ratios to the floors and to umoci's size."""
    by_id = {t.id: t for t in tools}
    umoci = by_id.get("umoci-dir")
    umoci_size = umoci.size if umoci is not None else None
    rows = []
    for t in tools:
        row = t.result()
        gz, zs = by_id.get(f"floor-gzip-{t.source}"), by_id.get(f"floor-zstd-{t.source}")
        med = t.median
        row["x_gzip6_floor"] = _r(med / gz.median) if med and gz is not None and gz.median else None
        row["x_zstd_floor"] = (_r(med / zs.median) if med and t.compression == "zstd" and zs is not None and zs.median
                               else None)
        row["x_umoci_size"] = _r(t.size / umoci_size) if t.size and umoci_size else None
        rows.append(row)
    return rows


def render_corpus(name: str, info: dict[str, Any]) -> list[str]:
    c = info["corpus"]
    head = f"== {name}: {c['origin']}, {c['entries']:,} entries, {c['bytes'] / 1e6:.1f} MB"
    if "tarball_bytes" in c:
        head += f"; rootfs.tar.xz {c['tarball_bytes'] / 1e6:.1f} MB"
    cpu = info.get("cpu") or {}
    lines = [head + " ==",
             (f"   median of {info['repeat']} interleaved runs; other load while measuring: "
             f"{cpu.get('other_cores_avg', '?')} of {os.cpu_count()} cores on average "
             f"(loadavg {cpu.get('loadavg_start')} -> {cpu.get('loadavg_end')})")]
    fmt = "{:40s} {:>9s} {:>7s} {:>9s} {:>9s} {:>8s} {:>8s} {:>8s}"
    lines.append(fmt.format("tool", "median s", "spread", "x gzip-6", "x zstd-T2", "size MB", "x umoci", "RSS MB"))
    for row in info["rows"]:
        if row["status"] == "skipped":
            lines.append(f"{row['tool']:40s} skipped ({row['skip_reason']})")
            continue
        if row["median_s"] is None:
            lines.append(f"{row['tool']:40s} FAILED: {row['errors'][0] if row['errors'] else '?'}")
            continue
        spread = (row["max_s"] - row["min_s"]) / row["median_s"] * 100 if row["median_s"] else 0.0

        def f(x: float | None, spec: str) -> str:
            return "-" if x is None else format(x, spec)

        lines.append(fmt.format(row["tool"], f"{row['median_s']:.2f}", f"{spread:.0f}%",
                                f(row["x_gzip6_floor"], ".2f"), f(row["x_zstd_floor"], ".2f"),
                                _mb(row["size_bytes"]), f(row["x_umoci_size"], ".3f"), f(row["peak_rss_mb"], ".0f"))
                     + ("" if not row["errors"] else f"  ({len(row['errors'])} failed runs)"))
    return lines


# --- Debian: warm rebuild and run step -----------------------------------------------------------

def warm_rebuild(bench: Bench, corpus: Corpus, repeat: int) -> dict[str, Any]:
    recipe = REPO / "recipes" / "debian" / "debian.yaml"
    cache, out, meta = bench.work / "warm-cache", bench.work / "warm-out", bench.work / "warm-meta.json"
    result: dict[str, Any] = {"recipe": str(recipe.relative_to(REPO)), "times_s": [], "errors": [], "rss_kb": []}

    def build() -> tuple[Completed, dict[str, Any] | None]:
        rmtree(out)
        rmtree(meta)
        done = run_timed(bench.pybuild_argv(recipe, out, "-q", "--context", str(corpus.context), "--cache-dir",
                                            str(cache), "--metadata-file", str(meta)), env=bench.env)
        info = json.loads(meta.read_text()) if done.returncode == 0 and meta.is_file() else None
        if info is None:
            result["errors"].append(done.tail())
        return done, info

    rmtree(cache)
    cold, cold_info = build()
    result["cold_s"] = _r(cold.seconds)
    if cold_info is not None:
        for _ in range(repeat):
            done, info = build()
            if info is None:
                continue
            if info["cache"]["misses"] != 0 or info["digest"] != cold_info["digest"]:
                result["errors"].append(f"warm rebuild missed the cache: {info['cache']} (digest "
                                        f"{info['digest']} vs {cold_info['digest']})")
                continue
            result["times_s"].append(round(done.seconds, 4))
            result["rss_kb"].append(done.rss_kb)
            result["cache"] = info["cache"]
    result["median_s"] = _r(statistics.median(result["times_s"])) if result["times_s"] else None
    for p in (cache, out, meta):
        rmtree(p)
    return result


RUN_SCRIPT = "echo bench-start; echo x{n} > /etc/bench-marker; echo bench-end"
_STEP_LINE = re.compile(r"^\[\d+/\d+\] run\b")
_TOOK = re.compile(r"built in (\d+(?:\.\d+)?)s\s*$")


def run_phases(lines: list[tuple[float, str]], end: float) -> dict[str, float]:
    """Split a build's ``end`` seconds by when its ``--progress plain`` lines arrived (seconds since the start).

    before: start-up and the cached rootfs step; prepare: from the run step's first line to the
    script's first output (metadata tree, materialising the rootfs, mount points, snapshot, sandbox
    start); script; diff: from the script's last output to the step's layer line (snapshot, diff,
    layer); after: from there to the exit (config, manifest, output, removing the work directory).
    """
    t_step = next((t for t, line in lines if _STEP_LINE.match(line)), None)
    t_first = next((t for t, line in lines if line.rstrip().endswith("| bench-start")), None)
    t_last = next((t for t, line in lines if line.rstrip().endswith("| bench-end")), None)
    if t_step is None or t_first is None or t_last is None:
        raise ToolError("run step output not found in --progress plain output")
    done = next(((t, line) for t, line in lines if t >= t_last and line.strip().startswith("layer ")), None)
    if done is None:
        raise ToolError("run step's layer line not found in --progress plain output")
    took = _TOOK.search(done[1])
    out = {"before_s": t_step, "prepare_s": t_first - t_step, "script_s": t_last - t_first, "diff_s": done[0] - t_last,
           "after_s": end - done[0]}
    if took:
        out["reported_step_s"] = float(took.group(1))
    return out


def run_step_cost(bench: Bench, corpus: Corpus, repeat: int) -> dict[str, Any]:
    result: dict[str, Any] = {"script": RUN_SCRIPT, "errors": []}
    shell = corpus.tree / "bin" / "sh"
    if not (shell.exists() or shell.is_symlink()):
        result["skip_reason"] = "the rootfs has no /bin/sh (no static busybox for the synthetic tree)"
        return result
    cache, out = bench.work / "run-cache", bench.work / "run-out"

    def build(n: int) -> Completed:
        recipe = bench.recipe(f"run-{n}", "version: 1\nsteps:\n  - rootfs: rootfs.tar.xz\n"
                                          f"  - run: {RUN_SCRIPT.format(n=n)}\n")
        rmtree(out)
        done = run_timed(bench.pybuild_argv(recipe, out, "--progress", "plain", "--context", str(corpus.context),
                                            "--cache-dir", str(cache)), env=bench.env)
        if done.returncode != 0:
            raise ToolError(done.tail())
        return done

    rmtree(cache)
    noop: list[float] = []
    varied: list[dict[str, float]] = []
    try:
        result["cold_s"] = _r(build(0).seconds)
        for i in range(1, repeat + 1):  # interleaved: a no-op rebuild, then a changed run step
            noop.append(build(0).seconds)
            done = build(i)
            varied.append({"total_s": done.seconds, **run_phases(done.stderr_lines, done.seconds)})
    except ToolError as exc:
        result["errors"].append(str(exc))
    finally:
        for p in (cache, out):
            rmtree(p)
    result["noop_times_s"] = [round(t, 4) for t in noop]
    result["runs"] = [{k: round(v, 4) for k, v in r.items()} for r in varied]
    if noop and varied:
        med = {k: statistics.median(r[k] for r in varied if k in r) for k in varied[0]}
        result["noop_median_s"] = _r(statistics.median(noop))
        result["total_median_s"] = _r(med["total_s"])
        result["run_step_s"] = _r(med["total_s"] - statistics.median(noop))
        result["prepare_median_s"] = _r(med["prepare_s"])
        result["diff_median_s"] = _r(med["diff_s"])
        result["script_median_s"] = _r(med["script_s"])
        result["before_median_s"] = _r(med["before_s"])
        result["after_median_s"] = _r(med["after_s"])
        result["reported_step_median_s"] = _r(med.get("reported_step_s"))
    return result


# --- targets -------------------------------------------------------------------------------------

def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(name: str, corpus: str, ok: bool | None, detail: str) -> None:
        out.append({"target": name, "corpus": corpus, "status": "SKIP" if ok is None else "PASS" if ok else "FAIL",
                    "detail": detail})

    for corpus, info in results["corpora"].items():
        rows = {r["id"]: r for r in info["rows"]}
        umoci = rows.get("umoci-dir", {})
        for row in info["rows"]:
            if row["kind"] != "pybuild":
                continue
            mine = row["median_s"]
            if row["compression"] == "gzip":
                buildah = rows.get(f"buildah-{row['source']}", {})
                for peer, name in ((buildah, "Buildah"), (umoci, "umoci")):
                    theirs = peer.get("median_s")
                    ok = None if mine is None or theirs is None else mine < theirs
                    note = ""
                    if name == "umoci" and row["source"] != peer.get("source"):
                        decode = rows.get(f"floor-decode-{row['source']}", {}).get("median_s")
                        note = f" (from the {row['source']} tarball vs umoci from the directory; decoding the " \
                               f"tarball alone takes {_s(decode)})"
                    add(f"{row['id']} faster than {name}", corpus, ok,
                        f"{_s(mine)} vs {_s(theirs)}{note}" + ("" if theirs is not None else
                                                               f" ({peer.get('skip_reason') or 'no result'})"))
                ratio = row["x_umoci_size"]
                add(f"{row['id']} layer <= {SIZE_VS_UMOCI}x umoci's", corpus,
                    None if ratio is None else ratio <= SIZE_VS_UMOCI,
                    "no umoci result" if ratio is None else
                    f"{_mb(row['size_bytes'])} MB vs {_mb(umoci.get('size_bytes'))} MB = {ratio:.3f}x")
            else:
                ratio = row["x_zstd_floor"]
                floor = rows.get(f"floor-zstd-{row['source']}", {})
                add(f"{row['id']} <= {ZSTD_VS_FLOOR}x zstd -3 -T2 pipeline", corpus,
                    None if ratio is None else ratio <= ZSTD_VS_FLOOR,
                    "no result" if ratio is None else
                    f"{_s(mine)} vs {_s(floor.get('median_s'))} = {ratio:.2f}x")
            if corpus == "big":
                rss = row["peak_rss_mb"]
                add(f"{row['id']} peak RSS < {BIG_PEAK_RSS_MB:.0f} MB", corpus,
                    None if rss is None else rss < BIG_PEAK_RSS_MB, "no result" if rss is None else f"{rss:.0f} MB")
    warm = results.get("warm_rebuild")
    if warm is not None:
        med = warm.get("median_s")
        add(f"warm rebuild < {WARM_REBUILD_S} s (0 cache misses)", "debian",
            None if med is None and not warm["errors"] else (med is not None and med < WARM_REBUILD_S
                                                           and not warm["errors"]),
            f"{_s(med)}" + (f"; {warm['errors'][0]}" if warm["errors"] else ""))
    return out


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"


# --- the command ---------------------------------------------------------------------------------

def source_digest() -> str:
    """Of every builder/*.py: changes mid-run mean the numbers mix two versions of pybuild."""
    h = hashlib.sha256()
    for path in sorted((REPO / "builder").rglob("*.py")):
        h.update(str(path.relative_to(REPO)).encode() + b"\0")
        with contextlib.suppress(OSError):
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _version(argv: list[str]) -> str | None:
    if not shutil.which(argv[0]):
        return None
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    text = (proc.stdout or proc.stderr).strip().splitlines()
    return text[0].strip("* ") if text else None


def host_info() -> dict[str, Any]:
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "builder"], capture_output=True,
                           text=True, check=False).stdout.split("\n")
    model = ""
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    return {
        "cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(), "python": platform.python_version(),
        "git_head": git, "builder_uncommitted": [line.strip() for line in dirty if line.strip()],
        "tools": {name: _version(argv) for name, argv in {
            "gzip": ["gzip", "--version"], "pigz": ["pigz", "--version"], "zstd": ["zstd", "--version"],
            "xz": ["xz", "--version"], "tar": ["tar", "--version"], "umoci": ["umoci", "--version"],
            "buildah": ["buildah", "--version"]}.items()},
        "loadavg": loadavg(),
    }


def render(results: dict[str, Any]) -> str:
    lines: list[str] = []
    for name, info in results["corpora"].items():
        lines += [*render_corpus(name, info), ""]
    warm = results.get("warm_rebuild")
    if warm is not None:
        lines.append(f"== warm rebuild of {warm['recipe']} (same --cache-dir) ==")
        lines.append(f"   cold {_s(warm.get('cold_s'))}, warm median {_s(warm.get('median_s'))} of "
                     f"{len(warm['times_s'])} (cache {warm.get('cache')})"
                     + (f"; errors: {warm['errors'][0]}" if warm["errors"] else ""))
        lines.append("")
    run = results.get("run_step")
    if run is not None:
        lines.append(f"== run step on the Debian rootfs: `{run['script']}` ==")
        if run.get("skip_reason"):
            lines.append(f"   skipped: {run['skip_reason']}")
        elif run.get("run_step_s") is None:
            lines.append(f"   FAILED: {run['errors'][0] if run['errors'] else '?'}")
        else:
            lines.append(f"   cold build {_s(run.get('cold_s'))}; with the rootfs cached: total "
                         f"{_s(run['total_median_s'])} - warm no-op {_s(run['noop_median_s'])} = run step "
                         f"{_s(run['run_step_s'])}")
            lines.append(f"   (a) prepare the rootfs (tree + materialise + snapshot + sandbox start): "
                         f"{_s(run['prepare_median_s'])}")
            lines.append(f"   (b) diff (snapshot after + diff + layer): {_s(run['diff_median_s'])}; "
                         f"script itself {_s(run['script_median_s'])}; step as pybuild reports it "
                         f"{_s(run.get('reported_step_median_s'))}")
            lines.append(f"   the whole changed build: {_s(run['before_median_s'])} before the run step (start-up, "
                         f"cached rootfs), {_s(run['after_median_s'])} after its layer (output, work dir removal)")
        lines.append("")
    lines.append("== targets ==")
    for t in results["targets"]:
        lines.append(f"   {t['status']:4s}  {t['corpus']:6s}  {t['target']:52s} {t['detail']}")
    if results.get("source_changed"):
        lines += ["", ("WARNING: builder/ changed while the benchmark ran "
                  f"({', '.join(results['source_changed'])}): the numbers mix versions of pybuild.")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5, help="runs per tool; the median is reported (default 5)")
    ap.add_argument("--quick", action="store_true", help="few-MB corpora, synthetic Debian, no peers (smoke test)")
    ap.add_argument("--corpus", default=",".join(CORPORA), help="comma-separated subset of debian,small,big")
    ap.add_argument("--json", type=Path, help="also write every result here")
    ap.add_argument("--no-peers", action="store_true", help="skip umoci and Buildah")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.corpus.split(",") if n.strip()]
    if not names or set(names) - set(CORPORA) or args.repeat < 1:
        ap.error(f"--corpus takes a subset of {','.join(CORPORA)}; --repeat at least 1")

    bench = Bench(args.quick, peers=not (args.quick or args.no_peers))
    results: dict[str, Any] = {
        "version": 1, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "repeat": args.repeat, "quick": args.quick,
        "host": host_info(), "corpora": {}, "targets": [], "source_changed": [],
    }
    start_digest = source_digest()
    results["host"]["builder_digest"] = start_digest

    def save() -> None:
        results["targets"] = targets(results)
        if args.json is not None:
            args.json.write_text(json.dumps(results, indent=2) + "\n")

    whole = CpuMonitor()
    failed = False
    try:
        bench.reset_work()
        subprocess.run([sys.executable, "-m", "builder", "--version"], env=bench.env, check=False,
                       stdout=subprocess.DEVNULL)  # compile and cache the modules before anything is timed
        for name in names:
            corpus = prepare(name, args.quick, log)
            log(f"{name}: {corpus.origin}, {corpus.entries:,} entries, {corpus.bytes / 1e6:.1f} MB in {corpus.tree}")
            monitor = CpuMonitor()
            tools = bench_corpus(bench, corpus, args.repeat)
            info = {"corpus": corpus.describe(), "repeat": args.repeat, "rows": table_rows(tools),
                    "cpu": monitor.report()}
            results["corpora"][name] = info
            failed |= any(t.errors for t in tools if t.kind in ("pybuild", "floor"))
            if name == "debian":
                log("debian: warm rebuild")
                results["warm_rebuild"] = warm_rebuild(bench, corpus, args.repeat)
                log("debian: run step")
                results["run_step"] = run_step_cost(bench, corpus, args.repeat)
                failed |= bool(results["warm_rebuild"]["errors"] or results["run_step"]["errors"])
            if source_digest() != start_digest:
                results["source_changed"].append(f"during {name}")
                start_digest = source_digest()
            save()
            print("\n".join(render_corpus(name, info)) + "\n", file=sys.stderr, flush=True)
    finally:
        bench.finish()
    results["cpu"] = whole.report()
    save()
    print(render(results))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
