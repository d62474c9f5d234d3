"""Every case of the hostile corpus (``corpus.py``) through every path that reads archives.

For each case, in its own directory nested a few levels below ``tmp_path`` (so that a name that
climbs a few levels still lands somewhere we watch), with a sentinel tree beside it:

1. ``rootfs:`` via the real CLI (``python -m builder recipe -o OUT``);
2. the archive (gzip'd; bombs as they are) as the single layer of a hand-written OCI layout,
   built ``from: oci:base:hostile`` with a ``write:`` step (``fs/scan.py``), and a second
   ``write:`` through the archive's symlinks when the case names one;
3. ``pybuild unpack`` of that base (``fs/apply.py``): contained, or a clean error;
4. a ``run:`` step on the base with a busybox layer under the hostile one (the working rootfs,
   ``fs/apply.py`` again, plus the sandbox's mount points), unless the metadata scan of path 2
   refused the layer (every step starts with that scan, so no step would get further);
5. the layer cache: path 1 built with ``--cache-dir``, the cached blob corrupted in place, then
   rebuilt: same digest as the first build and blobs that match their names, never the
   corrupted bytes. A refused archive must leave no cache entry.

Outcome rule, every CLI run: exit 0 and a result that passes ``oci-check --strict`` (run
in-process; the base layers pybuild copies byte for byte are our hostile inputs: their digests
are checked, their content is not scanned), or exit 1 with exactly one ``pybuild: error:`` line
naming the archive or the layer; never a traceback, never exit 2 or a signal; peak RSS (wait4)
below 300 MB; at most 60 s. Afterwards the sentinel tree, the case's inputs, the host's
``/etc/passwd`` and ``/etc/shadow`` (hashes) and the listing of ``/etc`` are unchanged, nothing
new exists outside the expected outputs (no escaped file, no left-over work directory), and no
file of a bundle shares an inode with a host file.

The bombs of the matrix hold 512 MiB of zeros (each path inflates them, and zlib inflates zeros
at ~250 MB/s); two 2 GiB bombs go through the rootfs step once each. The two independent chains
of a case (paths 1+5, paths 2-4) run side by side. ``PYBUILD_HOSTILE_REPORT=FILE`` writes the
observed outcome of every case and path, and every error line, as markdown.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import gzip
import hashlib
import importlib.machinery
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from builder.image import Image, LayerBlob
from builder.layer.decompress import open_decompressed
from builder.layer.tarstream import tar_members
from builder.layout.write import write_layout
from builder.oci.canonical import canonical_json
from builder.oci.config import append_layer, empty_config, rfc3339
from builder.oci.descriptor import Descriptor
from builder.oci.digest import Digest
from builder.oci.manifest import image_manifest
from builder.oci.mediatypes import MediaType
from builder.oci.platform import Platform

from . import corpus
from .corpus import BIG_BOMBS, BY_ID, CASES, EITHER, OK, REFUSED, Case

REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_RSS_KB = 300 * 1024
TIMEOUT = 60.0  # any single CLI run; a bomb must stream through (or be refused) well within it
HOST_FILES = ("/etc/passwd", "/etc/shadow")
ARCHIVE = "hostile.tar"
OUTPUTS = ("out-rootfs", "out-cached", "out-base", "out-run", "bundle", "cache")
MEDIA = {"gzip": MediaType.OCI_LAYER_GZIP, "zstd": MediaType.OCI_LAYER_ZSTD}

RESULTS: dict[str, dict[str, str]] = {}  # case -> path -> outcome, for PYBUILD_HOSTILE_REPORT
ERRORS: dict[str, dict[str, str]] = {}  # case -> path -> the error line, for the same


# --------------------------------------------------------------------------------------------
# running the CLI: exit status, output, peak RSS, wall time


@dataclass
class Result:
    args: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str
    max_rss_kb: int
    seconds: float

    def describe(self) -> str:
        return (f"$ pybuild {' '.join(self.args)}\nexit {self.rc}, {self.max_rss_kb // 1024} MB peak, "
                f"{self.seconds:.1f}s\n--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}")


def pybuild(*args: str | os.PathLike[str], cwd: Path, timeout: float = TIMEOUT) -> Result:
    """``python -m builder ARGS``, waited for with ``wait4`` to learn the child's peak RSS."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    argv = tuple(map(str, args))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "builder", *argv], cwd=cwd, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > timeout:
                proc.kill()
                os.wait4(proc.pid, 0)
                proc.returncode = -9
                pytest.fail(f"pybuild {' '.join(argv)}: still running after {timeout:.0f}s")
            time.sleep(0.01)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        seconds = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        return Result(argv, proc.returncode, out.read().decode(errors="replace"),
                      err.read().decode(errors="replace"), usage.ru_maxrss, seconds)


