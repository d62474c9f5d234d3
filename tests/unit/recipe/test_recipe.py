"""Recipe parsing: every rule of the recipe (docs/recipe.md) as a bad-recipe table, good recipes, and a fuzz property."""

from __future__ import annotations

import copy
import re
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.errors import InputError, Location, RecipeError
from builder.oci.platform import Platform
from builder.recipe import load_recipe, read_recipe, recipe_for
from builder.recipe.model import (
    CopyStep,
    MkdirStep,
    Recipe,
    RemoveStep,
    RootfsStep,
    RunStep,
    SymlinkStep,
    WriteStep,
)

REFERENCE = Path(__file__).resolve().parents[3] / "docs" / "recipe.md"


@pytest.fixture
def recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write YAML to ./recipe.yaml (so errors read ``recipe.yaml:LINE``) and return a loader for it."""
    monkeypatch.chdir(tmp_path)

    def load(text: str | bytes, build_args: dict[str, str] | None = None, **kw: dict[str, str]) -> Recipe:
        path = Path("recipe.yaml")
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return load_recipe(path, build_args, **kw)

    return load


def first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0]


# (id, recipe text, exact first line of str(error)).  "V" stands for "version: 1\n".
V = "version: 1\n"
BAD: list[tuple[str, str | bytes, str]] = [
    # --- the document itself
    ("empty", "", "recipe.yaml:1: the recipe is empty (a recipe starts with 'version: 1')"),
    ("only-comments", "# nothing yet\n", "recipe.yaml:1: the recipe is empty (a recipe starts with 'version: 1')"),
    ("top-list", "- version: 1\n", "recipe.yaml:1: the recipe must be a mapping (version: 1, steps: ...), got a list"),
    ("top-scalar", "hello\n", "recipe.yaml:1: the recipe must be a mapping (version: 1, steps: ...), got a string"),
    ("top-null", "---\n", "recipe.yaml:1: the recipe must be a mapping (version: 1, steps: ...), got nothing (null)"),
    ("two-documents", V + "---\nversion: 1\n", "recipe.yaml:3: more than one YAML document (remove the second '---')"),
    (
        "syntax-error",
        V + "steps: [\n  - a\n",
        "recipe.yaml:3: invalid YAML: expected the node content, but found '-' (while parsing a flow node on line 3)",
    ),
    ("bad-indent", V + "tag: a\n  b: c\n", "recipe.yaml:3: invalid YAML: mapping values are not allowed here"),
    ("control-char", V + "tag: a\x07\n", "recipe.yaml:2: invalid YAML: character 0x0007 is not allowed"),
    ("not-utf8", b"version: 1\ntag: \xff\xfe\n", "recipe.yaml:2: the recipe is not UTF-8 text"),
    ("duplicate-key", V + "tag: a\ntag: b\n", "recipe.yaml:3: tag: duplicate key 'tag' (first written on line 2)"),
    (
        "duplicate-step-key",
        V + "steps:\n  - mkdir: /a\n    mode: 755\n    mode: 700\n",
        "recipe.yaml:5: steps[0].mode: duplicate key 'mode' (first written on line 4)",
    ),
    (
        "non-string-key",
        V + "args:\n  1: x\n",
        "recipe.yaml:3: args: keys must be strings, got '1' (a number); quote it if you mean the text",
    ),
    ("list-key", V + "? [a]\n: b\n", "recipe.yaml:2: keys must be strings, got a list"),
    ("undefined-alias", V + "tag: *nope\n", "recipe.yaml:2: invalid YAML: found undefined alias 'nope'"),
    (
        "recursive-alias",
        V + "steps: &s [*s]\n",
        "recipe.yaml:2: steps" + "[0]" * 40 + ": nested too deeply or too large (a recursive YAML alias?)",
    ),
    ("yaml-tag", V + "tag: !!binary aGVsbG8=\n", "recipe.yaml:2: tag: unsupported YAML tag '!!binary'"),
    # --- version
    ("missing-version", "steps: []\n", "recipe.yaml:1: missing required key 'version'"),
    (
        "version-2",
        "version: 2\n",
        "recipe.yaml:1: version: unsupported recipe version '2' (this pybuild reads version: 1)",
    ),
    ("version-string", "version: '1'\n", "recipe.yaml:1: version: must be the number 1, got a string '1'"),
    ("version-list", "version: [1]\n", "recipe.yaml:1: version: must be the number 1, got a list"),
    # --- unknown keys, with and without a suggestion
    ("unknown-top-key", V + "tagg: x\n", "recipe.yaml:2: tagg: unknown key 'tagg' (did you mean 'tag'?)"),
    ("unknown-top-key-case", "Version: 1\n", "recipe.yaml:1: Version: unknown key 'Version' (did you mean 'version'?)"),
    (
        "unknown-top-key-list",
        V + "zzz: 1\n",
        (
            "recipe.yaml:2: zzz: unknown key 'zzz' (expected one of: version, from, platform, platforms, tag, args, "
            "stages, steps, config, annotations)"
        ),
    ),
    (
        "unknown-step-key",
        V + "steps:\n  - copy: a\n    to: /b\n    mdoe: '0644'\n",
        "recipe.yaml:5: steps[0].mdoe: unknown key 'mdoe' (did you mean 'mode'?)",
    ),
    (
        "symlink-tagret",
        V + "steps:\n  - symlink: /a\n    tagret: b\n",
        "recipe.yaml:4: steps[0].tagret: unknown key 'tagret' (did you mean 'target'?)",
    ),
    (
        "key-of-other-kind",
        V + "steps:\n  - copy: a\n    to: /b\n    content: x\n",
        "recipe.yaml:5: steps[0].content: unknown key 'content' (expected one of: to, owner, mode, exclude, from)",
    ),
    (
        "remove-takes-nothing",
        V + "steps:\n  - remove: /a\n    to: /b\n",
        "recipe.yaml:4: steps[0].to: unknown key 'to' (no other keys are allowed here)",
    ),
    (
        "unknown-config-key",
        V + "config:\n  entrypiont: [/app]\n",
        "recipe.yaml:3: config.entrypiont: unknown key 'entrypiont' (did you mean 'entrypoint'?)",
    ),
    (
        "unknown-stage-key",
        V + "stages:\n  build:\n    form: scratch\n",
        "recipe.yaml:4: stages.build.form: unknown key 'form' (did you mean 'from'?)",
    ),
    # --- step shape
    ("steps-not-list", V + "steps: {copy: a}\n", "recipe.yaml:2: steps: must be a list of steps, got a mapping"),
    (
        "step-not-mapping",
        V + "steps:\n  - copy\n",
        "recipe.yaml:3: steps[0]: must be a mapping such as {copy: SRC, to: DEST}, got a string",
    ),
    (
        "two-kinds",
        V + "steps:\n  - copy: a\n    write: /b\n    to: /c\n",
        "recipe.yaml:4: steps[0].write: a step has one kind, this one has both 'copy' and 'write' (make two steps)",
    ),
    (
        "no-kind",
        V + "steps:\n  - to: /x\n",
        "recipe.yaml:3: steps[0]: a step needs one of: rootfs, copy, write, fetch, mkdir, symlink, remove, run",
    ),
    (
        "no-kind-unknown-key",
        V + "steps:\n  - zzz: 1\n",
        "recipe.yaml:3: steps[0]: a step needs one of: rootfs, copy, write, fetch, mkdir, symlink, remove, run",
    ),
    (
        "kind-typo",
        V + "steps:\n  - cpy: a\n    to: /b\n",
        "recipe.yaml:3: steps[0].cpy: unknown key 'cpy' (did you mean 'copy'?)",
    ),
    ("copy-missing-to", V + "steps:\n  - copy: a\n", "recipe.yaml:3: steps[0].copy: missing required key 'to'"),
    (
        "write-missing-content",
        V + "steps:\n  - write: /a\n",
        "recipe.yaml:3: steps[0].write: missing required key 'content'",
    ),
    (
        "symlink-missing-target",
        V + "steps:\n  - symlink: /a\n",
        "recipe.yaml:3: steps[0].symlink: missing required key 'target'",
    ),
    # --- wrong types
    ("tag-list", V + "tag: [a]\n", "recipe.yaml:2: tag: must be a string, got a list"),
    (
        "exclude-string",
        V + "steps:\n  - copy: a\n    to: /b\n    exclude: '*.pyc'\n",
        "recipe.yaml:5: steps[0].exclude: must be a list of strings, got a string",
    ),
    (
        "content-null",
        V + "steps:\n  - write: /a\n    content:\n",
        "recipe.yaml:4: steps[0].content: must be a string, got nothing (null)",
    ),
    (
        "copy-empty-list",
        V + "steps:\n  - copy: []\n    to: /b\n",
        "recipe.yaml:3: steps[0].copy: must name at least one source",
    ),
    (
        "copy-source-mapping",
        V + "steps:\n  - copy: [{a: b}]\n    to: /b\n",
        "recipe.yaml:3: steps[0].copy[0]: must be a path or a list of paths, got a mapping",
    ),
    (
        "run-list",
        V + "steps:\n  - run: [ls]\n",
        "recipe.yaml:3: steps[0].run: must be a shell script (a string), got a list",
    ),
    ("run-empty", V + "steps:\n  - run: '  '\n", "recipe.yaml:3: steps[0].run: the script is empty"),
    (
        "entrypoint-string",
        V + "config:\n  entrypoint: /bin/app --serve\n",
        (
            "recipe.yaml:3: config.entrypoint: must be a list of strings, "
            "e.g. [\"/bin/sh\", \"-c\", '/bin/app --serve'] or ['/bin/app --serve']"
        ),
    ),
    (
        "env-null",
        V + "config:\n  env: {A: }\n",
        "recipe.yaml:3: config.env.A: must be a string (write '' for an empty value), got nothing (null)",
    ),
    (
        "env-name-with-equals",
        V + "steps:\n  - run: make\n    env: {'A=B': x}\n",
        "recipe.yaml:4: steps[0].env.A=B: an environment variable name cannot contain '=', got 'A=B'",
    ),
    ("empty-label-name", V + "config:\n  labels: {'': x}\n", "recipe.yaml:3: config.labels.: a name cannot be empty"),
    (
        "annotations-list",
        V + "annotations: [a]\n",
        "recipe.yaml:2: annotations: must be a mapping of strings, got a list",
    ),
    (
        "config-list",
        V + "config: [a]\n",
        "recipe.yaml:2: config: must be a mapping (env:, entrypoint:, cmd:, ...), got a list",
    ),
    # --- args
    (
        "undefined-arg",
        V + "steps:\n  - mkdir: /opt/${APP}\n",
        "recipe.yaml:3: steps[0].mkdir: undefined argument ${APP} (define it in args: or pass --build-arg APP=...)",
    ),
    (
        "undefined-arg-in-args",
        V + "args:\n  A: ${B}\n",
        "recipe.yaml:3: args.A: undefined argument ${B} (define it in args: or pass --build-arg B=...)",
    ),
    ("unterminated-arg", V + "tag: ${X\n", "recipe.yaml:2: tag: unterminated '${' (write '$$' for a literal '$')"),
    (
        "bad-arg-reference",
        V + "tag: v${1X}\n",
        (
            "recipe.yaml:2: tag: bad argument reference ${1X}: a name is letters, digits and '_', "
            "not starting with a digit, then optionally :-default or :+alternative (write '$$' for a literal '$')"
        ),
    ),
    (
        "bad-arg-name",
        V + "args: {my-arg: 1}\n",
        "recipe.yaml:2: args.my-arg: bad argument name 'my-arg': letters, digits and '_', not starting with a digit",
    ),
    # --- paths
    (
        "relative-image-path",
        V + "steps:\n  - mkdir: etc/x\n",
        "recipe.yaml:3: steps[0].mkdir: must be an absolute path inside the image, got 'etc/x'",
    ),
    (
        "relative-copy-to",
        V + "steps:\n  - copy: a\n    to: opt/\n",
        "recipe.yaml:4: steps[0].to: must be an absolute path inside the image, got 'opt/'",
    ),
    ("remove-root", V + "steps:\n  - remove: [/tmp, /..]\n", "recipe.yaml:3: steps[0].remove[1]: cannot be '/' itself"),
    (
        "config-workdir-relative",
        V + "config:\n  workdir: app\n",
        "recipe.yaml:3: config.workdir: must be an absolute path inside the image, got 'app'",
    ),
    (
        "volume-relative",
        V + "config:\n  volumes: [data]\n",
        "recipe.yaml:3: config.volumes[0]: must be an absolute path inside the image, got 'data'",
    ),
    (
        "absolute-source",
        V + "steps:\n  - copy: /etc/passwd\n    to: /x\n",
        "recipe.yaml:3: steps[0].copy: must be a path relative to the build context, got '/etc/passwd'",
    ),
    (
        "escaping-source",
        V + "steps:\n  - copy: [ok, ../secret]\n    to: /x\n",
        "recipe.yaml:3: steps[0].copy[1]: escapes the build context: '../secret'",
    ),
    (
        "escaping-rootfs",
        V + "steps:\n  - rootfs: a/../../rootfs.tar\n",
        "recipe.yaml:3: steps[0].rootfs: escapes the build context: 'a/../../rootfs.tar'",
    ),
    (
        "stage-source-relative",
        V + "stages: {b: {}}\nsteps:\n  - copy: out/app\n    from: b\n    to: /app\n",
        "recipe.yaml:4: steps[0].copy: must be an absolute path inside the image, got 'out/app'",
    ),
    # --- mode, owner, user
    (
        "mode-not-octal",
        V + "steps:\n  - mkdir: /a\n    mode: 0999\n",
        "recipe.yaml:4: steps[0].mode: must be an octal mode like 0755, got '0999'",
    ),
    (
        "mode-too-big",
        V + "steps:\n  - mkdir: /a\n    mode: 17777\n",
        "recipe.yaml:4: steps[0].mode: must be at most 07777, got '17777'",
    ),
    (
        "mode-word",
        V + "steps:\n  - mkdir: /a\n    mode: rwx\n",
        "recipe.yaml:4: steps[0].mode: must be an octal mode like 0755, got 'rwx'",
    ),
    (
        "owner-three-parts",
        V + "steps:\n  - mkdir: /a\n    owner: a:b:c\n",
        "recipe.yaml:4: steps[0].owner: must be USER or USER:GROUP (names or numbers), got 'a:b:c'",
    ),
    (
        "owner-empty-part",
        V + "steps:\n  - mkdir: /a\n    owner: ':1000'\n",
        "recipe.yaml:4: steps[0].owner: must be USER or USER:GROUP (names or numbers), got ':1000'",
    ),
    (
        "owner-boolean",
        V + "steps:\n  - mkdir: /a\n    owner: yes\n",
        "recipe.yaml:4: steps[0].owner: must be USER or USER:GROUP (names or numbers), got a boolean",
    ),
    (
        "user-with-space",
        V + "config:\n  user: 'app user'\n",
        "recipe.yaml:3: config.user: must be USER or USER:GROUP (names or numbers), got 'app user'",
    ),
    # --- from
    (
        "bad-from",
        V + "from: Alpine:3\n",
        (
            "recipe.yaml:2: from: not a valid base 'Alpine:3': expected scratch, a stage name, oci:PATH[:TAG], "
            "oci-archive:FILE[:TAG], docker-archive:FILE or an image reference like alpine:3.20"
        ),
    ),
    (
        "bad-digest",
        V + "from: alpine@sha256:abc\n",
        (
            "recipe.yaml:2: from: not a valid base 'alpine@sha256:abc': expected scratch, a stage name, oci:PATH[:TAG], "
            "oci-archive:FILE[:TAG], docker-archive:FILE or an image reference like alpine:3.20"
        ),
    ),
    (  # what the pull would refuse (a repository in upper case, a port out of range) fails here
        "bad-from-case",
        V + "from: Foo/bar\n",
        (
            "recipe.yaml:2: from: not a valid base 'Foo/bar': expected scratch, a stage name, oci:PATH[:TAG], "
            "oci-archive:FILE[:TAG], docker-archive:FILE or an image reference like alpine:3.20"
        ),
    ),
    (
        "bad-from-port",
        V + "from: localhost:99999/x\n",
        (
            "recipe.yaml:2: from: not a valid base 'localhost:99999/x': expected scratch, a stage name, "
            "oci:PATH[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE or an image reference like alpine:3.20"
        ),
    ),
    ("oci-empty-tag", V + "from: 'oci:layout:'\n", "recipe.yaml:2: from: empty tag after ':' in 'oci:layout:'"),
    (
        "docker-archive-empty",
        V + "from: 'docker-archive:'\n",
        "recipe.yaml:2: from: docker-archive: needs a path, got 'docker-archive:'",
    ),
    # --- stages
    (
        "unknown-stage",
        V + "stages:\n  build: {}\nsteps:\n  - copy: /out\n    from: biuld\n    to: /\n",
        "recipe.yaml:6: steps[0].from: no stage named 'biuld' (did you mean 'build'?)",
    ),
    (
        "no-stages",
        V + "steps:\n  - copy: /out\n    from: build\n    to: /\n",
        "recipe.yaml:4: steps[0].from: no stage named 'build' (there is no stages: section)",
    ),
    (
        "stage-cycle",
        V + "stages:\n  a: {from: b}\n  b: {from: a}\n",
        "recipe.yaml:4: stages.b.from: stages form a cycle: a -> b -> a",
    ),
    (
        "stage-self-copy",
        V + "stages:\n  a:\n    steps:\n      - copy: /x\n        from: a\n        to: /y\n",
        "recipe.yaml:6: stages.a.steps[0].from: stages form a cycle: a -> a",
    ),
    (
        "bad-stage-name",
        V + "stages:\n  Build: {}\n",
        (
            "recipe.yaml:3: stages.Build: bad stage name 'Build': lowercase letters, digits, '_', '.' and '-', "
            "starting with a letter or digit"
        ),
    ),
    (
        "stage-named-scratch",
        V + "stages:\n  scratch: {}\n",
        "recipe.yaml:3: stages.scratch: 'scratch' is not a stage name: 'from: scratch' means the empty image",
    ),
    # --- platforms
    (
        "bad-platform",
        V + "platform: linux\n",
        "recipe.yaml:2: platform: platform must be os/arch[/variant], got 'linux'",
    ),
    (
        "platform-uppercase",
        V + "platforms: [linux/amd64, Linux/ARM64]\n",
        "recipe.yaml:2: platforms[1]: platform must be lowercase os/arch[/variant] like linux/amd64, got 'Linux/ARM64'",
    ),
    (
        "platform-and-platforms",
        V + "platform: linux/amd64\nplatforms: [linux/arm64]\n",
        "recipe.yaml:3: platforms: use either platform: or platforms:, not both",
    ),
    (
        "duplicate-platform",
        V + "platforms:\n  - linux/amd64\n  - linux/arm64\n  - linux/amd64\n",
        "recipe.yaml:5: platforms[2]: duplicate platform 'linux/amd64'",
    ),
    ("no-platforms", V + "platforms: []\n", "recipe.yaml:2: platforms: must list at least one platform"),
    # --- run
    (
        "bad-network",
        V + "steps:\n  - run: make\n    network: bridge\n",
        "recipe.yaml:4: steps[0].network: must be 'host' or 'none', got 'bridge'",
    ),
    (
        "mount-typo",
        V + "steps:\n  - run: make\n    mounts:\n      - cach: /root/.cache\n",
        "recipe.yaml:5: steps[0].mounts[0].cach: unknown key 'cach' (did you mean 'cache'?)",
    ),
    (
        "mount-two-keys",
        V + "steps:\n  - run: make\n    mounts:\n      - {cache: /a, secret: b}\n",
        "recipe.yaml:5: steps[0].mounts[0]: a mount has exactly one key: cache: PATH, secret: ID, tmpfs: PATH, bind: {source: PATH, target: PATH} or ssh: ID",
    ),
    (
        "mount-relative",
        V + "steps:\n  - run: make\n    mounts: [cache: root/.cache]\n",
        "recipe.yaml:4: steps[0].mounts[0].cache: must be an absolute path inside the image, got 'root/.cache'",
    ),
    (
        "run-workdir-relative",
        V + "steps:\n  - run: make\n    workdir: src\n",
        "recipe.yaml:4: steps[0].workdir: must be an absolute path inside the image, got 'src'",
    ),
    # --- config values
    (
        "bad-port",
        V + "config:\n  ports: [http]\n",
        "recipe.yaml:3: config.ports[0]: must be a port like 8080, 8080/tcp or 53/udp, got 'http'",
    ),
    (
        "port-range",
        V + "config:\n  ports: [70000]\n",
        "recipe.yaml:3: config.ports[0]: must be a port like 8080, 8080/tcp or 53/udp, got '70000'",
    ),
    (
        "bad-signal",
        V + "config:\n  stop_signal: term\n",
        "recipe.yaml:3: config.stop_signal: must be a signal name like SIGTERM or a number, got 'term'",
    ),
    # --- bounds: names no runtime can unpack, substitution that multiplies
    (
        "component-over-name-max",
        V + "steps:\n  - mkdir: /a/" + "n" * 256 + "\n",
        (
            "recipe.yaml:3: steps[0].mkdir: a path component is at most 255 bytes (Linux's NAME_MAX), "
            "'nnnnnnnnnnnnnnnnnnnnnnnn'... has 256"
        ),
    ),
    (
        "path-over-path-max",
        V + "steps:\n  - remove: [" + "/d" * 2048 + "]\n",
        "recipe.yaml:3: steps[0].remove[0]: a path is at most 4095 bytes (Linux's PATH_MAX), this one has 4096",
    ),
    (
        "substituted-over-cap",
        V + 'args:\n  A: "' + "x" * (1 << 19) + '"\n  B: "${A}${A}${A}"\n',
        (
            "recipe.yaml:4: args.B: ${A} makes this value longer than 1048576 characters (1 MiB), "
            "the limit for one substituted string"
        ),
    ),
    (
        "substituted-tail-over-cap",
        V + 'args:\n  A: "x"\n  B: "${A}' + "y" * (1 << 20) + '"\n',
        (
            "recipe.yaml:4: args.B: this value is longer than 1048576 characters (1 MiB) after substitution, "
            "the limit for one substituted string"
        ),
    ),
]


@pytest.mark.parametrize(("text", "expected"), [pytest.param(t, e, id=i) for i, t, e in BAD])
def test_bad_recipe(recipe, text: str | bytes, expected: str) -> None:
    with pytest.raises(RecipeError) as info:
        recipe(text)
    assert first_line(info.value) == expected
    assert isinstance(info.value.where, Location)


def test_bad_recipe_ids_are_unique() -> None:
    assert len({row[0] for row in BAD}) == len(BAD) >= 35


def test_missing_recipe_is_an_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as info:
        load_recipe(Path("nope.yaml"))
    assert str(info.value) == "nope.yaml: cannot read the recipe: No such file or directory"
    with pytest.raises(InputError):
        load_recipe(tmp_path)  # a directory


def test_error_location_fields(recipe) -> None:
    with pytest.raises(RecipeError) as info:
        recipe(V + "steps:\n  - mkdir: /a\n  - copy: x\n    to: y\n")
    assert info.value.where == Location("recipe.yaml", 5, "steps[1].to")
    assert info.value.message == "must be an absolute path inside the image, got 'y'"


# ---------------------------------------------------------------------------------------------
# good recipes


def reference_example() -> str:
    """The first recipe of docs/recipe.md, with its placeholder stage steps made real."""
    text = REFERENCE.read_text(encoding="utf-8").split("```yaml\n")[1].split("```")[0]
    return text.replace("steps: [...]", "steps: [{write: /built, content: x}]")


def test_the_reference_examples_of_more_keys_parse(recipe) -> None:
    text = REFERENCE.read_text(encoding="utf-8").split("```yaml\n")[2].split("```")[0]
    r = recipe(text, builtin_args={"BUILDPLATFORM": "linux/amd64"})
    assert r.stages["build"].platform is not None and r.config.healthcheck is not None
    assert [m.kind for m in r.stages["build"].steps[1].mounts] == ["tmpfs", "bind", "bind", "ssh"]


def test_the_reference_example(recipe) -> None:
    r = recipe(reference_example())
    assert r.path == Path("recipe.yaml")
    assert r.version == 1
    assert (r.base.kind, r.base.value, r.base.where.line) == ("scratch", "", 2)
    assert r.platforms == (Platform("linux", "amd64"),)
    assert r.tag == "1.0"
    assert r.args == {"VERSION": "1.0"}
    assert list(r.stages) == ["build"]
    assert r.stages["build"].steps == (
        WriteStep("/built", "x", None, None, Location("recipe.yaml", 11, "stages.build.steps[0].write")),
    )
    kinds = [type(s).__name__ for s in r.steps]
    assert kinds == ["RootfsStep", "CopyStep", "WriteStep", "MkdirStep", "SymlinkStep", "RemoveStep", "RunStep"]
    rootfs, copy, write, mkdir, symlink, remove, run = r.steps
    assert rootfs == RootfsStep("rootfs.tar.xz", "/", Location("recipe.yaml", 14, "steps[0].rootfs"))
    assert copy == CopyStep(
        ("app/",), "/opt/app/", "1000:1000", 0o755, ("**/*.pyc",), None, Location("recipe.yaml", 16, "steps[1].copy")
    )
    assert isinstance(write, WriteStep) and (write.path, write.content, write.mode) == ("/etc/motd", "hello\n", 0o644)
    assert mkdir == MkdirStep("/data", None, "1000:1000", Location("recipe.yaml", 25, "steps[3].mkdir"))
    assert symlink == SymlinkStep("/usr/bin/python", "python3", None, Location("recipe.yaml", 27, "steps[4].symlink"))
    assert isinstance(remove, RemoveStep) and remove.paths == ("/var/cache/apt", "/usr/share/doc")
    assert isinstance(run, RunStep)
    assert run.script == "apt-get update && apt-get install -y curl\n"
    assert (run.shell, run.user, run.workdir, run.network) == (("/bin/sh", "-e", "-c"), "root", "/", "host")
    assert run.env == {"DEBIAN_FRONTEND": "noninteractive"}
    assert [(m.kind, m.value, m.where.keypath) for m in run.mounts] == [
        ("cache", "/var/cache/apt", "steps[6].mounts[0].cache"),
        ("secret", "npmrc", "steps[6].mounts[1].secret"),
    ]
    c = r.config
    assert c.env == (("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),)
    assert (c.entrypoint, c.cmd, c.workdir, c.user) == (("/bin/app",), ("--help",), "/app", "1000:1000")
    assert (c.ports, c.volumes, c.stop_signal) == (("8080/tcp",), ("/data",), "SIGTERM")
    assert c.labels == (("org.opencontainers.image.title", "app"),)
    assert c.where == Location("recipe.yaml", 41, "config")
    assert r.annotations == {"org.opencontainers.image.source": "https://example.com/repo"}


def test_minimal_recipe(recipe) -> None:
    r = recipe("version: 1\n")
    assert r.base.kind == "scratch" and r.platforms == () and r.tag is None
    assert r.steps == () and r.stages == {} and r.args == {} and r.annotations == {}
    assert r.config.where is None and r.config.entrypoint is None


def test_args_precedence(recipe) -> None:
    text = V + "args:\n  A: recipe\n  B: recipe\n  C: ${A}-c\ntag: ${A}.${B}.${C}.${D}\n"
    r = recipe(text, {"B": "cli", "D": "extra"}, builtin_args={"A": "builtin", "B": "builtin", "E": "e"})
    assert r.tag == "recipe.cli.recipe-c.extra"
    assert r.args == {"A": "recipe", "B": "cli", "E": "e", "C": "recipe-c", "D": "extra"}
    # A default that uses another arg sees the --build-arg value of it.
    assert recipe(text, {"A": "x", "D": "d"}).tag == "x.recipe.x-c.d"


def test_arg_values_are_raw_text(recipe) -> None:
    r = recipe(V + "args: {VERSION: 1.0, N: 010, FLAG: yes}\ntag: ${VERSION}-${N}-${FLAG}\n")
    assert r.tag == "1.0-010-yes"


def test_arg_without_default_needs_a_value(recipe) -> None:
    text = V + "args: {ARCH: }\ntag: ${ARCH}\n"
    assert recipe(text, builtin_args={"ARCH": "amd64"}).tag == "amd64"
    assert recipe(text, {"ARCH": "arm64"}).tag == "arm64"
    with pytest.raises(RecipeError, match=re.escape("recipe.yaml:3: tag: undefined argument ${ARCH}")):
        recipe(text)


def test_dollars(recipe) -> None:
    r = recipe(V + "args: {A: a}\nconfig:\n  env: {X: '$${A}', Y: '$$A', P: '$PATH:/x', Z: 'cost $5 ${A}'}\n")
    assert dict(r.config.env) == {"X": "${A}", "Y": "$A", "P": "$PATH:/x", "Z": "cost $5 a"}


def test_run_script_is_not_substituted(recipe) -> None:
    r = recipe(
        V + "args: {A: a, SH: /bin/bash}\nsteps:\n  - run: echo ${A} $$ ${UNDEFINED}\n"
        "    shell: ['${SH}', -c]\n    env: {X: '${A}'}\n    user: u${A}\n    workdir: /w/${A}\n"
    )
    (run,) = r.steps
    assert isinstance(run, RunStep)
    assert run.script == "echo ${A} $$ ${UNDEFINED}"
    assert (run.shell, dict(run.env), run.user, run.workdir) == (("/bin/bash", "-c"), {"X": "a"}, "ua", "/w/a")


@pytest.mark.parametrize(
    ("written", "mode"),
    [
        ("0755", 0o755),
        ("755", 0o755),
        ("'0644'", 0o644),
        ('"644"', 0o644),
        ("0o755", 0o755),
        ("0", 0),
        ("7777", 0o7777),
    ],
)
def test_mode_is_octal_text(recipe, written: str, mode: int) -> None:
    (step,) = recipe(V + f"steps:\n  - mkdir: /a\n    mode: {written}\n").steps
    assert isinstance(step, MkdirStep) and step.mode == mode


@pytest.mark.parametrize("owner", ["1000:1000", "root", "1000", "app:staff", "1:0"])
def test_owner_forms(recipe, owner: str) -> None:
    (step,) = recipe(V + f"steps:\n  - mkdir: /a\n    owner: {owner}\n").steps
    assert isinstance(step, MkdirStep) and step.owner == owner


@pytest.mark.parametrize(
    ("written", "kind", "value", "tag"),
    [
        ("scratch", "scratch", "", None),
        ("oci:out", "oci", "out", None),
        ("oci:out:1.0", "oci", "out", "1.0"),
        ("oci:./dir/sub:v2", "oci", "./dir/sub", "v2"),
        ("oci:host:5000/x", "oci", "host:5000/x", None),
        ("oci-archive:img.tar:latest", "oci-archive", "img.tar", "latest"),
        ("docker-archive:img.tar", "docker-archive", "img.tar", None),
        ("docker-archive:a:b", "docker-archive", "a:b", None),
        ("alpine", "registry", "alpine", None),
        ("alpine:3.20", "registry", "alpine:3.20", None),
        ("localhost:5000/a/b_c:tag", "registry", "localhost:5000/a/b_c:tag", None),
        ("ghcr.io/org/img@sha256:" + "a" * 64, "registry", "ghcr.io/org/img@sha256:" + "a" * 64, None),
        # the grammar of builder.oci.reference, which the pull uses: IPv6 hosts and sha512 digests too
        ("[::1]:5000/x:1", "registry", "[::1]:5000/x:1", None),
        ("x@sha512:" + "b" * 128, "registry", "x@sha512:" + "b" * 128, None),
        ("build", "stage", "build", None),
        ("${BASE}", "registry", "debian:12", None),
    ],
)
def test_from_variants(recipe, written: str, kind: str, value: str, tag: str | None) -> None:
    r = recipe(V + f"args: {{BASE: 'debian:12'}}\nstages: {{build: {{}}}}\nfrom: '{written}'\n")
    assert (r.base.kind, r.base.value, r.base.tag) == (kind, value, tag)
    assert r.base.where == Location("recipe.yaml", 4, "from")


def test_paths_are_normalised(recipe) -> None:
    r = recipe(
        V + "steps:\n  - copy: ./a/../b/*.py\n    to: /opt//app/./\n  - copy: x\n    to: /opt/app\n"
        "  - remove: //tmp/../var/\n  - rootfs: r.tar\n    to: /srv/.\n"
    )
    a, b, rm, rootfs = r.steps
    assert isinstance(a, CopyStep) and (a.sources, a.to) == (("./a/../b/*.py",), "/opt/app/")
    assert isinstance(b, CopyStep) and b.to == "/opt/app"
    assert isinstance(rm, RemoveStep) and rm.paths == ("/var",)
    assert isinstance(rootfs, RootfsStep) and rootfs.to == "/srv"


def test_stages(recipe) -> None:
    r = recipe(
        V + "stages:\n  deps:\n    from: alpine:3.20\n  build:\n    from: deps\n    steps:\n"
        "      - copy: /usr/lib/\n        from: deps\n        to: /lib/\n"
        "from: build\nsteps:\n  - copy: [/out/app, /out/../etc/conf]\n    from: build\n    to: /app/\n"
    )
    assert list(r.stages) == ["deps", "build"]
    assert r.stages["build"].base.kind == "stage" and r.stages["build"].base.value == "deps"
    assert r.stages["build"].where == Location("recipe.yaml", 5, "stages.build")
    assert (r.base.kind, r.base.value) == ("stage", "build")
    (copy,) = r.steps
    assert isinstance(copy, CopyStep) and copy.from_stage == "build" and copy.sources == ("/out/app", "/etc/conf")


def test_config_forms(recipe) -> None:
    r = recipe(
        V + "config:\n  env: {B: 2, A: 'x=y'}\n  cmd: []\n  ports: [80, 53/udp, '8080/tcp']\n"
        "  user: 1000\n  stop_signal: 9\n  labels: {b: 1, a: 'true'}\n"
    )
    c = r.config
    assert c.env == (("B", "2"), ("A", "x=y"))
    assert (c.cmd, c.entrypoint) == ((), None)
    assert c.ports == ("80/tcp", "53/udp", "8080/tcp")
    assert (c.user, c.stop_signal) == ("1000", "9")
    assert c.labels == (("b", "1"), ("a", "true"))


def test_step_where_in_flow_and_block(recipe) -> None:
    r = recipe(V + "steps:\n  - {write: /a, content: ''}\n  -\n    symlink: /b\n    target: a\n")
    assert [s.where for s in r.steps] == [
        Location("recipe.yaml", 3, "steps[0].write"),
        Location("recipe.yaml", 5, "steps[1].symlink"),
    ]


def test_anchors_and_merge_keys(recipe) -> None:
    r = recipe(
        V
        + "x-owner: &own {owner: '1:1', mode: 700}\n".replace("x-owner", "annotations")
        + "steps:\n  - {mkdir: /a, <<: *own}\n  - {mkdir: /b, <<: *own, mode: 755}\n"
    )
    a, b = r.steps
    assert isinstance(a, MkdirStep) and (a.owner, a.mode) == ("1:1", 0o700)
    assert isinstance(b, MkdirStep) and (b.owner, b.mode) == ("1:1", 0o755)


def test_utf8_bom_and_crlf(recipe) -> None:
    r = recipe("\ufeffversion: 1\r\ntag: a\r\n".encode())
    assert r.tag == "a"


# ---------------------------------------------------------------------------------------------
# fuzz: anything either loads or is a RecipeError


def _load_or_recipe_error(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        load_recipe(path)
    except RecipeError as exc:
        assert exc.where is not None and str(exc).startswith(str(path))


_keys = st.sampled_from(
    ["version", "from", "steps", "stages", "config", "args", "tag", "platform", "platforms", "annotations", "copy",
     "to", "write", "content", "mode", "owner", "run", "env", "mounts", "cache", "secret", "remove", "mkdir", "symlink",
     "target", "rootfs", "exclude", "entrypoint", "cmd", "ports", "volumes", "user", "workdir", "a", "b", "<<"]
)  # fmt: skip
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 70000),
    st.floats(allow_nan=True),
    st.sampled_from(["scratch", "/a", "a", "../x", "0755", "${A}", "$$", "${", "linux/amd64", "b", "1000:0", "/"]),
    st.text(max_size=12),
)
_trees = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=st.dictionaries(_keys, _trees, max_size=6), version=st.sampled_from([1, 1, 2, None]))
def test_fuzz_structures(tmp_path: Path, tree: dict[str, object], version: int | None) -> None:
    if version is not None:
        tree = {"version": version, **tree}
    _load_or_recipe_error(tmp_path / "recipe.yaml", yaml.safe_dump(tree, allow_unicode=True).encode())


def _subtrees(node: object, at: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Every path into a safe_load()ed document, for mutating one value of a good recipe."""
    inner: list[tuple[object, ...]] = []
    if isinstance(node, dict):
        inner = [p for k, v in node.items() for p in _subtrees(v, (*at, k))]
    elif isinstance(node, list):
        inner = [p for i, v in enumerate(node) for p in _subtrees(v, (*at, i))]
    return [at, *inner]


