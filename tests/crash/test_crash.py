"""Crash safety (README, "Atomic outputs"): whatever moment pybuild dies at, OUT and the registry stay consistent.

The harness runs the real CLI (``python -m builder``) as a subprocess in a session of its own and
SIGKILLs the whole session at a deterministic list of points:

- *timed* points: ``FRACTIONS`` (0, 1/24, ..., 1) of the length of the same run (measured
  first, and lowered by every later run that ends sooner on its own, so that a busy machine
  during the measurement does not push the points past the end);
- *event* points: as soon as the test sees a step of the run happen on disk (the work directory
  appears, a layer blob is being written, an output staging file appears, a blob lands in OUT,
  the output is replaced; for a push: the manifest lookup, the first upload, the first stored
  blob). The output phase at the end of a build lasts milliseconds, and evenly spaced points
  alone would seldom land in it.

The image built is ``from:`` a base layout in the context whose 8 MiB layer pybuild copies (and
hashes) into OUT, plus an 8 MiB incompressible ``copy`` layer that it compresses: so a run lasts
well past the interpreter's start (0.3-1 s, depending on the machine), and both the layer
pipeline and the output writing take measurable time.

After every kill the output must be what it was or the complete new result: a layout passes
``oci-check --strict`` (one microseconds-long state of an in-place update excepted, see
``checked_after_kill``) and still has ``old`` with its digest (and ``new`` only with its final
digest); an archive is byte for byte the old file or the new one; a registry tag is absent or
names a manifest whose blobs all exist. Then the next run (not killed) must succeed and leave
nothing behind: no ``.tmp-*`` in OUT, nothing beside OUT (each OUT lives alone in its own
directory, so a stray sibling is caught whatever it is called), nothing in ``blobs/`` that is not
a reachable blob named by its digest.

Also here: a full output filesystem (a small tmpfs) and a read-only one give one clear error
line and leave OUT intact; N concurrent builds into one OUT all land; concurrent archive writes
to one file end with one complete archive.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from builder.fs.lock import remove_dead_siblings
from tests.e2e.registry import Registry, registry_fixture, unique_repo

REPO_ROOT = Path(__file__).resolve().parents[2]
FRACTIONS = tuple(i / 24 for i in range(25))  # timed kill points, as fractions of a measured run
POLL = 0.0002  # how often event points look (seconds)
HEX64 = re.compile(r"[0-9a-f]{64}")
MANIFEST_ACCEPT = (
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json"
)

BASE_RECIPE = """\
version: 1
steps:
  - copy: base.bin
    to: /base.bin
"""

OLD_RECIPE = """\
version: 1
steps:
  - write: /etc/version
    content: "old\\n"
"""

NEW_RECIPE = """\
version: 1
from: oci:base:base
steps:
  - copy: big.bin
    to: /data/big.bin
  - write: /etc/version
    content: "new\\n"
"""

PUSH_RECIPE = """\
version: 1
steps:
  - copy: big.bin
    to: /data/big.bin
  - write: /etc/version
    content: "pushed\\n"
"""

FILL_RECIPE = """\
version: 1
steps:
  - copy: fill.bin
    to: /fill.bin
"""

ID_RECIPE = """\
version: 1
args:
  ID: ""
steps:
  - write: /etc/id
    content: "${ID}\\n"