def outcome(result: Result, expect: str, names: tuple[str, ...]) -> str:
    """Check the outcome rule (see the module docstring); return ``ok`` or ``refused``."""
    assert "Traceback" not in result.stderr, result.describe()
    assert result.rc in (0, 1), result.describe()
    assert result.max_rss_kb < MAX_RSS_KB, result.describe()
    if result.rc == 0:
        got = OK
    else:
        errors = [line for line in result.stderr.splitlines() if line.startswith("pybuild: error:")]
        assert result.stderr.startswith("pybuild: error: ") and len(errors) == 1, result.describe()
        assert any(name in errors[0] for name in names), f"the error names none of {names}\n{result.describe()}"
        got = REFUSED
    assert expect in (EITHER, got), f"expected {expect}, got {got}\n{result.describe()}"
    return got


def digest_of(result: Result) -> str:
    return result.stdout.strip().splitlines()[-1]


def find_oci_check() -> Path | None:
    """``shared/tools/oci-check`` beside the repository, or $OCI_CHECK (as ``tests/conftest.py`` finds it)."""
    if os.environ.get("OCI_CHECK"):
        return Path(os.environ["OCI_CHECK"])
    return next((p for p in (REPO_ROOT.parent / "shared/tools/oci-check", Path.cwd() / "../shared/tools/oci-check")
                 if p.is_file()), None)


_LOAD_LOCK = threading.Lock()


@functools.cache
def oci_check_module() -> types.ModuleType:
    """The oci-check script loaded as a module: run in-process it costs no interpreter start."""
    tool = find_oci_check()
    assert tool is not None, "oci-check not found (expected at <repo>/../shared/tools/oci-check, or set $OCI_CHECK)"
    loader = importlib.machinery.SourceFileLoader("pybuild_hostile_oci_check", str(tool))
    module = types.ModuleType(loader.name)
    module.__file__ = str(tool)
    loader.exec_module(module)
    return module


def oci_check(layout: Path, passed_through: dict[str, tuple[str, Digest]]) -> list[str]:
    """``oci-check --strict`` on ``layout``: its failures. The base layers pybuild copied byte for byte
    (``passed_through``: blob hex -> compression, diff_id) are our hostile inputs, not pybuild's output:
    their digests are still verified, their tar streams are not scanned."""
    with _LOAD_LOCK:
        module = oci_check_module()

    class Check(module.Checker):  # type: ignore[misc,name-defined]  # a module loaded at run time
        def scan_layer(self, path: str, where: str, diff_alg: str) -> dict[str, object]:
            known = passed_through.get(os.path.basename(path))
            if known is None:
                return super().scan_layer(path, where, diff_alg)  # type: ignore[no-any-return]
            return {"compression": known[0], "counts": {}, "diff_id": str(known[1])}

    checker = Check(str(layout), argparse.Namespace(strict=True, json=True, quiet=True, ref=None))
    checker.run()
    return [f"{f['where']}: {f['what']}" for f in checker.failures]


def assert_valid(layout: Path, passed_through: dict[str, tuple[str, Digest]] | None = None) -> None:
    failures = oci_check(layout, passed_through or {})
    assert not failures, "oci-check --strict:\n" + "\n".join(failures)


