"""Attacks on what pybuild reads from the local disk: layouts, archives, the layer cache, its own outputs.

Each test builds its hostile input in code and runs the real CLI (under an address-space limit and
a timeout, see ``conftest.py``), except where a library function is the finding. What used to
happen is in each docstring: a hang, a memory bomb, a traceback, a file written through a planted
link, a layer served with a diff_id it does not have, an output sharing inodes with the cache.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

import pytest

from builder.archive.oci import write_oci_archive
from builder.image import Image, LayerBlob
from builder.layout.write import write_layout
from builder.oci.canonical import canonical_json
from builder.oci.config import append_layer, empty_config, rfc3339
from builder.oci.descriptor import Descriptor
from builder.oci.digest import Digest
from builder.oci.manifest import image_manifest
from builder.oci.mediatypes import MediaType
from tests.attacks.conftest import assert_clean_error
from tests.helpers import AMD64, layer_tar, make_image
from tests.hostile.corpus import PAX, REG, ZeroStream, archive, base256, d, header, member, pax

Run = Callable[..., Any]
MiB, GiB = 1 << 20, 1 << 30
PLATFORM = ("--platform", "linux/amd64")
WRITE = 'version: 1\nfrom: "{base}"\nsteps:\n  - write: /probe\n    content: "probe\\n"\n'
SCRATCH = 'version: 1\nsteps:\n  - write: /probe\n    content: "probe\\n"\n  - write: /second\n    content: "2\\n"\n'
HANG = 60  # seconds: every run here takes one or two; a run that reaches this is a hang


def recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def build(limited: Run, tmp_path: Path, text: str, *args: str | Path, out: str = "out") -> Any:
    return limited(recipe(tmp_path, text), "-o", tmp_path / out, *PLATFORM, *args, timeout=HANG)


def blob(layout: Path, digest: str | Digest) -> Path:
    return layout / "blobs" / "sha256" / str(digest).split(":")[-1]


def good_layout(tmp_path: Path, name: str = "base") -> tuple[Path, Image]:
    image = make_image(tmp_path, {"etc/os-release": b"ID=attack\n"})
    write_layout(tmp_path / name, image, "1")
    return tmp_path / name, image


def hand_layout(root: Path, manifest_desc: dict[str, Any], blobs: dict[Digest, bytes]) -> None:
    """A layout written by hand: ``index.json`` naming ``manifest_desc`` (whatever it says), and ``blobs``."""
    (root / "blobs" / "sha256").mkdir(parents=True)
    (root / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    (root / "index.json").write_bytes(canonical_json({"schemaVersion": 2, "manifests": [manifest_desc]}))
    for digest, data in blobs.items():
        blob(root, digest).write_bytes(data)


def plant(path: Path, kind: str) -> None:
    """Replace ``path`` with a FIFO, a symlink to /dev/zero, or a character device like /dev/zero."""
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero-symlink":
        path.symlink_to("/dev/zero")
    elif kind == "zero-device":
        if os.geteuid() != 0:
            pytest.skip("mknod needs root")
        os.mknod(path, 0o644 | stat.S_IFCHR, os.makedev(1, 5))
    else:
        raise AssertionError(kind)


# --------------------------------------------------------------------------------------------
# 1. only regular files are read from a layout


@pytest.mark.parametrize("kind", ["fifo", "zero-symlink", "zero-device"])
@pytest.mark.parametrize("which", ["manifest", "config"])
def test_an_empty_document_that_is_not_a_file_is_refused(limited: Run, tmp_path: Path, which: str, kind: str) -> None:
    """A manifest or config descriptor of size 0 whose blob is a FIFO (the build waited for a writer
    for ever) or /dev/zero (memory grew without bound): a clean error naming the blob."""
    empty = Digest.of(b"")
    config = canonical_json(append_layer(empty_config(AMD64), Digest.of(b""), rfc3339(0), "x"))
    cdesc = Descriptor(MediaType.OCI_CONFIG, empty, 0) if which == "config" else \
        Descriptor(MediaType.OCI_CONFIG, Digest.of(config), len(config))
    manifest = canonical_json(image_manifest(cdesc, []))
    mdesc = {"mediaType": MediaType.OCI_MANIFEST, "digest": str(empty), "size": 0} if which == "manifest" else \
        {"mediaType": MediaType.OCI_MANIFEST, "digest": str(Digest.of(manifest)), "size": len(manifest)}
    hand_layout(tmp_path / "base", {**mdesc, "annotations": {"org.opencontainers.image.ref.name": "1"}},
                {Digest.of(manifest): manifest, Digest.of(config): config})
    plant(blob(tmp_path / "base", empty), kind)
    result = build(limited, tmp_path, WRITE.format(base="oci:base:1"))
    assert_clean_error(result, empty.hex, "not a regular file")


def test_a_symlinked_layer_blob_is_refused(limited: Run, tmp_path: Path) -> None:
    """A layer blob that is a symlink (here to a good copy of itself outside the layout) was read
    through the link; a layout blob is a regular file or an error."""
    layout, image = good_layout(tmp_path)
    layer = blob(layout, image.layers[0].digest)
    outside = tmp_path / "outside"
    layer.rename(outside)
    layer.symlink_to(outside)
    result = build(limited, tmp_path, WRITE.format(base="oci:base:1"))
    assert_clean_error(result, image.layers[0].digest.hex, "not a regular file")


# --------------------------------------------------------------------------------------------
# 2. size caps on the JSON documents of layouts and archives


def test_a_huge_index_json_is_refused_unread(limited: Run, tmp_path: Path) -> None:
    """A valid index.json padded to 64 MiB (the finding: 400 MiB) was read whole and parsed."""
    layout, _ = good_layout(tmp_path)
    index = (layout / "index.json").read_bytes()
    with open(layout / "index.json", "ab") as f:
        for _ in range(64):
            f.write(b" " * MiB)
    assert json.loads((layout / "index.json").read_bytes()) == json.loads(index)  # still valid: only the size is hostile
    result = build(limited, tmp_path, WRITE.format(base="oci:base:1"))
    assert_clean_error(result, "index.json", "larger than")


def legacy_archive(path: Path, manifest_padding: int = 0) -> None:
    """A ``docker save`` archive without an OCI layout: config, one plain layer, manifest.json."""
    tar = layer_tar({"etc/os-release": b"ID=legacy\n"})
    config = canonical_json(append_layer(empty_config(AMD64), Digest.of(tar), rfc3339(0), "legacy"))
    manifest = json.dumps([{"Config": f"{Digest.of(config).hex}.json", "RepoTags": ["legacy:1"],
                            "Layers": ["l1/layer.tar"]}]).encode() + b" " * manifest_padding
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as out:
        for name, data in ((f"{Digest.of(config).hex}.json", config), ("l1/layer.tar", tar),
                           ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))


def test_a_huge_docker_manifest_json_is_refused(limited: Run, tmp_path: Path) -> None:
    """A docker-archive's manifest.json of 16 MiB (valid, padded) was read whole into memory."""
    legacy_archive(tmp_path / "small.tar")
    assert build(limited, tmp_path, WRITE.format(base="docker-archive:small.tar"), out="ok").returncode == 0
    legacy_archive(tmp_path / "big.tar", manifest_padding=16 * MiB)
    result = build(limited, tmp_path, WRITE.format(base="docker-archive:big.tar"))
    assert_clean_error(result, "manifest.json", "too large")


