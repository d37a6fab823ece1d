"""The one YAML loader of the suite (run --config, coverage, the workflow's config): safe types
only, and refusing what a plain `yaml.safe_load` lets through silently or expensively. A key
repeated in one mapping (the last would win, dropping the first block), aliases that expand past
a bounded node count (a "billion laughs" file of a few lines), a structure that refers to itself,
nesting deeper than any config and bytes that are not UTF-8 are each a one-line error naming
the file and the line.
Torch-free: the Snakemake process uses it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from prunebench.errors import PrunebenchError

MAX_BYTES = 4 << 20  # a config is a few kilobytes; the paper grid's is 12 KB
MAX_NODES = 200_000  # values after every alias is expanded (the paper grid: about 2,000)
MAX_DEPTH = 64  # nesting levels (a config has fewer than ten)
_MERGE = "tag:yaml.org,2002:merge"


class YamlError(PrunebenchError):
    """A YAML file the suite refuses, with the file and line in the message."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (merge keys `<<` may still be
    overridden: that is what they are for)."""

    depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        """Refuse nesting deeper than MAX_DEPTH as it is read (no deep recursion first)."""
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep",
                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: SafeLoader refuses it with its own message
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {first}); a key may "
                    "appear once in a mapping", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: Node, limit: int) -> int:
    """How many nodes the document has once every alias is expanded (stops past `limit`);
    computed once per distinct node, so a bomb costs no more to measure than to read."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = ([n for pair in node.value for n in pair] if isinstance(node, MappingNode)
                    else list(node.value) if isinstance(node, SequenceNode) else [])
        if children_done:
            visiting.discard(id(node))
            sizes[id(node)] = min(1 + sum(sizes[id(c)] for c in children), limit + 1)
            continue
        if id(node) in visiting:
            raise yaml.composer.ComposerError(None, None, "an alias refers to a structure "
                                              "that contains it", node.start_mark)
        visiting.add(id(node))
        stack.append((node, True))
        for child in children:
            if id(child) in visiting:
                raise yaml.composer.ComposerError(None, None, "an alias refers to a structure "
                                                  "that contains it", child.start_mark)
            stack.append((child, False))
    return sizes[id(root)]


def load_yaml(path: str | Path, what: str = "config file") -> Any:
    """The data of YAML file `path` (None when empty), or a one-line YamlError naming `what`,
    the file and the line."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise YamlError(f"{what} {p} cannot be read: {e.strerror or e}") from None
    if len(data) > MAX_BYTES:
        raise YamlError(f"{what} {p} is larger than {MAX_BYTES >> 20} MiB; a config is a few "
                        "kilobytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise YamlError(f"{what} {p} line {line}: byte(s) {data[e.start:e.end]!r} are not "
                        "UTF-8; save the file as UTF-8") from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, MAX_NODES)
        if size > MAX_NODES:
            raise YamlError(f"{what} {p}: its aliases expand to more than {MAX_NODES} values; "
                            "refusing (an alias bomb, or a config far larger than any grid)")
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(f"{e.context or ''} {e.problem or ''}".split())
        raise YamlError(f"{what} {p}{where}: not valid YAML: {problem}") from None
    except yaml.YAMLError as e:
        raise YamlError(f"{what} {p}: not valid YAML: {' '.join(str(e).split())}") from None
    finally:
        loader.dispose()
