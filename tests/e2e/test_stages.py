"""Multi-stage builds: a stage builds, the final image copies only its artifact."""

from __future__ import annotations

import gzip
import json
import tarfile
from pathlib import Path

import pytest

from .runtimes import describe

pytestmark = [pytest.mark.tools]

RECIPE = """\
version: 1
tag: final
stages:
  build:
    from: scratch
    steps:
      - rootfs: rootfs.tar.gz
      - run: |
          mkdir -p /out/bin /out/share
          printf '#!/bin/sh\\necho artifact from stage\\n' > /out/bin/tool && chmod 0755 /out/bin/tool
          chown 1000:1000 /out/bin/tool
          echo doc > /out/share/doc && ln /out/share/doc /out/share/doc-link
          ln -s tool /out/bin/tool-link
  unused:
    from: scratch
    steps:
      - run: exit 1
  base:
    from: scratch
    steps:
      - rootfs: rootfs.tar.gz
from: base
steps:
  - copy: /out/
    from: build
    to: /opt/app/
config:
  cmd: ["/bin/sh", "-c", "/opt/app/bin/tool; stat -c '%a %u:%g %h' /opt/app/bin/tool /opt/app/share/doc; readlink /opt/app/bin/tool-link"]
"""


def test_final_image_holds_only_the_copied_artifact(pybuild, ctx: Path, tmp_path: Path, oci_check, runc) -> None:
    (ctx / "pybuild.yaml").write_text(RECIPE)
    out = tmp_path / "out"
    meta = tmp_path / "meta.json"
    built = pybuild(ctx / "pybuild.yaml", "-o", out, "--metadata-file", meta, "--progress", "plain")
    assert built.returncode == 0, describe(built)
    assert "unused" not in built.stderr  # a stage nothing needs is never built
    assert oci_check(out, strict=True, ref="final").returncode == 0
    desc = json.loads(meta.read_text())
    assert len(desc["layers"]) == 2  # the base stage's rootfs + the copy
    blob = out / "blobs" / "sha256" / desc["layers"][1]["digest"].split(":")[1]
    with tarfile.open(fileobj=gzip.open(blob)) as tf:
        members = {m.name: m for m in tf}
    assert set(members) == {"opt", "opt/app", "opt/app/bin", "opt/app/bin/tool", "opt/app/bin/tool-link",
                            "opt/app/share", "opt/app/share/doc", "opt/app/share/doc-link"}
    tool = members["opt/app/bin/tool"]
    assert (tool.mode, tool.uid, tool.gid) == (0o755, 1000, 1000)
    assert members["opt/app/share/doc-link"].islnk() or members["opt/app/share/doc"].islnk()
    ran = runc.run(out, "final")
    assert ran.stdout.splitlines() == ["artifact from stage", "755 1000:1000 1", "644 0:0 2", "tool"], describe(ran)
