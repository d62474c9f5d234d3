"""A corpus of hostile archives, generated in code: no binary fixtures, the same bytes on every run.

Each :class:`Case` is ``(id, build, description, expect)``: ``build()`` returns the archive's
bytes (an uncompressed tar, except for the bombs, which are made compressed: see
:class:`ZeroStream`), and ``expect`` says what each reader of archives must do with it:

- ``rootfs``: the ``rootfs:`` step (``builder/steps/rootfs.py``; also the layer cache's input);
- ``base``: the archive as the single layer of a base image, read by a ``write:`` step on top
  (``builder/fs/scan.py``);
- ``unpack``: ``pybuild unpack`` of that base (``builder/fs/apply.py``, which also makes the
  working rootfs of ``run:`` steps).

``REFUSED``: exit 1 with one clean ``pybuild: error:`` line; ``OK``: exit 0, and the result is
valid and contained; ``EITHER``: both are acceptable (the test records which happened). Whatever
the expectation, nothing outside the build's own directories may change.

Headers are built byte by byte here (not with ``tarfile``), so that the corpus can hold what
``tarfile`` would never write: non-UTF-8 PAX records without ``hdrcharset``, sizes that lie,
global PAX headers, GNU long names, base-256 numbers, broken checksums.
"""

from __future__ import annotations

import functools
import hashlib
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

BLOCK = 512
RECORD = 10240
REG, LNK, SYM, CHR, BLK, DIR, FIFO = b"0", b"1", b"2", b"3", b"4", b"5", b"6"
PAX, PAX_GLOBAL, GNU_LONGNAME, GNU_LONGLINK = b"x", b"g", b"L", b"K"
USTAR_MAGIC = b"ustar\x0000"
GNU_MAGIC = b"ustar  \x00"

REFUSED, OK, EITHER = "refused", "ok", "either"

GiB = 1 << 30
#: The zeros inside the bombs of :data:`CASES`, which go through every path (each reads them 5 to 10
#: times, and zlib inflates zeros at only ~250 MB/s): 512 MiB keeps the whole matrix within minutes.
BOMB_ZEROS = GiB // 2
#: The zeros inside :data:`BIG_BOMBS`, built once each through the rootfs step: gzip's ratio
#: (~1000:1) makes 2 GiB ~2 MiB on the wire, zstd's RLE blocks 64 KiB.
BIG_BOMB_ZEROS = 2 * GiB


# --------------------------------------------------------------------------------------------
# tar, byte by byte


