"""The cost of attestations: provenance (on by default) and the SBOM (``--sbom``), as a share of the build.

    python3 bench/attestations.py [--repeat 5] [--quick] [--json results.json]

Not a test. The work is the Debian corpus of ``bench/run.py`` (``rootfs: rootfs.tar.xz``, a
bookworm minbase with its dpkg database) plus an application layer (``copy: app/``, the quick
small corpus: a few thousand files, all of which the SBOM lists with their sha256). Three
variants, each run once per repetition round-robin, medians shown:

- ``none``: ``--no-attestations``;
- ``provenance``: the default (the in-toto statement attached as a referrer);
- ``sbom``: ``--sbom`` (provenance, an SPDX and a CycloneDX document).

Each is measured ``cold`` (an empty ``--cache-dir``: every layer built, every layer scanned) and
``warm`` (the same build again with that cache dir: layers are hits, and so are the SBOM scans,
kept under the layer's diff_id). The cost of provenance is ``provenance - none``, that of the SBOM
``sbom - provenance``, each as a ratio of ``none``. The issue's rule: an SBOM goes on by default
only if it costs under 5% of the cold Debian build.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpora import bench_root, prepare
from measure import loadavg, rmtree, run_timed
from remote_cache import make_context

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"none": ("--no-attestations",), "provenance": (), "sbom": ("--sbom",)}
GOAL = 0.05


def log(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def build(ctx: Path, work: Path, name: str, cache: Path, args: tuple[str, ...]) -> float:
    out = work / f"{name}-out"
    rmtree(out)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(work / "home")}
    done = run_timed([sys.executable, "-m", "builder", str(ctx / "recipe.yaml"), "-o", str(out), "-q",
                      "--cache-dir", str(cache), *args], env=env)
    if done.returncode != 0:
        raise RuntimeError(f"pybuild {name} failed: {done.tail()}")
    return done.seconds


def measure(repeat: int, quick: bool) -> dict[str, Any]:
    base = bench_root() / ("quick" if quick else "full")
    ctx = make_context(base, quick)
    work = base / "attestations-work"
    rmtree(work)
    work.mkdir(parents=True)
    times: dict[str, list[float]] = {f"{v}-{k}": [] for v in VARIANTS for k in ("cold", "warm")}
    for rep in range(repeat):
        for variant, args in VARIANTS.items():
            cache = work / f"cache-{variant}"
            rmtree(cache)
            times[f"{variant}-cold"].append(build(ctx, work, variant, cache, args))
            times[f"{variant}-warm"].append(build(ctx, work, variant, cache, args))
        log(f"repetition {rep + 1}/{repeat}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
    medians = {k: statistics.median(v) for k, v in times.items()}
    costs = {}
    for kind in ("cold", "warm"):
        none = medians[f"none-{kind}"]
        costs[f"provenance-{kind}"] = (medians[f"provenance-{kind}"] - none) / none
        costs[f"sbom-{kind}"] = (medians[f"sbom-{kind}"] - medians[f"provenance-{kind}"]) / none
    return {"runs": times, "median_seconds": medians, "cost_ratio": costs, "loadavg": loadavg(),
            "cpus": os.cpu_count(), "quick": quick}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="few-MB synthetic corpora (the smoke test)")
    parser.add_argument("--json", type=Path, help="write every run's time here")
    args = parser.parse_args()
    prepare("debian", args.quick, log)
    results = measure(args.repeat, args.quick)
    print(f"{'variant':<12} {'cold s':>8} {'warm s':>8}")
    for variant in VARIANTS:
        print(f"{variant:<12} {results['median_seconds'][variant + '-cold']:>8.2f} "
              f"{results['median_seconds'][variant + '-warm']:>8.2f}")
    costs = results["cost_ratio"]
    print(f"provenance costs {costs['provenance-cold']:+.1%} of a cold build, {costs['provenance-warm']:+.1%} warm")
    print(f"the SBOM costs {costs['sbom-cold']:+.1%} of a cold build, {costs['sbom-warm']:+.1%} warm")
    verdict = "on by default" if costs["sbom-cold"] < GOAL else "opt-in (--sbom)"
    print(f"SBOM under {GOAL:.0%} of the cold build: {'PASS' if costs['sbom-cold'] < GOAL else 'FAIL'}"
          f" -> {verdict}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
