"""Owner names -> numeric ids, through the image's own /etc/passwd and /etc/group (never the host's)."""

from __future__ import annotations

from builder.errors import InputError


def _table(content: bytes | None, id_field: int) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for line in (content or b"").decode("utf-8", "replace").splitlines():
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
