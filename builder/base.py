"""Base images from local files: an OCI layout, an OCI archive, or a docker-archive (``docker save``).

Archives are untrusted input. Only ``oci-layout``, ``index.json`` and ``blobs/<alg>/<hex>``
regular files are ever extracted, under a fresh directory in ``workdir``, with names built
from the validated components; members named with ``..`` or an absolute path, and links
standing where a layout file should be, are refused. Every extracted blob is hashed on the
way and must match its name, so the layers of the returned image are verified. The returned
image's layer paths live in ``workdir``: keep it until the build is done with them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from builder.errors import InputError, IntegrityError
from builder.image import Image, LayerBlob
from builder.oci.canonical import canonical_json
from builder.oci.config import diff_ids, platform_of
from builder.oci.descriptor import Descriptor
from builder.oci.digest import Digest
from builder.oci.manifest import image_manifest
from builder.oci.mediatypes import MediaType
from builder.oci.platform import Platform
from builder.sinks.archive import docker_repo_tag
from builder.sinks.layout import MAX_JSON, find_ref, read_layout
from builder.sinks.lock import tmp_path

KINDS = ("oci", "oci-archive", "docker-archive")
_BLOB = re.compile(r"blobs/(sha256/[a-f0-9]{64}|sha512/[a-f0-9]{128})")
_LEGACY_CONFIG = re.compile(r"(?:blobs/sha256/)?([a-f0-9]{64})(?:\.json)?")
_MAGIC = ((b"\x1f\x8b", MediaType.OCI_LAYER_GZIP), (b"\x28\xb5\x2f\xfd", MediaType.OCI_LAYER_ZSTD))
_CHUNK = 1 << 20


def load_base(kind: str, path: Path, tag: str | None, platform: Platform, workdir: Path) -> Image:
    """The ``platform`` image of the base ``kind:path[:tag]`` (``kind`` is one of :data:`KINDS`)."""
    if kind == "oci":
        image = read_layout(path, tag, platform)
    elif kind == "oci-archive":
        image = _oci_archive(path, tag, platform, workdir)
    elif kind == "docker-archive":
        image = _docker_archive(path, tag, platform, workdir)
    else:
        raise InputError(f"{path}: unknown base image kind {kind!r} (expected one of {', '.join(KINDS)})")
    if not isinstance(image, Image):
        raise InputError(f"{path}: expected one image for {platform}, found an index")
    have = image.platform
    if have.os and have.architecture and (have.os, have.architecture) != (platform.os, platform.architecture):
        raise InputError(f"{path}: the image is for {have}, not {platform}; choose the platform to build for")
    if have.variant and platform.variant and have.variant != platform.variant:
        raise InputError(f"{path}: the image is for {have}, not {platform}")
    return image


def _open(path: Path) -> tarfile.TarFile:
    if not path.is_file():
        raise InputError(f"{path}: no such archive file")
    try:
        return tarfile.open(path, "r:*")
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise InputError(f"{path}: not a readable tar archive: {exc}") from exc


def _name(member: tarfile.TarInfo, archive: Path) -> str:
    """The member's normalised name; refuses absolute names and ``..`` (signs of a hostile archive)."""
    name = member.name
    if name.startswith("/") or ".." in name.split("/"):
        raise InputError(f"{archive}: member {name!r} escapes the archive (absolute or '..')")
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def _members(tar: tarfile.TarFile, archive: Path) -> Iterator[tuple[str, tarfile.TarInfo]]:
    try:
        for member in tar:
            yield _name(member, archive), member
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise InputError(f"{archive}: damaged tar archive: {exc}") from exc


def _copy_member(src: IO[bytes], dest_dir: Path, algorithm: str = "sha256") -> tuple[Digest, int, bytes, Path]:
    """Stream a member to a temp file in ``dest_dir``: (digest, size, first bytes, temp path)."""
    hasher, size, head = hashlib.new(algorithm), 0, b""
    tmp = tmp_path(dest_dir)
    with open(tmp, "xb") as out:
        while block := src.read(_CHUNK):
            head = head or block[:8]
            hasher.update(block)
            size += len(block)
            out.write(block)
    return Digest(algorithm, hasher.hexdigest()), size, head, tmp


