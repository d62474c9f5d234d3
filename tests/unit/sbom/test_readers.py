"""Each package database reader on bytes as its tool writes them, and on bytes it was not written for."""

from __future__ import annotations

import struct

import pytest

from builder.sbom import apk, dpkg, python, rpm
from builder.sbom.licences import spdx_expression
from builder.sbom.model import Record

from .factory import apk_installed, dpkg_status, metadata, rpm_header, rpm_package, rpmdb


def test_dpkg_lists_installed_packages_with_arch_and_source():
    data = dpkg_status(("libc6", "2.36-9+deb12u4"), source="glibc (2.36-9)") + b"\n" + dpkg_status(
        ("base-files", "12.4"), arch="all")
    assert dpkg.parse(data) == [Record("deb", "libc6", "2.36-9+deb12u4", "amd64", "glibc"),
                                Record("deb", "base-files", "12.4", "all")]


def test_dpkg_skips_packages_that_are_not_installed():
    data = b"\n".join([dpkg_status(("gone", "1.0"), status="deinstall ok config-files"),
                       dpkg_status(("held", "2.0"), status="hold ok installed"),
                       dpkg_status(("half", "3.0"), status="install ok half-installed")])
    assert [r.name for r in dpkg.parse(data)] == ["held"]


def test_dpkg_status_d_entry_without_status_counts():
    assert dpkg.parse(b"Package: tzdata\nVersion: 2024a-0+deb12u1\nArchitecture: all\n") == [
        Record("deb", "tzdata", "2024a-0+deb12u1", "all")]


def test_dpkg_database_paths():
    assert dpkg.is_database("var/lib/dpkg/status")
    assert dpkg.is_database("var/lib/dpkg/status.d/libc6")
    assert not dpkg.is_database("var/lib/dpkg/status.d/libc6.md5sums")
    assert not dpkg.is_database("var/lib/dpkg/status-old")
    assert not dpkg.is_database("var/lib/dpkg/status.d/a/b")


def test_apk_reads_name_version_arch_licence_origin():
    data = apk_installed(("musl", "1.2.4-r2", "MIT"), ("busybox", "1.36.1-r15", "GPL-2.0-only"))
    assert apk.parse(data) == [Record("apk", "musl", "1.2.4-r2", "x86_64", "musl", "MIT"),
                               Record("apk", "busybox", "1.36.1-r15", "x86_64", "busybox", "GPL-2.0-only")]


def test_apk_without_trailing_blank_line_and_incomplete_paragraph():
    assert apk.parse(b"P:zlib\nV:1.3-r0\nA:aarch64") == [Record("apk", "zlib", "1.3-r0", "aarch64")]
    assert apk.parse(b"P:noversion\n\nV:1\n\n") == []


def test_rpm_header_blob_parsed(tmp_path):
    db = rpmdb(tmp_path, rpm_package("bash", "5.2.15", "3.fc39", licence="GPL-3.0-or-later"),
               rpm_package("shadow-utils", "4.14.0", "2.fc39", epoch=2),
               rpm_header({1000: "gpg-pubkey", 1001: "abcd", 1002: "1234"}))
    assert rpm.parse(db) == [
        Record("rpm", "bash", "5.2.15-3.fc39", "x86_64", "bash-5.2.15-3.fc39.src.rpm", "GPL-3.0-or-later"),
        Record("rpm", "shadow-utils", "4.14.0-2.fc39", "x86_64", "shadow-utils-4.14.0-2.fc39.src.rpm", "MIT", "2"),
    ]


@pytest.mark.parametrize("blob", [
    b"", b"\0\0\0", struct.pack(">II", 1 << 30, 0), struct.pack(">II", 2, 1 << 30),
    struct.pack(">II", 1, 4) + struct.pack(">iIiI", 1000, 6, 999, 1) + b"abcd",  # offset outside the store
    struct.pack(">II", 1, 4) + struct.pack(">iIiI", 1000, 6, 0, 1) + b"abcd",  # no terminating NUL
    struct.pack(">II", 1, 2) + struct.pack(">iIiI", 1003, 4, 0, 1) + b"ab",  # INT32 past the end
    b"\xff" * 64,
])
def test_garbage_rpm_headers_are_skipped(tmp_path, blob):
    db = rpmdb(tmp_path, blob, rpm_package("ok", "1", "1"))
    assert [r.name for r in rpm.parse(db)] == ["ok"]


@pytest.mark.parametrize("data", [b"", b"not sqlite at all" * 100, b"SQLite format 3\0" + b"\xff" * 4000])
def test_what_is_not_an_rpmdb_lists_nothing(data):
    assert rpm.parse(data) == []


def test_rpmdb_truncated_lists_nothing_or_what_it_can(tmp_path):
    db = rpmdb(tmp_path, *(rpm_package(f"p{i}", "1", "1") for i in range(500)))
    assert len(rpm.parse(db)) == 500
    assert len(rpm.parse(db[: len(db) // 2])) <= 500  # no exception


def test_python_metadata_name_version_and_licence_sources():
    assert python.parse(metadata("Requests", "2.31.0", "License: Apache 2.0")) == [
        Record("pypi", "Requests", "2.31.0", licence="Apache 2.0")]
    assert python.parse(metadata("x", "1", "License-Expression: MIT OR Apache-2.0", "License: BSD")) == [
        Record("pypi", "x", "1", licence="MIT OR Apache-2.0")]
    assert python.parse(metadata("y", "2", "License: UNKNOWN",
                                 "Classifier: License :: OSI Approved :: MIT License",
                                 "Classifier: Programming Language :: Python")) == [
        Record("pypi", "y", "2", licence="MIT")]
    long_text = "License: Copyright (c) 2020\n        Permission is hereby granted, free of charge"
    assert python.parse(metadata("z", "3", long_text)) == [Record("pypi", "z", "3")]


def test_python_metadata_without_version_is_skipped():
    assert python.parse(b"Name: foo\n") == []
    assert python.parse(b"\xff\xfe garbage \0\0") == []


def test_python_metadata_places():
    assert python.is_metadata("usr/lib/python3/dist-packages/six-1.16.0.dist-info/METADATA")
    assert python.is_metadata("opt/venv/lib/python3.12/site-packages/foo-1.0-py3.12.egg-info/PKG-INFO")
    assert python.is_metadata("usr/lib/python3/dist-packages/foo-1.0.egg-info")
    assert not python.is_metadata("usr/share/doc/METADATA")
    assert not python.is_metadata("usr/lib/python3/x.dist-info/RECORD")
    assert python.normalise("Foo_Bar.baz") == "foo-bar-baz"


@pytest.mark.parametrize(("text", "expected"), [
    ("MIT", "MIT"), ("mit", "MIT"), ("GPL-2.0+", "GPL-2.0+"), ("(MIT OR Apache-2.0) AND bsd-3-clause",
                                                              "(MIT OR Apache-2.0) AND BSD-3-Clause"),
    ("GPL-2.0-or-later WITH Linux-syscall-note", "GPL-2.0-or-later WITH Linux-syscall-note"),
    ("MIT BSD", None), ("custom", None), ("MIT AND", None), ("(MIT", None), ("GPL-2.0-only+", None),
    ("MIT WITH", None), ("", None), ("(" * 40 + "MIT" + ")" * 40, None),
])
def test_spdx_expression_check(text, expected):
    assert spdx_expression(text) == expected
