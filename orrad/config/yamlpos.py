"""YAML loading that remembers where every key and value came from.

:func:`load_yaml` composes the document with PyYAML's safe resolver and builds plain Python
data (dicts with string keys, lists, scalars) while recording the 1-based line and column
of every mapping key and every value, addressed by its *path* from the root: a tuple of
mapping keys and list indices, e.g. ``("agents", "x", "tools", 1)``.

String scalars may be rewritten by an ``expand`` callable (``${VAR}`` expansion) *before*
typing: a plain (unquoted) scalar that contained ``${`` is re-resolved with YAML's implicit
resolvers, so ``${T:-120}`` becomes the int ``120`` while ``"${T:-120}"`` stays a string.
Such re-resolved non-string values are wrapped in :class:`Reresolved`, which keeps the
expanded text so a string-typed field can still take it (an all-digit token, or ``""``
which YAML would read as null). Quoted scalars and values that come out as strings are
plain ``str``.

Duplicate keys are errors; ``<<`` merge keys work as the YAML merge-key spec says (own
keys first, then earlier sources); keys are always the key's source text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import yaml
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

from orrad.errors import ConfigError

__all__ = ["Document", "Mark", "Path", "Reresolved", "load_yaml", "load_yaml_file", "unwrap"]

Path = tuple[str | int, ...]

_STR_TAG = "tag:yaml.org,2002:str"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAX_NODES = 100_000


class Mark(NamedTuple):
    """A 1-based position in a file."""

    line: int
    col: int


class Reresolved(NamedTuple):
    """A plain scalar whose expanded ``text`` YAML resolves to the non-string ``value``."""

    value: Any
    text: str


def unwrap(data: Any) -> Any:
    """A copy of ``data`` with every :class:`Reresolved` replaced by its ``value``."""
    if isinstance(data, Reresolved):
        return data.value
    if isinstance(data, dict):
        return {k: unwrap(v) for k, v in data.items()}
    if isinstance(data, list):
        return [unwrap(v) for v in data]
    return data


@dataclass
class Document:
    """Loaded data of one file plus the position of each key and value by path."""

    path: str
    data: Any = None
    values: dict[Path, Mark] = field(default_factory=dict)
    keys: dict[Path, Mark] = field(default_factory=dict)

    def mark(self, path: Path, *, key: bool = False) -> Mark:
        """Position of the key (``key=True``) or value at ``path``.

        Falls back to the value of the nearest ancestor present in the file, then 1:1.
        """
        if key and path in self.keys:
            return self.keys[path]
        for n in range(len(path), -1, -1):
            if path[:n] in self.values:
                return self.values[path[:n]]
        return Mark(1, 1)

    def error(self, path: Path, message: str, *, key: bool = False) -> ConfigError:
        """A :class:`ConfigError` pointing at the key or value at ``path``."""
        line, col = self.mark(path, key=key)
        return ConfigError(message, path=self.path, line=line, col=col)

    def has(self, path: Path) -> bool:
        return path in self.values


def _mark(node: yaml.Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


class _Builder:
    def __init__(self, doc: Document, expand: Callable[[str], str] | None) -> None:
        self.doc = doc
        self.expand = expand
        self.errors: list[ConfigError] = []
        self.constructor = SafeConstructor()
        self.resolver = Resolver()
        self.active: set[int] = set()
        self.count = 0

    def fail(self, node: yaml.Node, message: str) -> None:
        line, col = _mark(node)
        raise ConfigError(message, path=self.doc.path, line=line, col=col)

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.count += 1
        if self.count > _MAX_NODES:
            self.fail(node, f"document has more than {_MAX_NODES} nodes")
        if id(node) in self.active:
            self.fail(node, "recursive alias")
        self.doc.values[path] = _mark(node)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node)
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            assert isinstance(node, yaml.MappingNode)
            return self.mapping(node, path)
        finally:
            self.active.discard(id(node))

    def pairs(self, node: yaml.MappingNode) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """Key text -> (key node, value node), with ``<<`` merges applied.

        Own keys win over merged ones, and an earlier merge source over a later one; an
        own key given twice is an error.
        """
        merged: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        own: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [
                    value_node]
                for source in reversed(sources):
                    if not isinstance(source, yaml.MappingNode):
                        self.fail(source, "a merge (<<) takes a mapping or a list of mappings")
                    if id(source) in self.active:
                        self.fail(source, "recursive alias")
                    self.active.add(id(source))
                    merged.update(self.pairs(source))
                    self.active.discard(id(source))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.fail(key_node, "mapping keys must be plain strings")
            key = str(key_node.value)
            if key in own:
                self.fail(key_node, f"duplicate key {key!r}")
            own[key] = (key_node, value_node)
        return {**merged, **own}

    def mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, (key_node, value_node) in self.pairs(node).items():
            self.doc.keys[(*path, key)] = _mark(key_node)
            out[key] = self.build(value_node, (*path, key))
        return out

    def scalar(self, node: yaml.ScalarNode) -> Any:
        if node.tag == _STR_TAG:
            text: str = node.value
            if self.expand is None or "$" not in text:
                return text
            try:
                text = self.expand(text)
            except ValueError as e:
                line, col = _mark(node)
                self.errors.append(ConfigError(str(e), path=self.doc.path, line=line, col=col))
                return node.value
            if node.style is not None or "${" not in node.value:
                return text
            tag = self.resolver.resolve(  # type: ignore[no-untyped-call]
                yaml.ScalarNode, text, (True, False)
            )
            if tag in (_STR_TAG, _TIMESTAMP_TAG):
                return text
            value = self.constructor.construct_object(yaml.ScalarNode(tag, text), deep=True)
            return Reresolved(value, text)
        if node.tag == _TIMESTAMP_TAG:
            return node.value
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError as e:
            self.fail(node, f"invalid value: {getattr(e, 'problem', None) or e}")
        raise AssertionError("unreachable")


def _syntax_error(path: str, e: yaml.YAMLError) -> ConfigError:
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        text = "; ".join(p for p in (e.context, e.problem) if p)
        if mark is not None:
            return ConfigError(
                f"invalid YAML: {text}", path=path, line=mark.line + 1, col=mark.column + 1
            )
        return ConfigError(f"invalid YAML: {text}", path=path, line=1, col=1)
    return ConfigError(f"invalid YAML: {e}", path=path, line=1, col=1)


def load_yaml(
    text: str, path: str, *, expand: Callable[[str], str] | None = None
) -> tuple[Document, list[ConfigError]]:
    """Parse one YAML document.

    Returns the document (``data`` is ``None`` for an empty file) and the list of
    expansion problems (each at its value's position; the unexpanded text is kept in
    ``data``). A syntax error, a duplicate key, an unknown tag or a recursive alias stops
    loading: it is returned as the only error and ``data`` is ``None``.
    """
    doc = Document(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        return doc, [_syntax_error(path, e)]
    if root is None:
        return doc, []
    builder = _Builder(doc, expand)
    try:
        doc.data = builder.build(root, ())
    except ConfigError as e:
        doc.data = None
        return doc, [e]
    return doc, builder.errors


def load_yaml_file(
    path: str, *, expand: Callable[[str], str] | None = None
) -> tuple[Document, list[ConfigError]]:
    """Read ``path`` (UTF-8) and :func:`load_yaml` it; unreadable files are one error."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        return Document(path), [ConfigError("file is not UTF-8 text", path=path)]
    except OSError as e:
        return Document(path), [ConfigError(f"cannot read file: {e.strerror or e}", path=path)]
    return load_yaml(text, path, expand=expand)
