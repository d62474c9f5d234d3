"""One repository on one registry: the distribution-spec calls that push and pull are made of.

Each method is one operation of the spec (``spec.md``: pulling manifests and blobs, checking
existence, mounting, monolithic and chunked uploads, pushing manifests) with its quirks
handled where they arise (the distribution spec's rules, and the retry and redirect bugs other clients shipped). Nothing read is trusted: a
manifest is checked against the digest it was asked by (or the registry's
``Docker-Content-Digest`` when asked by tag), and a blob is hashed while it streams to a
temporary file that only becomes the blob once digest and size match.
"""

from __future__ import annotations

import contextlib
import enum
import io
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Literal, Self, TypeVar
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import requests

from builder.errors import InputError, IntegrityError, RegistryError
from builder.fs.atomic import ContentMismatchError, atomic_file, copy_verified
from builder.oci.canonical import json_object
from builder.oci.digest import Digest
from builder.oci.mediatypes import INDEX_TYPES, MANIFEST_TYPES, MediaType
from builder.oci.reference import Reference
from builder.registry.challenges import scope_for
from builder.registry.credential_lookup import find_credentials
from builder.registry.credentials import Credentials
from builder.registry.options import RegistryOptions
from builder.registry.retry import RetryableError, pause, retrying
from builder.registry.transport import Body, Reply, Transport
from builder.registry.wire import MiB

ACCEPTED = (MediaType.OCI_MANIFEST, MediaType.OCI_INDEX, MediaType.DOCKER_MANIFEST, MediaType.DOCKER_LIST)
MANIFEST_ACCEPT = ", ".join(ACCEPTED)  # without Accept, some registries answer with schema 1
MAX_MANIFEST = 4 * MiB  # the distribution spec's cap (registries refuse larger ones with 413): more is not read
SCHEMA1_TYPES = frozenset({
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
})
OCTET_STREAM = "application/octet-stream"
Progress = Callable[[int], None]
EventSink = Callable[[str, Digest, int], None]
"""What push and pull report per blob and manifest: (event, digest, size)."""
_T = TypeVar("_T")


class _Find(enum.Enum):
    CREDENTIALS = enum.auto()


FIND_CREDENTIALS = _Find.CREDENTIALS
"""Default of ``RegistryClient(credentials=...)``: look them up with ``find_credentials``."""