"""

plain_registry = registry_fixture("plain")


# --------------------------------------------------------------------------------------------
# running pybuild, and killing it


def _env() -> dict[str, str]:
    """The current (test-cleaned) environment with the repository importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def pybuild(*args: str | os.PathLike[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python -m builder ARGS`` to the end."""
    return subprocess.run(
        [sys.executable, "-m", "builder", *map(str, args)], cwd=cwd, env=_env(), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def ok(proc: subprocess.CompletedProcess[str], why: str = "") -> str:
    """Assert that a run succeeded; the last line of its stdout (the digest)."""
    assert proc.returncode == 0, f"{why}\n$ exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout.strip().splitlines()[-1]


def measure(cwd: Path, prepare: Callable[[], Sequence[str | os.PathLike[str]]]) -> float:
    """How long a complete run takes (seconds): the median of three, each of the arguments
    ``prepare()`` returns once it has set the scene."""
    times = []
    for _ in range(3):
        args = prepare()
        start = time.monotonic()
        ok(pybuild(*args, cwd=cwd), "a reference run failed")
        times.append(time.monotonic() - start)
    return sorted(times)[1]


Predicate = Callable[[], bool]


@dataclasses.dataclass(frozen=True)
class Point:
    """Where to kill a run: at ``fraction`` of its expected duration, or as soon as the predicate
    that ``event()`` makes (right before the run, from the state then) is true."""

    name: str
    fraction: float | None = None
    event: Callable[[], Predicate] | None = None


@dataclasses.dataclass(frozen=True)
class Outcome:
    point: str
    killed: bool  # False: the run ended on its own before its kill point
    returncode: int | None
    at: float  # seconds after the start
    log: str
    found: str = ""  # what the kill left (for the coverage report)

    def __str__(self) -> str:
        what = "killed" if self.killed else f"ended on its own (exit {self.returncode})"
        return f"{self.point}: {what} after {self.at:.3f} s{'; ' if self.found else ''}{self.found}"


def left_behind(out: Path) -> str:
    """What is beside or in OUT besides the finished result, names shortened (for the coverage report)."""
    names = [re.sub(r"(pybuild-\w+-|\.tmp-|blobs/sha256/).*", r"\1*", n) for n in strays(out)]
    return f"left {', '.join(sorted(set(names)))}" if names else ""


def timed_points(fractions: Sequence[float] = FRACTIONS) -> list[Point]:
    """Kill points at these fractions of the run's duration (known only when the run starts)."""
    return [Point(f"t={f:.3f}", fraction=f) for f in fractions]


def shortest(duration: float, outcome: Outcome) -> float:
    """The duration estimate, corrected by a run that ended on its own sooner (the measuring
    runs may have been slowed down by a busy machine)."""
    return min(duration, outcome.at) if not outcome.killed and outcome.returncode == 0 else duration


def wait_exit(proc: subprocess.Popen[bytes], deadline: float) -> None:
    """Return when ``proc`` has ended or at ``deadline`` (time.monotonic()), whichever comes first.

    A pidfd wakes up at the exit itself (Popen.wait(timeout) polls with up to 50 ms of delay);
    without one, poll every millisecond.
    """
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(min(0.001, max(0.0, deadline - time.monotonic())))
        return
    try:
        select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))
    finally:
        os.close(pidfd)


def run_and_kill(args: Sequence[str | os.PathLike[str]], cwd: Path, point: Point, duration: float) -> Outcome:
    """Run pybuild and SIGKILL its session at ``point`` of a run expected to last ``duration``
    seconds; a run still going after 4 x ``duration`` is killed whatever the point."""
    limit = 4 * duration
    log = cwd / "killed.log"
    predicate = point.event() if point.event is not None else None
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "builder", *map(str, args)], cwd=cwd, env=_env(),
            stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    start = time.monotonic()
    try:
        if predicate is None:
            assert point.fraction is not None
            wait_exit(proc, start + point.fraction * duration)
        else:
            while proc.poll() is None and not predicate() and time.monotonic() < start + limit:
                time.sleep(POLL)
        at = time.monotonic() - start
        killed = proc.poll() is None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the session: pybuild and anything it started
        proc.wait(timeout=30)
    return Outcome(point.name, killed, None if killed else proc.returncode, at, log.read_text(errors="replace"))


def coverage(outcomes: Sequence[Outcome], what: str) -> str:
    return f"{what}, {len(outcomes)} kill points ({sum(o.killed for o in outcomes)} killed):\n" + "\n".join(
        map(str, outcomes)
    )


# --------------------------------------------------------------------------------------------
# looking at outputs (with no pybuild code)


def refs(out: Path) -> dict[str, str]:
    """Tag -> digest, from a layout's index.json."""
    index = json.loads((out / "index.json").read_bytes())
    return {m.get("annotations", {}).get("org.opencontainers.image.ref.name"): m["digest"] for m in index["manifests"]
            if "artifactType" not in m}


def archive_refs(path: Path) -> dict[str, str]:
    with tarfile.open(path) as tar:
        member = tar.extractfile("index.json")
        assert member is not None
        index = json.loads(member.read())
    return {m.get("annotations", {}).get("org.opencontainers.image.ref.name"): m["digest"] for m in index["manifests"]
            if "artifactType" not in m}


