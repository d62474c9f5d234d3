"""Benchmark: wall time and peak memory of building one-layer images from rootfs tarballs.

Not a test: performance goals live here, measured side by side with reference pipelines
(``tar | gzip``, ``zstd -T2``) on the same input, so numbers are comparable on any machine.

    python bench/bench_build.py                     # generated inputs (small files, big files)
    python bench/bench_build.py --rootfs X.tar.xz   # also an existing rootfs tarball (e.g. Debian)

Each case prints median wall seconds over ``--repeat`` runs and the peak RSS of the build.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path


def make_small_files(path: Path, count: int) -> None:
    rng = random.Random(1)
    with tarfile.open(path, "w") as tf:
        for i in range(count):
            data = rng.randbytes(rng.randint(100, 10_000))
            ti = tarfile.TarInfo(f"d{i % 100:02d}/f{i:06d}")
            ti.size = len(data)
            tf.addfile(ti, __import__("io").BytesIO(data))


def make_big_files(path: Path, count: int, size: int) -> None:
    rng = random.Random(2)
    block = rng.randbytes(1 << 20)
    with tarfile.open(path, "w") as tf:
        for i in range(count):
            ti = tarfile.TarInfo(f"big{i}")
            ti.size = size
            reader, writer = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(reader)
                with os.fdopen(writer, "wb") as w:
                    left = size
                    while left:
                        n = min(left, len(block))
                        w.write(block[:n])  # half-compressible: random block, repeated
                        left -= n
                os._exit(0)
            os.close(writer)
            with os.fdopen(reader, "rb") as r:
                tf.addfile(ti, r)
            os.waitpid(pid, 0)


def timed(cmd: list[str], repeat: int, cleanup: Path | None = None) -> tuple[float, int]:
    times, peak = [], 0
    for _ in range(repeat):
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
        peak = max(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return statistics.median(times), peak


def bench_case(name: str, tarball: Path, work: Path, repeat: int) -> None:
    ctx = work / f"ctx-{name}"
    ctx.mkdir(exist_ok=True)
    link = ctx / ("rootfs" + "".join(tarball.suffixes[-2:]))
    if not link.exists():
        try:
            os.link(tarball, link)  # a symlink would lead out of the context, which is refused
        except OSError:
            shutil.copyfile(tarball, link)
    (ctx / "r.yaml").write_text(f"version: 1\nsteps:\n  - rootfs: {link.name}\n")
    print(f"\n{name}: {tarball.stat().st_size / 1e6:.1f} MB input")
    for comp in ("gzip", "zstd", "none"):
        out = work / f"out-{name}-{comp}"
        sec, rss = timed([sys.executable, "-m", "builder", str(ctx / "r.yaml"), "-o", str(out), "-q",
                          "--compression", comp], repeat, cleanup=out)
        print(f"  pybuild --compression {comp:5s} {sec:6.2f} s   peak RSS {rss / 1024:.0f} MB")
    if shutil.which("zstd") and tarball.suffix == ".tar":
        sec, _ = timed(["sh", "-c", f"gzip -6 -c {tarball} | sha256sum"], repeat)
        print(f"  reference: gzip -6 | sha256sum   {sec:6.2f} s")
        sec, _ = timed(["sh", "-c", f"zstd -3 -T2 -c {tarball} | sha256sum"], repeat)
        print(f"  reference: zstd -3 -T2 | sha256sum {sec:6.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--small-files", type=int, default=20_000)
    ap.add_argument("--big-mb", type=int, default=256)
    ap.add_argument("--rootfs", type=Path, action="append", default=[])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pybuild-bench-") as tmp:
        work = Path(tmp)
        small = work / "small.tar"
        make_small_files(small, args.small_files)
        bench_case("small-files", small, work, args.repeat)
        big = work / "big.tar"
        make_big_files(big, 4, args.big_mb * (1 << 20) // 4)
        bench_case("big-files", big, work, args.repeat)
        for rootfs in args.rootfs:
            bench_case(rootfs.name, rootfs, work, args.repeat)


if __name__ == "__main__":
    main()
