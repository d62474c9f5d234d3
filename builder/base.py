"""Base images from local files: an OCI layout, an OCI archive, or a docker-archive (``docker save``).

Archives are untrusted input, read once as a stream with the project's hardened tar reader
(:func:`builder.layer.tarstream.tar_members`: bounded headers, no recursion, no endless skip),
plain or compressed, never with ``tarfile``'s random access, which loads a PAX header whole
however large it claims to be. Only regular files are extracted, under a fresh directory in
``workdir``, with names built from validated components; members named with ``..`` or an
absolute path, and links standing where a layout file should be, are refused. Every extracted
file is hashed on the way: a blob must match its name, so the layers of the returned image are
verified. The returned image's layer paths live in ``workdir``: keep it until the build is done
with them.

A docker-archive names its files in ``manifest.json``, which ``docker save`` writes after them,
so every regular member of one is extracted (to a numbered file) in the same pass, and links are
remembered: ``docker save`` stores a layer that appears twice once and links the second to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import posixpath
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from builder.errors import InputError, IntegrityError
from builder.image import Image, ImageIndex, LayerBlob, image_from, select_image
from builder.layer.decompress import DECODE_ERRORS, open_decompressed
from builder.layer.tarstream import tar_members
from builder.layout.format import MAX_JSON, is_layout
from builder.layout.read import find_ref, read_layout
from builder.oci.canonical import canonical_json, json_object, json_value
from builder.oci.config import diff_ids
from builder.oci.descriptor import Descriptor
from builder.oci.digest import Digest
from builder.oci.manifest import image_manifest
from builder.oci.mediatypes import MediaType
from builder.oci.platform import Platform
from builder.sinks.archive import docker_repo_tag
from builder.sinks.lock import NotRegularFileError, open_regular, read_regular, tmp_path

KINDS = ("oci", "oci-archive", "docker-archive")
_BLOB = re.compile(r"blobs/(sha256/[a-f0-9]{64}|sha512/[a-f0-9]{128})")
_LEGACY_CONFIG = re.compile(r"(?:blobs/sha256/)?([a-f0-9]{64})(?:\.json)?")
_MAGIC = ((b"\x1f\x8b", MediaType.OCI_LAYER_GZIP), (b"\x28\xb5\x2f\xfd", MediaType.OCI_LAYER_ZSTD))
_CHUNK = 1 << 20
_READ_ERRORS: tuple[type[Exception], ...] = (tarfile.TarError, *DECODE_ERRORS)


def open_local(kind: str, path: Path, tag: str | None, workdir: Path,
               platform: Platform | None = None) -> Image | ImageIndex:
    """The image (or index; with ``platform``, the one image for it) at ``kind:path[:tag]``.

    ``kind`` is one of :data:`KINDS`; an archive is extracted under ``workdir``, which must outlive
    the use of the result's layers. ``docker-archive`` also reads an OCI archive (``docker save``
    writes an OCI layout into its tar since Docker 25, and the readers are one).
    """
    if kind == "oci":
        return read_layout(path, tag, platform)
    if kind in ("oci-archive", "docker-archive"):
        return _archive(path, tag, platform, workdir, docker=kind == "docker-archive")
    raise InputError(f"{path}: unknown base image kind {kind!r} (expected one of {', '.join(KINDS)})")


def load_base(kind: str, path: Path, tag: str | None, platform: Platform, workdir: Path) -> Image:
    """The ``platform`` image of the base ``kind:path[:tag]`` (``kind`` is one of :data:`KINDS`)."""
    image = open_local(kind, path, tag, workdir, platform)
    if not isinstance(image, Image):
        raise InputError(f"{path}: expected one image for {platform}, found an index")
    return select_image((image,), platform, path)


@dataclass
class _Member:
    """What one archive member is: an extracted regular file (hashed), a link, or something else."""

    kind: str  # "file", "symlink", "hardlink", "other"
    link: str = ""
    file: Path | None = None
    digest: Digest | None = None
    size: int = 0
    head: bytes = b""


def _name(member: tarfile.TarInfo, archive: Path) -> str:
    """The member's normalised name; refuses absolute names and ``..`` (signs of a hostile archive)."""
    name = member.name
    if name.startswith("/") or ".." in name.split("/"):
        raise InputError(f"{archive}: member {name!r} escapes the archive (absolute or '..')")
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def _stream(archive: Path) -> Iterator[tuple[str, tarfile.TarFile, tarfile.TarInfo]]:
    """(name, tarfile, member) of each member of ``archive`` (plain or compressed), in one pass.

    The archive must be a regular file (a FIFO would block, a device never end); any failure of
    the stream is one InputError naming the archive.
    """
    try:
        fd = open_regular(archive, follow=True)
    except NotRegularFileError as exc:
        raise InputError(f"{archive}: not an archive file: {exc.strerror}") from exc
    except FileNotFoundError as exc:
        raise InputError(f"{archive}: no such archive file") from exc
    except OSError as exc:
        raise InputError(f"{archive}: cannot open the archive: {exc.strerror}") from exc
    seen = False
    with os.fdopen(fd, "rb") as raw:
        try:
            with open_decompressed(raw) as stream:
                for tf, ti in tar_members(stream):
                    seen = True
                    yield _name(ti, archive), tf, ti
        except _READ_ERRORS as exc:
            what = "damaged tar archive" if seen else "not a readable tar archive"
            raise InputError(f"{archive}: {what}: {exc}") from exc


