"""Authorization for registry requests: HTTP Basic, and the Docker token protocol with its cache.

:class:`Authenticator` speaks the two schemes registries use: HTTP Basic, and the Docker token
protocol (a ``Bearer`` challenge naming a token ``realm``, exchanged for a short-lived token per
set of scopes, by GET with Basic credentials or by an OAuth2 refresh-token POST when the login left
an identity token). It is shared by the transport's threads, so one lock guards its cache and
token fetches are not duplicated when several requests are refused at once. The credentials it
sends come from ``credential_lookup.py`` (or ``--creds``); challenges and scopes are read by
``challenges.py``.

Everything read is bounded (``wire.py``): a token reply up to :data:`MAX_TOKEN_REPLY` bytes and
within :data:`TOKEN_DEADLINE` seconds (redirects included, each one checked as the realm is), and
its JSON goes through ``json_value``'s depth and size checks. Text quoted from a token endpoint
or a challenge is scrubbed of the credentials and of every token we hold (``credentials.py``).
"""

from __future__ import annotations

import ipaddress
import json
import re
import threading
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

from builder.errors import RegistryError
from builder.oci.canonical import json_object
from builder.registry.challenges import grants, merge_scopes, parse_challenges
from builder.registry.credentials import MAX_QUOTED, Credentials, scrub
from builder.registry.options import hostname
from builder.registry.wire import (
    Deadline,
    DeadlineError,
    MiB,
    error_body,
    follow_redirects,
    http_url,
    origin,
    read_body,
    status_phrase,
)

#: The OAuth2 ``client_id`` sent with refresh-token grants (registries log it; some require one).
CLIENT_ID = "pybuild"
#: Seconds for a token request (connect and read).
TOKEN_TIMEOUT = 30
#: Seconds for a whole token request, redirects included (the default of ``Authenticator(deadline=...)``).
TOKEN_DEADLINE = 60
#: Bytes of a token reply: tokens are sent back in a header, so a huge one is refused, not stored.
MAX_TOKEN_REPLY = MiB
#: A token's lifetime when the endpoint does not say (the Docker token spec's default).
DEFAULT_EXPIRES_IN = 60
#: Stop handing out a token this many seconds before it expires, so it does not expire in flight.
EXPIRY_MARGIN = 10
#: A value refused this many seconds after we handed it out had worked meanwhile: its refusal starts
#: a new episode (refresh once) instead of counting as the refresh itself being refused.
PROVEN_AFTER = 30
#: A bearer token must be a header-safe token (RFC 6750 b64token, loosely): a token with a space or
#: control character would make ``requests`` raise an error quoting the header value.
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")
_LOGIN_HINT = "docker login / $REGISTRY_AUTH_FILE"  # where credentials would have come from


@dataclass
class _Token:
    """A bearer token as it arrived, for the set of scopes it was asked for (``key``)."""

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
        granted = grants(self.key)
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
                f"({_LOGIN_HINT})"
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
        wanted = merge_scopes([params.get("scope", ""), *scopes])
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
        wanted = grants(merge_scopes(scopes))
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
        parts = http_url(realm)
        if parts is None:
            raise RegistryError(f"{self.registry}: the Bearer challenge has no valid http(s) realm")
        host = parts.hostname or ""
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
            return f"anonymous (no credentials found: {_LOGIN_HINT})"
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
        said = error_body(body)
        text = "; ".join(message or code for code, message in said.errors)
        for name in ("error_description", "details", "message", "error"):
            text = text or said.fields.get(name, "")
        if not said.is_object and "json" not in content_type and len(body) <= 1024:
            text = body.decode(errors="replace")
        return self._scrub(" ".join(text.split()))[:MAX_QUOTED]

    def _scrub(self, text: str) -> str:
        secrets = list(self._credentials.secrets) if self._credentials else []
        return scrub(text, [*secrets, *(t.value for t in self._tokens.values())])


_Answer = tuple[int, str, bytes]  # a token endpoint's status, Content-Type and body


def _same_host(url_host: str, registry: str) -> bool:
    """Whether a URL's hostname is the host of ``registry`` (``host[:port]``); all loopback names are one."""
    names = {url_host.lower(), hostname(registry).strip("[]").lower()}
    return len(names) == 1 or all(_loopback(n) for n in names)


def _loopback(name: str) -> bool:
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