def passwd_layout(tmp_path: Path, size: int) -> None:
    """A base whose only layer holds an /etc/passwd of ``size`` bytes of 'x' (~1 MiB of gzip per GiB)."""
    head = archive(d("etc"), end=False) + header("etc/passwd", kind=REG, size=size)
    stream = ZeroStream(head, size, b"\0" * 1024, fill=b"x")
    data = stream.gzip()
    store = tmp_path / "blobs-src"
    store.mkdir()
    (store / "layer").write_bytes(data)
    layer = LayerBlob(Descriptor(MediaType.OCI_LAYER_GZIP, Digest.of(data), len(data)),
                      Digest("sha256", stream.sha256()), store / "layer", stream.size, verified=True)
    config = canonical_json(append_layer(empty_config(AMD64), layer.diff_id, rfc3339(0), "passwd"))
    cdesc = Descriptor(MediaType.OCI_CONFIG, Digest.of(config), len(config))
    manifest = canonical_json(image_manifest(cdesc, [layer.descriptor]))
    write_layout(tmp_path / "base", Image(manifest, config, MediaType.OCI_MANIFEST, (layer,), AMD64), "1")


def test_a_huge_passwd_in_a_base_is_refused_unread(limited: Run, tmp_path: Path) -> None:
    """An /etc/passwd of 1.5 GiB in a base layer was read whole (by the metadata scan) for ``owner:``."""
    passwd_layout(tmp_path, 3 * GiB // 2)
    text = WRITE.format(base="oci:base:1") + "    owner: app\n"
    assert_clean_error(build(limited, tmp_path, text), "passwd", "larger than")


def test_account_files_are_read_bounded() -> None:
    """The reader the layer scans use: a header claiming 512 MiB is refused before reading, and a
    stream that holds more than its header says is never read beyond the cap."""
    from builder.errors import InputError
    from builder.fs.users import MAX_ACCOUNT_FILE, read_account_file, resolve_owner

    class Endless(io.RawIOBase):
        read_total = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buf: Any) -> int:
            Endless.read_total += len(buf)
            buf[:] = b"x" * len(buf)
            return len(buf)

    with pytest.raises(InputError, match="larger than"):
        read_account_file(cast(IO[bytes], Endless()), 512 * MiB, "etc/passwd")  # a raw stream: only read() is used
    assert Endless.read_total == 0
    with pytest.raises(InputError, match="larger than"):
        read_account_file(io.BufferedReader(Endless()), 100, "etc/passwd")
    assert Endless.read_total <= MAX_ACCOUNT_FILE + 2 * MiB
    assert read_account_file(io.BytesIO(b"app:x:7:7::/:/bin/sh\n"), 21, "etc/passwd").startswith(b"app:")
    with pytest.raises(InputError, match="larger than"):
        resolve_owner("app", b"x" * (MAX_ACCOUNT_FILE + 1), None)


