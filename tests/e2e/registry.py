"""Real registries for the end-to-end tests: Debian's ``docker-registry`` on 127.0.0.1, a token
server, a fault-injecting proxy, and credential files.

Three flavours of registry, each a real ``docker-registry`` (distribution 2.8) process with its own
config file and storage in a temporary directory, listening on a free port of 127.0.0.1:

- ``plain``: no authentication.
- ``htpasswd``: HTTP Basic against an htpasswd file whose hashes are bcrypt (made with the
  ``bcrypt`` package, a test extra; Go's bcrypt accepts its ``$2b$`` prefix, so ``htpasswd -B``
  from apache2-utils is not needed). Distribution serves htpasswd auth over plain HTTP.
- ``token``: the registry's ``auth: token`` with :class:`TokenServer` (in this process) as its
  realm. The server checks Basic credentials and answers ``{"token", "access_token",
  "expires_in", "issued_at"}`` with an RS256 JWT. Its key and self-signed certificate are made with
  ``openssl``; the certificate is the registry's ``rootcertbundle``, and the JWT header names the
  key by its libtrust key id (``kid``), which the registry derives from every certificate in the
  bundle. Signing is ``openssl dgst -sha256 -sign`` (the ``cryptography`` package is not a
  dependency of the project, so it is not assumed).

:class:`FaultProxy` is a threaded HTTP/1.1 proxy in this process that forwards to one registry
and misbehaves on request: for the requests matching a (method, path regex) rule it answers a
status (503) instead, drops the connection (RST) before or in the middle of the response body,
answers slowly, answers 401 with the registry's own challenge (forcing a token client to
re-authenticate), corrupts or truncates a body, or flips a hex digit of a digest in a manifest.
It forwards the client's ``Host`` header, so the registry's upload ``Location`` URLs point back
at the proxy. It also records every request, which is how tests count uploads.

Everything listens on 127.0.0.1 only; every wait and every retry loop is bounded.

Facts found by trying (distribution 2.8.2, skopeo 1.9.3):

- The registry's access log (``"PUT /v2/... HTTP/1.1" 201 ...``) goes to stdout, its own log to
  stderr; both are kept in ``registry.log`` in the registry's directory.
- The registry verifies a JWT with 60 s of leeway on ``exp``/``nbf``, so a short-lived token is not
  refused by the registry itself within a test's time: ``FaultProxy(enforce_token_expiry=True)``
  refuses expired bearer tokens with a 401 (and the registry's challenge) without that leeway.
- skopeo talks plain HTTP to a registry only with ``--tls-verify=false`` (``--src-``/
  ``--dest-tls-verify=false`` for ``copy``); it tries HTTPS first and falls back.
- skopeo 1.9 retries none of the faults (503, reset, 401 mid-push: it fails at once) and refuses
  corrupt or truncated blobs and changed manifests itself ("Digest did not match"), so it shows
  that each fault reaches a client (test_registry_faults.py, ``test_harness_*``).
- Go clients send one ``Accept`` header per media type: the proxy forwards headers one by one
  (a dict would keep only the last, and the registry then answers 404 "OCI manifest found, but
  accept header does not support OCI manifests").
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import re
import secrets
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from .runtimes import ToolError, run

LOOPBACK = "127.0.0.1"
SERVICE = "pybuild-test"
ISSUER = "pybuild-test-issuer"
USER = "pybuild"
START_TIMEOUT = 30.0
#: The longest a fault may hold a response back (the issue: "bounded, e.g. 2 s").
MAX_DELAY = 5.0

# --------------------------------------------------------------------------------------------
# small helpers


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago (the caller retries if it is taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def basic_auth(user: str, password: str) -> str:
    """The ``auth`` value of a docker config.json entry: base64 of ``user:password``."""
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def write_auth_json(path: Path, auths: dict[str, tuple[str, str]]) -> Path:
    """A docker ``config.json`` / containers ``auth.json``: ``{"auths": {HOST: {"auth": b64}}}``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"auths": {host: {"auth": basic_auth(user, pw)} for host, (user, pw) in auths.items()}}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    path.chmod(0o600)
    return path


