"""Recipe YAML -> checked model values (:mod:`builder.recipe.model`).

Parsing is strict, as apko's ``KnownFields(true)`` is: an unknown key, a wrong type or a value of the
wrong shape is a :class:`RecipeError` naming the file, the line and the key path, so a typo fails the
build before any work is done instead of being silently ignored. What only the build can know (does a
source exist, does a user exist in the image) is left to the build, which still has every Location.

Strings are ``${ARG}``-substituted as they are read (:meth:`_Parser.text`), except a ``run`` script:
the shell gets the args as environment variables, and ``${X}`` means what the shell says it means.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from builder.errors import InputError, Location, RecipeError
from builder.oci.platform import Platform
from builder.oci.reference import Reference
from builder.recipe import args as argsmod
from builder.recipe.model import (
    BaseKind,
    BaseRef,
    ConfigSpec,
    CopyStep,
    FetchStep,
    MkdirStep,
    Mount,
    Recipe,
    RemoveStep,
    RootfsStep,
    RunStep,
    Stage,
    Step,
    SymlinkStep,
    WriteStep,
)
from builder.recipe.yamlnode import (
    Entry,
    Map,
    Node,
    Scalar,
    Seq,
    check_keys,
    compose,
    describe,
    did_you_mean,
    expect_map,
    expect_scalar,
    expect_seq,
    wrong_type,
)

_TOP_KEYS = ("version", "from", "platform", "platforms", "tag", "args", "stages", "steps", "config", "annotations")
_STEP_KEYS: dict[str, tuple[str, ...]] = {
    "rootfs": ("to",),
    "copy": ("to", "owner", "mode", "exclude", "from"),
    "write": ("content", "mode", "owner"),
    "fetch": ("sha256", "to", "mode", "owner"),
    "mkdir": ("mode", "owner"),
    "symlink": ("target", "owner"),
    "remove": (),
    "run": ("shell", "env", "user", "workdir", "network", "mounts", "security"),
}
_REQUIRED = {"copy": ("to",), "write": ("content",), "symlink": ("target",), "fetch": ("sha256", "to")}
_CONFIG_KEYS = ("env", "entrypoint", "cmd", "workdir", "user", "ports", "volumes", "labels", "stop_signal", "author",
                "shell", "healthcheck", "onbuild")
_HEALTH_KEYS = ("test", "interval", "timeout", "start_period", "start_interval", "retries")
_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?")

_STAGE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_SECRET_ID = re.compile(r"[A-Za-z0-9_.-]+")
_ID_PART = re.compile(r"[^\s:/]+")
_PORT = re.compile(r"([0-9]{1,5})(?:/(tcp|udp|sctp))?")
_SIGNAL = re.compile(r"(?:SIG)?[A-Z][A-Z0-9]*(?:[+-][0-9]+)?|[1-9][0-9]?")
_PLATFORM_PART = re.compile(r"[a-z0-9_.-]+")
# Linux's NAME_MAX and PATH_MAX - 1: a name or path longer than these can be written into a tar, but
# no runtime can create it when it unpacks the layer (ENAMETOOLONG), so the recipe is refused.
_NAME_MAX = 255
_PATH_MAX = 4095


def load_recipe(
    path: Path,
    build_args: Mapping[str, str] | None = None,
    builtin_args: Mapping[str, str] | None = None,
) -> Recipe:
    """Read, substitute and check the recipe at ``path``.

    Raises InputError when the file cannot be read and RecipeError for anything wrong inside it;
    errors are located with the path as given (``str(path)``).
    """
    file = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the recipe: {exc.strerror or exc}", Location(file, None, "")) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RecipeError("the recipe is not UTF-8 text", Location(file, line, "")) from None
    root = compose(text, file)
    if not isinstance(root, Map):
        raise RecipeError(f"the recipe must be a mapping (version: 1, steps: ...), got {describe(root)}", root.where)
    return _Parser(file).recipe(path, root, build_args, builtin_args)


class _Parser:
    """One recipe's parse: the argument values and the stage graph found so far."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.args: dict[str, str] = {}
        self.build_args: dict[str, str] = {}
        self.declared: frozenset[str] = frozenset()
        self.stage_names: tuple[str, ...] = ()
        self.current: str | None = None  # the stage being parsed; None for the main steps
        self.edges: dict[str, list[tuple[str, Location]]] = {}
        self.budget = argsmod.Budget()  # what ${ARGS} may still produce in this recipe

    # -- the recipe -------------------------------------------------------------------------

    def recipe(
        self, path: Path, root: Map, build_args: Mapping[str, str] | None, builtin_args: Mapping[str, str] | None
    ) -> Recipe:
        check_keys(root, _TOP_KEYS, ("version",))
        self.version(root.entries["version"].value)
        declared = self.declared_args(root.get("args"))
        self.args = argsmod.resolve(declared, build_args, builtin_args, self.budget)
        self.build_args = dict(build_args or {})
        self.declared = frozenset(name for name, _, _ in declared)
        stages_node = root.get("stages")
        stages_map = expect_map(stages_node, "a mapping of stage names") if stages_node is not None else None
        self.stage_names = self.check_stage_names(stages_map) if stages_map else ()
        stages = {e.key: self.stage(e) for e in stages_map.entries.values()} if stages_map else {}
        self.current = None
        _check_cycles(self.edges)
        base = root.get("from")
        steps = root.get("steps")
        config = root.entries.get("config")
        annotations = root.get("annotations")
        return Recipe(
            path=path,
            version=1,
            base=self.base(base)
            if base is not None
            else BaseRef("scratch", "", None, Location(self.file, None, "from")),
            platforms=self.platforms(root),
            tag=self.tag(root.get("tag")),
            args=self.args,
            stages=stages,
            steps=self.steps(steps) if steps is not None else (),
            config=self.config(config) if config is not None else ConfigSpec(),
            annotations=dict(self.pairs(annotations)) if annotations is not None else {},
            declared_args=frozenset(name for name, _, _ in declared),
        )

    def version(self, node: Node) -> None:
        value = expect_scalar(node, "the number 1")
        if value.tag != "int":
            raise RecipeError(f"must be the number 1, got {describe(value)} {value.text!r}", node.where)
        if value.text.strip() not in ("1", "+1"):
            raise RecipeError(f"unsupported recipe version {value.text!r} (this pybuild reads version: 1)", node.where)

    def declared_args(self, node: Node | None) -> list[tuple[str, str | None, Location]]:
        """The recipe's ``args:`` as written; a null value declares a name without a default."""
        if node is None:
            return []
        declared: list[tuple[str, str | None, Location]] = []
        for entry in expect_map(node, "a mapping of argument names to values").entries.values():
            if not argsmod.NAME.fullmatch(entry.key):
                raise RecipeError(
                    f"bad argument name {entry.key!r}: letters, digits and '_', not starting with a digit",
                    entry.key_where,
                )
            value = entry.value
            if isinstance(value, Scalar) and value.tag == "null":
                declared.append((entry.key, None, entry.key_where))
            else:
                declared.append((entry.key, expect_scalar(value).text, value.where))
        return declared

    def tag(self, node: Node | None) -> str | None:
        if node is None:
            return None
        tag = self.text(node)
        if not tag or any(c.isspace() for c in tag):
            raise RecipeError(f"must be a non-empty name without spaces, got {tag!r}", node.where)
        return tag

    def platforms(self, root: Map) -> tuple[Platform, ...]:
        one, many = root.entries.get("platform"), root.entries.get("platforms")
        if one and many:
            raise RecipeError("use either platform: or platforms:, not both", many.key_where)
        if one:
            return (self.platform(one.value),)
        if not many:
            return ()
        seq = expect_seq(many.value, "a list of platforms like [linux/amd64, linux/arm64]")
        if not seq.items:
            raise RecipeError("must list at least one platform", seq.where)
        found: list[Platform] = []
        for item in seq.items:
            platform = self.platform(item)
            if platform in found:
                raise RecipeError(f"duplicate platform '{platform}'", item.where)
            found.append(platform)
        return tuple(found)

    def platform(self, node: Node) -> Platform:
        text = self.text(node)
        if not all(_PLATFORM_PART.fullmatch(p) for p in text.split("/")):
            raise RecipeError(
                f"platform must be lowercase os/arch[/variant] like linux/amd64, got {text!r}", node.where
            )
        try:
            return Platform.parse(text)
        except ValueError as exc:
            raise RecipeError(str(exc), node.where) from None

    # -- stages and bases -------------------------------------------------------------------

    def check_stage_names(self, stages: Map) -> tuple[str, ...]:
        for name, entry in stages.entries.items():
            if not _STAGE_NAME.fullmatch(name):
                raise RecipeError(
                    f"bad stage name {name!r}: lowercase letters, digits, '_', '.' and '-', "
                    "starting with a letter or digit",
                    entry.key_where,
                )
            if name == "scratch":
                raise RecipeError(
                    "'scratch' is not a stage name: 'from: scratch' means the empty image", entry.key_where
                )
        return tuple(stages.entries)

    def stage(self, entry: Entry) -> Stage:
        self.current = entry.key
        self.edges[entry.key] = []
        body = expect_map(entry.value, "a mapping with from: and steps:")
        check_keys(body, ("from", "steps", "config", "args", "platform"))
        base, steps = body.get("from"), body.get("steps")
        where = Location(self.file, entry.key_where.line, f"{entry.key_where.keypath}.from")
        outer = self.args
        declared = self.declared_args(body.get("args"))  # the recipe's args, then the stage's own over them
        self.args = argsmod.resolve(declared, self.build_args, outer, self.budget) if declared else outer
        try:
            config = body.entries.get("config")
            return Stage(
                name=entry.key,
                base=self.base(base) if base is not None else BaseRef("scratch", "", None, where),
                steps=self.steps(steps) if steps is not None else (),
                where=entry.key_where,
                config=self.config(config) if config is not None else ConfigSpec(),
                args=self.args,
                declared_args=self.declared | {name for name, _, _ in declared},
                platform=self.platform(body.entries["platform"].value) if "platform" in body.entries else None,
            )
        finally:
            self.args = outer

    def base(self, node: Node) -> BaseRef:
        """``from:``: scratch, a stage, an image on disk (oci:, oci-archive:, docker-archive:) or a registry."""
        text = self.text(node)
        where = node.where
        if text == "scratch":
            return BaseRef("scratch", "", None, where)
        if text in self.stage_names:
            self.use_stage(text, where)
            return BaseRef("stage", text, None, where)
        kinds: tuple[BaseKind, ...] = ("oci", "oci-archive", "docker-archive")
        for kind in kinds:
            if text.startswith(kind + ":"):
                rest, tag = text[len(kind) + 1 :], None
                head, colon, tail = rest.rpartition(":")
                if kind != "docker-archive" and colon and "/" not in tail:
                    rest, tag = head, tail
                    if not tag:
                        raise RecipeError(f"empty tag after ':' in {text!r}", where)
                if not rest or "\0" in rest:
                    raise RecipeError(f"{kind}: needs a path, got {text!r}", where)
                # a base image is not a context source: any path (absolute, or relative to the
                # context, even outside it) may name it, as with skopeo and buildah
                return BaseRef(kind, rest, tag, where)
        try:
            Reference.parse(text)  # the grammar the pull uses, so a base it would refuse fails here
        except ValueError:
            pass  # the error below names every kind of base
        else:
            return BaseRef("registry", text, None, where)
        raise RecipeError(
            f"not a valid base {text!r}: expected scratch, a stage name, oci:PATH[:TAG], oci-archive:FILE[:TAG], "
            "docker-archive:FILE or an image reference like alpine:3.20" + did_you_mean(text, self.stage_names),
            where,
        )

    def use_stage(self, name: str, where: Location) -> None:
        """Record that the stage being parsed needs stage ``name`` (for the cycle check)."""
        if self.current is not None:
            self.edges[self.current].append((name, where))

    # -- steps ------------------------------------------------------------------------------

    def steps(self, node: Node) -> tuple[Step, ...]:
        return tuple(self.step(item) for item in expect_seq(node, "a list of steps").items)

    def step(self, node: Node) -> Step:
        m = expect_map(node, "a mapping such as {copy: SRC, to: DEST}")
        kinds = [key for key in m.entries if key in _STEP_KEYS]
        if not kinds:  # most likely a misspelt kind: suggest one if any key is close
            known = [*_STEP_KEYS, *{key for extra in _STEP_KEYS.values() for key in extra}]
            for entry in m.entries.values():
                if entry.key not in known and (hint := did_you_mean(entry.key, known)):
                    raise RecipeError(f"unknown key {entry.key!r}{hint}", entry.key_where)
            raise RecipeError(f"a step needs one of: {', '.join(_STEP_KEYS)}", m.where)
        if len(kinds) > 1:
            raise RecipeError(
                f"a step has one kind, this one has both {kinds[0]!r} and {kinds[1]!r} (make two steps)",
                m.entries[kinds[1]].key_where,
            )
        kind = m.entries[kinds[0]]
        check_keys(m, _STEP_KEYS[kind.key], _REQUIRED.get(kind.key, ()), where=kind.key_where, also=(kind.key,))
        parse: dict[str, Callable[[Map, Entry], Step]] = {
            "rootfs": self.rootfs,
            "copy": self.copy,
            "write": self.write,
            "fetch": self.fetch,
            "mkdir": self.mkdir,
            "symlink": self.symlink,
            "remove": self.remove,
            "run": self.run,
        }
        return parse[kind.key](m, kind)

    def rootfs(self, m: Map, kind: Entry) -> Step:
        to = m.get("to")
        return RootfsStep(
            source=self.context_path(self.text(kind.value), kind.value.where),
            to=self.image_path(to) if to is not None else "/",
            where=kind.key_where,
        )

    def copy(self, m: Map, kind: Entry) -> Step:
        stage = m.get("from")
        from_stage = self.stage_ref(stage) if stage is not None else None
        items = kind.value.items if isinstance(kind.value, Seq) else (kind.value,)
        if isinstance(kind.value, Seq) and not items:
            raise RecipeError("must name at least one source", kind.value.where)
        if from_stage:  # paths in that stage's filesystem
            sources = tuple(self.image_path(item) for item in items)
        else:
            sources = tuple(
                self.context_path(self.text(item, "a path or a list of paths"), item.where) for item in items
            )
        return CopyStep(
            sources=sources,
            to=self.image_path(m.entries["to"].value, keep_slash=True),
            owner=self.owner(m.get("owner")),
            mode=self.mode(m.get("mode")),
            exclude=self.strings(m.get("exclude")) or (),
            from_stage=from_stage,
            where=kind.key_where,
        )

    def stage_ref(self, node: Node) -> str:
        name = self.text(node)
        if name not in self.stage_names:
            hint = did_you_mean(name, self.stage_names) or (
                f" (stages: {', '.join(self.stage_names)})" if self.stage_names else " (there is no stages: section)"
            )
            raise RecipeError(f"no stage named {name!r}{hint}", node.where)
        self.use_stage(name, node.where)
        return name

    def write(self, m: Map, kind: Entry) -> Step:
        return WriteStep(
            path=self.image_path(kind.value, root_ok=False),
            content=self.text(m.entries["content"].value),
            mode=self.mode(m.get("mode")),
            owner=self.owner(m.get("owner")),
            where=kind.key_where,
        )

    def fetch(self, m: Map, kind: Entry) -> Step:
        url = self.text(kind.value, "an http:// or https:// URL")
        split = urlsplit(url)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise RecipeError(f"must be an http:// or https:// URL, got {url!r}", kind.value.where)
        if split.username or split.password:
            raise RecipeError("credentials do not belong in a recipe's URL", kind.value.where)
        digest_node = m.entries["sha256"].value
        digest = self.text(digest_node, "the file's sha256 (64 hex digits)").lower().removeprefix("sha256:")
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise RecipeError(f"must be the file's sha256, 64 hex digits, got {digest!r}", digest_node.where)
        return FetchStep(
            url=url,
            sha256=digest,
            to=self.image_path(m.entries["to"].value, root_ok=False, keep_slash=True),
            mode=self.mode(m.get("mode")),
            owner=self.owner(m.get("owner")),
            where=kind.key_where,
        )

    def mkdir(self, m: Map, kind: Entry) -> Step:
        return MkdirStep(
            path=self.image_path(kind.value),
            mode=self.mode(m.get("mode")),
            owner=self.owner(m.get("owner")),
            where=kind.key_where,
        )

    def symlink(self, m: Map, kind: Entry) -> Step:
        target = m.entries["target"].value
        text = self.text(target)
        if not text or "\0" in text:
            raise RecipeError("must be a non-empty path", target.where)
        if len(text.encode("utf-8", "surrogateescape")) > _PATH_MAX:
            raise RecipeError(f"a link target is at most {_PATH_MAX} bytes (Linux's PATH_MAX)", target.where)
        return SymlinkStep(
            path=self.image_path(kind.value, root_ok=False),
            target=text,
            owner=self.owner(m.get("owner")),
            where=kind.key_where,
        )

    def remove(self, m: Map, kind: Entry) -> Step:
        items = kind.value.items if isinstance(kind.value, Seq) else (kind.value,)
        if not items:
            raise RecipeError("must name at least one path", kind.value.where)
        return RemoveStep(tuple(self.image_path(item, root_ok=False) for item in items), kind.key_where)

    def run(self, m: Map, kind: Entry) -> Step:
        script = expect_scalar(kind.value, "a shell script (a string)")
        if not script.text.strip():
            raise RecipeError("the script is empty", script.where)
        shell_node, env, workdir, network = m.get("shell"), m.get("env"), m.get("workdir"), m.get("network")
        shell = self.strings(shell_node)
        if shell_node is not None and not shell:
            raise RecipeError('must not be empty (e.g. ["/bin/sh", "-c"])', shell_node.where)
        net = self.text(network) if network is not None else "host"
        if network is not None and net not in ("host", "none"):
            raise RecipeError(f"must be 'host' or 'none', got {net!r}", network.where)
        security_node = m.get("security")
        security = self.text(security_node) if security_node is not None else "sandbox"
        if security_node is not None and security not in ("sandbox", "insecure"):
            raise RecipeError(f"must be 'sandbox' or 'insecure', got {security!r}", security_node.where)
        return RunStep(
            script=script.text,
            shell=shell,
            env=dict(self.pairs(env, env_names=True)) if env is not None else {},
            user=self.owner(m.get("user")),
            workdir=self.image_path(workdir) if workdir is not None else None,
            network="none" if net == "none" else "host",
            mounts=self.mounts(m.get("mounts")),
            where=kind.key_where,
            security="insecure" if security == "insecure" else "sandbox",
        )

    def mounts(self, node: Node | None) -> tuple[Mount, ...]:
        if node is None:
            return ()
        mounts: list[Mount] = []
        kinds = "cache: PATH, secret: ID, tmpfs: PATH, bind: {source: PATH, target: PATH} or ssh: ID"
        for item in expect_seq(node, "a list of mounts like [cache: /var/cache/apt, secret: ID]").items:
            m = expect_map(item, f"a mapping with one key: {kinds}")
            check_keys(m, ("cache", "secret", "tmpfs", "bind", "ssh"))
            if len(m.entries) != 1:
                raise RecipeError(f"a mount has exactly one key: {kinds}", m.where)
            entry = next(iter(m.entries.values()))
            if entry.key in ("cache", "tmpfs"):
                mount = Mount("cache" if entry.key == "cache" else "tmpfs", self.image_path(entry.value, root_ok=False),
                              entry.key_where)
            elif entry.key == "bind":
                b = expect_map(entry.value, "a mapping: {source: PATH in the context, target: PATH in the image}")
                check_keys(b, ("source", "target", "from"))
                source, target, stage = b.get("source"), b.get("target"), b.get("from")
                if source is None or target is None:
                    raise RecipeError("a bind mount needs source: (in the context) and target: (in the image)",
                                      b.where)
                from_stage = self.stage_ref(stage) if stage is not None else None
                if from_stage is not None:
                    rel = self.image_path(source)
                else:
                    rel = self.text(source, "a path in the build context")
                    if not rel or rel.startswith("/") or ".." in rel.split("/") or "\0" in rel:
                        raise RecipeError(f"must be a relative path inside the build context, got {rel!r}",
                                          source.where)
                mount = Mount("bind", self.image_path(target, root_ok=False), entry.key_where, rel, from_stage)
            elif entry.key == "ssh":
                ssh_id = self.text(entry.value)
                if not _SECRET_ID.fullmatch(ssh_id):
                    raise RecipeError(f"an ssh id is letters, digits, '_', '.' or '-', got {ssh_id!r}",
                                      entry.value.where)
                if any(x.kind == "ssh" for x in mounts):
                    raise RecipeError("one ssh: mount per run step (SSH_AUTH_SOCK names one agent)", entry.key_where)
                mount = Mount("ssh", ssh_id, entry.key_where)
            else:
                secret = self.text(entry.value)
                if not _SECRET_ID.fullmatch(secret):
                    raise RecipeError(
                        f"a secret id is letters, digits, '_', '.' or '-', got {secret!r}", entry.value.where
                    )
                mount = Mount("secret", secret, entry.key_where)
            if any((m.kind, m.value) == (mount.kind, mount.value) for m in mounts):
                raise RecipeError(f"duplicate {mount.kind} mount {mount.value!r}", entry.key_where)
            mounts.append(mount)
        return tuple(mounts)

    # -- config -----------------------------------------------------------------------------

    def config(self, entry: Entry) -> ConfigSpec:
        m = expect_map(entry.value, "a mapping (env:, entrypoint:, cmd:, ...)")
        check_keys(m, _CONFIG_KEYS)
        get = m.get
        env, labels, workdir, author = get("env"), get("labels"), get("workdir"), get("author")
        return ConfigSpec(
            env=self.pairs(env, env_names=True) if env is not None else (),
            entrypoint=self.argv(get("entrypoint")),
            cmd=self.argv(get("cmd")),
            workdir=self.image_path(workdir) if workdir is not None else None,
            user=self.owner(get("user")),
            ports=tuple(self.port(p) for p in self.items(get("ports"), "a list of ports like [8080, 53/udp]")),
            volumes=tuple(self.image_path(v) for v in self.items(get("volumes"), "a list of absolute paths")),
            labels=self.pairs(labels) if labels is not None else (),
            stop_signal=self.signal(get("stop_signal")),
            author=self.text(author) if author is not None else None,
            shell=self.shell(get("shell")),
            healthcheck=self.healthcheck(get("healthcheck")),
            onbuild=tuple(self.text(i, "a Dockerfile instruction") for i in self.items(
                get("onbuild"), "a list of Dockerfile instructions, e.g. [\"RUN make\"]")),
            where=entry.key_where,
        )

    def shell(self, node: Node | None) -> tuple[str, ...] | None:
        argv = self.argv(node)
        if argv is not None and not argv:
            raise RecipeError('must name a shell, e.g. ["/bin/bash", "-e", "-c"]', node.where if node else None)
        return argv

    def healthcheck(self, node: Node | None) -> dict[str, object] | None:
        """Docker's HEALTHCHECK: ``test`` a command list, a shell string, or ``none``; durations like
        30s or 1m30s (stored in nanoseconds, as Docker's config has them); ``retries`` a count."""
        if node is None:
            return None
        m = expect_map(node, "a mapping (test:, interval:, timeout:, start_period:, start_interval:, retries:)")
        check_keys(m, _HEALTH_KEYS)
        test = m.get("test")
        if test is None:
            raise RecipeError("needs test: (a command list, a shell string, or none)", node.where)
        if isinstance(test, Scalar) and test.tag != "null":
            text = self.text(test)
            out: dict[str, object] = {"Test": ["NONE"] if text.lower() == "none" else ["CMD-SHELL", text]}
        else:
            argv = list(self.strings(test) or ())
            if not argv:
                raise RecipeError("test: must not be empty", test.where)
            out = {"Test": argv if argv[0] in ("CMD", "CMD-SHELL", "NONE") else ["CMD", *argv]}
        for key, name in (("interval", "Interval"), ("timeout", "Timeout"), ("start_period", "StartPeriod"),
                          ("start_interval", "StartInterval")):
            value = m.get(key)
            if value is not None:
                out[name] = self.duration(value)
        retries = m.get("retries")
        if retries is not None:
            count = self.text(retries, "a number of retries")
            if not count.isdigit():
                raise RecipeError(f"must be a whole number, got {count!r}", retries.where)
            out["Retries"] = int(count)
        return out

    def duration(self, node: Node) -> int:
        text = self.text(node, "a duration like 30s, 1m30s or 500ms")
        match = _DURATION.fullmatch(text)
        if not text or not match or not any(match.groups()):
            raise RecipeError(f"must be a duration like 30s, 1m30s or 500ms, got {text!r}", node.where)
        h, m, sec, ms = (int(g or 0) for g in match.groups())
        return ((h * 3600 + m * 60 + sec) * 1000 + ms) * 1_000_000

    def argv(self, node: Node | None) -> tuple[str, ...] | None:
        if isinstance(node, Scalar) and node.tag != "null":
            raise RecipeError(
                f'must be a list of strings, e.g. ["/bin/sh", "-c", {node.text!r}] or [{node.text!r}]', node.where
            )
        return self.strings(node)

    def port(self, node: Node) -> str:
        text = self.text(node, "a port like 8080 or 53/udp")
        match = _PORT.fullmatch(text)
        if not match or not 0 < int(match[1]) < 65536:
            raise RecipeError(f"must be a port like 8080, 8080/tcp or 53/udp, got {text!r}", node.where)
        return f"{int(match[1])}/{match[2] or 'tcp'}"

    def signal(self, node: Node | None) -> str | None:
        if node is None:
            return None
        text = self.text(node)
        if not _SIGNAL.fullmatch(text):
            raise RecipeError(f"must be a signal name like SIGTERM or a number, got {text!r}", node.where)
        return text

    # -- values -----------------------------------------------------------------------------

    def text(self, node: Node, expected: str = "a string") -> str:
        """A scalar's text as written, with ``${ARGS}`` substituted."""
        scalar = expect_scalar(node, expected)
        return argsmod.substitute(scalar.text, self.args, scalar.where, self.budget)

    def items(self, node: Node | None, expected: str) -> tuple[Node, ...]:
        return expect_seq(node, expected).items if node is not None else ()

    def strings(self, node: Node | None) -> tuple[str, ...] | None:
        """A list of strings (None when absent)."""
        if node is None:
            return None
        return tuple(self.text(item, "a string") for item in expect_seq(node, "a list of strings").items)

    def pairs(self, node: Node | None, *, env_names: bool = False) -> tuple[tuple[str, str], ...]:
        """A mapping of strings in written order; for environments, keys cannot hold '='."""
        if node is None:
            return ()
        out: list[tuple[str, str]] = []
        for key, entry in expect_map(node, "a mapping of strings").entries.items():
            if not key:
                raise RecipeError("a name cannot be empty", entry.key_where)
            if env_names and "=" in key:
                raise RecipeError(f"an environment variable name cannot contain '=', got {key!r}", entry.key_where)
            out.append((key, self.text(entry.value, "a string (write '' for an empty value)")))
        return tuple(out)

    def image_path(self, node: Node, *, root_ok: bool = True, keep_slash: bool = False) -> str:
        """An absolute path inside the image, normalised (``/a/./b/`` -> ``/a/b``)."""
        text = self.text(node, "an absolute path inside the image")
        if not text.startswith("/"):
            raise RecipeError(f"must be an absolute path inside the image, got {text!r}", node.where)
        if "\0" in text:
            raise RecipeError("a path cannot contain a NUL character", node.where)
        norm = "/" + posixpath.normpath(text).lstrip("/")
        _check_length(norm, node.where)
        if norm == "/" and not root_ok:
            raise RecipeError("cannot be '/' itself", node.where)
        if keep_slash and text.endswith("/") and norm != "/":
            norm += "/"  # "into this directory", as Docker's COPY reads it
        return norm

    def context_path(self, text: str, where: Location) -> str:
        """A path relative to the build context that stays inside it; kept as written."""
        if not text:
            raise RecipeError("must be a non-empty path relative to the build context", where)
        if "\0" in text:
            raise RecipeError("a path cannot contain a NUL character", where)
        if text.startswith("/"):
            raise RecipeError(f"must be a path relative to the build context, got {text!r}", where)
        norm = posixpath.normpath(text)
        if norm == ".." or norm.startswith("../"):
            raise RecipeError(f"escapes the build context: {text!r}", where)
        _check_length(norm, where)
        return text

    def mode(self, node: Node | None) -> int | None:
        """File mode bits from the text as written, always octal: 0755, 755, "0644" and 0o755 agree."""
        if node is None:
            return None
        text = self.text(node, "an octal mode like 0755").strip()
        digits = text[2:] if text[:2].lower() == "0o" else text
        if not digits or not set(digits) <= set("01234567"):
            raise RecipeError(f"must be an octal mode like 0755, got {text!r}", node.where)
        mode = int(digits, 8)
        if mode > 0o7777:
            raise RecipeError(f"must be at most 07777, got {text!r}", node.where)
        return mode

    def owner(self, node: Node | None) -> str | None:
        """``USER`` or ``USER:GROUP``, names or numbers; names are resolved in the image at build time."""
        if node is None:
            return None
        if isinstance(node, Scalar) and node.tag not in ("str", "int"):
            raise wrong_type(node, "USER or USER:GROUP (names or numbers)")
        text = self.text(node, "USER or USER:GROUP (names or numbers)")
        parts = text.split(":")
        if len(parts) > 2 or not all(_ID_PART.fullmatch(p) for p in parts):
            raise RecipeError(f"must be USER or USER:GROUP (names or numbers), got {text!r}", node.where)
        if any(p.isdigit() and int(p) >= 2**32 - 1 for p in parts):
            raise RecipeError(f"user and group ids must be below 4294967295, got {text!r}", node.where)
        return text


