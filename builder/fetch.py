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

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from builder.blobstore import BlobStore, store_root
from builder.errors import InputError
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
    fd, tmp = tempfile.mkstemp(prefix=".fetch-", dir=target.parent)
    try:
        hasher, size = hashlib.new(digest.algorithm), 0
        with new_session() as session, os.fdopen(fd, "wb") as out:
            try:
                with session.get(url, stream=True, timeout=(timeout, timeout), verify=not insecure) as resp:
                    if resp.status_code != 200:
                        raise InputError(f"fetch {shown}: the server answered {resp.status_code} {resp.reason}")
                    for block in resp.iter_content(_CHUNK):
                        size += len(block)
                        if size > MAX_FETCH:
                            raise InputError(f"fetch {shown}: larger than {MAX_FETCH} bytes")
                        hasher.update(block)
                        out.write(block)
            except requests.RequestException as exc:
                raise InputError(f"fetch {shown}: {type(exc).__name__}: {_reason(exc)}") from None
        got = Digest(digest.algorithm, hasher.hexdigest())
        if got != digest:
            raise InputError(f"fetch {shown}: the file's sha256 is {got.hex}, the recipe says {digest.hex} "
                             f"({size} bytes downloaded; update sha256: if the file was meant to change)")
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return target


def _reason(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 300 else text[:300] + "..."
