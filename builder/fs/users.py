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


def resolve_owner(spec: str | None, passwd: bytes | None, group: bytes | None) -> tuple[int, int]:
    """``"1000:1000"``, ``"app"``, ``"app:staff"``, ``"0"`` -> (uid, gid) of files a step writes.

    One rule with a process's user (:func:`resolve_user`): a name without a group takes its
    primary group from the image's /etc/passwd (``owner: lp`` is 4:7 on Debian), as Docker's and
    Buildah's ``COPY --chown`` do. A bare number without a group is ``uid:uid``, as Docker's
    ``COPY --chown=1000`` documents, whether or not /etc/passwd has it.
    """
    if spec is None or spec == "":
        return 0, 0
    user, sep, _ = spec.partition(":")
    if user.isdigit() and not sep:
        if int(user) > _MAX_ID:
            raise InputError(f"owner {spec!r}: id out of range")
        return int(user), int(user)
    who = resolve_user(spec, passwd, group)
    return who.uid, who.gid


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
    groups. A name the image does not know is an error. :func:`resolve_owner` (file ownership)
    follows the same rule, but for a bare uid (Docker's ``--chown=UID`` gives ``UID:UID``).
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
