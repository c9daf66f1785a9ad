"""The bounded JSON decoder every boundary uses (orrad.safejson)."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest

from orrad.errors import OrradError
from orrad.safejson import (
    MAX_JSON_DEPTH,
    JSONTooDeep,
    check_depth,
    decode,
    nesting_depth,
)


def nested(depth: int, inner: bytes = b"1") -> bytes:
    return b"[" * depth + inner + b"]" * depth


@pytest.mark.parametrize(("text", "depth"), [
    (b"1", 0),
    (b"[]", 1),
    (b'{"a": [1, {"b": 2}]}', 3),
    (b'["[[[[", "]]]]]]"]', 1),  # brackets in strings do not count
    (b'["\\"[[[["]', 1),  # nor after an escaped quote
    (b'["\\\\", [[]]]', 3),  # an escaped backslash ends before the quote
    (b'"[[[[', 0),  # an unterminated string runs to the end
    ("[\"é[[\", [[]]]", 3),  # str input, non-ASCII
])
def test_nesting_depth(text: bytes | str, depth: int) -> None:
    assert nesting_depth(text) == depth


def test_the_issue_body_is_refused_as_a_decode_error() -> None:
    body = b'{"message":"a","metadata":{"x":' + nested(1000, b"") + b"}}"
    with pytest.raises(JSONTooDeep) as info:
        decode(body)
    # Every boundary already handles msgspec.DecodeError; it is ours too.
    assert isinstance(info.value, msgspec.DecodeError)
    assert isinstance(info.value, OrradError)
    assert not isinstance(info.value, msgspec.ValidationError)
    assert str(info.value) == f"JSON is nested more than {MAX_JSON_DEPTH} levels deep"


def test_the_bound_is_exact() -> None:
    assert decode(nested(MAX_JSON_DEPTH)) is not None
    with pytest.raises(JSONTooDeep):
        decode(nested(MAX_JSON_DEPTH + 1))
    with pytest.raises(JSONTooDeep):
        check_depth(b'{"a":' * (MAX_JSON_DEPTH + 1))  # not even valid JSON: still refused


def test_typed_decoding() -> None:
    class Body(msgspec.Struct):
        message: str
        metadata: dict[str, Any] = {}

    within = b'{"message": "hi", "metadata": {"x": ' + nested(MAX_JSON_DEPTH - 2) + b"}}"
    assert decode(within, type=Body).message == "hi"
    with pytest.raises(msgspec.ValidationError):
        decode(b'{"message": 5}', type=Body)
    assert decode(within, type=Body).metadata["x"] == decode(nested(MAX_JSON_DEPTH - 2))
    with pytest.raises(JSONTooDeep):
        decode(b'{"message": "hi", "metadata": ' + nested(5000) + b"}", type=Body)


def test_a_document_within_the_bound_encodes_again() -> None:
    value = decode(nested(MAX_JSON_DEPTH))
    assert msgspec.json.encode({"metadata": {"x": value}}).count(b"[") == MAX_JSON_DEPTH


@pytest.mark.parametrize("body", [
    nested(1 << 19),  # 1 MiB of brackets
    b'"' + b'\\"' * (1 << 19),  # one unterminated string full of escaped quotes
    b"[" + b'"[", ' * (1 << 18) + b"1]",  # many strings holding brackets
])
def test_scanning_a_large_body_is_linear(body: bytes) -> None:
    started = time.perf_counter()
    nesting_depth(body)
    assert time.perf_counter() - started < 1.0
