"""The final image's packages and files from real layer blobs: whiteouts, opaque directories,
replaced databases, layer attribution, the scan cache and hostile layers."""

from __future__ import annotations

import hashlib
import json

import pytest

from builder.errors import IntegrityError
from builder.image import Image, LayerBlob
from builder.sbom import dpkg, inventory
from builder.sbom import scan as scanmod
from builder.sbom.model import Inventory, Record

from .factory import OS_DEBIAN, Member, apk_installed, dpkg_status, make_image, metadata, rpm_package, rpmdb

STATUS = "var/lib/dpkg/status"
SITE = "usr/lib/python3/dist-packages"


def names(inv: Inventory) -> dict[str, tuple[str, int]]:
    return {p.record.name: (p.record.version, p.layer) for p in inv.packages}


def test_packages_of_every_kind_with_purls(tmp_path):
    image = make_image(tmp_path, [
        {"etc/os-release": OS_DEBIAN, STATUS: dpkg_status(("libc6", "1:2.36-9+deb12u4"))},
        {"lib/apk/db/installed": apk_installed(("musl", "1.2.4-r2", "MIT"))},
        {"var/lib/rpm/rpmdb.sqlite": rpmdb(tmp_path, rpm_package("bash", "5.2", "3.fc39", epoch=1))},
        {f"{SITE}/Foo_Bar-1.0.dist-info/METADATA": metadata("Foo_Bar", "1.0"),
         "opt/app/lib/old-2.0-py3.11.egg-info/PKG-INFO": metadata("old", "2.0"),
         f"{SITE}/flat-3.0.egg-info": metadata("flat", "3.0")},
    ], ["gzip", "zstd", "none", "gzip"])
    inv = inventory(image, [])
    purls = {p.record.name: p.purl for p in inv.packages}
    assert purls == {
        "libc6": "pkg:deb/debian/libc6@1:2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12",
        "musl": "pkg:apk/debian/musl@1.2.4-r2?arch=x86_64&distro=debian-12",
        "bash": "pkg:rpm/debian/bash@5.2-3.fc39?arch=x86_64&distro=debian-12&epoch=1",
        "Foo_Bar": "pkg:pypi/foo-bar@1.0",
        "old": "pkg:pypi/old@2.0",
        "flat": "pkg:pypi/flat@3.0",
    }
    assert names(inv) == {"libc6": ("1:2.36-9+deb12u4", 0), "musl": ("1.2.4-r2", 1), "bash": ("5.2-3.fc39", 2),
                          "Foo_Bar": ("1.0", 3), "old": ("2.0", 3), "flat": ("3.0", 3)}
    assert (inv.distro, inv.distro_version) == ("debian", "12")
    assert inv.files == ()  # no file layers


def test_distro_from_usr_lib_when_etc_os_release_is_a_symlink(tmp_path):
    image = make_image(tmp_path, [{"usr/lib/os-release": b"ID=ubuntu\nVERSION_ID='22.04'\n",
                                   "etc/os-release": ("symlink", "../usr/lib/os-release"),
                                   STATUS: dpkg_status(("bash", "5.1"))}])
    inv = inventory(image, [])
    assert inv.packages[0].purl == "pkg:deb/ubuntu/bash@5.1?arch=amd64&distro=ubuntu-22.04"


def test_without_os_release_the_ecosystem_default_namespace(tmp_path):
    image = make_image(tmp_path, [{STATUS: dpkg_status(("bash", "5.1")),
                                   "lib/apk/db/installed": apk_installed(("musl", "1", "MIT"))}])
    assert sorted(p.purl for p in inventory(image, []).packages) == [
        "pkg:apk/alpine/musl@1?arch=x86_64", "pkg:deb/debian/bash@5.1?arch=amd64"]


def test_later_database_replaces_earlier_and_attribution_is_continuous(tmp_path):
    image = make_image(tmp_path, [
        {STATUS: dpkg_status(("a", "1"), ("b", "1"), ("c", "1"))},
        {STATUS: dpkg_status(("a", "1"), ("b", "2"))},  # b upgraded, c removed
        {"etc/x": b"unrelated"},
        {STATUS: dpkg_status(("a", "1"), ("b", "2"), ("d", "1"))},  # d installed
    ])
    assert names(inventory(image, [])) == {"a": ("1", 0), "b": ("2", 1), "d": ("1", 3)}


