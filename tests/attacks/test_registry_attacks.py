"""Hostile registries, token servers, credential files and helpers against pybuild's registry code.

Each server here is a ``ThreadingHTTPServer`` on 127.0.0.1 whose every answer is a function the
test gives (:class:`Hostile`), so it can do what no real registry does: answer a token of 256 MiB,
send a body that never ends, send a manifest one byte at a time, redirect to ``file://``, nest
JSON 100000 levels deep. What must come out is one clean error (a PybuildError; from the CLI one
``pybuild: error:`` line and exit status 1), within bounded time and memory; and no credentials
where they do not belong (``~/.netrc`` on a token server's redirect target).

Memory bombs run through the CLI under an address-space limit (``limited``), so that a
regression fails with a MemoryError instead of taking the machine down; attacks on time run the
library function the CLI calls in a thread with a short deadline and a bounded wait.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from builder.errors import InputError, PybuildError, RegistryError
from builder.oci.canonical import MAX_DEPTH, json_object, json_value, nesting_depth
from builder.oci.mediatypes import MediaType
from builder.oci.reference import Reference
from builder.registry.credential_lookup import find_credentials
from builder.registry.options import RegistryOptions
from builder.registry.pull import pull
from tests.attacks.conftest import assert_clean_error

MiB = 1 << 20
REPO = "attack/app"
DEEP = b"[" * 100_000
#: Options for the time attacks: deadlines of a few seconds, and per-read timeouts no drip trips.
QUICK = RegistryOptions(retries=1, backoff=0, timeout=10, deadline=2)


# --------------------------------------------------------------------------------------------
# a server whose answers are the test's


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class Hostile:
    """An HTTP/1.1 server on 127.0.0.1 answering every request with ``answer(handler)``; records requests."""

    def __init__(self, answer: Callable[[_Handler], None]) -> None:
        self.answer = answer
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()  # ends drips and endless bodies when the test is over
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    def ref(self, tag: str = "1") -> Reference:
        return Reference.parse(f"{self.host}/{REPO}:{tag}")

    def requests(self, pattern: str = "") -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if pattern in s.path]

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up on endless answers (and TLS probes) are the point


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def owner(self) -> Hostile:
        owner: Hostile = self.server.owner
        return owner

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        with self.owner.lock:
            self.owner.seen.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        self.owner.answer(self)

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle  # noqa: N815

    # -- answers

    def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def endless(self, status: int, headers: dict[str, str] | None = None, declared: int | None = None) -> None:
        """``{"token":"aaa...`` until the client hangs up (chunked, at most 2 GiB), or a valid token
        reply of exactly ``declared`` bytes (a Content-Length answer)."""
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header(*(("Content-Length", str(declared)) if declared else ("Transfer-Encoding", "chunked")))
        self.end_headers()
        size = 64 * 1024
        left = declared if declared else 2048 * size
        try:
            while left > 0 and not self.owner.stopping.is_set():
                block = b"a" * min(size, left)
                if left == declared:
                    block = b'{"token":"' + block[10:]
                if left == len(block) and declared:
                    block = block[:-2] + b'"}'
                self.wfile.write(block if declared else b"%x\r\n%s\r\n" % (len(block), block))
                left -= len(block)
        except OSError:
            pass
        self.close_connection = True

    def drip(self, data: bytes, interval: float) -> None:
        """``data`` (a whole answer: status line, headers, body) one byte every ``interval`` seconds."""
        try:
            for byte in data:
                if self.owner.stopping.wait(interval):
                    break
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
        except OSError:
            pass
        self.close_connection = True


@pytest.fixture
def hostile() -> Iterator[Callable[[Callable[[_Handler], None]], Hostile]]:
    servers: list[Hostile] = []

    def start(answer: Callable[[_Handler], None]) -> Hostile:
        servers.append(Hostile(answer))
        return servers[-1]

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """No credentials, proxies or netrc from the machine running the tests, in this process and for the CLI."""
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "DOCKER_CONFIG": str(tmp_path / "docker"),
        "REGISTRY_AUTH_FILE": str(tmp_path / "no-auth.json"),
        "NETRC": str(tmp_path / "no-netrc"),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def finish_within(seconds: float, func: Callable[[], object]) -> tuple[float, BaseException | None]:
    """Run ``func`` in a thread: (seconds it took, what it raised); fails the test if it is still running."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            func()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    start = time.monotonic()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s"
    return time.monotonic() - start, outcome[0]


def manifest_for(config: bytes) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": MediaType.OCI_MANIFEST,
        "config": {"mediaType": MediaType.OCI_CONFIG, "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                   "size": len(config)},
        "layers": [],
    }).encode()