def assert_blobs_match_names(layout: Path) -> None:
    for blob in (layout / "blobs/sha256").iterdir():
        with open(blob, "rb") as f:
            assert hashlib.file_digest(f, "sha256").hexdigest() == blob.name, f"{blob} is corrupt"


# --------------------------------------------------------------------------------------------
# what must not change


def host_state() -> dict[str, object]:
    state: dict[str, object] = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest()
                                for p in HOST_FILES if os.path.exists(p)}
    state["/etc listing"] = sorted(os.listdir("/etc"))
    return state


def tree_state(top: Path, skip: frozenset[str] = frozenset()) -> dict[str, tuple[object, ...]]:
    """Every path under ``top`` (fd-based, so paths beyond PATH_MAX too): type, mode, owner, inode,
    and for files size, mtime and content digest, for symlinks the target. Directory times are left
    out (creating our outputs changes the job directory's); ``skip`` names paths not to enter."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames, dirfd in os.fwalk(top):
        rel_dir = os.path.relpath(dirpath, top)
        dirnames[:] = [n for n in dirnames if os.path.normpath(f"{rel_dir}/{n}") not in skip]
        for name in [*dirnames, *filenames]:
            rel = os.path.normpath(f"{rel_dir}/{name}")
            if rel in skip:
                continue
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            rec: tuple[object, ...] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                                       st.st_ino)
            if stat.S_ISREG(st.st_mode):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dirfd)
                with os.fdopen(fd, "rb") as f:
                    rec += (st.st_size, st.st_mtime_ns, hashlib.file_digest(f, "sha256").hexdigest())
            elif stat.S_ISLNK(st.st_mode):
                rec += (os.readlink(name, dir_fd=dirfd),)
            out[rel] = rec
    return out


def inodes(top: Path) -> set[tuple[int, int]]:
    found = set()
    for _, _, filenames, dirfd in os.fwalk(top):
        for name in filenames:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            found.add((st.st_dev, st.st_ino))
    return found


# --------------------------------------------------------------------------------------------
# inputs


@dataclass(frozen=True)
class Layer:
    blob: bytes
    media_type: str
    diff_id: Digest
    size: int  # uncompressed

    @property
    def digest(self) -> Digest:
        return Digest.of(self.blob)

    @property
    def compression(self) -> str:
        names: dict[str, str] = {MediaType.OCI_LAYER_GZIP: "gzip", MediaType.OCI_LAYER_ZSTD: "zstd"}
        return names.get(self.media_type, "uncompressed")


@functools.cache
def case_bytes(case_id: str) -> bytes:
    return BY_ID[case_id].build()


@functools.cache
def layer_of(case_id: str) -> Layer:
    """The case as a layer blob: gzip'd, except bombs, which are compressed already."""
    case, data = BY_ID[case_id], case_bytes(case_id)
    if case.stream is not None:
        return Layer(data, MEDIA[case.compression], Digest("sha256", case.stream.sha256()), case.stream.size)
    return Layer(gzip.compress(data, compresslevel=6, mtime=0), MediaType.OCI_LAYER_GZIP, Digest.of(data), len(data))


@pytest.fixture(scope="session")
def busybox_layer(busybox_rootfs_tar: Path) -> Layer:
    blob = busybox_rootfs_tar.read_bytes()
    tar = gzip.decompress(blob)
    return Layer(blob, MediaType.OCI_LAYER_GZIP, Digest.of(tar), len(tar))


