"""Registry credentials (where ``docker login`` and ``podman login`` keep them) and token auth.

Credentials are looked up the way containers/image and then the docker CLI do, so that whatever
login the user already did works unchanged: ``$REGISTRY_AUTH_FILE`` (else
``$XDG_RUNTIME_DIR/containers/auth.json``, or ``/run/containers/UID/auth.json`` without it, and
``$XDG_CONFIG_HOME/containers/auth.json``), then ``$DOCKER_CONFIG/config.json`` (else
``~/.docker/config.json``). The first file with something for the registry wins. In each file a
``credHelpers`` entry for the registry decides alone, then a non-empty ``auths`` entry, then the
``credsStore`` helper (docker leaves empty ``auths`` placeholders for registries whose secret is in
the store). Keys are matched as docker does: ``host``, ``https://host``, ``host/v1/``, ... and
for Docker Hub also ``https://index.docker.io/v1/`` and ``registry-1.docker.io``.

:class:`Authenticator` speaks the two schemes registries use: HTTP Basic, and the Docker token
protocol (a ``Bearer`` challenge naming a token ``realm``, exchanged for a short-lived token per
set of scopes, by GET with Basic credentials or by an OAuth2 refresh-token POST when the login left
an identity token). It is shared by the transport's threads, so one lock guards its cache and
token fetches are not duplicated when several requests are refused at once.

Everything read is bounded (``wire.py``): a credentials file is read up to
:data:`MAX_AUTH_FILE`, a helper's output up to :data:`MAX_HELPER_OUTPUT`, a token reply up to
:data:`MAX_TOKEN_REPLY` and within :data:`TOKEN_DEADLINE` seconds (redirects included, each one
checked as the realm is), and all their JSON goes through ``json_value``'s depth and size checks.

Secrets (passwords, identity tokens, bearer tokens, Basic strings) never reach an exception
message, a repr or a log: :class:`Credentials` redacts its repr, messages name users, hosts, scopes
and statuses only, and text quoted from a server is scrubbed of every secret we hold.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import re
import selectors
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from builder.errors import InputError, RegistryError
from builder.oci.canonical import json_object, json_value
from builder.registry.reference import DOCKER_HUB, DOCKER_HUB_API, LEGACY_DOCKER_HUB
from builder.registry.wire import (
    Deadline,
    DeadlineError,
    KiB,
    MiB,
    follow_redirects,
    origin,
    read_body,
    size_text,
    status_phrase,
)

#: The OAuth2 ``client_id`` sent with refresh-token grants (registries log it; some require one).
CLIENT_ID = "pybuild"
#: Seconds a credential helper may take (it may have to unlock a keychain).
HELPER_TIMEOUT = 60
#: Seconds for a token request (connect and read).
TOKEN_TIMEOUT = 30
#: Seconds for a whole token request, redirects included (the default of ``Authenticator(deadline=...)``).
TOKEN_DEADLINE = 60
#: Bytes of a token reply: tokens are sent back in a header, so a huge one is refused, not stored.
MAX_TOKEN_REPLY = MiB
#: Bytes of a credentials file (config.json, auth.json); real ones are a few KiB.
MAX_AUTH_FILE = 4 * MiB
#: Bytes of a credential helper's output (stdout and stderr each).
MAX_HELPER_OUTPUT = MiB
#: A token's lifetime when the endpoint does not say (the Docker token spec's default).
DEFAULT_EXPIRES_IN = 60
#: Stop handing out a token this many seconds before it expires, so it does not expire in flight.
EXPIRY_MARGIN = 10
#: A value refused this many seconds after we handed it out had worked meanwhile: its refusal starts
#: a new episode (refresh once) instead of counting as the refresh itself being refused.
PROVEN_AFTER = 30

#: The server address ``docker login`` uses for Docker Hub (its key in config.json, and for helpers).
HUB_SERVER = "https://index.docker.io/v1/"
_HUB_HOSTS = (DOCKER_HUB, LEGACY_DOCKER_HUB, DOCKER_HUB_API)
_NOT_FOUND = "credentials not found"
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: A bearer token must be a header-safe token (RFC 6750 b64token, loosely): a token with a space or
#: control character would make ``requests`` raise an error quoting the header value.
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")
_ACTION_ORDER = {"pull": 0, "push": 1}
_MESSAGE_MAX = 200


@dataclass(frozen=True, repr=False)
class Credentials:
    """What a login left for one registry: user and password, or an OAuth2 identity token.

    ``identity_token`` is docker's ``identitytoken``: a refresh token exchanged for access tokens
    (no password is kept then). The repr names the user and only whether secrets are present.
    """

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)

    def __repr__(self) -> str:
        password = "<redacted>" if self.password else "''"
        token = "<redacted>" if self.identity_token else "''"
        return f"Credentials(username={self.username!r}, password={password}, identity_token={token})"

    def basic(self) -> str | None:
        """The ``Authorization: Basic`` value, or None without a secret.

        With only an identity token it is sent as the password: the registries that hand out
        identity tokens (ACR) accept that on their Basic token endpoint.
        """
        secret = self.password or self.identity_token
        if not secret:
            return None
        raw = f"{self.username}:{secret}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every string that must not appear in output (to scrub text quoted from servers)."""
        found = [s for s in (self.password, self.identity_token) if s]
        basic = self.basic()
        if basic:
            found.append(basic.split(" ", 1)[1])
        return tuple(found)