def test_whiteout_of_the_database_then_a_new_one_restarts_attribution(tmp_path):
    image = make_image(tmp_path, [
        {STATUS: dpkg_status(("a", "1"))},
        {STATUS: "whiteout"},
        {STATUS: dpkg_status(("a", "1"))},
    ])
    assert names(inventory(image, [])) == {"a": ("1", 2)}


@pytest.mark.parametrize("removal", [
    {STATUS: "whiteout"},
    {"var/lib/dpkg": "whiteout"},
    {"var/lib": "opaque"},
    {"var/lib": "opaque", "var/lib/other": b"x"},
    {"var/lib/dpkg": ("symlink", "/elsewhere")},
    {STATUS: "dir"},
])
def test_a_later_layer_removes_the_database(tmp_path, removal):
    image = make_image(tmp_path, [{STATUS: dpkg_status(("a", "1"))}, removal])
    assert inventory(image, []).packages == ()


def test_an_opaque_marker_hides_only_lower_layers(tmp_path):
    image = make_image(tmp_path, [
        {STATUS: dpkg_status(("old", "1"))},
        {"var/lib/dpkg": "opaque", STATUS: dpkg_status(("new", "1"))},
    ])
    assert names(inventory(image, [])) == {"new": ("1", 1)}


def test_pip_upgrade_in_a_run_layer(tmp_path):
    meta = f"{SITE}/six-1.15.0.dist-info"
    image = make_image(tmp_path, [
        {f"{meta}/METADATA": metadata("six", "1.15.0"), f"{SITE}/keep-1.dist-info/METADATA": metadata("keep", "1")},
        {meta: "whiteout", f"{SITE}/six-1.16.0.dist-info/METADATA": metadata("six", "1.16.0")},
    ])
    assert names(inventory(image, [])) == {"keep": ("1", 0), "six": ("1.16.0", 1)}


def test_status_d_and_distroless(tmp_path):
    image = make_image(tmp_path, [
        {"var/lib/dpkg/status.d/base": dpkg_status(("base-files", "12")),
         "var/lib/dpkg/status.d/base.md5sums": b"0123 etc/x\n"},
        {"var/lib/dpkg/status.d/tzdata": dpkg_status(("tzdata", "2024a"))},
    ])
    assert names(inventory(image, [])) == {"base-files": ("12", 0), "tzdata": ("2024a", 1)}


def test_files_of_file_layers_only_and_only_survivors(tmp_path):
    image = make_image(tmp_path, [
        {"bin/sh": b"base shell"},                                        # base layer: no files listed
        {"app/a": b"A", "app/b": b"B", "app/c": b"C", "app/link": ("hardlink", "app/a"), "app/dir": "dir",
         "app/sym": ("symlink", "a")},                                    # copy
        {"app/b": "whiteout", "app/c": b"C2"},                            # run: deletes b, rewrites c
        {"etc/conf": b"conf", STATUS: dpkg_status(("a", "1"))},           # write
    ])
    inv = inventory(image, [1, 3])
    sha = {name: hashlib.sha256(data).hexdigest() for name, data in [("A", b"A"), ("conf", b"conf")]}
    assert [(f.path, f.sha256, f.layer) for f in inv.files] == [
        ("app/a", sha["A"], 1), ("app/link", sha["A"], 1), ("etc/conf", sha["conf"], 3),
        (STATUS, hashlib.sha256(dpkg_status(("a", "1"))).hexdigest(), 3)]
    assert inv.files[0].sha1 == hashlib.sha1(b"A").hexdigest()
    assert [(layer.index, layer.diff_id) for layer in inv.layers] == [(i, b.diff_id) for i, b in enumerate(image.layers)]


def test_determinism_same_image_same_inventory(tmp_path):
    layers: list[dict[str, Member]] = [{STATUS: dpkg_status(("z", "1"), ("a", "2"))}, {"app/x": b"x", "app/y": b"y"}]
    one = inventory(make_image(tmp_path / "1", layers), [1])
    two = inventory(make_image(tmp_path / "2", layers), [1])
    assert one == two
    assert [p.record.name for p in one.packages] == ["a", "z"]