def write_base(layout: Path, tag: str, layers: list[Layer], store: Path) -> None:
    """An OCI layout holding ``layers`` under ``tag``, written as pybuild writes its own outputs."""
    platform = Platform.host()
    store.mkdir(parents=True, exist_ok=True)
    blobs = []
    config = empty_config(platform)
    for layer in layers:
        path = store / layer.digest.hex
        if not path.exists():
            path.write_bytes(layer.blob)
        descriptor = Descriptor(layer.media_type, layer.digest, len(layer.blob))
        blobs.append(LayerBlob(descriptor, layer.diff_id, path, layer.size, verified=True))
        config = append_layer(config, layer.diff_id, rfc3339(0), "hostile corpus layer")
    config["config"] = {"Cmd": ["/bin/sh"]}
    raw_config = canonical_json(config)
    cdesc = Descriptor(MediaType.OCI_CONFIG, Digest.of(raw_config), len(raw_config))
    raw_manifest = canonical_json(image_manifest(cdesc, [b.descriptor for b in blobs]))
    write_layout(layout, Image(raw_manifest, raw_config, MediaType.OCI_MANIFEST, tuple(blobs), platform), tag)


def manifest_layers(layout: Path) -> list[str]:
    index = json.loads((layout / "index.json").read_bytes())
    digest = index["manifests"][0]["digest"].split(":")[1]
    return [d["digest"] for d in json.loads((layout / "blobs/sha256" / digest).read_bytes())["layers"]]


ROOTFS_RECIPE = f"version: 1\nsteps:\n  - rootfs: {ARCHIVE}\n"
RUN_RECIPE = 'version: 1\nfrom: "oci:base:shell"\nsteps:\n  - run: "echo ran > /hostile-run"\n'


def write_recipe(case: Case) -> str:
    steps = '  - write: /hostile-probe\n    content: "probe\\n"\n'
    if case.probe:
        steps += f'  - write: {case.probe}\n    content: "probe\\n"\n'
    return f'version: 1\nfrom: "oci:base:hostile"\nsteps:\n{steps}'


# --------------------------------------------------------------------------------------------
# the paths


@dataclass
class Job:
    case: Case
    top: Path  # tmp_path: the sentinel tree is here
    dir: Path  # where this case's inputs and outputs are, a few levels below ``top``
    ctx: Path
    layer: Layer
    busybox: Layer
    record: dict[str, str]
    errors: dict[str, str]

    def note(self, path: str, got: str, result: Result) -> str:
        """Record the outcome of ``path`` (and its error line, without the temporary directory)."""
        self.record[path] = got
        if got == REFUSED:
            line = next(x for x in result.stderr.splitlines() if x.startswith("pybuild: error:"))
            self.errors[path] = line.replace(f"{self.dir}/", "").removeprefix("pybuild: error: ")
        return got

    @property
    def layer_names(self) -> tuple[str, ...]:
        """What an error about the base may name: the layer, the layout, the write step's destination."""
        probe = (self.case.probe,) if self.case.probe else ()
        return (self.layer.digest.short, str(self.ctx / "base"), *probe)

    def passed_through(self, *layers: Layer) -> dict[str, tuple[str, Digest]]:
        return {layer.digest.hex: (layer.compression, layer.diff_id) for layer in layers}


def make_sentinels(top: Path, job_dir: Path) -> None:
    """Files an escaping entry would overwrite or land beside, at every level above the job."""
    sentinel = top / "sentinel"
    (sentinel / "dir").mkdir(parents=True)
    (sentinel / "passwd").write_text("sentinel passwd\n")
    (sentinel / "shadow").write_text("sentinel shadow\n")
    (sentinel / "dir/inner").write_text("inner\n")
    os.symlink("passwd", sentinel / "link")
    (sentinel / "etc").mkdir()
    (sentinel / "etc/passwd").write_text("sentinel etc/passwd\n")
    level = job_dir
    while level != top:
        level.mkdir(parents=True, exist_ok=True)
        (level.parent / "keep").write_text(f"sentinel beside {level.name}\n")
        level = level.parent


