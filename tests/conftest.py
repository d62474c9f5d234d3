"""Shared test fixtures: a clean environment, the CLI runner, oci-check, tool checks and rootfs tarballs.

Fixtures here are available to every test directory. The helpers that talk to real container
runtimes (runc, containerd, podman) live in ``tests/e2e/``.

Missing external tools skip a test locally; on CI (``CI`` set in the environment) they fail it
instead, so that a broken CI image cannot turn the end-to-end suite silently green. Set
``PYBUILD_TEST_ALLOW_SKIP=1`` to skip on CI as well.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Environment variables that change what a build does; removed before every test.
ISOLATED_ENV = ("SOURCE_DATE_EPOCH", "DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")

#: Where root-only binaries live; searched even when PATH lacks them (a non-login root shell).
EXTRA_BIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")

#: Busybox applets linked into ``bin/`` of the test rootfs.
BUSYBOX_APPLETS = (
    "[", "ash", "basename", "cat", "chmod", "chown", "cp", "cut", "dirname", "echo", "env", "false",
    "find", "grep", "head", "id", "ln", "ls", "md5sum", "mkdir", "mv", "printf", "pwd", "readlink",
    "rm", "sed", "sh", "sha256sum", "sleep", "sort", "stat", "tail", "test", "touch", "tr", "true",
    "uname", "wc", "whoami",
)  # fmt: skip

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
)
GROUP = "root:x:0:\napp:x:1000:\nnogroup:x:65534:\n"


# --------------------------------------------------------------------------------------------
# environment


def on_ci() -> bool:
    """True on a CI runner, where a missing tool is a broken runner, not a reason to skip."""
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return ci and os.environ.get("PYBUILD_TEST_ALLOW_SKIP", "") in ("", "0")


def skip_or_fail(reason: str) -> None:
    """Skip the current test locally; fail it on CI (see the module docstring)."""
    if on_ci():
        pytest.fail(f"{reason} (CI: this must not be skipped; PYBUILD_TEST_ALLOW_SKIP=1 allows it)")
    pytest.skip(reason)


def which(tool: str) -> str | None:
    """Path of an executable (a name, or an absolute path), also looking in the sbin directories."""
    if os.path.isabs(tool):
        return tool if os.path.isfile(tool) and os.access(tool, os.X_OK) else None
    path = os.pathsep.join([os.environ.get("PATH", os.defpath), *EXTRA_BIN_DIRS])
    return shutil.which(tool, path=path)


def missing_tools(tools: Iterable[str]) -> list[str]:
    return [t for t in tools if which(t) is None]


def require(*tools: str, root: bool = False) -> None:
    """Skip (locally) or fail (on CI) the running test unless every tool is installed.

    ``root=True`` also requires running as root (runc, containerd and podman need it here).
    In tests and fixtures use the ``need`` fixture (this function); as a decorator use
    ``@pytest.mark.needs("umoci", ..., root=True)``.
    """
    missing = missing_tools(tools)
    if missing:
        skip_or_fail(f"needs {', '.join(missing)} (not installed)")
    if root and os.geteuid() != 0:
        skip_or_fail("needs root")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """No test sees the developer's build epoch, registry credentials or caches.

    ``SOURCE_DATE_EPOCH`` and ``REGISTRY_AUTH_FILE`` are unset; ``XDG_CACHE_HOME``,
    ``XDG_CONFIG_HOME`` and ``DOCKER_CONFIG`` point into a fresh temporary directory, so the
    layer cache starts empty and no credentials are found. Returns that directory.
    """
    home = tmp_path_factory.mktemp("env")
    for name in ISOLATED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    docker_config = home / "docker"
    docker_config.mkdir()
    (docker_config / "config.json").write_text('{"auths": {}}\n')  # podman fails on a missing one
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config))  # no credentials
    return home


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs(*tools, root=False): skip (fail on CI) unless the tools are installed")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs"):
        require(*mark.args, **mark.kwargs)


@pytest.fixture(scope="session")
def need() -> Callable[..., None]:
    """``need("umoci", "runc", root=True)``: skip the test (fail it on CI) unless all are there.

    A fixture rather than an import, so that test modules do not import ``conftest``.
    """
    return require


# --------------------------------------------------------------------------------------------
# the CLI


def pybuild_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a CLI run: the (cleaned) current one, with the repository importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    if extra:
        env.update(extra)
    return env


def run_pybuild(
    *args: str | os.PathLike[str],
    cwd: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m builder ARGS`` and return what happened; checks nothing."""
    return subprocess.run(
        [sys.executable, "-m", "builder", *map(str, args)],
        cwd=cwd,
        env=pybuild_env(env),
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def pybuild(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``pybuild("recipe.yaml", "-o", out, cwd=..., env={...})`` → CompletedProcess (text).

    Runs in ``tmp_path`` unless ``cwd`` is given (never in the repository, so no test relies
    on the current directory). Asserts nothing: tests look at returncode/stdout/stderr.
    """

    def run(*args: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None, **kw: Any) -> Any:
        return run_pybuild(*args, cwd=cwd if cwd is not None else tmp_path, **kw)

    return run


# --------------------------------------------------------------------------------------------
# oci-check


def find_oci_check() -> Path | None:
    """``shared/tools/oci-check`` beside the repository (``<clone>/../shared``), or $OCI_CHECK."""
    candidates = []
    if os.environ.get("OCI_CHECK"):
        candidates.append(Path(os.environ["OCI_CHECK"]))
    here = Path(__file__).resolve()
    candidates += [
        here.parents[2] / "shared/tools/oci-check",  # <clone>/tests/conftest.py → <clone>/../shared
        REPO_ROOT / "../shared/tools/oci-check",
        Path.cwd() / "../shared/tools/oci-check",
        REPO_ROOT / "shared/tools/oci-check",
    ]
    return next((p.resolve() for p in candidates if p.is_file()), None)


def run_oci_check(
    path: str | os.PathLike[str], strict: bool = True, ref: str | None = None, *extra: str
) -> subprocess.CompletedProcess[str]:
    """Run oci-check on a layout directory or archive; returns the finished process.

    Where oci-check is not beside the clone (a user's clone of the repository alone), the
    independent validator ``oci-image-tool validate --type image`` (Debian package
    oci-image-tool) checks the same layout against the image-spec schemas instead: an archive is
    unpacked first, and ``strict`` has no counterpart there.
    """
    tool = find_oci_check()
    if tool is None and shutil.which("oci-image-tool"):
        return _oci_image_tool(Path(path), ref)
    if tool is None:
        skip_or_fail("neither oci-check ($OCI_CHECK, or beside the clone) nor oci-image-tool (Debian package) "
                     "is installed")
    assert tool is not None
    cmd = [sys.executable, str(tool), str(path), *extra]
    if strict:
        cmd.append("--strict")
    if ref is not None:
        cmd += ["--ref", ref]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, stdin=subprocess.DEVNULL)


def _oci_image_tool(path: Path, ref: str | None) -> subprocess.CompletedProcess[str]:
    """oci-image-tool 1.0 predates image-spec 1.1: it refuses an artifact's empty config, so a layout
    with referrers (untagged ``artifactType`` entries) is validated tag by tag, and the referrers'
    blobs are checked against their descriptors."""
    with tempfile.TemporaryDirectory(prefix="oci-image-tool-") as scratch:
        layout = path
        if path.is_file():
            layout = Path(scratch)
            with tarfile.open(path) as tf:
                tf.extractall(layout, filter="data")
        if _has_zstd_layers(layout):
            return _validate_blobwise(layout)
        entries = json.loads((layout / "index.json").read_text()).get("manifests", [])
        names = [ref] if ref is not None else [None]
        if ref is None and any("artifactType" in e for e in entries):
            names = [e["annotations"]["org.opencontainers.image.ref.name"] for e in entries if "artifactType" not in e]
        out, rc = [], 0
        for name in names:
            refs = ["--ref", f"name={name}"] if name is not None else []
            proc = subprocess.run(["oci-image-tool", "validate", "--type", "image", *refs, str(layout)],
                                  capture_output=True, text=True, timeout=600, check=False, stdin=subprocess.DEVNULL)
            out.append(proc.stdout + proc.stderr)
            rc = rc or proc.returncode
        if len(names) > 1 or names != [ref]:
            blobwise = _validate_blobwise(layout)
            out.append(blobwise.stdout)
            rc = rc or blobwise.returncode
        return subprocess.CompletedProcess(["oci-image-tool", "validate"], rc, "\n".join(out), "")


def _layout_json(layout: Path) -> dict[str, Any]:
    """Every JSON blob of a layout (indexes, manifests, configs) by digest, read from index.json down."""
    found: dict[str, Any] = {}
    todo = list(json.loads((layout / "index.json").read_text()).get("manifests", []))
    while todo:
        desc = todo.pop()
        if desc["digest"] in found or not desc["mediaType"].endswith("+json"):
            continue
        doc = json.loads((layout / "blobs" / desc["digest"].replace(":", "/")).read_bytes())
        found[desc["digest"]] = (desc["mediaType"], doc)
        todo += _children(desc["mediaType"], doc)
    return found


def _children(media_type: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    if media_type.endswith(".index.v1+json"):
        return list(doc.get("manifests", []))
    if media_type.endswith(".manifest.v1+json"):
        return [doc["config"], *doc.get("layers", [])]
    return []


def _has_zstd_layers(layout: Path) -> bool:
    docs = _layout_json(layout).values()
    return any(layer["mediaType"].endswith("+zstd") for media_type, doc in docs
               for layer in _children(media_type, doc))


def _validate_blobwise(layout: Path) -> subprocess.CompletedProcess[str]:
    """oci-image-tool 1.0 knows no zstd layer media type (image-spec 1.1 added it) and refuses a
    whole ``--type image`` for it: each manifest and config is validated on its own instead, and
    every blob's bytes are checked against its digest and the size its descriptors give."""
    kinds = {"application/vnd.oci.image.manifest.v1+json": "manifest",
             "application/vnd.oci.image.config.v1+json": "config",
             "application/vnd.oci.image.index.v1+json": "imageIndex"}
    out, rc = [], 0
    for digest, (media_type, doc) in _layout_json(layout).items():
        blob = layout / "blobs" / digest.replace(":", "/")
        if media_type in kinds:
            proc = subprocess.run(["oci-image-tool", "validate", "--type", kinds[media_type], str(blob)],
                                  capture_output=True, text=True, timeout=600, check=False, stdin=subprocess.DEVNULL)
            out.append(proc.stdout + proc.stderr)
            rc = rc or proc.returncode
        for desc in _children(media_type, doc):
            data = (layout / "blobs" / desc["digest"].replace(":", "/")).read_bytes()
            if "sha256:" + hashlib.sha256(data).hexdigest() != desc["digest"] or len(data) != desc["size"]:
                out.append(f"blob {desc['digest']}: its bytes do not match the descriptor")
                rc = 1
    return subprocess.CompletedProcess(["oci-image-tool", "validate"], rc, "\n".join(out), "")


@pytest.fixture
def oci_check() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``oci_check(path, strict=True, ref=None)`` → CompletedProcess; exit 0 means it passed.

    Typical use: ``r = oci_check(out); assert r.returncode == 0, r.stdout + r.stderr``.
    """
    return run_oci_check


# --------------------------------------------------------------------------------------------
# rootfs tarballs


def tar_entry(
    name: str,
    kind: str = "file",
    *,
    data: bytes | str = b"",
    mode: int | None = None,
    uid: int = 0,
    gid: int = 0,
    target: str = "",
    mtime: int = 0,
) -> tuple[tarfile.TarInfo, bytes | None]:
    """One tar member. ``kind``: file, dir, symlink, hardlink (``target`` = member name), fifo."""
    info = tarfile.TarInfo(name.lstrip("/"))
    info.uid, info.gid, info.uname, info.gname, info.mtime = uid, gid, "", "", mtime
    payload: bytes | None = None
    if kind == "file":
        info.type = tarfile.REGTYPE
        payload = data.encode() if isinstance(data, str) else data
        info.size = len(payload)
        info.mode = 0o644 if mode is None else mode
    elif kind == "dir":
        info.type, info.mode = tarfile.DIRTYPE, 0o755 if mode is None else mode
    elif kind == "symlink":
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
    elif kind == "hardlink":
        info.type, info.linkname, info.mode = tarfile.LNKTYPE, target.lstrip("/"), 0o644 if mode is None else mode
    elif kind == "fifo":
        info.type, info.mode = tarfile.FIFOTYPE, 0o644 if mode is None else mode
    else:
        raise ValueError(f"unknown tar entry kind {kind!r}")
    return info, payload


def busybox_entries(busybox: Path = Path("/bin/busybox")) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """A minimal busybox root: bin/busybox + applet symlinks, etc/passwd, etc/group, tmp/ (1777)."""
    entries = [
        tar_entry("bin", "dir"),
        tar_entry("bin/busybox", data=busybox.read_bytes(), mode=0o755),
        *(tar_entry(f"bin/{a}", "symlink", target="busybox") for a in BUSYBOX_APPLETS),
        tar_entry("etc", "dir"),
        tar_entry("etc/group", data=GROUP),
        tar_entry("etc/passwd", data=PASSWD),
        tar_entry("root", "dir", mode=0o700),
        tar_entry("tmp", "dir", mode=0o1777),
    ]
    return entries


def write_tar(path: Path, entries: Iterable[tuple[tarfile.TarInfo, bytes | None]], compression: str = "gz") -> Path:
    """Write entries, in order, as a deterministic tarball: PAX, no gzip name or timestamp."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, payload in entries:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    data = raw.getvalue()
    if compression == "gz":
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as gz:
            gz.write(data)
        data = buf.getvalue()
    elif compression == "xz":
        import lzma

        data = lzma.compress(data)
    elif compression == "zst":
        import zstandard

        data = zstandard.ZstdCompressor(level=3).compress(data)
    elif compression != "":
        raise ValueError(f"unknown compression {compression!r}")
    path.write_bytes(data)
    return path


def make_rootfs_tar(
    path: Path, extra: Sequence[Mapping[str, Any]] = (), busybox: bool = True, compression: str = "gz"
) -> Path:
    """A rootfs tarball: the busybox root (unless ``busybox=False``) then ``extra`` entries.

    Each extra entry is a dict of :func:`tar_entry` arguments, e.g.
    ``{"name": "data/x", "kind": "hardlink", "target": "data/y"}``.
    """
    if busybox:
        require("/bin/busybox")
    entries = busybox_entries() if busybox else []
    entries += [tar_entry(**e) for e in extra]
    return write_tar(path, entries, compression)


@pytest.fixture(scope="session")
def busybox_rootfs_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``rootfs.tar.gz``: a deterministic busybox root built from /bin/busybox (session-wide, read-only)."""
    path = make_rootfs_tar(tmp_path_factory.mktemp("busybox") / "rootfs.tar.gz")
    path.chmod(0o444)
    return path


@pytest.fixture
def rootfs_tar() -> Callable[..., Path]:
    """``rootfs_tar(path, extra=[...], busybox=True, compression="gz")`` → path (see make_rootfs_tar)."""
    return make_rootfs_tar