def _extract_layout(archive: Path, workdir: Path) -> Path:
    """Extract the OCI layout files of ``archive`` into a new directory in ``workdir``, blobs verified."""
    dest = tmp_path(workdir, "base-")
    dest.mkdir(parents=True)
    with _open(archive) as tar:
        for name, member in _members(tar, archive):
            blob = _BLOB.fullmatch(name)
            if name not in ("oci-layout", "index.json") and blob is None:
                continue  # manifest.json, repositories, legacy layer directories: not part of the layout
            if not member.isreg():
                raise InputError(f"{archive}: member {name!r} is not a regular file (links are refused)")
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            if src is None:
                raise InputError(f"{archive}: member {name!r} cannot be read")
            try:
                digest, _, _, tmp = _copy_member(src, target.parent, name.split("/")[1] if blob else "sha256")
            except (OSError, tarfile.TarError, EOFError) as exc:
                raise InputError(f"{archive}: member {name!r} cannot be read: {exc}") from exc
            if blob is not None and digest.hex != target.name:
                tmp.unlink()
                raise IntegrityError(f"{archive}: member {name!r} content is {digest}")
            tmp.replace(target)
    return dest


def _oci_archive(path: Path, tag: str | None, platform: Platform, workdir: Path) -> Image:
    root = _extract_layout(path, workdir)
    image = read_layout(root, tag, platform)
    if not isinstance(image, Image):
        raise InputError(f"{path}: expected one image for {platform}, found an index")
    # every blob was hashed against its name while it was extracted, so the layers are known good
    layers = tuple(dataclasses.replace(layer, verified=True) for layer in image.layers)
    return dataclasses.replace(image, layers=layers)


def _docker_archive(path: Path, tag: str | None, platform: Platform, workdir: Path) -> Image:
    """A ``docker save`` tar: its OCI layout where it has one (Docker 25+), else its manifest.json."""
    with _open(path) as tar:
        members = dict(_members(tar, path))
        if "oci-layout" in members and "index.json" in members:
            index = _json(tar, members, "index.json", path)
            try:
                entries = [Descriptor.from_json(d) for d in index.get("manifests") or []]
                find_ref(entries, tag, path)
                usable = True
            except (InputError, ValueError, KeyError, TypeError, AttributeError):
                usable = "manifest.json" not in members  # else the tag may be a RepoTags name
            if usable:
                return _oci_archive(path, tag, platform, workdir)
        if "manifest.json" not in members:
            raise InputError(f"{path}: not a docker-archive (no manifest.json) nor an OCI archive")
        return _legacy(tar, members, path, tag, workdir)


def _json(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str, archive: Path) -> Any:
    try:
        return json.loads(_member_bytes(tar, _resolve(members, name, archive), archive))
    except ValueError as exc:
        raise InputError(f"{archive}: member {name!r} is not valid JSON: {exc}") from exc


def _resolve(members: dict[str, tarfile.TarInfo], name: str, archive: Path) -> tarfile.TarInfo:
    """The regular member ``name`` leads to, following links only within the archive.

    ``docker save`` stores a layer that appears twice once and links the second to it.
    """
    for _ in range(16):
        norm = posixpath.normpath(name)
        member = members.get(norm)
        if norm.startswith(("../", "/")) or norm == ".." or member is None:
            raise InputError(f"{archive}: member {name!r} is missing")
        if member.isreg():
            return member
        if member.issym():
            name = posixpath.join(posixpath.dirname(norm), member.linkname)
        elif member.islnk():
            name = member.linkname
        else:
            raise InputError(f"{archive}: member {name!r} is not a regular file")
    raise InputError(f"{archive}: member {name!r}: too many levels of links")