def path_rootfs(job: Job) -> None:
    """Paths 1 and 5: the rootfs step, then the layer cache with its blob corrupted."""
    case, cache = job.case, job.dir / "cache"
    first = pybuild(job.ctx / "rootfs.yaml", "-o", job.dir / "out-rootfs", "-q", "--cache-dir", cache, cwd=job.dir)
    got = job.note("1 rootfs", outcome(first, case.expect.rootfs, (ARCHIVE,)), first)
    entries = list((cache / "layers/entries").glob("*.json"))
    blobs = list((cache / "layers/blobs/sha256").glob("*"))
    if got == REFUSED:
        assert not entries and not blobs, "a refused archive left a cache entry"
        job.record["5 cache"] = "nothing cached"
        return
    assert_valid(job.dir / "out-rootfs")
    assert len(entries) == 1 and len(blobs) == 1, (entries, blobs)
    blob = blobs[0]
    shared = blob.stat().st_nlink > 1
    with open(blob, "r+b") as f:  # bit rot, in place
        f.seek(blob.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    second = pybuild(job.ctx / "rootfs.yaml", "-o", job.dir / "out-cached", "-q", "--cache-dir", cache,
                     cwd=job.dir)
    assert outcome(second, OK, (ARCHIVE,)) == OK
    assert digest_of(second) == digest_of(first), "the rebuild after corrupting the cache changed the image"
    assert_blobs_match_names(job.dir / "out-cached")  # the same digests as the checked first build: the same bytes
    if blob.exists():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name, "the corrupted cache blob is still there"
    job.record["5 cache"] = "rebuilt, same digest" + (" (cache blob is a hardlink of out's)" if shared else "")


def path_base(job: Job) -> None:
    """Paths 2, 3 and 4: a base image whose layer is the archive."""
    case = job.case
    result = pybuild(job.ctx / "write.yaml", "-o", job.dir / "out-base", "-q", cwd=job.dir)
    got = job.note("2 base+write", outcome(result, case.expect.base, job.layer_names), result)
    if got == OK:
        assert manifest_layers(job.dir / "out-base")[0] == str(job.layer.digest)  # the base layer as it was
        assert_valid(job.dir / "out-base", job.passed_through(job.layer))

    host_files = {(st.st_dev, st.st_ino) for st in map(os.stat, HOST_FILES)}
    bundle = job.dir / "bundle"
    result = pybuild("unpack", f"{job.ctx / 'base'}:hostile", bundle, cwd=job.dir)
    got = job.note("3 unpack", outcome(result, case.expect.unpack, job.layer_names), result)
    if got == OK:
        assert sorted(os.listdir(bundle)) == ["config.json", "rootfs"], sorted(os.listdir(bundle))
        sentinels = {(st.st_dev, st.st_ino) for st in map(os.lstat, (job.top / "sentinel").rglob("*"))}
        assert not inodes(bundle / "rootfs") & (host_files | sentinels), "a file of the bundle is a host file"
    else:
        assert not bundle.exists()

    if job.record["2 base+write"] == REFUSED and job.layer.digest.short in job.errors["2 base+write"]:
        job.record["4 run"] = "n/a (the scan refuses the layer first)"
        return
    result = pybuild(job.ctx / "run.yaml", "-o", job.dir / "out-run", "-q", cwd=job.dir)
    got = job.note("4 run", outcome(result, REFUSED if case.run_error else EITHER, (*job.layer_names, "run")), result)
    if case.run_error:
        assert case.run_error in job.errors["4 run"], result.describe()
    if got == OK:
        assert manifest_layers(job.dir / "out-run")[:2] == [str(job.busybox.digest), str(job.layer.digest)]
        assert_valid(job.dir / "out-run", job.passed_through(job.busybox, job.layer))


def prepare(case: Case, tmp_path: Path, busybox: Layer) -> Job:
    job_dir = tmp_path / "n1" / "n2" / "n3" / "job"
    make_sentinels(tmp_path, job_dir)
    ctx = job_dir / "ctx"
    ctx.mkdir()
    (ctx / ARCHIVE).write_bytes(case_bytes(case.id))
    (ctx / "rootfs.yaml").write_text(ROOTFS_RECIPE)
    (ctx / "write.yaml").write_text(write_recipe(case))
    (ctx / "run.yaml").write_text(RUN_RECIPE)
    layer = layer_of(case.id)
    store = tmp_path / "blob-store"
    write_base(ctx / "base", "hostile", [layer], store)
    write_base(ctx / "base", "shell", [busybox, layer], store)
    return Job(case, tmp_path, job_dir, ctx, layer, busybox, RESULTS.setdefault(case.id, {}),
               ERRORS.setdefault(case.id, {}))


@contextlib.contextmanager
def nothing_changes_outside(job: Job) -> Iterator[None]:
    """The host's /etc, the sentinel tree and the inputs: unchanged; nothing new but the outputs."""
    skip = frozenset(os.path.relpath(job.dir / name, job.top) for name in OUTPUTS)
    host, tree = host_state(), tree_state(job.top, skip)
    saved = {p: Path(p).read_bytes() for p in HOST_FILES if os.path.exists(p)}
    try:
        yield
    finally:
        changed = [p for p, data in saved.items() if Path(p).read_bytes() != data]
        for p in changed:  # never leave the machine broken; then fail loudly
            Path(p).write_bytes(saved[p])
        assert not changed, f"HOST FILES CHANGED (restored): {changed}"
        assert host_state() == host, "the host's /etc changed"
        after = tree_state(job.top, skip)
        assert {k: v for k, v in after.items() if k not in tree} == {}, "new paths outside the outputs"
        assert {k: v for k, v in tree.items() if after.get(k) != v} == {}, "changed or missing paths"


# --------------------------------------------------------------------------------------------
# the tests


@pytest.mark.tools
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_archive(case: Case, tmp_path: Path, busybox_layer: Layer, need: Callable[..., None]) -> None:
    need(str(find_oci_check() or "oci-check"), "unshare")
    job = prepare(case, tmp_path, busybox_layer)
    with nothing_changes_outside(job), concurrent.futures.ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(path_rootfs, job), pool.submit(path_base, job)]:  # independent chains
            future.result()


