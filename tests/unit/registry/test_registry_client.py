"""Registry transport, client, push and pull against an in-process fake registry.

:class:`FakeRegistry` implements, in memory and strictly, the endpoints pybuild uses
(distribution-spec ``/v2/``, manifests GET/HEAD/PUT, blobs HEAD/GET, uploads POST/PATCH/PUT/
DELETE, cross-repository mount) on a ``ThreadingHTTPServer`` bound to 127.0.0.1, plus switches
that make it misbehave the way real registries and networks do: Basic or token auth (with a
token that expires mid-upload), relative or absolute upload Locations (rotated on every answer,
so a stale one is refused), 204 instead of 202 for PATCH, 503s, a connection dropped in the
middle of a body, corrupted blobs, a wrong ``Docker-Content-Digest``, and blob downloads
redirected to a second server (a "CDN") that records what it was sent.

Real registries (distribution, with token auth and a fault proxy) and the CLI are tested in
``tests/e2e``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import secrets
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from builder.errors import InputError, IntegrityError, RegistryError
from builder.image import Image, ImageIndex, LayerBlob
from builder.oci.canonical import canonical_json
from builder.oci.descriptor import Descriptor
from builder.oci.digest import Digest
from builder.oci.manifest import image_index
from builder.oci.mediatypes import MediaType
from builder.oci.platform import Platform
from builder.oci.reference import Reference
from builder.registry import client as client_module
from builder.registry.client import RegistryClient
from builder.registry.credentials import Credentials
from builder.registry.options import RegistryOptions
from builder.registry.pull import pull
from builder.registry.push import push
from builder.registry.wire import USER_AGENT, ErrorBody, error_body
from tests.helpers import AMD64, ARM64, make_image, make_index

FAST = RegistryOptions(retries=3, backoff=0, timeout=10)
USER, PASSWORD = "alice", "s3cret-pw"
#: A self-signed key and certificate (P-256, test use only) for a registry served over TLS.
SELF_SIGNED_PEM = """\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgNA9HePbfDvf75JHL
d6KWBhaJbjtgdQTK9+Sf92ijCSuhRANCAAT7d8RZSIC5l4i5ELE93svc8lkcmbgA
QDaOpcsgk9WJbEv69yGYGAyayJnAl6tnba1RBUa7Z0NvkZRLbsCD9ews
-----END PRIVATE KEY-----
-----BEGIN CERTIFICATE-----
MIIBhTCCASugAwIBAgIUJSguLsDuMTgQyA0RL8Heexpn2RYwCgYIKoZIzj0EAwIw
FzEVMBMGA1UEAwwMcHlidWlsZC10ZXN0MCAXDTI2MTEyOTA0MTkyMVoYDzIxMjYx
MTA1MDQxOTIxWjAXMRUwEwYDVQQDDAxweWJ1aWxkLXRlc3QwWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAAT7d8RZSIC5l4i5ELE93svc8lkcmbgAQDaOpcsgk9WJbEv6
9yGYGAyayJnAl6tnba1RBUa7Z0NvkZRLbsCD9ewso1MwUTAdBgNVHQ4EFgQUew+4
GrmL1v2dXTe0r4dnxLo8sfowHwYDVR0jBBgwFoAUew+4GrmL1v2dXTe0r4dnxLo8
sfowDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEA16GsMQKMPhB2
6+8dK5wFf204wOBumIFVCQp15qVvwagCIB896Xh4yJikunV5uvny7DGBI5RC258W
mJyW76LuhYp7
-----END CERTIFICATE-----
"""


# --------------------------------------------------------------------------------------------
# the fake registry


@dataclass
class Seen:
    """One request as the fake registry received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body_size: int
    status: int = 0


@dataclass
class Upload:
    repo: str
    data: bytearray = field(default_factory=bytearray)
    state: str = field(default_factory=lambda: secrets.token_hex(4))


class FakeRegistry:
    """A registry in memory; public attributes are its storage and its misbehaviour switches."""

    def __init__(self, host: str = "127.0.0.1", tls_pem: Path | None = None) -> None:
        self.blobs: dict[str, bytes] = {}
        self.repo_blobs: dict[str, set[str]] = {}
        self.manifests: dict[str, tuple[bytes, str]] = {}
        self.repo_manifests: dict[str, set[str]] = {}
        self.tags: dict[tuple[str, str], str] = {}
        self.uploads: dict[str, Upload] = {}
        self.log: list[Seen] = []
        self.lock = threading.Lock()
        # switches
        self.users: dict[str, str] | None = None  # Basic auth
        self.token_auth = False  # Bearer tokens from /token (Basic credentials checked there if users set)
        self.first_token_uses: int | None = None  # the first token issued expires after this many uses
        self.tokens: dict[str, int | None] = {}
        self.absolute_location = False
        self.patch_status = 202
        self.fail_count = 0
        self.fail_when: Callable[[str, str], bool] = lambda method, path: True
        self.drop_blob_body = 0  # the next N blob GETs stop half way and close the connection
        self.corrupt_blobs = False
        self.wrong_digest_header = False
        self.cdn: FakeRegistry | None = None  # blob GETs answer 307 to this server
        self.referrers_api = False  # the distribution-spec 1.1 referrers API (OCI-Subject, /referrers/)
        self.filters_applied = True  # with the API: artifactType filtering is done (else ignored)
        self.server = _Server((host, 0), _Handler)
        self.server.daemon_threads = True
        self.scheme = "http"
        if tls_pem is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls_pem)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.server.registry = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        addr, port = self.server.server_address[:2]
        assert isinstance(addr, str)
        return f"{addr}:{port}"

    def ref(self, name: str = "test/app:1") -> Reference:
        return Reference.parse(f"{self.host}/{name}")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def requests(self, method: str | None = None, pattern: str = "") -> list[Seen]:
        with self.lock:
            return [r for r in self.log if (method is None or r.method == method) and re.search(pattern, r.path)]

    def link(self, repo: str, digest: str) -> None:
        self.repo_blobs.setdefault(repo, set()).add(digest)

    def store_manifest(self, repo: str, raw: bytes, media_type: str, tag: str | None = None,
                       digest: str | None = None) -> str:
        digest = digest or "sha256:" + hashlib.sha256(raw).hexdigest()
        self.manifests[digest] = (raw, media_type)
        self.repo_manifests.setdefault(repo, set()).add(digest)
        if tag is not None:
            self.tags[(repo, tag)] = digest
        return digest


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up (TLS probes, dropped transfers) are part of the tests


