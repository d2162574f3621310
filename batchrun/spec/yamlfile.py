"""Reading the YAML files users write (job specs, price tables), with one shape of error for all of them.

A plain `yaml.safe_load` accepts things no spec needs, each of which hurts later: an anchor that refers to itself
(a structure without end, which crashes whatever walks it), aliases that multiply ("billion laughs": a few lines
that become gigabytes once request bodies are built from them), nesting deeper than JSON encoders go, and a key
given twice (the last one silently wins). `SpecLoader` refuses all of them while composing, before anything is
built, so each is one `not valid YAML at line N` error like any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..errors import SpecError

# Values (scalars, lists, mappings) in a file once every alias is expanded. A job spec or price table holds
# hundreds; a large inline output schema a few thousand. An alias bomb passes this within a few of its lines.
MAX_VALUES = 100_000
# Lists and mappings inside one another. Specs nest a handful deep; request bodies are JSON, and orjson refuses
# more than 254 levels (params and schemas sit a few levels down in the body).
MAX_DEPTH = 100
MERGE_TAG = "tag:yaml.org,2002:merge"


class SpecLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses self-referencing anchors, alias bombs, deep nesting and duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._open: set[str] = set()  # anchors of the lists and mappings being composed: an alias to one loops
        self._path: list[str] = []  # where the node being composed sits (limits.rpm), for messages
        self._extent: dict[int, tuple[int, int]] = {}  # id(node): (values, depth) with its aliases expanded

    def compose_node(self, parent: Node | None, index: object) -> Node | None:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, AliasEvent):
            if event.anchor in self._open:
                raise _refusal(
                    f"the alias *{event.anchor} is inside its own anchor &{event.anchor}, so it would never end: "
                    "refer only to anchors defined before it and closed",
                    event.start_mark,
                )
            return super().compose_node(parent, index)  # type: ignore[arg-type]
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            if anchor in self.anchors:  # PyYAML's own message says only "second occurrence"
                raise _refusal(
                    f"the anchor &{anchor} is defined twice (first at line {self.anchors[anchor].start_mark.line + 1}):"
                    " give each anchor its own name",
                    event.start_mark,
                )
            self._open.add(anchor)
        self._path.append(_segment(index))
        if len(self._path) > MAX_DEPTH:
            raise _refusal(f"nested more than {MAX_DEPTH} levels deep, more than any spec needs", event.start_mark)
        try:
            node = super().compose_node(parent, index)  # type: ignore[arg-type]
            assert node is not None
            if isinstance(node, MappingNode):
                self._refuse_duplicates(node)
            self._measure(node)
        finally:
            self._path.pop()
            if anchor is not None:
                self._open.discard(anchor)
        return node

    def _measure(self, node: Node) -> None:
        """Count the node's values and depth as if every alias in it were written out; refuse past the limits."""
        children: list[Node] = []
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        values, depth = 1, 1
        for child in children:  # composed already (or aliases of nodes that were): measured
            size, deep = self._extent[id(child)]
            values, depth = values + size, max(depth, deep + 1)
        if values > MAX_VALUES:
            raise _refusal(
                f"its aliases expand to more than {MAX_VALUES:,} values, far more than any spec needs "
                "(a YAML alias bomb?): write the values out, or use fewer aliases",
                node.start_mark,
            )
        if depth > MAX_DEPTH:
            raise _refusal(
                f"its aliases nest more than {MAX_DEPTH} levels deep, more than any spec needs",
                node.start_mark,
            )
        self._extent[id(node)] = (values, depth)

    def _refuse_duplicates(self, node: MappingNode) -> None:
        """A key given twice in one mapping: YAML forbids it, and PyYAML would keep the last one silently."""
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == MERGE_TAG:
                continue  # `<<` merges may repeat (and the mapping's own keys override what they merge)
            key = self._key(key_node)
            if key in seen:
                where = ".".join(p for p in self._path if p).replace(".[", "[")
                raise _refusal(
                    f"duplicate key {key_node.value!r} {f'in {where}' if where else 'at the top level'} "
                    f"(first at line {seen[key] + 1}): give each key once",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line

    def _key(self, node: ScalarNode) -> Any:
        """The key as the parsed mapping holds it: keys it cannot hold apart (`1`, `0x1`, `1.0`) are one key,
        and `1` and `'1'` two."""
        try:
            key = self.construct_object(node)
            hash(key)
        except (yaml.YAMLError, TypeError):
            return (node.tag, node.value)
        return key


def _refusal(problem: str, mark: Any) -> ComposerError:
    """An error in PyYAML's own shape, so it reads like any other: `not valid YAML at line N: problem`."""
    return ComposerError(None, None, problem, mark)


def _segment(index: object) -> str:
    """The path segment of a node composed at `index`: a mapping value's key, a list item's [n]; a key has none."""
    if isinstance(index, ScalarNode):
        return str(index.value)
    if isinstance(index, int):
        return f"[{index}]"
    return ""


def load_yaml(path: Path, what: str) -> Any:
    """The parsed file; a missing, unreadable or malformed file is a SpecError naming it and the line at fault."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{source}: no such {what} file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{source}: cannot read the {what} ({exc})") from None
    return parse_yaml(text, source)


def parse_yaml(text: str, source: str) -> Any:
    """`text` parsed by `SpecLoader`; any fault is a one-line SpecError naming `source` and the line."""
    loader = SpecLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc
        raise SpecError(f"{source}: not valid YAML{where}: {' '.join(str(problem).split())}") from None
    finally:
        loader.dispose()
