"""Properties that cross module boundaries, each with a fixed, derandomized hypothesis budget.

Every property runs with ``settings(max_examples=N, deadline=None, derandomize=True,
database=None)``: the same N examples on every run and every machine, so a failure reproduces
and the runtime stays put. Budgets (the whole module: about 10 s here; it must stay under 2 min):

====================================================  ====  ==============================================
property                                              N     one example
====================================================  ====  ==============================================
test_whiteouts_agree_with_umoci                        40   2-4 random layers -> OCI layout -> unpacked by
                                                            ``fs.apply.unpack_layers`` and ``umoci unpack``
test_layer_tar_bytes_ignore_input_order               150   a change set, 3 shuffles (and 3 choices of each
                                                            hardlink group's root) -> canonical -> write_tar
test_any_recipe_shaped_yaml_loads_or_is_a_recipe_error 400  a document made of the recipe's own keys with
                                                            values of every YAML type -> load_recipe
test_diff_through_the_blob_pipeline_gives_b            40   tree A mutated into B -> diff -> write_layer_blob
                                                            (gzip and zstd) -> apply_blob onto A
====================================================  ====  ==============================================

The first needs umoci (one subprocess per example, about 30 ms) and root, the last root (owners);
without them they skip locally and fail on CI, as every tool-dependent test does. To hunt with a
bigger budget once, without changing the committed one::

    f = test_whiteouts_agree_with_umoci
    f._hypothesis_internal_use_settings = settings(max_examples=2000, deadline=None, database=None)
    f()
"""

from __future__ import annotations

import datetime
import io
import itertools
import os
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from builder.errors import InputError, RecipeError
from builder.fs.apply import apply_blob, unpack_layers
from builder.fs.diff import diff
from builder.fs.snapshot import snapshot
from builder.image import Image, LayerBlob
from builder.layer.blob import write_layer_blob
from builder.layer.compress import Compression
from builder.layer.entry import WH_OPAQUE, WH_PREFIX, Change, Entry, Kind, Opaque, Whiteout, parents
from builder.layer.order import canonical
from builder.layer.tarwriter import write_tar
from builder.layout.read import read_layout
from builder.layout.write import write_layout
from builder.oci.canonical import canonical_json
from builder.oci.config import append_layer, empty_config, rfc3339
from builder.oci.descriptor import Descriptor
from builder.oci.digest import Digest
from builder.oci.manifest import image_manifest
from builder.oci.mediatypes import MediaType
from builder.recipe import load_recipe
from builder.recipe.model import Recipe
from tests.helpers import AMD64, compress

# The random trees of the diff round trip, and how they are made on disk and observed.
from tests.unit.fs.test_diff import _expected, _materialise, _mutate, _observe, a_and_b

EPOCH = 2_000_000_000  # above every mtime drawn except the ones that test clamping