def scope_for(repository: str, actions: str) -> str:
    """The token scope for ``actions`` (``"pull"``, ``"pull,push"``) on a repository."""
    return f"repository:{repository}:{actions}"


# --------------------------------------------------------------------------------------------
# finding credentials


def auth_files(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The credential files to read, in order (containers/image's list, then docker's)."""
    return [path for path, _ in _auth_files(os.environ if environ is None else environ)]


def _auth_files(env: Mapping[str, str]) -> list[tuple[Path, bool]]:
    """(path, named by the environment): a file the user named must be readable; a default one need not."""
    home = Path(env.get("HOME") or Path.home())
    paths: list[tuple[Path, bool]] = []
    if env.get("REGISTRY_AUTH_FILE"):
        paths.append((Path(env["REGISTRY_AUTH_FILE"]), True))
    else:
        runtime = env.get("XDG_RUNTIME_DIR")
        runtime_file = Path(runtime, "containers") if runtime else Path("/run/containers", str(os.getuid()))
        paths.append((runtime_file / "auth.json", False))
        paths.append((Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "containers" / "auth.json", False))
    docker = env.get("DOCKER_CONFIG")
    paths.append((Path(docker) / "config.json", True) if docker else (home / ".docker" / "config.json", False))
    return paths


def find_credentials(registry: str, environ: Mapping[str, str] | None = None, *,
                     authfile: Path | None = None) -> Credentials | None:
    """The credentials stored for ``registry`` (``host[:port]`` as in a Reference), or None.

    ``environ`` replaces ``os.environ`` for locating files, finding helpers on ``PATH`` and running
    them; ``authfile`` (``--authfile``) takes the place of ``$REGISTRY_AUTH_FILE`` and the default
    auth.json files, docker's config.json still read after it, as containers/image does. A malformed
    file is an InputError; a helper that is missing or fails is a RegistryError.
    """
    env = os.environ if environ is None else environ
    if authfile is not None:
        env = {**env, "REGISTRY_AUTH_FILE": str(authfile)}
    registry = registry.lower()
    for path, named in _auth_files(env):
        config = _load_config(path, named)
        if config is None:
            continue
        found = _from_config(config, path, registry, env)
        if found is not None:
            return found
    return None


def run_credential_helper(name: str, server: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``docker-credential-NAME get`` with ``server`` on stdin: its JSON answer, or {} if it has none.

    This is the docker credential-helper protocol (docker/docker-credential-helpers): the answer is
    ``{"ServerURL", "Username", "Secret"}``, and "credentials not found" on a non-zero exit means
    the helper simply has nothing for that server. The helper's output is never quoted in an error
    when it could be the answer itself.
    """
    if not _HELPER_NAME.fullmatch(name):
        raise RegistryError(f"invalid credential helper name {name!r} in the docker config")
    program = f"docker-credential-{name}"
    env = os.environ if environ is None else environ
    exe = shutil.which(program, path=env.get("PATH", os.defpath))
    if exe is None:
        raise RegistryError(f"credential helper {program} not found on PATH (it is named in the docker config)")
    try:
        returncode, stdout, stderr = _run_bounded([exe, "get"], server.encode(), environ)
    except subprocess.TimeoutExpired:
        raise RegistryError(f"credential helper {program} did not answer within {HELPER_TIMEOUT} s") from None
    except OSError as exc:
        raise RegistryError(f"credential helper {program} could not be run: {exc.strerror}") from None
    if returncode is None:
        raise RegistryError(f"credential helper {program} wrote more than {size_text(MAX_HELPER_OUTPUT)} for {server}")
    out = stdout.decode(errors="replace").strip()
    if returncode != 0:
        said = out or stderr.decode(errors="replace").strip()
        if _NOT_FOUND in said.lower():
            return {}
        line = said.splitlines()[0][:_MESSAGE_MAX] if said and not said.lstrip().startswith("{") else ""
        raise RegistryError(
            f"credential helper {program} failed for {server} (exit status {returncode})" + (f": {line}" if line else "")
        )
    try:
        answer = json_value(stdout)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise RegistryError(f"credential helper {program} gave a malformed answer for {server}")
    return answer


def _run_bounded(argv: list[str], stdin: bytes, environ: Mapping[str, str] | None) -> tuple[int | None, bytes, bytes]:
    """Run a helper: (exit status, stdout, stderr), or (None, ...) if it wrote more than MAX_HELPER_OUTPUT.

    ``subprocess.run`` would keep everything a helper writes; this reads both pipes as they fill
    and kills the helper at the cap or at HELPER_TIMEOUT (``subprocess.TimeoutExpired``).
    """
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=None if environ is None else dict(environ)) as proc:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        try:
            proc.stdin.write(stdin)  # a server name: far below a pipe's capacity, so this cannot block
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the helper did not read it; its exit status says the rest
        until = time.monotonic() + HELPER_TIMEOUT
        output = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
        with selectors.DefaultSelector() as selector:
            for fd in output:
                selector.register(fd, selectors.EVENT_READ)
            while selector.get_map():
                left = until - time.monotonic()
                if left <= 0:
                    proc.kill()
                    raise subprocess.TimeoutExpired(argv, HELPER_TIMEOUT)
                for key, _ in selector.select(left):
                    chunk = os.read(key.fd, 64 * KiB)
                    if not chunk:
                        selector.unregister(key.fd)
                        continue
                    output[key.fd] += chunk
                    if len(output[key.fd]) > MAX_HELPER_OUTPUT:
                        proc.kill()
                        return None, b"", b""
        try:
            returncode = proc.wait(max(0.0, until - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        return returncode, bytes(output[proc.stdout.fileno()]), bytes(output[proc.stderr.fileno()])


def _load_config(path: Path, named: bool) -> dict[str, Any] | None:
    """The file's JSON object; None if it is missing or empty.

    An unreadable default file is skipped, as docker does (a ``~/.docker/config.json`` left
    root-owned by ``sudo docker login`` must not break anonymous pulls); one the environment names
    is an error.
    """
    try:
        with path.open("rb") as file:
            data = file.read(MAX_AUTH_FILE + 1)
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        if not named:
            return None
        raise InputError(f"{path}: cannot read credentials file ({exc.strerror})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read credentials file ({exc.strerror})") from None
    if len(data) > MAX_AUTH_FILE:
        raise InputError(f"{path}: credentials file is larger than {size_text(MAX_AUTH_FILE)}")
    if not data.strip():
        return None
    try:
        value = json_value(data)
    except json.JSONDecodeError as exc:
        # the decoder's message names a position, never the content
        raise InputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except ValueError as exc:  # not UTF-8, too deeply nested: json_value's messages quote nothing either
        raise InputError(f"{path}: cannot read credentials file ({exc})") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a JSON object")
    return value


def _section(config: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = config.get(key) or {}
    if not isinstance(value, dict):
        raise InputError(f"{path}: {key!r} must be an object")
    return value


def _from_config(config: dict[str, Any], path: Path, registry: str, env: Mapping[str, str]) -> Credentials | None:
    hub = registry in _HUB_HOSTS
    helpers = _section(config, "credHelpers", path)
    match = _match_key(helpers, registry)
    if match is not None:
        helper = helpers[match]
        if not isinstance(helper, str):
            raise InputError(f"{path}: credHelpers[{match!r}] must be a string")
        return _from_helper(helper, HUB_SERVER if hub else registry, env)

    auths = _section(config, "auths", path)
    match = _match_key(auths, registry)
    if match is not None:
        found = _from_entry(auths[match], f"{path}: auths[{match!r}]")
        if found is not None:
            return found

    store = config.get("credsStore")
    if store:
        if not isinstance(store, str):
            raise InputError(f"{path}: 'credsStore' must be a string")
        # the store knows the server under the address docker logged in with: the auths key
        return _from_helper(store, match if match is not None else (HUB_SERVER if hub else registry), env)
    return None


def _from_entry(entry: Any, where: str) -> Credentials | None:
    """One ``auths`` entry: ``auth`` (base64 ``user:password``), or ``username``/``password``, and ``identitytoken``."""
    if not isinstance(entry, dict):
        raise InputError(f"{where} must be an object")
    for key in ("auth", "username", "password", "identitytoken"):
        if not isinstance(entry.get(key, ""), str):
            raise InputError(f"{where}: {key!r} must be a string")
    username, password = entry.get("username", ""), entry.get("password", "")
    if entry.get("auth"):
        raw = entry["auth"].strip()
        try:
            decoded = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise InputError(f"{where}: 'auth' is not base64 of user:password") from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise InputError(f"{where}: 'auth' is not base64 of user:password")
        password = password.rstrip("\x00")
    token = entry.get("identitytoken", "")
    if not (username or password or token):
        return None
    return Credentials(username, password, token)


def _from_helper(helper: str, server: str, env: Mapping[str, str]) -> Credentials | None:
    answer = run_credential_helper(helper, server, env)
    if not answer:
        return None
    username, secret = answer.get("Username", ""), answer.get("Secret", "")
    if not isinstance(username, str) or not isinstance(secret, str):
        raise RegistryError(f"credential helper docker-credential-{helper} gave a malformed answer for {server}")
    if not secret:
        return None
    if username == "<token>":  # the helper protocol's marker for an identity token
        return Credentials(identity_token=secret)
    return Credentials(username, secret)


def _key_host(key: str) -> str | None:
    """The host a config key names, if it names a whole registry (``host``, ``https://host/v1/``, ...)."""
    text = key.strip().lower()
    for scheme in ("https://", "http://"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
            break
    host, _, rest = text.partition("/")
    # namespaced keys (``quay.io/org/repo``) hold credentials for one repository, not the registry
    return host if rest.strip("/") in ("", "v1", "v2") else None


def _match_key(mapping: Mapping[str, Any], registry: str) -> str | None:
    """The key of ``mapping`` that stands for ``registry``: exact spellings first, then any variant."""
    hosts = _HUB_HOSTS if registry in _HUB_HOSTS else (registry,)
    preferred = [HUB_SERVER] if registry in _HUB_HOSTS else []
    preferred += [h for host in hosts for h in (host, f"https://{host}", f"http://{host}")]
    for key in preferred:
        if key in mapping:
            return key
    for key in mapping:
        if _key_host(key) in hosts:
            return key
    return None


# --------------------------------------------------------------------------------------------
# challenges and scopes


def parse_challenges(value: str) -> list[tuple[str, dict[str, str]]]:
    """``WWW-Authenticate`` as (lowercased scheme, params) pairs, in order (RFC 9110 §11.6.1).

    Raises ValueError on text that is not a challenge list.
    """
    challenges: list[tuple[str, dict[str, str]]] = []
    pos, end = 0, len(value)
    while True:
        while pos < end and (value[pos].isspace() or value[pos] == ","):
            pos += 1
        if pos >= end:
            return challenges
        scheme = _AUTH_TOKEN.match(value, pos)
        if scheme is None:
            raise ValueError("malformed challenge")
        pos = scheme.end()
        params: dict[str, str] = {}
        while (param := _PARAM.match(value, pos)) is not None:
            raw = param.group(2)
            if raw.startswith('"'):
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
            params[param.group(1).lower()] = raw
            pos = param.end()
        challenges.append((scheme.group(0).lower(), params))


_AUTH_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_PARAM = re.compile(r"""\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,"]*)\s*(?:,|\Z)""")


def _merge_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """One scope per resource with the union of its actions, in order of first mention.

    Order matters: some registries read only the first ``scope`` parameter, so the challenge's own
    scope (what the refused request needs) is passed first.
    """
    merged: dict[str, list[str]] = {}
    for scope in scopes:
        for part in scope.split():
            resource, sep, actions = part.rpartition(":")
            if not sep or ":" not in resource:  # not type:name:actions; keep it as it is
                merged.setdefault(part, [])
                continue
            known = merged.setdefault(resource, [])
            known.extend(a for a in actions.split(",") if a and a not in known)
    return tuple(
        f"{r}:{','.join(sorted(a, key=lambda x: (_ACTION_ORDER.get(x, 2), x)))}" if a else r for r, a in merged.items()
    )


def _grants(scopes: Iterable[str]) -> dict[str, frozenset[str]]:
    out: dict[str, frozenset[str]] = {}
    for scope in scopes:
        resource, sep, actions = scope.rpartition(":")
        if not sep or ":" not in resource:
            out[scope] = frozenset()
        else:
            out[resource] = frozenset(actions.split(","))
    return out


# --------------------------------------------------------------------------------------------
# the authenticator


@dataclass
class _Token:
    value: str
    key: frozenset[str]
    received: float  # time.monotonic() when it arrived: the host's and the registry's clocks may differ
    expires_in: int
    issued_at: str | None

    @property
    def header(self) -> str:
        return f"Bearer {self.value}"

    def usable(self, now: float) -> bool:
        margin = min(EXPIRY_MARGIN, self.expires_in / 2)
        return now < self.received + self.expires_in - margin

    def covers(self, wanted: dict[str, frozenset[str]]) -> bool:
        granted = _grants(self.key)
        return all(r in granted and (acts <= granted[r] or "*" in granted[r]) for r, acts in wanted.items())


class Authenticator:
    """Authorization for one registry: Basic, or bearer tokens cached per scope set.

    Intended use, per request: send ``header(scopes)`` if it is not None; on a 401 call
    ``challenge(resp.headers["WWW-Authenticate"], scopes, sent=<the Authorization sent, "" if
    none>)`` and retry with what it returns. A refused value is replaced once (a fresh token, or
    Basic again); if the replacement is refused too, ``challenge`` raises RegistryError instead of
    answering, so a retry loop always ends. What counts as "the replacement refused": a refusal of
    the value the previous ``challenge`` returned, with no ``header()`` call for those scopes in
    between (``header()`` marks a new request) and less than :data:`PROVEN_AFTER` seconds later.
    """

    def __init__(
        self, registry: str, credentials: Credentials | None, session: requests.Session, *, insecure: bool = False,
        deadline: float = TOKEN_DEADLINE,
    ) -> None:
        self.registry = registry
        self._credentials = credentials
        self._session = session
        self._insecure = insecure
        self._deadline = deadline
        self._lock = threading.Lock()
        self._tokens: dict[frozenset[str], _Token] = {}
        self._strikes: dict[frozenset[str], int] = {}
        self._basic = False
        self._basic_strikes = 0
        self._basic_since = 0.0  # monotonic time of the last Basic refusal

    def __repr__(self) -> str:
        return f"Authenticator({self.registry!r}, {self._credentials!r})"

    def header(self, scopes: Sequence[str]) -> str | None:
        """The Authorization value to send unasked for ``scopes``, or None to go without."""
        with self._lock:
            if self._basic:
                self._basic_strikes = 0
                return self._basic_value()
            token = self._covering(scopes, time.monotonic())
            if token is None:
                return None
            self._strikes[token.key] = 0
            return token.header

    def challenge(self, www_authenticate: str, scopes: Sequence[str], *, sent: str | None = None, status: int = 401) -> str:
        """Answer a 401: the Authorization value to retry with.

        ``sent`` is the Authorization value the refused request carried ("" for none); without it,
        the value :meth:`header` gives now is assumed. Pass it when requests run in parallel, or
        a request refused with an old token looks like a refusal of the token that replaced it.
        """
        try:
            challenges = parse_challenges(www_authenticate)
        except ValueError:
            raise RegistryError(f"{self.registry}: malformed WWW-Authenticate challenge in a {status} answer") from None
        by_scheme = dict(reversed(challenges))  # the first challenge of a scheme wins
        with self._lock:
            if "bearer" in by_scheme:
                return self._bearer(by_scheme["bearer"], scopes, sent, status)
            if "basic" in by_scheme:
                return self._basic_challenge(by_scheme["basic"], scopes, sent, status)
        if not challenges:
            raise RegistryError(f"{self.registry}: {status} answer without a WWW-Authenticate challenge")
        raise RegistryError(f"{self.registry}: unsupported authentication scheme {challenges[0][0]!r}")

    # -- Basic

    def _basic_value(self) -> str:
        value = self._credentials.basic() if self._credentials else None
        if value is None:
            raise RegistryError(
                f"authentication required for {self.registry} but no credentials were found "
                "(docker login / $REGISTRY_AUTH_FILE)"
            )
        return value

    def _basic_challenge(self, params: dict[str, str], scopes: Sequence[str], sent: str | None, status: int) -> str:
        value = self._basic_value()
        used = sent if sent is not None else (value if self._basic else "")
        if used == value:
            now = time.monotonic()
            proven = now - self._basic_since >= PROVEN_AFTER
            self._basic_strikes = 1 if proven else self._basic_strikes + 1
            self._basic_since = now
            if self._basic_strikes >= 2:
                raise self._failed(status, params, scopes)
        elif not self._basic:
            # Basic cannot be refreshed: if the value we answer now is refused, the credentials are wrong
            self._basic_strikes, self._basic_since = 1, time.monotonic()
        self._basic = True
        return value

    # -- Bearer

    def _bearer(self, params: dict[str, str], scopes: Sequence[str], sent: str | None, status: int) -> str:
        wanted = _merge_scopes([params.get("scope", ""), *scopes])
        key = frozenset(wanted)
        now = time.monotonic()
        if sent is None:
            current = self._covering(wanted, now)
            sent = current.header if current else ""
        refused = next((t for t in self._tokens.values() if t.header == sent), None)
        if refused is not None:
            # the token we handed out was refused: expired, revoked, or short of a scope
            for k in [k for k, t in self._tokens.items() if t is refused]:
                del self._tokens[k]
            proven = not refused.usable(now) or now - refused.received >= PROVEN_AFTER
            strikes = 1 if proven else self._strikes.get(key, 0) + 1
            self._strikes[key] = strikes
            if strikes >= 2:
                raise self._failed(status, params, wanted)
        else:
            # the request went without our current token: another thread may have fetched one already
            current = self._covering(wanted, now)
            if current is not None:
                return current.header
        token = self._fetch(params, wanted, key)
        self._tokens[key] = token
        return token.header

    def _covering(self, scopes: Sequence[str], now: float) -> _Token | None:
        wanted = _grants(_merge_scopes(scopes))
        usable = [t for t in self._tokens.values() if t.usable(now) and t.covers(wanted)]
        return max(usable, key=lambda t: t.received + t.expires_in, default=None)

    def _fetch(self, params: dict[str, str], scopes: tuple[str, ...], key: frozenset[str]) -> _Token:
        realm = params.get("realm", "")
        shown = self._check_realm(realm)
        service = params.get("service", "")
        creds = self._credentials
        if creds is not None and creds.identity_token:
            form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token, "client_id": CLIENT_ID}
            if service:
                form["service"] = service
            if scopes:
                form["scope"] = " ".join(scopes)
            # no redirects: a 307/308 would carry the refresh token in the body to wherever it points
            answer = self._request("POST", realm, shown, data=form, follow=False)
            if answer[0] not in (404, 405):
                return self._token_from(answer, shown, key)
        query = [("service", service)] if service else []
        query += [("scope", s) for s in scopes]
        headers = {}
        basic = creds.basic() if creds is not None else None
        if basic is not None and creds is not None:
            headers["Authorization"] = basic
            if creds.username:
                query.append(("account", creds.username))
        answer = self._request("GET", realm, shown, params=query, headers=headers)
        return self._token_from(answer, shown, key)

    def _request(
        self, method: str, url: str, shown: str, *, params: list[tuple[str, str]] | None = None,
        data: dict[str, str] | None = None, headers: dict[str, str] | None = None, follow: bool = True,
    ) -> _Answer:
        """One token request: (status, Content-Type, body of at most MAX_TOKEN_REPLY bytes), within the deadline.

        Redirects of a GET are followed by hand, each target checked as a realm is (https unless
        insecure, no user name, no link-local address), and Authorization goes only to the realm's
        own origin. TLS is verified unless the host is the insecure registry's own:
        ``--insecure-registry`` names that host, and credentials must not go unverified to any other.
        """
        first = origin(url)
        send = dict(headers or {})

        def hop(at: str) -> requests.Response:
            verify = not (self._insecure and _same_host(urlsplit(at).hostname or "", self.registry))
            if origin(at) != first:
                send.pop("Authorization", None)
            return self._session.request(method, at, params=params, data=data, headers=send, timeout=TOKEN_TIMEOUT,
                                         verify=verify, allow_redirects=False, stream=True)

        def redirected(status: int, at: str, target: str | None) -> None:
            nonlocal params, method, data
            if target is None:
                raise RegistryError(f"{self.registry}: token endpoint {shown} redirected to a URL that "
                                    "is not http(s) or is malformed")
            self._check_realm(target)
            params, method, data = None, "GET", None

        with Deadline(self._deadline) as deadline:
            try:
                resp = follow_redirects(url, hop, deadline, lambda _: f"{self.registry}: token endpoint {shown}",
                                        redirected, follow=follow)
                with closing(resp):
                    what = f"{self.registry}: token endpoint {shown}: the answer"
                    body = read_body(resp, MAX_TOKEN_REPLY, what, truncate=resp.status_code != 200)
                    deadline.check()
                    deadline.detach()
                    return resp.status_code, resp.headers.get("Content-Type", ""), body
            # ValueError: a plain requests.Session (not new_session's) parses a redirect's Location itself
            except (requests.RequestException, DeadlineError, ValueError) as exc:
                if deadline.expired:
                    raise RegistryError(f"{self.registry}: token endpoint {shown} gave no complete answer within "
                                        f"{self._deadline:g} s") from None
                # requests' messages quote URLs and reasons; keep ours to names we chose
                raise RegistryError(f"{self.registry}: token endpoint {shown} unreachable ({type(exc).__name__})") from None

    def _token_from(self, answer: _Answer, shown: str, key: frozenset[str]) -> _Token:
        status, content_type, body = answer
        if status != 200:
            detail = self._server_message(content_type, body)
            text = f"{status} {status_phrase(status)}".rstrip() + (f": {detail}" if detail else "")
            if status in (401, 403):
                raise RegistryError(f"{self.registry}: token endpoint {shown} refused {self._who()} ({text})")
            raise RegistryError(f"{self.registry}: token endpoint {shown} answered {text}")
        try:
            doc = json_object(body)
        except json.JSONDecodeError:
            doc = None
        except ValueError as exc:  # not UTF-8, or nested too deep: say which, the content stays out
            raise RegistryError(f"{self.registry}: token endpoint {shown} answered unusable JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise RegistryError(f"{self.registry}: token endpoint {shown} answered something other than a JSON object")
        value = doc.get("access_token") or doc.get("token")
        if not isinstance(value, str) or not _TOKEN_CHARS.fullmatch(value):
            raise RegistryError(f"{self.registry}: token endpoint {shown} answered without a usable token")
        expires_in = doc.get("expires_in")
        if not isinstance(expires_in, int | float) or isinstance(expires_in, bool) or expires_in <= 0:
            expires_in = DEFAULT_EXPIRES_IN
        issued_at = doc.get("issued_at")
        return _Token(value, key, time.monotonic(), int(expires_in), issued_at if isinstance(issued_at, str) else None)

    def _check_realm(self, realm: str) -> str:
        """Refuse realms that would leak credentials or reach a cloud metadata service; the realm as shown."""
        try:
            parts = urlsplit(realm)
            host = parts.hostname or ""
            _ = parts.port  # raises on a malformed port
        except ValueError:
            host, parts = "", urlsplit("")
        if parts.scheme not in ("http", "https") or not host:
            raise RegistryError(f"{self.registry}: the Bearer challenge has no valid http(s) realm")
        netloc = parts.netloc.rpartition("@")[2]
        shown = f"{parts.scheme}://{netloc}{parts.path}"
        if parts.username is not None or parts.password is not None:
            raise RegistryError(f"{self.registry}: refusing token realm {shown}: it carries a user name or password")
        if parts.scheme == "http" and not self._insecure:
            raise RegistryError(
                f"{self.registry}: refusing plain-HTTP token realm {shown} (allow it with --insecure-registry)"
            )
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address is not None and (address.is_link_local or address.is_multicast or address.is_unspecified):
            raise RegistryError(f"{self.registry}: refusing token realm {shown}: not a routable address")
        return shown

    # -- messages

    def _who(self) -> str:
        creds = self._credentials
        if creds is None or not (creds.password or creds.identity_token):
            return "anonymous (no credentials found: docker login / $REGISTRY_AUTH_FILE)"
        if creds.username:
            return f"user {creds.username!r}"
        return "an identity token"

    def _failed(self, status: int, params: dict[str, str], scopes: Sequence[str]) -> RegistryError:
        detail = self._scrub(" ".join(v for v in (params.get("error", ""), params.get("error_description", "")) if v))
        scope_text = f" for {' '.join(s for s in scopes if s)}" if any(scopes) else ""
        return RegistryError(
            f"{self.registry}: authentication failed ({status} {status_phrase(status)}"
            + (f": {detail}" if detail else "")
            + f"){scope_text} as {self._who()}"
        )

    def _server_message(self, content_type: str, body: bytes) -> str:
        """The error text an endpoint gave (distribution, OAuth2 and Docker Hub shapes), scrubbed."""
        text = ""
        try:
            doc = json_value(body)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            errors = doc.get("errors")
            if isinstance(errors, list):
                text = "; ".join(str(e.get("message") or e.get("code") or "") for e in errors if isinstance(e, dict))
            for name in ("error_description", "details", "message", "error"):
                if not text and isinstance(doc.get(name), str):
                    text = doc[name]
        elif "json" not in content_type and len(body) <= 1024:
            text = body.decode(errors="replace")
        return self._scrub(" ".join(text.split()))[:_MESSAGE_MAX]

    def _scrub(self, text: str) -> str:
        secrets = list(self._credentials.secrets) if self._credentials else []
        secrets += [t.value for t in self._tokens.values()]
        for secret in sorted(secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text


_Answer = tuple[int, str, bytes]  # a token endpoint's status, Content-Type and body


def _same_host(hostname: str, registry: str) -> bool:
    """Whether a URL's hostname is the host of ``registry`` (``host[:port]``); all loopback names are one."""
    host = registry[1:].partition("]")[0] if registry.startswith("[") else registry.partition(":")[0]
    names = {hostname.lower(), host.lower()}
    return len(names) == 1 or all(_loopback(n) for n in names)


def _loopback(name: str) -> bool:
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
