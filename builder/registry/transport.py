"""HTTP for the distribution API: scheme choice, auth challenges, redirects, retries and errors.

Everything a registry conversation needs below the level of "get this manifest" lives here,
so that the client reads like the distribution spec:

- ``https://HOST/v2/`` always, except for insecure hosts (``--insecure-registry`` and the
  loopback names): those get unverified TLS, and plain HTTP when TLS fails on the first
  contact (a local ``registry:2`` speaks HTTP). The choice is made once per Transport.
- Authorization is sent when the authenticator has one ready; a 401 is answered by the
  authenticator's ``challenge`` and the request is sent again (the authenticator gives up,
  by raising, when a fresh value is refused too). Once a registry has challenged, a request
  for which the authenticator has nothing ready (a new scope, an expiring token) asks it for
  a value first, so a streamed upload does not go out only to be refused.
- Redirects are followed by hand: blob downloads go to CDNs, ``Authorization`` must not
  follow them to another origin (distribution-spec), and each hop gets TLS verification for
  its own host (an insecure registry does not make its CDN insecure), which requests' own
  redirect handling, with one ``verify`` for the whole chain, cannot do.
- Redirects go to http(s) URLs only; anything else (``file:``, ``gopher:``, a malformed URL) is
  a RegistryError, never something requests is asked to open.
- Every answer is read within bounds (``wire.py``): a small request (manifests, HEADs, upload
  steps, and every error body) has one wall-clock deadline, ``RegistryOptions.deadline``, for
  all its hops, and its body is read up to a cap (``limit``; 64 KiB unless the caller needs
  more) before ``request`` returns. Blob downloads (:meth:`Transport.stream`) cannot have a
  fixed deadline, as a blob may be gigabytes: their hops get the deadline, then the body must
  keep up a minimum throughput, every MiB within ``timeout`` seconds (17 KiB/s by default; a
  per-read timeout alone lets a server that sends a byte every few seconds hold the download
  forever). A blob upload's deadline starts when its body has been sent.
- Transient failures are retried (``retry.py`` says which, and how long to wait), but only for
  requests that can be replayed as they are; one whose body is a stream raises
  ``RetryableError`` and the caller restarts the whole blob upload.
- Error messages name the registry, method, path and the registry's error code and message,
  never a query string (pre-signed CDN URLs carry signatures there) nor a header.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import urljoin, urlsplit

import requests
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import InsecureRequestWarning

from builder.errors import RegistryError
from builder.registry.auth import Authenticator
from builder.registry.credentials import Credentials
from builder.registry.options import RegistryOptions
from builder.registry.retry import TRANSIENT_ERRORS, RetryableError, pause, retry_after, retrying, transient
from builder.registry.wire import (
    Deadline,
    DeadlineError,
    KiB,
    MiB,
    error_body,
    follow_redirects,
    new_session,
    origin,
    read_body,
    status_phrase,
)

#: Bytes of an answer read when the caller does not need its body (upload steps, a stored manifest).
MAX_ANSWER = 64 * KiB
#: Bytes of an error body read for its message; the rest is not read.
MAX_ERROR_BODY = 64 * KiB
MAX_CHALLENGES = 3  # per request; the authenticator itself gives up after a fresh value is refused
_UNVERIFIED = threading.Lock()  # see Transport._send


@dataclass(frozen=True)
class Reply:
    """A registry's answer to a small request, read in full (within its cap and deadline)."""

    status: int
    headers: CaseInsensitiveDict[str]
    url: str
    body: bytes


class Body:
    """A sized, read-once request body: ``length`` bytes of ``file`` from ``offset``.

    ``__len__`` makes requests send ``Content-Length`` instead of chunked transfer encoding,
    which several registries refuse for blob uploads; reads are reported to ``on_progress``.
    """

    def __init__(self, file: BinaryIO, offset: int, length: int, on_progress: Callable[[int], None] | None = None):
        file.seek(offset)
        self._file = file
        self._length = length
        self._left = length
        self._on_progress = on_progress

    def __len__(self) -> int:
        return self._length

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        data = self._file.read(self._left if n is None or n < 0 else min(n, self._left))
        if not data:
            raise RegistryError(f"blob source ended {self._left} bytes early (changed while being uploaded?)")
        self._left -= len(data)
        if self._on_progress is not None:
            self._on_progress(len(data))
        return data

    def __iter__(self) -> Iterator[bytes]:
        while data := self.read(MiB):
            yield data


