"""Image references (``alpine:3.20``, ``ghcr.io/org/img@sha256:...``) parsed as Docker normalises them.

Users write references the way ``docker pull`` accepts them, so the rules are Docker's
(``distribution/reference``'s ``ParseNormalizedNamed``) rather than a looser grammar of our own:
a name whose first component does not look like a host is on Docker Hub, and a one-component Hub
name is an official image under ``library/``. Two deliberate differences: the registry host is
lowercased (host names are case-insensitive, and one spelling keeps credential lookup and
comparisons simple), and a first component in upper case is *not* taken for a host, so
``Foo/bar`` is reported as a repository that must be lowercase rather than as an unreachable
registry named ``Foo``. Parsing raises ``ValueError`` with the reason; callers wrap it into the
error of their context (a recipe location, a CLI argument).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass

from builder.oci.digest import Digest

DOCKER_HUB = "docker.io"
#: Docker Hub's registry API host: ``docker.io`` itself serves no ``/v2/``.
DOCKER_HUB_API = "registry-1.docker.io"
#: The old name of Docker Hub, still written by some tools; normalised to :data:`DOCKER_HUB`.
LEGACY_DOCKER_HUB = "index.docker.io"
DEFAULT_TAG = "latest"
#: Docker and most clients cap ``registry/repository`` at 255 characters.
NAME_MAX = 255

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_SHOWN_MAX = 300


@dataclass(frozen=True)
class Reference:
    """A normalised image reference: where the image lives and which version of it is meant.

    ``tag`` is None only when a digest alone was given; a bare name gets ``latest``.
    """

    registry: str
    repository: str
    tag: str | None
    digest: Digest | None

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse and normalise ``[registry/]repository[:tag][@digest]``; ValueError says what is wrong."""
        shown = _shown(text)

        def bad(reason: str) -> ValueError:
            return ValueError(f"invalid reference {shown!r}: {reason}")

        if not text:
            raise ValueError("invalid reference '': empty")
        if any(c.isspace() for c in text):
            raise bad("contains whitespace")
        if _userinfo(text):
            raise bad("user names and passwords do not belong in a reference (use docker login or $REGISTRY_AUTH_FILE)")
        scheme = _SCHEME.match(text)
        if scheme:
            raise bad(f"a reference has no URL scheme (drop {scheme.group(0)!r})")

        name, at, digest_text = text.partition("@")
        digest = None
        if at:
            try:
                digest = Digest.parse(digest_text)
            except ValueError:
                raise bad(f"invalid digest {_shown(digest_text)!r} (expected sha256:<64 lowercase hex digits>)") from None

        tag = None
        colon = name.rfind(":")
        if colon > name.rfind("/"):
            name, tag = name[:colon], name[colon + 1 :]
            if not tag:
                raise bad("empty tag after ':'")
            if not _TAG.fullmatch(tag):
                raise bad(
                    f"invalid tag {_shown(tag)!r} (letters, digits, '_', '.' and '-', not starting with '.' or '-', "
                    "at most 128 characters)"
                )

        first, slash, rest = name.partition("/")
        if slash and ("." in first or ":" in first or first == "localhost"):
            try:
                registry = _registry(first)
            except ValueError as exc:
                raise bad(str(exc)) from None
            path = rest
        else:
            registry, path = DOCKER_HUB, name
        if registry == LEGACY_DOCKER_HUB:
            registry = DOCKER_HUB
        if not path:
            raise bad("missing repository name")
        if registry == DOCKER_HUB and "/" not in path:
            path = f"library/{path}"
        for component in path.split("/"):
            if not component:
                raise bad("empty path component ('//' or a trailing '/')")
            if _COMPONENT.fullmatch(component):
                continue
            if _COMPONENT.fullmatch(component.lower()):
                raise bad("repository must be lowercase")
            raise bad(
                f"invalid repository name component {_shown(component)!r} (lowercase letters and digits, "
                "separated by '.', '_', '__' or '-')"
            )
        if len(registry) + 1 + len(path) > NAME_MAX:
            raise bad(f"name is longer than {NAME_MAX} characters")
        if tag is None and digest is None:
            tag = DEFAULT_TAG
        return cls(registry, path, tag, digest)

    @property
    def name(self) -> str:
        """``registry/repository``, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        """The ``host[:port]`` that serves the registry API (Docker Hub's is not ``docker.io``)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def identifier(self) -> Digest | str:
        """What goes after ``/manifests/``: the digest when pinned (it wins over a tag), else the tag."""
        if self.digest is not None:
            return self.digest
        return self.tag or DEFAULT_TAG

    def with_digest(self, d: Digest) -> Reference:
        """The same reference pinned to ``d`` (the tag is kept for display)."""
        return dataclasses.replace(self, digest=d)

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def _registry(text: str) -> str:
    """Validate ``host[:port]`` (a DNS name, an IPv4 literal or a bracketed IPv6 literal); lowercased."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in registry {text!r}")
        try:
            ipaddress.IPv6Address(text[1:end])
        except ValueError:
            raise ValueError(f"invalid IPv6 address in registry {text!r}") from None
        host, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"invalid registry {text!r} (expected [IPv6]:PORT)")
        port = rest[1:] if rest else None
    else:
        host, colon, port_text = text.partition(":")
        port = port_text if colon else None
        if port is not None and ":" in port:
            raise ValueError(f"invalid registry {text!r} (an IPv6 address must be written in brackets)")
        if not all(_LABEL.fullmatch(label) for label in host.split(".")):
            raise ValueError(f"invalid registry host {host!r}")
    if port is not None and not (port.isascii() and port.isdigit() and 0 < int(port) <= 65535):
        raise ValueError(f"invalid port {port!r} in registry {text!r}")
    return text.lower()


def _userinfo(text: str) -> bool:
    """``user:password@host/...``: an '@' followed by a path cannot introduce a digest."""
    _, at, after = text.partition("@")
    return bool(at) and "/" in after


def _shown(text: str) -> str:
    """The input as quoted in errors: without user:password, and cut to a readable length."""
    if _userinfo(text):
        scheme = _SCHEME.match(text)
        text = (scheme.group(0) if scheme else "") + "***@" + text.partition("@")[2]
    return text if len(text) <= _SHOWN_MAX else text[:_SHOWN_MAX] + "..."
