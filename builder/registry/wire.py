"""What goes over the wire to registries and token servers: sessions, deadlines, bounded reads, and
what the body of a refusal says (:func:`error_body`, for the transport and the authenticator alike).

Three rules hold for every exchange, whoever makes it (transport or authenticator):

- **Nothing read is unbounded.** :func:`read_body` reads at most a given number of bytes and
  refuses an answer that is longer; the caller names the cap (4 MiB for a manifest, 1 MiB for a
  token reply, 64 KiB for an upload's answer or an error body).
- **Small exchanges have a wall-clock deadline.** urllib3's timeouts are per socket operation, so
  a server that sends one byte every few seconds never trips them (urllib3's own documentation
  recommends a watcher thread for wall-clock limits). A :class:`Deadline` is that watcher: the
  connections urllib3 uses are told which deadline their thread is working for, and when it
  passes, the socket is shut down, which ends whatever read or handshake is blocked on it.
- **No credentials but the authenticator's.** requests adds ``~/.netrc`` passwords to a request
  without ``Authorization`` and, on redirects, for the redirect's target host; the sessions made
  here have a no-op auth and never prepare a redirect themselves: every exchange follows
  redirects by hand, in :func:`follow_redirects` (:func:`redirect_target` checks where they point). Proxies and CA bundles
  still come from the environment (``trust_env`` stays on for them).
"""

from __future__ import annotations

import contextlib
import functools
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Self
from urllib.parse import SplitResult, urljoin, urlsplit

import requests
import requests.adapters

from builder import __version__
from builder.errors import RegistryError
from builder.oci.canonical import json_value

MiB = 1 << 20
KiB = 1 << 10
USER_AGENT = f"pybuild/{__version__}"
MAX_REDIRECTS = 10
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_CURRENT = threading.local()  # .deadline: the Deadline the thread's next exchange works for