def _copy_member(src: IO[bytes], dest_dir: Path, algorithm: str = "sha256") -> tuple[Digest, int, bytes, Path]:
    """Stream a member to a temp file in ``dest_dir``: (digest, size, first bytes, temp path)."""
    hasher, size, head = hashlib.new(algorithm), 0, b""
    tmp = tmp_path(dest_dir)
    try:
        with open(tmp, "xb") as out:
            while block := src.read(_CHUNK):
                head = head or block[:8]
                hasher.update(block)
                size += len(block)
                out.write(block)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Digest(algorithm, hasher.hexdigest()), size, head, tmp


def _extract(archive: Path, workdir: Path, docker: bool) -> tuple[Path, dict[str, _Member]]:
    """Extract the OCI layout files of ``archive`` into a new directory in ``workdir``, blobs verified.

    With ``docker``, every other regular member is extracted too (to ``other/<n>``) and every
    member is described in the returned map, for a docker-archive's ``manifest.json``.
    """
    dest = tmp_path(workdir, "base-")
    (dest / "other").mkdir(parents=True)
    members: dict[str, _Member] = {}
    for name, tf, ti in _stream(archive):
        blob = _BLOB.fullmatch(name)
        layout_file = name in ("oci-layout", "index.json") or blob is not None
        if layout_file and not ti.isreg():
            raise InputError(f"{archive}: member {name!r} is not a regular file (links are refused)")
        if ti.isreg() and (layout_file or docker):
            target = dest / name if layout_file else dest / "other" / str(len(members))
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(ti)
            if src is None:
                raise InputError(f"{archive}: member {name!r} cannot be read")
            digest, size, head, tmp = _copy_member(src, target.parent, name.split("/")[1] if blob else "sha256")
            if blob is not None and digest.hex != target.name:
                tmp.unlink()
                raise IntegrityError(f"{archive}: member {name!r} content is {digest}")
            tmp.replace(target)
            members[name] = _Member("file", file=target, digest=digest, size=size, head=head)
        elif docker and ti.issym():
            members[name] = _Member("symlink", ti.linkname)
        elif docker and ti.islnk():
            members[name] = _Member("hardlink", ti.linkname)
        elif docker and not ti.isdir():
            members[name] = _Member("other")
    return dest, members


def _archive(path: Path, tag: str | None, platform: Platform | None, workdir: Path, *,
             docker: bool) -> Image | ImageIndex:
    """An OCI archive, or a ``docker save`` tar: its OCI layout where it has one (Docker 25+), else
    its manifest.json."""
    root, members = _extract(path, workdir, docker)
    has_layout = is_layout(root)
    if docker and not (has_layout and _tag_in_index(root, tag, "manifest.json" in members)):
        if "manifest.json" not in members:
            raise InputError(f"{path}: not a docker-archive (no manifest.json) nor an OCI archive")
        return _legacy(members, path, tag, workdir)
    if not has_layout:
        raise InputError(f"{path}: not an OCI archive (no oci-layout or index.json)")
    try:
        image = read_layout(root, tag, platform)
    except InputError as exc:  # named after the archive, not the scratch directory it was extracted to
        raise InputError(str(exc).replace(str(root), str(path))) from None
    # every blob was hashed against its name while it was extracted, so the layers are known good
    if isinstance(image, ImageIndex):
        return dataclasses.replace(image, images=tuple(_verified(img) for img in image.images))
    return _verified(image)


def _verified(image: Image) -> Image:
    return dataclasses.replace(image, layers=tuple(dataclasses.replace(la, verified=True) for la in image.layers))


def _tag_in_index(root: Path, tag: str | None, has_manifest: bool) -> bool:
    """Whether the extracted layout's index.json names ``tag``; if it cannot tell, use the layout
    unless there is a manifest.json (where the tag may be a RepoTags name)."""
    try:
        index = _json_file(root / "index.json", "index.json", root)
        entries = [Descriptor.from_json(d) for d in index.get("manifests") or []]
        find_ref(entries, tag, root)
    except (InputError, ValueError, KeyError, TypeError, AttributeError):
        return not has_manifest
    return True