_MANIFEST = re.compile(r"/v2/(?P<name>.+?)/manifests/(?P<ref>[^/]+)")
_UPLOAD = re.compile(r"/v2/(?P<name>.+?)/blobs/uploads/(?P<id>[^/]*)")
_BLOB = re.compile(r"/v2/(?P<name>.+?)/blobs/(?P<digest>[^/]+)")
_REFERRERS = re.compile(r"/v2/(?P<name>.+?)/referrers/(?P<digest>[^/]+)")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def reg(self) -> FakeRegistry:
        registry: FakeRegistry = self.server.registry
        return registry

    # -- plumbing

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            data = bytearray()
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                data += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return bytes(data)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.seen.status = status
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()
        self._send(status, body, {"Content-Type": "application/json", **(headers or {})})

    def _location(self, path: str) -> str:
        return f"{self.reg.scheme}://{self.reg.host}{path}" if self.reg.absolute_location else path

    def _handle(self) -> None:
        url = urlsplit(self.path)
        body = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.seen = Seen(self.command, url.path, parse_qs(url.query), headers, len(body))
        reg = self.reg
        with reg.lock:
            reg.log.append(self.seen)
            fail = reg.fail_count > 0 and reg.fail_when(self.command, url.path)
            if fail:
                reg.fail_count -= 1
        if fail:
            return self._error(503, "UNAVAILABLE", "try again")
        if url.path.startswith("/cdn/"):
            return self._blob_content(url.path.removeprefix("/cdn/"))
        if url.path == "/token":
            return self._token()
        if not url.path.startswith("/v2/"):
            return self._error(404, "NOT_FOUND", "no such path")
        repo = next((m.group("name") for rx in (_MANIFEST, _UPLOAD, _BLOB, _REFERRERS)
                     if (m := rx.fullmatch(url.path))), "")
        if not self._authorized(repo):
            return
        if url.path == "/v2/":
            return self._send(200, b"{}", {"Content-Type": "application/json"})
        if m := _MANIFEST.fullmatch(url.path):
            return self._manifest(m.group("name"), m.group("ref"), body)
        if m := _UPLOAD.fullmatch(url.path):
            return self._upload(m.group("name"), m.group("id"), body)
        if m := _BLOB.fullmatch(url.path):
            return self._blob(m.group("name"), m.group("digest"))
        if (m := _REFERRERS.fullmatch(url.path)) and reg.referrers_api:
            return self._referrers(m.group("name"), m.group("digest"), parse_qs(url.query))
        return self._error(404, "NOT_FOUND", "no such endpoint")

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle  # noqa: N815

    # -- auth

    def _authorized(self, repo: str) -> bool:
        reg = self.reg
        given = self.headers.get("Authorization", "")
        if reg.token_auth:
            token = given.removeprefix("Bearer ") if given.startswith("Bearer ") else ""
            with reg.lock:
                left = reg.tokens.get(token, 0)
                ok = token in reg.tokens and (left is None or left > 0)
                if ok and left is not None:
                    reg.tokens[token] = left - 1
            if ok:
                return True
            challenge = f'Bearer realm="http://{reg.host}/token",service="fake",scope="repository:{repo}:pull"'
        elif reg.users is not None:
            if given in {_basic(u, p) for u, p in reg.users.items()}:
                return True
            challenge = 'Basic realm="fake"'
        else:
            return True
        self._error(401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": challenge})
        return False

    def _token(self) -> None:
        reg = self.reg
        if reg.users is not None and self.headers.get("Authorization", "") not in {
            _basic(u, p) for u, p in reg.users.items()
        }:
            return self._error(401, "UNAUTHORIZED", "bad credentials")
        token = secrets.token_hex(8)
        with reg.lock:
            reg.tokens[token] = reg.first_token_uses if not reg.tokens else None
        self._send(200, json.dumps({"token": token, "expires_in": 300}).encode(), {"Content-Type": "application/json"})

    # -- manifests

    def _manifest(self, repo: str, ref: str, body: bytes) -> None:
        reg = self.reg
        if self.command == "PUT":
            return self._put_manifest(repo, ref, body)
        digest = ref if ref.startswith("sha256:") else reg.tags.get((repo, ref))
        if digest is None or digest not in reg.repo_manifests.get(repo, set()):
            return self._error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        raw, media_type = reg.manifests[digest]
        if media_type not in self.headers.get("Accept", ""):
            return self._error(404, "MANIFEST_UNKNOWN", f"not acceptable: {media_type}")
        shown = "sha256:" + "0" * 64 if reg.wrong_digest_header else digest
        self._send(200, raw, {"Content-Type": media_type, "Docker-Content-Digest": shown})

    def _put_manifest(self, repo: str, ref: str, body: bytes) -> None:
        reg = self.reg
        media_type = self.headers.get("Content-Type", "")
        doc = json.loads(body)
        if doc.get("mediaType", media_type) != media_type:
            return self._error(400, "MANIFEST_INVALID", "Content-Type is not the manifest's mediaType")
        blobs = reg.repo_blobs.get(repo, set())
        needed = [doc["config"], *doc.get("layers", [])] if "config" in doc else []
        if any(d["digest"] not in blobs for d in needed):
            return self._error(400, "MANIFEST_BLOB_UNKNOWN", "blob unknown to registry")
        if any(d["digest"] not in reg.repo_manifests.get(repo, set()) for d in doc.get("manifests", [])):
            return self._error(400, "MANIFEST_UNKNOWN", "child manifest unknown")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if ref.startswith("sha256:") and ref != digest:
            return self._error(400, "DIGEST_INVALID", "provided digest did not match uploaded content")
        reg.store_manifest(repo, body, media_type, None if ref.startswith("sha256:") else ref)
        subject = {"OCI-Subject": doc["subject"]["digest"]} if reg.referrers_api and "subject" in doc else {}
        self._send(201, b"", {"Docker-Content-Digest": digest, "Location": f"/v2/{repo}/manifests/{digest}", **subject})

    def _referrers(self, repo: str, subject: str, query: dict[str, list[str]]) -> None:
        reg = self.reg
        wanted = query.get("artifactType", [None])[0] if reg.filters_applied else None
        found = []
        for digest in sorted(reg.repo_manifests.get(repo, set())):
            raw, media_type = reg.manifests[digest]
            doc = json.loads(raw)
            if doc.get("subject", {}).get("digest") != subject:
                continue
            kind = doc.get("artifactType") or doc.get("config", {}).get("mediaType")
            if wanted is None or kind == wanted:
                found.append({"mediaType": media_type, "digest": digest, "size": len(raw), "artifactType": kind,
                              **({"annotations": doc["annotations"]} if doc.get("annotations") else {})})
        body = json.dumps({"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX, "manifests": found}).encode()
        extra = {"OCI-Filters-Applied": "artifactType"} if wanted is not None else {}
        self._send(200, body, {"Content-Type": str(MediaType.OCI_INDEX), **extra})

    # -- blobs

    def _blob(self, repo: str, digest: str) -> None:
        reg = self.reg
        if digest not in reg.repo_blobs.get(repo, set()):
            return self._error(404, "BLOB_UNKNOWN", "blob unknown to registry")
        if self.command == "HEAD":
            return self._send(200, b"", {"Content-Length": str(len(reg.blobs[digest])), "Docker-Content-Digest": digest})
        if reg.cdn is not None:
            return self._send(307, b"", {"Location": f"http://{reg.cdn.host}/cdn/{digest}?sig=SIGNATURE"})
        return self._blob_content(digest)

    def _blob_content(self, digest: str) -> None:
        reg = self.reg
        data = reg.blobs.get(digest)
        if data is None:
            return self._error(404, "BLOB_UNKNOWN", "blob unknown")
        if reg.corrupt_blobs:
            data = bytes([data[0] ^ 1]) + data[1:]
        with reg.lock:
            drop = reg.drop_blob_body > 0
            reg.drop_blob_body -= drop
        if not drop:
            return self._send(200, data, {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest})
        self.seen.status = 200
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def _upload(self, repo: str, upload_id: str, body: bytes) -> None:
        reg = self.reg
        query = parse_qs(urlsplit(self.path).query)
        if self.command == "POST":
            mount, source = query.get("mount", [""])[0], query.get("from", [""])[0]
            if mount and source and mount in reg.repo_blobs.get(source, set()):
                reg.link(repo, mount)
                return self._send(201, b"", {"Location": f"/v2/{repo}/blobs/{mount}", "Docker-Content-Digest": mount})
            upload_id = secrets.token_hex(8)
            reg.uploads[upload_id] = Upload(repo)
            return self._upload_answer(202, repo, upload_id)
        upload = reg.uploads.get(upload_id)
        if upload is None or upload.repo != repo:
            return self._error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry")
        if query.get("_state", [""])[0] != upload.state:
            return self._error(400, "BLOB_UPLOAD_INVALID", "stale or missing upload state (use the newest Location)")
        if self.command == "DELETE":
            del reg.uploads[upload_id]
            return self._send(204)
        if self.command == "PATCH":
            start, _, end = self.headers.get("Content-Range", "").partition("-")
            if not (start.isdigit() and end.isdigit()) or "Content-Length" not in self.headers:
                return self._error(400, "BLOB_UPLOAD_INVALID", "bad Content-Range or no Content-Length")
            if int(start) != len(upload.data) or int(end) - int(start) + 1 != len(body):
                return self._error(416, "BLOB_UPLOAD_INVALID", "chunk out of order")
            upload.data += body
            return self._upload_answer(reg.patch_status, repo, upload_id)
        upload.data += body  # PUT: the last bytes (if any) and the digest
        digest = query.get("digest", [""])[0]
        if digest != "sha256:" + hashlib.sha256(upload.data).hexdigest():
            return self._error(400, "DIGEST_INVALID", "provided digest did not match uploaded content")
        del reg.uploads[upload_id]
        reg.blobs[digest] = bytes(upload.data)
        reg.link(repo, digest)
        self._send(201, b"", {"Location": f"/v2/{repo}/blobs/{digest}", "Docker-Content-Digest": digest})

    def _upload_answer(self, status: int, repo: str, upload_id: str) -> None:
        upload = self.reg.uploads[upload_id]
        upload.state = secrets.token_hex(4)
        location = self._location(f"/v2/{repo}/blobs/uploads/{upload_id}?_state={upload.state}")
        headers = {"Location": location, "Range": f"0-{max(len(upload.data) - 1, 0)}", "Docker-Upload-UUID": upload_id}
        self._send(status, b"", headers)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    reg = FakeRegistry()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def cdn(registry: FakeRegistry) -> Iterator[FakeRegistry]:
    """A second server that serves the registry's blobs under /cdn/, as a blob store behind a redirect."""
    server = FakeRegistry()
    server.blobs = registry.blobs
    registry.cdn = server
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def logged_in(monkeypatch: pytest.MonkeyPatch) -> Credentials:
    creds = Credentials(USER, PASSWORD)
    monkeypatch.setattr(client_module, "find_credentials", lambda registry, environ=None, authfile=None: creds)
    return creds


def random_bytes(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


class Events(list[tuple[str, Digest, int]]):
    def __call__(self, kind: str, digest: Digest, size: int) -> None:
        self.append((kind, digest, size))

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self]


def assert_same_image(got: Image, want: Image) -> None:
    assert got.raw_manifest == want.raw_manifest
    assert got.raw_config == want.raw_config
    assert got.media_type == want.media_type
    assert got.platform == want.platform
    assert [(lb.descriptor, lb.diff_id) for lb in got.layers] == [(lb.descriptor, lb.diff_id) for lb in want.layers]
    for layer, source in zip(got.layers, want.layers, strict=True):
        assert layer.verified
        assert layer.path.read_bytes() == source.path.read_bytes()
        assert layer.path.name == layer.digest.hex


def docker_image(tmp_path: Path) -> Image:
    """An image whose manifest, config and layer use Docker schema 2 media types."""
    base = make_image(tmp_path, {"etc/hostname": b"docker\n"})
    layer = base.layers[0]
    dlayer = LayerBlob(Descriptor(MediaType.DOCKER_LAYER_GZIP, layer.digest, layer.descriptor.size), layer.diff_id,
                       layer.path, verified=True)
    manifest = {
        "schemaVersion": 2, "mediaType": MediaType.DOCKER_MANIFEST,
        "config": {"mediaType": MediaType.DOCKER_CONFIG, "size": len(base.raw_config), "digest": str(base.image_id)},
        "layers": [dlayer.descriptor.to_json()],
    }
    raw = json.dumps(manifest, indent=3).encode()  # not canonical on purpose: the bytes must survive as they are
    return Image(raw, base.raw_config, MediaType.DOCKER_MANIFEST, (dlayer,), AMD64)


def attestation(tmp_path: Path, subject: Image) -> tuple[Image, Descriptor]:
    """A BuildKit-style attestation manifest for ``subject`` and its index entry (unknown/unknown)."""
    doc = canonical_json({"_type": "https://in-toto.io/Statement/v0.1", "subject": [{"digest": str(subject.digest)}]})
    path = tmp_path / "src-blobs" / Digest.of(doc).hex
    path.write_bytes(doc)
    ldesc = Descriptor("application/vnd.in-toto+json", Digest.of(doc), len(doc))
    config = canonical_json({"architecture": "unknown", "os": "unknown", "rootfs": {"type": "layers", "diff_ids": []}})
    manifest = canonical_json({
        "schemaVersion": 2, "mediaType": MediaType.OCI_MANIFEST,
        "config": {"mediaType": MediaType.OCI_CONFIG, "digest": str(Digest.of(config)), "size": len(config)},
        "layers": [ldesc.to_json()],
    })
    image = Image(manifest, config, MediaType.OCI_MANIFEST, (LayerBlob(ldesc, ldesc.digest, path, None, True),),
                  Platform("unknown", "unknown"))
    annotations = {"vnd.docker.reference.type": "attestation-manifest",
                   "vnd.docker.reference.digest": str(subject.digest)}
    return image, image.descriptor(annotations)


# --------------------------------------------------------------------------------------------
# round trips


def test_push_then_pull_one_image(tmp_path: Path, registry: FakeRegistry) -> None:
    base = make_image(tmp_path, {"etc/os-release": b"ID=test\n"})
    image = make_image(tmp_path, {"app/run": b"#!/bin/sh\necho hi\n"}, base=base)
    events = Events()
    assert push(image, registry.ref(), FAST, events) == image.digest
    assert sorted(events.kinds()) == ["manifest", "pushed", "pushed", "pushed"]  # 2 layers + config
    assert registry.tags[("test/app", "1")] == str(image.digest)
    assert registry.manifests[str(image.digest)] == (image.raw_manifest, MediaType.OCI_MANIFEST)

    pulled = pull(registry.ref(), tmp_path / "store", None, FAST, Events())
    assert isinstance(pulled, Image)
    assert_same_image(pulled, image)
    assert pulled.layers[0].path.parent == tmp_path / "store" / "blobs" / "sha256"
    assert (tmp_path / "store/blobs/sha256" / image.image_id.hex).read_bytes() == image.raw_config


def test_monolithic_upload_is_one_sized_put(tmp_path: Path, registry: FakeRegistry) -> None:
    image = make_image(tmp_path, {"a": random_bytes(3000)}, compression="none")
    push(image, registry.ref(), FAST)
    puts = registry.requests("PUT", "/blobs/uploads/")
    assert len(puts) == 2 and not registry.requests("PATCH")  # layer + config, one PUT each
    for put in puts:
        assert put.headers["content-type"] == "application/octet-stream"
        assert int(put.headers["content-length"]) == put.body_size > 0
        assert "content-range" not in put.headers and "transfer-encoding" not in put.headers
        assert put.query["digest"][0].startswith("sha256:")
    assert all(r.headers["user-agent"] == USER_AGENT for r in registry.log)
    manifest_put = registry.requests("PUT", "/manifests/")[0]
    assert manifest_put.headers["content-type"] == MediaType.OCI_MANIFEST


@pytest.mark.parametrize("absolute", [False, True], ids=["relative-location", "absolute-location"])
@pytest.mark.parametrize("patch_status", [202, 204])
def test_chunked_upload(tmp_path: Path, registry: FakeRegistry, absolute: bool, patch_status: int) -> None:
    registry.absolute_location, registry.patch_status = absolute, patch_status
    image = make_image(tmp_path, {"big": random_bytes(10_000)}, compression="none")
    size = image.layers[0].descriptor.size
    options = RegistryOptions(retries=2, backoff=0, timeout=10, chunk_size=4096)
    push(image, registry.ref(), options)
    patches = registry.requests("PATCH")
    assert len(patches) == -(-size // 4096)
    expected_start = 0
    for patch in patches:
        start, end = map(int, patch.headers["content-range"].split("-"))  # "start-end", no "bytes "
        assert re.fullmatch(r"\d+-\d+", patch.headers["content-range"])
        assert start == expected_start and end - start + 1 == patch.body_size == int(patch.headers["content-length"])
        expected_start = end + 1
    assert expected_start == size
    closing = [r for r in registry.requests("PUT", "/blobs/uploads/") if r.body_size == 0]
    assert len(closing) == 1 and closing[0].query["digest"] == [str(image.layers[0].digest)]
    assert_same_image(pull(registry.ref(), tmp_path / "store", None, FAST), image)  # type: ignore[arg-type]


def test_pushing_again_uploads_nothing(tmp_path: Path, registry: FakeRegistry) -> None:
    image = make_image(tmp_path, {"a": b"1"})
    push(image, registry.ref(), FAST)
    before = len(registry.log)
    events = Events()
    assert push(image, registry.ref(), FAST, events) == image.digest
    assert events == [("existing", image.digest, len(image.raw_manifest))]
    assert [r.method for r in registry.log[before:]] == ["HEAD"]  # the tag already names this digest

    # a new tag for content the registry has: only the manifest goes, and no blob is even asked about
    before = len(registry.log)
    push(image, registry.ref("test/app:2"), FAST)
    assert [(r.method, "/manifests/" in r.path) for r in registry.log[before:]] == [
        ("HEAD", True), ("HEAD", True), ("PUT", True)
    ]


def test_some_blobs_present_are_skipped(tmp_path: Path, registry: FakeRegistry) -> None:
    base = make_image(tmp_path, {"base": b"b"})
    push(base, registry.ref("test/app:base"), FAST)
    image = make_image(tmp_path, {"top": b"t"}, base=base)
    events = Events()
    push(image, registry.ref(), FAST, events)
    assert sorted(events.kinds()) == ["existing", "manifest", "pushed", "pushed"]
    assert ("existing", base.layers[0].digest, base.layers[0].descriptor.size) in events


def test_index_round_trip(tmp_path: Path, registry: FakeRegistry) -> None:
    amd = make_image(tmp_path, {"arch": b"amd64"}, platform=AMD64)
    arm = make_image(tmp_path, {"arch": b"arm64"}, platform=ARM64)
    index = make_index([amd, arm])
    events = Events()
    assert push(index, registry.ref("test/multi:1"), FAST, events) == index.digest
    assert [e for e in events if e[0] == "manifest"] == [
        ("manifest", amd.digest, len(amd.raw_manifest)), ("manifest", arm.digest, len(arm.raw_manifest)),
        ("manifest", index.digest, len(index.raw_index)),
    ]
    puts = [r.path.rpartition("/")[2] for r in registry.requests("PUT", "/manifests/")]
    assert puts == [str(amd.digest), str(arm.digest), "1"]  # children by digest, then the index by tag

    whole = pull(registry.ref("test/multi:1"), tmp_path / "store", None, FAST)
    assert isinstance(whole, ImageIndex)
    assert whole.raw_index == index.raw_index and whole.media_type == MediaType.OCI_INDEX
    for got, want in zip(whole.images, index.images, strict=True):
        assert_same_image(got, want)
    one = pull(registry.ref("test/multi:1"), tmp_path / "store2", ARM64, FAST)
    assert isinstance(one, Image)
    assert_same_image(one, arm)
    assert not (tmp_path / "store2/blobs/sha256" / amd.layers[0].digest.hex).exists()

    before = len(registry.log)
    push(index, registry.ref("test/multi:1"), FAST)
    assert {r.method for r in registry.log[before:]} == {"HEAD"}


def test_attestations_are_skipped_by_platform_and_kept_in_the_index(tmp_path: Path, registry: FakeRegistry) -> None:
    amd = make_image(tmp_path, {"arch": b"amd64"}, platform=AMD64)
    arm = make_image(tmp_path, {"arch": b"arm64"}, platform=ARM64)
    att, att_desc = attestation(tmp_path, amd)
    raw = canonical_json(image_index([att_desc, amd.descriptor(), arm.descriptor()]))  # attestation first
    index = ImageIndex(raw, (att, amd, arm))
    push(index, registry.ref("test/att:1"), FAST)

    chosen = pull(registry.ref("test/att:1"), tmp_path / "a", AMD64, FAST)
    assert isinstance(chosen, Image) and chosen.digest == amd.digest
    whole = pull(registry.ref("test/att:1"), tmp_path / "b", None, FAST)
    assert isinstance(whole, ImageIndex) and whole.raw_index == raw
    assert [img.digest for img in whole.images] == [att.digest, amd.digest, arm.digest]
    with pytest.raises(InputError, match=r"linux/s390x \(available: linux/amd64, linux/arm64\)"):
        pull(registry.ref("test/att:1"), tmp_path / "c", Platform("linux", "s390x"), FAST)


def test_single_image_of_another_platform_is_refused(tmp_path: Path, registry: FakeRegistry) -> None:
    push(make_image(tmp_path, {"a": b"1"}, platform=AMD64), registry.ref(), FAST)
    with pytest.raises(InputError, match=r"no image for platform linux/arm64 \(available: linux/amd64\)"):
        pull(registry.ref(), tmp_path / "store", ARM64, FAST)


def test_docker_schema2_is_kept_as_it_is(tmp_path: Path, registry: FakeRegistry) -> None:
    image = docker_image(tmp_path)
    assert push(image, registry.ref(), FAST) == Digest.of(image.raw_manifest)
    assert registry.requests("PUT", "/manifests/")[0].headers["content-type"] == MediaType.DOCKER_MANIFEST
    pulled = pull(registry.ref(), tmp_path / "store", AMD64, FAST)
    assert isinstance(pulled, Image)
    assert pulled.raw_manifest == image.raw_manifest and pulled.media_type == MediaType.DOCKER_MANIFEST
    assert pulled.layers[0].descriptor.media_type == MediaType.DOCKER_LAYER_GZIP


def test_schema1_is_refused(tmp_path: Path, registry: FakeRegistry) -> None:
    raw = json.dumps({"schemaVersion": 1, "name": "test/app", "tag": "1", "fsLayers": []}).encode()
    registry.store_manifest("test/app", raw, "application/vnd.docker.distribution.manifest.v1+prettyjws", "1")
    registry.store_manifest("test/app", raw, MediaType.DOCKER_MANIFEST, "2")  # mislabelled: caught by the content
    for tag in ("1", "2"):
        with pytest.raises(RegistryError, match="schema 1 manifests are not supported"):
            pull(registry.ref(f"test/app:{tag}"), tmp_path / "store", None, FAST)


def test_pull_reuses_blobs_already_in_dest(tmp_path: Path, registry: FakeRegistry) -> None:
    image = make_image(tmp_path, {"a": b"1"})
    push(image, registry.ref(), FAST)
    pull(registry.ref(), tmp_path / "store", None, FAST)
    gets = len(registry.requests("GET", "/blobs/"))
    events = Events()
    pull(registry.ref(), tmp_path / "store", None, FAST, events)
    assert len(registry.requests("GET", "/blobs/")) == gets
    assert sorted(events.kinds()) == ["existing", "existing", "manifest"]


def test_pull_again_resolves_the_tag_with_one_head(tmp_path: Path, registry: FakeRegistry) -> None:
    image = make_image(tmp_path, {"a": b"1"})
    push(image, registry.ref(), FAST)
    first = len(registry.log)
    pull(registry.ref(), tmp_path / "store", None, FAST)
    assert [r.method for r in registry.log[first:]] == ["GET", "GET", "GET"]  # an empty store: no HEAD first
    before = len(registry.log)
    again = pull(registry.ref(), tmp_path / "store", None, FAST)
    assert [(r.method, "/manifests/" in r.path) for r in registry.log[before:]] == [("HEAD", True)]
    assert_same_image(again, image)  # type: ignore[arg-type]


def test_pull_follows_a_tag_that_moved(tmp_path: Path, registry: FakeRegistry) -> None:
    push(make_image(tmp_path, {"a": b"1"}), registry.ref(), FAST)
    pull(registry.ref(), tmp_path / "store", None, FAST)
    newer = make_image(tmp_path, {"a": b"2"})
    push(newer, registry.ref(), FAST)
    assert pull(registry.ref(), tmp_path / "store", None, FAST).digest == newer.digest


def test_pull_by_digest_from_the_store_asks_nothing(tmp_path: Path, registry: FakeRegistry) -> None:
    image = make_image(tmp_path, {"a": b"1"})
    push(image, registry.ref(), FAST)
    pull(registry.ref(f"test/app@{image.digest}"), tmp_path / "store", None, FAST)
    before = len(registry.log)
    pulled = pull(registry.ref(f"test/app@{image.digest}"), tmp_path / "store", None, FAST)
    assert registry.log[before:] == [] and pulled.digest == image.digest


def test_pull_downloads_a_damaged_stored_blob_again(tmp_path: Path, registry: FakeRegistry) -> None:
    image = make_image(tmp_path, {"a": random_bytes(5000)}, compression="none")
    push(image, registry.ref(), FAST)
    pull(registry.ref(), tmp_path / "store", None, FAST)
    stored = tmp_path / "store/blobs/sha256" / image.layers[0].digest.hex
    data = bytearray(stored.read_bytes())
    data[100] ^= 1  # same size: a size check alone would take it
    stored.write_bytes(bytes(data))
    gets = len(registry.requests("GET", "/blobs/"))
    events = Events()
    pulled = pull(registry.ref(), tmp_path / "store", None, FAST, events)
    assert len(registry.requests("GET", "/blobs/")) == gets + 1
    assert sorted(events.kinds()) == ["existing", "manifest", "pulled"]
    assert Digest.of(pulled.layers[0].path.read_bytes()) == image.layers[0].digest  # type: ignore[union-attr]


def test_pull_takes_blobs_from_a_reuse_layout(tmp_path: Path, registry: FakeRegistry) -> None:
    from builder.layout.write import write_layout

    image = make_image(tmp_path, {"a": b"1"}, base=make_image(tmp_path, {"b": b"2"}))
    push(image, registry.ref(), FAST)
    write_layout(tmp_path / "layout", pull(registry.ref(), tmp_path / "store1", None, FAST), "v1")
    gets = len(registry.requests("GET", "/blobs/"))
    events = Events()
    pulled = pull(registry.ref(), tmp_path / "store2", None, FAST, events, reuse=(tmp_path / "layout",))
    assert len(registry.requests("GET", "/blobs/")) == gets
    assert sorted(events.kinds()) == ["existing"] * 3 + ["manifest"]
    for layer in pulled.layers:  # type: ignore[union-attr]
        assert layer.path.parent == tmp_path / "store2/blobs/sha256"  # cloned into the store, not linked
        assert layer.path.stat().st_nlink == 1


def test_single_image_platform_is_checked_before_any_layer(tmp_path: Path, registry: FakeRegistry) -> None:
    image = make_image(tmp_path, {"a": b"1"}, platform=AMD64)
    push(image, registry.ref(), FAST)
    with pytest.raises(InputError, match="no image for platform linux/arm64"):
        pull(registry.ref(), tmp_path / "store", ARM64, FAST)
    assert [r.path.rsplit("/", 1)[1] for r in registry.requests("GET", "/blobs/")] == [str(image.image_id)]


def test_pull_by_digest(tmp_path: Path, registry: FakeRegistry) -> None:
    image = make_image(tmp_path, {"a": b"1"})
    push(image, registry.ref(), FAST)
    pulled = pull(registry.ref(f"test/app@{image.digest}"), tmp_path / "store", None, FAST)
    assert isinstance(pulled, Image) and pulled.digest == image.digest
    assert registry.requests("GET", "/manifests/")[-1].path.endswith(str(image.digest))


def test_push_to_a_digest_must_be_the_image(tmp_path: Path, registry: FakeRegistry) -> None:
    image = make_image(tmp_path, {"a": b"1"})
    other = make_image(tmp_path, {"b": b"2"})
    with pytest.raises(RegistryError, match="the image's digest is"):
        push(image, registry.ref(f"test/app@{other.digest}"), FAST)
    assert push(image, registry.ref(f"test/app@{image.digest}"), FAST) == image.digest


# --------------------------------------------------------------------------------------------
# mounting


def test_mount_from_another_repository(tmp_path: Path, registry: FakeRegistry) -> None:
    base = make_image(tmp_path, {"base": b"b"})
    push(base, registry.ref("test/base:1"), FAST)
    image = make_image(tmp_path, {"top": b"t"}, base=base)
    events = Events()
    push(image, registry.ref(), FAST, events, mount_from="test/base")
    assert ("mounted", base.layers[0].digest, base.layers[0].descriptor.size) in events
    assert ("pushed", image.layers[1].digest, image.layers[1].descriptor.size) in events
    mounts = [r for r in registry.requests("POST") if "mount" in r.query]
    assert {r.query["from"][0] for r in mounts} == {"test/base"}


def test_refused_mount_falls_back_to_an_upload(tmp_path: Path, registry: FakeRegistry) -> None:
    image = make_image(tmp_path, {"a": b"1"})
    events = Events()
    push(image, registry.ref(), FAST, events, mount_from="test/elsewhere")  # 202: a session, cancelled
    assert sorted(events.kinds()) == ["manifest", "pushed", "pushed"]
    assert len(registry.requests("DELETE", "/blobs/uploads/")) == 2
    assert not registry.uploads  # no session left behind


# --------------------------------------------------------------------------------------------
# auth and redirects


def test_basic_auth(tmp_path: Path, registry: FakeRegistry, logged_in: Credentials) -> None:
    registry.users = {USER: PASSWORD}
    image = make_image(tmp_path, {"a": b"1"})
    push(image, registry.ref(), FAST)
    assert_same_image(pull(registry.ref(), tmp_path / "store", None, FAST), image)  # type: ignore[arg-type]
    assert registry.requests()[-1].headers["authorization"] == _basic(USER, PASSWORD)


def test_wrong_password_is_not_shown(tmp_path: Path, registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    registry.users = {USER: PASSWORD}
    wrong = Credentials(USER, "not-the-password")
    monkeypatch.setattr(client_module, "find_credentials", lambda registry, environ=None, authfile=None: wrong)
    with pytest.raises(RegistryError) as info:
        pull(registry.ref(), tmp_path / "store", None, FAST)
    text = str(info.value)
    assert "not-the-password" not in text and _basic(USER, "not-the-password").split()[1] not in text
    assert "401" in text or "authentication" in text


def test_anonymous_pull_of_a_private_registry(tmp_path: Path, registry: FakeRegistry) -> None:
    registry.users = {USER: PASSWORD}
    with pytest.raises(RegistryError, match=r"authentication required|UNAUTHORIZED"):
        pull(registry.ref(), tmp_path / "store", None, FAST)


def test_token_auth_and_a_token_expiring_mid_upload(tmp_path: Path, registry: FakeRegistry,
                                                    logged_in: Credentials) -> None:
    registry.token_auth, registry.users = True, {USER: PASSWORD}
    registry.first_token_uses = 5  # POST + a few PATCHes, then 401 in the middle of the chunks
    image = make_image(tmp_path, {"big": random_bytes(20_000)}, compression="none")
    options = RegistryOptions(retries=3, backoff=0, timeout=10, chunk_size=2048, parallel=1)
    push(image, registry.ref(), options)
    refused = [r for r in registry.log if r.status == 401 and r.method == "PATCH"]
    assert refused, "the first token should have expired during the upload"
    assert len(registry.requests("POST", "/blobs/uploads/")) >= 2  # that blob's upload was restarted
    assert_same_image(pull(registry.ref(), tmp_path / "store", None, FAST), image)  # type: ignore[arg-type]


def test_blob_redirect_does_not_carry_authorization(tmp_path: Path, registry: FakeRegistry, cdn: FakeRegistry,
                                                     logged_in: Credentials) -> None:
    registry.users = {USER: PASSWORD}
    image = make_image(tmp_path, {"a": b"1"})
    push(image, registry.ref(), FAST)
    assert_same_image(pull(registry.ref(), tmp_path / "store", None, FAST), image)  # type: ignore[arg-type]
    assert len(cdn.log) == 2  # layer and config
    assert all("authorization" not in r.headers for r in cdn.log)
    assert all(r.query == {"sig": ["SIGNATURE"]} for r in cdn.log)
    assert all(r.headers.get("authorization") for r in registry.requests("GET", "/blobs/"))


def test_redirect_error_hides_the_signed_query(tmp_path: Path, registry: FakeRegistry, cdn: FakeRegistry) -> None:
    image = make_image(tmp_path, {"a": b"1"})
    push(image, registry.ref(), FAST)
    cdn.fail_count, cdn.fail_when = 100, lambda method, path: True
    with pytest.raises(RegistryError, match="503 UNAVAILABLE: try again") as info:
        pull(registry.ref(), tmp_path / "store", None, FAST)
    assert "SIGNATURE" not in str(info.value)


# --------------------------------------------------------------------------------------------
# failures: retries, integrity, messages


def test_transient_failures_are_retried(tmp_path: Path, registry: FakeRegistry) -> None:
    image = make_image(tmp_path, {"a": b"1"})
    registry.fail_count = 2
    push(image, registry.ref(), FAST)
    registry.fail_count = 3
    assert_same_image(pull(registry.ref(), tmp_path / "store", None, FAST), image)  # type: ignore[arg-type]
    assert len([r for r in registry.log if r.status == 503]) == 5


def test_persistent_failure_reports_the_registry_error(tmp_path: Path, registry: FakeRegistry) -> None:
    registry.fail_count = 100
    with pytest.raises(RegistryError) as info:
        pull(registry.ref(), tmp_path / "store", None, RegistryOptions(retries=2, backoff=0, timeout=10))
    assert str(info.value) == f"{registry.host}: GET /v2/test/app/manifests/1: 503 UNAVAILABLE: try again"
    assert len(registry.log) == 3  # 1 try + 2 retries (the TLS probe never reaches the handler)


def test_failed_chunk_restarts_the_blob_upload(tmp_path: Path, registry: FakeRegistry) -> None:
    image = make_image(tmp_path, {"big": random_bytes(10_000)}, compression="none")
    registry.fail_count, registry.fail_when = 1, lambda method, path: method == "PATCH"
    options = RegistryOptions(retries=2, backoff=0, timeout=10, chunk_size=4096)
    push(image, registry.ref(), options)
    assert len(registry.requests("POST", "/blobs/uploads/")) == 3  # layer twice, config once
    assert_same_image(pull(registry.ref(), tmp_path / "store", None, FAST), image)  # type: ignore[arg-type]


def test_failed_monolithic_put_restarts_the_blob_upload(tmp_path: Path, registry: FakeRegistry) -> None:
    image = make_image(tmp_path, {"a": b"1"})
    registry.fail_count, registry.fail_when = 1, lambda method, path: method == "PUT" and "uploads" in path
    push(image, registry.ref(), FAST)
    assert len(registry.requests("POST", "/blobs/uploads/")) == 3


def test_connection_dropped_mid_body_is_retried(tmp_path: Path, registry: FakeRegistry) -> None:
    image = make_image(tmp_path, {"big": random_bytes(200_000)}, compression="none")
    push(image, registry.ref(), FAST)
    registry.drop_blob_body = 1
    pulled = pull(registry.ref(), tmp_path / "store", None, RegistryOptions(retries=3, backoff=0, parallel=1))
    assert_same_image(pulled, image)  # type: ignore[arg-type]
    registry.drop_blob_body = 100
    with pytest.raises(RegistryError, match="connection broken"):
        pull(registry.ref(), tmp_path / "store2", None, RegistryOptions(retries=1, backoff=0, parallel=1))
    # no partial or temporary file left: only the manifest, stored whole (by digest) before any blob
    assert [p.name for p in (tmp_path / "store2/blobs/sha256").iterdir()] == [image.digest.hex]


def test_corrupt_blob_is_refused_and_removed(tmp_path: Path, registry: FakeRegistry) -> None:
    image = make_image(tmp_path, {"a": b"1"})
    push(image, registry.ref(), FAST)
    registry.corrupt_blobs = True
    with pytest.raises(IntegrityError, match=r"blob content is sha256:"):
        pull(registry.ref(), tmp_path / "store", None, FAST)
    assert [p.name for p in (tmp_path / "store/blobs/sha256").iterdir()] == [image.digest.hex]  # the manifest only


def test_wrong_content_digest_header_is_refused(tmp_path: Path, registry: FakeRegistry) -> None:
    push(make_image(tmp_path, {"a": b"1"}), registry.ref(), FAST)
    registry.wrong_digest_header = True
    with pytest.raises(IntegrityError, match="Docker-Content-Digest"):
        pull(registry.ref(), tmp_path / "store", None, FAST)


def test_manifest_not_matching_the_requested_digest(tmp_path: Path, registry: FakeRegistry) -> None:
    image = make_image(tmp_path, {"a": b"1"})
    liar = "sha256:" + "ab" * 32
    registry.store_manifest("test/app", image.raw_manifest, MediaType.OCI_MANIFEST, digest=liar)
    with pytest.raises(IntegrityError, match=f"expected {liar}"):
        pull(registry.ref(f"test/app@{liar}"), tmp_path / "store", None, FAST)


def test_error_bodies_are_read_by_one_rule() -> None:
    """The registry API and the token endpoints read refusals alike; only their wording differs."""
    said = error_body(b'{"errors": [{"code": "DENIED", "message": "no"}, {"code": "X"}, "junk"], "error": "e", "n": 1}')
    assert said == ErrorBody((("DENIED", "no"), ("X", "")), {"error": "e"}, True)
    assert error_body(b"<html>502</html>") == error_body(b"[1]") == error_body(b"\xff") == ErrorBody((), {}, False)
    assert error_body(b"[" * 100_000).is_object is False  # nested too deep: refused before json.loads sees it


def test_error_messages_carry_the_registry_code(tmp_path: Path, registry: FakeRegistry) -> None:
    with pytest.raises(RegistryError) as info:
        pull(registry.ref("test/app:nope"), tmp_path / "store", None, FAST)
    assert str(info.value) == f"{registry.host}: GET /v2/test/app/manifests/nope: 404 MANIFEST_UNKNOWN: manifest unknown"
    with RegistryClient(registry.ref(), FAST, None, push=True) as client:
        with pytest.raises(RegistryError) as info:
            client.put_manifest("1", make_image(tmp_path, {"a": b"1"}).raw_manifest, MediaType.OCI_MANIFEST)
        assert str(info.value) == (f"{registry.host}: PUT /v2/test/app/manifests/1: "
                                   "400 MANIFEST_BLOB_UNKNOWN: blob unknown to registry")
        assert client.manifest_digest("nope") is None
        assert not client.blob_exists(Digest.of(b"nothing"))


def test_upload_of_a_file_of_the_wrong_size(tmp_path: Path, registry: FakeRegistry) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"12345")
    with RegistryClient(registry.ref(), FAST, None, push=True) as client, pytest.raises(IntegrityError, match="5 bytes"):
        client.upload_blob(path, Digest.of(b"12345"), 6)
    with RegistryClient(registry.ref(), FAST, None, push=True) as client:
        client.upload_blob(b"", Digest.of(b""), 0)  # the empty blob goes too
        assert client.blob_exists(Digest.of(b""))


# --------------------------------------------------------------------------------------------
# scheme


def test_insecure_registry_falls_back_to_http(tmp_path: Path) -> None:
    try:
        reg = FakeRegistry("127.0.0.2")  # loopback, but not a name pybuild treats as insecure by itself
    except OSError:
        pytest.skip("cannot bind 127.0.0.2")
    try:
        image = make_image(tmp_path, {"a": b"1"})
        with pytest.raises(RegistryError, match=r"TLS failed.*--insecure-registry 127\.0\.0\.2:\d+"):
            push(image, reg.ref(), FAST)
        assert not reg.requests(pattern="^/v2/")  # nothing readable reached it over plain HTTP
        options = RegistryOptions(insecure=frozenset({"127.0.0.2"}), retries=0, backoff=0, timeout=10)
        push(image, reg.ref(), options)
        assert_same_image(pull(reg.ref(), tmp_path / "store", None, options), image)  # type: ignore[arg-type]
        with RegistryClient(reg.ref(), options, None) as client:
            assert client.transport.scheme == "http"
            client.get_manifest("1")
    finally:
        reg.stop()


def test_insecure_registry_with_a_self_signed_certificate_stays_on_tls(tmp_path: Path) -> None:
    pem = tmp_path / "tls.pem"
    pem.write_text(SELF_SIGNED_PEM)
    try:
        reg = FakeRegistry("127.0.0.2", tls_pem=pem)
    except OSError:
        pytest.skip("cannot bind 127.0.0.2")
    try:
        reg.absolute_location = True
        image = make_image(tmp_path, {"a": b"1"})
        with pytest.raises(RegistryError, match=r"HEAD /v2/test/app/manifests/1: TLS failed .*certificate"):
            push(image, reg.ref(), FAST)
        options = RegistryOptions(insecure=frozenset({f"{reg.host}"}), retries=0, backoff=0, timeout=10)
        push(image, reg.ref(), options)  # unverified TLS, and no InsecureRequestWarning (warnings are errors here)
        assert_same_image(pull(reg.ref(), tmp_path / "store", None, options), image)  # type: ignore[arg-type]
        with RegistryClient(reg.ref(), options, None) as client:
            assert client.transport.scheme == "https"
    finally:
        reg.stop()


def test_options_insecure_matching() -> None:
    options = RegistryOptions(insecure=frozenset({"reg.example:5000", "other.example"}))
    assert options.is_insecure("localhost:5000") and options.is_insecure("127.0.0.1") and options.is_insecure("[::1]:1")
    assert options.is_insecure("reg.example:5000") and not options.is_insecure("reg.example:5001")
    assert options.is_insecure("other.example:443") and not options.is_insecure("ghcr.io")
