"""What every section's parser reads values through: the ``${ARGS}`` in force and the stages it may name.

A scope is the recipe's own steps or one stage. Strings are ``${ARG}``-substituted as they are read
(:meth:`Scope.text`), except a ``run`` script: the shell gets the args as environment variables, and
``${X}`` means what the shell says it means. The node readers below (``image_path``, ``mode``,
``owner``) substitute, then apply the rule of :mod:`builder.recipe.values`.
"""

from __future__ import annotations

from collections.abc import Mapping

from builder.errors import Location, RecipeError
from builder.recipe import args as argsmod
from builder.recipe import values
from builder.recipe.yamlnode import Node, Scalar, did_you_mean, expect_map, expect_scalar, expect_seq, wrong_type


class StageGraph:
    """The recipe's stage names, and which stage needs which (through ``from:``, ``copy ... from:`` and
    ``bind`` mounts) for the cycle check."""

    def __init__(self, names: tuple[str, ...] = ()) -> None:
        self.names = names
        self.edges: dict[str, list[tuple[str, Location]]] = {name: [] for name in names}

    def check_cycles(self) -> None:
        """Refuse stages that need themselves (iterative DFS)."""
        done: set[str] = set()
        for start in self.edges:
            if start in done:
                continue
            path, todo = [start], [iter(self.edges[start])]
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
                    todo.append(iter(self.edges.get(target, ())))


class Scope:
    """The argument values of one scope, the recipe's substitution budget and its stage graph.

    ``stage`` is the stage being parsed (None for the recipe's own steps)."""

    def __init__(
        self, args: Mapping[str, str], budget: argsmod.Budget, graph: StageGraph, stage: str | None = None
    ) -> None:
        self.args = args
        self.budget = budget  # what ${ARGS} may still produce in this recipe
        self.graph = graph
        self.stage = stage

    def within(self, stage: str, args: Mapping[str, str]) -> Scope:
        """The scope of stage ``stage``, whose argument values are ``args``."""
        return Scope(args, self.budget, self.graph, stage)

    # -- stages -----------------------------------------------------------------------------

    def use_stage(self, name: str, where: Location) -> None:
        """Record that the stage being parsed needs stage ``name`` (for the cycle check)."""
        if self.stage is not None:
            self.graph.edges[self.stage].append((name, where))

    def stage_ref(self, node: Node) -> str:
        """A ``from:`` that must name a stage (``copy``, ``bind`` mounts)."""
        name = self.text(node)
        names = self.graph.names
        if name not in names:
            hint = did_you_mean(name, names) or (
                f" (stages: {', '.join(names)})" if names else " (there is no stages: section)"
            )
            raise RecipeError(f"no stage named {name!r}{hint}", node.where)
        self.use_stage(name, node.where)
        return name

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
        """An absolute path inside the image (:func:`builder.recipe.values.image_path`)."""
        text = self.text(node, "an absolute path inside the image")
        return values.image_path(text, node.where, root_ok=root_ok, keep_slash=keep_slash)

    def mode(self, node: Node | None) -> int | None:
        """File mode bits (:func:`builder.recipe.values.mode`); None when absent."""
        if node is None:
            return None
        return values.mode(self.text(node, "an octal mode like 0755"), node.where)

    def owner(self, node: Node | None) -> str | None:
        """``USER`` or ``USER:GROUP`` (:func:`builder.recipe.values.owner`); None when absent."""
        if node is None:
            return None
        if isinstance(node, Scalar) and node.tag not in ("str", "int"):
            raise wrong_type(node, "USER or USER:GROUP (names or numbers)")
        return values.owner(self.text(node, "USER or USER:GROUP (names or numbers)"), node.where)
