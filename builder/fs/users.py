"""Owner names -> numeric ids, through the image's own /etc/passwd and /etc/group (never the host's)."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class ProcessUser:
    """Who a ``run`` step's command runs as."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def resolve_user(spec: str | None, passwd: bytes | None, group: bytes | None) -> ProcessUser:
    """``user:`` of a run step, as a container runtime resolves ``User``: a name or uid gets its
    primary group from the image's /etc/passwd (0 for a uid it does not list), plus the groups
    /etc/group lists it in; ``uid:gid`` / ``name:group`` set the group explicitly."""
    user, sep, grp = (spec or "0").partition(":")
    entries = [line.split(":") for line in (passwd or b"").decode("utf-8", "replace").splitlines()]
    rows = [e for e in entries if len(e) >= 6 and e[2].isdigit() and e[3].isdigit()]
    match = next((e for e in rows if (e[2] == user if user.isdigit() else e[0] == user)), None)
    if match is None and not user.isdigit():
        raise InputError(f"unknown user {user!r}: not in the image's /etc/passwd")
    uid = int(user) if user.isdigit() else int(match[2])  # type: ignore[index]
    gid = int(match[3]) if match else 0
    home = match[5] if match and match[5] else ("/root" if uid == 0 else "/")
    if sep:
        gid = resolve_owner(f"0:{grp}", passwd, group)[1]
    name = match[0] if match else None
    extra: list[int] = []
    for line in (group or b"").decode("utf-8", "replace").splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[2].isdigit() and name and name in fields[3].split(","):
            extra.append(int(fields[2]))
    return ProcessUser(uid, gid, tuple(sorted({gid, *extra})), home)