def _json_file(file: Path, name: str, archive: Path) -> Any:
    """A JSON document of at most :data:`MAX_JSON` bytes (bounded in size and depth)."""
    data = read_regular(file, MAX_JSON)
    if len(data) > MAX_JSON:
        raise InputError(f"{archive}: member {name!r} is too large for a JSON document")
    try:
        return _json(data)
    except (ValueError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise InputError(f"{archive}: member {name!r} is not valid JSON: {why}") from exc


def _json(data: bytes) -> Any:
    """An object (index.json, a config) or, for docker-archive's manifest.json, an array; bounded in depth."""
    return json_value(data) if data.lstrip()[:1] == b"[" else json_object(data)


def _resolve(members: dict[str, _Member], name: str, archive: Path) -> _Member:
    """The regular member ``name`` leads to, following links only within the archive."""
    for _ in range(16):
        norm = posixpath.normpath(name)
        member = members.get(norm)
        if norm.startswith(("../", "/")) or norm == ".." or member is None:
            raise InputError(f"{archive}: member {name!r} is missing")
        if member.kind == "file":
            return member
        if member.kind == "symlink":
            name = posixpath.join(posixpath.dirname(norm), member.link)
        elif member.kind == "hardlink":
            name = member.link
        else:
            raise InputError(f"{archive}: member {name!r} is not a regular file")
    raise InputError(f"{archive}: member {name!r}: too many levels of links")


def _legacy(members: dict[str, _Member], path: Path, tag: str | None, workdir: Path) -> Image:
    """A docker-archive without an OCI layout: build a fresh OCI manifest for its config and layers."""
    manifest = _member_json(members, "manifest.json", path)
    if not isinstance(manifest, list) or not manifest or not all(isinstance(e, dict) for e in manifest):
        raise InputError(f"{path}: manifest.json is not a non-empty list of images")
    entry = manifest[0]
    if tag is not None:
        wanted = {tag, docker_repo_tag(tag)}
        found = [e for e in manifest if wanted & set(_strings(e.get("RepoTags")))]
        if not found:
            names = ", ".join(repr(t) for e in manifest for t in _strings(e.get("RepoTags"))) or "none"
            raise InputError(f"{path}: no image tagged {tag!r} (tags present: {names})")
        entry = found[0]
    config_name, layer_names = entry.get("Config"), entry.get("Layers")
    if not isinstance(config_name, str) or not isinstance(layer_names, list):
        raise InputError(f"{path}: manifest.json entry has no Config or Layers")
    config_member = _resolve(members, config_name, path)
    if config_member.size > MAX_JSON:
        raise InputError(f"{path}: config {config_name!r} is too large for a JSON document")
    assert config_member.file is not None
    raw_config = read_regular(config_member.file, MAX_JSON)
    named = _LEGACY_CONFIG.fullmatch(posixpath.normpath(config_name))
    if named and Digest.of(raw_config).hex != named.group(1):
        raise IntegrityError(f"{path}: config {config_name!r} content is {Digest.of(raw_config)}")
    try:
        config = json_object(raw_config)
        ids = diff_ids(config)
    except (ValueError, AttributeError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise InputError(f"{path}: config {config_name!r}: {why}") from exc
    if len(ids) != len(layer_names):
        raise InputError(f"{path}: config has {len(ids)} diff_ids but manifest.json lists {len(layer_names)} layers")
    layers = [_legacy_layer(_resolve(members, str(n), path), str(n), diff_id, path)
              for n, diff_id in zip(layer_names, ids, strict=True)]
    cdesc = Descriptor(MediaType.OCI_CONFIG, Digest.of(raw_config), len(raw_config))
    raw_manifest = canonical_json(image_manifest(cdesc, [layer.descriptor for layer in layers]))
    desc = Descriptor(MediaType.OCI_MANIFEST, Digest.of(raw_manifest), len(raw_manifest))
    extracted = {layer.digest: layer for layer in layers}
    return image_from(desc, raw_manifest, raw_config,
                      lambda ldesc, diff_id: dataclasses.replace(extracted[ldesc.digest], diff_id=diff_id))


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _member_json(members: dict[str, _Member], name: str, archive: Path) -> Any:
    member = _resolve(members, name, archive)
    if member.size > MAX_JSON or member.file is None:
        raise InputError(f"{archive}: member {name!r} is too large for a JSON document")
    return _json_file(member.file, name, archive)


def _legacy_layer(member: _Member, name: str, diff_id: Digest, archive: Path) -> LayerBlob:
    """One extracted layer file: its digest was computed as it was extracted, its media type is read
    from its first bytes."""
    assert member.file is not None and member.digest is not None
    if member.head.startswith((b"BZh", b"\xfd7zXZ\x00")):
        raise InputError(f"{archive}: layer {name!r} is bzip2/xz compressed, which OCI layers cannot be")
    media_type = next((mt for magic, mt in _MAGIC if member.head.startswith(magic)), MediaType.OCI_LAYER)
    if media_type == MediaType.OCI_LAYER and member.digest != diff_id:
        raise IntegrityError(f"{archive}: layer {name!r} is {member.digest}, the config's diff_id is {diff_id}")
    unpacked = member.size if media_type == MediaType.OCI_LAYER else None
    return LayerBlob(Descriptor(media_type, member.digest, member.size), diff_id, member.file, unpacked, True)
