"""What readers and writers of images share: manifest + config -> Image, the platform rule, every blob once."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import InputError
from builder.image import (
    Image,
    LayerBlob,
    image_from,
    layout_blobs,
    runnable_images,
    select_image,
    unique_blobs,
)
from builder.oci.canonical import canonical_json
from builder.oci.descriptor import Descriptor, select_platform
from builder.oci.digest import Digest
from builder.oci.manifest import image_manifest, index_entries, manifest_blobs
from builder.oci.mediatypes import MediaType
from builder.oci.platform import Platform
from tests.helpers import AMD64, ARM64, make_image, make_index


def _layer(desc: Descriptor, diff_id: Digest) -> LayerBlob:
    return LayerBlob(desc, diff_id, Path("/nowhere") / desc.digest.hex)


def _desc(image: Image, platform: Platform | None = None, annotations: dict[str, str] | None = None) -> Descriptor:
    return Descriptor(image.media_type, image.digest, len(image.raw_manifest), annotations or {}, platform)


def test_image_from_pairs_layers_with_diff_ids(tmp_path: Path) -> None:
    base = make_image(tmp_path, {"a": b"a"})
    built = make_image(tmp_path, {"b": b"b"}, base=base)
    got = image_from(_desc(built), built.raw_manifest, built.raw_config, _layer)
    assert (got.digest, got.image_id, got.media_type) == (built.digest, built.image_id, built.media_type)
    assert [(la.descriptor, la.diff_id) for la in got.layers] == [(la.descriptor, la.diff_id) for la in built.layers]
    assert got.platform == AMD64  # from the config, as the index entry says none


def test_image_from_takes_the_index_entrys_platform(tmp_path: Path) -> None:
    built = make_image(tmp_path, {"a": b"a"})
    assert image_from(_desc(built, ARM64), built.raw_manifest, built.raw_config, _layer).platform == ARM64


def test_image_from_refuses_a_config_that_disagrees(tmp_path: Path) -> None:
    built = make_image(tmp_path, {"a": b"a"})
    other = make_image(tmp_path, {"b": b"b"}, base=built)
    with pytest.raises(ValueError, match="config has 2 diff_ids but the manifest has 1 layers"):
        image_from(_desc(built), built.raw_manifest, other.raw_config, _layer)
    with pytest.raises(ValueError, match="invalid JSON"):
        image_from(_desc(built), built.raw_manifest, b"[]", _layer)


def test_an_attestations_layers_stand_for_themselves(tmp_path: Path) -> None:
    doc = canonical_json({"predicateType": "x"})
    ldesc = Descriptor("application/vnd.in-toto+json", Digest.of(doc), len(doc))
    config = canonical_json({"architecture": "unknown", "os": "unknown"})
    cdesc = Descriptor(MediaType.OCI_CONFIG, Digest.of(config), len(config))
    raw = canonical_json(image_manifest(cdesc, [ldesc]))
    attests = {"vnd.docker.reference.type": "attestation-manifest"}
    desc = Descriptor(MediaType.OCI_MANIFEST, Digest.of(raw), len(raw), attests)
    image = image_from(desc, raw, config, _layer)
    assert [la.diff_id for la in image.layers] == [ldesc.digest]


@pytest.mark.parametrize("manifest", [{}, {"config": {"size": 1}}, {"config": [], "layers": []},
                                      {"config": {"mediaType": "x", "digest": "sha256:00", "size": 1}}])
def test_malformed_manifests_are_value_errors(manifest: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="malformed manifest"):
        manifest_blobs(manifest)


def test_one_platform_rule_for_images_and_index_entries(tmp_path: Path) -> None:
    amd = make_image(tmp_path, {"a": b"amd"})
    arm = make_image(tmp_path, {"a": b"arm"}, platform=Platform("linux", "arm64", "v8"))
    attestation = make_image(tmp_path, {"sbom": b"{}"}, platform=Platform("unknown", "unknown"))
    images = (attestation, amd, arm)
    assert select_image(images, AMD64, "here") is amd
    assert select_image(images, Platform("linux", "arm64"), "here") is arm  # a variant unsaid on one side
    assert select_image(images, Platform("linux", "arm64", "v8"), "here") is arm
    for want, images_ in ((Platform("linux", "arm64", "v9"), images), (ARM64, (amd,))):
        with pytest.raises(InputError) as caught:
            select_image(images_, want, "here")
        descriptors = [img.descriptor() for img in images_]
        with pytest.raises(InputError) as expected:
            select_platform(descriptors, want, "here")
        assert str(caught.value) == str(expected.value)
    available = r"\(available: linux/amd64, linux/arm64/v8\)"
    with pytest.raises(InputError, match=rf"^here: no image for platform linux/s390x {available}$"):
        select_image(images, Platform("linux", "s390x"), "here")
    assert runnable_images(make_index(list(images))) == [amd, arm]


def test_every_blob_once_layers_then_configs_then_documents(tmp_path: Path) -> None:
    base = make_image(tmp_path, {"a": b"a"})
    amd = make_image(tmp_path, {"b": b"amd"}, base=base)
    arm = make_image(tmp_path, {"b": b"arm"}, base=base, platform=ARM64)
    index = make_index([amd, arm, amd])  # the shared base layer, and a whole image twice
    files = [amd.layers[0].digest, amd.layers[1].digest, arm.layers[1].digest]
    assert [b.digest for b in unique_blobs([amd, arm])] == [*files, amd.image_id, arm.image_id]
    assert [b.digest for b in layout_blobs(index)] == [*files, amd.image_id, arm.image_id, amd.digest, arm.digest,
                                                       index.digest]
    assert [b.digest for b in layout_blobs(amd)] == [*files[:2], amd.image_id, amd.digest]
    config, manifest = layout_blobs(amd)[2:]
    assert (config.data, config.size, manifest.data) == (amd.raw_config, len(amd.raw_config), amd.raw_manifest)
    layer = layout_blobs(amd)[0]
    assert (layer.path, layer.size, layer.data) == (amd.layers[0].path, amd.layers[0].descriptor.size, None)


@pytest.mark.parametrize(("index", "why"), [({}, "no manifests list"), ({"manifests": {}}, "no manifests list"),
                                            ({"manifests": [{"size": 1}]}, "malformed descriptor in the index")])
def test_malformed_indexes_are_value_errors(index: dict[str, object], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        index_entries(index)