def test_cache_is_used_and_a_damaged_entry_rewritten(tmp_path, monkeypatch):
    image = make_image(tmp_path, [{STATUS: dpkg_status(("a", "1"))}, {"app/x": b"x"}])
    cache = tmp_path / "cache"
    first = inventory(image, [1], cache)
    entries = sorted((cache / "sbom").iterdir())
    assert [e.name for e in entries] == sorted(f"{b.diff_id.hex}.json" for b in image.layers)

    calls: list[bool] = []
    real = scanmod.scan_layer

    def counted(blob: LayerBlob, hash_files: bool) -> scanmod.LayerScan:
        calls.append(hash_files)
        return real(blob, hash_files)

    monkeypatch.setattr(scanmod, "scan_layer", counted)
    assert inventory(image, [1], cache) == first
    assert calls == []  # both from the cache

    assert inventory(image, [0, 1], cache).files[0].path == "app/x"
    assert calls == [True]  # layer 0 cached without hashes: scanned again, with them
    assert json.loads((cache / "sbom" / f"{image.layers[0].diff_id.hex}.json").read_text())["hashes"] is not None

    target = cache / "sbom" / f"{image.layers[1].diff_id.hex}.json"
    for damage in (b"{not json", b'{"format": 1}', target.read_bytes().replace(b'"f"', b'"?"'),
                   target.read_bytes().replace(b'"hashes":{"app/x":["', b'"hashes":{"app/x":["zz')):
        calls.clear()
        target.write_bytes(damage)
        assert inventory(image, [1], cache) == first
        assert calls == [True]
        assert json.loads(target.read_text())["format"] == scanmod.SCAN_FORMAT


def test_no_cache_directory_means_nothing_written(tmp_path):
    image = make_image(tmp_path, [{"app/x": b"x"}])
    before = sorted(p.name for p in tmp_path.iterdir())
    inventory(image, [0], None)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_oversized_database_lists_nothing_but_replaces_the_lower_one(tmp_path, monkeypatch):
    monkeypatch.setattr(scanmod, "MAX_DATABASE", 1000)
    big = dpkg_status(*((f"p{i}", "1") for i in range(50)))
    assert len(big) > 1000
    image = make_image(tmp_path, [{STATUS: dpkg_status(("small", "1"))}, {STATUS: big}])
    assert inventory(image, []).packages == ()


def test_hostile_databases_do_not_crash(tmp_path):
    image = make_image(tmp_path, [{
        STATUS: b"\xff\xfe\0" * 1000 + b"\n\n\nPackage:\nVersion: \n\n:::\n",
        "lib/apk/db/installed": b"P:\nV\n\n\0\0\0",
        "var/lib/rpm/rpmdb.sqlite": b"SQLite format 3\0" + b"\xff" * 10000,
        "usr/lib/python3/dist-packages/x.dist-info/METADATA": b"\0" * 5000,
        "etc/os-release": b"ID=\"\nVERSION_ID=" + b"9" * 10000,
    }])
    inv = inventory(image, [0])
    assert inv.packages == ()
    assert len(inv.files) == 5


def test_a_blob_that_is_not_its_diff_id_is_refused(tmp_path):
    image = make_image(tmp_path, [{"app/x": b"x"}])
    other = make_image(tmp_path / "other", [{"app/x": b"y"}])
    blob = image.layers[0]
    swapped = LayerBlob(blob.descriptor, blob.diff_id, other.layers[0].path)
    bad = Image(image.raw_manifest, image.raw_config, image.media_type, (swapped,), image.platform)
    with pytest.raises(IntegrityError):
        inventory(bad, [0], tmp_path / "cache")
    assert not (tmp_path / "cache" / "sbom" / f"{blob.diff_id.hex}.json").exists()


def test_a_reader_that_raises_on_hostile_bytes_lists_nothing(tmp_path, monkeypatch):
    def boom(data: bytes) -> list[Record]:
        raise ValueError("not what it was written for")

    monkeypatch.setattr(dpkg, "parse", boom)
    image = make_image(tmp_path, [{STATUS: dpkg_status(("a", "1"))},
                                  {"lib/apk/db/installed": apk_installed(("musl", "1", "MIT"))}])
    assert names(inventory(image, [])) == {"musl": ("1", 1)}
