"""The mount points a run step needs inside its root filesystem, made before it and removed after.

Every path is resolved inside the root (:func:`builder.fs.safepath.join_in_root`), so an image's
``/proc -> /etc`` symlink cannot make the sandbox mount over a host path; what had to be created
is removed afterwards, so the root filesystem is left as the command left it and no mount point
reaches the layer.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from builder.errors import StepError
from builder.fs.safepath import join_in_root


class MountPoints:
    """Creates the mount points a run needs inside the rootfs, and removes the ones it created."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.created: list[Path] = []

    def ensure(self, target: str, is_dir: bool) -> str:
        """Make ``target`` exist (dir or empty file); returns it resolved, relative to the root."""
        resolved = join_in_root(self.root, target)
        rel = resolved.relative_to(self.root)
        missing = []
        probe = resolved
        while probe != self.root and not probe.exists() and not probe.is_symlink():
            missing.append(probe)
            probe = probe.parent
        for path in reversed(missing):
            last = path == resolved
            if path.is_symlink() or (path.exists() and not path.is_dir() and not last):
                raise StepError(f"cannot mount at '/{target}': '/{path.relative_to(self.root)}' is in the way")
            if last and not is_dir:
                path.touch(mode=0o644)
            else:
                path.mkdir(mode=0o755)
            self.created.append(path)
        if resolved.is_symlink() or (is_dir and not resolved.is_dir()) or (not is_dir and resolved.is_dir()):
            raise StepError(f"cannot mount at '/{target}': it is not a {'directory' if is_dir else 'file'}")
        return str(rel)

    def remove_created(self) -> None:
        """Undo ``ensure`` (deepest first); leaves anything that is no longer empty."""
        for path in reversed(self.created):
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()
                else:
                    path.unlink()
        self.created.clear()