class RegistryClient:
    """The repository ``ref`` names on its registry; ``push=True`` asks for push rights up front.

    Pull and push scopes are not mixed within one client: a token server answers each scope
    set with its own token, and read-only credentials must still be able to pull.
    """

    def __init__(
        self,
        ref: Reference,
        options: RegistryOptions | None = None,
        credentials: Credentials | Literal[_Find.CREDENTIALS] | None = FIND_CREDENTIALS,
        *,
        push: bool = False,
    ) -> None:
        self.ref = ref
        self.options = options if options is not None else RegistryOptions()
        if credentials is FIND_CREDENTIALS:
            creds = self.options.credentials or find_credentials(ref.registry, authfile=self.options.authfile)
        else:
            creds = credentials
        self.transport = Transport(ref.registry, ref.api_host, creds, self.options)
        self.repo = ref.repository
        self.scopes = (scope_for(ref.repository, "pull,push" if push else "pull"),)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _name(self, identifier: Digest | str) -> str:
        return f"{self.ref.registry}/{self.repo}{'@' if isinstance(identifier, Digest) else ':'}{identifier}"

    # ---- manifests -------------------------------------------------------------------------

    def get_manifest(self, identifier: Digest | str) -> tuple[bytes, str, Digest]:
        """(bytes, media type, digest) of a manifest or index, by tag or digest, verified.

        Asked by digest, the bytes must hash to it; asked by tag, they must hash to the
        registry's ``Docker-Content-Digest`` if it sends one. Schema 1 manifests are refused:
        they carry no config and no content digests for their layers.
        """
        name = self._name(identifier)
        reply = self.transport.request("GET", f"{self.repo}/manifests/{identifier}", scopes=self.scopes,
                                       headers={"Accept": MANIFEST_ACCEPT}, limit=MAX_MANIFEST, what="manifest")
        raw, headers = reply.body, reply.headers
        if isinstance(identifier, Digest):
            _check_bytes(raw, identifier, f"{name}: manifest")
            digest = identifier
        else:
            digest = Digest.of(raw)
            header = _header_digest(headers)
            if header is not None:
                _check_bytes(raw, header, f"{name}: manifest (Docker-Content-Digest)")
        return raw, manifest_media_type(raw, headers.get("Content-Type", ""), name), digest

    def manifest_digest(self, identifier: Digest | str) -> Digest | None:
        """The digest the registry has under ``identifier`` (HEAD), or None if it has nothing there."""
        reply = self.transport.request("HEAD", f"{self.repo}/manifests/{identifier}", scopes=self.scopes,
                                       headers={"Accept": MANIFEST_ACCEPT}, ok=(200, 404))
        if reply.status == 404:
            return None
        return _header_digest(reply.headers) or (identifier if isinstance(identifier, Digest) else None)

    def put_manifest(self, identifier: Digest | str, raw: bytes, media_type: str) -> Digest:
        """Store ``raw`` exactly as given under a tag or its digest; the registry's digest must be ours."""
        self._put_manifest(identifier, raw, media_type)
        return Digest.of(raw)

    def put_referrer(self, identifier: Digest | str, raw: bytes, media_type: str) -> Digest | None:
        """:meth:`put_manifest` for a manifest with a ``subject``: the registry's ``OCI-Subject``, the
        subject it indexed for the referrers API (None: it has no such API, the client keeps the
        fallback tag)."""
        reply = self._put_manifest(identifier, raw, media_type)
        try:
            return Digest.parse(reply.headers.get("OCI-Subject", "").strip())
        except ValueError:
            return None

    def _put_manifest(self, identifier: Digest | str, raw: bytes, media_type: str) -> Reply:
        reply = self.transport.request("PUT", f"{self.repo}/manifests/{identifier}", scopes=self.scopes,
                                       headers={"Content-Type": media_type}, data=raw, ok=(200, 201, 202),
                                       repeatable=True)
        header = _header_digest(reply.headers)
        if header is not None:
            _check_bytes(raw, header, f"{self._name(identifier)}: manifest as stored by the registry")
        return reply

    # ---- blobs -----------------------------------------------------------------------------

    def blob_exists(self, digest: Digest) -> bool:
        return self.transport.request("HEAD", f"{self.repo}/blobs/{digest}", scopes=self.scopes, ok=(200, 404)).status == 200

    def fetch_blob(self, digest: Digest, size: int | None, dest: Path, on_progress: Progress | None = None) -> None:
        """Download a blob to ``dest``: streamed to a temp file beside it, hashed, renamed only if it is right.

        A blob has no overall deadline (it may be gigabytes), but a minimum throughput: each MiB
        must arrive within ``options.timeout`` seconds of the one before (see transport.py).
        """
        dest.parent.mkdir(parents=True, exist_ok=True)
        name = self._name(digest)

        def fetch() -> None:
            # renamed into place only after the stream ends well: a body the deadline cut short may look complete
            with atomic_file(dest, prefix=f".{dest.name}.tmp-") as out, \
                    self.transport.stream("GET", f"{self.repo}/blobs/{digest}", scopes=self.scopes,
                                          headers={"Accept-Encoding": "identity"}) as (resp, deadline):
                rule = f"the blob arrives slower than 1 MiB per {self.options.timeout:g} s"
                deadline.restart(self.options.timeout, rule)

                def body() -> Iterator[bytes]:
                    for block in resp.iter_content(MiB):
                        deadline.restart(self.options.timeout, rule)
                        yield block
                        if on_progress is not None:
                            on_progress(len(block))

                try:
                    copy_verified(body(), out, digest, size)
                except ContentMismatchError as exc:
                    raise IntegrityError(f"{name}: {_blob_mismatch(exc)}") from None

        self._retrying("GET", f"{self.repo}/blobs/{digest}", fetch)

    def mount_blob(self, digest: Digest, from_repo: str) -> bool:
        """Ask the registry to link ``digest`` from another of its repositories; False means "upload it".

        A 202 is the registry starting an ordinary upload instead (it may not allow the
        mount); that session is cancelled and the caller uploads. Any error is a False too:
        mounting is an optimisation (ggcr retries plainly on every mount failure).
        """
        scopes = (*self.scopes, scope_for(from_repo, "pull"))
        path = f"{self.repo}/blobs/uploads/?mount={quote(str(digest), safe='')}&from={quote(from_repo, safe='/')}"
        try:
            reply = self.transport.request("POST", path, scopes=scopes, ok=(201, 202))
        except RegistryError:
            return False
        if reply.status == 201:
            return True
        location = reply.headers.get("Location")
        if location:
            with contextlib.suppress(RegistryError):  # an abandoned session expires on its own
                self.transport.request("DELETE", urljoin(reply.url, location), scopes=self.scopes,
                                       ok=(200, 202, 204, 404))
        return False

    def upload_blob(self, source: Path | bytes, digest: Digest, size: int, on_progress: Progress | None = None) -> None:
        """Upload a blob from a file or memory; a broken attempt restarts from a fresh upload session.

        A restart first asks whether the blob arrived after all (the commit may have succeeded
        with its answer lost).
        """
        for attempt in range(self.options.retries + 1):
            try:
                if attempt and self.blob_exists(digest):
                    return
                self._upload_once(source, digest, size, on_progress)
                return
            except RetryableError:
                if attempt >= self.options.retries:
                    raise
                pause(self.options, attempt)

    def _upload_once(self, source: Path | bytes, digest: Digest, size: int, on_progress: Progress | None) -> None:
        name = self._name(digest)
        with _opened(source) as file:
            actual = os.fstat(file.fileno()).st_size if isinstance(source, Path) else len(source)
            if actual != size:
                raise IntegrityError(f"{source if isinstance(source, Path) else name}: {actual} bytes, "
                                     f"the descriptor of {digest} says {size}")
            reply = self.transport.request("POST", f"{self.repo}/blobs/uploads/", scopes=self.scopes, ok=(202,))
            location = _location(reply, None, name)
            min_chunk = _int_header(reply, "OCI-Chunk-Min-Length")
            headers = {"Content-Type": OCTET_STREAM}
            if size <= self.options.chunk_size:
                data: bytes | Body = Body(file, 0, size, on_progress) if size else b""
                reply = self.transport.request("PUT", with_query(location, "digest", str(digest)),
                                               scopes=self.scopes, headers={**headers, "Content-Length": str(size)},
                                               data=data, ok=(201,))
            else:
                chunk = max(self.options.chunk_size, min_chunk)
                offset = 0
                while offset < size:
                    end = min(offset + chunk, size) - 1
                    reply = self.transport.request(
                        "PATCH", location, scopes=self.scopes, data=Body(file, offset, end - offset + 1, on_progress),
                        headers={**headers, "Content-Range": f"{offset}-{end}", "Content-Length": str(end - offset + 1)},
                        ok=(202, 204, 201, 416),
                    )
                    if reply.status == 416:  # the registry has a different idea of the offset
                        raise RetryableError(f"{name}: the registry refused chunk {offset}-{end} (416)")
                    location = _location(reply, location, name)
                    offset = _acknowledged(reply, offset, end, name)
                reply = self.transport.request("PUT", with_query(location, "digest", str(digest)),
                                               scopes=self.scopes, headers=headers, ok=(201,))
            header = _header_digest(reply.headers)
            if header is not None and header != digest:
                raise IntegrityError(f"{name}: the registry stored the blob as {header}")

    def _retrying(self, method: str, path: str, fetch: Callable[[], _T]) -> _T:
        """Run ``fetch`` again (with backoff) when a response body breaks off or stalls while being read.

        The transport retries failures before the response arrives; this covers the body,
        which a streamed download reads after the transport has returned (``retry.retrying``).
        """
        return retrying(fetch, self.options,
                        lambda exc: self.transport.describe_failure(method, self.transport.url(path), exc))


