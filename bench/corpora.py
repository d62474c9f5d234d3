"""The benchmark's inputs, made once and kept under ``$PYBUILD_BENCH_CACHE`` (default /var/tmp/pybuild-bench).

Three corpora, each a directory (what ``copy:``, umoci and Buildah read):

- ``debian``: a Debian bookworm minbase root filesystem, as ``rootfs.tar.xz`` *and* extracted
  (``tar --numeric-owner -xpf``) into ``rootfs/``. The tarball comes from the test suite's cache
  (``$PYBUILD_TEST_CACHE``, default /tmp/pybuild-test-cache) when it is there, else from
  ``recipes/debian/make-rootfs.sh`` (debootstrap: root and the network), else it is a synthetic
  tree of the same shape (~121 MB, ~6.7k entries, the real size distribution of its files,
  text-like and binary-like content).
- ``small``: 50,000 files, ~260 MB, log-normal sizes (median ~2 kB), in 500 directories.
- ``big``: 4 files, 1 GiB in all.

Content is deterministic: files are cut from two seeded pools, word-like text (Zipf-distributed
pseudo-words, punctuation, indentation: gzip -6 gets ~3x) and binary-like bytes (runs of random
bytes, skewed "code-like" bytes, zero padding, repeated records: ~1.6x), mixed per file. Pieces
are 4-64 kB at random offsets of 32 MiB pools, so gzip's 32 kB window finds no cross-file
repeats and zstd's 2 MB window finds few. ``quick`` versions are a few MB each.

A corpus is complete when its ``.complete`` file (written last) matches the spec it was made
from; anything else is removed and made again.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

REPO = Path(__file__).resolve().parents[1]
GENERATOR_VERSION = 1
MARKER = ".complete"

# File size quantiles (bytes) of Debian bookworm minbase's 5,237 regular files.
DEBIAN_QUANTILES: tuple[tuple[float, int], ...] = (
    (0.0, 1), (0.05, 126), (0.1, 282), (0.2, 621), (0.3, 938), (0.4, 1474), (0.5, 2118), (0.6, 3186),
    (0.7, 7943), (0.8, 18680), (0.9, 43984), (0.95, 85008), (0.98, 181105), (0.99, 330619),
    (0.995, 457271), (0.999, 1843792), (1.0, 3804464),
)


@dataclass(frozen=True)
class Spec:
    """How big a corpus is; part of its completion marker."""

    name: str
    files: int
    total_bytes: int
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    pool_bytes: int = 32 << 20
    seed: int = 1


FULL = {
    "debian": Spec("debian", files=5235, total_bytes=121_000_000, dirs=785, symlinks=646, hardlinks=2, seed=11),
    "small": Spec("small", files=50_000, total_bytes=260_000_000, dirs=500, seed=12),
    "big": Spec("big", files=4, total_bytes=1 << 30, seed=13),
}
QUICK = {
    "debian": Spec("debian", files=200, total_bytes=3_000_000, dirs=40, symlinks=25, hardlinks=2,
                   pool_bytes=1 << 20, seed=11),
    "small": Spec("small", files=1000, total_bytes=4_000_000, dirs=20, pool_bytes=1 << 20, seed=12),
    "big": Spec("big", files=4, total_bytes=8 << 20, pool_bytes=1 << 20, seed=13),
}


@dataclass(frozen=True)
class Corpus:
    """A made corpus: ``context`` is what ``--context`` points at; ``tree`` the directory to pack."""

    name: str
    context: Path
    tree: Path
    tarball: Path | None
    origin: str
    """Where the content came from: test-cache, debootstrap or synthetic."""
    entries: int
    bytes: int

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"origin": self.origin, "dir": str(self.tree), "entries": self.entries,
                               "bytes": self.bytes}
        if self.tarball is not None:
            out["tarball"] = str(self.tarball)
            out["tarball_bytes"] = self.tarball.stat().st_size
        return out


Log = Callable[[str], None]


def bench_root() -> Path:
    return Path(os.environ.get("PYBUILD_BENCH_CACHE") or "/var/tmp/pybuild-bench")


def prepare(name: str, quick: bool, log: Log) -> Corpus:
    """The corpus ``name`` (debian, small, big), made first if it is missing or incomplete."""
    spec = (QUICK if quick else FULL)[name]
    base = bench_root() / ("quick" if quick else "full") / name
    marker = base / MARKER
    wanted: dict[str, Any] = {"generator": GENERATOR_VERSION, "spec": asdict(spec)}
    done: dict[str, Any] | None = None
    if marker.is_file():
        try:
            done = json.loads(marker.read_text())
        except ValueError:
            done = None
    if done is None or {k: done.get(k) for k in wanted} != wanted:
        if base.exists():
            log(f"{name}: removing an incomplete or outdated corpus in {base}")
            shutil.rmtree(base)
        base.mkdir(parents=True)
        log(f"{name}: making the corpus in {base} (once)")
        origin = _make(name, spec, base, quick, log)
        marker.write_text(json.dumps({**wanted, "origin": origin}) + "\n")
        done = {"origin": origin}
    tree = base / ("rootfs" if name == "debian" else "files")
    tarball = base / "rootfs.tar.xz" if name == "debian" else None
    entries, size = _count(tree)
    return Corpus(name, base, tree, tarball, str(done.get("origin", "synthetic")), entries, size)


def _count(tree: Path) -> tuple[int, int]:
    """Entries below ``tree`` and the bytes of its non-directories."""
    entries = size = 0
    for root, dirs, files in os.walk(tree):
        for n in dirs + files:
            entries += 1
            st = os.lstat(os.path.join(root, n))
            if not stat.S_ISDIR(st.st_mode):
                size += st.st_size
    return entries, size


def _make(name: str, spec: Spec, base: Path, quick: bool, log: Log) -> str:
    if name == "debian":
        return _make_debian(spec, base, quick, log)
    content = Content(spec.seed, spec.pool_bytes)
    if name == "small":
        _make_small(spec, base / "files", content)
    else:
        _make_big(spec, base / "files", content)
    return "synthetic"


# --- content -------------------------------------------------------------------------------------

_LETTERS = "etaoinshrdlcumwfgypbvkjxqz"
_LETTER_WEIGHTS = (12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8, 2.4, 2.4, 2.2, 2.0,
                   2.0, 1.9, 1.5, 1.0, 0.8, 0.2, 0.2, 0.1, 0.1)
_TOKENS = ("\n", "\n", "\n", "\n  ", "\n    ", "\n\t", ",", ".", ":", "=", "(", ")", "{", "}", "/", "-", "#",
           "\"", "_", "0", "1", "2", "10", "255", "2023", "0x00", "NULL", "return", "if", "the", "of", "and")


class Content:
    """Seeded pools that file contents are cut from (see the module docstring)."""

    def __init__(self, seed: int, pool_bytes: int) -> None:
        rng = random.Random(seed)
        self.text = memoryview(_text_pool(rng, pool_bytes))
        self.binary = memoryview(_binary_pool(rng, pool_bytes))

    def write(self, out: BinaryIO, rng: random.Random, size: int, text_share: float) -> None:
        """``size`` bytes, each piece text with probability ``text_share``, else binary-like."""
        left = size
        while left > 0:
            n = min(left, rng.randint(4096, 65536))
            pool = self.text if rng.random() < text_share else self.binary
            offset = rng.randrange(len(pool) - n + 1)
            out.write(pool[offset:offset + n])
            left -= n


def _text_pool(rng: random.Random, size: int) -> bytes:
    vocab = ["".join(rng.choices(_LETTERS, weights=_LETTER_WEIGHTS, k=rng.choice((2, 3, 3, 4, 4, 5, 5, 6, 7, 8, 9,
                                                                                    11, 13))))
             for _ in range(4000)]
    for i, tok in enumerate(_TOKENS):  # frequent tokens among the first (most likely) ranks
        vocab.insert(3 * i, tok)
    cum, acc = [], 0.0
    for rank in range(len(vocab)):
        acc += 1.0 / (rank + 2)
        cum.append(acc)
    parts: list[str] = []
    have = 0
    while have < size:
        chunk = " ".join(rng.choices(vocab, cum_weights=cum, k=65536)).replace(" \n", "\n")
        parts.append(chunk)
        have += len(chunk)
    return "".join(parts).encode()[:size]


def _binary_pool(rng: random.Random, size: int) -> bytes:
    # Byte frequencies of machine code are skewed: many values map to 0x00, 0xff and a few opcodes.
    skew = bytes(([0x00] * 70 + [0xFF] * 20 + [0x48, 0x89, 0x8B, 0xE8, 0x0F, 0x85, 0x24, 0x44] * 8
                  + list(range(0x100)))[:256])
    out = bytearray()
    while len(out) < size:
        r, n = rng.random(), rng.randint(64, 4096)
        if r < 0.35:
            out += rng.randbytes(n)  # compressed data, keys, hashes
        elif r < 0.75:
            out += rng.randbytes(n).translate(skew)  # code-like
        elif r < 0.85:
            out += bytes(n)  # alignment padding
        else:
            record = rng.randbytes(rng.randint(8, 32))  # tables: a record with a changing field
            for i in range(n // len(record) + 1):
                out += record[:-2] + (i & 0xFFFF).to_bytes(2, "little")
    return bytes(out[:size])


def _write_file(path: Path, content: Content, rng: random.Random, size: int, text_share: float,
                mode: int = 0o644) -> None:
    with open(path, "wb") as f:
        content.write(f, rng, size, text_share)
    os.chmod(path, mode)


# --- small and big -------------------------------------------------------------------------------

def _lognormal_sizes(rng: random.Random, count: int, total: int, median: float, sigma: float,
                     cap: int) -> list[int]:
    raw = [min(cap, rng.lognormvariate(math.log(median), sigma)) for _ in range(count)]
    scale = total / sum(raw)
    sizes = [max(0, min(cap, int(s * scale))) for s in raw]
    sizes[-1] += total - sum(sizes)  # exactly ``total``
    return sizes


def _make_small(spec: Spec, root: Path, content: Content) -> None:
    rng = random.Random(spec.seed)
    sizes = _lognormal_sizes(rng, spec.files, spec.total_bytes, 2048, 1.3, 4 << 20)
    top = max(1, int(math.sqrt(spec.dirs)))
    dirs = [root / f"d{i % top:02d}" / f"s{i // top:02d}" for i in range(spec.dirs)]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(sizes):
        text = rng.random() < 0.6
        name = f"f{i:06d}." + ("txt" if text else "bin")
        _write_file(dirs[i % len(dirs)] / name, content, rng, size, 0.9 if text else 0.15)


def _make_big(spec: Spec, root: Path, content: Content) -> None:
    rng = random.Random(spec.seed)
    root.mkdir(parents=True)
    each = spec.total_bytes // spec.files
    for i in range(spec.files):
        size = each if i < spec.files - 1 else spec.total_bytes - each * (spec.files - 1)
        _write_file(root / f"big{i}.img", content, rng, size, 0.5)


# --- debian --------------------------------------------------------------------------------------

def _make_debian(spec: Spec, base: Path, quick: bool, log: Log) -> str:
    tarball = base / "rootfs.tar.xz"
    origin = ""
    cached = Path(os.environ.get("PYBUILD_TEST_CACHE") or "/tmp/pybuild-test-cache") / \
        "debian-bookworm-minbase" / "rootfs.tar.xz"
    if not quick and cached.is_file():
        log(f"debian: using the test suite's Debian tarball {cached}")
        shutil.copyfile(cached, tarball)
        origin = "test-cache"
    elif not quick and os.geteuid() == 0 and (shutil.which("debootstrap") or Path("/usr/sbin/debootstrap").exists()):
        log("debian: running recipes/debian/make-rootfs.sh (debootstrap; this takes a few minutes)")
        proc = subprocess.run([str(REPO / "recipes" / "debian" / "make-rootfs.sh"), str(tarball)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
        if proc.returncode == 0 and tarball.is_file():
            origin = "debootstrap"
        else:
            log(f"debian: debootstrap failed ({proc.stderr.strip().splitlines()[-1:] or proc.returncode}); "
                "using a synthetic tree of the same shape")
    if not origin:
        tree = base / "synthetic"
        _make_debian_like(spec, tree, Content(spec.seed, spec.pool_bytes))
        env = {**os.environ, "XZ_OPT": "-6 -T0"}
        subprocess.run(["tar", "--numeric-owner", "--owner=0", "--group=0", "-C", str(tree), "-cJf",
                        str(tarball), "."], check=True, env=env)
        shutil.rmtree(tree)
        origin = "synthetic"
    rootfs = base / "rootfs"
    rootfs.mkdir()
    proc = subprocess.run(["tar", "--numeric-owner", "-xpf", str(tarball), "-C", str(rootfs)],
                          stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        if os.geteuid() == 0:
            raise RuntimeError(f"tar -xpf {tarball}: {proc.stderr.strip()}")
        log("debian: tar could not make everything as non-root (device nodes); continuing without them")
    return origin


_DEBIAN_TOP = ("bin", "boot", "dev", "etc", "home", "lib", "lib64", "media", "mnt", "opt", "proc", "root",
               "run", "sbin", "srv", "sys", "tmp", "usr", "var")
# Where files live, how much of them is text, and their relative weight (roughly Debian minbase's).
_DEBIAN_AREAS = (
    ("usr/bin", 0.1, 0.06, 0o755), ("usr/sbin", 0.1, 0.03, 0o755), ("usr/lib/x86_64-linux-gnu", 0.05, 0.10, 0o644),
    ("usr/lib/x86_64-linux-gnu/perl-base", 0.9, 0.12, 0o644), ("usr/share/doc", 0.95, 0.15, 0o644),
    ("usr/share/perl5", 0.9, 0.06, 0o644), ("usr/share/locale", 0.3, 0.08, 0o644), ("usr/share/zoneinfo", 0.2, 0.12, 0o644),
    ("usr/share/common-licenses", 0.95, 0.01, 0o644), ("usr/lib/apt", 0.2, 0.02, 0o755), ("etc", 0.95, 0.07, 0o644),
    ("var/lib/dpkg/info", 0.95, 0.14, 0o644), ("usr/share/man", 0.8, 0.02, 0o644), ("lib/systemd", 0.3, 0.02, 0o644),
)


def _debian_size(rng: random.Random) -> int:
    u = rng.random()
    for (q0, s0), (q1, s1) in itertools.pairwise(DEBIAN_QUANTILES):
        if u <= q1:
            frac = (u - q0) / (q1 - q0)
            return int(math.exp(math.log(s0) + frac * (math.log(s1) - math.log(s0))))
    return DEBIAN_QUANTILES[-1][1]


def static_shell() -> Path | None:
    """A statically linked busybox, so a synthetic rootfs can run ``run:`` steps."""
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        path = Path(candidate)
        try:
            head = path.read_bytes()[:8192]
        except OSError:
            continue
        if head.startswith(b"\x7fELF") and b"ld-linux" not in head and b"/lib/ld-" not in head:
            return path
    return None


def _make_debian_like(spec: Spec, root: Path, content: Content) -> None:
    rng = random.Random(spec.seed)
    for top in _DEBIAN_TOP:
        (root / top).mkdir(parents=True)
    os.chmod(root / "tmp", 0o1777)
    dirs: list[tuple[Path, float, float, int]] = []
    for area, text, weight, mode in _DEBIAN_AREAS:
        (root / area).mkdir(parents=True, exist_ok=True)
        dirs.append((root / area, text, weight, mode))
    made = sum(1 for _ in root.rglob("*"))
    while made < spec.dirs:  # nested package directories under the areas
        parent, text, weight, mode = rng.choice(dirs)
        child = parent / f"{rng.choice(_LETTERS)}{rng.choice(_LETTERS)}{rng.randrange(100)}"
        if child.exists():
            continue
        child.mkdir()
        dirs.append((child, text, weight / 2, mode))
        made += 1
    sizes = [_debian_size(rng) for _ in range(spec.files)]
    scale = spec.total_bytes / sum(sizes)
    files: list[Path] = []
    shell = static_shell()
    if shell is not None:
        shutil.copyfile(shell, root / "bin" / "busybox")
        os.chmod(root / "bin" / "busybox", 0o755)
        os.symlink("busybox", root / "bin" / "sh")
    weights = [w for _, _, w, _ in dirs]
    for i, raw in enumerate(sizes):
        parent, text, _, mode = rng.choices(dirs, weights=weights)[0]
        path = parent / f"f{i:05d}"
        _write_file(path, content, rng, int(raw * scale), text, mode)
        files.append(path)
    for i in range(spec.symlinks):
        target = rng.choice(files)
        link = target.parent / f"l{i:05d}"
        os.symlink(os.path.relpath(target, link.parent) if i % 3 else "/" + str(target.relative_to(root)), link)
    for i in range(spec.hardlinks):
        target = rng.choice(files)
        os.link(target, target.parent / f"h{i:02d}")

