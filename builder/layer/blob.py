"""Write a layer blob in one pass: tar -> sha256 (diff_id) -> compress -> sha256 (digest) -> file.

The tar stream is produced on the calling thread (it is Python-heavy: headers, file reads) and
handed in 1 MiB chunks through a small bounded queue to a worker thread that hashes,
compresses and writes (zlib, zstd and hashlib release the GIL), so compression runs beside
tar generation on a second core and memory stays bounded (queue depth x chunk size) whatever
the layer size. The blob lands in a temp file in ``workdir`` and is renamed to its digest only
when complete.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from builder.errors import OutputError
from builder.fs.atomic import masked, new_file, tmp_path
from builder.image import LayerBlob
from builder.layer.compress import Compression, compressor
from builder.oci.descriptor import Descriptor
from builder.oci.digest import HashingWriter

CHUNK = 1 << 20
QUEUE_DEPTH = 8
_END = b""


class _AbortedError(Exception):
    """The producer gave up; the worker discards what it has."""


class ChunkPipe:
    """File-like sink for the tar writer: buffers writes into chunks for the worker thread."""

    def __init__(self, q: queue.Queue[bytes | BaseException], failed: threading.Event,
                 error: list[BaseException]) -> None:
        self._q = q
        self._buf = bytearray()
        self._pos = 0
        self._failed = failed
        self._error = error

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = len(data)
        self._pos += n
        if n >= CHUNK and not self._buf and isinstance(data, bytes):
            self._put(data)  # a large write goes through as it is: no copy
            return n
        self._buf += data
        if len(self._buf) >= CHUNK:
            self._put(bytes(self._buf))
            self._buf.clear()
        return n

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        if self._buf:
            self._put(bytes(self._buf))
            self._buf.clear()
        self._put(_END)

    def _put(self, item: bytes) -> None:
        while True:
            if self._failed.is_set():
                raise self._error[0]
            try:
                self._q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue


def write_layer_blob(
    produce: Callable[[BinaryIO], None],
    compression: Compression,
    level: int | None,
    workdir: Path,
) -> LayerBlob:
    """Run ``produce(out)`` (which writes a whole tar to ``out``) through the blob pipeline.

    Returns a LayerBlob whose four ids (digest, size, diff_id, uncompressed size) all come from
    this single pass. Any exception from ``produce`` or the worker propagates and leaves no file.
    """
    tmp = tmp_path(workdir, ".layer-")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        fd = new_file(tmp, masked(0o644))  # blobs are linked into layouts others read
    except OSError as exc:
        raise OutputError(f"cannot create a layer blob in {str(workdir)!r}: {exc.strerror}") from exc
    q: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=QUEUE_DEPTH)
    failed = threading.Event()
    error: list[BaseException] = []
    result: dict[str, HashingWriter] = {}

    def worker() -> None:
        try:
            with os.fdopen(fd, "wb") as f:
                compressed = HashingWriter(f)
                comp = compressor(compression, compressed, level)
                uncompressed = HashingWriter(comp)
                while True:
                    item = q.get()
                    if isinstance(item, BaseException):
                        raise _AbortedError from item
                    if item is _END or not item:
                        break
                    uncompressed.write(item)
                comp.close()
            result["u"], result["c"] = uncompressed, compressed
        except OSError as exc:  # the disk is full, or gone read-only: the user's to fix, not a bug
            error.append(_write_error(tmp, exc))
            failed.set()
        except BaseException as exc:  # noqa: BLE001 - handed to the producer thread, re-raised there
            error.append(exc)
            failed.set()

    thread = threading.Thread(target=worker, name="pybuild-compress", daemon=True)
    thread.start()
    pipe = ChunkPipe(q, failed, error)
    try:
        produce(pipe)  # type: ignore[arg-type]
        pipe.finish()
    except BaseException as exc:
        while not failed.is_set():
            try:
                q.put(exc, timeout=0.2)
                break
            except queue.Full:
                continue
        thread.join()
        tmp.unlink(missing_ok=True)
        raise
    thread.join()
    if failed.is_set():
        tmp.unlink(missing_ok=True)
        raise error[0]
    unc, comp_w = result["u"], result["c"]
    digest = comp_w.digest()
    final = workdir / digest.hex
    try:
        os.replace(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _write_error(tmp, exc) from exc
    return LayerBlob(
        descriptor=Descriptor(str(compression.media_type), digest, comp_w.size),
        diff_id=unc.digest(),
        path=final,
        uncompressed_size=unc.size,
        verified=True,
    )


def _write_error(path: Path, exc: OSError) -> OutputError:
    """The error a user sees when the layer blob cannot be written (ENOSPC, EROFS, EDQUOT, EIO)."""
    error = OutputError(f"cannot write layer blob {str(path)!r}: {exc.strerror or exc}")
    error.__cause__ = exc
    return error