def _blob_mismatch(exc: ContentMismatchError) -> str:
    if exc.kind == "larger":
        return f"blob is larger than the {exc.size} bytes its descriptor says"
    if exc.kind == "size":
        return f"blob has {exc.count} bytes, its descriptor says {exc.size}"
    return f"blob content is {exc.actual}"


def run_all(func: Callable[[_T], None], items: Sequence[_T], workers: int, name: str) -> None:
    """``func`` on every item, ``workers`` at a time; the first failure is raised and what has not started is dropped."""
    pool = ThreadPoolExecutor(max(1, min(workers, len(items))), thread_name_prefix=name)
    try:
        for future in [pool.submit(func, item) for item in items]:
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---- helpers -----------------------------------------------------------------------------------


@contextmanager
def _opened(source: Path | bytes) -> Iterator[BinaryIO]:
    if isinstance(source, bytes):
        yield io.BytesIO(source)
        return
    try:
        file = open(source, "rb")
    except OSError as exc:
        raise InputError(f"{source}: cannot read the blob: {exc.strerror}") from exc
    with file:
        yield file


def with_query(url: str, name: str, value: str) -> str:
    """``url`` with ``name=value`` added to its query, the rest kept byte for byte (Locations carry state)."""
    parts = urlsplit(url)
    item = f"{name}={quote(value, safe='')}"
    return urlunsplit(parts._replace(query=f"{parts.query}&{item}" if parts.query else item))