def bearer_challenge(realm: str) -> dict[str, str]:
    return {"WWW-Authenticate": f'Bearer realm="{realm}",service="attack",scope="repository:{REPO}:pull"',
            "Content-Type": "application/json"}


def token_registry(start: Callable[[Callable[[_Handler], None]], Hostile],
                   token_answer: Callable[[_Handler], None]) -> tuple[Hostile, Hostile]:
    """(registry, token server): the registry wants a Bearer token from the token server, then has nothing."""
    tokens = start(token_answer)

    def registry(h: _Handler) -> None:
        if h.headers.get("Authorization", "").startswith("Bearer "):
            h.send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}')
        else:
            h.send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', bearer_challenge(f"http://{tokens.host}/token"))

    return start(registry), tokens


# --------------------------------------------------------------------------------------------
# 1. every read bounded


@pytest.mark.parametrize("declared", [256 * MiB, None], ids=["256MiB-declared", "endless-chunked"])
def test_a_huge_token_reply_is_refused_not_sent_back(hostile: Any, clean_env: dict[str, str], limited: Any,
                                                     tmp_path: Path, declared: int | None) -> None:
    """A 256 MiB token used to be accepted and sent back to the registry as a 256 MiB Authorization header."""
    registry, tokens = token_registry(hostile, lambda h: h.endless(200, {"Content-Type": "application/json"}, declared))
    result = limited("pull", registry.ref(), "-o", tmp_path / "out", env=clean_env, timeout=60)
    assert_clean_error(result, f"token endpoint http://{tokens.host}/token", "more than the limit of 1 MiB")
    assert all(len(s.headers.get("authorization", "")) < 4096 for s in registry.seen)
    assert tokens.requests("/token"), "the token server was never asked"


@pytest.mark.parametrize("status", [201, 400], ids=["stored", "refused"])
def test_an_endless_answer_to_a_manifest_put_is_cut(hostile: Any, clean_env: dict[str, str], limited: Any,
                                                    tmp_path: Path, status: int) -> None:
    """The answer to a PUT (a success or an error body) used to be read whole by requests, however long."""
    (tmp_path / "r.yaml").write_text('version: 1\nsteps:\n  - write: /etc/greeting\n    content: "hi\\n"\n')
    built = limited("build", "r.yaml", "-o", tmp_path / "out", "-q", env=clean_env, timeout=60)
    assert built.returncode == 0, built.stderr

    def answer(h: _Handler) -> None:
        if h.command == "HEAD":
            h.send(200 if "/blobs/" in h.path else 404)  # every blob is there already, no manifest is
        elif h.command == "PUT" and "/manifests/" in h.path:
            h.endless(status, {"Content-Type": "application/json"})
        else:
            h.send(404)

    registry = hostile(answer)
    result = limited("push", f"{tmp_path / 'out'}:latest", f"{registry.host}/{REPO}:1", env=clean_env, timeout=60)
    if status == 201:
        assert_clean_error(result, f"PUT /v2/{REPO}/manifests/1: the answer is more than the limit of 64 KiB")
    else:
        assert_clean_error(result, f"PUT /v2/{REPO}/manifests/1: 400 Bad Request")
    assert registry.requests("/manifests/1")


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "chunked"])
def test_a_manifest_over_4_mib_is_refused(hostile: Any, clean_env: dict[str, str], tmp_path: Path,
                                          declared: bool) -> None:
    """The distribution spec caps manifests at 4 MiB; 8 MiB used to be read and parsed."""
    body = b'{"schemaVersion":2,"pad":"' + b"x" * (5 * MiB) + b'"}'

    def answer(h: _Handler) -> None:
        if declared:
            h.send(200, body, {"Content-Type": MediaType.OCI_MANIFEST})
            return
        h.send_response(200)
        h.send_header("Content-Type", MediaType.OCI_MANIFEST)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for i in range(0, len(body), 65536):
            part = body[i : i + 65536]
            h.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
        h.wfile.write(b"0\r\n\r\n")

    registry = hostile(answer)
    expected = f"is {len(body)} bytes, more than the limit of 4 MiB" if declared else "is more than the limit of 4 MiB"
    with pytest.raises(RegistryError, match=f"GET /v2/{REPO}/manifests/1: manifest {expected}$"):
        pull(registry.ref(), tmp_path / "store", None, QUICK)


