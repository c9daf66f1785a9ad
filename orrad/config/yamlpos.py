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

A file is hostile input until proven otherwise, so every load is bounded by
:class:`Limits`: the file's size (read with a bound, regular files only), the nesting depth
(checked while scanning, before PyYAML's recursive composer can overflow the stack), the
number of nodes (aliases and merge keys count every time they are used, so an alias or
merge bomb stops early), the bytes that ``${…}`` expansion produces, and a time budget.
Each bound is a :class:`~orrad.errors.ConfigError` at the position where it was crossed.

An error about a value that expansion changed never shows the expanded value
(:meth:`Document.error`): it names the key and the reference as written instead.
"""

from __future__ import annotations

import ast
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, NoReturn

import yaml
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

from orrad.config.files import MAX_FILE_BYTES, read_regular_text
from orrad.errors import ConfigError

__all__ = ["DEFAULT_LIMITS", "Document", "Limits", "Mark", "Path", "Reresolved", "load_yaml",
           "load_yaml_file", "unwrap"]

Path = tuple[str | int, ...]

_STR_TAG = "tag:yaml.org,2002:str"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class Limits:
    """What one configuration file may cost to load (every field a hard bound)."""

    max_bytes: int = MAX_FILE_BYTES
    """Size of the file itself."""
    max_depth: int = 64
    """Nesting of mappings and sequences (flow or block, through aliases and merges too)."""
    max_nodes: int = 100_000
    """Nodes parsed plus nodes built (an alias or a merge counts each time it is used)."""
    max_expanded_bytes: int = 4 * MAX_FILE_BYTES
    """Characters produced by ``${…}`` expansion in the whole file."""
    time_s: float = 5.0
    """Wall time for reading, parsing, expanding and checking one file."""

    def deadline(self) -> float:
        """The :func:`time.monotonic` value by which a load starting now must be done."""
        return time.monotonic() + self.time_s


DEFAULT_LIMITS = Limits()


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
    expanded: dict[Path, tuple[str, str]] = field(default_factory=dict)
    """Values that ``${…}`` expansion changed: path -> (text as written, expanded text)."""

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
        """A :class:`ConfigError` pointing at the key or value at ``path``.

        ``message`` is cleaned of expanded values (see :meth:`redact`).
        """
        line, col = self.mark(path, key=key)
        return ConfigError(self.redact(path, message), path=self.path, line=line, col=col)

    def redact(self, path: Path, message: str) -> str:
        """``message`` without any value that came out of ``${…}`` expansion.

        A value may be a secret (``${file:/run/credentials/x}``, ``${TOKEN}``). Quoted
        literals naming a whole expanded value are hidden wherever they appear; for an
        error about the expanded value at ``path`` itself, any part of it is hidden, and
        the message then names the key and the reference as written instead.
        """
        if not self.expanded:
            return message
        original = message
        for _written, value in self.expanded.values():
            message = _hide(message, value, parts=False)
        if path in self.expanded:
            written, value = self.expanded[path]
            message = _hide(message, value, parts=True)
            if message != original:
                shown = written if len(written) <= 120 else written[:117] + "..."
                message += f" (the value of {_key_name(path)} comes from {shown}; not shown)"
        return message

    def has(self, path: Path) -> bool:
        return path in self.values


_QUOTED_RE = re.compile(r"'(?:[^'\\\n]|\\.)*'" + r'|"(?:[^"\\\n]|\\.)*"')
_WORD_RE = re.compile(r"[^\s'\"`:,;()\[\]{}]{8,}")


def _literal(quoted: str) -> str | None:
    try:
        value = ast.literal_eval(quoted)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, str) else None


def _hide(message: str, value: str, *, parts: bool) -> str:
    """``message`` with ``value`` (and with ``parts``, any piece of it) replaced by ``…``."""
    if not value:
        return message

    def quoted(m: re.Match[str]) -> str:
        text = _literal(m[0])
        if text is None or not text:
            return m[0]
        return "…" if text == value or (parts and text in value) else m[0]

    message = _QUOTED_RE.sub(quoted, message)
    if len(value) >= 4:
        message = message.replace(value, "…")
    if parts:  # unquoted pieces: any long word of the message found in the value
        message = _WORD_RE.sub(lambda m: "…" if m[0] in value else m[0], message)
    return message


def _key_name(path: Path) -> str:
    n = len(path)
    while n > 0 and isinstance(path[n - 1], int):
        n -= 1
    head = repr(path[n - 1]) if n else "the document"
    return head + "".join(f"[{i}]" for i in path[n:])


def _mark(node: yaml.Node | yaml.Event) -> Mark:
    start = node.start_mark
    return Mark(start.line + 1, start.column + 1) if start is not None else Mark(1, 1)


class _Bounds:
    """The limits of one load in progress: node count, deadline, expanded bytes."""

    def __init__(self, path: str, limits: Limits, deadline: float) -> None:
        self.path = path
        self.limits = limits
        self.deadline = deadline
        self.nodes = 0
        self.expanded = 0

    def stop(self, mark: Mark, message: str) -> NoReturn:
        raise ConfigError(message, path=self.path, line=mark.line, col=mark.col)

    def too_deep(self, mark: Mark) -> NoReturn:
        self.stop(mark, f"nested deeper than {self.limits.max_depth} levels")

    def count(self, mark: Mark, n: int = 1) -> None:
        """Count ``n`` nodes (or merged keys) against the node cap; check the deadline."""
        self.nodes += n
        if self.nodes > self.limits.max_nodes:
            self.stop(mark, f"document has more than {self.limits.max_nodes} nodes "
                            "(aliases and merge keys count each time they are used)")
        if time.monotonic() > self.deadline:
            self.stop(mark, f"file takes longer than {self.limits.time_s:g}s to load")


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the nesting depth bounded while scanning and composing.

    The composer recurses once per level, so depth is checked on the scanner's flow level
    and indentation stack (which run ahead of the composer) and again on the events.
    """

    def __init__(self, text: str, bounds: _Bounds) -> None:
        super().__init__(text)
        self.bounds = bounds
        self.depth = 0

    def _scan_depth_check(self) -> None:
        if self.flow_level + len(self.indents) > self.bounds.limits.max_depth:
            mark = self.get_mark()
            self.bounds.too_deep(Mark(mark.line + 1, mark.column + 1))

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        self._scan_depth_check()
        super().fetch_flow_collection_start(TokenClass)

    def add_indent(self, column: int) -> bool:
        added = super().add_indent(column)
        if added:
            self._scan_depth_check()
        return added

    def get_event(self) -> Any:
        event = super().get_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.CollectionStartEvent):
            self.depth += 1
            if self.depth > self.bounds.limits.max_depth:
                self.bounds.too_deep(_mark(event))
        elif isinstance(event, yaml.CollectionEndEvent):
            self.depth -= 1
        if isinstance(event, yaml.NodeEvent):
            self.bounds.count(_mark(event))
        return event