def docker_config_dir(directory: Path, auths: dict[str, tuple[str, str]]) -> Path:
    """A ``$DOCKER_CONFIG`` directory whose config.json holds ``auths``; returns the directory."""
    write_auth_json(directory / "config.json", auths)
    return directory


#: urllib without $http_proxy: test traffic goes straight to 127.0.0.1, never through a proxy.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a GET; HTTP errors are answers too, not exceptions."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with _DIRECT.open(request, timeout=timeout) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, dict(err.headers.items()), err.read()


def skopeo(*args: str | os.PathLike[str], check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``skopeo ARGS`` (no terminal); with ``check`` a failure raises ToolError with its output."""
    return run(["skopeo", *args], check=check, timeout=timeout)


def secret_strings(*values: str) -> list[str]:
    """Forms in which a credential could leak: as is, and base64 of ``user:value`` for a password."""
    found: list[str] = []
    for value in values:
        if value:
            found += [value, basic_auth(USER, value)]
    return found


# --------------------------------------------------------------------------------------------
# a small threaded HTTP server in this process


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up is normal here (faults do it on purpose): no traceback on stderr."""


class _Threaded:
    """Runs a ThreadingHTTPServer on 127.0.0.1:0 in a daemon thread; ``stop()`` ends it."""

    def _serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd: _Server | None = _Server((LOOPBACK, 0), handler)
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the registry host part of a reference."""
        return f"{LOOPBACK}:{self.port}"

    def stop(self) -> None:
        httpd = getattr(self, "httpd", None)
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
            self.thread.join(timeout=10)
            self.httpd = None


# --------------------------------------------------------------------------------------------
# the token server


def libtrust_key_id(spki_der: bytes) -> str:
    """The key id docker/libtrust gives a public key: the registry's name for a trusted key.

    base32 of the first 240 bits of sha256(DER SubjectPublicKeyInfo), in 12 groups of 4
    characters joined by ':'.
    """
    encoded = base64.b32encode(hashlib.sha256(spki_der).digest()[:30]).decode()
    return ":".join(encoded[i : i + 4] for i in range(0, 48, 4))


@dataclass
class Issued:
    """One token the server handed out."""

    token: str
    user: str
    access: list[dict[str, Any]]
    at: float  # time.monotonic()


class TokenServer(_Threaded):
    """A Docker registry token server (the ``realm``) for :class:`Registry` flavour ``token``.

    ``GET /token?service=..&scope=repository:NAME:pull,push`` (and the OAuth2 ``POST`` form with
    ``grant_type=password``) with Basic credentials of a known user answers a JWT granting what
    the scopes ask for; wrong or missing credentials get a 401. ``expires_in`` is settable, and
    every token issued is recorded in ``issued`` (so tests can count re-authentication and check
    that no token leaks into pybuild's output). A token's ``exp`` is ``int(now) + expires_in``: it
    lives between ``expires_in - 1`` and ``expires_in`` seconds.
    """

    def __init__(self, workdir: Path, users: dict[str, str], expires_in: int = 300) -> None:
        self.workdir = workdir
        self.users = dict(users)
        self.expires_in = expires_in
        self.issued: list[Issued] = []
        self.refused = 0
        self.lock = threading.Lock()
        self.key = workdir / "token-key.pem"
        self.cert = workdir / "token-cert.pem"
        run([
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3650",
            "-subj", "/CN=pybuild-test-token-issuer", "-keyout", self.key, "-out", self.cert,
        ])  # fmt: skip
        spki = subprocess.run(
            ["openssl", "pkey", "-in", str(self.key), "-pubout", "-outform", "DER"],
            capture_output=True, check=True, timeout=30, stdin=subprocess.DEVNULL,
        ).stdout  # fmt: skip
        self.kid = libtrust_key_id(spki)
        self._serve(_TokenHandler)

    @property
    def realm(self) -> str:
        return f"http://{self.host}/token"

    def sign(self, payload: bytes) -> bytes:
        """RS256 (RSASSA-PKCS1-v1_5 over SHA-256) with the server's key."""
        return subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=payload, capture_output=True, check=True, timeout=30,
        ).stdout  # fmt: skip

    def make_token(
        self, user: str, access: list[dict[str, Any]], expires_in: int | None = None, issuer: str = ISSUER
    ) -> str:
        """A signed JWT (also used by the harness tests to forge tokens the registry must refuse)."""
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "kid": self.kid}
        claims = {
            "iss": issuer, "sub": user, "aud": SERVICE, "exp": now + (expires_in or self.expires_in),
            "nbf": now - 1, "iat": now, "jti": secrets.token_hex(16), "access": access,
        }  # fmt: skip
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        return f"{signing_input}.{b64url(self.sign(signing_input.encode()))}"

    def issue(self, user: str, scopes: Sequence[str]) -> Issued:
        access = [grant for scope in scopes if (grant := parse_scope(scope)) is not None]
        token = self.make_token(user, access)
        with self.lock:
            issued = Issued(token, user, access, time.monotonic())
            self.issued.append(issued)
        return issued

    def tokens(self) -> list[str]:
        with self.lock:
            return [i.token for i in self.issued]

    def issued_after(self, moment: float) -> int:
        with self.lock:
            return sum(1 for i in self.issued if i.at > moment)


