"""YAML text -> plain data plus the line of every mapping key, refusing duplicate keys.

PyYAML's own constructors keep the last of two equal keys without a word; a topology with
two hosts of one name must be an error instead. So the text is composed into nodes and
walked here: every mapping key is recorded by its dotted path (``links.edge-cloud.delay``)
with its 1-based line, and keys are taken as written (``no:`` is the host ``no``, not
``False``). Scalar values are resolved as YAML 1.1 safe loading resolves them.
"""
from __future__ import annotations

from .errors import TopologyError

MAX_DEPTH = 32          # deeper than any topology; stops recursive aliases
MAX_NODES = 200_000     # stops alias bombs ("billion laughs") long before memory runs out
SYNTAX_ALLOWED = "valid YAML: a mapping with name, hosts and links"


def read_yaml(text: str, source: str) -> tuple[object, dict[str, int]]:
    """(data, lines): the document as dicts/lists/scalars, and the line of each key path."""
    import yaml  # here, not at the top: importing topologies should not cost a YAML parser

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or "not valid YAML"
        if e.context and problem.startswith("but "):  # "but found another document" needs its context
            problem = f"{e.context}, {problem}"
        column = f" (column {mark.column + 1})" if mark else ""
        raise TopologyError(f"YAML syntax error: {problem}{column}", SYNTAX_ALLOWED, source=source,
                            line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as e:  # reader errors: control characters, bad encodings
        raise TopologyError(f"YAML error: {e}", SYNTAX_ALLOWED, source=source) from None
    if root is None:
        raise TopologyError("the file is empty", SYNTAX_ALLOWED, source=source)
    walker = _Walker(yaml, source)
    return walker.value(root, "", 0), walker.lines


class _Walker:
    def __init__(self, yaml_module, source: str) -> None:
        self.yaml = yaml_module
        self.source = source
        self.lines: dict[str, int] = {}
        self.constructor = yaml_module.SafeLoader("")  # only its scalar constructors are used
        self.nodes = 0

    def value(self, node, path: str, depth: int) -> object:
        self.nodes += 1
        line = node.start_mark.line + 1
        if depth > MAX_DEPTH or self.nodes > MAX_NODES:
            raise TopologyError("the document is nested too deeply or too large", SYNTAX_ALLOWED,
                                source=self.source, line=line, path=path or None)
        if isinstance(node, self.yaml.MappingNode):
            out: dict[str, object] = {}
            for key_node, value_node in node.value:
                key_line = key_node.start_mark.line + 1
                if not isinstance(key_node, self.yaml.ScalarNode):
                    raise TopologyError("a key must be a plain name", "names such as mobile or edge-cloud",
                                        source=self.source, line=key_line, path=path or None)
                key = key_node.value
                key_path = f"{path}.{key}" if path else key
                if key in out:
                    what = {"hosts": "host name", "links": "link"}.get(path, "key")
                    raise TopologyError(f"duplicate {what} (first at line {self.lines[key_path]})",
                                        f"each {what} once", source=self.source, line=key_line, path=key_path)
                self.lines[key_path] = key_line
                out[key] = self.value(value_node, key_path, depth + 1)
            return out
        if isinstance(node, self.yaml.SequenceNode):
            return [self.value(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(node.value)]
        try:
            return self.constructor.construct_object(node)
        except self.yaml.YAMLError as e:
            raise TopologyError(f"unreadable value: {getattr(e, 'problem', None) or e}", SYNTAX_ALLOWED,
                                source=self.source, line=line, path=path or None) from None