def budget(n: int) -> settings:
    """The fixed budget of one property (see the module docstring)."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _opener(data: bytes) -> Any:
    return lambda: io.BytesIO(data)


# ============================================================================================
# 1. whiteouts: fs.apply agrees with umoci
#
# A layer is drawn as specs, readable in a falsifying example:
#   ("dir", path, mode, uid, gid)          ("file", path, mode, uid, gid, content, mtime)
#   ("symlink", path, target, uid, gid)    ("link", path, target)   (a hardlink to a file of the layer)
#   ("wh", path)                           ("opq", dir)
# Every layer holds its parent directories, as pybuild's layers do, so whiteouts and entries never
# go through a symlink of a lower layer. Without them the two differ on purpose in places: a path
# through a symlink is resolved as the kernel does by fs.apply (``l -> x/..`` with no ``x`` is
# missing, ``l -> l/..`` a loop) but lexically by umoci's securejoin; a whiteout under a lower
# *file* is an error here and a no-op there; an implicit parent made in a setgid directory
# differs (0755 here, 02755 there).

NAMES = ("a", "b", "c")
TREE_PATHS = tuple(sorted("/".join(p) for n in (1, 2, 3) for p in itertools.product(NAMES, repeat=n)))
DIR_MODES = (0o755, 0o700, 0o555, 0o1777, 0o2775)
FILE_MODES = (0o644, 0o600, 0o755, 0o444, 0o4755, 0o2711, 0o000)
IDS = (0, 1, 1000, 65534)
LINK_TARGETS = ("a", "../b", "/a/b", "/nonexistent", "c/a", ".", "b/../../..")
MTIMES = (0, 1, 1_700_000_000)
SMALL_CONTENT = st.one_of(st.sampled_from([b"", b"x", b"one\n", b"z" * 600]), st.binary(max_size=24))

Spec = tuple[Any, ...]


@st.composite
def layer_specs(draw: st.DrawFn, lower: Sequence[str]) -> list[Spec]:
    """One layer over ``lower`` (every path some earlier layer added; whiteouts aim at them)."""
    kinds = draw(st.dictionaries(st.sampled_from(TREE_PATHS),
                                 st.sampled_from(["file", "file", "dir", "dir", "symlink", "link"]), max_size=6))
    whiteouts = draw(st.sets(st.sampled_from(lower), max_size=4)) if lower else set()
    opaques = draw(st.sets(st.sampled_from(lower or TREE_PATHS[:3]), max_size=2))
    for path in [*kinds, *whiteouts, *opaques]:
        for parent in parents(path):
            kinds[parent] = "dir"
    for path in opaques:
        kinds[path] = "dir"
    whiteouts = {w for w in whiteouts if w not in kinds}  # deleted and added in one layer: not a layer
    ids = st.sampled_from(IDS)
    specs: list[Spec] = []
    files: dict[str, Spec] = {}
    for path, kind in sorted(kinds.items()):
        if kind == "dir":
            specs.append(("dir", path, draw(st.sampled_from(DIR_MODES)), draw(ids), draw(ids)))
        elif kind == "symlink":
            specs.append(("symlink", path, draw(st.sampled_from(LINK_TARGETS)), draw(ids), draw(ids)))
        elif kind == "link" and files:
            specs.append(("link", path, draw(st.sampled_from(sorted(files)))))
        else:
            files[path] = ("file", path, draw(st.sampled_from(FILE_MODES)), draw(ids), draw(ids),
                           draw(SMALL_CONTENT), draw(st.sampled_from(MTIMES)))
            specs.append(files[path])
    specs += [("wh", w) for w in sorted(whiteouts)] + [("opq", o) for o in sorted(opaques)]
    return specs


@st.composite
def layer_stacks(draw: st.DrawFn) -> list[list[Spec]]:
    stack: list[list[Spec]] = []
    seen: set[str] = set()
    for _ in range(draw(st.integers(2, 4))):
        stack.append(draw(layer_specs(sorted(seen))))
        seen |= {s[1] for s in stack[-1] if s[0] not in ("wh", "opq")}
    return stack


def _changes(specs: list[Spec]) -> list[Change]:
    files = {s[1]: s for s in specs if s[0] == "file"}
    out: list[Change] = []
    for s in specs:
        if s[0] == "dir":
            out.append(Entry(s[1], Kind.DIR, s[2], s[3], s[4]))
        elif s[0] == "file":
            out.append(Entry(s[1], Kind.FILE, s[2], s[3], s[4], len(s[5]), s[6], content=_opener(s[5])))
        elif s[0] == "symlink":
            out.append(Entry(s[1], Kind.SYMLINK, 0o777, s[3], s[4], link=s[2]))
        elif s[0] == "link":  # one inode: the target's metadata, as every real layer writer records it
            _, _, mode, uid, gid, _, mtime = files[s[2]]
            out.append(Entry(s[1], Kind.HARDLINK, mode, uid, gid, 0, mtime, link=s[2]))
        elif s[0] == "wh":
            out.append(Whiteout(s[1]))
        else:
            out.append(Opaque(s[1]))
    return out


def _layer_tar(changes: list[Change]) -> bytes:
    buf = io.BytesIO()
    write_tar(canonical(changes), buf, EPOCH)
    return buf.getvalue()


def _image(store: Path, tars: Sequence[bytes]) -> Image:
    """An image of these layer tars (gzip), blobs under ``store`` (as tests/helpers.make_image, N layers)."""
    layers: list[LayerBlob] = []
    cfg = empty_config(AMD64)
    for n, tar in enumerate(tars):
        blob, media_type = compress(tar, "gzip")
        digest = Digest.of(blob)
        (store / digest.hex).write_bytes(blob)
        layers.append(LayerBlob(Descriptor(media_type, digest, len(blob)), Digest.of(tar), store / digest.hex,
                                len(tar), True))
        cfg = append_layer(cfg, Digest.of(tar), rfc3339(0), f"property layer {n}")
    raw_config = canonical_json(cfg)
    cdesc = Descriptor(MediaType.OCI_CONFIG, Digest.of(raw_config), len(raw_config))
    raw_manifest = canonical_json(image_manifest(cdesc, [layer.descriptor for layer in layers]))
    return Image(raw_manifest, raw_config, MediaType.OCI_MANIFEST, tuple(layers), AMD64)


def _rootfs(root: Path) -> dict[str, tuple[object, ...]]:
    """Path -> (type, mode, uid, gid, content or link target, file mtime, hardlink partners)."""
    out: dict[str, tuple[object, ...]] = {}
    by_inode: dict[int, list[str]] = {}
    for top, dirs, files in os.walk(root):  # symlinks to directories are listed, never entered
        for name in dirs + files:
            path = os.path.join(top, name)
            rel = os.path.relpath(path, root)
            st_ = os.lstat(path)
            fmt = stat.S_IFMT(st_.st_mode)
            detail: object = None
            if fmt == stat.S_IFREG:
                with open(path, "rb") as f:
                    detail = f.read()
                by_inode.setdefault(st_.st_ino, []).append(rel)
            elif fmt == stat.S_IFLNK:
                detail = os.readlink(path)
            out[rel] = (stat.filemode(st_.st_mode)[0], None if fmt == stat.S_IFLNK else oct(st_.st_mode & 0o7777),
                        st_.st_uid, st_.st_gid, detail, st_.st_mtime_ns if fmt == stat.S_IFREG else None)
    for members in by_inode.values():
        for rel in members:
            out[rel] = (*out[rel], tuple(sorted(members)))
    return out


def _differences(ours: dict[str, tuple[object, ...]], theirs: dict[str, tuple[object, ...]]) -> list[str]:
    return [f"/{p}: pybuild {ours.get(p)!r} != umoci {theirs.get(p)!r}"
            for p in sorted(set(ours) | set(theirs)) if ours.get(p) != theirs.get(p)]


@pytest.mark.needs("umoci", root=True)
@budget(40)
@given(layer_stacks())
def test_whiteouts_agree_with_umoci(stack: list[list[Spec]]) -> None:
    for specs in stack:  # what the examples exercised (--hypothesis-show-statistics)
        for s in specs:
            event(s[0])
    with tempfile.TemporaryDirectory(prefix="pybuild-prop-") as tmp:
        top = Path(tmp)
        store = top / "src-blobs"
        store.mkdir()
        write_layout(top / "layout", _image(store, [_layer_tar(_changes(specs)) for specs in stack]), "t")
        image = read_layout(top / "layout", "t")
        assert isinstance(image, Image)
        unpack_layers(top / "ours", image.layers)
        umoci = subprocess.run(["umoci", "unpack", "--image", f"{top / 'layout'}:t", str(top / "bundle")],
                               capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120, check=False)
        assert umoci.returncode == 0, umoci.stderr
        found = _differences(_rootfs(top / "ours"), _rootfs(top / "bundle" / "rootfs"))
        assert not found, "\n".join(found)


# ============================================================================================
# 2. the tar writer: the same change set in any order gives the same bytes
#
# Names chosen to trip byte-order sorting ("a-b" < "a.b" < "a/" < "ab"), non-ASCII and long (PAX)
# names; every kind of entry; xattrs; whiteouts, opaque markers (at the root too); hardlink groups
# whose declared root (and link chains) change from one rendering to the next.

ODD_NAMES = ("a", "a-b", "a.b", "ab", "B", "\u00e9", "\u65e5\u672c", "a b", "n" * 101)
XATTRS = (("user.a", b"1"), ("user.b", b""), ("security.capability", b"\x01\x00\x00\x02\x20\x00\x00\x00"),
          ("trusted.x", b"\xff\xfe"))
LEAF_KINDS = ("file", "file", "dir", "symlink", "fifo", "char", "block", "wh")


@st.composite
def change_sets(draw: st.DrawFn) -> dict[str, Any]:
    """A valid change set as a spec: ``nodes`` path -> (kind, meta...); ``groups`` of hardlinked paths."""
    names = st.lists(st.sampled_from(ODD_NAMES), min_size=1, max_size=3).map("/".join)
    leaves = draw(st.sets(names, min_size=1, max_size=10))
    dirs = {p for leaf in leaves for p in parents(leaf)}
    leaves -= dirs
    meta = st.tuples(st.integers(0, 0o7777), st.sampled_from((0, 1000, 2**21 + 1)),
                     st.sampled_from((0, 1000, 2**21 + 1)), st.sampled_from((0, 7, EPOCH, EPOCH + 100)),
                     st.lists(st.sampled_from(XATTRS), max_size=2, unique_by=lambda x: x[0]).map(tuple))
    nodes: dict[str, tuple[Any, ...]] = {}
    for d in sorted(dirs):
        if draw(st.integers(0, 9)):  # now and then a parent without an entry of its own
            nodes[d] = ("dir", *draw(meta))
    for leaf in sorted(leaves):
        kind = draw(st.sampled_from(LEAF_KINDS))
        if kind == "file":
            nodes[leaf] = ("file", *draw(meta), draw(SMALL_CONTENT))
        elif kind == "symlink":
            nodes[leaf] = ("symlink", *draw(meta), draw(st.sampled_from(["x", "/etc/passwd", "../" * 40 + "t",
                                                                         "\u00e9/../a", ""])))
        elif kind in ("char", "block"):
            nodes[leaf] = (kind, *draw(meta), draw(st.integers(0, 300)), draw(st.integers(0, 2**20)))
        elif kind in ("dir", "fifo"):
            nodes[leaf] = (kind, *draw(meta))
        else:
            nodes[leaf] = ("wh",)
    opaque = sorted(d for d in ["", *sorted(dirs), *(p for p, n in nodes.items() if n[0] == "dir")]
                    if draw(st.integers(0, 5)) == 0)
    files = sorted(p for p, n in nodes.items() if n[0] == "file")
    groups: list[list[str]] = []
    if len(files) >= 2:
        labels = draw(st.lists(st.sampled_from([None, 0, 1]), min_size=len(files), max_size=len(files)))
        for g in (0, 1):
            members = [f for f, label in zip(files, labels, strict=True) if label == g]
            if len(members) >= 2:
                groups.append(members)
                for m in members[1:]:  # one inode: the same metadata and content for every member
                    nodes[m] = nodes[members[0]]
    return {"nodes": nodes, "opaque": sorted(set(opaque)), "groups": groups}


def _render(spec: dict[str, Any], draw: st.DrawFn) -> list[Change]:
    """One way of writing the change set down: each group's root and link chains drawn, xattrs shuffled."""
    link_to: dict[str, str] = {}
    for members in spec["groups"]:
        order = draw(st.permutations(members))
        for i, m in enumerate(order[1:], 1):  # to the root, or to any member before it (a chain)
            link_to[m] = order[draw(st.integers(0, i - 1))]
    out: list[Change] = [Opaque(d) for d in spec["opaque"]]
    for path, node in spec["nodes"].items():
        kind = node[0]
        if kind == "wh":
            out.append(Whiteout(path))
            continue
        mode, uid, gid, mtime, xattrs = node[1:6]
        xattrs = tuple(draw(st.permutations(xattrs)))
        if path in link_to:
            out.append(Entry(path, Kind.HARDLINK, mode, uid, gid, 0, mtime, link_to[path], xattrs=xattrs))
        elif kind == "file":
            out.append(Entry(path, Kind.FILE, mode, uid, gid, len(node[6]), mtime, xattrs=xattrs,
                             content=_opener(node[6])))
        elif kind == "symlink":
            out.append(Entry(path, Kind.SYMLINK, mode, uid, gid, 0, mtime, node[6], xattrs=xattrs))
        elif kind in ("char", "block"):
            out.append(Entry(path, Kind(kind), mode, uid, gid, 0, mtime, "", node[6], node[7], xattrs))
        else:
            out.append(Entry(path, Kind(kind), mode, uid, gid, 0, mtime, xattrs=xattrs))
    return out


