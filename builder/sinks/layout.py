"""OCI image layouts on disk: written atomically and concurrently, read with every blob checked.

Writing is atomic (README, "Atomic outputs"). A blob is written to a temporary file outside
``blobs/<alg>/`` and renamed into place, so ``blobs/sha256/`` only ever holds files named
after their content; ``index.json`` is replaced last, so a reader (or a build killed half
way) sees either the old layout or the new one. A new OUT is built whole in a private sibling
directory (locked while in use, removed by the next build if its process died; see
``builder.sinks.lock``) and renamed into place; an existing OUT is updated under an ``flock``
on the directory, so two builds writing different tags into one OUT both land.

An update moves its new blobs in only once the new ``index.json`` is complete beside them,
so the last steps are renames alone: a build killed there leaves at most unreferenced blobs,
never an index naming a missing blob, and the next update collects them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from builder.errors import InputError, IntegrityError, OutputError
from builder.image import Blob, Image, ImageIndex, LayerBlob, image_from, layout_blobs, manifest_blobs
from builder.oci.canonical import canonical_json, json_object
from builder.oci.descriptor import Descriptor, select_platform
from builder.oci.digest import Digest
from builder.oci.manifest import REF_NAME, image_index
from builder.oci.mediatypes import INDEX_TYPES, MANIFEST_TYPES
from builder.oci.platform import Platform
from builder.sinks.lock import (
    TMP_PREFIX,
    NotRegularFileError,
    clone_file,
    copy_checked,
    locked_dir,
    open_regular,
    private_sibling,
    read_regular,
    remove_dead_siblings,
    rename_noreplace,
    sibling_prefix,
    tmp_path,
    write_atomic,
)

OCI_LAYOUT = canonical_json({"imageLayoutVersion": "1.0.0"})
MAX_JSON = 8 << 20
"""index.json, manifests, indexes and configs larger than this are refused, never loaded: the
registry client's manifest limit (registries take at least 4 MB), so what pybuild pulls it can
read back, and a 400 MiB ``index.json`` costs nothing."""
_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
_REF_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")  # image-spec annotations.md


def blob_path(root: Path, digest: Digest) -> Path:
    return root / "blobs" / digest.algorithm / digest.hex


def _present(root: Path, blob: Blob) -> bool:
    """True if ``root`` already holds the blob (its name is its digest; the size guards against a torn
    file; a FIFO or a link planted there is not a blob, and is replaced)."""
    try:
        st = blob_path(root, blob.digest).lstat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and (blob.size is None or st.st_size == blob.size)


def _store(out: Path, stage: Path, blob: Blob) -> None:
    """Write one blob to ``stage/blobs/<alg>/<hex>`` through a temp file in ``stage``.

    Only a verified file of this build's own work directory that nothing else links to is
    hard-linked: anything else (the layer cache's files above all) is cloned or copied, so OUT
    never shares an inode with a file someone else may damage, or that damage to OUT would reach.
    Unverified blobs are copied while hashed, and never renamed into place if wrong.
    """
    dest = blob_path(stage, blob.digest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(stage)
    try:
        if blob.data is not None:  # manifest, config, index: their digests were computed from these bytes
            with open(tmp, "xb") as f:
                f.write(blob.data)
        elif blob.path is None:
            raise OutputError(f"{dest}: blob has no content")
        elif not blob.verified:
            copy_checked(blob.path, tmp, blob.digest, blob.size)
        elif _ours(out, blob.path):
            try:
                tmp.hardlink_to(blob.path)
            except OSError:  # another filesystem, or links not allowed
                clone_file(blob.path, tmp, blob.size)
            if blob.size is not None and tmp.stat().st_size != blob.size:
                raise IntegrityError(f"{blob.path}: {tmp.stat().st_size} bytes, descriptor says {blob.size}")
        else:
            clone_file(blob.path, tmp, blob.size)
        tmp.replace(dest)
    except NotRegularFileError as exc:
        raise InputError(f"{exc.filename}: blob source is {exc.strerror}") from exc
    except FileNotFoundError as exc:
        raise InputError(f"{exc.filename}: blob source missing") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _ours(out: Path, path: Path) -> bool:
    """True for a regular file inside one of OUT's private siblings (the build's work directory)
    that has no other link: a blob this build wrote, which may become OUT's without a copy."""
    try:
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(out.parent))
        st = path.lstat()
    except (ValueError, OSError):
        return False
    private = bool(rel.parts) and rel.parts[0].startswith(sibling_prefix(out))
    return private and stat.S_ISREG(st.st_mode) and st.st_nlink == 1


