"""No secret and no registry credential reaches anything pybuild writes, prints or raises.

One end-to-end scenario uses every path a secret or a password travels through: a ``run:``
step reads a ``--secret`` (and uses a cache mount), built into an OCI layout, an oci-archive
(also pushed with ``--push``) and a docker-archive, with ``--metadata-file``, ``--digest-file``,
``--progress plain`` and a ``--cache-dir``; ``pybuild push`` and ``pybuild pull`` against a real
htpasswd registry with credentials in ``$DOCKER_CONFIG``; the same push and pull with a wrong
password, through the CLI and in this process (to see the exceptions themselves, their chains
and details). Then everything is scanned for the secret value, both passwords, their base64
forms and ``base64(user:password)``: every file pybuild could have written (archives member by
member, gzip and zstd blobs decompressed, layer tars member by member), every captured stdout
and stderr, and every exception text.

Positive controls keep the scan honest: the sha256 of the secret, which the run step writes into
the image, must be *found* inside every image output (so the scanner really opens archives and
decompresses layers), the run step's output must be found in the captured progress, and
``base64(user:password)`` must be found in the credential file that holds it.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import zstandard

from builder.errors import PybuildError
from builder.image import Image
from builder.layout.read import read_layout
from builder.oci.reference import Reference
from builder.registry.options import RegistryOptions
from builder.registry.pull import pull
from builder.registry.push import push

from .registry import (
    USER,
    Registry,
    assert_user_error,
    basic_auth,
    docker_config_dir,
    registry_fixture,
    unique_repo,
)
from .runtimes import describe

pytestmark = [pytest.mark.tools, pytest.mark.needs("docker-registry", "skopeo", "openssl")]

htpasswd_registry = registry_fixture("htpasswd")

SECRET = "s3cr3t-pybuild-TOKEN"
SECRET_SHA256 = hashlib.sha256(SECRET.encode()).hexdigest()

RECIPE = """\
version: 1
tag: secrets
steps:
  - rootfs: rootfs.tar.gz
  - run: |
      set -e
      sha256sum /run/secrets/tok | cut -d' ' -f1 > /secret.sha256
      echo "run step: the secret has $(wc -c < /run/secrets/tok) bytes"
      wc -c < /run/secrets/tok > /var/cache/pb/length
      ls /var/cache/pb > /cache-listing
    mounts:
      - secret: tok
      - cache: /var/cache/pb
config:
  cmd: ["/bin/cat", "/secret.sha256"]
"""
RUN_OUTPUT = f"run step: the secret has {len(SECRET)} bytes"

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAX_DEPTH = 5  # archive -> blob (gzip) -> layer tar -> file; deeper nesting is not ours


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def forbidden(password: str, wrong_password: str) -> dict[str, str]:
    """Needle -> what it is: every form in which a secret or credential could leak."""
    found = {SECRET: "the secret", b64(SECRET): "base64(secret)"}
    for label, pw in (("password", password), ("wrong password", wrong_password)):
        found |= {pw: f"the {label}", b64(pw): f"base64({label})", basic_auth(USER, pw): f"base64(user:{label})"}
    return found


# --------------------------------------------------------------------------------------------
# the scanner


def _decompressed(data: bytes) -> bytes | None:
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:4] == ZSTD_MAGIC:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True) as reader:
            return reader.read()
    return None


def _is_tar(data: bytes) -> bool:
    return len(data) >= 512 and data[257:262] == b"ustar"


def views(label: str, data: bytes, depth: int = 0) -> Iterator[tuple[str, bytes]]:
    """``data`` itself, then (recursively) its decompressed form or its tar members' contents."""
    yield label, data
    if depth >= MAX_DEPTH:
        return
    inner = _decompressed(data)
    if inner is not None:
        yield from views(f"{label} (decompressed)", inner, depth + 1)
    elif _is_tar(data):
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            for member in tf:
                extracted = tf.extractfile(member) if member.isreg() else None
                content = extracted.read() if extracted is not None else b""
                yield from views(f"{label}!{member.name}", content, depth + 1)


class Scan:
    """Counts what was looked at and collects every needle found, by place."""

    def __init__(self, needles: Mapping[str, str]) -> None:
        self.needles = {n.encode(): what for n, what in needles.items()}
        self.found: list[str] = []
        self.places = 0

    def hits(self, label: str, data: bytes) -> list[str]:
        """The needles in ``data`` or anything inside it (also recorded in ``found``)."""
        hits = []
        for where, blob in views(label, data):
            self.places += 1
            for needle, what in self.needles.items():
                if needle in blob:
                    hits.append(f"{what} in {where}")
        self.found += hits
        return hits

    def text(self, label: str, text: str) -> None:
        self.hits(label, text.encode("utf-8", "surrogateescape"))

    def tree(self, root: Path, skip: tuple[Path, ...] = ()) -> int:
        """Every regular file below ``root`` (symlinks not followed); returns how many."""
        count = 0
        for top, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if Path(top, d) not in skip]
            for name in files:
                path = Path(top, name)
                if path in skip or path.is_symlink() or not path.is_file():
                    continue
                self.hits(str(path), path.read_bytes())
                count += 1
        return count


# --------------------------------------------------------------------------------------------
# the scenario


