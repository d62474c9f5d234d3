"""Image references: Docker's normalisation and the distribution-spec grammar, and clear refusals."""

from __future__ import annotations

import pytest

from builder.oci.digest import Digest
from builder.oci.reference import DOCKER_HUB, DOCKER_HUB_API, Reference

HEX = "a" * 64
DIGEST = f"sha256:{HEX}"

GOOD = [
    # text, registry, repository, tag, digest
    ("alpine", "docker.io", "library/alpine", "latest", None),
    ("alpine:3.20", "docker.io", "library/alpine", "3.20", None),
    ("library/alpine", "docker.io", "library/alpine", "latest", None),
    ("docker.io/alpine", "docker.io", "library/alpine", "latest", None),
    ("index.docker.io/library/alpine", "docker.io", "library/alpine", "latest", None),
    ("index.docker.io/alpine:edge", "docker.io", "library/alpine", "edge", None),
    ("user/app", "docker.io", "user/app", "latest", None),
    ("ghcr.io/org/img@" + DIGEST, "ghcr.io", "org/img", None, DIGEST),
    ("localhost:5000/x:1", "localhost:5000", "x", "1", None),
    ("localhost/x", "localhost", "x", "latest", None),
    ("127.0.0.1:5000/a/b", "127.0.0.1:5000", "a/b", "latest", None),
    ("[::1]:5000/x", "[::1]:5000", "x", "latest", None),
    ("[fe80::1]/x:t", "[fe80::1]", "x", "t", None),
    ("host.example.com/a/b/c:v1.2-rc_3", "host.example.com", "a/b/c", "v1.2-rc_3", None),
    ("name:tag@" + DIGEST, "docker.io", "library/name", "tag", DIGEST),
    ("ghcr.io/org/img:1.0@" + DIGEST, "ghcr.io", "org/img", "1.0", DIGEST),
    ("Registry.Example.COM:443/org/x", "registry.example.com:443", "org/x", "latest", None),
    ("registry-1.docker.io/library/alpine", "registry-1.docker.io", "library/alpine", "latest", None),
    ("a__b/c.d-e---f_g", "docker.io", "a__b/c.d-e---f_g", "latest", None),
    ("x:_Tag.With-Caps", "docker.io", "library/x", "_Tag.With-Caps", None),
    ("x@sha512:" + "b" * 128, "docker.io", "library/x", None, "sha512:" + "b" * 128),
    # as Docker: without a '/' after it, 'localhost:5000' is the image 'localhost' with tag 5000
    ("localhost:5000", "docker.io", "library/localhost", "5000", None),
]


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "digest"), GOOD, ids=[g[0][:40] for g in GOOD])
def test_good_references(text: str, registry: str, repository: str, tag: str | None, digest: str | None) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag) == (registry, repository, tag)
    assert ref.digest == (Digest.parse(digest) if digest else None)
    # the normalised form parses to the same reference
    assert Reference.parse(str(ref)) == ref


def test_str_api_host_and_identifier() -> None:
    ref = Reference.parse("alpine:3.20")
    assert str(ref) == "docker.io/library/alpine:3.20"
    assert ref.name == "docker.io/library/alpine"
    assert ref.registry == DOCKER_HUB
    assert ref.api_host == DOCKER_HUB_API
    assert ref.identifier == "3.20"

    local = Reference.parse("localhost:5000/x")
    assert local.api_host == "localhost:5000"
    assert local.identifier == "latest"

    pinned = Reference.parse("ghcr.io/org/img:1@" + DIGEST)
    assert str(pinned) == f"ghcr.io/org/img:1@{DIGEST}"
    assert pinned.identifier == Digest.parse(DIGEST)  # the digest wins over the tag, and stays a Digest

    only_digest = Reference.parse("ghcr.io/org/img@" + DIGEST)
    assert str(only_digest) == f"ghcr.io/org/img@{DIGEST}"


