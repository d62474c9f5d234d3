"""A build's provenance: an in-toto Statement v1 with a SLSA provenance v1 predicate.

Everything in it is known at build time and already hashed for the layer cache: the recipe (its
path and bytes), the build args it declares and was given, the platform, and every material a
step read from outside the recipe (a ``rootfs:`` tarball's digest, a ``fetch:`` file's sha256,
the digest of what each ``copy`` read from the context, each base image's digest). Never a
secret, a secret's path or content, a cache mount, or a credential: none of them is an input of
a step's key, and the statement is made only from those inputs.

The bytes are deterministic: canonical JSON, dates from the build epoch, no clock, no random
id, so two builds of the same recipe give the same statement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.oci import config as cfgmod
from builder.oci.canonical import canonical_json
from builder.oci.digest import Digest
from builder.oci.platform import Platform

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
MEDIA_TYPE = "application/vnd.in-toto+json"
BUILD_TYPE = "urn:pybuild:build-type:recipe:v1"
"""What the predicate's parameters mean: a pybuild recipe built with these arguments."""
BUILDER_ID = "urn:pybuild:builder"


@dataclass(frozen=True)
class Material:
    """Something a build read from outside the recipe, by name and content digest."""

    uri: str
    digest: Digest


def statement(*, subject_name: str, subject: Digest, recipe: Path, recipe_digest: Digest,
              args: Mapping[str, str], platform: Platform, epoch: int, version: str,
              materials: Sequence[Material], target: str | None = None) -> bytes:
    """The statement's bytes (canonical JSON) for the image ``subject`` (its manifest digest)."""
    unique = {(m.uri, str(m.digest)): m for m in materials}
    external: dict[str, object] = {
        "recipe": {"path": recipe.name, "digest": {recipe_digest.algorithm: recipe_digest.hex}},
        "args": dict(sorted(args.items())),
        "platform": str(platform),
    }
    if target is not None:
        external["target"] = target
    when = cfgmod.rfc3339(epoch)
    return canonical_json({
        "_type": STATEMENT_TYPE,
        "subject": [{"name": subject_name, "digest": {subject.algorithm: subject.hex}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "resolvedDependencies": [{"uri": m.uri, "digest": {m.digest.algorithm: m.digest.hex}}
                                         for _, m in sorted(unique.items())],
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": {"pybuild": version}},
                "metadata": {"startedOn": when, "finishedOn": when},
            },
        },
    })