def test_no_secret_or_credential_in_any_output(
    htpasswd_registry: Registry, pybuild, ctx: Path, tmp_path: Path, clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    registry = htpasswd_registry
    password = registry.password
    wrong_password = f"pw-SECRET-9f3a-not-{password[-6:]}"
    inputs = tmp_path / "inputs"  # the secret and the credential files: not outputs, not scanned
    inputs.mkdir()
    secret_file = inputs / "tok"
    secret_file.write_text(SECRET)
    good = {"DOCKER_CONFIG": str(docker_config_dir(inputs / "good-docker", {registry.host: (USER, password)}))}
    bad = {"DOCKER_CONFIG": str(docker_config_dir(inputs / "bad-docker", {registry.host: (USER, wrong_password)}))}
    out, meta, cache = tmp_path / "out", tmp_path / "meta", tmp_path / "cache"
    out.mkdir()
    meta.mkdir()
    (ctx / "pybuild.yaml").write_text(RECIPE)
    repo = unique_repo("secrets")
    runs: dict[str, subprocess.CompletedProcess[str]] = {}

    def build(name: str, target: Path, *args: str, env: dict[str, str] | None = None) -> str:
        result = pybuild(ctx / "pybuild.yaml", "-o", target, "--secret", f"id=tok,src={secret_file}",
                         "--cache-dir", cache, "--metadata-file", meta / f"{name}.json",
                         "--digest-file", meta / f"{name}.digest", "--progress", "plain", *args, env=env)
        runs[f"build {name}"] = result
        assert result.returncode == 0, describe(result)
        return str(result.stdout.strip().splitlines()[-1])

    # builds: layout (runs the step), oci-archive (cached, and pushed), docker-archive (runs it again),
    # a layout with zstd layers (runs it again)
    digest = build("oci", out / "layout")
    assert build("oci-archive", out / "image.oci.tar", "--format", "oci-archive",
                 "--push", registry.ref(repo, "built"), env=good) == digest
    assert build("docker-archive", out / "image.docker.tar", "--format", "docker-archive", "--no-cache") == digest
    assert build("zstd", out / "layout-zstd", "--compression", "zstd") != digest  # zstd layers: a cache miss
    assert RUN_OUTPUT in runs["build oci"].stderr and RUN_OUTPUT in runs["build docker-archive"].stderr
    assert [s["cached"] for s in json.loads((meta / "oci-archive.json").read_text())["steps"]] == [True, True]
    assert any(p.name == "length" for p in cache.rglob("*")), "the cache mount was used"

    # registry: push, pull back, then the same with a wrong password
    pushed = pybuild("push", f"{out / 'layout'}:secrets", registry.ref(repo, "v1"), "--progress", "plain",
                     "--digest-file", meta / "push.digest", env=good)
    runs["push"] = pushed
    assert pushed.returncode == 0, describe(pushed)
    pulled = pybuild("pull", registry.ref(repo, "v1"), "-o", out / "pulled", "--progress", "plain",
                     "--digest-file", meta / "pull.digest", env=good)
    runs["pull"] = pulled
    assert pulled.returncode == 0, describe(pulled)
    assert pulled.stdout.strip() == pushed.stdout.strip() == digest
    for name in ("oci", "oci-archive", "docker-archive", "push", "pull"):
        assert (meta / f"{name}.digest").read_text().strip() == digest, name
    refused = pybuild("push", f"{out / 'layout'}:secrets", registry.ref(repo, "wrong"), "--progress", "plain",
                      env=bad)
    runs["push with a wrong password"] = refused
    assert_user_error(refused, "push with a wrong password")
    refused_pull = pybuild("pull", registry.ref(repo, "v1"), "-o", out / "pulled-wrong", "--progress", "plain",
                           env=bad)
    runs["pull with a wrong password"] = refused_pull
    assert_user_error(refused_pull, "pull with a wrong password")

    # the same failures in this process: the exceptions, their details and their whole chains
    monkeypatch.setenv("DOCKER_CONFIG", bad["DOCKER_CONFIG"])
    image = read_layout(out / "layout", "secrets")
    assert isinstance(image, Image)
    errors: list[BaseException] = []
    options = RegistryOptions(retries=0)
    for attempt in (lambda: push(image, Reference.parse(registry.ref(repo, "wrong2")), options),
                    lambda: pull(Reference.parse(registry.ref(repo, "v1")), tmp_path / "pull-in-process", None,
                                 options)):
        with pytest.raises(PybuildError) as caught:
            attempt()
        assert "authentication failed (401" in str(caught.value), caught.value
        errors.append(caught.value)

    # the scan
    scan = Scan(forbidden(password, wrong_password))
    files = scan.tree(tmp_path, skip=(inputs,)) + scan.tree(clean_env)
    for name, proc in runs.items():
        scan.text(f"stdout of {name}", proc.stdout)
        scan.text(f"stderr of {name}", proc.stderr)
    for exc in errors:
        scan.text(f"{type(exc).__name__} (str)", str(exc))
        scan.text(f"{type(exc).__name__} (repr)", repr(exc))
        scan.text(f"{type(exc).__name__} (detail)", str(getattr(exc, "detail", "")))
        scan.text(f"{type(exc).__name__} (traceback and chain)", "".join(traceback.format_exception(exc)))
    assert not scan.found, "secrets leaked:\n" + "\n".join(scan.found)

    # positive controls: the same scanner finds what is there, inside layers inside archives too
    assert files > 10 and scan.places > 100, (files, scan.places)
    for image_output in (out / "layout", out / "layout-zstd", out / "pulled", out / "image.oci.tar",
                         out / "image.docker.tar"):
        control = Scan({SECRET_SHA256: "sha256(secret)"})
        if image_output.is_dir():
            control.tree(image_output)
        else:
            control.hits(str(image_output), image_output.read_bytes())
        assert any(h.endswith("(decompressed)!secret.sha256") for h in control.found), (image_output, control.found)
    assert Scan({RUN_OUTPUT: "run output"}).hits("stderr of build oci", runs["build oci"].stderr.encode())
    assert Scan({basic_auth(USER, password): "auth"}).hits("config.json", (inputs / "good-docker/config.json").read_bytes())
