"""Credentials from docker/containers files and helpers; Basic and token auth against a local endpoint.

The token endpoint is a real HTTP server in a thread on 127.0.0.1, so what is asserted is what
went over the wire. Every error raised is checked for secrets: passwords, identity tokens, Basic
strings and bearer tokens must never be part of a message or a repr.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import threading
import types
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from builder.errors import InputError, RegistryError
from builder.registry import auth, challenges, credential_lookup
from builder.registry.auth import Authenticator
from builder.registry.challenges import scope_for
from builder.registry.credential_lookup import HUB_SERVER, find_credentials
from builder.registry.credentials import Credentials

USER = "alice"
PASSWORD = "pw-Zq8#s3cr3t"
IDENTITY = "idtok-9f8e7d6c5b4a"
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
SECRETS = [PASSWORD, IDENTITY, BASIC, base64.b64encode(f"{USER}:{IDENTITY}".encode()).decode()]
REGISTRY = "127.0.0.1:5000"
APP = scope_for("org/app", "pull,push")
BASE = scope_for("org/base", "pull")


def b64(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def assert_no_secret(exc: BaseException, *extra: str) -> None:
    for secret in [*SECRETS, *extra]:
        for text in (str(exc), repr(exc), getattr(exc, "message", "")):
            assert secret not in text, f"secret leaked into {text!r}"


# --------------------------------------------------------------------------------------------
# find_credentials


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment whose every credential location is under tmp_path (and empty)."""
    home = tmp_path / "home"
    bindir = tmp_path / "bin"
    for d in (home, bindir, tmp_path / "run", tmp_path / "config"):
        d.mkdir()
    return {
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
    }


