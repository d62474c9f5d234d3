"""builder.fs.atomic: whole files or none, explicit modes, verified copies."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from builder.errors import IntegrityError, OutputError
from builder.fs.atomic import (
    ContentMismatchError,
    atomic_file,
    atomic_path,
    copy_verified,
    masked,
    new_file,
    write_atomic,
    write_file,
)
from builder.oci.digest import Digest


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_failed_write_leaves_the_old_content_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write(b"half")
        raise RuntimeError("killed half way")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_modes_are_set_explicitly_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "secret", b"x", 0o600)
        write_atomic(tmp_path / "shared", b"x", 0o644)
        write_atomic(tmp_path / "plain", b"x")  # as open() gives: 0666 less the umask
        assert masked(0o666) == 0o600
    finally:
        os.umask(old)
    assert (_mode(tmp_path / "secret"), _mode(tmp_path / "shared"), _mode(tmp_path / "plain")) == (0o600, 0o644, 0o600)


def test_nothing_is_written_through_a_planted_link(tmp_path: Path) -> None:
    (tmp_path / "planted").symlink_to(tmp_path / "victim")
    with pytest.raises(FileExistsError):
        os.close(new_file(tmp_path / "planted", 0o600))
    assert not (tmp_path / "victim").exists()


def test_atomic_path_renames_what_the_block_made_and_drops_what_it_refused(tmp_path: Path) -> None:
    target = tmp_path / "blob"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"made")
    assert target.read_bytes() == b"made"
    with pytest.raises(IntegrityError), atomic_path(target) as tmp:
        tmp.write_bytes(b"wrong")
        raise IntegrityError("refused")
    assert target.read_bytes() == b"made"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob"]


def test_write_file_names_the_file_in_its_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"cannot write '.*/missing/f': No such file or directory"):
        write_file(tmp_path / "missing" / "f", b"x")


def test_copy_verified_checks_size_then_digest_and_stops_early() -> None:
    data = b"a" * 10
    digest = Digest.of(data)
    out = io.BytesIO()
    assert copy_verified(io.BytesIO(data), out, digest, 10) == 10 and out.getvalue() == data
    assert copy_verified(iter([data[:4], data[4:]]), None, digest) == 10
    long = io.BytesIO(b"a" * (3 << 20))
    with pytest.raises(ContentMismatchError) as larger:
        copy_verified(long, None, digest, 10)
    assert (larger.value.kind, larger.value.count, long.tell()) == ("larger", 11, 11)  # size + 1 read, no more
    with pytest.raises(ContentMismatchError) as short:
        copy_verified(io.BytesIO(data[:9]), None, digest, 10)
    assert short.value.kind == "size"
    with pytest.raises(ContentMismatchError) as other:
        copy_verified(io.BytesIO(b"b" * 10), None, digest, 10)
    assert other.value.kind == "digest" and other.value.actual == Digest.of(b"b" * 10)
    blocks = iter([b"x" * 6, b"x" * 6, b"never read"])
    with pytest.raises(ContentMismatchError, match="12 bytes"):
        copy_verified(blocks, None, digest, limit=10)
    assert next(blocks) == b"never read"
