"""YAML loading with positions, expansion before typing, and YAML-level errors."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from orrad.config.expand import make_expander
from orrad.config.yamlpos import Document, Mark, Reresolved, load_yaml, unwrap

ENV = {"N": "120", "F": "1.5", "B": "true", "S": "text", "E": "", "NUL": "null",
       "FLOW": "[1, 2]", "MAP": "a: b", "DATE": "2024-01-02"}


def load(text: str, env: dict[str, str] | None = None) -> Document:
    doc, errors = load_yaml(textwrap.dedent(text), "f.yaml",
                            expand=make_expander(ENV if env is None else env, "/"))
    assert errors == []
    return doc


def test_positions_of_keys_and_values() -> None:
    doc = load("""\
        a:
          b: 1
          list:
            - x
            - {c: d}
        """)
    assert doc.data == {"a": {"b": 1, "list": ["x", {"c": "d"}]}}
    assert doc.keys[("a",)] == Mark(1, 1)
    assert doc.keys[("a", "b")] == Mark(2, 3)
    assert doc.values[("a", "b")] == Mark(2, 6)
    assert doc.values[("a", "list", 0)] == Mark(4, 7)
    assert doc.keys[("a", "list", 1, "c")] == Mark(5, 8)
    assert doc.values[("a", "list", 1, "c")] == Mark(5, 11)
    # unknown paths fall back to the nearest ancestor value, then 1:1
    assert doc.mark(("a", "list", 1, "zzz")) == Mark(5, 7)
    assert doc.mark(("a", "b"), key=True) == Mark(2, 3)
    assert Document("x").mark(("q",)) == Mark(1, 1)
    assert str(doc.error(("a", "b"), "boom")) == "f.yaml:2:6: boom"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("${N}", Reresolved(120, "120")),  # plain: re-resolved to int
        ("'${N}'", "120"),  # quoted: stays a string
        ('"${N}"', "120"),
        ("${F}", Reresolved(1.5, "1.5")),
        ("${B}", Reresolved(True, "true")),
        ("${E}", Reresolved(None, "")),  # empty plain scalar is null...
        ("${NUL}", Reresolved(None, "null")),
        ("${S}", "text"),  # ...strings stay plain str
        ("${FLOW}", "[1, 2]"),  # never parsed as a collection
        ("${MAP}", "a: b"),
        ("${DATE}", "2024-01-02"),  # timestamps stay text
        ("x${N}", "x120"),
        ("$${N}", "${N}"),
        ("120", 120),  # ordinary YAML typing untouched
        ("2024-01-02", "2024-01-02"),
        ("|\n  ${N}\n", "120\n"),  # block scalars are not plain
    ],
)
def test_expansion_before_typing(source: str, expected: Any) -> None:
    doc = load("v: " + source + "\n")
    assert doc.data["v"] == expected
    assert type(doc.data["v"]) is type(expected)


def test_keys_are_not_expanded_and_are_source_text() -> None:
    doc = load("${N}: 1\n1: 2\ntrue: 3\n")
    assert doc.data == {"${N}": 1, "1": 2, "true": 3}


def test_unwrap() -> None:
    data = {"a": [Reresolved(1, "1"), {"b": Reresolved(None, "")}], "c": "x"}
    assert unwrap(data) == {"a": [1, {"b": None}], "c": "x"}


def test_expansion_errors_are_collected_with_positions() -> None:
    doc, errors = load_yaml("a: ${X}\nb:\n  - ok\n  - ${Y:-fine} ${Z}\n", "f.yaml",
                            expand=make_expander({}, "/"))
    assert [str(e) for e in errors] == [
        "f.yaml:1:4: environment variable X is not set",
        "f.yaml:4:5: environment variable Z is not set",
    ]
    assert doc.data == {"a": "${X}", "b": ["ok", "${Y:-fine} ${Z}"]}


@pytest.mark.parametrize(
    ("source", "prefix", "fragment"),
    [
        ("a: 1\n  b: 2\n", "f.yaml:2:4:", "mapping values are not allowed"),
        ("a: [1, 2\n", "f.yaml:2:1:", "expected ',' or ']'"),
        ("a: 1\na: 2\n", "f.yaml:2:1:", "duplicate key 'a'"),
        ("a: !custom 1\n", "f.yaml:1:4:", "could not determine a constructor"),
        ("a: &x [*x]\n", "f.yaml:1:4:", "recursive alias"),
        ("a: 1\n---\nb: 2\n", "f.yaml:2:1:", "expected a single document"),
        ("{[1]: 2}\n", "f.yaml:1:2:", "mapping keys must be plain strings"),
        ("a: {<<: 1}\n", "f.yaml:1:9:", "a merge (<<) takes a mapping"),
        ("a: &a {b: {<<: *a}}\n", "f.yaml:1:4:", "recursive alias"),
        ("a:\tb\n\tc: 1\n", "f.yaml:1:3:", "found character '\\t'"),
    ],
)
def test_yaml_errors(source: str, prefix: str, fragment: str) -> None:
    doc, errors = load_yaml(source, "f.yaml")
    assert doc.data is None
    assert len(errors) == 1
    assert str(errors[0]).startswith(prefix + " ")
    assert fragment in str(errors[0])


def test_merge_keys() -> None:
    doc = load("""\
        base: &b {x: 1, y: 2}
        m:
          <<: *b
          y: 3
        """)
    assert doc.data["m"] == {"x": 1, "y": 3}
    assert doc.values[("m", "y")] == Mark(4, 6)
    assert doc.values[("m", "x")] == Mark(1, 14)  # merged values point at the anchor


def test_merged_mapping_used_twice() -> None:
    doc = load("""\
        base: &b {x: 1, y: 2}
        m: &m
          <<: *b
          x: 3
        n: *m
        o: {<<: *m, z: 0}
        p: {<<: [*m, *b], y: 5}
        """)
    assert doc.data["n"] == doc.data["m"] == {"x": 3, "y": 2}
    assert doc.data["o"] == {"x": 3, "y": 2, "z": 0}
    assert doc.data["p"] == {"x": 3, "y": 5}  # earlier sources win, own keys win


def test_empty_document() -> None:
    for text in ("", "# only a comment\n", "---\n"):
        doc, errors = load_yaml(text, "f.yaml")
        assert doc.data is None
        assert errors == []