def test_with_digest_keeps_the_tag() -> None:
    ref = Reference.parse("ghcr.io/org/img:1.0")
    d = Digest.parse(DIGEST)
    pinned = ref.with_digest(d)
    assert (pinned.tag, pinned.digest, pinned.identifier) == ("1.0", d, d)
    assert ref.digest is None  # frozen: the original is untouched
    assert str(pinned) == f"ghcr.io/org/img:1.0@{DIGEST}"


def test_references_are_hashable_values() -> None:
    assert Reference.parse("alpine") == Reference.parse("docker.io/library/alpine:latest")
    assert len({Reference.parse("alpine"), Reference.parse("index.docker.io/library/alpine")}) == 1
    with pytest.raises(AttributeError):
        Reference.parse("alpine").tag = "x"  # type: ignore[misc]


BAD = [
    ("", "invalid reference '': empty"),
    ("Foo/bar", "invalid reference 'Foo/bar': repository must be lowercase"),
    ("ghcr.io/org/Img", "invalid reference 'ghcr.io/org/Img': repository must be lowercase"),
    ("ALPINE", "repository must be lowercase"),
    ("alpine:", "empty tag"),
    ("alpine:-x", "invalid tag '-x'"),
    ("alpine:.x", "invalid tag '.x'"),
    ("alpine:" + "a" * 129, "invalid tag"),
    ("alpine:a/b", "invalid port 'a' in registry 'alpine:a'"),  # a ':' before the first '/' makes a registry
    ("alpine@sha256:abc", "invalid digest 'sha256:abc'"),
    ("alpine@md5:" + "a" * 32, "invalid digest"),
    ("alpine@sha256:" + "A" * 64, "invalid digest"),
    ("alpine@", "invalid digest ''"),
    ("ghcr.io/", "missing repository name"),
    ("ghcr.io//x", "empty path component"),
    ("a/b/", "empty path component"),
    ("_x", "invalid repository name component '_x'"),
    ("a..b", "invalid repository name component 'a..b'"),
    ("a___b", "invalid repository name component 'a___b'"),
    ("a-", "invalid repository name component 'a-'"),
    ("a b", "contains whitespace"),
    (" alpine", "contains whitespace"),
    ("https://ghcr.io/x", "no URL scheme (drop 'https://')"),
    ("docker://alpine", "no URL scheme (drop 'docker://')"),
    ("ex_ample.com/x", "invalid registry host 'ex_ample.com'"),
    ("host-.example.com/x", "invalid registry host"),
    ("example.com./x", "invalid registry host"),
    ("host:99999/x", "invalid port '99999'"),
    ("host:0/x", "invalid port '0'"),
    ("host:abc/x", "invalid port 'abc'"),
    ("host:/x", "invalid port ''"),
    ("[::1/x", "unclosed '['"),
    ("[zz::1]:5000/x", "invalid IPv6 address"),
    ("::1:5000/x", "IPv6 address must be written in brackets"),
    ("[::1]x/y", "expected [IPv6]:PORT"),
    ("ghcr.io/" + "a" * 250, "longer than 255 characters"),
    ("a" * 247, "longer than 255 characters"),  # docker.io/library/ counts
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[b[0][:30] or "empty" for b in BAD])
def test_bad_references(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"^invalid reference ") as err:
        Reference.parse(text)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_name_of_exactly_255_characters_is_accepted() -> None:
    ref = Reference.parse("ghcr.io/" + "a" * (255 - len("ghcr.io/")))
    assert len(ref.name) == 255


@pytest.mark.parametrize("text", ["user:s3cr3t-pw@ghcr.io/org/x", "https://user:s3cr3t-pw@ghcr.io/org/x:1"])
def test_credentials_in_a_reference_are_refused_without_echoing_them(text: str) -> None:
    with pytest.raises(ValueError, match="user names and passwords do not belong in a reference") as err:
        Reference.parse(text)
    assert "s3cr3t-pw" not in str(err.value)
    assert "***@ghcr.io/org/x" in str(err.value)


def test_long_input_is_cut_in_the_message() -> None:
    with pytest.raises(ValueError) as err:
        Reference.parse("A" * 5000)
    assert len(str(err.value)) < 400