def _marker_dir(name: str) -> tuple[str, str] | None:
    """(directory, marker) for a whiteout or opaque member name, else None."""
    head, _, base = name.rpartition("/")
    return (head, base) if base.startswith(WH_PREFIX) else None


def check_layer_order(data: bytes, spec: dict[str, Any]) -> None:
    """The layer rules, read back with tarfile: what is there, and in which order."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        members = tf.getmembers()
    names = [m.name.rstrip("/") for m in members]
    assert len(set(names)) == len(names), names
    at = {n: i for i, n in enumerate(names)}
    for i, (m, name) in enumerate(zip(members, names, strict=True)):
        assert (m.uname, m.gname) == ("", "") and m.mtime <= EPOCH, m.name
        header = data[m.offset_data - tarfile.BLOCKSIZE:][:100].rstrip(b"\0").decode("utf-8", "surrogateescape")
        assert m.isdir() == m.pax_headers.get("path", header).endswith("/"), m.name  # tarfile strips the '/'
        for parent in parents(name):  # parents before children
            assert at.get(parent, -1) < i, (parent, name)
            assert parent not in at or members[at[parent]].isdir(), (parent, name)
        if m.islnk():  # a hardlink's target is an earlier file of the same layer
            assert at.get(m.linkname, i) < i and not members[at[m.linkname]].isdir(), (name, m.linkname)
        marker = _marker_dir(name)
        if marker is not None:  # opaque, then whiteouts, before anything else in that directory's subtree
            head, base = marker
            assert m.isreg() and m.size == 0, name
            for j, other in enumerate(names):
                inside = other.startswith(head + "/") if head else True
                if not inside or j == i:
                    continue
                other_marker = _marker_dir(other)
                if other_marker is None or other_marker[0] != head:
                    assert j > i, (name, other)
                elif other_marker[1] == WH_OPAQUE:
                    assert j < i, (other, name)
    # exactly the change set: markers, entries, and one content holder per hardlink group
    expected = {(f"{d}/{WH_OPAQUE}" if d else WH_OPAQUE) for d in spec["opaque"]}
    for path, node in spec["nodes"].items():
        head, _, base = path.rpartition("/")
        expected.add(f"{head}/{WH_PREFIX}{base}".lstrip("/") if node[0] == "wh" else path)
    assert set(names) == expected
    for group in spec["groups"]:
        first = min(group, key=at.__getitem__)
        assert members[at[first]].isreg(), first
        assert all(members[at[m]].islnk() and members[at[m]].linkname == first for m in group if m != first)


@budget(150)
@given(spec=change_sets(), data=st.data())
def test_layer_tar_bytes_ignore_input_order(spec: dict[str, Any], data: st.DataObject) -> None:
    outputs = []
    for _ in range(3):
        # a cast: hypothesis's DrawFn protocol has a __signature__ member that a bound method lacks
        changes = _render(spec, cast(st.DrawFn, data.draw))
        shuffled = data.draw(st.permutations(changes))
        buf = io.BytesIO()
        write_tar(canonical(shuffled), buf, EPOCH)
        outputs.append(buf.getvalue())
    assert outputs[1] == outputs[0] and outputs[2] == outputs[0]
    check_layer_order(outputs[0], spec)
    event(f"{len(spec['nodes'])} nodes, {len(spec['groups'])} hardlink groups, {len(spec['opaque'])} opaque")


# ============================================================================================
# 3. recipes: any YAML document built from the recipe's own keys loads or is a RecipeError
#
# Each key gets, about as often, a plausible value (good or nearly good) or any YAML value at all:
# null, bool, int (any size), float (nan, inf), str, binary, date, timestamp, set, list, mapping
# (with non-string keys too). Shared sub-objects come out as anchors and aliases.

_common = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=16),
    st.sampled_from(["", "1", "0755", "${A}", "${NOPE}", "$$", "${", "scratch", "/", "~", "null", "yes", "0x1F",
                     "1e3", ".inf", "<<", "a\nb", "\t", "\x00", "\u2028"]),
)
_exotic = st.one_of(  # tags the composer refuses outright: rarer, or they would hide every other check
    st.binary(max_size=6), st.dates(), st.datetimes(), st.datetimes(timezones=st.just(datetime.UTC)),
    st.sets(st.one_of(st.integers(), st.text(max_size=4)), max_size=2),
)
_keys = st.one_of(st.text(max_size=6), st.integers(-2, 2), st.booleans(), st.none(), st.sampled_from(
    ["version", "from", "steps", "config", "args", "to", "mode", "owner", "env", "mounts", "cache", "secret", "<<"]))
ANY = st.recursive(
    st.integers(0, 5).flatmap(lambda n: _common if n else _exotic),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
    max_leaves=6,
)


#: How often a key gets any value at all instead of a plausible one, drawn once per document:
#: never (the deep checks get their turn), 1 in 12, or 1 in 3.
CHAOS = st.shared(st.sampled_from([0, 0, 12, 3]), key="recipe-chaos")


def _v(*good: Any) -> st.SearchStrategy[Any]:
    """A value for one key: one of ``good`` (strategies or constants), or (see CHAOS) anything."""
    plausible = st.one_of([g if isinstance(g, st.SearchStrategy) else st.just(g) for g in good])
    return CHAOS.flatmap(lambda n: st.integers(0, n - 1).flatmap(lambda i: ANY if i == n // 2 else plausible) if n
                         else plausible)


IMAGE_PATHS = _v("/a", "/a/b/", "/", "/etc/../x", "//x", "a", "../x", "", "/a/${A}", "${P}", "/x\x00y", "/tmp/")
CONTEXT_PATHS = _v("rootfs.tar.gz", "dir/", "a/../b", "../up", "/abs", "", "${A}.tar", "a\x00b", ".")
MODES = _v("0755", 755, "0o644", "0O7", "9", 4095, "07777", "017777", -1, "", " 0644 ", 0o644)
OWNERS = _v("1000", "1000:1000", "root", "app:app", "a:b:c", "", 4294967295, "4294967294:0", "a b", ":", 0)
TEXTS = _v("x", "", "${A}", "line\n", st.text(max_size=20))
STAGES = _v("build", "base", "scratch", "nope", "Build")
STRINGS = _v(st.lists(st.sampled_from(["a", "", "${A}", "*.pyc", "!keep"]), max_size=3))
MAPPINGS = _v(st.dictionaries(st.sampled_from(["A", "PATH", "", "a=b", "x.y", "1"]), st.sampled_from(["", "v", "${A}"]),
                              max_size=3))
MOUNTS = _v(st.lists(st.one_of(
    st.fixed_dictionaries({"cache": IMAGE_PATHS}), st.fixed_dictionaries({"secret": _v("tok", "a b", "", "t.k-1")}),
    st.fixed_dictionaries({"cache": IMAGE_PATHS, "secret": _v("tok")}), st.just({})), max_size=3))

STEP_FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "rootfs": {"to": IMAGE_PATHS},
    "copy": {"to": IMAGE_PATHS, "owner": OWNERS, "mode": MODES, "exclude": STRINGS, "from": STAGES},
    "write": {"content": TEXTS, "mode": MODES, "owner": OWNERS},
    "mkdir": {"mode": MODES, "owner": OWNERS},
    "symlink": {"target": TEXTS, "owner": OWNERS},
    "remove": {},
    "run": {"shell": STRINGS, "env": MAPPINGS, "user": OWNERS, "workdir": IMAGE_PATHS, "network": _v("host", "none",
            "bridge"), "mounts": MOUNTS},
}
STEP_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "rootfs": CONTEXT_PATHS, "copy": _v(CONTEXT_PATHS, st.lists(CONTEXT_PATHS, max_size=2)), "write": IMAGE_PATHS,
    "mkdir": IMAGE_PATHS, "symlink": IMAGE_PATHS, "remove": _v(IMAGE_PATHS, st.lists(IMAGE_PATHS, max_size=2)),
    "run": _v("echo hi", "", "  ", "echo ${A}", st.text(max_size=10)),
}


@st.composite
def steps(draw: st.DrawFn) -> dict[Any, Any]:
    kind = draw(st.sampled_from(sorted(STEP_FIELDS)))
    step: dict[Any, Any] = {kind: draw(STEP_VALUES[kind])}
    fields = STEP_FIELDS[kind]
    for key in draw(st.sets(st.sampled_from(sorted(fields)), max_size=len(fields))) if fields else ():
        step[key] = draw(fields[key])
    extra = draw(st.sampled_from([*[None] * 12, "copy", "to", "tgt", "mounts", 7]))
    if extra is not None:  # a second kind, a sub-key of another kind, a typo, a non-string key
        step[extra] = draw(ANY)
    return step


CONFIG = st.fixed_dictionaries({}, optional={
    "env": MAPPINGS, "labels": MAPPINGS, "entrypoint": _v(STRINGS, "/bin/sh"), "cmd": _v(STRINGS, "x", None),
    "workdir": IMAGE_PATHS, "user": OWNERS, "ports": _v(st.lists(_v(80, "53/udp", "8080/tcp", "0", "70000", "x/tcp"),
                                                                 max_size=3)),
    "volumes": _v(st.lists(IMAGE_PATHS, max_size=2)), "stop_signal": _v("SIGTERM", "9", "KILL", "SIGRTMIN+3", "0"),
})
PLATFORMS = _v("linux/amd64", "linux/arm64/v8", "Linux/AMD64", "linux", "windows/amd64", "/", "linux//x")
BASES = _v("scratch", "build", "oci:img", "oci:img:v1", "oci:", "oci:x:", "oci-archive:a.tar", "docker-archive:a.tar",
           "alpine:3.20", "localhost:5000/a/b@sha256:" + "0" * 64, "UPPER", "a b")


@st.composite
def recipe_documents(draw: st.DrawFn) -> dict[Any, Any]:
    stage_steps = st.lists(steps(), max_size=3)
    doc: dict[Any, Any] = draw(st.fixed_dictionaries({"version": _v(1)}, optional={
        "from": BASES, "platform": PLATFORMS, "platforms": _v(st.lists(PLATFORMS, max_size=3)),
        "tag": _v("app:1", "", "a b"), "args": _v(st.dictionaries(st.sampled_from(["A", "P", "1x", "a-b", ""]),
                                                                  _v("v", None, 1, "/p"), max_size=3)),
        "stages": _v(st.dictionaries(st.sampled_from(["build", "base", "Build", "scratch", ""]),
                                     st.fixed_dictionaries({}, optional={"from": BASES, "steps": stage_steps}),
                                     max_size=2)),
        "steps": _v(st.lists(steps(), max_size=4)), "config": _v(CONFIG), "annotations": MAPPINGS,
    }))
    if draw(st.integers(0, 9)) == 5:  # (hypothesis favours 0 and 9: boundaries)
        doc[draw(st.sampled_from(["unknown", "step", "Steps", 1, None]))] = draw(ANY)
    if isinstance(doc.get("steps"), list) and doc["steps"] and draw(st.booleans()):
        doc["steps"].append(doc["steps"][0])  # the same object twice: an anchor and an alias
    return doc


@budget(400)
@given(doc=recipe_documents(), flow=st.sampled_from([False, True, None]), unicode=st.booleans())
def test_any_recipe_shaped_yaml_loads_or_is_a_recipe_error(doc: dict[Any, Any], flow: bool | None,
                                                           unicode: bool) -> None:
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=flow, allow_unicode=unicode)
    with tempfile.TemporaryDirectory(prefix="pybuild-prop-") as tmp:
        path = Path(tmp) / "pybuild.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            recipe = load_recipe(path)
        except (RecipeError, InputError) as exc:
            event(f"{type(exc).__name__} at {exc.where.keypath.split('.')[-1] if exc.where else None}")
            assert exc.message and str(exc).startswith(str(path)), repr(exc)
        else:
            event("loaded")
            assert isinstance(recipe, Recipe)


# ============================================================================================
# 4. diff -> blob (gzip, zstd) -> apply_blob onto A gives B
#
# tests/unit/fs/test_diff.py checks diff -> write_tar -> apply_layer with the same trees; this goes
# through the whole blob pipeline (the chunk queue, the compressor thread, the digests) and the
# digest-checking apply_blob.


@pytest.mark.needs(root=True)
@budget(40)
@given(a_and_b())
def test_diff_through_the_blob_pipeline_gives_b(case: tuple[Any, Any, dict[str, bool]]) -> None:
    a, b, recreate = case
    with tempfile.TemporaryDirectory(prefix="pybuild-prop-") as tmp:
        work, trash = os.path.join(tmp, "work"), os.path.join(tmp, "trash")
        os.mkdir(work)
        os.mkdir(trash)
        _materialise(work, a)
        before = snapshot(Path(work))
        _mutate(work, a, b, recreate, trash)
        changes = diff(Path(work), before, snapshot(Path(work)), EPOCH)
        diff_ids = set()
        for kind in (Compression.GZIP, Compression.ZSTD):
            blob = write_layer_blob(
                lambda out: write_tar(changes, out, EPOCH),  # type: ignore[arg-type]  # its count is dropped
                kind, None, Path(tmp) / f"blobs-{kind}")
            again = write_layer_blob(
                lambda out: write_tar(changes, out, EPOCH),  # type: ignore[arg-type]  # its count is dropped
                kind, None, Path(tmp) / f"again-{kind}")
            assert (again.digest, again.diff_id) == (blob.digest, blob.diff_id)  # deterministic
            assert blob.descriptor.media_type == kind.media_type
            diff_ids.add(blob.diff_id)
            fresh = Path(tmp) / f"fresh-{kind}"
            fresh.mkdir()
            _materialise(str(fresh), a)
            apply_blob(fresh, blob)
            assert _observe(str(fresh)) == _expected(b)
        assert len(diff_ids) == 1  # one tar, whatever the compression
