"""Rootless builds: the subordinate id ranges of ``/etc/subuid``/``/etc/subgid`` and user namespaces.

A build that is not root and has run steps is re-executed in a user namespace where uid 0 is the
user and uids 1..N are the user's subordinate range (``newuidmap``/``newgidmap`` write the map, as
for Podman and Buildah). Inside it pybuild works as root does: layers are extracted with their
owners, ``apt-get`` can switch to ``_apt`` and ``chown`` to any user, and the layers come out as
a root build's. Without a range (or without the ``uidmap`` tools) only the user's own id maps to 0
and commands that switch users or ``chown`` fail; the build says which piece is missing.
Nothing here starts a process: :func:`builder.sandbox.run_in_user_namespace` does.
"""

from __future__ import annotations

import os
import pwd
import shutil
from dataclasses import dataclass
from pathlib import Path

SUBUID, SUBGID = Path("/etc/subuid"), Path("/etc/subgid")
_MAX_FILE = 1 << 20  # a subordinate id file is a few lines; a bigger one is not read


@dataclass(frozen=True)
class IdMap:
    """Uid and gid 0 are ours; 1..count are the subordinate range starting at ``*_start``."""

    uid: int
    gid: int
    uid_start: int
    uid_count: int
    gid_start: int
    gid_count: int

    def uid_args(self) -> list[str]:
        return ["0", str(self.uid), "1", "1", str(self.uid_start), str(self.uid_count)]

    def gid_args(self) -> list[str]:
        return ["0", str(self.gid), "1", "1", str(self.gid_start), str(self.gid_count)]


def _range(path: Path, names: tuple[str, ...]) -> tuple[int, int] | None:
    """The first ``name:start:count`` line for one of ``names`` (a user name or a numeric id)."""
    try:
        with open(path, "rb") as f:
            text = f.read(_MAX_FILE).decode("utf-8", "replace")
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in names and parts[1].isdigit() and parts[2].isdigit() and int(parts[2]) > 0:
            return int(parts[1]), int(parts[2])
    return None


def subordinate_ids() -> tuple[IdMap | None, str]:
    """The full mapping for this (non-root) user, or None and what is missing (one phrase)."""
    uid, gid = os.geteuid(), os.getegid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    names = (name, str(uid))
    missing = [tool for tool in ("newuidmap", "newgidmap") if shutil.which(tool) is None]
    if missing:
        return None, f"{' and '.join(missing)} (Debian/Ubuntu: apt-get install uidmap)"
    uids, gids = _range(SUBUID, names), _range(SUBGID, names)
    if uids is None or gids is None:
        where = " and ".join(str(p) for p, r in ((SUBUID, uids), (SUBGID, gids)) if r is None)
        example = f"usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {name}"
        return None, f"a subordinate id range for user {name!r} in {where} (e.g. '{example}')"
    return IdMap(uid, gid, uids[0], uids[1], gids[0], gids[1]), ""


def in_user_namespace() -> bool:
    """True inside a user namespace other than the initial one (uid 0 there is not host root)."""
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return False
