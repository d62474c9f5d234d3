"""``docker-archive``: what ``docker save`` writes and ``docker load`` reads, written and read.

A docker-archive written here is what ``docker save`` writes since Docker 25 (moby/moby#44598):
a valid OCI layout with ``manifest.json`` and ``repositories`` beside it, so ``docker load``,
``podman load``, ``ctr images import`` and OCI tools all read the same file.

Reading takes both that form and the one before it: without an OCI layout (or when the tag
asked for is a ``RepoTags`` name the layout's index.json does not know), ``manifest.json``
names the config and the layers, and a fresh OCI manifest is made for them. ``docker save``
writes ``manifest.json`` after the files it names, so every regular member is extracted (to a
numbered file) in the same pass, and links are remembered: ``docker save`` stores a layer that
appears twice once and links the second to it.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from builder.archive.manifestjson import docker_members, docker_repo_tag
from builder.archive.oci import layout_members, read_extracted
from builder.archive.tar import Member, extract, write_tar
from builder.attest.referrer import Referrer
from builder.errors import InputError, IntegrityError
from builder.fs.atomic import read_regular
from builder.image import Image, ImageIndex, LayerBlob, image_from
from builder.layout.format import MAX_JSON, is_layout
from builder.layout.read import find_ref
from builder.layout.write import check_ref_name
from builder.oci.canonical import canonical_json, json_object, json_value
from builder.oci.config import diff_ids
from builder.oci.descriptor import Descriptor
from builder.oci.digest import Digest
from builder.oci.manifest import image_manifest
from builder.oci.mediatypes import MediaType
from builder.oci.platform import Platform

_LEGACY_CONFIG = re.compile(r"(?:blobs/sha256/)?([a-f0-9]{64})(?:\.json)?")
_MAGIC = ((b"\x1f\x8b", MediaType.OCI_LAYER_GZIP), (b"\x28\xb5\x2f\xfd", MediaType.OCI_LAYER_ZSTD))


def write_docker_archive(
    out: Path, image: Image | ImageIndex, tag: str, epoch: int, platform: Platform | None = None,
    referrers: Sequence[Referrer] = (),
) -> None:
    """Write the OCI archive plus ``manifest.json`` and ``repositories`` for ``docker load``
    (:func:`builder.archive.manifestjson.docker_members`).

    ``index.json`` names the whole index, for the loaders that read it (Docker 25+, containerd),
    and lists the ``referrers`` beside it as a layout does: ``manifest.json`` names images only,
    and it is what ``docker load`` and ``podman load`` read.
    """
    check_ref_name(tag, out)
    members = layout_members(image, tag, referrers)
    members.update(docker_members(image, tag, out, platform))
    write_tar(out, members, epoch)


# ---- reading -------------------------------------------------------------------------------


def read_docker_archive(path: Path, tag: str | None, platform: Platform | None, workdir: Path) -> Image | ImageIndex:
    """The image tagged ``tag`` in the docker-archive (or OCI archive) ``path``, extracted into ``workdir``.

    Its OCI layout where it has one that names ``tag``, else its manifest.json; the result's
    layers live in ``workdir``: keep it until they have been used.
    """
    root, members = extract(path, workdir, docker=True)
    if is_layout(root) and _tag_in_index(root, tag, "manifest.json" in members):
        return read_extracted(root, path, tag, platform)
    if "manifest.json" not in members:
        raise InputError(f"{path}: not a docker-archive (no manifest.json) nor an OCI archive")
    return _legacy(members, path, tag)


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


def _resolve(members: dict[str, Member], name: str, archive: Path) -> Member:
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


def _legacy(members: dict[str, Member], path: Path, tag: str | None) -> Image:
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
    if named and Digest.of(raw_config) != Digest("sha256", named.group(1)):
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


def _member_json(members: dict[str, Member], name: str, archive: Path) -> Any:
    member = _resolve(members, name, archive)
    if member.size > MAX_JSON or member.file is None:
        raise InputError(f"{archive}: member {name!r} is too large for a JSON document")
    return _json_file(member.file, name, archive)


def _legacy_layer(member: Member, name: str, diff_id: Digest, archive: Path) -> LayerBlob:
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
