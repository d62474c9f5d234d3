"""Benchmark: cold build vs warm (fully cached) rebuild of a rootfs recipe, e.g. the Debian base.

    python bench/bench_cache.py --rootfs /path/to/rootfs.tar.xz [--recipe recipes/debian/debian.yaml]

Not a test: it prints the medians; the warm build must compress nothing (it checks the
metadata file's cache counts) and give the same digest.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build(recipe: Path, ctx: Path, out: Path, cache: Path, meta: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "builder", str(recipe), "-o", str(out), "-q", "--context", str(ctx),
                    "--cache-dir", str(cache), "--metadata-file", str(meta)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rootfs", type=Path, required=True, help="the tarball the recipe's rootfs step reads")
    ap.add_argument("--recipe", type=Path, default=REPO / "recipes" / "debian" / "debian.yaml")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pybuild-bench-cache-") as tmp:
        work = Path(tmp)
        ctx = work / "ctx"
        ctx.mkdir()
        shutil.copy(args.rootfs, ctx / "rootfs.tar.xz")
        colds, warms = [], []
        for n in range(args.repeat):
            cache = work / f"cache{n}"
            colds.append(build(args.recipe, ctx, work / "cold", cache, work / "cold.json"))
            warms.append(build(args.recipe, ctx, work / "warm", cache, work / "warm.json"))
            cold, warm = (json.loads((work / f"{k}.json").read_text()) for k in ("cold", "warm"))
            assert warm["cache"]["misses"] == 0 and warm["digest"] == cold["digest"], (cold["cache"], warm["cache"])
        print(f"{args.recipe.name} from {args.rootfs.name} ({args.rootfs.stat().st_size / 1e6:.1f} MB)")
        print(f"  cold build   {statistics.median(colds):6.2f} s (median of {args.repeat})")
        print(f"  warm rebuild {statistics.median(warms):6.2f} s (all steps cached, nothing compressed)")


if __name__ == "__main__":
    main()