# --------------------------------------------------------------------------------------------
# 3. archive bases are read with the hardened tar reader


def pax_bomb() -> bytes:
    """gzip (~2 MiB): a PAX header of 2 GiB (its records all zeros), then the end of the archive.
    The finding was 1 GiB; 2 GiB is what it takes to exceed the address-space limit when read whole."""
    return ZeroStream(header("PaxHeaders/bomb", kind=PAX, size=2 * GiB), 2 * GiB, b"\0" * 10240).gzip()


def pax_claiming_a_tebibyte() -> bytes:
    return archive(header("PaxHeaders/huge", kind=PAX, size_field=base256(1 << 40)) + b"\0" * 4096)


def pax_chain() -> bytes:
    return archive(*[pax([("comment", "x")])] * 2000, member("oci-layout", b"{}"))


@pytest.mark.parametrize("make", [pax_bomb, pax_claiming_a_tebibyte, pax_chain], ids=lambda f: f.__name__)
@pytest.mark.parametrize("kind", ["oci-archive", "docker-archive"])
def test_hostile_tar_headers_in_an_archive_base(limited: Run, tmp_path: Path, kind: str, make: Any) -> None:
    """tarfile's random-access reader loaded a 2 GiB PAX header whole (memory without bound), and
    a PAX size of 1 TiB or 2000 chained PAX headers gave tracebacks: now one clean error each."""
    (tmp_path / "base.tar").write_bytes(make())
    result = build(limited, tmp_path, WRITE.format(base=f"{kind}:base.tar"))
    assert_clean_error(result, "base.tar", "tar archive")


def test_an_archive_base_that_is_a_fifo_is_refused(limited: Run, tmp_path: Path) -> None:
    """Archive bases are opened without blocking and must be regular files."""
    os.mkfifo(tmp_path / "base.tar")
    result = build(limited, tmp_path, WRITE.format(base="oci-archive:base.tar"))
    assert_clean_error(result, "base.tar", "not a regular file")


def test_archive_bases_still_work_compressed_and_plain(limited: Run, tmp_path: Path) -> None:
    """The streaming reader keeps what worked: an oci-archive, gzip'd or not, as a base."""
    image = make_image(tmp_path, {"etc/os-release": b"ID=archive\n"})
    write_oci_archive(tmp_path / "plain.tar", image, "1", 0)
    (tmp_path / "packed.tar.gz").write_bytes(gzip.compress((tmp_path / "plain.tar").read_bytes()))
    for name in ("plain.tar", "packed.tar.gz"):
        result = build(limited, tmp_path, WRITE.format(base=f"oci-archive:{name}:1"), out=name + ".out")
        assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------------------------
# 4. --digest-file and --metadata-file never write through a planted link


@pytest.mark.parametrize("flag", ["--digest-file", "--metadata-file"])
def test_a_planted_tmp_symlink_is_not_written_through(limited: Run, tmp_path: Path, flag: str) -> None:
    """``<file>.tmp`` was a fixed name: a symlink planted there in a shared directory overwrote its target."""
    shared = tmp_path / "shared"
    shared.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (shared / "result.tmp").symlink_to(victim)
    result = build(limited, tmp_path, SCRATCH, flag, shared / "result")
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "precious\n"
    digest = result.stdout.strip()
    assert digest in (shared / "result").read_text()
    assert sorted(p.name for p in shared.iterdir()) == ["result", "result.tmp"]  # no temp file left behind


# --------------------------------------------------------------------------------------------
# 5. cache entries: only regular files, and a diff_id that is the layer's


def cache_build(limited: Run, tmp_path: Path, out: str, cache: Path) -> Any:
    meta = tmp_path / f"{out}.json"
    result = build(limited, tmp_path, SCRATCH, "--cache-dir", cache, "--metadata-file", meta, out=out)
    assert result.returncode == 0, result.stderr
    return json.loads(meta.read_text())


