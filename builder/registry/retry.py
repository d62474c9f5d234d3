"""Which failures are worth another attempt, and how long to wait before it.

- Transient failures (connection errors, timeouts, a body that breaks off, 5xx except 501 and 505,
  408 and 429) are retried with exponential backoff (``RegistryOptions.backoff``, doubled each
  time, ``retries`` times), or after the server's ``Retry-After`` if that is longer (up to
  :data:`MAX_RETRY_AFTER` seconds).
- Only requests that can be replayed as they are get retried. A request whose body is a stream
  cannot: it raises :class:`RetryableError`, and the caller restarts the whole blob upload,
  which is how the spec wants a broken upload session handled anyway.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import requests

from builder.errors import RegistryError
from builder.registry.options import RegistryOptions

MAX_RETRY_AFTER = 30.0  # seconds: a Retry-After longer than this is shortened, not obeyed
TRANSIENT_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
_NOT_TRANSIENT_5XX = frozenset({501, 505})
_T = TypeVar("_T")


class RetryableError(RegistryError):
    """A request failed in a way that redoing the whole operation may fix.

    Raised instead of retrying when the request itself cannot be replayed (its body was a
    stream that has been consumed): a transient failure, or a 401 after which the
    authenticator has a fresh token (tokens expire in the middle of long uploads).
    """


def transient(status: int) -> bool:
    """Whether an answer with ``status`` may be different if the request is sent again."""
    return status in (408, 429) or (status >= 500 and status not in _NOT_TRANSIENT_5XX)


def retry_after(resp: requests.Response) -> float | None:
    """The seconds a ``Retry-After`` header asks for, or None (an HTTP date is not obeyed)."""
    value = resp.headers.get("Retry-After", "")
    return float(value) if value.strip().isdigit() else None


def pause(options: RegistryOptions, attempt: int, at_least: float | None = None) -> None:
    """Wait before retry number ``attempt + 1``: exponential backoff, or the server's Retry-After."""
    delay = options.backoff * (2**attempt)
    if at_least is not None:
        delay = max(delay, min(at_least, MAX_RETRY_AFTER))
    if delay > 0:
        time.sleep(delay)


def retrying(read: Callable[[], _T], options: RegistryOptions, failed: Callable[[Exception], str], *,
             repeat: bool = True) -> _T:
    """``read()``, run again (with backoff) while a response body breaks off or stalls as it is read.

    The transport retries what fails before the answer arrives; this covers the body, read
    after. When attempts run out the failure is a RegistryError saying ``failed(exc)``; a
    request that may not be ``repeat``-ed raises :class:`RetryableError` at once instead.
    """
    for attempt in range(options.retries + 1):
        try:
            return read()
        except TRANSIENT_ERRORS as exc:
            if not repeat or attempt >= options.retries:
                cls = RegistryError if repeat else RetryableError
                raise cls(failed(exc)) from None
            pause(options, attempt)
    raise AssertionError("unreachable")