def parse_scope(scope: str) -> dict[str, Any] | None:
    """``repository:NAME:pull,push`` → ``{"type", "name", "actions"}`` (all requested actions granted)."""
    kind, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not kind or not name:
        return None
    return {"type": kind, "name": name, "actions": sorted({a for a in actions.split(",") if a})}


class _TokenHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _basic_user(self) -> str | None:
        value = self.headers.get("Authorization", "")
        if not value.lower().startswith("basic "):
            return None
        try:
            user, _, password = base64.b64decode(value[6:].strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return self._check(user, password)

    def _check(self, user: str, password: str) -> str | None:
        server: TokenServer = self.server.owner  # type: ignore[attr-defined]
        known = server.users.get(user)
        return user if known is not None and secrets.compare_digest(known, password) else None

    def _grant(self, user: str | None, params: dict[str, list[str]]) -> None:
        server: TokenServer = self.server.owner  # type: ignore[attr-defined]
        if user is None or params.get("service", [SERVICE])[0] != SERVICE:
            with server.lock:
                server.refused += 1
            self._reply(
                401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                {"WWW-Authenticate": f'Basic realm="{SERVICE}"'},
            )  # fmt: skip
            return
        scopes = [s for value in params.get("scope", []) for s in value.split(" ") if s]
        issued = server.issue(user, scopes)
        self._reply(200, {
            "token": issued.token, "access_token": issued.token, "expires_in": server.expires_in,
            "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })  # fmt: skip

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/token":
            self._reply(404, {"error": "not found"})
            return
        self._grant(self._basic_user(), urllib.parse.parse_qs(url.query))

    def do_POST(self) -> None:
        """The OAuth2 form (``grant_type=password``), which some clients prefer."""
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode(errors="replace"))
        if urllib.parse.urlsplit(self.path).path != "/token":
            self._reply(404, {"error": "not found"})
            return
        user = self._basic_user()
        if user is None and form.get("grant_type", [""])[0] == "password":
            user = self._check(form.get("username", [""])[0], form.get("password", [""])[0])
        self._grant(user, form)


# --------------------------------------------------------------------------------------------
# the registry process

REGISTRY_CONFIG = """\
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
  secret: {secret}
  headers:
    X-Content-Type-Options: [nosniff]
{auth}"""

HTPASSWD_AUTH = """\
auth:
  htpasswd:
    realm: {realm}
    path: {path}
"""

TOKEN_AUTH = """\
auth:
  token:
    realm: {realm}
    service: {service}
    issuer: {issuer}
    rootcertbundle: {cert}
"""

ACCESS_LOG = re.compile(r'"(?P<method>[A-Z]+) (?P<uri>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) ')


@dataclass(frozen=True)
class Request:
    """One request a registry (access log) or the proxy saw."""

    method: str
    path: str
    status: int
    fault: str = ""


class Registry:
    """A ``docker-registry`` process on 127.0.0.1 (see the module docstring for the flavours).

    ``host`` is ``127.0.0.1:PORT``; ``ref("repo", "tag")`` a reference into it; ``users`` the
    valid credentials (empty for ``plain``); ``token_server`` the realm of a ``token`` registry.
    """

    def __init__(self, workdir: Path, flavour: str = "plain", users: dict[str, str] | None = None) -> None:
        if flavour not in ("plain", "htpasswd", "token"):
            raise ValueError(f"unknown registry flavour {flavour!r}")
        self.workdir = workdir
        self.flavour = flavour
        self.users = dict(users or {}) if flavour != "plain" else {}
        self.config = workdir / "config.yml"
        self.log = workdir / "registry.log"
        self.storage = workdir / "storage"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.token_server: TokenServer | None = None

    # -- lifecycle

    def _auth_section(self) -> str:
        if self.flavour == "htpasswd":
            import bcrypt  # a test extra (pyproject); imported here so that other tests need not have it

            htpasswd = self.workdir / "htpasswd"
            htpasswd.write_text(
                "".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=5)).decode()}\n" for u, p in self.users.items())
            )
            return HTPASSWD_AUTH.format(realm=SERVICE, path=htpasswd)
        if self.flavour == "token":
            if self.token_server is None:
                self.token_server = TokenServer(self.workdir, self.users)
            return TOKEN_AUTH.format(
                realm=self.token_server.realm, service=SERVICE, issuer=ISSUER, cert=self.token_server.cert
            )
        return ""

    def start(self, attempts: int = 3) -> Registry:
        """Start on a free port and wait until ``GET /v2/`` answers (200, or 401 with auth)."""
        auth = self._auth_section()
        self.storage.mkdir(parents=True, exist_ok=True)
        for attempt in range(attempts):
            self.port = free_port()
            self.config.write_text(
                REGISTRY_CONFIG.format(
                    storage=self.storage, addr=f"{LOOPBACK}:{self.port}", secret=secrets.token_hex(16), auth=auth
                )
            )
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    ["docker-registry", "serve", str(self.config)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            if self._wait_ready():
                return self
            self._kill()
            if "address already in use" not in self.log_text() or attempt == attempts - 1:
                break
        self.stop()
        raise ToolError(f"docker-registry ({self.flavour}) did not come up:\n{self.log_tail()}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            with contextlib.suppress(OSError):
                status, _, _ = http_get(f"{self.url}/v2/", timeout=2)
                if status in (200, 401):
                    return True
            time.sleep(0.1)
        return False

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def stop(self) -> None:
        self._kill()
        if self.token_server is not None:
            self.token_server.stop()

    # -- addresses

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def ref(self, repo: str, tag: str = "latest", host: str | None = None) -> str:
        """``127.0.0.1:PORT/REPO:TAG`` (or ``@sha256:...`` when ``tag`` is a digest)."""
        sep = "@" if tag.startswith("sha256:") else ":"
        return f"{host or self.host}/{repo}{sep}{tag}"

    @property
    def password(self) -> str:
        return self.users.get(USER, "")

    @property
    def creds(self) -> tuple[str, str] | None:
        """(user, password) of the test user, None for a plain registry."""
        return (USER, self.password) if self.users else None

    def skopeo_creds(self, side: str = "") -> list[str]:
        """``--creds user:pw`` (``side`` = "src"/"dest" for copy), nothing for a plain registry."""
        if not self.creds:
            return []
        flag = f"--{side}-creds" if side else "--creds"
        return [flag, f"{self.creds[0]}:{self.creds[1]}"]

    # -- logs

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_mark(self) -> int:
        """The current length of the log; pass it to :meth:`requests` to see only later requests."""
        try:
            return self.log.stat().st_size
        except OSError:
            return 0

    def requests(self, since: int = 0) -> list[Request]:
        """The requests in the access log (written as they complete), after ``since``."""
        try:
            with open(self.log, "rb") as f:
                f.seek(since)
                text = f.read().decode(errors="replace")
        except OSError:
            return []
        return [
            Request(m["method"], m["uri"], int(m["status"]))
            for line in text.splitlines()
            if (m := ACCESS_LOG.search(line))
        ]

    # -- looking at what is stored, with skopeo (knows nothing of pybuild)

    def raw_manifest(self, repo: str, tag: str, config: bool = False) -> bytes:
        """``skopeo inspect --raw`` (or ``--config --raw``) of REPO:TAG: the bytes the registry serves."""
        args = ["inspect", "--tls-verify=false", *self.skopeo_creds(), "--raw"]
        if config:
            args.insert(1, "--config")
        return skopeo(*args, f"docker://{self.ref(repo, tag)}").stdout.encode()

    def digest(self, repo: str, tag: str) -> str:
        """The digest of what REPO:TAG points to (sha256 of the raw manifest or index)."""
        return sha256_digest(self.raw_manifest(repo, tag))

    def inspect(self, repo: str, tag: str) -> dict[str, Any]:
        """``skopeo inspect`` (not raw) of REPO:TAG, parsed."""
        out = skopeo("inspect", "--tls-verify=false", *self.skopeo_creds(), f"docker://{self.ref(repo, tag)}").stdout
        return dict(json.loads(out))

    def copy_in(self, source: str, repo: str, tag: str, *extra: str) -> str:
        """``skopeo copy SOURCE docker://REF`` (e.g. ``oci:LAYOUT:TAG``); returns the stored digest.

        ``--preserve-digests``: skopeo remembers the blobs it saw in every repository of a registry
        (its blob-info cache) and would otherwise substitute another compression of a layer it
        already knows there, rewriting the manifest: the stored image must be the source's.
        """
        skopeo("copy", "--preserve-digests", "--dest-tls-verify=false", *self.skopeo_creds("dest"), *extra, source,
               f"docker://{self.ref(repo, tag)}")  # fmt: skip
        return self.digest(repo, tag)


def unique_repo(prefix: str = "e2e") -> str:
    """A repository name no other test uses (the registries live for the whole session)."""
    return f"{prefix}/{secrets.token_hex(6)}"


# --------------------------------------------------------------------------------------------
# the fault-injecting proxy

HOP_BY_HOP = frozenset(
    ("connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
     "transfer-encoding", "upgrade", "proxy-connection")
)  # fmt: skip

ACTIONS = ("status", "reset", "reset_body", "slow", "unauthorized", "corrupt", "truncate", "flip_digest")


@dataclass
class Fault:
    """What to do to the requests matching ``method`` (None: any) and ``pattern`` (re.search on path).

    ``times``: how many matching requests get the fault (None: all of them). Actions:

    - ``status``: answer ``status`` (default 503) with a registry-style JSON error; not forwarded.
    - ``reset``: read the request, then drop the connection (RST) without an answer; not forwarded.
    - ``reset_body``: forward, send the headers and half of the body, then drop the connection.
    - ``slow``: wait ``delay`` seconds (at most MAX_DELAY), then forward normally.
    - ``unauthorized``: answer 401 with the registry's own ``WWW-Authenticate`` challenge; not forwarded.
    - ``corrupt``: forward; flip one byte in the middle of the body (same length).
    - ``truncate``: forward; serve the first half of the body with a matching Content-Length.
    - ``flip_digest``: forward; change one hex digit of the last ``sha256:`` digest in the body
      (a manifest that is still valid JSON, but not the one asked for).
    """

    method: str | None
    pattern: str
    action: str
    times: int | None = 1
    status: int = 503
    delay: float = 2.0
    hits: list[float] = field(default_factory=list)  # time.monotonic() of each application

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown fault action {self.action!r}")
        self.delay = min(self.delay, MAX_DELAY)
        self.regex = re.compile(self.pattern)

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        if self.times is not None and len(self.hits) >= self.times:
            return False
        return self.regex.search(path) is not None


class FaultProxy(_Threaded):
    """A fault-injecting HTTP/1.1 proxy in front of ``upstream`` (``127.0.0.1:PORT``).

    ``add(method, pattern, action, ...)`` programs a :class:`Fault` (first matching rule wins);
    ``requests`` lists what was seen (with the status sent and the fault applied);
    ``count(method, pattern)`` counts such requests. With ``enforce_token_expiry`` a bearer JWT
    whose ``exp`` has passed is refused with 401 (the registry itself allows 60 s of leeway).
    """

    def __init__(self, upstream: str, enforce_token_expiry: bool = False) -> None:
        self.upstream = upstream
        self.enforce_token_expiry = enforce_token_expiry
        self.faults: list[Fault] = []
        self.requests: list[Request] = []
        self.expired_refused = 0
        self.lock = threading.Lock()
        self._serve(_ProxyHandler)

    def ref(self, repo: str, tag: str = "latest") -> str:
        sep = "@" if tag.startswith("sha256:") else ":"
        return f"{self.host}/{repo}{sep}{tag}"

    def add(self, method: str | None, pattern: str, action: str, times: int | None = 1, **kw: Any) -> Fault:
        fault = Fault(method, pattern, action, times, **kw)
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()
            self.requests.clear()

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.hits.append(time.monotonic())
                    return fault
        return None

    def record(self, request: Request) -> None:
        with self.lock:
            self.requests.append(request)

    def seen(self, method: str | None = None, pattern: str = "") -> list[Request]:
        regex = re.compile(pattern)
        with self.lock:
            return [r for r in self.requests if (method is None or r.method == method) and regex.search(r.path)]

    def count(self, method: str | None = None, pattern: str = "") -> int:
        return len(self.seen(method, pattern))

    def challenge(self, method: str = "GET", path: str = "/v2/") -> str:
        """The ``WWW-Authenticate`` the registry sends for ``method path`` without credentials.

        Asked of the registry itself (with no body: it checks authorization first, so nothing
        happens), so that a token challenge carries the ``scope`` of that very request.
        """
        host, _, port = self.upstream.partition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            if method in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", "0")
            conn.endheaders()
            resp = conn.getresponse()
            resp.read()
            value = resp.getheader("WWW-Authenticate")
        finally:
            conn.close()
        return value or f'Basic realm="{SERVICE}"'


def _read_chunked(rfile: Any) -> bytes:
    """A chunked request body (Go's net/http sends one for a body of unknown length)."""
    parts: list[bytes] = []
    for _ in range(1_000_000):  # bounded: a chunk per iteration
        size_line = rfile.readline(1024)
        if not size_line:
            raise ConnectionError("connection closed inside a chunked body")
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline(1024) not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(parts)
        parts.append(rfile.read(size))
        rfile.readline(1024)  # the CRLF after the chunk
    raise ConnectionError("too many chunks")


def _flip_last_digest(body: bytes) -> bytes:
    """Change one hex digit of the last ``sha256:<hex>`` in a JSON body (it stays valid JSON)."""
    matches = list(re.finditer(rb"sha256:[0-9a-f]{64}", body))
    if not matches:
        return _flip_middle(body)
    pos = matches[-1].start() + len("sha256:") + 10
    replacement = b"0" if body[pos : pos + 1] != b"0" else b"1"
    return body[:pos] + replacement + body[pos + 1 :]


def _flip_middle(body: bytes) -> bytes:
    if not body:
        return body
    pos = len(body) // 2
    return body[:pos] + bytes([body[pos] ^ 0xFF]) + body[pos + 1 :]


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 120  # an idle client connection is dropped after this

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def proxy(self) -> FaultProxy:
        return self.server.owner  # type: ignore[attr-defined, no-any-return]

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return _read_chunked(self.rfile)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _reset(self) -> None:
        """Drop the connection with a TCP RST (SO_LINGER 0), as a crashed peer or middlebox would."""
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            self.connection.close()
        self.close_connection = True

    def _send(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes, head: bool,
              partial: int | None = None) -> None:  # fmt: skip
        self.send_response_only(status, reason)
        for name, value in headers:
            if name.lower() in HOP_BY_HOP or (name.lower() == "content-length" and not head):
                continue
            self.send_header(name, value)
        if not head:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return
        if partial is not None:
            self.wfile.write(body[:partial])
            self._reset()
            return
        self.wfile.write(body)

    def _error(self, status: int, code: str, extra: list[tuple[str, str]] | None = None) -> None:
        body = json.dumps({"errors": [{"code": code, "message": f"injected by the test proxy ({status})"}]}).encode()
        headers = [("Content-Type", "application/json"), ("Docker-Distribution-Api-Version", "registry/2.0")]
        self._send(status, http.client.responses.get(status, ""), headers + (extra or []), body, self.command == "HEAD")

    def _token_expired(self) -> bool:
        value = self.headers.get("Authorization", "")
        if not value.lower().startswith("bearer "):
            return False
        try:
            claims = json.loads(b64url_decode(value.split()[1].split(".")[1]))
        except (ValueError, IndexError):
            return False
        return isinstance(claims.get("exp"), int) and claims["exp"] <= time.time()

    def _handle(self) -> None:
        proxy, method, path = self.proxy, self.command, self.path
        try:
            body = self._body()
        except (ConnectionError, ValueError, OSError):
            self._reset()
            return
        fault = proxy.take_fault(method, path)
        action = fault.action if fault else ""

        if proxy.enforce_token_expiry and self._token_expired():
            with proxy.lock:
                proxy.expired_refused += 1
            proxy.record(Request(method, path, 401, "expired-token"))
            self._error(401, "UNAUTHORIZED", [("WWW-Authenticate", proxy.challenge(method, path))])
            return
        if fault and action == "status":
            proxy.record(Request(method, path, fault.status, action))
            self._error(fault.status, "UNAVAILABLE" if fault.status == 503 else "INJECTED")
            return
        if fault and action == "unauthorized":
            proxy.record(Request(method, path, 401, action))
            self._error(401, "UNAUTHORIZED", [("WWW-Authenticate", proxy.challenge(method, path))])
            return
        if fault and action == "reset":
            proxy.record(Request(method, path, 0, action))
            self._reset()
            return
        if fault and action == "slow":
            time.sleep(fault.delay)

        host, _, port = proxy.upstream.partition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        try:
            # Header by header: a client may repeat one (Go sends one Accept per media type).
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    conn.putheader(name, value)
            if body or method in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            status, reason, resp_headers = resp.status, resp.reason, resp.getheaders()
        except (OSError, http.client.HTTPException):
            proxy.record(Request(method, path, 502, "upstream-failed"))
            self._error(502, "UPSTREAM")
            return
        finally:
            conn.close()

        head = method == "HEAD"
        partial = None
        if fault and not head and status < 300:
            if action == "corrupt":
                data = _flip_middle(data)
            elif action == "truncate":
                data = data[: len(data) // 2]
            elif action == "flip_digest":
                data = _flip_last_digest(data)
            elif action == "reset_body":
                partial = len(data) // 2
        proxy.record(Request(method, path, status, action))
        self._send(status, reason, resp_headers, data, head, partial)

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle  # noqa: N815


# --------------------------------------------------------------------------------------------
# fixtures (made by factories, so that each test module binds them without importing names
# that its test functions then shadow)

_RUNNING: dict[str, Registry] = {}
_LOCK = threading.Lock()


def start_registry(flavour: str, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """The session's registry of ``flavour`` (started once, shared by every module that asks)."""
    with _LOCK:
        if flavour not in _RUNNING:
            users = {USER: f"pw-{secrets.token_hex(12)}"} if flavour != "plain" else {}
            workdir = tmp_path_factory.mktemp(f"registry-{flavour}")
            _RUNNING[flavour] = Registry(workdir, flavour, users).start()
        return _RUNNING[flavour]


def stop_registry(flavour: str) -> None:
    with _LOCK:
        registry = _RUNNING.pop(flavour, None)
    if registry is not None:
        registry.stop()


def registry_fixture(flavour: str) -> Callable[..., Iterator[Registry]]:
    """A session fixture yielding the :class:`Registry` of ``flavour``; stopped at the end.

    In a test module: ``plain_registry = registry_fixture("plain")``.
    """

    @pytest.fixture(scope="session")
    def _registry(tmp_path_factory: pytest.TempPathFactory, need: Callable[..., None]) -> Iterator[Registry]:
        need("docker-registry", "skopeo", "openssl")
        registry = start_registry(flavour, tmp_path_factory)
        try:
            yield registry
        finally:
            stop_registry(flavour)

    return _registry


def proxy_fixture() -> Callable[..., Iterator[Callable[..., FaultProxy]]]:
    """A function fixture: ``make_proxy(registry, enforce_token_expiry=False)`` → a running FaultProxy.

    Every proxy made in a test is stopped when the test ends.
    """

    @pytest.fixture
    def _make_proxy() -> Iterator[Callable[..., FaultProxy]]:
        proxies: list[FaultProxy] = []

        def make(registry: Registry, enforce_token_expiry: bool = False) -> FaultProxy:
            proxy = FaultProxy(registry.host, enforce_token_expiry=enforce_token_expiry)
            proxies.append(proxy)
            return proxy

        try:
            yield make
        finally:
            for proxy in proxies:
                proxy.stop()

    return _make_proxy


# --------------------------------------------------------------------------------------------
# looking at results


def layout_descriptor(layout: Path, name: str) -> dict[str, Any]:
    """The descriptor ``index.json`` of a layout names ``name`` (read directly, no pybuild code)."""
    index = json.loads((layout / "index.json").read_text())
    for desc in index["manifests"]:
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == name:
            return dict(desc)
    raise AssertionError(f"no {name!r} in {layout}/index.json: {index}")


def layout_blob(layout: Path, digest: str) -> bytes:
    algorithm, _, hex_ = digest.partition(":")
    return (layout / "blobs" / algorithm / hex_).read_bytes()


def layout_manifest(layout: Path, name: str) -> dict[str, Any]:
    return dict(json.loads(layout_blob(layout, layout_descriptor(layout, name)["digest"])))


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("pybuild: error:")]


def assert_user_error(proc: subprocess.CompletedProcess[str], why: str = "") -> str:
    """Exit 1, exactly one ``pybuild: error:`` line, no traceback; returns that line."""
    detail = f"{why}\n$ exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 1, detail
    lines = error_lines(proc)
    assert len(lines) == 1, detail
    assert "Traceback" not in proc.stderr, detail
    return lines[0]


def assert_no_secrets(proc: subprocess.CompletedProcess[str], secrets_: Sequence[str]) -> None:
    """None of ``secrets_`` (passwords, their base64 forms, tokens) in stdout or stderr."""
    for secret in secrets_:
        assert secret not in proc.stdout, f"a credential leaked into stdout: {proc.stdout}"
        assert secret not in proc.stderr, f"a credential leaked into stderr: {proc.stderr}"
