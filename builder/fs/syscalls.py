"""The few Linux calls the standard library lacks (mount, umount2, unshare, syncfs), through ``ctypes``.

Shared by the sandbox child (its ``/proc``, ``/dev`` and bind mounts) and the overlay driver (its
overlayfs mounts, in a private mount namespace); each failure is an ``OSError`` naming the call.
"""

from __future__ import annotations

import ctypes
import os

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE, MS_SLAVE = 32, 4096, 16384, 1 << 18, 1 << 19
MNT_DETACH = 2
CLONE_NEWNS = 0x00020000

libc = ctypes.CDLL(None, use_errno=True)


def _enc(text: str | None) -> bytes | None:
    return text.encode() if text is not None else None


def _failed(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    if libc.mount(_enc(source), _enc(target), _enc(fstype), ctypes.c_ulong(flags), _enc(data)) != 0:
        raise _failed(f"mount {fstype or 'bind'} on {target}")


def umount(target: str, flags: int = 0) -> None:
    if libc.umount2(_enc(target), flags) != 0:
        raise _failed(f"umount {target}")


def unshare(flags: int) -> None:
    if libc.unshare(flags) != 0:
        raise _failed("unshare")


def syncfs(fd: int) -> None:
    if libc.syncfs(fd) != 0:
        raise _failed("syncfs")