def write_json(path: Path, doc: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def docker_config(env: dict[str, str], doc: Any) -> Path:
    return write_json(Path(env["HOME"]) / ".docker" / "config.json", doc)


HELPER = """\
#!{python}
# a docker credential helper: answers from helper-store.json beside it, logs what it was asked
import json, pathlib, sys
here = pathlib.Path(__file__).resolve().parent
if sys.argv[1:] != ["get"]:
    sys.exit(99)
server = sys.stdin.read()
with open(here / "{name}.log", "a") as log:
    log.write(server + "\\n")
store = json.loads((here / "helper-store.json").read_text())
if server not in store:
    print("credentials not found in native keychain")
    sys.exit(1)
user, secret = store[server]
print(json.dumps({{"ServerURL": server, "Username": user, "Secret": secret}}))
"""


def install_helper(env: dict[str, str], name: str, store: dict[str, tuple[str, str]], body: str | None = None) -> Path:
    """``docker-credential-NAME`` on the PATH of ``env``; returns the log of servers it was asked for."""
    bindir = Path(env["PATH"].split(os.pathsep)[0])
    script = bindir / f"docker-credential-{name}"
    script.write_text(body if body is not None else HELPER.format(python=sys.executable, name=name))
    script.chmod(0o755)
    write_json(bindir / "helper-store.json", store)
    return bindir / f"{name}.log"


def asked(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_nothing_configured(env: dict[str, str]) -> None:
    assert find_credentials("ghcr.io", env) is None


@pytest.mark.parametrize(
    "key", ["ghcr.io", "https://ghcr.io", "http://ghcr.io", "ghcr.io/v1/", "ghcr.io/v2/", "https://ghcr.io/v2/", "GHCR.io"]
)
def test_auths_key_variants(env: dict[str, str], key: str) -> None:
    docker_config(env, {"auths": {key: {"auth": BASIC}}})
    assert find_credentials("ghcr.io", env) == Credentials(USER, PASSWORD)


@pytest.mark.parametrize("key", [HUB_SERVER, "index.docker.io", "registry-1.docker.io", "docker.io", "https://docker.io"])
def test_docker_hub_key_variants(env: dict[str, str], key: str) -> None:
    docker_config(env, {"auths": {key: {"auth": BASIC}}})
    assert find_credentials("docker.io", env) == Credentials(USER, PASSWORD)


def test_exact_key_wins_over_variant(env: dict[str, str]) -> None:
    docker_config(env, {"auths": {"https://ghcr.io/v1/": {"auth": b64("old", "x")}, "ghcr.io": {"auth": BASIC}}})
    assert find_credentials("ghcr.io", env) == Credentials(USER, PASSWORD)


def test_other_hosts_and_namespaced_keys_do_not_match(env: dict[str, str]) -> None:
    docker_config(env, {"auths": {"ghcr.io/org/repo": {"auth": BASIC}, "ghcr.io:5000": {"auth": BASIC},
                                  "quay.io": {"auth": BASIC}}})  # fmt: skip
    assert find_credentials("ghcr.io", env) is None
    assert find_credentials("ghcr.io:5000", env) == Credentials(USER, PASSWORD)


def test_username_password_and_identity_token_entries(env: dict[str, str]) -> None:
    docker_config(env, {"auths": {
        "a.example": {"username": USER, "password": PASSWORD},
        "b.example": {"auth": b64(USER, ""), "identitytoken": IDENTITY},
        "c.example": {},  # a credsStore placeholder: nothing here
    }})  # fmt: skip
    assert find_credentials("a.example", env) == Credentials(USER, PASSWORD)
    assert find_credentials("b.example", env) == Credentials(USER, "", IDENTITY)
    assert find_credentials("c.example", env) is None


def test_password_may_contain_colons(env: dict[str, str]) -> None:
    docker_config(env, {"auths": {"ghcr.io": {"auth": b64(USER, "a:b:c")}}})
    assert find_credentials("ghcr.io", env) == Credentials(USER, "a:b:c")


def test_docker_config_env_var(env: dict[str, str], tmp_path: Path) -> None:
    docker_config(env, {"auths": {"ghcr.io": {"auth": b64("home", "x")}}})
    write_json(tmp_path / "dc" / "config.json", {"auths": {"ghcr.io": {"auth": BASIC}}})
    env["DOCKER_CONFIG"] = str(tmp_path / "dc")
    assert find_credentials("ghcr.io", env) == Credentials(USER, PASSWORD)


def test_containers_auth_files_come_first(env: dict[str, str], tmp_path: Path) -> None:
    docker_config(env, {"auths": {"ghcr.io": {"auth": b64("docker", "x")}}})
    assert find_credentials("ghcr.io", env) == Credentials("docker", "x")

    write_json(Path(env["XDG_CONFIG_HOME"]) / "containers" / "auth.json", {"auths": {"ghcr.io": {"auth": b64("cfg", "x")}}})
    assert find_credentials("ghcr.io", env) == Credentials("cfg", "x")

    write_json(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json", {"auths": {"ghcr.io": {"auth": b64("run", "x")}}})
    assert find_credentials("ghcr.io", env) == Credentials("run", "x")

    # $REGISTRY_AUTH_FILE replaces the containers files (as in containers/image); docker's stays a fallback
    env["REGISTRY_AUTH_FILE"] = str(write_json(tmp_path / "auth.json", {"auths": {"ghcr.io": {"auth": BASIC}}}))
    assert find_credentials("ghcr.io", env) == Credentials(USER, PASSWORD)
    assert find_credentials("quay.io", env) is None
    docker_config(env, {"auths": {"quay.io": {"auth": b64("docker", "x")}}})
    assert find_credentials("quay.io", env) == Credentials("docker", "x")


def test_missing_registry_auth_file_is_skipped(env: dict[str, str], tmp_path: Path) -> None:
    env["REGISTRY_AUTH_FILE"] = str(tmp_path / "nope.json")
    docker_config(env, {"auths": {"ghcr.io": {"auth": BASIC}}})
    assert find_credentials("ghcr.io", env) == Credentials(USER, PASSWORD)


def test_cred_helpers(env: dict[str, str]) -> None:
    log = install_helper(env, "test", {"ghcr.io": (USER, PASSWORD), HUB_SERVER: ("hubuser", "hubpw")})
    docker_config(env, {
        "credHelpers": {"ghcr.io": "test", "index.docker.io": "test", "quay.io": "test"},
        "auths": {"ghcr.io": {"auth": b64("file", "x")}, "quay.io": {"auth": b64("file", "x")}},
    })  # fmt: skip
    assert find_credentials("ghcr.io", env) == Credentials(USER, PASSWORD)  # the helper wins over auths
    assert find_credentials("docker.io", env) == Credentials("hubuser", "hubpw")
    # the helper has nothing for quay.io: it decides alone, as in docker
    assert find_credentials("quay.io", env) is None
    assert asked(log) == ["ghcr.io", HUB_SERVER, "quay.io"]


def test_creds_store_after_auths(env: dict[str, str]) -> None:
    log = install_helper(env, "test", {"https://ghcr.io": (USER, PASSWORD), "docker.example": ("u2", "p2")})
    docker_config(env, {
        "credsStore": "test",
        "auths": {"https://ghcr.io": {}, "quay.io": {"auth": b64("file", "x")}},
    })  # fmt: skip
    assert find_credentials("ghcr.io", env) == Credentials(USER, PASSWORD)  # asked under the auths key
    assert find_credentials("quay.io", env) == Credentials("file", "x")  # a real auths entry needs no store
    assert find_credentials("docker.example", env) == Credentials("u2", "p2")
    assert find_credentials("none.example", env) is None
    assert asked(log) == ["https://ghcr.io", "docker.example", "none.example"]


def test_helper_identity_token(env: dict[str, str]) -> None:
    install_helper(env, "test", {"ghcr.io": ("<token>", IDENTITY)})
    docker_config(env, {"credHelpers": {"ghcr.io": "test"}})
    creds = find_credentials("ghcr.io", env)
    assert creds == Credentials("", "", IDENTITY)
    assert IDENTITY not in repr(creds)


def test_missing_helper(env: dict[str, str]) -> None:
    docker_config(env, {"credHelpers": {"ghcr.io": "missing"}})
    with pytest.raises(RegistryError, match="credential helper docker-credential-missing not found on PATH"):
        find_credentials("ghcr.io", env)


def test_failing_helper_names_itself_not_the_secret(env: dict[str, str]) -> None:
    install_helper(env, "broken", {}, "#!/bin/sh\necho 'keychain is locked' >&2\nexit 3\n")
    docker_config(env, {"credsStore": "broken"})
    with pytest.raises(RegistryError) as err:
        find_credentials("ghcr.io", env)
    assert str(err.value) == "credential helper docker-credential-broken failed for ghcr.io (exit status 3): keychain is locked"


def test_helper_answers_are_never_quoted(env: dict[str, str]) -> None:
    # garbage that contains the secret (a helper printing half a JSON answer): not echoed
    install_helper(env, "garbage", {}, f'#!/bin/sh\necho \'{{"Username": "{USER}", "Secret": "{PASSWORD}"\'\n')
    docker_config(env, {"credHelpers": {"ghcr.io": "garbage"}})
    with pytest.raises(RegistryError, match=r"docker-credential-garbage gave a malformed answer for ghcr\.io") as err:
        find_credentials("ghcr.io", env)
    assert_no_secret(err.value)

    install_helper(env, "garbage", {}, f'#!/bin/sh\necho \'{{"Secret": "{PASSWORD}"\'\nexit 1\n')
    with pytest.raises(RegistryError, match=r"failed for ghcr.io \(exit status 1\)$") as err:
        find_credentials("ghcr.io", env)
    assert_no_secret(err.value)


def test_helper_name_is_a_plain_name(env: dict[str, str]) -> None:
    docker_config(env, {"credHelpers": {"ghcr.io": "../../bin/sh"}})
    with pytest.raises(RegistryError, match="invalid credential helper name"):
        find_credentials("ghcr.io", env)


def test_malformed_files_are_input_errors_without_content(env: dict[str, str]) -> None:
    path = docker_config(env, {})
    path.write_text('{"auths": {"ghcr.io": {"auth": "' + BASIC + '"}}')  # truncated
    with pytest.raises(InputError, match=r"config\.json: not valid JSON") as err:
        find_credentials("ghcr.io", env)
    assert_no_secret(err.value)

    docker_config(env, {"auths": {"ghcr.io": {"auth": PASSWORD}}})  # not base64
    with pytest.raises(InputError, match=r"auths\['ghcr.io'\]: 'auth' is not base64 of user:password") as err:
        find_credentials("ghcr.io", env)
    assert_no_secret(err.value)

    docker_config(env, {"auths": {"ghcr.io": {"auth": base64.b64encode(PASSWORD.encode()).decode()}}})  # no ':'
    with pytest.raises(InputError, match="is not base64 of user:password") as err:
        find_credentials("ghcr.io", env)
    assert_no_secret(err.value)

    docker_config(env, {"auths": ["ghcr.io"]})
    with pytest.raises(InputError, match="'auths' must be an object"):
        find_credentials("ghcr.io", env)


def test_credentials_repr_redacts() -> None:
    creds = Credentials(USER, PASSWORD, IDENTITY)
    for text in (repr(creds), str(creds), f"{creds}", repr([creds])):
        assert USER in text
        assert PASSWORD not in text and IDENTITY not in text
    assert repr(Credentials(USER)) == "Credentials(username='alice', password='', identity_token='')"
    assert creds.basic() == f"Basic {b64(USER, PASSWORD)}"
    assert Credentials(USER).basic() is None


def test_scope_for() -> None:
    assert scope_for("org/app", "pull,push") == "repository:org/app:pull,push"


# --------------------------------------------------------------------------------------------
# a token endpoint


class TokenEndpoint:
    """A Docker token server: GET with Basic (or anonymous), POST refresh_token; records requests."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[dict[str, Any]] = []
        self.issued: list[str] = []
        self.users = {USER: PASSWORD}
        self.refresh_tokens = {IDENTITY: USER}
        self.anonymous = True
        self.post_status: int | None = None  # answer every POST with this status
        self.fail: tuple[int, dict[str, Any]] | None = None  # answer every request with this
        self.shape = "both"  # token, access_token or both
        self.expires_in: int | None = 300
        self.raw: bytes | None = None  # answer 200 with these bytes
        handler = type("Handler", (_Handler,), {"endpoint": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/token"

    def challenge(self, scope: str = APP, service: str = "test-registry") -> str:
        return f'Bearer realm="{self.realm}",service="{service}",scope="{scope}"'

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()

    def issue(self) -> str:
        with self.lock:
            token = f"tok-{len(self.issued) + 1}"
            self.issued.append(token)
            return token

    def count(self, method: str | None = None) -> int:
        return sum(1 for r in self.seen if method is None or r["method"] == method)


class _Handler(BaseHTTPRequestHandler):
    endpoint: TokenEndpoint
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, doc: Any) -> None:
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _grant(self) -> None:
        ep = self.endpoint
        if ep.raw is not None:
            self._reply(200, ep.raw)
            return
        token = ep.issue()
        doc: dict[str, Any] = {}
        if ep.shape in ("token", "both"):
            doc["token"] = token
        if ep.shape in ("access_token", "both"):
            doc["access_token"] = token
        if ep.expires_in is not None:
            doc["expires_in"] = ep.expires_in
            doc["issued_at"] = "2026-01-01T00:00:00Z"
        self._reply(200, doc)

    def _record(self, form: dict[str, list[str]]) -> dict[str, Any]:
        url = urllib.parse.urlsplit(self.path)
        seen = {"method": self.command, "path": url.path, "query": urllib.parse.parse_qs(url.query),
                "auth": self.headers.get("Authorization"), "form": form}  # fmt: skip
        with self.endpoint.lock:
            self.endpoint.seen.append(seen)
        return seen

    def _basic_ok(self, value: str | None) -> bool | None:
        """None without Basic; else whether the user and password are known."""
        if not value or not value.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(value[6:]).decode().partition(":")
        return self.endpoint.users.get(user) == password

    def do_GET(self) -> None:
        seen = self._record({})
        ep = self.endpoint
        if ep.fail is not None:
            self._reply(*ep.fail)
            return
        ok = self._basic_ok(seen["auth"])
        if ok is False or (ok is None and not ep.anonymous):
            self._reply(401, {"details": "incorrect username or password"})
            return
        self._grant()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        self._record(form)
        ep = self.endpoint
        if ep.fail is not None:
            self._reply(*ep.fail)
            return
        if ep.post_status is not None:
            self._reply(ep.post_status, {"error": "unsupported"})
            return
        if form.get("grant_type") != ["refresh_token"] or form.get("refresh_token", [""])[0] not in ep.refresh_tokens:
            self._reply(401, {"error": "invalid_grant", "error_description": "refresh token is not valid"})
            return
        self._grant()


@pytest.fixture
def endpoint() -> Iterator[TokenEndpoint]:
    ep = TokenEndpoint()
    try:
        yield ep
    finally:
        ep.stop()


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.trust_env = False  # no proxies or .netrc from the machine running the tests
        yield s


def authenticator(session: requests.Session, creds: Credentials | None = None, insecure: bool = True) -> Authenticator:
    return Authenticator(REGISTRY, creds, session, insecure=insecure)


class Clock:
    """A settable time.monotonic for the auth module only."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(auth, "time", types.SimpleNamespace(monotonic=c.monotonic))
    return c


# --------------------------------------------------------------------------------------------
# Bearer


def test_get_with_basic_credentials(endpoint: TokenEndpoint, session: requests.Session) -> None:
    a = authenticator(session, Credentials(USER, PASSWORD))
    assert a.header([APP]) is None
    assert a.challenge(endpoint.challenge(), [APP]) == "Bearer tok-1"
    (req,) = endpoint.seen
    assert (req["method"], req["path"], req["auth"]) == ("GET", "/token", f"Basic {BASIC}")
    assert req["query"] == {"service": ["test-registry"], "scope": [APP], "account": [USER]}
    assert a.header([APP]) == "Bearer tok-1"
    assert PASSWORD not in repr(a) and "tok-1" not in repr(a)


def test_anonymous_get(endpoint: TokenEndpoint, session: requests.Session) -> None:
    a = authenticator(session, None)
    assert a.challenge(endpoint.challenge(scope=scope_for("library/alpine", "pull")), []) == "Bearer tok-1"
    (req,) = endpoint.seen
    assert req["auth"] is None
    assert req["query"] == {"service": ["test-registry"], "scope": ["repository:library/alpine:pull"]}


def test_scope_union_for_a_cross_repository_mount(endpoint: TokenEndpoint, session: requests.Session) -> None:
    a = authenticator(session, Credentials(USER, PASSWORD))
    # the registry asks for pull on the target; the client needs push there and pull on the source
    a.challenge(endpoint.challenge(scope=scope_for("org/app", "pull")), [APP, BASE])
    # the challenge's own scope comes first (some registries read only the first)
    assert endpoint.seen[0]["query"]["scope"] == [APP, BASE]
    assert a.header([BASE]) == "Bearer tok-1"
    assert a.header([scope_for("org/app", "push")]) == "Bearer tok-1"
    assert a.header([APP, BASE]) == "Bearer tok-1"
    assert a.header([scope_for("org/other", "pull")]) is None
    assert a.header([scope_for("org/base", "push")]) is None
    assert endpoint.count() == 1


def test_tokens_are_cached_per_scope_set(endpoint: TokenEndpoint, session: requests.Session) -> None:
    a = authenticator(session, Credentials(USER, PASSWORD))
    one, two = scope_for("org/one", "pull"), scope_for("org/two", "pull,push")
    assert a.challenge(endpoint.challenge(scope=one), [one]) == "Bearer tok-1"
    assert a.challenge(endpoint.challenge(scope=two), [two]) == "Bearer tok-2"
    assert a.header([one]) == "Bearer tok-1"
    assert a.header([two]) == "Bearer tok-2"
    assert a.header([scope_for("org/two", "pull")]) == "Bearer tok-2"
    # a challenge by a request made without our token while a covering one exists: no new fetch
    assert a.challenge(endpoint.challenge(scope=one), [one], sent="") == "Bearer tok-1"
    assert endpoint.count() == 2


def test_refresh_token_post(endpoint: TokenEndpoint, session: requests.Session) -> None:
    a = authenticator(session, Credentials(USER, "", IDENTITY))
    assert a.challenge(endpoint.challenge(), [APP, BASE]) == "Bearer tok-1"
    (req,) = endpoint.seen
    assert (req["method"], req["auth"]) == ("POST", None)
    assert req["form"] == {
        "grant_type": ["refresh_token"], "refresh_token": [IDENTITY], "client_id": ["pybuild"],
        "service": ["test-registry"], "scope": [f"{APP} {BASE}"],
    }  # fmt: skip


@pytest.mark.parametrize("status", [404, 405])
def test_post_falls_back_to_get(endpoint: TokenEndpoint, session: requests.Session, status: int) -> None:
    endpoint.post_status = status
    endpoint.users = {USER: IDENTITY}  # the identity token goes as the Basic password
    a = authenticator(session, Credentials(USER, "", IDENTITY))
    assert a.challenge(endpoint.challenge(), [APP]) == "Bearer tok-1"
    assert [r["method"] for r in endpoint.seen] == ["POST", "GET"]
    assert endpoint.seen[1]["auth"] == f"Basic {b64(USER, IDENTITY)}"


def test_refused_refresh_token(endpoint: TokenEndpoint, session: requests.Session) -> None:
    endpoint.refresh_tokens = {}
    a = authenticator(session, Credentials(USER, "", IDENTITY))
    with pytest.raises(RegistryError) as err:
        a.challenge(endpoint.challenge(), [APP])
    assert str(err.value) == (
        f"{REGISTRY}: token endpoint {endpoint.realm} refused user 'alice' "
        "(401 Unauthorized: refresh token is not valid)"
    )
    assert_no_secret(err.value)


@pytest.mark.parametrize("shape", ["token", "access_token", "both"])
def test_token_field_variants(endpoint: TokenEndpoint, session: requests.Session, shape: str) -> None:
    endpoint.shape = shape
    assert authenticator(session, None).challenge(endpoint.challenge(), [APP]) == "Bearer tok-1"


def test_wrong_password_is_refused_without_leaking(endpoint: TokenEndpoint, session: requests.Session) -> None:
    endpoint.users = {USER: "something else"}
    a = authenticator(session, Credentials(USER, PASSWORD))
    with pytest.raises(RegistryError) as err:
        a.challenge(endpoint.challenge(), [APP])
    assert str(err.value) == (
        f"{REGISTRY}: token endpoint {endpoint.realm} refused user 'alice' "
        "(401 Unauthorized: incorrect username or password)"
    )
    assert_no_secret(err.value)


def test_server_text_is_scrubbed_of_secrets(endpoint: TokenEndpoint, session: requests.Session) -> None:
    # a careless endpoint that echoes what it was sent
    endpoint.fail = (403, {"errors": [{"code": "DENIED", "message": f"denied for {USER}:{PASSWORD} ({BASIC})"}]})
    a = authenticator(session, Credentials(USER, PASSWORD))
    with pytest.raises(RegistryError, match=r"refused user 'alice' \(403 Forbidden: denied for alice:\*\*\* \(\*\*\*\)\)$") as err:
        a.challenge(endpoint.challenge(), [APP])
    assert_no_secret(err.value)


def test_token_endpoint_errors(endpoint: TokenEndpoint, session: requests.Session) -> None:
    a = authenticator(session, None)
    endpoint.fail = (500, {"errors": [{"code": "UNKNOWN", "message": "database is down"}]})
    with pytest.raises(RegistryError, match=r"token endpoint .*/token answered 500 Internal Server Error: database is down$"):
        a.challenge(endpoint.challenge(), [APP])
    endpoint.fail = (401, {"error": "unauthorized"})
    with pytest.raises(RegistryError, match=r"refused anonymous \(no credentials found: docker login / \$REGISTRY_AUTH_FILE\)"):
        a.challenge(endpoint.challenge(), [APP])
    endpoint.fail = None
    endpoint.raw = b"<html>not json</html>"
    with pytest.raises(RegistryError, match="answered something other than a JSON object"):
        a.challenge(endpoint.challenge(), [APP])
    endpoint.raw = json.dumps({"token": f"bad token {PASSWORD}"}).encode()
    with pytest.raises(RegistryError, match=r"answered without a usable token$") as err:
        a.challenge(endpoint.challenge(), [APP])
    assert_no_secret(err.value)
    endpoint.raw = json.dumps({"expires_in": 60}).encode()
    with pytest.raises(RegistryError, match=r"answered without a usable token$"):
        a.challenge(endpoint.challenge(), [APP])


def test_unreachable_token_endpoint(session: requests.Session) -> None:
    ep = TokenEndpoint()
    challenge = ep.challenge()
    ep.stop()
    a = authenticator(session, Credentials(USER, PASSWORD))
    with pytest.raises(RegistryError, match=r"token endpoint http://127\.0\.0\.1:\d+/token unreachable \(ConnectionError\)$") as err:
        a.challenge(challenge, [APP])
    assert_no_secret(err.value)


@pytest.mark.parametrize(
    ("realm", "message"),
    [
        ("http://auth.example/token", "refusing plain-HTTP token realm http://auth.example/token"),
        ("https://169.254.169.254/token", "not a routable address"),
        ("https://[fe80::1]/token", "not a routable address"),
        (f"https://{USER}:hunter2@auth.example/token", "refusing token realm https://auth.example/token: it carries"),
        (f"https://{USER}:{PASSWORD}@auth.example/token", "has no valid http(s) realm"),  # '#' starts a fragment
        ("ftp://auth.example/token", "has no valid http(s) realm"),
        ("", "has no valid http(s) realm"),
        ("https://auth.example:99999/token", "has no valid http(s) realm"),
    ],
)
def test_realm_checks(session: requests.Session, realm: str, message: str) -> None:
    a = authenticator(session, Credentials(USER, PASSWORD), insecure=False)
    with pytest.raises(RegistryError, match=r"^127\.0\.0\.1:5000: ") as err:
        a.challenge(f'Bearer realm="{realm}",service="s"', [APP])
    assert message in str(err.value)
    assert_no_secret(err.value, "hunter2")


# --------------------------------------------------------------------------------------------
# repeated challenges: expiry, refusal, concurrency


def test_repeated_challenge_refreshes_once_then_fails(endpoint: TokenEndpoint, session: requests.Session) -> None:
    a = authenticator(session, Credentials(USER, PASSWORD))
    assert a.challenge(endpoint.challenge(), [APP]) == "Bearer tok-1"
    # the token was used and the registry challenged again: a fresh one, once
    assert a.challenge(endpoint.challenge(), [APP]) == "Bearer tok-2"
    with pytest.raises(RegistryError) as err:
        a.challenge(endpoint.challenge() + ',error="insufficient_scope"', [APP])
    assert str(err.value) == (
        f"{REGISTRY}: authentication failed (401 Unauthorized: insufficient_scope) for {APP} as user 'alice'"
    )
    assert_no_secret(err.value, *endpoint.issued)
    assert endpoint.count() == 2


def test_a_new_request_forgives_an_earlier_refusal(endpoint: TokenEndpoint, session: requests.Session) -> None:
    a = authenticator(session, Credentials(USER, PASSWORD))
    assert a.challenge(endpoint.challenge(), [APP]) == "Bearer tok-1"
    for n in (2, 3, 4):
        assert a.header([APP]) == f"Bearer tok-{n - 1}"  # a new request starts
        assert a.challenge(endpoint.challenge(), [APP]) == f"Bearer tok-{n}"


def test_refusal_without_credentials_says_so(endpoint: TokenEndpoint, session: requests.Session) -> None:
    a = authenticator(session, None)
    a.challenge(endpoint.challenge(), [APP])
    a.challenge(endpoint.challenge(), [APP])
    with pytest.raises(RegistryError, match=r"authentication failed \(401 Unauthorized\) for .* as anonymous \(no credentials found: docker login"):
        a.challenge(endpoint.challenge(), [APP])


def test_expired_token_is_not_offered_and_refreshed(endpoint: TokenEndpoint, session: requests.Session, clock: Clock) -> None:
    endpoint.expires_in = 60
    a = authenticator(session, Credentials(USER, PASSWORD))
    assert a.challenge(endpoint.challenge(), [APP]) == "Bearer tok-1"
    clock.now += 49
    assert a.header([APP]) == "Bearer tok-1"
    clock.now += 2  # within EXPIRY_MARGIN of the end: not handed out any more
    assert a.header([APP]) is None
    assert a.challenge(endpoint.challenge(), [APP], sent="") == "Bearer tok-2"
    assert a.challenge(endpoint.challenge(), [APP], sent="Bearer tok-2") == "Bearer tok-3"  # refused: refreshed once
    # a token refused after its lifetime starts a new episode: refreshed, not a failure
    clock.now += 100
    assert a.challenge(endpoint.challenge(), [APP], sent="Bearer tok-3") == "Bearer tok-4"
    # but the fresh token refused at once is
    with pytest.raises(RegistryError, match="authentication failed"):
        a.challenge(endpoint.challenge(), [APP], sent="Bearer tok-4")


def test_default_lifetime_and_proven_tokens(endpoint: TokenEndpoint, session: requests.Session, clock: Clock) -> None:
    endpoint.expires_in = None  # the Docker token spec's default: 60 s
    a = authenticator(session, Credentials(USER, PASSWORD))
    a.challenge(endpoint.challenge(), [APP])
    clock.now += 45
    assert a.header([APP]) == "Bearer tok-1"
    clock.now += 10
    assert a.header([APP]) is None

    endpoint.expires_in = 3600
    assert a.challenge(endpoint.challenge(), [APP], sent="") == "Bearer tok-2"
    assert a.challenge(endpoint.challenge(), [APP]) == "Bearer tok-3"  # refused at once: refreshed once
    clock.now += auth.PROVEN_AFTER  # tok-3 worked for a while, then was refused: a new episode
    assert a.challenge(endpoint.challenge(), [APP]) == "Bearer tok-4"
    with pytest.raises(RegistryError, match="authentication failed"):
        a.challenge(endpoint.challenge(), [APP])


def test_stale_refusals_from_parallel_requests_share_one_refresh(endpoint: TokenEndpoint, session: requests.Session) -> None:
    a = authenticator(session, Credentials(USER, PASSWORD))
    assert a.challenge(endpoint.challenge(), [APP]) == "Bearer tok-1"
    barrier = threading.Barrier(6)
    answers: list[str] = []

    def refused_with_tok1() -> None:
        barrier.wait()
        answers.append(a.challenge(endpoint.challenge(), [APP], sent="Bearer tok-1"))

    threads = [threading.Thread(target=refused_with_tok1) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == ["Bearer tok-2"] * 6
    assert endpoint.count() == 2
    # the refreshed token refused as well: that is a failure
    with pytest.raises(RegistryError, match="authentication failed"):
        a.challenge(endpoint.challenge(), [APP], sent="Bearer tok-2")


# --------------------------------------------------------------------------------------------
# Basic and challenge parsing


def test_basic(session: requests.Session) -> None:
    a = authenticator(session, Credentials(USER, PASSWORD))
    assert a.header([APP]) is None
    assert a.challenge('Basic realm="Registry Realm"', [APP]) == f"Basic {BASIC}"
    assert a.header([APP]) == f"Basic {BASIC}"  # sent unasked from now on
    assert a.header([]) == f"Basic {BASIC}"


def test_basic_refused_credentials(session: requests.Session) -> None:
    a = authenticator(session, Credentials(USER, PASSWORD))
    a.challenge('Basic realm="r"', [APP])
    # the credentials we just answered with were refused: they are wrong, retrying cannot help
    with pytest.raises(RegistryError) as err:
        a.challenge('Basic realm="r"', [APP])
    assert str(err.value) == f"{REGISTRY}: authentication failed (401 Unauthorized) for {APP} as user 'alice'"
    assert_no_secret(err.value)
    # a new request (header) whose Basic is refused once more is retried once
    assert a.header([APP]) == f"Basic {BASIC}"
    assert a.challenge('Basic realm="r"', [APP]) == f"Basic {BASIC}"
    with pytest.raises(RegistryError, match="authentication failed"):
        a.challenge('Basic realm="r"', [APP], sent=f"Basic {BASIC}")


def test_basic_without_credentials(session: requests.Session) -> None:
    a = authenticator(session, None)
    with pytest.raises(RegistryError) as err:
        a.challenge('Basic realm="r"', [APP])
    assert str(err.value) == (
        "authentication required for 127.0.0.1:5000 but no credentials were found (docker login / $REGISTRY_AUTH_FILE)"
    )
    assert a.header([APP]) is None


def test_challenge_parsing() -> None:
    assert challenges.parse_challenges(
        'Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push"'
    ) == [("bearer", {"realm": "https://auth.example/token", "service": "reg", "scope": "repository:a/b:pull,push"})]
    assert challenges.parse_challenges('Basic realm="x, y", BEARER realm="y" , error=insufficient_scope') == [
        ("basic", {"realm": "x, y"}),
        ("bearer", {"realm": "y", "error": "insufficient_scope"}),
    ]
    assert challenges.parse_challenges(r'Bearer realm="a\"b"') == [("bearer", {"realm": 'a"b'})]
    assert challenges.parse_challenges("Basic") == [("basic", {})]
    assert challenges.parse_challenges("") == []


def test_bearer_preferred_and_bad_challenges(endpoint: TokenEndpoint, session: requests.Session) -> None:
    a = authenticator(session, None)
    assert a.challenge(f'Basic realm="r", {endpoint.challenge()}', [APP]) == "Bearer tok-1"
    for value, message in [
        ("", "401 answer without a WWW-Authenticate challenge"),
        ('Negotiate realm="x"', "unsupported authentication scheme 'negotiate'"),
        ('"quoted"', "malformed WWW-Authenticate challenge"),
        ('Bearer service="s"', "the Bearer challenge has no valid http(s) realm"),
    ]:
        with pytest.raises(RegistryError, match=r"^127\.0\.0\.1:5000: ") as err:
            a.challenge(value, [APP])
        assert message in str(err.value)


def test_scope_merging() -> None:
    assert challenges.merge_scopes([scope_for("a", "push"), scope_for("b", "pull"), f"{scope_for('a', 'pull')} registry:catalog:*"]) == (
        "repository:a:pull,push",
        "repository:b:pull",
        "registry:catalog:*",
    )
    assert challenges.merge_scopes(["", "opaque"]) == ("opaque",)


def test_tls_of_the_token_endpoint(session: requests.Session, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unverified TLS only for a realm on the insecure registry's own host (loopback names are one host)."""
    calls: list[tuple[str, object]] = []

    def fake_request(method: str, url: str, **kw: Any) -> requests.Response:
        calls.append((url, kw["verify"]))
        resp = requests.Response()
        resp.status_code, resp.raw = 200, io.BytesIO(b'{"token": "t"}')  # read as a stream, as the real one is
        return resp

    monkeypatch.setattr(session, "request", fake_request)
    for registry, insecure, realm, verify in [
        ("127.0.0.1:5000", True, "https://127.0.0.1:5001/token", False),
        ("localhost:5000", True, "https://[::1]:5001/token", False),
        ("reg.internal:5000", True, "https://REG.internal/token", False),
        ("reg.internal:5000", True, "https://auth.example/token", True),
        ("[::1]:5000", True, "https://[::1]/token", False),
        ("reg.internal:5000", False, "https://reg.internal/token", True),
    ]:
        Authenticator(registry, None, session, insecure=insecure).challenge(f'Bearer realm="{realm}"', [APP])
        assert calls.pop() == (realm, verify), registry


def test_unreadable_files(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    path = docker_config(env, {"auths": {"ghcr.io": {"auth": BASIC}}})
    path_open = Path.open

    def refuse(self: Path, *args: Any, **kw: Any) -> Any:
        if self == path:  # mode 0 does not stop root, who may run the tests
            raise PermissionError(13, "Permission denied", str(self))
        return path_open(self, *args, **kw)

    monkeypatch.setattr(Path, "open", refuse)
    assert find_credentials("ghcr.io", env) is None  # a default location: skipped, as docker does
    env["DOCKER_CONFIG"] = str(path.parent)
    with pytest.raises(InputError, match=r"config\.json: cannot read credentials file \(Permission denied\)"):
        find_credentials("ghcr.io", env)


def test_auth_files_order(env: dict[str, str], tmp_path: Path) -> None:
    home = Path(env["HOME"])
    assert credential_lookup.auth_files(env) == [
        tmp_path / "run" / "containers" / "auth.json",
        tmp_path / "config" / "containers" / "auth.json",
        home / ".docker" / "config.json",
    ]
    del env["XDG_RUNTIME_DIR"], env["XDG_CONFIG_HOME"]
    env["DOCKER_CONFIG"] = str(tmp_path / "dc")
    assert credential_lookup.auth_files(env) == [
        Path(f"/run/containers/{os.getuid()}/auth.json"),
        home / ".config" / "containers" / "auth.json",
        tmp_path / "dc" / "config.json",
    ]
    env["REGISTRY_AUTH_FILE"] = str(tmp_path / "a.json")
    assert credential_lookup.auth_files(env) == [tmp_path / "a.json", tmp_path / "dc" / "config.json"]
