"""The tar side of both archive formats: a layout's files written as members, and read back from them.

Writing is deterministic: names sorted, every time ``epoch``, owner 0:0 with no names, modes
0644/0755, PAX headers only where a name or size needs them. Blobs are streamed from their
files, never loaded whole, and the archive is written to a locked temporary file beside OUT
and renamed over it, so OUT is either the old file or the complete new one, even if the
process is killed (the next build removes the temporary file a dead process left).

Reading: archives are untrusted input, read once as a stream with the project's hardened tar
reader (:func:`builder.layer.tarstream.tar_members`: bounded headers, no recursion, no endless
skip), plain or compressed, never with ``tarfile``'s random access, which loads a PAX header
whole however large it claims to be. Only regular files are extracted, under a fresh directory
in ``workdir``, with names built from validated components; members named with ``..`` or an
absolute path, and links standing where a layout file should be, are refused. Every extracted
file is hashed on the way: a blob must match its name, so what is read from it is verified.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from builder.errors import InputError, IntegrityError, OutputError
from builder.fs.atomic import NotRegularFileError, atomic_file, copy_hashed, open_regular, tmp_path
from builder.fs.lock import private_sibling
from builder.image import Blob
from builder.layer.decompress import DECODE_ERRORS, open_decompressed
from builder.layer.tarstream import tar_members
from builder.layout.format import blob_digest
from builder.oci.digest import Digest, HashingReader, HashingWriter

DIR = None
"""Marks a directory entry among the members to write."""
Contents = Mapping[str, bytes | Blob | None]
"""Member name -> content: bytes, a blob to stream from its file, or :data:`DIR`."""
_READ_ERRORS: tuple[type[Exception], ...] = (tarfile.TarError, *DECODE_ERRORS)


def _info(name: str, epoch: int, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name.rstrip("/"))  # tarfile adds the trailing '/' of a directory itself
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.size = size
    info.mtime = epoch
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_tar(out: Path, members: Contents, epoch: int) -> None:
    """Write the archive to a private sibling of ``out`` and rename it over ``out`` once complete.

    The sibling is locked while it is written, so if this process dies the next build removes it
    (see ``builder.fs.lock``); several writers each rename a complete file, and the last wins.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.is_dir():
            raise OutputError(f"{out}: is a directory; an archive output must be a file")
        with private_sibling(out, "tmp", directory=False) as tmp:
            with open(tmp, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for name in sorted(members):
                    _add(tar, name, members[name], epoch)
            tmp.replace(out)
    except OSError as exc:
        raise OutputError(f"{out}: cannot write: {exc.strerror or exc}") from exc


def _add(tar: tarfile.TarFile, name: str, content: bytes | Blob | None, epoch: int) -> None:
    if content is None:
        tar.addfile(_info(name, epoch, directory=True))
    elif isinstance(content, bytes):
        tar.addfile(_info(name, epoch, len(content)), io.BytesIO(content))
    elif content.data is not None:
        tar.addfile(_info(name, epoch, len(content.data)), io.BytesIO(content.data))
    elif content.path is not None:
        _add_file(tar, name, content, content.path, epoch)


def _add_file(tar: tarfile.TarFile, name: str, blob: Blob, path: Path, epoch: int) -> None:
    """Stream one blob file into the archive, checking its size and (unless verified) its digest.

    Only a regular file is read (a FIFO or a device would never end), and only as many bytes as
    its size when opened: the tar header is written with that size.
    """
    try:
        with os.fdopen(open_regular(path), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if blob.size is not None and size != blob.size:
                raise IntegrityError(f"{path}: {size} bytes, descriptor says {blob.size}")
            reader = HashingReader(f, blob.digest.algorithm)  # an unverified blob is checked as it is archived
            tar.addfile(_info(name, epoch, size), reader)
    except NotRegularFileError as exc:
        raise InputError(f"{path}: blob source is {exc.strerror}") from exc
    except FileNotFoundError as exc:
        raise InputError(f"{path}: blob source missing") from exc
    if not blob.verified and reader.digest() != blob.digest:
        raise IntegrityError(f"{path}: content is {reader.digest()}, expected {blob.digest}")


# ---- reading -------------------------------------------------------------------------------


@dataclass
class Member:
    """What one archive member is: an extracted regular file (hashed), a link, or something else."""

    kind: str  # "file", "symlink", "hardlink", "other"
    link: str = ""
    file: Path | None = None
    digest: Digest | None = None
    size: int = 0
    head: bytes = b""


def _name(member: tarfile.TarInfo, archive: Path) -> str:
    """The member's normalised name; refuses absolute names and ``..`` (signs of a hostile archive)."""
    name = member.name
    if name.startswith("/") or ".." in name.split("/"):
        raise InputError(f"{archive}: member {name!r} escapes the archive (absolute or '..')")
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def _stream(archive: Path) -> Iterator[tuple[str, tarfile.TarFile, tarfile.TarInfo]]:
    """(name, tarfile, member) of each member of ``archive`` (plain or compressed), in one pass.

    The archive must be a regular file (a FIFO would block, a device never end); any failure of
    the stream is one InputError naming the archive.
    """
    try:
        fd = open_regular(archive, follow=True)
    except NotRegularFileError as exc:
        raise InputError(f"{archive}: not an archive file: {exc.strerror}") from exc
    except FileNotFoundError as exc:
        raise InputError(f"{archive}: no such archive file") from exc
    except OSError as exc:
        raise InputError(f"{archive}: cannot open the archive: {exc.strerror}") from exc
    seen = False
    with os.fdopen(fd, "rb") as raw:
        try:
            with open_decompressed(raw) as stream:
                for tf, ti in tar_members(stream):
                    seen = True
                    yield _name(ti, archive), tf, ti
        except _READ_ERRORS as exc:
            what = "damaged tar archive" if seen else "not a readable tar archive"
            raise InputError(f"{archive}: {what}: {exc}") from exc


def _extract_file(src: IO[bytes], target: Path, expected: Digest | None, archive: Path, name: str) -> Member:
    """Stream a member to ``target``, hashed on the way; a blob (``expected``: the digest its name
    promises) that is not what its name says is refused before it gets that name."""
    with atomic_file(target) as out:
        head = src.read(8)  # a docker-archive layer's compression is read from its first bytes
        hashed = HashingWriter(out, expected.algorithm if expected is not None else "sha256")
        hashed.write(head)
        copy_hashed(src, hashed)
        if expected is not None and hashed.digest() != expected:
            raise IntegrityError(f"{archive}: member {name!r} content is {hashed.digest()}")
    return Member("file", file=target, digest=hashed.digest(), size=hashed.size, head=head)


def extract(archive: Path, workdir: Path, docker: bool) -> tuple[Path, dict[str, Member]]:
    """Extract the OCI layout files of ``archive`` into a new directory in ``workdir``, blobs verified.

    With ``docker``, every other regular member is extracted too (to ``other/<n>``) and every
    member is described in the returned map, for a docker-archive's ``manifest.json``.
    """
    dest = tmp_path(workdir, "base-")
    (dest / "other").mkdir(parents=True)
    members: dict[str, Member] = {}
    for name, tf, ti in _stream(archive):
        blob = blob_digest(name)
        layout_file = name in ("oci-layout", "index.json") or blob is not None
        if layout_file and not ti.isreg():
            raise InputError(f"{archive}: member {name!r} is not a regular file (links are refused)")
        if ti.isreg() and (layout_file or docker):
            target = dest / name if layout_file else dest / "other" / str(len(members))
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(ti)
            if src is None:
                raise InputError(f"{archive}: member {name!r} cannot be read")
            members[name] = _extract_file(src, target, blob, archive, name)
        elif docker and ti.issym():
            members[name] = Member("symlink", ti.linkname)
        elif docker and ti.islnk():
            members[name] = Member("hardlink", ti.linkname)
        elif docker and not ti.isdir():
            members[name] = Member("other")
    return dest, members
