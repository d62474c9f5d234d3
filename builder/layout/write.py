"""Writing an OCI layout: atomically, and concurrently with other builds writing to it.

Writing is atomic (README, "Atomic outputs"). A blob is written in a staging directory (a
temporary file renamed to its digest when whole) and reaches OUT only by a rename, so OUT's
``blobs/sha256/`` only ever holds files named after their content; ``index.json`` is replaced
last, so a reader (or a build killed half way) sees either the old layout or the new one. A new OUT is built whole in a private sibling
directory (locked while in use, removed by the next build if its process died; see
``builder.fs.lock``) and renamed into place; an existing OUT is updated under an ``flock``
on the directory, so two builds writing different tags into one OUT both land.

An update moves its new blobs in only once the new ``index.json`` is complete beside them,
so the last steps are renames alone: a build killed there leaves at most unreferenced blobs,
never an index naming a missing blob, and the next update collects them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from builder.attest.referrer import Referrer
from builder.errors import InputError, IntegrityError, OutputError
from builder.fs.atomic import (
    TMP_PREFIX,
    NotRegularFileError,
    atomic_path,
    clone_file,
    copy_checked,
    rename_noreplace,
    tmp_path,
    write_atomic,
)
from builder.fs.lock import locked_dir, private_sibling, remove_dead_siblings, sibling_prefix
from builder.image import Blob, Image, ImageIndex, layout_blobs
from builder.layout.format import OCI_LAYOUT, blob_path, is_layout, load_index, read_json
from builder.layout.gc import collect_garbage, reachable
from builder.oci.canonical import canonical_json
from builder.oci.descriptor import Descriptor, is_referrer
from builder.oci.digest import Digest
from builder.oci.manifest import REF_NAME, image_index

_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
_REF_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")  # image-spec annotations.md


def _present(root: Path, blob: Blob) -> bool:
    """True if ``root`` already holds the blob (its name is its digest; the size guards against a torn
    file; a FIFO or a link planted there is not a blob, and is replaced)."""
    try:
        st = blob_path(root, blob.digest).lstat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and (blob.size is None or st.st_size == blob.size)


def _store(out: Path, stage: Path, blob: Blob) -> None:
    """Write one blob to ``stage/blobs/<alg>/<hex>``, through a temp file renamed into place when whole.

    Only a verified file of this build's own work directory that nothing else links to is
    hard-linked: anything else (the layer cache's files above all) is cloned or copied, so OUT
    never shares an inode with a file someone else may damage, or that damage to OUT would reach.
    Unverified blobs are copied while hashed, and never renamed into place if wrong.
    """
    dest = blob_path(stage, blob.digest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        if blob.data is not None:  # manifest, config, index: their digests were computed from these bytes
            write_atomic(dest, blob.data)
            return
        if blob.path is None:
            raise OutputError(f"{dest}: blob has no content")
        with atomic_path(dest) as tmp:
            if not blob.verified:
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
    except NotRegularFileError as exc:
        raise InputError(f"{exc.filename}: blob source is {exc.strerror}") from exc
    except FileNotFoundError as exc:
        raise InputError(f"{exc.filename}: blob source missing") from exc


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


def write_layout(out: Path, image: Image | ImageIndex, tag: str, referrers: Sequence[Referrer] = ()) -> None:
    """Record ``image`` under ``tag`` in the OCI layout ``out``, creating it or updating it in place.

    ``referrers`` (attestations about the image or its platforms' images) are listed in
    ``index.json`` beside it, untagged; the referrers of an image the tag no longer leads to
    leave with it.
    """
    check_ref_name(tag, out)
    blobs = referrer_blobs(layout_blobs(image), referrers)
    desc = image.descriptor({REF_NAME: tag})
    attached = [r.descriptor() for r in referrers]
    if not (out.exists() or out.is_symlink()) and _create(out, blobs, [desc, *attached]):
        return
    _update(out, blobs, desc, tag, attached)


def referrer_blobs(blobs: Sequence[Blob], referrers: Sequence[Referrer]) -> list[Blob]:
    """``blobs``, then each referrer's blobs not among them (the empty config is shared by all)."""
    seen = {blob.digest for blob in blobs}
    out = list(blobs)
    for blob in (b for r in referrers for b in r.blobs()):
        if blob.digest not in seen:
            seen.add(blob.digest)
            out.append(blob)
    return out


def check_ref_name(tag: str, out: Path) -> None:
    """Refuse a tag that tools reading ``org.opencontainers.image.ref.name`` would reject."""
    if not _REF_NAME.fullmatch(tag):
        raise OutputError(f"{out}: {tag!r} is not a valid image reference name (like app, app:1.0, acc/app:1)")


def _create(out: Path, blobs: Sequence[Blob], entries: Sequence[Descriptor]) -> bool:
    """Build the layout in a sibling directory and rename it to ``out``; False if ``out`` appeared meanwhile."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with private_sibling(out, "tmp", directory=True) as tmp:
            (tmp / "oci-layout").write_bytes(OCI_LAYOUT)
            for blob in blobs:
                if not _present(tmp, blob):
                    _store(out, tmp, blob)
            (tmp / "index.json").write_bytes(canonical_json(image_index(entries)))
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


def _update(out: Path, blobs: Sequence[Blob], desc: Descriptor, tag: str, attached: Sequence[Descriptor]) -> None:
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
            if not empty and not is_layout(out):
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
                index = image_index([]) if empty else load_index(out / "index.json", OutputError)
                old = index["manifests"]
                entries = _with_referrers(_with_ref(old, desc, tag), attached)
                index["manifests"] = _drop_lost_referrers(old, entries, [stage, out])
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


def _with_referrers(entries: list[Any], attached: Sequence[Descriptor]) -> list[Any]:
    """``entries`` plus the ``attached`` referrers' descriptors, each listed once."""
    present = {entry.get("digest") for entry in entries if isinstance(entry, dict)}
    return [*entries, *(d.to_json() for d in attached if str(d.digest) not in present)]


def _drop_lost_referrers(old: list[Any], new: list[Any], roots: Sequence[Path]) -> list[Any]:
    """``new`` less the referrers whose subject the update made unreachable: attestations of the image
    a tag led to, once no entry leads to it. Referrers of anything still reachable stay, whoever
    attached them; when a document cannot be read, everything stays."""
    def images(entries: list[Any]) -> list[Any]:
        return [e for e in entries if isinstance(e, dict) and not _is_referrer_json(e)]

    before, after = reachable(roots, images(old)), reachable(roots, images(new))
    if before is None or after is None:
        return new
    lost = before - after
    return [e for e in new if not (_is_referrer_json(e) and _subject(roots, e) in lost)]


def _is_referrer_json(entry: dict[str, Any]) -> bool:
    try:
        return is_referrer(Descriptor.from_json(entry))
    except (ValueError, KeyError, TypeError, AttributeError):
        return False


def _subject(roots: Sequence[Path], entry: dict[str, Any]) -> Digest | None:
    """The subject digest a referrer entry's manifest names, or None if it cannot be read."""
    for root in roots:
        try:
            return Digest.parse(str(read_json(blob_path(root, Digest.parse(str(entry["digest"]))))["subject"]["digest"]))
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            continue
    return None


def _remove_stale_tmp(root: Path) -> None:
    """Temporary files of builds that died; safe under the lock, which every writer holds."""
    for entry in root.iterdir():
        if entry.name.startswith(TMP_PREFIX):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
