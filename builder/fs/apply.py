"""Apply layer tars onto a directory: a build's working rootfs, or the rootfs of ``pybuild unpack``.

Layers are untrusted and tarfile's filters do not fit a rootfs (they refuse device nodes and absolute links a rootfs has), so extraction
is ours. Nothing outside ``root`` is touched: an entry's *parent* is resolved component by
component with chroot semantics (symlinks followed, an absolute target restarts at ``root``,
``..`` stops there) through directory fds opened ``O_NOFOLLOW``, and the last component is only
touched through that fd by calls that never follow it. So ``a -> /etc``, ``a/passwd`` writes
``root/etc/passwd``. Semantics are image-spec ``layer.md``: whiteouts and
opaque markers delete what lower layers made, never what the same layer added, whatever the
entry order; dir over dir updates attributes, any other collision replaces the old path.

Not root: owners that cannot be set stay the caller's, device nodes that cannot be made are
skipped (nothing is created for them), and directories keep ``u+rwx`` so that later entries and
layers can still write into them.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from builder.errors import InputError, IntegrityError, OutputError
from builder.fs.safepath import MAX_LINKS
from builder.image import LayerBlob
from builder.layer.decompress import DECODE_ERRORS, open_decompressed
from builder.layer.entry import Change, Entry, Kind, Opaque, Whiteout
from builder.layer.reader import read_layer
from builder.oci.digest import HashingReader
from builder.userns import in_user_namespace

_CHUNK = 1 << 20
_MAX_CACHED = 256
_ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_DIR_FLAGS = _ROOT_FLAGS | os.O_NOFOLLOW
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_NODES = {Kind.CHAR: stat.S_IFCHR, Kind.BLOCK: stat.S_IFBLK, Kind.FIFO: stat.S_IFIFO}


class _Reader(HashingReader):
    """A HashingReader whose read failures are InputError (a BadGzipFile is an OSError, which would
    otherwise read as a failed write)."""

    def __init__(self, raw: BinaryIO, label: str, algorithm: str,
                 on_progress: Callable[[int], None] | None = None) -> None:
        super().__init__(raw, algorithm)
        self._label = label
        self._on_progress = on_progress

    def read(self, n: int = -1) -> bytes:
        try:
            data = super().read(n)
        except DECODE_ERRORS as exc:
            raise InputError(f"{self._label}: unreadable layer data ({exc})") from exc
        if self._on_progress is not None and data:
            self._on_progress(len(data))
        return data


def apply_blob(root: Path, blob: LayerBlob, on_progress: Callable[[int], None] | None = None,
               overlay: OverlayForm | None = None) -> None:
    """Apply one layer blob (compression detected by content) onto ``root``, checking digest and diff_id.

    With ``overlay``, ``root`` is empty and the layer is extracted alone, as an overlayfs lower
    directory (see :class:`OverlayForm`). ``on_progress`` gets the uncompressed bytes as they are read (a large base takes seconds).

    Every byte is hashed, trailing bytes too. When applying fails the digest is still checked, so
    a corrupt blob says IntegrityError, not some tar error. Entries land before the digests are
    known (one pass): when this raises, the caller discards ``root``.
    """
    label = f"layer {blob.digest.short}"
    failure: InputError | OutputError | None = None
    try:
        with open(blob.path, "rb") as f:
            raw = _Reader(f, label, blob.digest.algorithm)
            decoded = open_decompressed(raw)  # type: ignore[arg-type]
            tar = _Reader(decoded, label, blob.diff_id.algorithm, on_progress)
            try:
                try:
                    apply_layer(root, tar, label=label, overlay=overlay)  # type: ignore[arg-type]
                    tar.drain(_CHUNK)  # the padding after the end marker is part of the diff_id
                finally:
                    decoded.close()  # stops the decoding thread before this thread reads ``raw`` again
            except (InputError, OutputError) as exc:
                failure = exc
            raw.drain(_CHUNK)
    except OSError as exc:
        raise InputError(f"{label}: cannot read {str(blob.path)!r}: {exc.strerror}") from exc
    if raw.digest() != blob.digest or raw.size != blob.descriptor.size:
        raise IntegrityError(f"layer blob {blob.digest} does not match its descriptor ({raw.size} bytes, "
                             f"{raw.digest()})") from failure
    if failure is not None:
        raise failure
    if tar.digest() != blob.diff_id:
        raise IntegrityError(f"layer blob {blob.digest}: uncompressed content does not match diff_id {blob.diff_id}")


def unpack_layers(root: Path, layers: Sequence[LayerBlob]) -> None:
    """All ``layers``, bottom to top, into ``root`` (created if missing): an image's filesystem."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {str(root)!r}: {exc.strerror}") from exc
    for blob in layers:
        apply_blob(root, blob)