def write_layout(out: Path, image: Image | ImageIndex, tag: str) -> None:
    """Record ``image`` under ``tag`` in the OCI layout ``out``, creating it or updating it in place."""
    check_ref_name(tag, out)
    blobs = layout_blobs(image)
    desc = image.descriptor({REF_NAME: tag})
    if not (out.exists() or out.is_symlink()) and _create(out, blobs, desc):
        return
    _update(out, blobs, desc, tag)


def check_ref_name(tag: str, out: Path) -> None:
    """Refuse a tag that tools reading ``org.opencontainers.image.ref.name`` would reject."""
    if not _REF_NAME.fullmatch(tag):
        raise OutputError(f"{out}: {tag!r} is not a valid image reference name (like app, app:1.0, acc/app:1)")


def _create(out: Path, blobs: Sequence[Blob], desc: Descriptor) -> bool:
    """Build the layout in a sibling directory and rename it to ``out``; False if ``out`` appeared meanwhile."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with private_sibling(out, "tmp", directory=True) as tmp:
            (tmp / "oci-layout").write_bytes(OCI_LAYOUT)
            for blob in blobs:
                if not _present(tmp, blob):
                    _store(out, tmp, blob)
            (tmp / "index.json").write_bytes(canonical_json(image_index([desc])))
            try:
                rename_noreplace(tmp, out)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    return False  # another build created OUT first: add to it instead
                raise
            return True
    except OSError as exc:
        raise OutputError(f"{out}: cannot create: {_why(exc, out)}") from exc


def _why(exc: OSError, out: Path) -> str:
    """``strerror`` of ``exc``, after the file it is about when that is not ``out`` itself."""
    if exc.filename and exc.strerror and str(exc.filename) != str(out):
        return f"{exc.filename}: {exc.strerror}"
    return str(exc.strerror or exc)


def _update(out: Path, blobs: Sequence[Blob], desc: Descriptor, tag: str) -> None:
    """Add the blobs and the tag to an existing layout, holding its lock throughout.

    New blobs are first staged in ``OUT/.tmp-*/`` and only moved into ``blobs/`` once all of
    them are complete and checked, so a failing blob leaves OUT exactly as it was.
    """
    if not out.is_dir():
        raise OutputError(f"{out}: exists and is not a directory")
    remove_dead_siblings(out)
    with locked_dir(out):
        try:
            empty = not any(out.iterdir())
            if not empty and not ((out / "oci-layout").is_file() and (out / "index.json").is_file()):
                raise OutputError(f"{out}: exists and is not an OCI image layout (no oci-layout or index.json)")
            _remove_stale_tmp(out)
            stage = tmp_path(out)
            stage.mkdir()
            try:
                for blob in blobs:
                    if not _present(out, blob):
                        _store(out, stage, blob)
                if empty:
                    write_atomic(out / "oci-layout", OCI_LAYOUT)
                index = image_index([]) if empty else _load_index(out / "index.json", OutputError)
                index["manifests"] = _with_ref(index["manifests"], desc, tag)
                (stage / "index.json").write_bytes(canonical_json(index))  # complete before any blob moves
                _move_blobs(stage, out)
                (stage / "index.json").replace(out / "index.json")
            finally:
                shutil.rmtree(stage, ignore_errors=True)
                with contextlib.suppress(OSError):  # best effort: garbage never breaks a layout
                    collect_garbage(out)  # after success the old tag's blobs; after a failure, ours
        except OSError as exc:
            raise OutputError(f"{out}: cannot update: {_why(exc, out)}") from exc


def _move_blobs(stage: Path, out: Path) -> None:
    staged = stage / "blobs"
    for algdir in staged.iterdir() if staged.is_dir() else ():
        (out / "blobs" / algdir.name).mkdir(parents=True, exist_ok=True)
        for blob in algdir.iterdir():
            blob.replace(out / "blobs" / algdir.name / blob.name)


def _with_ref(entries: list[Any], desc: Descriptor, tag: str) -> list[Any]:
    """``entries`` with the one tagged ``tag`` replaced in place (duplicates dropped) or ``desc`` appended."""
    result: list[Any] = []
    placed = False
    for entry in entries:
        if isinstance(entry, dict) and (entry.get("annotations") or {}).get(REF_NAME) == tag:
            if not placed:
                result.append(desc.to_json())
                placed = True
        else:
            result.append(entry)
    return result if placed else [*result, desc.to_json()]


def _load_index(path: Path, error: type[InputError | OutputError]) -> dict[str, Any]:
    try:
        index = read_json(path)
    except (OSError, ValueError, RecursionError) as exc:
        raise error(f"{path}: cannot read the layout index: {_reason(exc)}") from exc
    if not isinstance(index.get("manifests"), list):
        raise error(f"{path}: not an image index (no manifests list)")
    return index


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from regular file ``path`` of at most :data:`MAX_JSON` bytes (ValueError if larger)."""
    data = read_regular(path, MAX_JSON)
    if len(data) > MAX_JSON:
        raise ValueError(f"larger than {MAX_JSON} bytes")
    return json_object(data)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _remove_stale_tmp(root: Path) -> None:
    """Temporary files of builds that died; safe under the lock, which every writer holds."""
    for entry in root.iterdir():
        if entry.name.startswith(TMP_PREFIX):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def collect_garbage(root: Path) -> None:
    """Delete every blob not reachable from ``index.json``; do nothing if reachability is unknowable."""
    keep = _reachable(root)
    if keep is None or not (root / "blobs").is_dir():
        return
    for algdir in sorted((root / "blobs").iterdir()):
        if algdir.is_dir() and not algdir.is_symlink():
            for entry in algdir.iterdir():
                if (algdir.name, entry.name) not in keep and not entry.is_dir():
                    entry.unlink(missing_ok=True)


