"""``fetch:`` steps' downloads: an http(s) file, accepted only if it has the recipe's sha256.

The file is kept in the blob store under its digest (``CACHE/blobs/sha256/<hex>``,
builder/blobstore.py), so it is downloaded once and every later build reads it from disk,
re-hashed; and since the step's cache key is its text (the URL *and* the digest), a warm layer
cache never fetches it at all. The download uses the registry stack's session: proxies and CA
bundles from the environment, never ``~/.netrc`` credentials, a minimum throughput (each MiB
within the timeout), http(s) redirects only, and ``--insecure-registry``/``--tls-verify=false``
hosts without certificate checks. At most :data:`MAX_FETCH` bytes are read: the digest decides,
and a server cannot fill the disk.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from builder.blobstore import BlobStore, store_root
from builder.errors import InputError
from builder.fs.atomic import ContentMismatchError, atomic_file, copy_verified
from builder.oci.digest import Digest

MAX_FETCH = 16 << 30
_CHUNK = 1 << 20


def fetch_file(url: str, digest: Digest, cache_dir: Path, workdir: Path, *, insecure: bool = False,
               timeout: float = 60) -> Path:
    """The path of a verified copy of ``url``'s content, which must hash to ``digest``."""
    import requests

    from builder.registry.wire import new_session

    root = store_root(cache_dir) or workdir
    store = BlobStore(root)
    known = store.get(digest, None)
    if known is not None:
        return known
    target = store.path(digest)
    target.parent.mkdir(parents=True, exist_ok=True)
    shown = urlsplit(url)._replace(query="", fragment="").geturl()
    with atomic_file(target, 0o600, prefix=".fetch-") as out, new_session() as session:
        try:
            with session.get(url, stream=True, timeout=(timeout, timeout), verify=not insecure) as resp:
                if resp.status_code != 200:
                    raise InputError(f"fetch {shown}: the server answered {resp.status_code} {resp.reason}")
                copy_verified(resp.iter_content(_CHUNK), out, digest, limit=MAX_FETCH)
        except requests.RequestException as exc:
            raise InputError(f"fetch {shown}: {type(exc).__name__}: {_reason(exc)}") from None
        except ContentMismatchError as exc:
            if exc.kind == "larger":
                raise InputError(f"fetch {shown}: larger than {MAX_FETCH} bytes") from None
            raise InputError(f"fetch {shown}: the file's sha256 is {exc.actual.hex}, the recipe says {digest.hex} "
                             f"({exc.count} bytes downloaded; update sha256: if the file was meant to change)") from None
    return target


def _reason(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 300 else text[:300] + "..."