class OverlayForm:
    """Extracting one layer alone as an overlayfs lower directory, rather than applying it.

    A whiteout becomes what overlayfs reads as one, a 0/0 character device, and an opaque marker
    the ``NS.overlay.opaque`` xattr (``trusted`` as root, ``user`` in a user namespace, where
    overlayfs is mounted with ``userxattr``). What overlayfs would read differently from the layer
    makes the extraction *unsafe* (:attr:`unsafe` says why): a directory the layer does not
    list but its entries need (made here with made-up attributes, it would hide the lower
    layers' attributes of that directory, where applying keeps them), or a real 0/0 character
    device (overlayfs would take it for a whiteout). A run step never mounts an unsafe snapshot.
    """

    def __init__(self, namespace: str) -> None:
        self.opaque_xattr = f"{namespace}.overlay.opaque"
        self.implicit: set[str] = set()  # directories made for an entry's sake
        self.listed: set[str] = set()  # directories the layer has an entry for
        self.unsafe = ""

    def finish(self) -> None:
        made = sorted(self.implicit - self.listed - {""})
        if made and not self.unsafe:
            self.unsafe = f"the layer does not list directory '/{made[0]}'"


def apply_layer(root: Path, tar_stream: BinaryIO, *, label: str = "layer", overlay: OverlayForm | None = None) -> None:
    """Apply one uncompressed layer tar stream onto ``root``, streamed: InputError for a hostile entry."""
    try:
        root_fd = os.open(root, _ROOT_FLAGS)
    except OSError as exc:
        raise OutputError(f"cannot open {str(root)!r}: {exc.strerror}") from exc
    applier = _Applier(root_fd, label, overlay)
    try:
        for name, change in read_layer(tar_stream, label):
            applier.name = name
            applier.apply(change)
        applier.finish()
        if overlay is not None:
            overlay.finish()
    except (tarfile.TarError, EOFError, UnicodeError, OverflowError) as exc:
        raise InputError(f"{label}: invalid tar data at or after entry {applier.name!r} ({exc})") from exc
    except OSError as exc:
        raise OutputError(f"{label}: cannot apply {applier.name!r} in {str(root)!r}: {exc.strerror or exc}") from exc
    finally:
        applier.close()
        os.close(root_fd)