def _reachable(root: Path) -> set[tuple[str, str]] | None:
    """(alg, hex) of every blob reachable from index.json: manifests, indexes, configs, layers.

    Blobs of unknown media types are kept but not looked into. None when a manifest or index on
    the way cannot be read: better to keep garbage than to delete what a broken document names.
    """
    try:
        stack: list[Any] = list(read_json(root / "index.json")["manifests"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    keep: set[tuple[str, str]] = set()
    while stack:
        entry = stack.pop()
        try:
            digest = Digest.parse(str(entry.get("digest")))
        except (ValueError, AttributeError):  # not a descriptor
            continue
        if (digest.algorithm, digest.hex) in keep:
            continue
        keep.add((digest.algorithm, digest.hex))
        if entry.get("mediaType") in MANIFEST_TYPES | INDEX_TYPES:
            try:
                doc = read_json(blob_path(root, digest))
                stack += [doc.get("config"), doc.get("subject"), *(doc.get("layers") or [])]
                stack += [*(doc.get("manifests") or []), *(doc.get("blobs") or [])]
            except (OSError, ValueError, AttributeError, TypeError, RecursionError):
                return None
    return keep


# ---- reading -------------------------------------------------------------------------------


def read_layout(path: Path, tag: str | None = None, platform: Platform | None = None) -> Image | ImageIndex:
    """The image tagged ``tag`` in layout ``path``; with ``platform``, one image out of an index.

    ``tag`` None picks the only entry, else the one tagged ``latest``. Manifest, index and
    config bytes are checked against their digests here; layers come back unverified and are
    checked when copied.
    """
    desc = find_ref(layout_entries(path), tag, path)
    return _load(path, desc, platform, 0)


def layout_entries(path: Path) -> list[Descriptor]:
    """The descriptors of a layout's ``index.json``, in its order (each tag's, and untagged ones)."""
    if not path.exists():
        raise InputError(f"{path}: no such OCI image layout")
    if not ((path / "oci-layout").is_file() and (path / "index.json").is_file()):
        raise InputError(f"{path}: not an OCI image layout (no oci-layout or index.json)")
    index = _load_index(path / "index.json", InputError)
    return _descriptors(index["manifests"], path / "index.json")


def read_entry(path: Path, desc: Descriptor) -> Image | ImageIndex:
    """The image or index one of :func:`layout_entries` names, its JSON verified."""
    return _load(path, desc, None, 0)


def find_ref(entries: Sequence[Descriptor], tag: str | None, where: Path) -> Descriptor:
    """The descriptor of ``tag`` (a ref name, or a digest) among a layout's index entries."""
    if tag is None:
        if len(entries) == 1:
            return entries[0]
        tag = "latest"
    for desc in entries:
        if desc.annotations.get(REF_NAME) == tag or str(desc.digest) == tag:
            return desc
    tags = ", ".join(repr(d.annotations[REF_NAME]) for d in entries if REF_NAME in d.annotations) or "none"
    raise InputError(f"{where}: no image tagged {tag!r} (tags present: {tags})")


def _descriptors(entries: Any, where: Path) -> list[Descriptor]:
    try:
        return [Descriptor.from_json(e) for e in entries]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{where}: malformed descriptor: {exc}") from exc


def read_json_blob(root: Path, desc: Descriptor) -> tuple[bytes, dict[str, Any]]:
    """A manifest, index or config: its bytes, checked against the descriptor's size and digest, and its object.

    Only a regular file is opened, and no more than the descriptor's size (+1, to see excess) is read.
    """
    path = blob_path(root, desc.digest)
    if desc.size > MAX_JSON:
        raise InputError(f"{path}: {desc.size} bytes is too large for a manifest, index or config")
    try:
        with os.fdopen(open_regular(path), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(desc.size + 1) if size == desc.size else b""
    except NotRegularFileError as exc:
        raise InputError(f"{path}: blob is {exc.strerror}") from exc
    except OSError as exc:
        raise InputError(f"{path}: blob missing from the layout") from exc
    if size != desc.size or len(data) != desc.size:
        raise IntegrityError(f"{path}: {max(size, len(data))} bytes, descriptor says {desc.size}")
    actual = hashlib.new(desc.digest.algorithm, data).hexdigest()
    if actual != desc.digest.hex:
        raise IntegrityError(f"{path}: content is {desc.digest.algorithm}:{actual}, expected {desc.digest}")
    try:
        return data, json_object(data)
    except (ValueError, RecursionError) as exc:
        raise InputError(f"{path}: invalid JSON: {_reason(exc)}") from exc


def _load(root: Path, desc: Descriptor, platform: Platform | None, depth: int) -> Image | ImageIndex:
    where = blob_path(root, desc.digest)
    if desc.media_type in MANIFEST_TYPES:
        return load_image(root, desc)
    if desc.media_type not in INDEX_TYPES or depth > 3:
        raise InputError(f"{where}: unsupported media type {desc.media_type!r}")
    raw, index = read_json_blob(root, desc)
    children = _descriptors(index.get("manifests") or [], where)
    if platform is not None:
        return _load(root, select_platform(children, platform, where), platform, depth + 1)
    images = []
    for child in children:
        if child.media_type not in MANIFEST_TYPES:
            raise InputError(f"{where}: nested {child.media_type!r} entries are not supported without a platform")
        images.append(load_image(root, child))
    return ImageIndex(raw, tuple(images), desc.media_type)


def load_image(root: Path, desc: Descriptor) -> Image:
    """One image manifest, its config and (unverified) layer blobs from layout ``root``."""
    where = blob_path(root, desc.digest)
    raw_manifest, manifest = read_json_blob(root, desc)
    try:
        cdesc, _ = manifest_blobs(manifest)
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from exc
    raw_config, _ = read_json_blob(root, cdesc)
    try:
        return image_from(desc, raw_manifest, raw_config, lambda ldesc, diff_id: _layer(root, ldesc, diff_id))
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from exc


def _layer(root: Path, desc: Descriptor, diff_id: Digest) -> LayerBlob:
    path = blob_path(root, desc.digest)
    try:
        mode = path.lstat().st_mode
    except OSError:
        raise InputError(f"{path}: layer blob missing from the layout") from None
    if not stat.S_ISREG(mode):  # a FIFO would block its readers, a device never end, a link lead anywhere
        raise InputError(f"{path}: layer blob is not a regular file")
    return LayerBlob(desc, diff_id, path, None, False)
