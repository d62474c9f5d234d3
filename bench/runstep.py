"""What a ``run:`` step costs on a large base: pybuild's overlay and copy drivers next to Buildah.

    python3 bench/runstep.py [--repeat 3] [--no-apt] [--no-peers] [--json results.json]

Not a test. The base is the Debian bookworm minbase root filesystem (the test suite's
debootstrap tarball, else ``recipes/debian/make-rootfs.sh``: ``bench/corpora.py``), 121 MB.
Every build runs on 2 cores as the machine is; medians of ``--repeat`` rounds, each round
running every tool once (so a slow spell hits all alike), with an ``os.sync()`` before each timed
build (the writeback of the builds before is not its time). Two workloads:

- **trivial**: ``echo N > /n`` on the cached base, N new each time, so the step always misses.
  Its cost is (the build's time - a warm no-op rebuild of the same recipe): what a run step adds
  to a build, which for pybuild's copy driver is mostly materialising the whole base.
- **apt**: ``apt-get install -y --no-install-recommends hello`` after a cached ``apt-get update``
  step (the Debian package mirror must be reachable; ``--no-apt`` skips it). The install is
  forced to miss each round by a changing comment in the script.

Tools: ``pybuild overlay`` and ``pybuild copy`` (``PYBUILD_RUN_DRIVER``, private cache dir, the
first build of each recipe not timed: it fills the layer cache and the snapshot store), and
Buildah with the ``vfs`` and ``overlay`` storage drivers (private ``--root``; the base imported
once as an image; ``buildah build --layers --isolation chroot`` of the equivalent Containerfile,
its earlier steps cached the same way, then ``buildah push`` to an ``oci:`` layout, as pybuild
writes one; both timed).

File times decide how much work apt-get does, so the apt workload compares tools that treat them
alike. ``apt-get update`` builds its package cache (``/var/cache/apt/*.bin``, 2 x 39 MB) keyed by
the modification times of the lists it read. pybuild's layers carry file times clamped to the
build's epoch (0 unless set), for reproducible images; the install step then finds the lists'
times changed, rebuilds both cache files and puts them in its layer (34.8 MB compressed, against
17 MB). Buildah keeps file times by default, and clamps them with ``--timestamp 0``; later RUN
steps then see the clamped times too. So the rows pair up:

- **times clamped**: ``pybuild overlay``/``copy`` (the default epoch 0) against
  ``buildah --timestamp 0``;
- **times kept**: ``pybuild overlay, times kept`` (``--source-date-epoch`` in 2100: every file
  time is below it, so none is changed) against Buildah's default.

Each row also reports the step's compressed layer size, the check that paired rows did the same
work. The goals (issue 17): the trivial step costs at most 0.2 s more than a warm no-op rebuild,
and pybuild's run step (and whole build) is faster than each Buildah row it is paired with.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpora import REPO, bench_root, prepare
from measure import Completed, rmtree, run_timed

TRIVIAL = "echo {n} > /n"
APT_UPDATE = "apt-get update -q"
APT_INSTALL = "apt-get install -y -q --no-install-recommends hello # round {n}"
GOAL_OVER_NOOP_S = 0.2
KEPT_EPOCH = 4102444800  # 2100-01-01: above every file time, so clamping changes none


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Failed(Exception):  # noqa: N818 - a failed tool run, reported as a row
    pass


def check(done: Completed) -> Completed:
    if done.returncode != 0:
        raise Failed(done.tail(8))
    return done


def last_layer_bytes(layout: Path) -> int | None:
    """The compressed size of the top layer of the image in an OCI layout (None if unreadable)."""
    try:
        blobs = layout / "blobs" / "sha256"
        desc = json.loads((layout / "index.json").read_text())["manifests"][0]
        manifest = json.loads((blobs / desc["digest"].split(":")[1]).read_text())
        return int(manifest["layers"][-1]["size"])
    except (OSError, ValueError, KeyError, IndexError):
        return None


class Pybuild:
    def __init__(self, work: Path, context: Path, driver: str, times: str = "clamped") -> None:
        self.name = f"pybuild {driver}" + (", times kept" if times == "kept" else "")
        self.times = times
        self.layer_bytes: int | None = None
        self.work = work / (f"pybuild-{driver}" + ("-kept" if times == "kept" else ""))
        self.context, self.driver = context, driver
        self.env = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},  # as installed
                    "PYBUILD_RUN_DRIVER": driver,
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        rmtree(self.work)
        self.work.mkdir(parents=True)

    def build(self, steps: list[str], tag: str) -> Completed:
        recipe = self.work / f"{tag}.yaml"
        recipe.write_text("version: 1\nsteps:\n  - rootfs: rootfs.tar.xz\n"
                          + "".join(f"  - run: {json.dumps(s)}\n" for s in steps))
        out = self.work / "out"
        rmtree(out)
        epoch = ["--source-date-epoch", str(KEPT_EPOCH)] if self.times == "kept" else []
        done = check(run_timed([sys.executable, "-m", "builder", str(recipe), "-o", str(out), "-q",
                                "--no-attestations", "--context", str(self.context), *epoch,
                                "--cache-dir", str(self.work / "cache")], env=self.env))
        self.layer_bytes = last_layer_bytes(out)
        return done

    def close(self) -> None:
        rmtree(self.work)


class Buildah:
    def __init__(self, work: Path, tarball: Path, driver: str, times: str = "kept") -> None:
        self.name = f"buildah {driver}" + (" --timestamp 0" if times == "clamped" else "")
        self.times = times
        self.layer_bytes: int | None = None
        self.work = work / (f"buildah-{driver}" + ("-ts0" if times == "clamped" else ""))
        self.driver = driver
        self.exe = shutil.which("buildah") or "buildah"
        rmtree(self.work)
        (self.work / "ctx").mkdir(parents=True)
        container = check(run_timed(self.argv("from", "--quiet", "scratch"))).stdout.strip().splitlines()[-1]
        check(run_timed(self.argv("add", "--quiet", container, str(tarball), "/")))
        check(run_timed(self.argv("commit", "--quiet", container, "localhost/bench-debian")))
        check(run_timed(self.argv("rm", container)))

    def argv(self, *args: str) -> list[str]:
        return [self.exe, "--storage-driver", self.driver, "--root", str(self.work / "root"),
                "--runroot", str(self.work / "runroot"), *args]

    def build(self, steps: list[str], tag: str) -> Completed:
        containerfile = self.work / "ctx" / "Containerfile"
        containerfile.write_text("FROM localhost/bench-debian\n" + "".join(f"RUN {s}\n" for s in steps))
        stamp = ["--timestamp", "0"] if self.times == "clamped" else []
        built = check(run_timed(self.argv("build", "--quiet", "--layers", *stamp, "--network", "host", "--isolation",
                                          "chroot", "-t", f"localhost/{tag}", "-f", str(containerfile),
                                          str(self.work / "ctx"))))
        out = self.work / "out"
        rmtree(out)
        pushed = check(run_timed(self.argv("push", "--quiet", f"localhost/{tag}", f"oci:{out}:latest")))
        self.layer_bytes = last_layer_bytes(out)
        rmtree(out)
        return Completed(built.argv, built.seconds + pushed.seconds, built.returncode, built.rss_kb, built.stdout,
                         built.stderr_lines)

    def close(self) -> None:
        for args in (("rm", "--all"), ("rmi", "--all", "--force")):
            subprocess.run(self.argv(*args), capture_output=True, check=False)
        rmtree(self.work)


Tool = Pybuild | Buildah


def measure(tools: list[Tool], repeat: int, noop: Callable[[], list[str]], varied: Callable[[int], list[str]],
            label: str) -> dict[str, Any]:
    """Per tool: the median warm no-op rebuild, the median build with the last step missing, and the
    difference (the step's cost)."""
    times: dict[str, dict[str, list[float]]] = {t.name: {"noop": [], "varied": []} for t in tools}
    layers: dict[str, int | None] = {}
    errors: dict[str, str] = {}
    for tool in tools:  # fill the caches (and pybuild's snapshot store) untimed
        try:
            tool.build(noop(), f"{label}-noop")
            tool.build(noop(), f"{label}-noop")
        except Failed as exc:
            errors[tool.name] = str(exc)
    for n in range(1, repeat + 1):
        for tool in tools:
            if tool.name in errors:
                continue
            try:
                os.sync()  # the writeback of the tool before is not this one's time
                times[tool.name]["noop"].append(tool.build(noop(), f"{label}-noop").seconds)
                os.sync()
                times[tool.name]["varied"].append(tool.build(varied(n), f"{label}-{n}").seconds)
                layers[tool.name] = tool.layer_bytes
            except Failed as exc:
                errors[tool.name] = str(exc)
        log(f"  {label}: round {n}/{repeat} done")
    rows: dict[str, Any] = {}
    for name, t in times.items():
        if name in errors or not t["varied"]:
            rows[name] = {"error": errors.get(name, "no run")}
            continue
        noop_s, total_s = statistics.median(t["noop"]), statistics.median(t["varied"])
        tool = next(t for t in tools if t.name == name)
        rows[name] = {"noop_s": round(noop_s, 3), "total_s": round(total_s, 3), "step_s": round(total_s - noop_s, 3),
                      "times": tool.times, "layer_mb": round((layers.get(name) or 0) / 1e6, 1),
                      "noop_times_s": [round(x, 3) for x in t["noop"]],
                      "varied_times_s": [round(x, 3) for x in t["varied"]]}
    return rows


def mirror_ok() -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen("http://deb.debian.org/debian/dists/bookworm/Release", timeout=10) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def render(results: dict[str, Any]) -> str:
    title = (f"run-step cost on the Debian base ({results['base_mb']} MB), {results['cpus']} CPUs, "
             f"median of {results['repeat']}")
    lines = [title, ""]
    for workload, rows in results["workloads"].items():
        header = "| tool | file times | warm no-op rebuild | build with the step | step costs | step's layer |"
        lines += [f"## {workload}", "", header, "|---|---|---:|---:|---:|---:|"]
        for name, row in rows.items():
            if "error" in row:
                lines.append(f"| {name} | | error: {row['error'].splitlines()[-1][:60]} | | | |")
            else:
                lines.append(f"| {name} | {row['times']} | {row['noop_s']:.2f} s | {row['total_s']:.2f} s "
                             f"| {row['step_s']:.2f} s | {row['layer_mb']:.1f} MB |")
        lines.append("")
    for goal in results["goals"]:
        lines.append(f"- {goal['status']}: {goal['goal']} ({goal['detail']})")
    return "\n".join(lines)


def goals(workloads: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    out = []
    trivial = workloads.get("trivial", {})
    mine = trivial.get("pybuild overlay", {})
    if "step_s" in mine:
        out.append({"goal": f"trivial step <= {GOAL_OVER_NOOP_S} s over a warm no-op rebuild",
                    "status": "PASS" if mine["step_s"] <= GOAL_OVER_NOOP_S else "FAIL",
                    "detail": f"{mine['step_s']:.3f} s"})
    for workload, rows in workloads.items():
        for times in ("clamped", "kept"):  # pybuild against each Buildah row that treats file times alike
            ours = next(((n, r) for n, r in rows.items() if n.startswith("pybuild overlay") and r.get("times") == times
                         and "step_s" in r), None)
            peers = [(n, r) for n, r in rows.items() if n.startswith("buildah") and "step_s" in r
                     and (r.get("times") == times or workload == "trivial")]  # its layer: 1 file, whatever the times
            if ours is None or not peers:
                continue
            for what in ("step_s", "total_s"):
                worst = min(peers, key=lambda p: p[1][what])
                paired = "" if workload == "trivial" else f", times {times}"
                out.append({"goal": f"{workload}{paired}: {ours[0]} {'step' if what == 'step_s' else 'build'} "
                                    f"faster than every Buildah row",
                            "status": "PASS" if ours[1][what] < worst[1][what] else "FAIL",
                            "detail": f"{ours[1][what]:.2f} s vs {worst[0]} {worst[1][what]:.2f} s"})
    apt = workloads.get("apt", {})
    ours, theirs = apt.get("pybuild overlay", {}), apt.get("buildah overlay", {})
    if "step_s" in ours and "step_s" in theirs:  # both defaults: not the same work, said as such
        out.append({"goal": "apt, each tool's default (not the same work): pybuild overlay step against buildah overlay",
                    "status": "INFO", "detail": f"{ours['step_s']:.2f} s vs {theirs['step_s']:.2f} s; "
                                                f"layers {ours['layer_mb']:.1f} MB vs {theirs['layer_mb']:.1f} MB"})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-apt", action="store_true", help="skip the apt-get workload")
    parser.add_argument("--no-peers", action="store_true", help="pybuild only")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if os.geteuid() != 0:
        log("note: not root: the overlay driver needs root or a rootless build with a subordinate id range")
    corpus = prepare("debian", False, log)
    tarball = corpus.context / "rootfs.tar.xz"
    with tarfile.open(tarball) as tf:
        base = sum(m.size for m in tf)
    work = bench_root() / "runstep"
    tools: list[Tool] = [Pybuild(work, corpus.context, "overlay"), Pybuild(work, corpus.context, "copy"),
                         Pybuild(work, corpus.context, "overlay", times="kept")]
    if not args.no_peers and shutil.which("buildah"):
        for driver in ("vfs", "overlay"):
            for times in ("kept", "clamped"):
                try:
                    tools.append(Buildah(work, tarball, driver, times))
                except Failed as exc:
                    log(f"buildah {driver}: cannot import the base: {exc}")
    # the trivial step writes a 131-byte layer whatever the file times: one row per driver is enough
    trivial_tools = [t for t in tools if (t.times == "clamped") == t.name.startswith("pybuild")]
    results: dict[str, Any] = {"base_mb": round(base / 1e6), "cpus": os.cpu_count(), "repeat": args.repeat,
                               "when": time.strftime("%Y-%m-%d %H:%M:%S"), "workloads": {}}
    try:
        results["workloads"]["trivial"] = measure(trivial_tools, args.repeat, lambda: [TRIVIAL.format(n=0)],
                                                  lambda n: [TRIVIAL.format(n=n)], "trivial")
        if not args.no_apt:
            if mirror_ok():
                results["workloads"]["apt"] = measure(
                    tools, args.repeat, lambda: [APT_UPDATE, APT_INSTALL.format(n=0)],
                    lambda n: [APT_UPDATE, APT_INSTALL.format(n=n)], "apt")
            else:
                log("apt: the Debian mirror is not reachable: skipped")
    finally:
        for tool in tools:
            tool.close()
    results["goals"] = goals(results["workloads"])
    print(render(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
