"""The registry cache's benchmark: a fresh CI runner with ``--cache-from`` against a cold build, a
local warm rebuild, and Buildah's registry cache on the same work.

    python3 bench/remote_cache.py [--repeat 3] [--quick] [--json results.json] [--no-peers]

Not a test. The work is the Debian corpus of ``bench/run.py`` (``rootfs: rootfs.tar.xz``) plus an
application layer (``copy: app/``, 2,000 files of the small corpus's shape). A ``docker-registry``
(Debian's package) is started on 127.0.0.1 with its storage in the bench cache. Measured, as
medians of ``--repeat`` runs:

- ``cold``: pybuild with an empty ``--cache-dir`` and no registry cache;
- ``warm``: the same build again with the same ``--cache-dir`` (every step a local hit);
- ``remote``: after one ``--cache-to`` build by "runner A", "runner B" with an empty
  ``--cache-dir`` and ``--cache-from`` (every step a registry hit: it downloads the layers);
- ``transfer``: the time to download those layers' bytes alone (a plain HTTP GET of each blob);
- ``buildah cold`` and ``buildah remote``: ``buildah build --layers --cache-to`` on the
  equivalent Containerfile (``FROM scratch``, ``ADD rootfs.tar.xz /``, ``COPY app/ /opt/app/``),
  then with a fresh storage ``--cache-from`` the same repository (vfs driver, private storage).

Goals (printed with PASS/FAIL): ``remote`` within 2x of ``warm`` plus ``transfer``, and faster
than ``buildah remote``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Self

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpora import bench_root, prepare
from measure import rmtree, run_timed

REPO = Path(__file__).resolve().parents[1]
RECIPE = """\
version: 1
tag: app
steps:
  - rootfs: rootfs.tar.xz
  - copy: app/
    to: /opt/app/
"""
CONTAINERFILE = "FROM scratch\nADD rootfs.tar.xz /\nCOPY app/ /opt/app/\n"


def log(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        rmtree(self.root)
        self.root.mkdir(parents=True)
        config = self.root / "config.yml"
        config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {self.root / 'data'}\n"
                          f"  delete:\n    enabled: true\nhttp:\n  addr: {self.host}\n")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("docker-registry did not start")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def make_context(base: Path, quick: bool) -> Path:
    debian = prepare("debian", quick, log)
    assert debian.tarball is not None
    ctx = base / "remote-cache-ctx"
    if not (ctx / "recipe.yaml").is_file():
        rmtree(ctx)
        (ctx / "app").mkdir(parents=True)
        shutil.copyfile(debian.tarball, ctx / "rootfs.tar.xz")
        small = prepare("small", True, log)  # a few MB of small files: an application's shape
        shutil.copytree(small.tree, ctx / "app", dirs_exist_ok=True)
        (ctx / "Containerfile").write_text(CONTAINERFILE)
        (ctx / "recipe.yaml").write_text(RECIPE)
    return ctx


def pybuild(ctx: Path, work: Path, name: str, *args: str) -> tuple[float, dict[str, Any]]:
    out, meta = work / f"{name}-out", work / f"{name}-meta.json"
    rmtree(out)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(work / f"{name}-home")}
    done = run_timed([sys.executable, "-m", "builder", str(ctx / "recipe.yaml"), "-o", str(out), "-q",
                      "--metadata-file", str(meta), *args], env=env)
    if done.returncode != 0:
        raise RuntimeError(f"pybuild {name} failed: {done.tail()}")
    return done.seconds, json.loads(meta.read_text())


def transfer_seconds(registry: LocalRegistry, digests: list[str], repo: str) -> float:
    start = time.monotonic()
    for digest in digests:
        with urllib.request.urlopen(f"http://{registry.host}/v2/{repo}/blobs/{digest}", timeout=60) as resp:
            while resp.read(1 << 20):
                pass
    return time.monotonic() - start


def buildah(ctx: Path, work: Path, ref: str, *args: str) -> float:
    storage = Path(tempfile.mkdtemp(prefix="buildah-", dir=work))
    try:
        argv = ["buildah", "--storage-driver", "vfs", "--root", str(storage / "root"), "--runroot",
                str(storage / "run"), "build", "--layers", "--tls-verify=false", "-f", str(ctx / "Containerfile"),
                "-t", "bench-app", *args, str(ctx)]
        done = run_timed(argv)
        if done.returncode != 0:
            raise RuntimeError(f"buildah failed: {done.tail()}")
        return done.seconds
    finally:
        subprocess.run(["rm", "-rf", str(storage)], check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-peers", action="store_true")
    args = parser.parse_args(argv)
    base = bench_root() / ("quick" if args.quick else "full")
    work = base / "remote-cache-work"
    rmtree(work)
    work.mkdir(parents=True)
    ctx = make_context(base, args.quick)
    results: dict[str, Any] = {"cold_s": [], "warm_s": [], "remote_s": [], "transfer_s": [], "buildah_cold_s": [],
                               "buildah_remote_s": []}
    with LocalRegistry(work / "registry") as registry:
        for n in range(args.repeat):
            repo = f"bench/cache{n}"
            ref = f"{registry.host}/{repo}"
            for p in ("cold-cache", "a-cache", "b-cache"):
                rmtree(work / p)
            seconds, _ = pybuild(ctx, work, "cold", "--cache-dir", str(work / "cold-cache"))
            results["cold_s"].append(seconds)
            seconds, meta = pybuild(ctx, work, "cold", "--cache-dir", str(work / "cold-cache"))
            assert meta["cache"]["misses"] == 0, meta["cache"]
            results["warm_s"].append(seconds)
            pybuild(ctx, work, "a", "--cache-dir", str(work / "a-cache"), "--cache-to", ref)
            seconds, meta = pybuild(ctx, work, "b", "--cache-dir", str(work / "b-cache"), "--cache-from", ref)
            assert meta["cache"]["remote"]["misses"] == 0, meta["cache"]
            results["remote_s"].append(seconds)
            results["transfer_s"].append(transfer_seconds(registry, [s["layer"] for s in meta["steps"] if s["layer"]],
                                                          repo))
            if not args.no_peers and shutil.which("buildah"):
                bref = f"{registry.host}/bench/buildah{n}"
                results["buildah_cold_s"].append(buildah(ctx, work, bref, "--cache-to", bref))
                results["buildah_remote_s"].append(buildah(ctx, work, bref, "--cache-from", bref))
            log(f"round {n + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in results.items() if v))
    med = {k.removesuffix("_s"): round(statistics.median(v), 3) for k, v in results.items() if v}
    goal = med["warm"] + med["transfer"]
    print(f"fresh runner, --cache-from: {med['remote']:.2f} s   cold: {med['cold']:.2f} s   "
          f"local warm: {med['warm']:.2f} s   transfer alone: {med['transfer']:.2f} s")
    print(f"{'PASS' if med['remote'] <= 2 * goal else 'FAIL'}: remote within 2x of warm + transfer "
          f"({med['remote']:.2f} <= {2 * goal:.2f})")
    if "buildah_remote" in med:
        print(f"buildah --layers: cold {med['buildah_cold']:.2f} s, fresh storage --cache-from "
              f"{med['buildah_remote']:.2f} s")
        print(f"{'PASS' if med['remote'] < med['buildah_remote'] else 'FAIL'}: faster than Buildah's remote cache")
    if args.json:
        args.json.write_text(json.dumps({"medians_s": med, "runs_s": results}, indent=2) + "\n")
    rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