def read_in_root(root: Path, path: str, limit: int = 1 << 20) -> bytes | None:
    """Regular file ``path`` of the tree at ``root`` (None if it is not one), read as in a chroot.

    Symlinks, the last one included, resolve inside ``root``: an image's ``/etc/passwd ->
    /etc/shadow`` reads the image's shadow, never the host's; only a regular file is opened.
    """
    root_fd = os.open(root, _ROOT_FLAGS)
    try:
        found = _walk(root_fd, path, False, path, leaf=True)
    except InputError:  # a loop, or a file where a directory should be: no such file
        found = None
    finally:
        os.close(root_fd)
    if found is None or not stat.S_ISREG(os.fstat(found[1]).st_mode):
        if found is not None:
            os.close(found[1])
        return None
    with os.fdopen(found[1], "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"{root}: {path!r} is larger than {limit} bytes")
    return data


def _walk(root_fd: int, path: str, create: bool, what: str, leaf: bool = False,
          made: set[str] | None = None) -> tuple[str, int] | None:
    """Directory ``path`` resolved inside the root with chroot semantics: (its path, an fd on it, the caller's).

    Missing directories are made (0755) when ``create``, else the answer is None; with ``leaf`` the last
    component may be a regular file. A non-directory component or a symlink loop: InputError naming ``what``.
    """
    todo, stack, links = [p for p in path.split("/")[::-1] if p not in ("", ".")], list[tuple[str, int]](), 0
    try:
        while todo:
            part = todo.pop()
            if part == "..":  # stops at the root, as in a chroot
                if stack:
                    os.close(stack.pop()[1])
                continue
            here = stack[-1][1] if stack else root_fd
            st = _lstat(part, here)
            if st is None:
                if not create:
                    return None
                os.mkdir(part, 0o755, dir_fd=here)
                os.chmod(part, 0o755, dir_fd=here)  # not the umask's choice
                if made is not None:
                    made.add("/".join([*(n for n, _ in stack), part]))
                st = os.stat(part, dir_fd=here, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_LINKS:
                    raise InputError(f"{what}: too many levels of symbolic links")
                target = os.readlink(part, dir_fd=here)
                while target.startswith("/") and stack:  # an absolute target restarts at the root
                    os.close(stack.pop()[1])
                todo.extend(p for p in target.split("/")[::-1] if p not in ("", "."))
            elif stat.S_ISDIR(st.st_mode):
                stack.append((part, os.open(part, _DIR_FLAGS, dir_fd=here)))
            elif leaf and not todo and stat.S_ISREG(st.st_mode):
                stack.append((part, os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=here)))
            else:
                raise InputError(f"{what}: '/{'/'.join([*(n for n, _ in stack), part])}' is not a directory")
        return "/".join(n for n, _ in stack), (stack.pop()[1] if stack else os.dup(root_fd))
    finally:
        for _, fd in stack:
            os.close(fd)


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


class _Applier:
    """Applying one layer: the paths it added, deferred directory times, cached directory fds."""

    def __init__(self, root_fd: int, label: str, overlay: OverlayForm | None = None) -> None:
        self.root_fd, self.label, self.rootless = root_fd, label, os.geteuid() != 0
        self.overlay = overlay
        # root of a user namespace may chown only to the ids its map has (an image's uid 200000 is EINVAL)
        self.partial_ids = self.rootless or in_user_namespace()
        self.name = ""  # the entry being applied, for messages
        self.keep: set[str] = set()  # paths this layer added, and their ancestors: whiteouts spare them
        self.dir_times: list[tuple[str, int]] = []
        self.cache: dict[str, tuple[str, int]] = {}  # parent as named -> (resolved path, fd)
        self.stale = False  # something was removed: cached resolutions may be wrong

    def close(self) -> None:
        for _, fd in self.cache.values():
            os.close(fd)
        self.cache.clear()

    def fail(self, why: str) -> InputError:
        return InputError(f"{self.label}: entry {self.name!r}: {why}")

    def dir(self, path: str, create: bool) -> tuple[str, int] | None:
        """Resolved directory ``path`` and an fd on it, valid until the next entry (cache-owned)."""
        if path not in self.cache:
            found = _walk(self.root_fd, path, create, f"{self.label}: entry {self.name!r}",
                          made=self.overlay.implicit if self.overlay is not None else None)
            if found is None:
                return None
            self.cache[path] = found
        return self.cache[path]

    def apply(self, change: Change) -> None:
        """One change (checked by the layer reader): a whiteout, an opaque marker or an addition."""
        if self.stale or len(self.cache) > _MAX_CACHED:
            self.close()
            self.stale = False
        head, _, base = change.path.rpartition("/")
        if self.overlay is not None and isinstance(change, (Whiteout, Opaque)):
            self.mark(change, head, base)
        elif isinstance(change, (Whiteout, Opaque)):
            found = self.dir(change.path if isinstance(change, Opaque) else head, create=False)
            names = [] if found is None else os.listdir(found[1]) if isinstance(change, Opaque) else [base]
            for name in names:
                assert found is not None
                self.prune(found[1], name, f"{found[0]}/{name}".lstrip("/"))
        elif not change.path:
            self.set_dir(self.root_fd, "", change, "")
        else:
            self.add(change, head, base)

    def mark(self, change: Whiteout | Opaque, head: str, base: str) -> None:
        """Overlay form: a whiteout as a 0/0 character device (unless this layer adds the path), an
        opaque marker as the xattr on its directory (made if the layer lists it later)."""
        assert self.overlay is not None
        if isinstance(change, Opaque):
            found = self.dir(change.path, create=True)
            assert found is not None
            os.setxattr(found[1], self.overlay.opaque_xattr, b"y")
            return
        found = self.dir(head, create=True)
        assert found is not None
        path = f"{found[0]}/{base}".lstrip("/")
        if path in self.keep or _lstat(base, found[1]) is not None:
            return  # this layer adds the path (in either order, the addition wins)
        os.mknod(base, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=found[1])

    def prune(self, dir_fd: int, name: str, path: str) -> None:
        """Delete ``path`` as far as it came from lower layers: what this layer added stays."""
        st = _lstat(name, dir_fd)
        if st is None:
            return
        if path not in self.keep:
            self.remove(dir_fd, name, st)
        elif stat.S_ISDIR(st.st_mode):
            fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            try:
                for child in os.listdir(fd):
                    self.prune(fd, child, f"{path}/{child}")
            finally:
                os.close(fd)

    def remove(self, dir_fd: int, name: str, st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=dir_fd)  # fd-based: never follows a symlink inside
        else:
            os.unlink(name, dir_fd=dir_fd)
        self.stale = self.stale or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)

    def link_source(self, e: Entry) -> tuple[int, str, os.stat_result]:
        """A hardlink's target, resolved like any path: it must exist inside root and not be a directory."""
        head, _, base = e.link.rpartition("/")
        found = self.dir(head, create=False) if base else None
        st = _lstat(base, found[1]) if found else None
        if found is None or st is None or stat.S_ISDIR(st.st_mode):
            raise self.fail(f"hardlink target {e.link!r} does not exist or is a directory")
        return found[1], base, st  # a symlink is linked itself (link() does not follow): it stays inside

    def add(self, e: Entry, head: str, base: str) -> None:
        """Create (for dir over dir: update) one path; any other path already there is replaced."""
        source = self.link_source(e) if e.kind is Kind.HARDLINK else None
        found = self.dir(head, create=True)
        assert found is not None  # create=True makes what is missing
        path, fd = f"{found[0]}/{base}".lstrip("/"), found[1]
        old = _lstat(base, fd)
        parts = path.split("/")  # this path and its ancestors came with this layer
        self.keep.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
        if self.overlay is not None:
            self.overlay.listed.add(path)
            if e.kind is Kind.CHAR and (e.devmajor, e.devminor) == (0, 0) and not self.overlay.unsafe:
                self.overlay.unsafe = f"'/{path}' is a 0/0 character device, which overlayfs reads as a whiteout"
        if e.kind is Kind.DIR:
            if old is None or not stat.S_ISDIR(old.st_mode):
                if old is not None:
                    self.remove(fd, base, old)
                os.mkdir(base, 0o700, dir_fd=fd)
            self.set_dir(fd, base, e, path)
            return
        if source and old and (old.st_dev, old.st_ino) == (source[2].st_dev, source[2].st_ino):
            return  # already that very file
        if old is not None:
            self.remove(fd, base, old)
        if source is not None:  # the inode keeps the target's attributes, as GNU tar leaves them
            os.link(source[1], base, src_dir_fd=source[0], dst_dir_fd=fd, follow_symlinks=False)
        elif e.kind is Kind.SYMLINK:
            os.symlink(e.link, base, dir_fd=fd)  # as written; never followed
            self.set_meta(e, None, fd, base)
        elif e.kind in _NODES:
            kind = _NODES[e.kind]
            try:
                os.mknod(base, kind | 0o600, os.makedev(e.devmajor, e.devminor), dir_fd=fd)
            except PermissionError:
                if kind == stat.S_IFIFO:
                    raise
                return  # no privilege for device nodes (not root, root in a user namespace): none is made
            self.set_meta(e, None, fd, base)
        else:  # regular files (the reader makes types tarfile does not know regular files too)
            with os.fdopen(os.open(base, _FILE_FLAGS, 0o600, dir_fd=fd), "wb") as dst:
                if e.content is not None:
                    with e.content() as src:
                        shutil.copyfileobj(src, dst, _CHUNK)
                dst.flush()  # before the mtime is set
                self.set_meta(e, dst.fileno(), fd, base)

    def set_dir(self, parent: int, name: str, e: Entry, path: str) -> None:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent) if name else os.dup(parent)
        try:
            self.set_meta(e, fd, parent, name)
        finally:
            os.close(fd)
        self.dir_times.append((path, int(e.mtime * 1_000_000_000)))

    def set_meta(self, e: Entry, fd: int | None, parent: int, name: str) -> None:
        """Owner, mode (after chown: it clears setuid), xattrs, mtime; through ``fd``, else by name, no-follow."""
        where, at, follow = (name, parent, False) if fd is None else (fd, None, True)
        try:
            os.chown(where, e.uid, e.gid, dir_fd=at, follow_symlinks=follow)
        except OSError as exc:
            if not (self.partial_ids and exc.errno in (errno.EPERM, errno.EINVAL)):
                raise
        if e.kind is not Kind.SYMLINK:  # the fd, or a node made just now: nothing to follow
            mode = e.mode | (0o700 if self.rootless and e.kind is Kind.DIR else 0)
            os.chmod(where, mode, dir_fd=at)
        for key, value in e.xattrs:
            try:
                os.setxattr(f"/proc/self/fd/{parent}/{name}" if fd is None else fd, key, value,
                            follow_symlinks=fd is not None)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM, errno.EACCES):
                    raise
        if e.kind is not Kind.DIR:
            ns = int(e.mtime * 1_000_000_000)
            os.utime(where, ns=(ns, ns), dir_fd=at, follow_symlinks=follow)

    def finish(self) -> None:
        """Directory times, last (writing children changes them), each directory found again without
        following symlinks: a later entry may have replaced an ancestor by a link (then nothing is set)."""
        self.name = ""
        for path, ns in self.dir_times:
            fd = os.dup(self.root_fd)
            try:
                for part in filter(None, path.split("/")):
                    fd, old = os.open(part, _DIR_FLAGS, dir_fd=fd), fd
                    os.close(old)
                os.utime(fd, ns=(ns, ns))
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    raise
            finally:
                os.close(fd)