def _b(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode()


def _num(value: int, width: int) -> bytes:
    """An octal header number field, NUL-terminated, as tar writes it."""
    return b"%0*o\0" % (width - 1, value)


def base256(value: int, width: int = 12) -> bytes:
    """GNU's binary number encoding (for values an octal field cannot hold)."""
    return b"\x80" + value.to_bytes(width - 1, "big")


def header(name: str | bytes, *, kind: bytes = REG, size: int = 0, mode: int | None = None, uid: int = 0,
           gid: int = 0, mtime: int = 0, link: str | bytes = b"", dev: tuple[int, int] = (0, 0),
           prefix: str | bytes = b"", magic: bytes = USTAR_MAGIC, size_field: bytes | None = None,
           bad_checksum: bool = False) -> bytes:
    """One 512-byte tar header; every field is taken as given (nothing is checked or escaped)."""
    name, link, prefix = _b(name), _b(link), _b(prefix)
    assert len(name) <= 100 and len(link) <= 100 and len(prefix) <= 155, "use PAX or GNU records for long names"
    if mode is None:
        mode = {DIR: 0o755, SYM: 0o777}.get(kind, 0o644)
    fields = [
        name.ljust(100, b"\0"), _num(mode, 8), _num(uid, 8), _num(gid, 8),
        size_field if size_field is not None else _num(size, 12), _num(mtime, 12), b" " * 8, kind,
        link.ljust(100, b"\0"), magic, b"\0" * 64, _num(dev[0], 8), _num(dev[1], 8), prefix.ljust(155, b"\0"),
        b"\0" * 12,
    ]  # fmt: skip
    head = b"".join(fields)
    assert len(head) == BLOCK
    checksum = sum(head) + (1 if bad_checksum else 0)
    return head[:148] + b"%06o\0" % checksum + head[155:]


def pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


def member(name: str | bytes, data: bytes | str = b"", **fields: Any) -> bytes:
    """A header and its content, padded to a block. ``size=`` may lie about the content."""
    payload = _b(data)
    fields.setdefault("size", len(payload))
    return header(name, **fields) + pad(payload)


def d(name: str | bytes, **fields: Any) -> bytes:
    """A directory entry (the name gets its trailing slash)."""
    name = _b(name)
    return member(name if name.endswith(b"/") else name + b"/", kind=DIR, **fields)


def sym(name: str | bytes, target: str | bytes, **fields: Any) -> bytes:
    return member(name, kind=SYM, link=target, **fields)


def hard(name: str | bytes, target: str | bytes, **fields: Any) -> bytes:
    return member(name, kind=LNK, link=target, **fields)


def pax_records(records: list[tuple[str | bytes, str | bytes]]) -> bytes:
    """PAX extended header records: ``"%d %s=%s\\n"``, the length counting itself."""
    out = b""
    for key, value in records:
        body = b" " + _b(key) + b"=" + _b(value) + b"\n"
        n = len(body) + 1
        while len(str(n)) + len(body) != n:
            n = len(str(n)) + len(body)
        out += str(n).encode() + body
    return out


def pax(records: list[tuple[str | bytes, str | bytes]], *, global_: bool = False) -> bytes:
    """A PAX extended header member (``x``, or a global ``g`` one that applies to every later member)."""
    return member(b"././@PaxHeader", pax_records(records), kind=PAX_GLOBAL if global_ else PAX)


def gnu_long(kind: bytes, value: str | bytes) -> bytes:
    """A GNU ``././@LongLink`` record: the next member's name (``L``) or link target (``K``)."""
    return member(b"././@LongLink", _b(value) + b"\0", kind=kind, magic=GNU_MAGIC)


def old_gnu_sparse(name: str, regions: list[tuple[int, int]], realsize: int, *, extended: bool, size: int) -> bytes:
    """An old GNU sparse header (type S): up to 4 (offset, size) regions in the header itself, and a flag
    saying extension blocks of 21 more follow. Its fields live where ustar keeps the prefix."""
    area = bytearray(155)  # header bytes 345..499
    for i, (offset, length) in enumerate(regions[:4]):
        area[41 + 24 * i:41 + 24 * i + 24] = _num(offset, 12) + _num(length, 12)
    area[137] = int(extended)
    area[138:150] = _num(realsize, 12)
    return header(name, kind=b"S", size=size, prefix=bytes(area), magic=GNU_MAGIC)


def sparse_extension(regions: list[tuple[int, int]], *, extended: bool) -> bytes:
    """One extension block of an old GNU sparse header: 21 regions and the 'more follow' flag."""
    body = b"".join(_num(o, 12) + _num(n, 12) for o, n in regions[:21]).ljust(504, b"\0")
    return body + bytes([int(extended)]) + b"\0" * 7


def archive(*members: bytes, end: bool = True) -> bytes:
    """Members, then (with ``end``) the end-of-archive marker, padded to a 10240-byte record as tar does."""
    data = b"".join(members)
    if end:
        data += b"\0" * (2 * BLOCK)
        data += b"\0" * (-len(data) % RECORD)
    return data


# --------------------------------------------------------------------------------------------
# bombs: a small head, a great many zeros, a small tail; compressed by construction


@dataclass(frozen=True)
class ZeroStream:
    """The uncompressed stream ``head + fill * (zeros // len(fill)) + tail``, compressed without being built.

    gzip: one deflate stream whose middle is 1 MiB of filler compressed once after a full flush
    (which resets the compressor's history, so the same bytes are valid repeated). zstd (a one-byte
    fill only): one frame written by hand: a raw block for the head, RLE blocks of 128 KiB, a raw
    last block.
    """

    head: bytes
    zeros: int
    tail: bytes
    fill: bytes = b"\0"

    CHUNK = 1 << 20

    def __post_init__(self) -> None:
        assert self.CHUNK % len(self.fill) == 0 and self.zeros % self.CHUNK == 0

    @property
    def size(self) -> int:
        return len(self.head) + self.zeros + len(self.tail)

    def _chunk(self) -> bytes:
        return self.fill * (self.CHUNK // len(self.fill))

    def chunks(self) -> Iterator[bytes]:
        """The uncompressed bytes, in pieces (for hashing the diff_id without decompressing)."""
        yield self.head
        chunk = self._chunk()
        for _ in range(self.zeros // self.CHUNK):
            yield chunk
        yield self.tail

    def sha256(self) -> str:
        h = hashlib.sha256()
        for chunk in self.chunks():
            h.update(chunk)
        return h.hexdigest()

    def gzip(self) -> bytes:
        def deflate(data: bytes, mode: int) -> bytes:
            c = zlib.compressobj(9, zlib.DEFLATED, -15)
            return c.compress(data) + c.flush(mode)

        chunk = self._chunk()
        crc = zlib.crc32(self.head)
        for _ in range(self.zeros // self.CHUNK):
            crc = zlib.crc32(chunk, crc)
        crc = zlib.crc32(self.tail, crc)
        body = b"".join((deflate(self.head, zlib.Z_FULL_FLUSH),
                         deflate(chunk, zlib.Z_FULL_FLUSH) * (self.zeros // self.CHUNK),
                         deflate(self.tail, zlib.Z_FINISH)))
        gz_header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no flags, mtime 0, unknown OS
        return gz_header + body + struct.pack("<II", crc, self.size & 0xFFFFFFFF)

    def zstd(self) -> bytes:
        block_max = 128 << 10
        assert len(self.fill) == 1 and len(self.head) <= block_max and len(self.tail) <= block_max

        def block(last: bool, kind: int, size: int) -> bytes:
            return (int(last) | kind << 1 | size << 3).to_bytes(3, "little")

        frame = b"\x28\xb5\x2f\xfd" + b"\x00" + bytes([(17 - 10) << 3])  # no content size, no checksum; 128 KiB window
        frame += block(False, 0, len(self.head)) + self.head  # raw
        frame += (block(False, 1, block_max) + self.fill) * (self.zeros // block_max)  # RLE
        return frame + block(True, 0, len(self.tail)) + self.tail


# --------------------------------------------------------------------------------------------
# the cases


@dataclass(frozen=True)
class Expect:
    """What each reader must do: REFUSED, OK or EITHER (see the module docstring)."""

    rootfs: str
    base: str
    unpack: str


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[], bytes]
    description: str
    expect: Expect
    compression: str = "none"
    """What ``build()`` returns: ``none`` (a tar, compressed by the test as it needs), ``gzip`` or ``zstd``."""
    probe: str | None = None
    """An image path for a ``write:`` step on the base: destinations through the archive's symlinks."""
    run_error: str | None = None
    """If set, a ``run:`` step on the base must be refused with an error containing this."""
    stream: ZeroStream | None = None
    """For bombs: the uncompressed stream (its size and diff_id without decompressing)."""

    @property
    def bomb(self) -> bool:
        return self.stream is not None


def _case(id: str, description: str, expect: tuple[str, str, str], *members: bytes, end: bool = True,
          probe: str | None = None, cut: int | None = None, run_error: str | None = None) -> Case:
    def build() -> bytes:
        data = archive(*members, end=end)
        return data[:cut] if cut is not None else data

    return Case(id, build, description, Expect(*expect), probe=probe, run_error=run_error)


def _bomb(id: str, description: str, stream: ZeroStream, compression: str) -> Case:
    build = functools.cache(getattr(stream, compression))
    return Case(id, build, description, Expect(EITHER, EITHER, EITHER), compression=compression, stream=stream)


LONG300 = "/".join(["d" * 99, "e" * 99, "f" * 100])  # 300 characters, each component < NAME_MAX
BEYOND_PATH_MAX = "/".join(f"{i:02d}" + "p" * 248 for i in range(20))  # 5019 characters


def member_bomb(zeros: int) -> ZeroStream:
    head = header("zeros.bin", size=zeros)
    tail = b"\0" * (2 * BLOCK)
    tail += b"\0" * (-(len(head) + zeros + len(tail)) % RECORD)
    return ZeroStream(head, zeros, tail)


def padding_bomb(zeros: int) -> ZeroStream:
    return ZeroStream(archive(member("small.txt", "tiny\n")), zeros, b"")


CASES: list[Case] = [
    # --- names that climb out, or start at the host's root
    _case("dotdot", "a member named '../escape-hostile'", (REFUSED, REFUSED, REFUSED),
          member("ok.txt", "fine\n"), member("../escape-hostile", "escaped\n")),
    _case("dotdot-inner", "'a/../../escape-hostile': climbs out through a real directory", (REFUSED, REFUSED, REFUSED),
          d("a"), member("a/../../escape-hostile", "escaped\n")),
    _case("dotdot-to-host-etc", "'../' repeated until the host's root, then etc/", (REFUSED, REFUSED, REFUSED),
          member("../" * 24 + "etc/pybuild-hostile-escape", "escaped\n")),
    _case("dotdot-dir", "a directory named '../hostile-dir' and a file in it", (REFUSED, REFUSED, REFUSED),
          d("../hostile-dir"), member("../hostile-dir/x", "x\n")),
    _case("absolute", "absolute names '/etc/pybuild-hostile' and '/abs-dir/x'", (OK, OK, OK),
          member("/etc/pybuild-hostile", "absolute\n"), d("/abs-dir"), member("/abs-dir/x", "x\n")),
    _case("pax-path-dotdot", "a ustar name 'innocent' that a PAX path record turns into '../../pax-escape'",
          (REFUSED, REFUSED, REFUSED),
          pax([("path", "../../pax-escape")]), member("innocent", "escaped\n")),
    _case("pax-global-path", "a global PAX header (type g) with path=../../../etc/..., then a plain member",
          (REFUSED, REFUSED, REFUSED),
          pax([("path", "../../../../../../../../etc/pybuild-hostile-global")], global_=True),
          member("innocent", "escaped\n")),
    # --- symlinks as parents: write through them
    _case("symlink-abs-parent", "'a -> /etc', then 'a/passwd'", (REFUSED, OK, OK),
          sym("a", "/etc"), member("a/passwd", "root::0:0::/:/bin/sh\n"), probe="/a/probe"),
    _case("symlink-rel-parent", "'a -> ../../../', then 'a/x'", (REFUSED, OK, OK),
          sym("a", "../../../"), member("a/x", "escaped\n"), probe="/a/probe"),
    _case("symlink-chain-parent", "'a -> b', 'b -> c', 'c -> /etc', then 'a/shadow'", (REFUSED, OK, OK),
          sym("a", "b"), sym("b", "c"), sym("c", "/etc"), member("a/shadow", "pwned\n"), probe="/a/probe"),
    _case("symlink-dotdot-chain", "'up -> ..', then 'up/up/up/up/etc/hostile'", (REFUSED, OK, OK),
          sym("up", ".."), member("up/up/up/up/etc/hostile", "escaped\n"), probe="/up/up/probe"),
    _case("symlink-loop-parent", "'a -> b', 'b -> a', then 'a/x'", (REFUSED, EITHER, REFUSED),
          sym("a", "b"), sym("b", "a"), member("a/x", "x\n"), probe="/a/probe"),
    _case("symlink-self-loop-parent", "'s -> s', then 's/x'", (REFUSED, EITHER, REFUSED),
          sym("s", "s"), member("s/x", "x\n")),
    _case("symlink-to-file-parent", "'f' a file, 's -> f', then 's/x'", (REFUSED, EITHER, REFUSED),
          member("f", "file\n"), sym("s", "f"), member("s/x", "x\n")),
    # --- hardlinks that point out
    _case("hardlink-dotdot", "'h' hardlinked to '../../etc/shadow'", (REFUSED, REFUSED, REFUSED),
          hard("h", "../../etc/shadow")),
    _case("hardlink-absolute", "'h' hardlinked to '/etc/shadow' (which the archive does not have)",
          (REFUSED, EITHER, REFUSED), hard("h", "/etc/shadow")),
    _case("hardlink-absolute-own", "'etc/shadow' in the archive, then 'h' hardlinked to '/etc/shadow'",
          (OK, OK, OK), d("etc"), member("etc/shadow", "image shadow\n", mode=0o640), hard("h", "/etc/shadow")),
    _case("hardlink-to-symlink-outside", "'s -> /etc/shadow', 'h' hardlinked to the symlink 's'", (OK, OK, OK),
          sym("s", "/etc/shadow"), hard("h", "s")),
    _case("hardlink-to-symlink-then-write", "'s -> /etc/shadow', 'h' hardlinked to 's', then 'h' as a file",
          (OK, OK, OK), sym("s", "/etc/shadow"), hard("h", "s"), member("h", "pwned\n")),
    _case("hardlink-through-symlink", "'a -> /etc', then 'h' hardlinked to 'a/shadow'", (REFUSED, EITHER, REFUSED),
          sym("a", "/etc"), hard("h", "a/shadow")),
    _case("hardlink-then-swap", "'f', 'h' hardlinked to 'f', then 'f' replaced by 'f -> /etc/shadow' (the rootfs "
          "step keeps only the last 'f', so 'h' has no target)", (REFUSED, OK, OK), member("f", "file\n"), hard("h", "f"), sym("f", "/etc/shadow")),
    # --- a directory replaced by a symlink half way
    _case("dir-then-symlink", "'d/', then 'd -> /etc', then 'd/x'", (REFUSED, OK, OK),
          d("d"), sym("d", "/etc"), member("d/x", "escaped\n"), probe="/d/probe"),
    _case("dir-children-then-symlink", "'d/', 'd/keep', then 'd -> ../../..', then 'd/x'", (REFUSED, OK, OK),
          d("d"), member("d/keep", "keep\n"), sym("d", "../../.."), member("d/x", "escaped\n")),
    # --- device nodes
    _case("device-nodes", "block 8:0 as dev/sda and /disk, char 1:1 (mem) and 1:11 (kmsg), a fifo",
          (OK, OK, OK),
          d("dev"), member("dev/sda", kind=BLK, dev=(8, 0), mode=0o660), member("/disk", kind=BLK, dev=(8, 0)),
          member("dev/mem", kind=CHR, dev=(1, 1), mode=0o640), member("dev/kmsg", kind=CHR, dev=(1, 11)),
          member("fifo", kind=FIFO)),
    _case("device-over-symlink", "'dev -> /dev' (a loop inside the root), then 'dev/hostile-null' a char device",
          (REFUSED, OK, REFUSED), sym("dev", "/dev"), member("dev/hostile-null", kind=CHR, dev=(1, 3))),
    _case("device-through-symlink", "'d -> /etc', then 'd/hostile-null' a char device (1:3)", (REFUSED, OK, OK),
          sym("d", "/etc"), member("d/hostile-null", kind=CHR, dev=(1, 3))),
    # --- sizes that lie, archives that stop
    _case("huge-size-pax", "a PAX size record of 8 GiB, then 1 KiB of data and the end of the stream",
          (REFUSED, REFUSED, REFUSED), pax([("size", str(8 * GiB))]), header("huge.bin"), b"x" * 1024, end=False),
    _case("huge-size-base256", "a GNU base-256 size field of 8 GiB, then 1 KiB and the end of the stream",
          (REFUSED, REFUSED, REFUSED), header("huge.bin", size_field=base256(8 * GiB), magic=GNU_MAGIC),
          b"y" * 1024, end=False),
    _case("huge-size-unread", "a duplicate (so the rootfs step takes two passes), then a member whose PAX size "
          "is 2^62 bytes and whose stream ends: a reader skipping it, not reading it, must not spin",
          (REFUSED, REFUSED, REFUSED), member("dup", "1\n"), member("dup", "2\n"), pax([("size", str(1 << 62))]),
          header("huge.bin"), b"x" * 1024, end=False),
    _case("huge-size-aufs", "aufs metadata (skipped by unpack) whose PAX size is 2^62, then the stream ends",
          (REFUSED, REFUSED, REFUSED), pax([("size", str(1 << 62))]), header(".wh..wh.plnk/huge"), b"x" * 1024,
          end=False),
    _case("truncated-member", "a member that claims 1 MiB, cut after 1000 bytes", (REFUSED, REFUSED, REFUSED),
          member("ok.txt", "fine\n"), member("cut.bin", b"z" * (1 << 20)), cut=3 * BLOCK + 1000),
    _case("truncated-header", "an archive cut in the middle of its second header", (REFUSED, REFUSED, REFUSED),
          member("ok.txt", "fine\n"), member("never.txt", "x\n"), cut=2 * BLOCK + 300),
    _case("no-end-marker", "members and no end-of-archive marker", (OK, OK, OK),
          member("ok.txt", "fine\n"), end=False),
    _case("bad-checksum-later", "a valid member, then a header with a wrong checksum, then more members (which "
          "a reader must not silently drop)", (REFUSED, REFUSED, REFUSED),
          member("ok.txt", "fine\n"), member("bad.txt", "bad\n", bad_checksum=True), member("after.txt", "x\n")),
    # --- headers that tarfile parses badly, or without bounds
    _case("pax-chain", "2000 PAX headers in a row, then a member (recursion in tarfile)", (REFUSED, REFUSED, REFUSED),
          *[pax([("comment", "x" * 400)])] * 2000, member("after", "x\n")),
    _case("gnu-sparse", "a valid old GNU sparse file: 8 KiB with two 512-byte regions", (OK, OK, OK),
          old_gnu_sparse("sparse", [(0, 512), (4096, 512)], 8192, extended=False, size=1024),
          b"a" * 512 + b"b" * 512),
    _case("gnu-sparse-truncated", "an old GNU sparse header announcing an extension block, then the stream ends",
          (REFUSED, REFUSED, REFUSED), member("ok.txt", "fine\n"),
          old_gnu_sparse("sparse", [(0, 512)], 8192, extended=True, size=512), end=False),
    _case("gnu-sparse-1.0-truncated", "a PAX GNU sparse 1.0 member whose map claims 99999 regions, cut short",
          (REFUSED, REFUSED, REFUSED),
          pax([("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"), ("GNU.sparse.name", "sparse"),
               ("GNU.sparse.realsize", "100")]), header("GNUSparseFile.0/sparse", size=3 * BLOCK), b"99999\n1",
          end=False),
    # --- names that are not UTF-8, or long
    _case("nonutf8-pax-path", "a PAX path record with bytes 0xff 0xfe (no hdrcharset)", (OK, OK, OK),
          pax([("path", b"caf\xff\xfe.txt")]), member("placeholder", "latin\n")),
    _case("nonutf8-ustar-name", "a ustar name with bytes 0xff, and a symlink target with 0xfe", (OK, OK, OK),
          member(b"bad\xffname", "x\n"), sym(b"lnk\xff", b"bad\xfe/target")),
    _case("long-name-pax", "a 300-character name via PAX, its parents missing", (OK, OK, OK),
          pax([("path", LONG300)]), member("placeholder", "long\n")),
    _case("long-name-ustar-prefix", "a 255-character name: a 155-byte ustar prefix and a 100-byte name",
          (OK, OK, OK), member("n" * 100, "prefixed\n", prefix="/".join(["p" * 77, "q" * 77]))),
    _case("long-name-gnu", "a 300-character name via a GNU ././@LongLink (L) record", (OK, OK, OK),
          gnu_long(GNU_LONGNAME, LONG300), member("placeholder", "gnu\n", magic=GNU_MAGIC)),
    _case("long-link-targets", "a symlink with a 300-character target (PAX linkpath), a hardlink via GNU K",
          (OK, OK, OK),
          pax([("linkpath", "/" + LONG300)]), sym("sym", "placeholder"),
          member("target.txt", "t\n"), gnu_long(GNU_LONGLINK, "./" * 60 + "target.txt"),
          hard("hard", "placeholder", magic=GNU_MAGIC)),
    _case("long-component", "a single 300-character name component (above NAME_MAX)", (OK, EITHER, REFUSED),
          pax([("path", "c" * 300)]), member("placeholder", "x\n")),
    _case("beyond-path-max", "a 5019-character path (20 components of 250): beyond PATH_MAX", (OK, OK, OK),
          pax([("path", BEYOND_PATH_MAX)]), member("placeholder", "deep\n")),
    # --- the same path twice
    _case("dup-file-then-dir", "'x' a file, then 'x/' a directory, then 'x/y'", (OK, OK, OK),
          member("x", "file\n"), d("x"), member("x/y", "y\n")),
    _case("dup-dir-then-file", "'x/', 'x/y', then 'x' a file", (REFUSED, EITHER, OK),
          d("x"), member("x/y", "y\n"), member("x", "file\n")),
    _case("dup-file-then-symlink", "'x' a file, then 'x -> /etc/passwd'", (OK, OK, OK),
          member("x", "file\n"), sym("x", "/etc/passwd")),
    _case("dup-symlink-then-file", "'x -> /etc/passwd', then 'x' a file: must replace the link, not follow it",
          (OK, OK, OK), sym("x", "/etc/passwd"), member("x", "pwned\n")),
    _case("dup-symlink-then-dir", "'x -> /etc', then 'x/' a directory, then 'x/y'", (OK, OK, OK),
          sym("x", "/etc"), d("x"), member("x/y", "y\n")),
    # --- whiteouts where none belong
    _case("wh-with-content", "'.wh.x' with content", (REFUSED, EITHER, REFUSED),
          member("x", "x\n"), member(".wh.x", "not empty\n")),
    _case("wh-through-symlink", "'lnk -> /etc', then 'lnk/.wh.passwd'", (REFUSED, OK, OK),
          sym("lnk", "/etc"), member("lnk/.wh.passwd")),
    _case("wh-opaque-through-symlink", "'lnk -> /etc', then 'lnk/.wh..wh..opq'", (REFUSED, OK, OK),
          sym("lnk", "/etc"), member("lnk/.wh..wh..opq")),
    _case("wh-bare", "a bare '.wh.'", (REFUSED, EITHER, REFUSED), member(".wh.")),
    _case("wh-dotdot", "'.wh...' (a whiteout of '..') and 'a/.wh..' (of '.')", (REFUSED, EITHER, REFUSED),
          d("a"), member(".wh..."), member("a/.wh..")),
    _case("wh-opaque-with-content", "'.wh..wh..opq' with content", (REFUSED, EITHER, REFUSED),
          member(".wh..wh..opq", "not empty\n")),
    _case("wh-as-directory", "'.wh.d/' a directory with a child", (REFUSED, EITHER, REFUSED),
          d(".wh.d"), member(".wh.d/x", "x\n")),
    _case("wh-aufs-meta", "aufs bookkeeping: '.wh..wh.plnk/1.2' and '.wh..wh.aufs'", (REFUSED, EITHER, OK),
          d(".wh..wh.plnk"), member(".wh..wh.plnk/1.2", "aufs\n"), member(".wh..wh.aufs")),
    # --- odd headers
    _case("root-as-symlink", "the root entry '.' as a symlink to /etc", (EITHER, EITHER, REFUSED),
          sym(".", "/etc"), member("x", "x\n")),
    _case("root-as-file", "the root entry './' as a regular file", (EITHER, EITHER, REFUSED),
          member("./", "root\n"), member("x", "x\n")),
    _case("unknown-type", "a member of type 'Z' (unknown to tar)", (REFUSED, EITHER, EITHER),
          member("odd", "odd\n", kind=b"Z")),
    _case("xattrs-host-artefacts", "overlay and selinux xattrs (dropped), a capability (kept)", (OK, OK, OK),
          pax([("SCHILY.xattr.trusted.overlay.opaque", "y"), ("SCHILY.xattr.security.selinux", "x_t"),
               ("SCHILY.xattr.user.overlay.redirect", "/etc"), ("SCHILY.xattr.user.hostile", b"\xff\x00\xfe")]),
          d("ovl")),
    _case("pax-huge-numbers", "PAX uid/gid above 2^32 and an mtime of -10^20", (EITHER, EITHER, EITHER),
          pax([("uid", str(1 << 40)), ("gid", str(1 << 40)), ("mtime", "-100000000000000000000")]),
          member("numbers", "n\n")),
    _case("mountpoint-symlinks", "proc/dev/sys/tmp and etc/resolv.conf/etc/hosts as symlinks out of the root; a "
          "run step must not mount at the host paths they name", (OK, OK, OK),
          sym("proc", "/etc"), sym("dev", "../../../etc"), sym("sys", "/"), sym("tmp", "/"), d("etc"),
          sym("etc/resolv.conf", "/etc/shadow"), sym("etc/hosts", "../../../../etc/passwd"),
          member("etc/shadow", "image shadow\n"), run_error="cannot mount at '/"),
    _case("mountpoint-etc-symlinks", "only etc/resolv.conf -> /etc/shadow and etc/hosts -> ../../../etc/passwd: the "
          "run step binds the host's files over the image's own (resolved inside the root)", (OK, OK, OK),
          d("etc"), sym("etc/resolv.conf", "/etc/shadow"), sym("etc/hosts", "../../../../etc/passwd"),
          member("etc/shadow", "image shadow\n")),
    # --- bombs
    _bomb("gzip-bomb-member", "gzip: one member of 512 MiB of zeros (~0.5 MiB compressed)",
          member_bomb(BOMB_ZEROS), "gzip"),
    _bomb("gzip-bomb-padding", "gzip: a tiny archive followed by 512 MiB of zero padding",
          padding_bomb(BOMB_ZEROS), "gzip"),
    _bomb("zstd-bomb-member", "zstd: one member of 512 MiB of zeros (16 KiB compressed)",
          member_bomb(BOMB_ZEROS), "zstd"),
    _bomb("zstd-bomb-padding", "zstd: a tiny archive followed by 512 MiB of zero padding",
          padding_bomb(BOMB_ZEROS), "zstd"),
    _bomb("pax-header-bomb", "gzip: a PAX header claiming 1 TiB of records, then 512 MiB of zeros",
          ZeroStream(header("././@PaxHeader", kind=PAX, size_field=base256(1 << 40)), BOMB_ZEROS, b""), "gzip"),
    _bomb("gnu-longname-bomb", "zstd: a GNU long-name (L) record claiming 1 TiB, then 512 MiB of zeros",
          ZeroStream(header("././@LongLink", kind=GNU_LONGNAME, size_field=base256(1 << 40), magic=GNU_MAGIC),
                     BOMB_ZEROS, b""), "zstd"),
    _bomb("sparse-map-bomb", "gzip: an old GNU sparse header followed by 512 MiB of extension blocks, each with 21 "
          "regions and 'more follow'", ZeroStream(
              old_gnu_sparse("sparse", [(1, 1)] * 4, 1 << 32, extended=True, size=0), BOMB_ZEROS, b"",
              fill=sparse_extension([(1, 1)] * 21, extended=True)), "gzip"),
]

BIG_BOMBS: list[Case] = [
    _bomb("gzip-bomb-2g", "gzip: one member of 2 GiB of zeros (~2 MiB compressed)", member_bomb(BIG_BOMB_ZEROS),
          "gzip"),
    _bomb("zstd-bomb-2g", "zstd: one member of 2 GiB of zeros (64 KiB compressed)", member_bomb(BIG_BOMB_ZEROS),
          "zstd"),
]

BY_ID = {case.id: case for case in [*CASES, *BIG_BOMBS]}
assert len(BY_ID) == len(CASES) + len(BIG_BOMBS), "case ids must be unique"