def reachable(out: Path) -> set[str]:
    """``alg/hex`` of every blob reachable from a layout's index.json."""
    found: set[str] = set()
    stack = list(json.loads((out / "index.json").read_bytes())["manifests"])
    while stack:
        desc = stack.pop()
        alg, _, hex_ = desc["digest"].partition(":")
        if f"{alg}/{hex_}" in found:
            continue
        found.add(f"{alg}/{hex_}")
        if desc["mediaType"].endswith(("manifest.v1+json", "index.v1+json", "manifest.v2+json", "list.v2+json")):
            doc = json.loads((out / "blobs" / alg / hex_).read_bytes())
            stack += [d for d in (doc.get("config"), *doc.get("layers", ()), *doc.get("manifests", ())) if d]
    return found


def strays(out: Path) -> list[str]:
    """What a finished run must not leave: anything beside OUT (which lives alone in its directory),
    anything in a layout but its three entries, blobs that are not reachable files named by their digest."""
    found = [f"beside OUT: {name}" for name in sorted(os.listdir(out.parent)) if name != out.name]
    if out.is_dir():
        found += [f"in OUT: {n}" for n in sorted(os.listdir(out)) if n not in ("blobs", "index.json", "oci-layout")]
        keep = reachable(out)
        for alg in sorted(os.listdir(out / "blobs")):
            for name in sorted(os.listdir(out / "blobs" / alg)):
                if alg != "sha256" or not HEX64.fullmatch(name) or f"{alg}/{name}" not in keep:
                    found.append(f"blobs/{alg}/{name}")
    return found


def files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its content (for small layouts)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def checked(oci_check: Callable[..., subprocess.CompletedProcess[str]], out: Path, why: str) -> None:
    result = oci_check(out)
    assert result.returncode == 0, f"{why}: oci-check --strict {out} failed:\n{result.stdout}{result.stderr}"


GARBAGE = re.compile(
    r"^FAIL blobs/sha256/([0-9a-f]{64}): blob not referenced from index\.json \(garbage\) \[--strict\]$"
)


def checked_after_kill(
    oci_check: Callable[..., subprocess.CompletedProcess[str]], out: Path, new_blobs: set[str], why: str
) -> bool:
    """oci-check --strict of a layout updated in place by a killed build: True if it passes.

    One state is inherent in updating a layout in place and is let through (False): the kill
    came after some of the new image's blobs were renamed into ``blobs/`` and before
    ``index.json`` was (renames only, microseconds apart). Those blobs are unreferenced for a
    moment (``--strict`` calls them garbage) but nothing is missing or damaged, and the next
    build collects them. Any other complaint fails the test.
    """
    result = oci_check(out)
    if result.returncode == 0:
        return True
    fails = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    garbage = {m[1] for line in fails if (m := GARBAGE.match(line))}
    detail = f"{why}: oci-check --strict {out} failed:\n{result.stdout}{result.stderr}"
    assert fails and len(garbage) == len(fails) and garbage <= new_blobs, detail
    assert oci_check(out, strict=False).returncode == 0, detail
    return False


def reset(out: Path, template: Path | None) -> None:
    """``out`` as ``template`` (a layout or a file), or absent when ``template`` is None."""
    if out.is_dir():
        shutil.rmtree(out)
    else:
        out.unlink(missing_ok=True)
    if template is not None and template.is_dir():
        shutil.copytree(template, out)
    elif template is not None:
        shutil.copyfile(template, out)


# --------------------------------------------------------------------------------------------
# event points: steps of a build, seen on disk from outside