class Deadline:
    """A wall-clock limit on one request (all its redirect hops); the socket in use is shut down when it passes.

    ``seconds`` None means no limit. ``from_answer`` starts the clock when the request has been
    sent (an upload's body may take long to send; the registry's answer must not). ``restart``
    sets a new limit, for a rule of the kind "each MiB within N seconds". Use it as a
    context manager around the exchanges it limits; leave the block before the connection
    can be reused by another request.
    """

    def __init__(self, seconds: float | None, *, from_answer: bool = False) -> None:
        self.seconds = seconds
        self._from_answer = from_answer
        self._at = math.inf if seconds is None or from_answer else time.monotonic() + seconds
        self.expired = False
        self._lock = threading.Lock()
        self._conn: Any = None
        self._timer: threading.Timer | None = None
        self._fires_at = math.inf
        self._closed = False
        self._rule: str | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._conn = None
            if self._timer is not None:
                self._timer.cancel()

    def restart(self, seconds: float, rule: str) -> None:
        """From now on, the limit is ``seconds`` from now (a throughput rule); ``rule`` is what a failure says."""
        with self._lock:
            if self.seconds is not None and not self.expired:
                self._at = time.monotonic() + seconds
                self._rule = rule
                if self._timer is not None and self._at < self._fires_at and not self._closed:
                    self._timer.cancel()  # the watcher would wake too late; later restarts only move it on
                    self._schedule()

    @property
    def message(self) -> str:
        """What passing this deadline means, for an error message."""
        return self._rule or f"no complete answer within {self.seconds or 0:g} s"

    def detach(self) -> None:
        """Forget the connection in use: call it before the response is closed and the connection pooled."""
        with self._lock:
            self._conn = None

    @contextmanager
    def watching(self) -> Iterator[None]:
        """The connections this thread opens or uses inside the block are this deadline's."""
        previous = getattr(_CURRENT, "deadline", None)
        _CURRENT.deadline = self
        try:
            yield
        finally:
            _CURRENT.deadline = previous

    def check(self) -> None:
        """Raise :class:`DeadlineError` if the limit has passed (also between hops and retries)."""
        if self.expired or time.monotonic() >= self._at:
            self.expired = True
            raise DeadlineError(self.message)

    # -- called by the connections, on the requesting thread

    def _attach(self, conn: Any) -> None:
        with self._lock:
            self._conn = conn
            conn.pybuild_deadline = self
            if self.expired:
                self._shutdown()
            elif self._timer is None and self._at != math.inf and not self._closed:
                self._schedule()

    def _answering(self) -> None:
        if self._from_answer and self.seconds is not None:
            with self._lock:
                self._at = time.monotonic() + self.seconds
                if self._timer is None and not self._closed:
                    self._schedule()

    # -- the watcher

    def _schedule(self) -> None:
        self._fires_at = self._at
        self._timer = threading.Timer(max(0.0, self._at - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._closed:
                return
            if time.monotonic() < self._at:  # restarted meanwhile
                self._schedule()
                return
            self.expired = True
            self._shutdown()

    def _shutdown(self) -> None:
        conn = self._conn
        if conn is None or getattr(conn, "pybuild_deadline", None) is not self:
            return  # between hops, or the connection went back to the pool and serves another request
        sock = getattr(conn, "sock", None)
        sock = sock if isinstance(sock, socket.socket) else getattr(sock, "socket", None)  # TLS in TLS (proxies)
        if isinstance(sock, socket.socket):
            # socket.socket's own shutdown: SSLSocket.shutdown would also drop its TLS state under a reader
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


class DeadlineError(RegistryError):
    """A :class:`Deadline` passed; callers re-raise it as a RegistryError naming the request."""


class _WatchedConnection:
    """Mixed into urllib3's connection classes: a connection tells its thread's Deadline that it is in use.

    ``connect`` (urllib3 makes TLS connections before ``request``), ``request`` and
    ``getresponse`` run on the thread that sends the request, inside ``session.request``.
    """

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        _tell(self)
        return super().connect(*args, **kwargs)  # type: ignore[misc]

    def request(self, *args: Any, **kwargs: Any) -> Any:
        _tell(self)
        return super().request(*args, **kwargs)  # type: ignore[misc]

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        deadline = getattr(_CURRENT, "deadline", None)
        if deadline is not None:
            deadline._answering()
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]


def _tell(conn: Any) -> None:
    deadline = getattr(_CURRENT, "deadline", None)
    if deadline is not None:
        deadline._attach(conn)


@functools.cache
def _watched_pool(pool_cls: type[Any]) -> type[Any]:
    if getattr(pool_cls, "pybuild_watched", False):
        return pool_cls
    base = pool_cls.ConnectionCls
    conn_cls = type(f"Watched{base.__name__}", (_WatchedConnection, base), {})
    return type(f"Watched{pool_cls.__name__}", (pool_cls,), {"ConnectionCls": conn_cls, "pybuild_watched": True})


def _watch(manager: Any) -> Any:
    manager.pool_classes_by_scheme = {k: _watched_pool(v) for k, v in manager.pool_classes_by_scheme.items()}
    return manager


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter, whose connection pools (direct and through proxies) make watched connections."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        _watch(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        return _watch(super().proxy_manager_for(proxy, **kwargs))


class _Session(requests.Session):
    def resolve_redirects(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """Nothing: redirects are followed by hand (``redirect_target``), hop by hop.

        Even with ``allow_redirects=False`` requests prepares the next request of a redirect
        (``Response.next``): it parses the Location (a malformed one raises ValueError from
        urllib.parse, not a requests error) and adds ``~/.netrc`` credentials for its host.
        """
        return iter(())


def new_session() -> requests.Session:
    """A session that says it is pybuild, enforces deadlines, and takes no credentials from ~/.netrc.

    Proxies and CA bundles come from the environment as usual. Credentials are the
    authenticator's business alone: requests would otherwise add a ``.netrc`` password for any
    host without an Authorization header, such as a CDN or a token server's redirect target.
    """
    session = _Session()
    session.headers["User-Agent"] = USER_AGENT
    session.auth = _no_auth
    for prefix in ("https://", "http://"):
        session.mount(prefix, _Adapter())
    return session


def _no_auth(request: requests.PreparedRequest) -> requests.PreparedRequest:
    return request  # a session-level auth keeps requests from looking into ~/.netrc for the first hop


def follow_redirects(
    url: str,
    send: Callable[[str], requests.Response],
    deadline: Deadline,
    where: Callable[[str], str],
    redirected: Callable[[int, str, str | None], None],
    *,
    follow: bool = True,
) -> requests.Response:
    """The answer at the end of ``url``'s redirects (its body unread), followed by hand within ``deadline``.

    ``send(url)`` makes one exchange (``allow_redirects=False``, ``stream=True``): which headers
    and which TLS verification a hop gets is the caller's rule. Each redirect is closed and
    shown to ``redirected(status, url, target)``, which may refuse it (by raising) or change
    what the next hop sends; ``target`` is None when the redirect does not point to an http(s)
    URL (:func:`redirect_target`), and such a redirect is a RegistryError. Without ``follow`` a
    redirect is the answer. ``where(url)`` names the request in error messages.
    """
    for _ in range(MAX_REDIRECTS + 1):
        deadline.check()
        with deadline.watching():
            resp = send(url)
        location = resp.headers.get("Location")
        if not follow or resp.status_code not in REDIRECT_CODES or not location:
            return resp
        deadline.detach()
        resp.close()
        target = redirect_target(resp.url or url, location)
        redirected(resp.status_code, url, target)
        if target is None:
            raise RegistryError(f"{where(url)}: {resp.status_code} redirect to a URL that is not http(s) or is malformed")
        url = target
    raise RegistryError(f"{where(url)}: more than {MAX_REDIRECTS} redirects")


def origin(url: str) -> tuple[str, str]:
    """(scheme, host[:port]) of ``url``, lowercased: ``Authorization`` goes to its own origin only."""
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def redirect_target(url: str, location: str) -> str | None:
    """The absolute http(s) URL a redirect from ``url`` points to, or None if it is not one."""
    try:
        target = urljoin(url, location)
    except ValueError:
        return None
    return target if http_url(target) is not None else None


def http_url(url: str) -> SplitResult | None:
    """The parts of ``url`` if it is an http(s) URL with a host (and a valid port, if any), else None."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a malformed port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts


def read_body(resp: requests.Response, limit: int, what: str, *, truncate: bool = False) -> bytes:
    """At most ``limit`` bytes of the body; a longer one is a RegistryError naming ``what`` (or cut, if ``truncate``).

    A ``Content-Length`` over the limit is refused before anything is read.
    """
    length = resp.headers.get("Content-Length", "").strip()
    if not truncate and length.isdigit() and int(length) > limit:
        raise RegistryError(f"{what} is {length} bytes, more than the limit of {size_text(limit)}")
    data = bytearray()
    for block in resp.iter_content(min(limit + 1, 64 * KiB)):
        data += block
        if len(data) > limit:
            if truncate:
                return bytes(data[:limit])
            raise RegistryError(f"{what} is more than the limit of {size_text(limit)}")
    return bytes(data)


@dataclass(frozen=True)
class ErrorBody:
    """What the body of a refusal says, read by one rule for the registry API and token endpoints alike.

    Each words it its own way (a registry error is quoted as ``CODE: message``, a token endpoint's
    as its message or its OAuth2 description), so the parts are kept as the server gave them.
    """

    errors: tuple[tuple[str, str], ...]
    """(code, message) of each entry of the distribution spec's ``{"errors": [...]}``; either may be ""."""
    fields: dict[str, str]
    """The document's top-level strings: OAuth2's ``error``/``error_description``, Docker Hub's ``details``."""
    is_object: bool
    """The body is a JSON object (when it is not, it may be plain text worth quoting)."""


def error_body(body: bytes) -> ErrorBody:
    """The parts of an error answer's body (its JSON bounded in depth by ``json_value``); none for a body
    that is not a JSON object."""
    try:
        doc = json_value(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return ErrorBody((), {}, False)
    entries = doc.get("errors")
    errors = tuple((_said(e.get("code")), _said(e.get("message")))
                   for e in (entries if isinstance(entries, list) else ()) if isinstance(e, dict))
    return ErrorBody(errors, {k: v for k, v in doc.items() if isinstance(v, str)}, True)


def _said(value: object) -> str:
    return str(value) if value else ""


def status_phrase(status: int) -> str:
    """HTTP's reason phrase for ``status`` (``Not Found``), or "" for a status it does not define."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def size_text(n: int) -> str:
    """``4 MiB``, ``64 KiB`` or ``17 bytes``."""
    for unit, size in (("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"