class _Builder:
    def __init__(
        self, doc: Document, expand: Callable[[str], str] | None, bounds: _Bounds
    ) -> None:
        self.doc = doc
        self.expand = expand
        self.bounds = bounds
        self.errors: list[ConfigError] = []
        self.constructor = SafeConstructor()
        self.resolver = Resolver()
        self.active: set[int] = set()

    def fail(self, node: yaml.Node, message: str) -> NoReturn:
        self.bounds.stop(_mark(node), message)

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.bounds.count(_mark(node))
        if len(path) > self.bounds.limits.max_depth:  # deeper through aliases
            self.bounds.too_deep(_mark(node))
        if id(node) in self.active:
            self.fail(node, "recursive alias")
        self.doc.values[path] = _mark(node)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            assert isinstance(node, yaml.MappingNode)
            return self.mapping(node, path)
        finally:
            self.active.discard(id(node))

    def pairs(
        self, node: yaml.MappingNode, depth: int = 0, at: Mark | None = None
    ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """Key text -> (key node, value node), with ``<<`` merges applied.

        Own keys win over merged ones, and an earlier merge source over a later one; an
        own key given twice is an error. Every pair looked at counts against the node cap
        (a merge source used ten times costs ten times), and chains of merges count
        against the depth; errors then point at the outermost ``<<`` (``at``).
        """
        at = at or _mark(node)
        if depth > self.bounds.limits.max_depth:
            self.bounds.too_deep(at)
        self.bounds.count(at, len(node.value))
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
                    merged.update(self.pairs(source, depth + 1, at if depth else _mark(key_node)))
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

    def scalar(self, node: yaml.ScalarNode, path: Path) -> Any:
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
            if text != node.value:
                self.doc.expanded[path] = (node.value, text)
                self.bounds.expanded += len(text)
                if self.bounds.expanded > self.bounds.limits.max_expanded_bytes:
                    self.fail(node, "${…} expansion produces more than "
                                    f"{self.bounds.limits.max_expanded_bytes} characters")
            if node.style is not None or "${" not in node.value:
                return text
            tag = self.resolver.resolve(  # type: ignore[no-untyped-call]
                yaml.ScalarNode, text, (True, False)
            )
            if tag in (_STR_TAG, _TIMESTAMP_TAG):
                return text
            try:
                value = self.constructor.construct_object(yaml.ScalarNode(tag, text), deep=True)
            except (yaml.YAMLError, ValueError, ArithmeticError):
                return text  # e.g. an int too long to convert: typing judges the text
            return Reresolved(value, text)
        if node.tag == _TIMESTAMP_TAG:
            return node.value
        try:
            return self.constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, ArithmeticError, LookupError, TypeError) as e:
            problem = getattr(e, "problem", None) or str(e)
            self.fail(node, f"invalid value: {problem[:200]}")


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
    text: str, path: str, *, expand: Callable[[str], str] | None = None,
    limits: Limits = DEFAULT_LIMITS, deadline: float | None = None,
) -> tuple[Document, list[ConfigError]]:
    """Parse one YAML document within ``limits`` (by ``deadline``, default: from now).

    Returns the document (``data`` is ``None`` for an empty file) and the list of
    expansion problems (each at its value's position; the unexpanded text is kept in
    ``data``). A syntax error, a duplicate key, an unknown tag, a recursive alias or a
    crossed limit stops loading: it is returned as the only error and ``data`` is ``None``.
    """
    doc = Document(path)
    bounds = _Bounds(path, limits, limits.deadline() if deadline is None else deadline)
    loader = _BoundedLoader(text, bounds)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as e:
        return doc, [_syntax_error(path, e)]
    except ConfigError as e:
        return doc, [e]
    finally:
        loader.dispose()
    if root is None:
        return doc, []
    bounds.nodes = 0  # parsed nodes counted; now the built ones (aliases again each time)
    builder = _Builder(doc, expand, bounds)
    try:
        doc.data = builder.build(root, ())
    except ConfigError as e:
        doc.data = None
        doc.expanded.clear()
        return doc, [e]
    return doc, builder.errors


def load_yaml_file(
    path: str, *, expand: Callable[[str], str] | None = None,
    limits: Limits = DEFAULT_LIMITS, deadline: float | None = None,
) -> tuple[Document, list[ConfigError]]:
    """Read ``path`` (a regular file, UTF-8, at most ``limits.max_bytes``) and
    :func:`load_yaml` it; a file that cannot be read so is one error (without a line)."""
    deadline = limits.deadline() if deadline is None else deadline
    try:
        text = read_regular_text(path, limits.max_bytes)
    except ConfigError as e:
        return Document(path), [e]
    return load_yaml(text, path, expand=expand, limits=limits, deadline=deadline)
