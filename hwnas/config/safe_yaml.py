"""The one YAML reader of hwnas: safe_load, bounded.

PyYAML composes an alias (``*name``) as a reference to the anchored node, so a 1 KB file of
nested aliases ("billion laughs") loads quickly as a graph whose expanded tree has 10^9
values; whatever walks it as a tree (validation, a repr in an error, a JSON copy, a diff)
then runs out of time or memory. Composition here counts aliases, the nesting depth and
the size each value has once its aliases are expanded, and refuses past small bounds, naming
the line, before anything expands it.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from hwnas.errors import ConfigError

MAX_ALIASES = 100  # *name references in one file
MAX_VALUES = 100_000  # scalars, lists and mappings once aliases are expanded
MAX_DEPTH = 64  # nested lists and mappings


class Refused(yaml.MarkedYAMLError):
    """Valid YAML that hwnas will not read: too many aliases, too large, too deep."""


class BoundedLoader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0
        self._expanded: dict[int, int] = {}  # id(node) -> values once aliases are expanded

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise Refused(problem=f"more than {MAX_ALIASES} aliases (*name); a config file "
                                      f"may use at most {MAX_ALIASES}", problem_mark=mark)
            node = super().compose_node(parent, index)
            if id(node) not in self._expanded:
                raise Refused(problem="an alias inside the value it names (a recursive value)",
                              problem_mark=mark)
            return node
        if self._depth >= MAX_DEPTH:
            raise Refused(problem=f"nested deeper than {MAX_DEPTH} levels",
                          problem_mark=self.peek_event().start_mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, SequenceNode):
            children: list[Node] = node.value
        elif isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        size = 1 + sum(self._expanded[id(child)] for child in children)
        if size > MAX_VALUES:
            raise Refused(problem=f"this value expands to more than {MAX_VALUES} values through "
                                  f"aliases (*name); a config file holds at most {MAX_VALUES} values",
                          problem_mark=node.start_mark)
        self._expanded[id(node)] = size
        return node


def read_yaml(text: str, source: str) -> Any:
    """The data of one YAML document, or a ConfigError naming ``source`` and the line."""
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or exc
        if isinstance(exc, Refused):
            raise ConfigError(f"{source}:{where}: {problem}") from None
        raise ConfigError(f"{source}:{where} is not valid YAML: {problem}") from None
    except (ValueError, OverflowError) as exc:  # a malformed date (2020-13-45) and the like
        raise ConfigError(f"{source}: is not valid YAML: {exc}") from None
    finally:
        loader.dispose()