@pytest.mark.parametrize("kind", ["dev-zero", "5MiB-file"])
def test_a_credentials_file_over_4_mib_is_refused(clean_env: dict[str, str], limited: Any, tmp_path: Path,
                                                  kind: str) -> None:
    """``REGISTRY_AUTH_FILE=/dev/zero`` used to be read until memory ran out; a 5 MiB file was parsed."""
    if kind == "dev-zero":
        env = {**clean_env, "REGISTRY_AUTH_FILE": "/dev/zero"}
        result = limited("pull", f"127.0.0.1:9/{REPO}:1", "-o", tmp_path / "out", env=env, timeout=60)
        assert_clean_error(result, "/dev/zero: credentials file is larger than 4 MiB")
        return
    big = tmp_path / "auth.json"
    big.write_text(json.dumps({"auths": {}, "pad": "x" * (5 * MiB)}))
    with pytest.raises(InputError, match=r"auth\.json: credentials file is larger than 4 MiB$"):
        find_credentials("127.0.0.1:9", {**clean_env, "REGISTRY_AUTH_FILE": str(big)})


def test_a_credential_helper_that_never_stops_writing(clean_env: dict[str, str], limited: Any, tmp_path: Path) -> None:
    """A helper's output used to be kept whole (``capture_output``) until the helper's 60 s were up."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-flood"
    helper.write_text("#!/bin/sh\nexec cat /dev/zero\n")
    helper.chmod(0o755)
    docker = Path(clean_env["DOCKER_CONFIG"])
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps({"credsStore": "flood"}))
    env = {**clean_env, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', os.defpath)}"}
    started = time.monotonic()
    result = limited("pull", f"127.0.0.1:9/{REPO}:1", "-o", tmp_path / "out", env=env, timeout=90)
    assert_clean_error(result, "credential helper docker-credential-flood wrote more than 1 MiB for 127.0.0.1:9")
    assert time.monotonic() - started < 30  # cut at the cap, not at the helper's timeout


# --------------------------------------------------------------------------------------------
# 2. an overall deadline, not only a per-read timeout


def _answer_bytes(status: str, headers: dict[str, str], body: bytes) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in {**headers, "Content-Length": str(len(body))}.items())
    return f"HTTP/1.1 {status}\r\n{head}\r\n".encode() + body


@pytest.mark.parametrize("phase", ["body", "headers"])
def test_a_manifest_sent_a_byte_at_a_time_hits_the_deadline(hostile: Any, clean_env: dict[str, str], tmp_path: Path,
                                                            phase: str) -> None:
    """One byte every 0.25 s never trips a 10 s read timeout; it used to hold a pull for as long as it went on."""
    manifest = manifest_for(b"{}")

    def answer(h: _Handler) -> None:
        whole = _answer_bytes("200 OK", {"Content-Type": MediaType.OCI_MANIFEST, "X-Pad": "p" * 400}, manifest)
        if phase == "body":
            head, _, body = whole.partition(b"\r\n\r\n")
            h.wfile.write(head + b"\r\n\r\n")
            h.wfile.flush()
            h.drip(body, 0.25)
        else:
            h.drip(whole, 0.25)

    registry = hostile(answer)
    took, error = finish_within(30, lambda: pull(registry.ref(), tmp_path / "store", None, QUICK))
    assert isinstance(error, RegistryError), error
    assert str(error) == f"{registry.host}: GET /v2/{REPO}/manifests/1: no complete answer within 2 s"
    assert took < 8
    assert len(registry.requests("/manifests/")) == 1  # a deadline is not retried


def test_a_token_sent_a_byte_at_a_time_hits_the_deadline(hostile: Any, clean_env: dict[str, str],
                                                         tmp_path: Path) -> None:
    reply = _answer_bytes("200 OK", {"Content-Type": "application/json"}, b'{"token": "' + b"t" * 200 + b'"}')
    registry, tokens = token_registry(hostile, lambda h: h.drip(reply, 0.25))
    took, error = finish_within(30, lambda: pull(registry.ref(), tmp_path / "store", None, QUICK))
    assert isinstance(error, RegistryError), error
    assert str(error) == f"{registry.host}: token endpoint http://{tokens.host}/token gave no complete answer within 2 s"
    assert took < 8


def test_a_blob_slower_than_the_minimum_throughput_fails(hostile: Any, clean_env: dict[str, str],
                                                         tmp_path: Path) -> None:
    """Blobs have no overall deadline (they may be gigabytes), but each MiB must come within ``timeout``."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "pad": "x" * 20_000}).encode()
    manifest = manifest_for(config)

    def answer(h: _Handler) -> None:
        if "/manifests/" in h.path:
            h.send(200, manifest, {"Content-Type": MediaType.OCI_MANIFEST})
        else:
            h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(config))
            h.wfile.flush()
            h.drip(config, 0.2)  # 5 bytes/s: every read is quick, the whole would take over an hour

    registry = hostile(answer)
    options = RegistryOptions(retries=1, backoff=0, timeout=1.5, deadline=30)
    took, error = finish_within(30, lambda: pull(registry.ref(), tmp_path / "store", None, options))
    assert isinstance(error, RegistryError), error
    assert str(error).endswith("/blobs/sha256:" + hashlib.sha256(config).hexdigest()
                               + ": the blob arrives slower than 1 MiB per 1.5 s")
    assert took < 10


