"""Digests as values, and the hashing writer every blob passes through."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import BinaryIO, Protocol

_HEX = {"sha256": re.compile(r"[a-f0-9]{64}"), "sha512": re.compile(r"[a-f0-9]{128}")}


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    """A content digest such as ``sha256:ab12...``; never pass digests around as bare strings."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Validate ``alg:hex``; raises ValueError (callers wrap it with context)."""
        alg, sep, hexpart = text.partition(":")
        pattern = _HEX.get(alg)
        if not sep or pattern is None or not pattern.fullmatch(hexpart):
            raise ValueError(f"not a valid digest: {text!r}")
        return cls(alg, hexpart)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        """The digest of ``data`` (sha256 unless ``algorithm``); bytes said to be ``d`` are checked by
        ``Digest.of(data, d.algorithm) == d``, whatever algorithm ``d`` names."""
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @property
    def short(self) -> str:
        """12 hex digits, as ``docker images`` shows ids."""
        return self.hex[:12]


class Writable(Protocol):
    """Anything with ``write(bytes)``: files, compressors, other HashingWriters."""

    def write(self, data: bytes | bytearray | memoryview, /) -> object: ...


class HashingWriter:
    """A write-only file object that hashes and counts what passes through to ``sink``.

    ``sink`` may be None to only hash (used to compute a diff_id without storing).
    """

    def __init__(self, sink: Writable | None = None, algorithm: str = "sha256") -> None:
        self._sink = sink
        self._hash = hashlib.new(algorithm)
        self.algorithm = algorithm
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._hash.update(data)
        n = len(data)
        self.size += n
        if self._sink is not None:
            self._sink.write(data)
        return n

    def flush(self) -> None:
        flush = getattr(self._sink, "flush", None)
        if flush is not None:
            flush()

    def digest(self) -> Digest:
        return Digest(self.algorithm, self._hash.hexdigest())


class HashingReader:
    """A read-only stream that hashes and counts everything read through it.

    Wrap a blob in it and the pass that parses the blob also verifies it: compare
    :meth:`digest` with the descriptor once the stream has been read to its end.
    """

    def __init__(self, raw: BinaryIO, algorithm: str = "sha256") -> None:
        self._raw = raw
        self._hash = hashlib.new(algorithm)
        self.algorithm = algorithm
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._hash.update(data)
        self.size += len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def peek(self, n: int) -> bytes:
        data: bytes = self._raw.peek(n)  # type: ignore[attr-defined]
        return data

    def close(self) -> None:
        self._raw.close()

    def drain(self, chunk: int = 1 << 20) -> None:
        """Read (and hash) whatever is left, e.g. bytes after a tar's end-of-archive marker."""
        while self.read(chunk):
            pass

    def digest(self) -> Digest:
        return Digest(self.algorithm, self._hash.hexdigest())


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> tuple[Digest, int]:
    """Stream a file through sha256; returns (digest, size)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            size += len(block)
    return Digest("sha256", h.hexdigest()), size
