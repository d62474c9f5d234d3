"""Which extended attributes an image keeps: one policy for every step that reads them.

Two sources, one rule. From an **archive** (a ``rootfs:`` tarball, a base's layer) the xattrs
are image content already and are kept, except the build host's artefacts that would act if the
tree were used again: ``security.selinux`` (a label of some host's policy) and overlayfs'
own bookkeeping (``trusted.overlay.*``/``user.overlay.*``, and fuse-overlayfs'
``user.fuseoverlayfs.*``, which make a directory opaque or
redirect it when the tree becomes a lower directory). From a **host filesystem** (a ``copy``
from the build context or a stage, a ``run`` step's working root) only what an image means is
read: ``user.*`` and ``trusted.*`` data and file capabilities (``security.capability``, as a
v2 capability: a v3 one names a user namespace's root uid that means nothing in an image), the
same artefacts left out; ACLs and every other namespace are the host's state.
"""

from __future__ import annotations

import os
import struct

CAPABILITY = "security.capability"
HOST_ARTEFACTS = ("security.selinux", "trusted.overlay.", "user.overlay.", "user.fuseoverlayfs.")
"""Prefixes of xattrs never kept, from any source."""
_FROM_HOST = ("user.", "trusted.")

# VFS capability revisions (linux/capability.h): v3 adds the owning user namespace's root uid.
_VFS_CAP_REVISION_MASK = 0xFF000000
_VFS_CAP_REVISION_2 = 0x02000000
_VFS_CAP_REVISION_3 = 0x03000000
_VFS_CAP_FLAGS_EFFECTIVE = 0x000001


def keep_from_archive(name: str) -> bool:
    """Whether an xattr an archive member carries goes into the image."""
    return not name.startswith(HOST_ARTEFACTS)


def cap_v2(value: bytes) -> bytes:
    """A namespaced (v3) file capability as the equivalent v2 one.

    ``setcap`` in a user namespace writes v3, which names the namespace's root uid; in an
    image that uid means nothing (umoci's note in ``tar_generate.go``), so the rootid is dropped.
    """
    if len(value) != 24:
        return value
    (magic,) = struct.unpack_from("<I", value)
    if magic & _VFS_CAP_REVISION_MASK != _VFS_CAP_REVISION_3:
        return value
    return struct.pack("<I", _VFS_CAP_REVISION_2 | (magic & _VFS_CAP_FLAGS_EFFECTIVE)) + value[4:20]


def read_xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    """The image-worthy xattrs of the host file ``path`` (not following a symlink), sorted by name.

    A filesystem without xattr support, or a name that vanishes between list and get, gives
    no xattrs rather than a failed build: they are optional metadata.
    """
    try:
        names = os.listxattr(path, follow_symlinks=False)
        if not names:
            return ()
        out = []
        for name in names:
            if name == CAPABILITY:
                out.append((name, cap_v2(os.getxattr(path, name, follow_symlinks=False))))
            elif name.startswith(_FROM_HOST) and not name.startswith(HOST_ARTEFACTS):
                out.append((name, os.getxattr(path, name, follow_symlinks=False)))
    except OSError:
        return ()
    return tuple(sorted(out))