def _check_length(path: str, where: Location) -> None:
    """Refuse a path with a component over NAME_MAX or a total over PATH_MAX bytes (see _NAME_MAX)."""
    raw = path.encode("utf-8", "surrogateescape")
    if len(raw) > _PATH_MAX:
        raise RecipeError(f"a path is at most {_PATH_MAX} bytes (Linux's PATH_MAX), this one has {len(raw)}", where)
    longest = max(raw.split(b"/"), key=len)
    if len(longest) > _NAME_MAX:
        shown = longest[:24].decode("utf-8", "replace")
        raise RecipeError(
            f"a path component is at most {_NAME_MAX} bytes (Linux's NAME_MAX), {shown!r}... has {len(longest)}",
            where,
        )


def _check_cycles(edges: Mapping[str, list[tuple[str, Location]]]) -> None:
    """Refuse stages that need themselves through ``from:`` or ``copy ... from:`` (iterative DFS)."""
    done: set[str] = set()
    for start in edges:
        if start in done:
            continue
        path, todo = [start], [iter(edges[start])]
        while todo:
            step = next(todo[-1], None)
            if step is None:
                done.add(path.pop())
                todo.pop()
                continue
            target, where = step
            if target in path:
                cycle = [*path[path.index(target) :], target]
                raise RecipeError(f"stages form a cycle: {' -> '.join(cycle)}", where)
            if target not in done:
                path.append(target)
                todo.append(iter(edges.get(target, ())))
