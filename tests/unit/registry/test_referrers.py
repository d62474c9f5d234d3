"""Referrers on a registry: the referrers API where the registry has it, the fallback tag where not.

The fake registry of ``test_registry_client`` plays both kinds (``referrers_api``); the real
``docker-registry`` 2.8, which has no referrers API, is driven in ``tests/e2e/test_referrers.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builder.attest.referrer import IN_TOTO, SPDX, Referrer, attach, fallback_tag
from builder.errors import IntegrityError, RegistryError
from builder.image import Image
from builder.oci.digest import Digest
from builder.registry.client import RegistryClient
from builder.registry.push import push
from builder.registry.referrers import list_referrers, referrers_of
from tests.helpers import ARM64, make_image, make_index

from .test_registry_client import FAST, FakeRegistry

CREATED = "1970-01-01T00:00:00Z"


@pytest.fixture(params=[False, True], ids=["fallback-tag", "referrers-api"])
def registry(request: pytest.FixtureRequest) -> Iterator[FakeRegistry]:
    fake = FakeRegistry()
    fake.referrers_api = request.param
    yield fake
    fake.stop()


def statement(image: Image, note: str = "built") -> Referrer:
    doc = json.dumps({"_type": "https://in-toto.io/Statement/v1", "note": note,
                      "subject": [{"digest": {"sha256": image.digest.hex}}]}).encode()
    return attach(image.descriptor(), IN_TOTO, doc, CREATED, {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v1"})


def sbom(image: Image) -> Referrer:
    return attach(image.descriptor(), SPDX, b'{"spdxVersion": "SPDX-2.3"}', CREATED)


def fallback_index(registry: FakeRegistry, repo: str, subject: Digest) -> dict[str, Any] | None:
    digest = registry.tags.get((repo, fallback_tag(subject)))
    return None if digest is None else json.loads(registry.manifests[digest][0])


def test_push_attaches_and_reads_back(tmp_path: Path, registry: FakeRegistry) -> None:
    image = make_image(tmp_path, {"etc/app": b"1\n"})
    attached = [statement(image), sbom(image)]
    ref = registry.ref("test/app:1")
    assert push(image, ref, FAST, referrers=attached) == image.digest
    assert registry.tags[("test/app", "1")] == str(image.digest)  # the image itself is untouched
    index = fallback_index(registry, "test/app", image.digest)
    if registry.referrers_api:
        assert index is None  # the registry indexed them: no tag is written
    else:
        assert index is not None
        assert [d["digest"] for d in index["manifests"]] == [str(r.digest) for r in attached]
        assert [d["artifactType"] for d in index["manifests"]] == [IN_TOTO, SPDX]
    [(img, found)] = referrers_of(ref, FAST, image)
    assert img.digest == image.digest
    assert sorted(r.raw_manifest for r in found) == sorted(r.raw_manifest for r in attached)
    assert {r.document for r in found} == {r.document for r in attached}


def test_artifact_type_filter(tmp_path: Path, registry: FakeRegistry) -> None:
    image = make_image(tmp_path, {"etc/app": b"1\n"})
    push(image, registry.ref(), FAST, referrers=[statement(image), sbom(image)])
    with RegistryClient(registry.ref(), FAST) as client:
        assert [d.artifact_type for d in list_referrers(client, image.digest, SPDX)] == [SPDX]
        registry.filters_applied = False  # a registry that ignores the filter: the client filters
        assert [d.artifact_type for d in list_referrers(client, image.digest, IN_TOTO)] == [IN_TOTO]
    if registry.referrers_api:
        query = registry.requests("GET", r"/referrers/")[0].query
        assert query["artifactType"] == [SPDX]  # '+' sent escaped, not read as a space


def test_pushing_again_keeps_one_entry_and_adds_new_ones(tmp_path: Path) -> None:
    registry = FakeRegistry()
    try:
        image = make_image(tmp_path, {"etc/app": b"1\n"})
        first = statement(image)
        push(image, registry.ref(), FAST, referrers=[first])
        tag_puts = len(registry.requests("PUT", fallback_tag(image.digest)))
        push(image, registry.ref(), FAST, referrers=[first])  # the image exists: its referrers still go
        assert len(registry.requests("PUT", fallback_tag(image.digest))) == tag_puts  # nothing new to list
        second = statement(image, "again")
        push(image, registry.ref(), FAST, referrers=[second])
        index = fallback_index(registry, "test/app", image.digest)
        assert index is not None
        assert [d["digest"] for d in index["manifests"]] == [str(first.digest), str(second.digest)]
    finally:
        registry.stop()


def test_each_platform_gets_its_own(tmp_path: Path, registry: FakeRegistry) -> None:
    amd = make_image(tmp_path / "a", {"etc/arch": b"amd64\n"})
    arm = make_image(tmp_path / "b", {"etc/arch": b"arm64\n"}, platform=ARM64)
    index = make_index([amd, arm])
    push(index, registry.ref(), FAST, referrers=[statement(amd), statement(arm), sbom(arm)])
    found = {img.platform: sorted(r.artifact_type for r in refs) for img, refs in referrers_of(registry.ref(), FAST, index)}
    assert found == {amd.platform: [IN_TOTO], arm.platform: sorted([IN_TOTO, SPDX])}


def test_an_image_without_referrers(tmp_path: Path, registry: FakeRegistry) -> None:
    image = make_image(tmp_path, {"etc/app": b"1\n"})
    push(image, registry.ref(), FAST)
    assert referrers_of(registry.ref(), FAST, image) == [(image, [])]


def test_a_tampered_document_is_refused(tmp_path: Path, registry: FakeRegistry) -> None:
    image = make_image(tmp_path, {"etc/app": b"1\n"})
    attached = statement(image)
    push(image, registry.ref(), FAST, referrers=[attached])
    registry.blobs[str(Digest.of(attached.document))] = b'{"forged": true}'
    with pytest.raises((IntegrityError, RegistryError)):
        referrers_of(registry.ref(), FAST, image)


def test_a_referrer_of_another_subject_is_not_shown(tmp_path: Path) -> None:
    """A fallback index is only a tag: whatever it lists must name this very subject."""
    registry = FakeRegistry()
    try:
        image = make_image(tmp_path / "a", {"etc/app": b"1\n"})
        other = make_image(tmp_path / "b", {"etc/app": b"2\n"})
        push(other, registry.ref("test/app:other"), FAST, referrers=[statement(other)])
        push(image, registry.ref(), FAST)
        stray = registry.tags[("test/app", fallback_tag(other.digest))]
        registry.tags[("test/app", fallback_tag(image.digest))] = stray  # a tag pointing at other's list
        assert referrers_of(registry.ref(), FAST, image) == [(image, [])]
    finally:
        registry.stop()
