"""Owner names -> numeric ids, through the image's own /etc/passwd and /etc/group (never the host's)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO

from builder.errors import InputError

MAX_ACCOUNT_FILE = 16 << 20
"""An image's /etc/passwd or /etc/group larger than this is refused, never loaded: a real one with
100,000 accounts is ~6 MB, and one of 512 MiB is a memory bomb."""


def read_account_file(stream: IO[bytes] | None, size: int, path: str) -> bytes:
    """The content of an image's ``path`` (/etc/passwd, /etc/group), ``size`` bytes as its header says.

    Refused (InputError) above :data:`MAX_ACCOUNT_FILE` before anything is read, and never more
    than that is read whatever the header claims, so the readers of layers and tarballs that keep
    these files in memory stay bounded.
    """
    if size > MAX_ACCOUNT_FILE:
        raise InputError(f"/{path.lstrip('/')}: {size} bytes, larger than {MAX_ACCOUNT_FILE} for an account file")
    data = stream.read(MAX_ACCOUNT_FILE + 1) if stream is not None else b""
    if len(data) > MAX_ACCOUNT_FILE:
        raise InputError(f"/{path.lstrip('/')}: larger than {MAX_ACCOUNT_FILE} bytes for an account file")
    return data


def _text(content: bytes | None) -> str:
    if content is not None and len(content) > MAX_ACCOUNT_FILE:
        raise InputError(f"the image's /etc/passwd or /etc/group: {len(content)} bytes, larger than {MAX_ACCOUNT_FILE}")
    return (content or b"").decode("utf-8", "replace")


def _table(content: bytes | None, id_field: int) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for line in _text(content).splitlines():
        fields = line.split(":")
        if len(fields) > id_field and fields[0] and not line.startswith("#"):
            try:
                uid = int(fields[id_field])
            except ValueError:
                continue
            out.setdefault(fields[0], (uid, uid))
    return out


def resolve_owner(spec: str | None, passwd: bytes | None, group: bytes | None) -> tuple[int, int]:
    """``"1000:1000"``, ``"app"``, ``"app:staff"``, ``"0"`` -> (uid, gid); names need the image's files.

    A user (name or number) without a group gets the same number as its gid, as Docker's
    ``COPY --chown`` documents.
    """
    if spec is None or spec == "":
        return 0, 0
    user, sep, grp = spec.partition(":")
    users = _table(passwd, 2)
    if user.isdigit():
        uid = int(user)
    elif user in users:
        uid = users[user][0]
    else:
        raise InputError(f"unknown user {user!r}: not in the image's /etc/passwd")
    gid = uid
    if sep:
        if grp.isdigit():
            gid = int(grp)
        else:
            groups = _table(group, 2)
            if grp not in groups:
                raise InputError(f"unknown group {grp!r}: not in the image's /etc/group")
            gid = groups[grp][0]
    return uid, gid


_MAX_ID = (1 << 32) - 2


@dataclass(frozen=True)
class ProcessUser:
    """Who a process runs as: a ``run`` step's command, or the image's ``User`` in a bundle."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    home: str


def _rows(content: bytes | None, fields: int) -> list[list[str]]:
    """Lines of a passwd/group file as fields; comments and lines with non-numeric ids skipped."""
    rows = []
    for line in _text(content).splitlines():
        row = line.split(":")
        if len(row) >= fields and row[0] and not line.startswith(("#", "+", "-")) and row[2].isdigit():
            rows.append(row)
    return rows


def resolve_user(spec: str | None, passwd: bytes | None, group: bytes | None) -> ProcessUser:
    """``name``, ``uid``, ``uid:gid``, ``name:group`` -> ids, as image-spec conversion.md says.

    A user without a group gets its primary group from the image's /etc/passwd (0 for a uid
    that is not there), and, for a name, the groups of /etc/group that list it as additional
    groups. A name the image does not know is an error. Unlike :func:`resolve_owner` (file
    ownership, Docker COPY rules), this is how a runtime resolves a process's user.
    """
    name, sep, grp = (spec or "").partition(":")
    users = _rows(passwd, 4)
    if not name or name.isdigit():
        uid = int(name or 0)
        row = next((r for r in users if r[2] == str(uid)), None)
    else:
        row = next((r for r in users if r[0] == name), None)
        if row is None:
            raise InputError(f"unknown user {name!r}: not in the image's /etc/passwd")
        uid = int(row[2])
    gid = int(row[3]) if row is not None and row[3].isdigit() else 0
    groups = _rows(group, 3)
    if grp.isdigit():
        gid = int(grp)
    elif grp:
        found = next((r for r in groups if r[0] == grp), None)
        if found is None:
            raise InputError(f"unknown group {grp!r}: not in the image's /etc/group")
        gid = int(found[2])
    if max(uid, gid) > _MAX_ID:
        raise InputError(f"user {spec!r}: id out of range")
    extra: tuple[int, ...] = ()
    if name and not name.isdigit() and not sep:
        extra = tuple(sorted({int(r[2]) for r in groups if len(r) > 3 and name in r[3].split(",")} - {gid}))
    home = row[5] if row is not None and len(row) > 5 and row[5] else ("/root" if uid == 0 else "/")
    return ProcessUser(uid, gid, extra, home)
