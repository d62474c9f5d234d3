"""How to talk to registries: the settings every registry command takes, and which hosts are insecure.

:class:`RegistryOptions` is what ``--insecure-registry``, ``--tls-verify``, ``--authfile``,
``--creds`` and the retry and timeout settings become; push, pull, login and the build's
``from:`` pulls all take one. Which hosts count as insecure is decided here:
``is_insecure`` (the loopback names always are, as a local ``registry:2`` speaks plain HTTP).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from builder.registry.credentials import Credentials
from builder.registry.wire import MiB

LOOPBACK = frozenset({"localhost", "127.0.0.1", "[::1]"})


@dataclass(frozen=True)
class RegistryOptions:
    """How to talk to registries: which hosts are insecure, and how hard to try."""

    insecure: frozenset[str] = frozenset()
    """``--insecure-registry`` values: ``HOST`` (any port) or ``HOST:PORT``."""
    retries: int = 4
    """Extra attempts for a transient failure (and restarts of a failed blob upload)."""
    backoff: float = 0.5
    """Seconds before the first retry; doubled for each one after."""
    timeout: float = 60
    """Seconds to connect, and between two reads of a response; a blob body must bring a MiB in this time."""
    deadline: float = 120
    """Seconds for a whole small request (manifest, token, upload step, HEAD), redirects included."""
    chunk_size: int = 64 * MiB
    """Blobs up to this size go in one PUT; larger ones in PATCH chunks of this size."""
    parallel: int = 4
    """Blobs transferred at once by push and pull."""
    tls_verify: bool = True
    """False (``--tls-verify=false``, as skopeo): every host is treated as listed in ``insecure``."""
    authfile: Path | None = None
    """``--authfile``: read before the default credential files (as containers/image's ``--authfile``)."""
    credentials: Credentials | None = None
    """``--creds``: used for every registry of the command instead of any file."""

    def is_insecure(self, host: str) -> bool:
        """True for ``host`` (``name[:port]``) if it is loopback or listed, with or without its port."""
        name = hostname(host)
        return not self.tls_verify or name in LOOPBACK or host in self.insecure or name in self.insecure

    def is_insecure_registry(self, registry: str, api_host: str) -> bool:
        """Whether a registry is insecure by its name in references or by the host its API is at (Docker Hub's differ)."""
        return self.is_insecure(api_host) or self.is_insecure(registry)


def hostname(host: str) -> str:
    """``host`` without its port; IPv6 literals keep their brackets (``[::1]:5000`` -> ``[::1]``)."""
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.partition(":")[0]