# --------------------------------------------------------------------------------------------
# 3. redirects only to http(s)


BAD_LOCATIONS = ["file:///etc/passwd", "gopher://127.0.0.1:70/1x", "ftp://127.0.0.1/x", "data:text/plain,hi",
                 "http://[::1", "http://127.0.0.1:99999/x"]


@pytest.mark.parametrize("location", BAD_LOCATIONS)
def test_a_redirect_to_something_not_http_is_a_clean_error(hostile: Any, clean_env: dict[str, str], tmp_path: Path,
                                                           location: str) -> None:
    registry = hostile(lambda h: h.send(302, b"", {"Location": location}))
    with pytest.raises(RegistryError) as info:
        pull(registry.ref(), tmp_path / "store", None, QUICK)
    assert str(info.value) == (f"{registry.host}: GET /v2/{REPO}/manifests/1: 302 redirect to a URL that is not "
                               "http(s) or is malformed")


def test_a_redirect_to_a_file_url_from_the_cli(hostile: Any, clean_env: dict[str, str], limited: Any,
                                              tmp_path: Path) -> None:
    registry = hostile(lambda h: h.send(307, b"", {"Location": "file:///etc/passwd"}))
    result = limited("pull", registry.ref(), "-o", tmp_path / "out", env=clean_env, timeout=60)
    assert_clean_error(result, "307 redirect to a URL that is not http(s) or is malformed")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("location", ["file:///etc/passwd", "gopher://127.0.0.1:70/1x", "http://[::1"])
def test_a_token_endpoint_redirect_to_something_not_http(hostile: Any, clean_env: dict[str, str], tmp_path: Path,
                                                         location: str) -> None:
    registry, tokens = token_registry(hostile, lambda h: h.send(302, b"", {"Location": location}))
    with pytest.raises(RegistryError) as info:
        pull(registry.ref(), tmp_path / "store", None, QUICK)
    assert str(info.value) == (f"{registry.host}: token endpoint http://{tokens.host}/token redirected to a URL that "
                               "is not http(s) or is malformed")