def _names(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []


def _ino(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def _layer_files(out: Path) -> Iterator[str]:
    """Names of the files in the ``layers`` directories of every work directory beside ``out``."""
    for name in _names(out.parent):
        if name.startswith(f".{out.name}.pybuild-work-"):
            for root, _dirs, names in os.walk(out.parent / name):
                if os.path.basename(root) == "layers":
                    yield from names


def build_events(out: Path) -> list[Point]:
    """Event points of a build into ``out`` (a layout or an archive)."""

    def work_dir() -> Predicate:
        return lambda: any(n.startswith(f".{out.name}.pybuild-work-") for n in _names(out.parent))

    def layer_writing() -> Predicate:
        return lambda: any(n.startswith(".layer-") for n in _layer_files(out))

    def layer_done() -> Predicate:
        return lambda: any(HEX64.fullmatch(n) for n in _layer_files(out))

    def staging() -> Predicate:  # beside OUT (a new layout or archive), or in OUT (an update)
        def seen() -> bool:
            beside = [n for n in _names(out.parent) if n != out.name and "pybuild-work-" not in n]
            return bool(beside) or (out.is_dir() and any(n.startswith(".tmp-") for n in _names(out)))

        return seen

    def blob_landed() -> Predicate:
        before = set(_names(out / "blobs" / "sha256"))
        return lambda: bool(set(_names(out / "blobs" / "sha256")) - before)

    def replaced() -> Predicate:
        target = out if out.suffix == ".tar" else out / "index.json"
        ino = _ino(target)
        return lambda: _ino(target) != ino

    points = [
        Point("work dir made", event=work_dir),
        Point("layer being written", event=layer_writing),
        Point("layer blob complete", event=layer_done),
        Point("output staging appears", event=staging),
    ]
    if out.suffix != ".tar":
        points.append(Point("first new blob in OUT", event=blob_landed))
    return [*points, Point("output replaced", event=replaced)]


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    """A context with the recipes and deterministic incompressible data files (no base yet)."""
    context = tmp_path / "ctx"
    context.mkdir()
    for name, text in (("base", BASE_RECIPE), ("old", OLD_RECIPE), ("new", NEW_RECIPE), ("push", PUSH_RECIPE),
                       ("fill", FILL_RECIPE), ("id", ID_RECIPE)):  # fmt: skip
        (context / f"{name}.yaml").write_text(text)
    rng = random.Random(6)
    (context / "base.bin").write_bytes(rng.randbytes(8 << 20))
    (context / "big.bin").write_bytes(rng.randbytes(8 << 20))
    return context


@pytest.fixture
def base_ctx(ctx: Path, tmp_path: Path) -> Path:
    """``ctx`` with the base layout ``base`` that NEW_RECIPE starts from."""
    ok(pybuild("build", ctx / "base.yaml", "-o", ctx / "base", "-t", "base", "-q", cwd=tmp_path))
    return ctx


# --------------------------------------------------------------------------------------------
# SIGKILL during a build into a layout


@pytest.mark.parametrize("start", ["existing", "fresh"])
def test_layout_build_killed_anywhere(
    start: str, base_ctx: Path, tmp_path: Path, oci_check: Callable[..., Any]
) -> None:
    """``existing``: OUT already holds ``old``; ``fresh``: there is no OUT yet (made beside it, renamed in)."""
    template = tmp_path / "template" / "out"
    old = ok(pybuild("build", base_ctx / "old.yaml", "-o", template, "-t", "old", "-q", cwd=tmp_path))
    checked(oci_check, template, "the layout with old")  # so that an untouched OUT needs no new check
    seed = template if start == "existing" else None
    expected_refs = {"old": old} if seed else {}
    old_files = files(template) if seed else {}
    dest = tmp_path / "dest"
    dest.mkdir()
    out = dest / "out"
    args: list[str | os.PathLike[str]] = ["build", base_ctx / "new.yaml", "-o", out, "-t", "new", "-q"]

    def fresh_run() -> list[Any]:
        reset(out, seed)
        return [*args, "--no-cache"]

    duration = measure(tmp_path, fresh_run)
    new = refs(out)["new"]
    assert not strays(out), strays(out)
    new_blobs = set(os.listdir(out / "blobs" / "sha256")) - set(_names(template / "blobs" / "sha256"))

    fractions = FRACTIONS if seed else FRACTIONS[::2]  # the fresh case only differs at the end
    outcomes: list[Outcome] = []
    in_window = 0
    for point in [*timed_points(fractions), *build_events(out)]:
        reset(out, seed)
        outcome = run_and_kill([*args, "--no-cache"], tmp_path, point, duration)
        outcomes.append(outcome)
        duration = shortest(duration, outcome)
        why = f"{start} OUT, {outcome}"
        assert outcome.killed or outcome.returncode == 0, f"{why}\n{outcome.log}"
        if seed and files(out) != old_files:  # an untouched OUT is the template, already checked
            in_window += not checked_after_kill(oci_check, out, new_blobs, why)
        elif not seed and out.exists():  # renamed into place whole: no in-between state at all
            checked(oci_check, out, why)
        if out.exists():
            assert refs(out) in (expected_refs, {**expected_refs, "new": new}), why
        outcomes[-1] = dataclasses.replace(outcome, found=left_behind(out))

        ok(pybuild(*args, cwd=tmp_path), f"the build after: {why}")
        assert refs(out) == {**expected_refs, "new": new}, why
        assert not strays(out), f"{why}: the next build left {strays(out)}"
    checked(oci_check, out, "the last build")
    print(f"\n{coverage(outcomes, f'{start} layout')}")
    assert sum(o.killed for o in outcomes) >= len(fractions) // 3, coverage(outcomes, "too few kills")
    assert in_window <= 1, coverage(outcomes, "the window between the blobs and index.json has grown")


# --------------------------------------------------------------------------------------------
# SIGKILL during a build into an oci-archive


def test_archive_build_killed_anywhere(base_ctx: Path, tmp_path: Path, oci_check: Callable[..., Any]) -> None:
    template = tmp_path / "template.tar"
    ok(pybuild("build", base_ctx / "old.yaml", "-o", template, "--format", "oci-archive", "-t", "old", "-q",
               cwd=tmp_path))  # fmt: skip
    checked(oci_check, template, "the archive with old")
    old = sha256_file(template)
    dest = tmp_path / "dest"
    dest.mkdir()
    out = dest / "out.tar"
    args: list[str | os.PathLike[str]] = [
        "build", base_ctx / "new.yaml", "-o", out, "--format", "oci-archive", "-t", "new", "-q"]

    def fresh_run() -> list[Any]:
        reset(out, template)
        return [*args, "--no-cache"]

    duration = measure(tmp_path, fresh_run)
    new = sha256_file(out)
    assert archive_refs(out).keys() == {"new"}
    checked(oci_check, out, "the new archive")

    outcomes: list[Outcome] = []
    for point in [*timed_points(), *build_events(out)]:
        reset(out, template)
        outcome = run_and_kill([*args, "--no-cache"], tmp_path, point, duration)
        outcomes.append(outcome)
        duration = shortest(duration, outcome)
        why = f"oci-archive, {outcome}"
        assert outcome.killed or outcome.returncode == 0, f"{why}\n{outcome.log}"
        assert sha256_file(out) in (old, new), f"{why}: OUT is neither the old archive nor the new one"
        found = ("new archive" if sha256_file(out) == new else "old archive") + "; " + left_behind(out)
        outcomes[-1] = dataclasses.replace(outcome, found=found.strip("; "))

        ok(pybuild(*args, cwd=tmp_path), f"the build after: {why}")
        assert sha256_file(out) == new, why
        assert not strays(out), f"{why}: the next build left {strays(out)}"
    print(f"\n{coverage(outcomes, 'oci-archive')}")
    assert sum(o.killed for o in outcomes) >= len(FRACTIONS) // 3, coverage(outcomes, "too few kills")


# --------------------------------------------------------------------------------------------
# SIGKILL during a push


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1, never through a proxy


def _request(url: str, method: str = "GET", accept: str = "") -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, headers={"Accept": accept} if accept else {})
    try:
        with _DIRECT.open(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read()


def registry_tag(registry: Registry, repo: str, tag: str) -> str | None:
    """The digest ``repo:tag`` names, once every blob it needs is found there (HEAD); None if no such tag."""
    status, body = _request(f"{registry.url}/v2/{repo}/manifests/{tag}", accept=MANIFEST_ACCEPT)
    if status == 404:
        return None
    assert status == 200, f"GET manifest {repo}:{tag}: {status} {body[:200]!r}"
    stack = [json.loads(body)]
    while stack:
        doc = stack.pop()
        for desc in doc.get("manifests", ()):  # an index: its children must be there, and theirs
            status, child = _request(f"{registry.url}/v2/{repo}/manifests/{desc['digest']}", accept=MANIFEST_ACCEPT)
            assert status == 200, f"{repo}:{tag} names {desc['digest']}, which the registry does not have ({status})"
            stack.append(json.loads(child))
        for desc in (doc.get("config"), *doc.get("layers", ())):
            if desc:
                status, _ = _request(f"{registry.url}/v2/{repo}/blobs/{desc['digest']}", method="HEAD")
                assert status == 200, f"{repo}:{tag} names blob {desc['digest']}, which is missing ({status})"
    return "sha256:" + hashlib.sha256(body).hexdigest()


def push_events(registry: Registry, repo: Callable[[], str]) -> list[Point]:
    """Event points of a push into the repository ``repo()`` names when the run starts (the
    registry logs a request once it has answered it)."""

    def seen(method: str, what: str) -> Callable[[], Predicate]:
        def make() -> Predicate:
            mark, pattern = registry.log_mark(), re.compile(rf"^/v2/{re.escape(repo())}/{what}")
            return lambda: any(r.method == method and pattern.search(r.path) for r in registry.requests(mark))

        return make

    return [
        Point("manifest looked up", event=seen("HEAD", "manifests/")),
        Point("first upload started", event=seen("POST", "blobs/uploads/")),
        Point("first blob stored", event=seen("PUT", "blobs/uploads/")),
    ]


@pytest.mark.tools
@pytest.mark.needs("docker-registry", "skopeo", "openssl")
def test_push_killed_anywhere(ctx: Path, tmp_path: Path, plain_registry: Registry) -> None:
    """A push of an image with an 8 MiB layer into a new repository of a real registry, killed anywhere."""
    out = tmp_path / "layout"
    new = ok(pybuild("build", ctx / "push.yaml", "-o", out, "-t", "new", "-q", cwd=tmp_path))
    repo = ""

    def new_repo() -> None:
        nonlocal repo
        repo = unique_repo("crash")  # a new repository each time, so that every push uploads every blob

    def args() -> list[str]:
        return ["push", f"{out}:new", plain_registry.ref(repo, "new"), "-q"]

    duration = measure(tmp_path, lambda: ["push", f"{out}:new", plain_registry.ref(unique_repo("crash"), "new"), "-q"])
    outcomes: list[Outcome] = []
    for point in [*timed_points(), *push_events(plain_registry, lambda: repo)]:
        new_repo()
        outcome = run_and_kill(args(), tmp_path, point, duration)
        outcomes.append(outcome)
        duration = shortest(duration, outcome)
        why = f"push, {outcome}"
        assert outcome.killed or outcome.returncode == 0, f"{why}\n{outcome.log}"
        state = registry_tag(plain_registry, repo, "new")
        assert state in (None, new), why
        outcomes[-1] = dataclasses.replace(outcome, found="tag pushed" if state else "no tag")

        assert ok(pybuild(*args(), cwd=tmp_path), f"the push after: {why}") == new
        assert registry_tag(plain_registry, repo, "new") == new, why
    print(f"\n{coverage(outcomes, 'push')}")
    assert sum(o.killed for o in outcomes) >= len(FRACTIONS) // 3, coverage(outcomes, "too few kills")


# --------------------------------------------------------------------------------------------
# the rule that makes cleaning safe: only the siblings of dead processes go

HOLD = """\
import sys, time
from pathlib import Path
from builder.fs.lock import private_sibling
with private_sibling(Path(sys.argv[1]), sys.argv[2], directory=sys.argv[2] == "work"):
    print("ready", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("kind", ["work", "tmp"])
def test_only_dead_siblings_are_removed(kind: str, ctx: Path, tmp_path: Path) -> None:
    """A live process's sibling (a work directory, or an archive being written) survives a cleaner;
    once the process is killed, the next build into the same OUT removes it."""
    dest = tmp_path / "dest"
    dest.mkdir()
    out = dest / "out"
    with subprocess.Popen([sys.executable, "-c", HOLD, str(out), kind], cwd=tmp_path, env=_env(),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE) as holder:  # fmt: skip
        try:
            assert holder.stdout is not None and holder.stdout.readline() == b"ready\n"
            (sibling,) = os.listdir(dest)
            assert sibling.startswith(f".out.pybuild-{kind}-")
            remove_dead_siblings(out)
            assert os.listdir(dest) == [sibling], "a live process's sibling was removed"
        finally:
            holder.kill()
    assert os.listdir(dest) == [sibling]  # killed: nobody removed it
    ok(pybuild("build", ctx / "old.yaml", "-o", out, "-t", "old", "-q", cwd=tmp_path), "the next build")
    assert os.listdir(dest) == ["out"]


# --------------------------------------------------------------------------------------------
# a full output filesystem, a read-only one


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True, timeout=30)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, timeout=30)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True, timeout=30)


def first_error(proc: subprocess.CompletedProcess[str]) -> str:
    """Exit 1 with no traceback; the first stderr line, which must be the ``pybuild: error:`` line."""
    detail = f"$ exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 1, detail
    assert "Traceback" not in proc.stderr, detail
    lines = proc.stderr.splitlines()
    assert lines and lines[0].startswith("pybuild: error: "), detail
    return lines[0]


@pytest.mark.root
@pytest.mark.needs("mount", "umount", root=True)
@pytest.mark.parametrize(
    ("fmt", "size", "failing"),
    [("oci", 10 << 20, "layer blob"), ("oci-archive", 10 << 20, "layer blob"), ("oci-archive", 1800 << 10, "out.tar")],
    ids=["layout-layer", "archive-layer", "archive-write"],
)
def test_full_and_read_only_output(fmt: str, size: int, failing: str, ctx: Path, tmp_path: Path,
                                   oci_check: Callable[..., Any]) -> None:  # fmt: skip
    """A 3 MB tmpfs holds OUT with ``old``; a build too big for it (the layer blob in the work
    directory, or the archive beside OUT with the layer already written) fails cleanly."""
    (ctx / "fill.bin").write_bytes(random.Random(10).randbytes(size))  # incompressible
    with tmpfs(tmp_path / "mnt", "3m") as mnt:
        out = mnt / ("out" if fmt == "oci" else "out.tar")
        flags = ["--format", fmt, "-q"]
        old = ok(pybuild("build", ctx / "old.yaml", "-o", out, "-t", "old", *flags, cwd=tmp_path))
        before = files(out) if fmt == "oci" else {"": out.read_bytes()}

        def intact(why: str) -> None:
            checked(oci_check, out, why)
            assert (files(out) if fmt == "oci" else {"": out.read_bytes()}) == before, f"{why}: OUT changed"
            assert not strays(out), f"{why}: left {strays(out)}"

        line = first_error(pybuild("build", ctx / "fill.yaml", "-o", out, "-t", "new", *flags, cwd=tmp_path))
        assert "No space left on device" in line and str(mnt) in line and failing in line, line
        intact("after a build into a full filesystem")

        remount(mnt, "ro")
        try:
            line = first_error(pybuild("build", ctx / "fill.yaml", "-o", out, "-t", "new", *flags, cwd=tmp_path))
            assert "Read-only file system" in line and str(mnt) in line, line
            intact("after a build into a read-only filesystem")
        finally:
            remount(mnt, "rw")

        remount(mnt, "size=64m")
        new = ok(pybuild("build", ctx / "fill.yaml", "-o", out, "-t", "new", *flags, cwd=tmp_path))
        checked(oci_check, out, "after space came back")
        assert (refs(out) if fmt == "oci" else archive_refs(out)) == (
            {"old": old, "new": new} if fmt == "oci" else {"new": new}
        )
        assert not strays(out), strays(out)


# --------------------------------------------------------------------------------------------
# concurrent writers


N_WRITERS = 6


def concurrent_builds(ctx: Path, tmp_path: Path, out: Path, *args: str) -> dict[str, str]:
    """Start N_WRITERS builds of different images into ``out`` at once; tag -> the digest each printed."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "builder", "build", str(ctx / "id.yaml"), "-o", str(out), "-t", f"t{i}",
             "--build-arg", f"ID={i}", "-q", *args],
            cwd=tmp_path, env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for i in range(N_WRITERS)
    ]  # fmt: skip
    digests = {}
    for i, proc in enumerate(procs):
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"writer {i}: exit {proc.returncode}\n{stderr.decode()}"
        digests[f"t{i}"] = stdout.decode().strip()
    assert len(set(digests.values())) == N_WRITERS
    return digests


def test_concurrent_builds_into_one_layout_all_land(ctx: Path, tmp_path: Path, oci_check: Callable[..., Any]) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    out = dest / "out"
    first = concurrent_builds(ctx, tmp_path, out)  # no OUT yet: all race to create it, the losers add to it
    assert refs(out) == first
    checked(oci_check, out, "after concurrent builds into a new OUT")
    assert not strays(out), strays(out)
    second = concurrent_builds(ctx, tmp_path, out, "--source-date-epoch", "1")  # every tag replaced at once
    assert refs(out) == second
    checked(oci_check, out, "after concurrent builds replacing every tag")
    assert not strays(out), strays(out)


def test_concurrent_archive_writes_end_with_one_archive(ctx: Path, tmp_path: Path,
                                                        oci_check: Callable[..., Any]) -> None:  # fmt: skip
    dest = tmp_path / "dest"
    dest.mkdir()
    out = dest / "out.tar"
    digests = concurrent_builds(ctx, tmp_path, out, "--format", "oci-archive")
    checked(oci_check, out, "after concurrent archive writes")
    ((tag, digest),) = archive_refs(out).items()
    assert digests[tag] == digest
    assert not strays(out), strays(out)
