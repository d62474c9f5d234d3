"""What a login left for a registry, and how its secrets are kept out of everything we print.

Secrets (passwords, identity tokens, bearer tokens, Basic strings) never reach an exception
message, a repr or a log: :class:`Credentials` redacts its repr, messages name users, hosts, scopes
and statuses only, and text quoted from a server or a credential helper is cut to
:data:`MAX_QUOTED` characters and scrubbed (:func:`scrub`) of every secret we hold.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass, field

#: Characters of a server's or a credential helper's own text quoted in an error message.
MAX_QUOTED = 200


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
        return "Basic " + encode_auth(self.username, secret)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every string that must not appear in output (to scrub text quoted from servers)."""
        found = [s for s in (self.password, self.identity_token) if s]
        basic = self.basic()
        if basic:
            found.append(basic.split(" ", 1)[1])
        return tuple(found)


def encode_auth(username: str, password: str) -> str:
    """base64 of ``user:password``: HTTP Basic's encoding, and the ``auth`` field of docker's config.json."""
    return base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def decode_auth(value: str) -> tuple[str, str]:
    """(user, password) of an ``auth`` field, the inverse of :func:`encode_auth`; ValueError if it is not one.

    Padding may be missing and the password may end in NULs, as some tools write them.
    """
    raw = value.strip()
    try:
        decoded = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise ValueError("not base64 of user:password") from None
    username, sep, password = decoded.partition(":")
    if not sep:
        raise ValueError("not base64 of user:password")
    return username, password.rstrip("\x00")


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret in it replaced by ``***`` (the longest first: one may contain another)."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text