# --------------------------------------------------------------------------------------------
# 4. ~/.netrc is never consulted


def test_netrc_never_reaches_a_token_redirect_target(hostile: Any, clean_env: dict[str, str], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """requests added ~/.netrc's password for the target of a redirect it followed; the target is another port."""
    netrc = Path(clean_env["HOME"]) / ".netrc"
    netrc.write_text("machine 127.0.0.1 login netrc-user password netrc-secret\n")
    netrc.chmod(0o600)
    monkeypatch.delenv("NETRC")  # requests looks at $HOME/.netrc
    target = hostile(lambda h: h.send(200, b'{"token": "issued-by-the-target"}', {"Content-Type": "application/json"}))
    registry, tokens = token_registry(hostile, lambda h: h.send(302, b"", {"Location": f"http://{target.host}/issue"}))
    with pytest.raises(RegistryError, match="404 MANIFEST_UNKNOWN"):
        pull(registry.ref(), tmp_path / "store", None, QUICK)
    assert target.requests("/issue"), "the redirect was not followed"
    assert [s.headers.get("authorization") for s in target.seen] == [None]
    assert [s.headers.get("authorization") for s in tokens.seen] == [None]
    assert all(s.headers.get("authorization", "Bearer ").startswith("Bearer ") for s in registry.seen)
    assert registry.requests()[-1].headers["authorization"] == "Bearer issued-by-the-target"


def test_basic_credentials_follow_a_token_redirect_on_the_same_origin_only(hostile: Any, clean_env: dict[str, str],
                                                                           tmp_path: Path) -> None:
    """Redirects of a token request are followed by hand: Basic goes to the realm's own origin, never elsewhere."""
    basic = "Basic " + base64.b64encode(b"alice:s3cret").decode()
    docker = Path(clean_env["DOCKER_CONFIG"])
    docker.mkdir()
    target = hostile(lambda h: h.send(200, b'{"token": "t"}', {"Content-Type": "application/json"}))

    def tokens(h: _Handler) -> None:
        if h.path.startswith("/token"):
            h.send(307, b"", {"Location": "/moved?x=1"})  # the same origin
        else:
            h.send(302, b"", {"Location": f"http://{target.host}/issue"})  # another port: another origin

    registry, token_server = token_registry(hostile, tokens)
    (docker / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": basic.split()[1]}}}))
    with pytest.raises(RegistryError, match="404 MANIFEST_UNKNOWN"):
        pull(registry.ref(), tmp_path / "store", None, QUICK)
    assert [(s.path.partition("?")[0], s.headers.get("authorization")) for s in token_server.seen] == [
        ("/token", basic), ("/moved", basic)]
    assert [s.headers.get("authorization") for s in target.seen] == [None]


# --------------------------------------------------------------------------------------------
# 5. nesting deeper than MAX_DEPTH is a clean error, in one place


def test_a_deeply_nested_manifest(hostile: Any, clean_env: dict[str, str], tmp_path: Path) -> None:
    registry = hostile(lambda h: h.send(200, DEEP, {"Content-Type": MediaType.OCI_MANIFEST}))
    with pytest.raises(RegistryError, match=f"manifest is not valid JSON: nested more than {MAX_DEPTH} levels deep$"):
        pull(registry.ref(), tmp_path / "store", None, QUICK)


def test_a_deeply_nested_token_reply(hostile: Any, clean_env: dict[str, str], tmp_path: Path) -> None:
    registry, _ = token_registry(hostile, lambda h: h.send(200, DEEP, {"Content-Type": "application/json"}))
    with pytest.raises(RegistryError, match=f"answered unusable JSON \\(nested more than {MAX_DEPTH} levels deep\\)$"):
        pull(registry.ref(), tmp_path / "store", None, QUICK)


def test_a_deeply_nested_docker_config(clean_env: dict[str, str]) -> None:
    docker = Path(clean_env["DOCKER_CONFIG"])
    docker.mkdir()
    (docker / "config.json").write_bytes(b'{"auths": ' + DEEP)
    with pytest.raises(InputError, match=f"config\\.json: cannot read credentials file \\(nested more than "
                                         f"{MAX_DEPTH} levels deep\\)$"):
        find_credentials("ghcr.io", clean_env)


def test_a_deeply_nested_credential_helper_answer(clean_env: dict[str, str], tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-deep"
    helper.write_text(f"#!/bin/sh\nhead -c {len(DEEP)} /dev/zero | tr '\\0' '['\n")
    helper.chmod(0o755)
    docker = Path(clean_env["DOCKER_CONFIG"])
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps({"credHelpers": {"ghcr.io": "deep"}}))
    env = {**clean_env, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', os.defpath)}"}
    with pytest.raises(RegistryError, match=r"docker-credential-deep gave a malformed answer for ghcr\.io$"):
        find_credentials("ghcr.io", env)


def test_the_depth_rule() -> None:
    """Depth counts brackets outside strings; MAX_DEPTH levels parse, one more is a ValueError naming the rule."""
    assert json_value(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None
    with pytest.raises(ValueError, match=f"^nested more than {MAX_DEPTH} levels deep$"):
        json_value(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    with pytest.raises(ValueError, match="nested more than"):
        json_object(b'{"a": ' * 65 + b"1" + b"}" * 65)
    in_strings = json.dumps({"a": "[" * 1000, "b": "\\\"[{" * 300, "c": ["]]]}}}"]}).encode()
    assert json_object(in_strings)["c"] == ["]]]}}}"]
    assert nesting_depth(b'{"x": "\\"[[[", "y": [[1]]}') == 3
    with pytest.raises(ValueError, match=r"more than the limit of 10$"):
        json_value(b"[1,2,3,4,5,6]", limit=10)


def test_the_depth_rule_is_not_fooled_by_other_encodings() -> None:
    """In UTF-16 a character's bytes can be a quote that hides brackets from the scan; only UTF-8 is read."""
    hidden = ('["\u2200", ' + "[" * 100_000).encode("utf-16-be")  # U+2200 is b'"\x00': a quote for the scan
    assert nesting_depth(hidden) == 1  # the byte scan sees a string that runs to the end...
    with pytest.raises(RecursionError):
        json.loads(hidden)  # ...which json.loads, guessing UTF-16 from the zero bytes, does not
    with pytest.raises(ValueError):  # json_value reads UTF-8 only: the parser sees what the scan saw
        json_value(hidden)
    with pytest.raises(ValueError, match=r"^not UTF-8 at byte 0$"):
        json_value(b"\xff{}")


@pytest.mark.parametrize("bomb", [b"[" * (4 * MiB), b'"\\"' * (4 * MiB // 3), b'"' + b"a" * (4 * MiB), b"[]" * (2 * MiB)],
                         ids=["brackets", "escaped-quotes", "unclosed-string", "flat-pairs"])
def test_the_depth_scan_is_linear(bomb: bytes) -> None:
    """It runs on every manifest: a 4 MiB hostile document is scanned in well under a second."""
    started = time.monotonic()
    with pytest.raises(ValueError):
        json_object(bomb)
    assert time.monotonic() - started < 2


def test_pybuild_errors_only(hostile: Any, clean_env: dict[str, str], tmp_path: Path) -> None:
    """Garbage where a registry's answer should be: every failure is a PybuildError, never anything else."""
    answers: list[Callable[[_Handler], None]] = [
        lambda h: h.send(200, b"\xff\xfe not json", {"Content-Type": MediaType.OCI_MANIFEST}),
        lambda h: h.send(200, b"{}", {"Content-Type": MediaType.OCI_MANIFEST, "Content-Encoding": "gzip"}),
        lambda h: h.send(302, b"", {"Location": "http://127.0.0.1:1/\x7f"}),
        lambda h: h.send(500, b'{"errors": ' + DEEP),
    ]
    for answer in answers:
        registry = hostile(answer)
        with pytest.raises(PybuildError):
            pull(registry.ref(), tmp_path / "store", None, QUICK)