_SPEC_DOC = yaml.safe_load(reference_example())


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(st.tuples(st.sampled_from(_subtrees(_SPEC_DOC)[1:]), _trees), min_size=1, max_size=3))
def test_fuzz_mutated_reference_example(tmp_path: Path, mutations: list[tuple[tuple[object, ...], object]]) -> None:
    """Deep rules get exercised too: replace a few values of the good example with arbitrary ones."""
    doc = copy.deepcopy(_SPEC_DOC)
    for at, value in mutations:
        node = doc
        try:
            for key in at[:-1]:
                node = node[key]
            node[at[-1]] = value
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation removed this path
    _load_or_recipe_error(tmp_path / "recipe.yaml", yaml.safe_dump(doc, allow_unicode=True).encode())


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
        st.text(alphabet=string.printable + "{}[]&*!|>'\"%@`-:#,? ", max_size=200).map(
            lambda t: ("version: 1\n" + t).encode()
        ),
    )
)
def test_fuzz_text(tmp_path: Path, data: bytes) -> None:
    _load_or_recipe_error(tmp_path / "recipe.yaml", data)


def test_base_paths_may_be_absolute_or_outside_the_context(tmp_path, monkeypatch):
    """A base image is not a context source: skopeo/buildah-style paths work."""
    monkeypatch.chdir(tmp_path)
    for text, value, tag in [("oci:/var/lib/img:1", "/var/lib/img", "1"), ("oci-archive:../img.tar", "../img.tar", None)]:
        (tmp_path / "recipe.yaml").write_text(f"version: 1\nfrom: {text}\n")
        base = load_recipe(Path("recipe.yaml")).base
        assert (base.value, base.tag) == (value, tag)


def test_a_recipe_is_composed_once_and_substituted_per_set_of_args(tmp_path):
    """read_recipe composes the file once; recipe_for substitutes and checks it for each platform's built-ins."""
    path = tmp_path / "recipe.yaml"
    path.write_text(V + "platforms: [linux/amd64, linux/arm64]\nsteps:\n  - mkdir: /opt/${TARGETARCH}\n")
    source = read_recipe(path)
    path.unlink()  # what recipe_for needs is already in the source
    made = [recipe_for(source, {}, {"TARGETARCH": arch}).steps for arch in ("amd64", "arm64")]
    assert made == [(MkdirStep("/opt/amd64", None, None, Location(str(path), 4, "steps[0].mkdir")),),
                    (MkdirStep("/opt/arm64", None, None, Location(str(path), 4, "steps[0].mkdir")),)]
    with pytest.raises(RecipeError, match=r"recipe.yaml:4: steps\[0\].mkdir: undefined argument \$\{TARGETARCH\}"):
        recipe_for(source)