def _legacy(
    tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], path: Path, tag: str | None, workdir: Path
) -> Image:
    """A docker-archive without an OCI layout: build a fresh OCI manifest for its config and layers."""
    manifest = _json(tar, members, "manifest.json", path)
    if not isinstance(manifest, list) or not manifest or not all(isinstance(e, dict) for e in manifest):
        raise InputError(f"{path}: manifest.json is not a non-empty list of images")
    entry = manifest[0]
    if tag is not None:
        wanted = {tag, docker_repo_tag(tag)}
        found = [e for e in manifest if wanted & set(e.get("RepoTags") or [])]
        if not found:
            names = ", ".join(repr(t) for e in manifest for t in e.get("RepoTags") or []) or "none"
            raise InputError(f"{path}: no image tagged {tag!r} (tags present: {names})")
        entry = found[0]
    config_name, layer_names = entry.get("Config"), entry.get("Layers")
    if not isinstance(config_name, str) or not isinstance(layer_names, list):
        raise InputError(f"{path}: manifest.json entry has no Config or Layers")
    raw_config = _member_bytes(tar, _resolve(members, config_name, path), path)
    named = _LEGACY_CONFIG.fullmatch(posixpath.normpath(config_name))
    if named and Digest.of(raw_config).hex != named.group(1):
        raise IntegrityError(f"{path}: config {config_name!r} content is {Digest.of(raw_config)}")
    try:
        config = json.loads(raw_config)
        ids = diff_ids(config)
    except (ValueError, AttributeError) as exc:
        raise InputError(f"{path}: config {config_name!r}: {exc}") from exc
    if len(ids) != len(layer_names):
        raise InputError(f"{path}: config has {len(ids)} diff_ids but manifest.json lists {len(layer_names)} layers")
    store = tmp_path(workdir, "base-") / "blobs" / "sha256"
    store.mkdir(parents=True)
    layers = [
        _legacy_layer(tar, _resolve(members, str(n), path), diff_id, store, path)
        for n, diff_id in zip(layer_names, ids, strict=True)
    ]
    cdesc = Descriptor(MediaType.OCI_CONFIG, Digest.of(raw_config), len(raw_config))
    raw_manifest = canonical_json(image_manifest(cdesc, [layer.descriptor for layer in layers]))
    return Image(raw_manifest, raw_config, MediaType.OCI_MANIFEST, tuple(layers), platform_of(config))


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: Path) -> bytes:
    if member.size > MAX_JSON:
        raise InputError(f"{archive}: member {member.name!r} is too large for a JSON document")
    try:
        src = tar.extractfile(member)
        return src.read() if src else b""
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise InputError(f"{archive}: member {member.name!r} cannot be read: {exc}") from exc


def _legacy_layer(
    tar: tarfile.TarFile, member: tarfile.TarInfo, diff_id: Digest, store: Path, archive: Path
) -> LayerBlob:
    """Extract one layer file: its digest is computed here, its media type read from its first bytes."""
    src = tar.extractfile(member)
    if src is None:
        raise InputError(f"{archive}: layer {member.name!r} cannot be read")
    try:
        digest, size, head, tmp = _copy_member(src, store)
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise InputError(f"{archive}: layer {member.name!r} cannot be read: {exc}") from exc
    if head.startswith((b"BZh", b"\xfd7zXZ\x00")):
        tmp.unlink()
        raise InputError(f"{archive}: layer {member.name!r} is bzip2/xz compressed, which OCI layers cannot be")
    media_type = next((mt for magic, mt in _MAGIC if head.startswith(magic)), MediaType.OCI_LAYER)
    if media_type == MediaType.OCI_LAYER and digest != diff_id:
        tmp.unlink()
        raise IntegrityError(f"{archive}: layer {member.name!r} is {digest}, the config's diff_id is {diff_id}")
    target = store / digest.hex
    tmp.replace(target)
    unpacked = size if media_type == MediaType.OCI_LAYER else None
    return LayerBlob(Descriptor(media_type, digest, size), diff_id, target, unpacked, True)