def entries(cache: Path) -> list[Path]:
    return sorted((cache / "layers" / "entries").glob("*.json"))


def entry_of(cache: Path, digest: str) -> Path:
    [path] = [p for p in entries(cache) if json.loads(p.read_bytes()).get("digest") == digest]
    return path


@pytest.mark.parametrize("kind", ["fifo", "zero-symlink", "zero-device"])
@pytest.mark.parametrize("what", ["entry", "blob"])
def test_a_cache_file_that_is_not_a_file_is_a_miss(limited: Run, tmp_path: Path, what: str, kind: str) -> None:
    """A FIFO as a cache entry or blob, or /dev/zero as a blob, hung the build (reading for ever, or
    waiting for a writer): now a miss, the bad file removed, the layer rebuilt the same."""
    cache = tmp_path / "cache"
    first = cache_build(limited, tmp_path, "a", cache)
    digest = first["layers"][0]["digest"]
    victim = entry_of(cache, digest) if what == "entry" else blob(cache / "layers", digest)
    plant(victim, kind)
    again = cache_build(limited, tmp_path, "b", cache)
    assert [s["cached"] for s in again["steps"]] == [False, True] and again["digest"] == first["digest"]
    assert stat.S_ISREG(victim.lstat().st_mode)  # replaced by the rebuilt one
    third = cache_build(limited, tmp_path, "c", cache)
    assert all(s["cached"] for s in third["steps"])


def layer_diff_ids(out: Path, meta: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(the config's diff_ids, the sha256 of each layer blob decompressed)."""
    config = json.loads(blob(out, meta["image_id"]).read_bytes())
    actual = [f"sha256:{hashlib.sha256(gzip.decompress(blob(out, layer['digest']).read_bytes())).hexdigest()}"
              for layer in meta["layers"]]
    return config["rootfs"]["diff_ids"], actual


def test_an_edited_diff_id_in_the_cache_is_a_miss(limited: Run, tmp_path: Path) -> None:
    """An entry whose diff_id was edited was served as is: the config named a diff_id its layer
    does not have. Now the decompressed layer is hashed on every hit: a wrong one is a miss."""
    cache = tmp_path / "cache"
    first = cache_build(limited, tmp_path, "a", cache)
    path = entry_of(cache, first["layers"][0]["digest"])
    entry = json.loads(path.read_bytes())
    entry["diff_id"] = str(Digest.of(b"not this layer"))
    path.write_bytes(canonical_json(entry))
    again = cache_build(limited, tmp_path, "b", cache)
    assert [s["cached"] for s in again["steps"]] == [False, True] and again["digest"] == first["digest"]
    named, actual = layer_diff_ids(tmp_path / "b", again)
    assert named == actual
    assert json.loads(path.read_bytes())["diff_id"] == named[0]  # the entry was rewritten right


def test_an_entry_with_a_wrong_uncompressed_size_or_media_type_is_a_miss(limited: Run, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = cache_build(limited, tmp_path, "a", cache)
    path = entry_of(cache, first["layers"][0]["digest"])
    good = json.loads(path.read_bytes())
    for edit in ({"uncompressed_size": good["uncompressed_size"] + 512}, {"media_type": MediaType.OCI_LAYER_ZSTD}):
        path.write_bytes(canonical_json({**good, **edit}))
        again = cache_build(limited, tmp_path, "b", cache)
        assert [s["cached"] for s in again["steps"]] == [False, True] and again["digest"] == first["digest"]


# --------------------------------------------------------------------------------------------
# 6. OUT never shares an inode with the cache


def inodes(top: Path) -> dict[tuple[int, int], Path]:
    found = {}
    for path in top.rglob("*"):
        if path.is_file() and not path.is_symlink():
            st = path.stat()
            found[(st.st_dev, st.st_ino)] = path
    return found


def test_outputs_share_no_inode_with_the_cache(limited: Run, tmp_path: Path) -> None:
    """OUT's layer blobs were hard links of the cache's, so damage to one damaged the other."""
    cache = tmp_path / "cache"
    cold = cache_build(limited, tmp_path, "a", cache)
    warm = cache_build(limited, tmp_path, "b", cache)
    assert all(s["cached"] for s in warm["steps"]) and warm["digest"] == cold["digest"]
    cached = inodes(cache)
    for out in ("a", "b"):
        shared = set(inodes(tmp_path / out)) & set(cached)
        assert not shared, [str(cached[i]) for i in shared]
    victim = blob(tmp_path / "b", warm["layers"][0]["digest"])
    victim.write_bytes(b"damaged")  # damage to an output stays in that output
    third = cache_build(limited, tmp_path, "c", cache)
    assert all(s["cached"] for s in third["steps"]) and third["digest"] == cold["digest"]
