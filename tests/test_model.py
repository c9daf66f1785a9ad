from __future__ import annotations

import msgspec
import pytest

from orrad import Message, Namespace
from orrad.errors import InvalidNamespace
from orrad.model import EPOCH, ToolCall


def test_namespace_child_parent_and_key() -> None:
    ns = Namespace("acme").child("alice").child("support")
    assert ns.depth == 3 and ns.key == "acme:alice:support"
    assert ns.parent() == Namespace.parse("acme:alice")
    assert [a.key for a in ns.ancestors()] == ["acme:alice", "acme"]
    assert Namespace("acme").parent() is None
    assert Namespace("acme").child("alice") == Namespace.parse("acme:alice")
    assert hash(Namespace("acme").child("alice")) == hash(Namespace.parse("acme:alice"))


def test_ancestry_is_strict_and_by_whole_segments() -> None:
    a, ab = Namespace("a"), Namespace.parse("a:b")
    assert a.is_ancestor_of(ab) and ab.is_descendant_of(a)
    assert not a.is_ancestor_of(a)
    assert not Namespace("acme").is_ancestor_of(Namespace.parse("acmeother:bob"))
    assert ab.matches_prefix(a) and a.matches_prefix(a)


@pytest.mark.parametrize("key", [
    "", ":", "a:", ":a", "a::b", "a:..", ".", "a/b", "a b", "ä", "x" * 129,
    ":".join(["s"] * 17), ":".join(["x" * 100] * 6),
])
def test_invalid_namespaces_are_refused(key: str) -> None:
    with pytest.raises(InvalidNamespace):
        Namespace.parse(key)


def test_namespace_segment_constructor_refuses_colon() -> None:
    with pytest.raises(ValueError, match="invalid namespace segment"):
        Namespace("tenant:acme")


@pytest.mark.parametrize("key", ["a", "discord:123:dm:456", "user@host", "a.b:c_d:e-f:g+h=i"])
def test_valid_namespaces(key: str) -> None:
    assert Namespace.parse(key).key == key


def test_message_json_omits_empty_tool_lists_and_round_trips() -> None:
    user = Message.user("hi")
    encoded = msgspec.json.decode(msgspec.json.encode(user))
    assert "tool_calls" not in encoded and "tool_results" not in encoded
    call = Message.assistant("", [ToolCall("1", "f", {"x": 1})])
    assert msgspec.json.decode(msgspec.json.encode(call), type=Message) == call


def test_message_without_timestamp_reads_as_epoch() -> None:
    message = msgspec.json.decode(b'{"role": "user", "content": "x"}', type=Message)
    assert message.timestamp == EPOCH