def _location(reply: Reply, default: str | None, name: str) -> str:
    """The upload session's next URL, absolute; relative Locations are resolved against the request URL."""
    location = reply.headers.get("Location")
    if location:
        try:
            return urljoin(reply.url, location)
        except ValueError:
            raise RegistryError(f"{name}: the registry answered a malformed upload Location") from None
    if default is None:
        raise RegistryError(f"{name}: the registry started an upload without a Location")
    return default


def _acknowledged(reply: Reply, start: int, end: int, name: str) -> int:
    """Where the next chunk starts: after ``end``, or after what the registry's ``Range`` says it has."""
    value = reply.headers.get("Range", "").rpartition("-")[2].strip()
    if not value.isdigit():
        return end + 1
    have = int(value) + 1
    if have <= start or have > end + 1:
        raise RetryableError(f"{name}: the registry acknowledged bytes up to {have - 1}, sent {start}-{end}")
    return have


def _int_header(reply: Reply, header: str) -> int:
    value = reply.headers.get(header, "").strip()
    return int(value) if value.isdigit() else 0


def _header_digest(headers: requests.structures.CaseInsensitiveDict[str]) -> Digest | None:
    """The registry's ``Docker-Content-Digest``, or None without one (a malformed one counts as none)."""
    try:
        return Digest.parse(headers.get("Docker-Content-Digest", "").strip())
    except ValueError:
        return None


def _check_bytes(data: bytes, digest: Digest, what: str) -> None:
    actual = Digest.of(data, digest.algorithm)
    if actual != digest:
        raise IntegrityError(f"{what}: content is {actual}, expected {digest}")


def manifest_media_type(raw: bytes, content_type: str, name: str) -> str:
    """The manifest's media type: the Content-Type when it names one, else the document's own ``mediaType``.

    Old registries answer ``application/json``; an OCI document without ``mediaType`` is
    recognised by shape (``manifests`` means an index).
    """
    ctype = content_type.split(";")[0].strip().lower()
    try:
        doc = json_object(raw, limit=MAX_MANIFEST)
    except ValueError as exc:
        raise RegistryError(f"{name}: manifest is not valid JSON: {exc}") from exc
    if ctype in SCHEMA1_TYPES or doc.get("schemaVersion") == 1:
        raise RegistryError(f"{name}: schema 1 manifests are not supported (push the image again with a "
                            f"current client to convert it)")
    if ctype in MANIFEST_TYPES | INDEX_TYPES:
        return ctype
    declared = doc.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    return MediaType.OCI_INDEX if "manifests" in doc else MediaType.OCI_MANIFEST