@pytest.mark.tools
@pytest.mark.parametrize("case", BIG_BOMBS, ids=[c.id for c in BIG_BOMBS])
def test_big_bomb_streams_through_the_rootfs_step(case: Case, tmp_path: Path) -> None:
    """2 GiB of zeros: refused cleanly, or streamed through in bounded memory and time (one build). The
    output's validity is checked on the 512 MiB bombs of the matrix (a full scan here would inflate 2 GiB
    once more); here its blobs are hashed."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / ARCHIVE).write_bytes(case_bytes(case.id))
    (ctx / "rootfs.yaml").write_text(ROOTFS_RECIPE)
    result = pybuild(ctx / "rootfs.yaml", "-o", tmp_path / "out", "-q", "--no-cache", cwd=tmp_path)
    got = outcome(result, case.expect.rootfs, (ARCHIVE,))
    RESULTS.setdefault(case.id, {})["1 rootfs"] = f"{got} ({result.max_rss_kb // 1024} MB, {result.seconds:.0f}s)"
    if got == OK:
        assert len(manifest_layers(tmp_path / "out")) == 1
        assert_blobs_match_names(tmp_path / "out")


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    target = os.environ.get("PYBUILD_HOSTILE_REPORT")
    if target and RESULTS:
        paths = sorted({p for r in RESULTS.values() for p in r})
        lines = ["| case | " + " | ".join(paths) + " |", "|---" * (len(paths) + 1) + "|"]
        lines += [f"| {cid} | " + " | ".join(r.get(p, "") for p in paths) + " |" for cid, r in RESULTS.items()]
        lines += ["", "Errors:", ""]
        lines += [f"- {cid} / {p}: `{e[:300]}`" for cid, r in ERRORS.items() for p, e in sorted(r.items())]
        Path(target).write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------
# the corpus itself (no tools)


@pytest.mark.parametrize("case", [c for c in CASES if not c.bomb], ids=[c.id for c in CASES if not c.bomb])
def test_corpus_is_deterministic(case: Case) -> None:
    assert case.build() == case.build()
    assert case.description and {case.expect.rootfs, case.expect.base, case.expect.unpack} <= {OK, REFUSED, EITHER}


def test_bombs_decompress_to_what_they_claim() -> None:
    """The hand-made gzip and zstd streams are valid, checked on a small stream of the same shape."""
    for stream in (corpus.member_bomb(4 << 20), corpus.padding_bomb(4 << 20)):
        raw = b"".join(stream.chunks())
        assert len(raw) == stream.size and hashlib.sha256(raw).hexdigest() == stream.sha256()
        assert gzip.decompress(stream.gzip()) == raw
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(stream.zstd()), read_across_frames=True)
        assert reader.read() == raw


@pytest.mark.parametrize("escape", ["new-file-above", "sentinel-rewritten", "input-changed", "work-dir-left"])
def test_the_harness_sees_an_escape(tmp_path: Path, escape: str) -> None:
    """The checks above would catch a file written outside the outputs (a test of the test)."""
    job_dir = tmp_path / "n1" / "n2" / "n3" / "job"
    make_sentinels(tmp_path, job_dir)
    (job_dir / "ctx").mkdir()
    (job_dir / "ctx" / ARCHIVE).write_bytes(b"input")
    dummy = Layer(b"", MediaType.OCI_LAYER, Digest.of(b""), 0)
    job = Job(CASES[0], tmp_path, job_dir, job_dir / "ctx", dummy, dummy, {}, {})
    with pytest.raises(AssertionError), nothing_changes_outside(job):
        (job_dir / "bundle").mkdir()  # an output: allowed
        if escape == "new-file-above":
            (tmp_path / "n1" / "escaped").write_text("x")
        elif escape == "sentinel-rewritten":
            (tmp_path / "sentinel" / "passwd").write_text("pwned\n")
        elif escape == "input-changed":
            (job_dir / "ctx" / ARCHIVE).write_bytes(b"other")
        else:
            (job_dir / ".out-rootfs.pybuild-work-1-x").mkdir()


# --------------------------------------------------------------------------------------------
# builder/layer/tarstream.py in-process: what tarfile alone gets wrong, fast and without tools


@pytest.mark.parametrize("case_id", ["huge-size-unread", "huge-size-aufs", "pax-chain", "gnu-sparse-truncated",
                                     "gnu-sparse-1.0-truncated", "bad-checksum-later", "truncated-header",
                                     "pax-header-bomb", "gnu-longname-bomb", "sparse-map-bomb"])
def test_tar_members_turns_tarfile_failures_into_read_errors(case_id: str) -> None:
    """No spinning on a 2**62-byte claim, no header read whole into memory, no stray exception types,
    no silent end at a corrupt header: a ReadError, promptly, whether or not content is read."""
    for read_content in (False, True):
        stream = open_decompressed(io.BytesIO(case_bytes(case_id)))
        start = time.monotonic()
        with pytest.raises(tarfile.ReadError):
            for tf, ti in tar_members(stream):
                if read_content and ti.isreg():
                    member = tf.extractfile(ti)
                    assert member is not None
                    member.read(1 << 20)
        assert time.monotonic() - start < 10


def test_tar_members_yields_everything_of_a_good_archive() -> None:
    c = corpus
    data = c.archive(c.member("a", "1\n"), c.d("dir"), c.member("dir/big", b"x" * 100_000), c.sym("l", "/etc"),
                     c.old_gnu_sparse("sparse", [(0, 512), (4096, 512)], 8192, extended=False, size=1024),
                     b"a" * 512 + b"b" * 512, c.member("last", "end\n"))
    seen = {}
    for tf, ti in tar_members(io.BytesIO(data)):
        member_file = tf.extractfile(ti) if ti.name in ("dir/big", "sparse", "last") else None  # skip the others
        seen[ti.name] = member_file.read() if member_file else ti.size
        assert len(tf.members) <= 1  # type: ignore[attr-defined]  # not accumulated
    sparse = b"a" * 512 + bytes(3584) + b"b" * 512 + bytes(3584)
    assert seen == {"a": 2, "dir": 0, "dir/big": b"x" * 100_000, "l": 0, "sparse": sparse, "last": b"end\n"}