class Transport:
    """One registry host's HTTP: a session, the scheme, and the Authenticator that shares the session."""

    def __init__(self, ref_registry: str, api_host: str, credentials: Credentials | None, options: RegistryOptions) -> None:
        self.registry = ref_registry
        self.api_host = api_host
        self.options = options
        self.session = new_session()
        self.insecure = options.is_insecure_registry(ref_registry, api_host)
        self.authenticator = Authenticator(ref_registry, credentials, self.session, insecure=self.insecure,
                                           deadline=options.deadline)
        self._scheme: str | None = None if self.insecure else "https"
        self._scheme_lock = threading.Lock()
        self._challenge: str | None = None  # the registry's last WWW-Authenticate

    def close(self) -> None:
        self.session.close()

    # ---- URLs ------------------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        """https, or for an insecure host whatever its first contact showed it speaks."""
        if self._scheme is None:
            with self._scheme_lock:
                if self._scheme is None:
                    self._scheme = self._probe()
        return self._scheme

    def _probe(self) -> str:
        """``GET https://HOST/v2/`` unverified: any HTTP answer means TLS works; a TLS or connection error, HTTP."""
        with Deadline(self.options.deadline) as deadline:
            try:
                with deadline.watching():
                    resp = self._send("GET", f"https://{self.api_host}/v2/", {}, None, verify=False)
            except (requests.ConnectionError, requests.Timeout):
                return "http"
            deadline.detach()
        resp.close()
        return "https"

    def url(self, url_or_path: str) -> str:
        """An absolute URL: as given, or a path relative to ``/v2/`` (or to the host, if it starts with ``/``)."""
        if url_or_path.startswith(("http://", "https://")):
            return url_or_path
        return urljoin(f"{self.scheme}://{self.api_host}/v2/", url_or_path)

    def _verify(self, url: str) -> bool:
        netloc = urlsplit(url).netloc
        if netloc.lower() == self.api_host.lower():
            return not self.insecure
        return not self.options.is_insecure(netloc)

    # ---- requests --------------------------------------------------------------------------

    def request(
        self,
        method: str,
        url_or_path: str,
        *,
        scopes: Sequence[str],
        headers: dict[str, str] | None = None,
        data: bytes | Body | None = None,
        ok: Sequence[int] = (200,),
        repeatable: bool | None = None,
        limit: int = MAX_ANSWER,
        what: str = "the answer",
    ) -> Reply:
        """Send one API request; if its status is in ``ok``, its answer with a body of at most ``limit`` bytes.

        ``repeatable`` (default: GET and HEAD) says the request may be sent again after a
        transient failure; it must also have a replayable body (bytes or none). A request that
        may not be repeated raises :class:`RetryableError` where a retry would have helped.
        A longer body is a RegistryError naming ``what``.
        """
        repeat = (method in ("GET", "HEAD") if repeatable is None else repeatable) and not isinstance(data, Body)

        def read() -> Reply:
            with self.stream(method, url_or_path, scopes=scopes, headers=headers, data=data, ok=ok,
                             repeatable=repeatable) as (resp, _):
                where = self._where(method, resp.url)
                body = b"" if method == "HEAD" else read_body(resp, limit, f"{where}: {what}")
            return Reply(resp.status_code, resp.headers, resp.url, body)

        return retrying(read, self.options, lambda exc: self.describe_failure(method, self.url(url_or_path), exc),
                        repeat=repeat)

    @contextmanager
    def stream(
        self,
        method: str,
        url_or_path: str,
        *,
        scopes: Sequence[str],
        headers: dict[str, str] | None = None,
        data: bytes | Body | None = None,
        ok: Sequence[int] = (200,),
        repeatable: bool | None = None,
    ) -> Iterator[tuple[requests.Response, Deadline]]:
        """As :meth:`request`, but the response is yielded unread, with the deadline its hops had.

        The caller reads the body inside the block (``deadline.restart`` for a throughput rule);
        a failure while it does, once the deadline has passed, is reported as the deadline.
        """
        url = self.url(url_or_path)
        resp, deadline = self._answer(method, url, headers or {}, data, scopes, ok, repeatable)
        try:
            yield resp, deadline
            deadline.check()  # a body cut short by the watcher may look complete
        except Exception as exc:
            if deadline.expired:
                raise RegistryError(f"{self._where(method, url)}: {deadline.message}") from None
            if isinstance(exc, requests.RequestException) and not isinstance(exc, TRANSIENT_ERRORS):
                raise RegistryError(self.describe_failure(method, url, exc)) from None
            raise
        finally:
            deadline.close()
            resp.close()

    def _answer(
        self, method: str, url: str, headers: dict[str, str], data: bytes | Body | None, scopes: Sequence[str],
        ok: Sequence[int], repeatable: bool | None,
    ) -> tuple[requests.Response, Deadline]:
        """The response (status in ``ok``, body unread) and its deadline, after retries and challenges."""
        replayable = not isinstance(data, Body)
        repeat = (method in ("GET", "HEAD") if repeatable is None else repeatable) and replayable
        attempt = 0
        challenges = 0
        auth = self._authorization(scopes)
        while True:
            deadline = Deadline(self.options.deadline, from_answer=not replayable)
            try:
                resp = self._follow(method, url, auth, headers, data, deadline)
            except (requests.RequestException, DeadlineError) as exc:
                deadline.close()
                if deadline.expired:
                    raise RegistryError(f"{self._where(method, url)}: {deadline.message}") from None
                if not isinstance(exc, TRANSIENT_ERRORS):  # InvalidURL, InvalidHeader, ...: one line, not a traceback
                    raise RegistryError(self.describe_failure(method, url, exc)) from None
                if isinstance(exc, requests.exceptions.SSLError) or not (repeat and attempt < self.options.retries):
                    cls = RegistryError if repeat or isinstance(exc, requests.exceptions.SSLError) else RetryableError
                    raise cls(self.describe_failure(method, url, exc)) from exc
                pause(self.options, attempt)
                attempt += 1
                continue
            if resp.status_code in ok:
                return resp, deadline
            try:
                if resp.status_code == 401 and challenges < MAX_CHALLENGES and self._is_registry(resp.url):
                    challenge = resp.headers.get("WWW-Authenticate")
                    if challenge:
                        self._close(resp, deadline)
                        challenges += 1
                        self._challenge = challenge
                        auth = self.authenticator.challenge(challenge, scopes, sent=auth or "")
                        if not replayable:
                            raise RetryableError(f"{self._where(method, url)}: 401 (authorization expired or refused)")
                        continue
                if transient(resp.status_code):
                    if repeat and attempt < self.options.retries:
                        delay = retry_after(resp)
                        self._close(resp, deadline)
                        pause(self.options, attempt, delay)
                        attempt += 1
                        continue
                    if not repeat:
                        raise RetryableError(self.describe_response(method, url, resp))
                raise RegistryError(self.describe_response(method, url, resp))
            finally:
                self._close(resp, deadline)

    @staticmethod
    def _close(resp: requests.Response, deadline: Deadline) -> None:
        deadline.close()
        resp.close()

    def _follow(
        self, method: str, url: str, auth: str | None, headers: dict[str, str], data: bytes | Body | None,
        deadline: Deadline,
    ) -> requests.Response:
        """Send the request and follow redirects by hand, with Authorization only for the registry's origin."""

        def send(at: str) -> requests.Response:
            hop = dict(headers)
            if auth is not None and self._is_registry(at):
                hop["Authorization"] = auth
            return self._send(method, at, hop, data, verify=self._verify(at))

        def redirected(status: int, at: str, target: str | None) -> None:
            nonlocal method, data
            if isinstance(data, Body):  # a consumed stream cannot be sent to the new place
                raise RetryableError(f"{self._where(method, at)}: redirected while uploading a stream")
            if status == 303 and method != "HEAD":
                method, data = "GET", None

        return follow_redirects(url, send, deadline, lambda at: self._where(method, at), redirected)

    def _send(
        self, method: str, url: str, headers: dict[str, str], data: bytes | Body | None, *, verify: bool
    ) -> requests.Response:
        """One HTTP exchange, its body left unread.

        urllib3 warns on every unverified TLS request; the user asked for exactly that with
        ``--insecure-registry``, so the warning is silenced for those requests only.
        ``catch_warnings`` swaps process-wide state, hence the lock around it; plain-HTTP
        requests (the usual local registry) never need it.
        """
        kwargs: dict[str, Any] = {"headers": headers, "data": data, "stream": True, "verify": verify,
                                  "timeout": self.options.timeout, "allow_redirects": False}
        if verify or url.startswith("http://"):
            return self.session.request(method, url, **kwargs)
        with _UNVERIFIED, warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecureRequestWarning)
            return self.session.request(method, url, **kwargs)

    def _is_registry(self, url: str) -> bool:
        return origin(url) == (self.scheme, self.api_host.lower())

    # ---- auth ------------------------------------------------------------------------------

    def _authorization(self, scopes: Sequence[str]) -> str | None:
        """What to send unasked: the authenticator's ready value, else (once challenged) a fresh one."""
        value = self.authenticator.header(scopes)
        if value is None and self._challenge is not None:
            value = self.authenticator.challenge(self._challenge, scopes, sent="")
        return value

    # ---- messages --------------------------------------------------------------------------

    def _where(self, method: str, url: str) -> str:
        return f"{self.registry}: {method} {urlsplit(url).path or '/'}"

    def describe_response(self, method: str, url: str, resp: requests.Response) -> str:
        """``REGISTRY: METHOD PATH: STATUS CODE: message`` from the distribution-spec error body."""
        detail = error_detail(resp) or status_phrase(resp.status_code) or resp.reason or "error"
        return f"{self._where(method, url)}: {resp.status_code} {detail}"

    def describe_failure(self, method: str, url: str, exc: Exception) -> str:
        """A one-line reason for a request that got no response, without the URL's query."""
        if isinstance(exc, requests.exceptions.SSLError):
            reason = f"TLS failed ({_os_reason(exc) or 'certificate not trusted?'}); for a registry without valid "
            reason += f"TLS use --insecure-registry {self.api_host}"
        elif isinstance(exc, requests.Timeout):
            reason = f"timed out after {self.options.timeout:g}s"
        elif isinstance(exc, requests.exceptions.ChunkedEncodingError):
            reason = "connection broken while reading the response"
        else:
            reason = f"cannot connect to {urlsplit(url).netloc}: {_os_reason(exc) or 'connection failed'}"
        return f"{self._where(method, url)}: {reason}"


def error_detail(resp: requests.Response, limit: int = MAX_ERROR_BODY) -> str:
    """``CODE: message; CODE: message`` from a ``{"errors": [...]}`` body (at most ``limit`` bytes read)."""
    if resp.request is not None and resp.request.method == "HEAD":
        return ""
    try:
        body = read_body(resp, limit, "error body", truncate=True)
    except (RegistryError, requests.RequestException):
        return ""  # a body we cannot read adds nothing to the message
    entries = (": ".join(part for part in entry if part) for entry in error_body(body).errors)
    return "; ".join(" ".join(text.split()) for text in entries if text)[:500]


def _os_reason(exc: BaseException) -> str | None:
    """The innermost OS-level reason (``Connection refused``) of a requests/urllib3 exception chain."""
    seen: set[int] = set()
    stack: list[object] = [exc]
    while stack:
        item = stack.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, OSError) and item.strerror:
            return item.strerror
        stack += [item.__cause__, item.__context__, getattr(item, "reason", None), *item.args]
    return None
