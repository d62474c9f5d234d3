"""The blob store: registry blobs (layers, configs, manifests, indexes) kept by digest, so a base
is downloaded once and every later build or pull that names it reads it from disk.

On disk, under the cache directory (beside the layer cache's ``layers/``)::

    blobs/<alg>/<hex>     the blob, exactly as the registry served it (its name is its digest)

The layout is an OCI layout's ``blobs/`` on purpose, named by the layout's own rule
(:func:`builder.layout.format.blob_path`): manifests and indexes are blobs too, and
:func:`builder.registry.pull.pull` writes a scratch work directory in the very same shape when no
cache is usable. A file only gets its name after its digest was checked (a download is hashed
as it streams and renamed into place, :meth:`RegistryClient.fetch_blob`; everything else goes
through a temp file and a rename here), so concurrent builds sharing a cache see a whole blob or
none.

Nothing in the store is trusted when read: the cache directory is the user's, and a disk, another
tool or a crash may have damaged any file. Every read re-hashes the file (:meth:`BlobStore.get`,
:meth:`BlobStore.read`); a file that does not match its name, or is not a regular file (a FIFO, a
device or a symlink planted there), is removed and the caller downloads the blob again. Only
regular files are opened (:func:`builder.fs.atomic.open_regular`), never more than the expected
size (+1) is read.

The store's files are its own, as the layer cache's: the layout writer clones or copies them into an
output, never hard-links them (``builder.layout.write``, ``_ours``), and blobs taken from an existing
layout are cloned in here, so damage to an output never reaches the store nor the other way round.

``--no-cache`` does not bypass the store: it says "build every step", not "download every blob"
(Buildah and podman reuse their image store under ``--no-cache`` too); a blob that is read is
verified either way.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

from builder.errors import IntegrityError
from builder.fs.atomic import (
    ContentMismatchError,
    NotRegularFileError,
    atomic_path,
    clone_file,
    copy_verified,
    open_regular,
    write_atomic,
)
from builder.layout.format import blob_path
from builder.oci.digest import Digest


def store_root(cache_dir: Path) -> Path | None:
    """``cache_dir`` if a blob store can live there (its ``blobs/sha256`` created and writable), else None.

    None is not an error: a pull then keeps its blobs in the build's work directory, as without
    a store (a read-only or foreign cache directory must not fail a build).
    """
    blobs = cache_dir / "blobs" / "sha256"
    try:
        blobs.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if blobs.is_symlink() or not blobs.is_dir() or not os.access(blobs, os.W_OK | os.X_OK):
        return None
    return cache_dir


class BlobStore:
    """Blobs by digest under ``root/blobs/<alg>/<hex>``, each verified whenever it is read."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: Digest) -> Path:
        return blob_path(self.root, digest)

    def is_empty(self) -> bool:
        """True if the store holds no blob at all (then looking anything up in it is pointless)."""
        try:
            with os.scandir(self.root / "blobs" / "sha256") as entries:
                return not any(not e.name.startswith(".") for e in entries)
        except OSError:
            return True

    def get(self, digest: Digest, size: int | None) -> Path | None:
        """The path of the blob if the store has it and it hashes to ``digest`` (and has ``size`` bytes).

        A file that is there but wrong (damaged, truncated, not a regular file) is removed: None
        then means "download it again".
        """
        return self.path(digest) if self._check(digest, size, None) is not None else None

    def read(self, digest: Digest, limit: int) -> bytes | None:
        """The content of a small blob (a manifest, an index, a config), verified; None if absent or wrong."""
        return self._check(digest, None, limit)

    def put(self, digest: Digest, data: bytes) -> None:
        """Store ``data`` under ``digest`` (which it must hash to); a store that cannot be written only loses the copy."""
        if Digest.of(data, digest.algorithm) != digest:
            raise IntegrityError(f"{digest}: the bytes to store do not match their digest")
        target = self.path(digest)
        with contextlib.suppress(OSError):
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, data)

    def adopt(self, source: Path, digest: Digest, size: int | None) -> Path | None:
        """Clone ``source`` (a blob of another layout) into the store if it hashes to ``digest``.

        The clone is verified, not the source, so what is renamed into the store is exactly what
        was checked. Returns the blob's path in the store, or None (the source is missing, not a
        regular file, or not that blob: the caller downloads it).
        """
        target = self.path(digest)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        try:
            with atomic_path(target) as tmp:
                clone_file(source, tmp, size)
                with os.fdopen(open_regular(tmp), "rb") as f:
                    copy_verified(f, None, digest, size)  # a mismatch raises: the clone is not renamed in
        except (OSError, IntegrityError):
            return None
        return target

    def _check(self, digest: Digest, size: int | None, limit: int | None) -> bytes | None:
        """Hash the stored file: its bytes if ``limit`` is given (b"" otherwise) when it matches, else None.

        A mismatching or irregular file is unlinked, but only if the name still points at the
        file that was checked: another process may have just renamed a good copy over it.
        """
        path = self.path(digest)
        try:
            fd = open_regular(path)
        except NotRegularFileError:
            _remove(path, None)
            return None
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            kept = io.BytesIO() if limit is not None else None
            try:
                copy_verified(f, kept, digest, size, limit=limit)
                data = kept.getvalue() if kept is not None else b""
            except (OSError, ContentMismatchError):  # an I/O error reading it: as good as damaged
                data = None
        if data is None:
            _remove(path, (st.st_dev, st.st_ino))
        else:
            with contextlib.suppress(OSError):
                os.utime(path, follow_symlinks=False)  # used now: `cache prune --max-age` keeps it
        return data


def _remove(path: Path, identity: tuple[int, int] | None) -> None:
    with contextlib.suppress(OSError):
        if identity is not None:
            st = path.lstat()
            if (st.st_dev, st.st_ino) != identity:
                return
        path.unlink()
