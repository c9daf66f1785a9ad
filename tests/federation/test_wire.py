"""Wire types: the CONTRACT §6 field names, tolerant decoding, and the §4 error shape."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from orrad.federation.errors import WireError
from orrad.federation.wire import (
    PROTOCOL_VERSION,
    AgentInfo,
    ErrorBody,
    Health,
    RelayRequest,
    RelayResponse,
    SessionDetail,
    SessionInfo,
    SessionMessage,
    WireUsage,
    decode,
    encode,
    error_body,
)
from orrad.model import Message, Usage


def test_relay_request_has_the_contract_fields() -> None:
    request = RelayRequest(txn_id="t1", origin="alpha", hops=("alpha",), namespace="acme:1",
                           message="hi", agent=None, metadata={"k": [1]})
    assert msgspec.json.decode(encode(request)) == {
        "txn_id": "t1", "origin": "alpha", "hops": ["alpha"], "namespace": "acme:1",
        "message": "hi", "agent": None, "metadata": {"k": [1]}, "version": PROTOCOL_VERSION,
    }
    assert decode(encode(request), RelayRequest) == request


def test_relay_response_has_the_contract_fields() -> None:
    response = RelayResponse(txn_id="t1", message="echo: hi", namespace="acme:1",
                             agent="default", instance="beta",
                             usage=WireUsage.from_usage(Usage(3, 4)))
    assert msgspec.json.decode(encode(response)) == {
        "txn_id": "t1", "message": "echo: hi", "namespace": "acme:1", "agent": "default",
        "instance": "beta", "usage": {"input_tokens": 3, "output_tokens": 4,
                                      "total_tokens": 7},
        "version": PROTOCOL_VERSION,
    }
    assert response.usage.to_usage() == Usage(3, 4)


def test_unknown_fields_are_ignored_and_missing_optional_ones_defaulted() -> None:
    data = b'''{"txn_id": "t1", "origin": "alpha", "namespace": "a", "message": "hi",
                "future_field": {"nested": true}, "version": 7}'''
    request = decode(data, RelayRequest)
    assert request.hops == ()
    assert request.agent is None
    assert request.metadata == {}
    assert request.version == 7  # a later revision still decodes
    response = decode(b'{"txn_id": "t1", "message": "m", "namespace": "a", "x": 1}',
                      RelayResponse)
    assert response.usage == WireUsage()
    assert response.agent is None
    assert decode(b'{"instance": "b", "extra": []}', Health) == Health(instance="b")


@pytest.mark.parametrize(("body", "fragment"), [
    (b"not json", "invalid RelayRequest"),
    (b'{"origin": "alpha", "namespace": "a", "message": "m"}', "txn_id"),
    (b'{"txn_id": "", "origin": "alpha", "namespace": "a", "message": "m"}', "txn_id"),
    (b'{"txn_id": "t", "origin": "al pha", "namespace": "a", "message": "m"}', "origin"),
    (b'{"txn_id": "t", "origin": "a", "namespace": "a", "message": "m", "hops": "a"}',
     "hops"),
    (b'{"txn_id": "t", "origin": "a", "namespace": "a", "message": 3}', "message"),
])
def test_bad_bodies_are_wire_errors_naming_the_field(body: bytes, fragment: str) -> None:
    with pytest.raises(WireError) as info:
        decode(body, RelayRequest)
    assert (info.value.status, info.value.code) == (400, "bad_request")
    assert fragment in info.value.message


def test_lists_and_sessions() -> None:
    agents = decode(b'[{"name": "a", "description": "d", "model": null, "instance": "b"},'
                    b' {"name": "z"}]', list[AgentInfo])
    assert agents == [AgentInfo(name="a", description="d", instance="b"), AgentInfo(name="z")]
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    info = SessionInfo(namespace="a:b", message_count=2, created_at=when, updated_at=when)
    assert msgspec.json.decode(encode([info])) == [{
        "namespace": "a:b", "message_count": 2, "created_at": "2024-01-02T03:04:05Z",
        "updated_at": "2024-01-02T03:04:05Z",
    }]
    assert decode(encode([info]), list[SessionInfo]) == [info]


def test_session_messages_keep_unknown_roles_and_convert_from_model() -> None:
    message = Message.user("hi")
    wire = SessionMessage.from_message(message)
    assert (wire.role, wire.content, wire.timestamp) == ("user", "hi", message.timestamp)
    detail = decode(b'{"namespace": "a", "messages": [{"role": "critic", "content": "x"}]}',
                    SessionDetail)
    assert detail.messages[0].role == "critic"


def test_error_shape() -> None:
    assert msgspec.json.decode(encode(error_body("loop_detected", "A -> B -> A"))) == {
        "error": {"code": "loop_detected", "message": "A -> B -> A"}}
    assert decode(b'{"error": {"code": "x"}}', ErrorBody).error.message == ""
