"""The OpenAI provider against a fake Chat Completions server, plus the shared retry layer.

Real HTTP on 127.0.0.1; ``autojump_clock`` makes backoff and timeouts virtual, so the
request timestamps the fake records are virtual seconds.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import httpx
import pytest
import trio
from trio.testing import MockClock

from orrad.errors import (
    ContextLengthExceeded,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderUnavailable,
)
from orrad.model import Message, ToolCall, ToolResult
from orrad.runtime.provider import CompletionRequest, ToolDefinition
from orrad.runtime.providers import OpenAIProvider, RetryPolicy
from orrad.runtime.providers.retry import ErrorDetail, error_for_status, parse_retry_after
from tests.fakes.llm import FakeOpenAI

KEY = "sk-test-0123456789abcdef"
HELLO = CompletionRequest([Message.system("be brief"), Message.user("hi")])


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeOpenAI:
    fake = FakeOpenAI(api_key=KEY)
    await nursery.start(fake.serve)
    return fake


def provider(
    fake: FakeOpenAI, client: httpx.AsyncClient, *, key: str = KEY, retries: int = 3,
    timeout_s: float = 10.0,
) -> OpenAIProvider:
    return OpenAIProvider(
        "local", client=client, base_url=fake.base_url, api_key=key, model="gpt-test",
        policy=RetryPolicy(max_retries=retries, timeout_s=timeout_s),
    )


# -- requests and replies ------------------------------------------------------------------


async def test_plain_reply(
    fake: FakeOpenAI, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    fake.reply_text("Hello!", usage=(12, 3))
    response = await provider(fake, client).complete(HELLO)

    assert response.message.role == "assistant"
    assert response.message.content == "Hello!"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (12, 3)
    assert response.finish_reason == "stop"
    [sent] = fake.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["content-type"] == "application/json"
    assert sent.body == {
        "model": "gpt-test",
        "messages": [{"role": "system", "content": "be brief"},
                     {"role": "user", "content": "hi"}],
        "max_tokens": 1024,
    }


async def test_request_overrides_and_tools(
    fake: FakeOpenAI, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    request = CompletionRequest(
        [Message.user("weather?")], tools=[ToolDefinition("weather", "Look it up", schema)],
        max_tokens=50, temperature=0.2, model="gpt-other",
    )
    await provider(fake, client).complete(request)

    body = fake.requests[0].body
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("gpt-other", 50, 0.2)
    assert body["tools"] == [{"type": "function", "function": {
        "name": "weather", "description": "Look it up", "parameters": schema}}]


async def test_no_authorization_header_without_key(
    nursery: trio.Nursery, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    fake = FakeOpenAI()
    await nursery.start(fake.serve)
    await provider(fake, client, key="").complete(HELLO)
    assert "authorization" not in fake.requests[0].headers


async def test_fake_as_context_manager_answers_ok_by_default(
    client: httpx.AsyncClient,
) -> None:
    async with FakeOpenAI() as fake:
        response = await provider(fake, client, key="").complete(HELLO)
    assert response.message.content == "ok"
    assert fake.requests[0].body["model"] == "gpt-test"


async def test_tool_call_round_trip(
    fake: FakeOpenAI, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    fake.reply_tool_calls([("call_1", "weather", '{"city": "Paris"}'),
                           ("call_2", "time", "{}")])
    fake.reply_text("Sunny, 3pm")
    llm = provider(fake, client)

    first = await llm.complete(CompletionRequest([Message.user("weather and time?")]))
    assert first.finish_reason == "tool_use"
    assert first.message.content == ""
    assert first.message.tool_calls == [ToolCall("call_1", "weather", {"city": "Paris"}),
                                        ToolCall("call_2", "time", {})]

    results = Message.tool_result([ToolResult("call_1", "sunny"),
                                   ToolResult("call_2", "boom", is_error=True)])
    history = [Message.user("weather and time?"), first.message, results]
    second = await llm.complete(CompletionRequest(history))

    assert second.message.content == "Sunny, 3pm"
    assert fake.requests[1].rejected is None
    messages = fake.requests[1].body["messages"]
    assert messages[1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": "{}"}},
    ]}
    assert messages[2:] == [{"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                            {"role": "tool", "tool_call_id": "call_2", "content": "boom"}]


async def test_fake_rejects_orphan_tool_result(
    fake: FakeOpenAI, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    history = [Message.user("hi"), Message.tool_result([ToolResult("call_9", "x")])]
    with pytest.raises(ProviderError, match=r"HTTP 400: .*preceeding message with 'tool_calls'"):
        await provider(fake, client).complete(CompletionRequest(history))
    assert len(fake.requests) == 1


async def test_invalid_tool_arguments_become_empty(
    fake: FakeOpenAI, client: httpx.AsyncClient, autojump_clock: MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.reply_tool_calls([("call_1", "weather", '{"city": '), ("call_2", "x", "[1, 2]")],
                          finish_reason="stop")
    with caplog.at_level(logging.WARNING, logger="orrad.runtime.providers.openai"):
        response = await provider(fake, client).complete(HELLO)
    assert [c.arguments for c in response.message.tool_calls] == [{}, {}]
    assert response.finish_reason == "tool_use"  # any non-empty tool_calls is tool use
    assert "not a JSON object" in caplog.text


@pytest.mark.parametrize(
    ("finish", "expected"),
    [("stop", "stop"), ("length", "max_tokens"), ("content_filter", "other"), (None, "stop")],
)
async def test_finish_reason_mapping(
    fake: FakeOpenAI, client: httpx.AsyncClient, autojump_clock: MockClock,
    finish: str | None, expected: str,
) -> None:
    fake.reply_text("x", finish_reason=finish)
    assert (await provider(fake, client).complete(HELLO)).finish_reason == expected


async def test_tolerant_parsing(
    fake: FakeOpenAI, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    fake.reply_message({"role": "assistant", "content": None}, usage=None)
    fake.reply_json({"id": "x", "choices": []})
    llm = provider(fake, client)

    null_content = await llm.complete(HELLO)
    assert null_content.message.content == ""
    assert null_content.usage.total_tokens == 0
    no_choices = await llm.complete(HELLO)
    assert (no_choices.message.content, no_choices.finish_reason) == ("", "stop")


# -- errors and retries --------------------------------------------------------------------


async def test_429_honours_retry_after(
    fake: FakeOpenAI, client: httpx.AsyncClient, autojump_clock: MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.rate_limit(retry_after="2")
    fake.reply_text("finally")
    with caplog.at_level(logging.WARNING, logger="orrad.runtime.providers.retry"):
        response = await provider(fake, client).complete(HELLO)

    assert response.message.content == "finally"
    first, second = fake.requests
    assert second.time - first.time >= 2.0
    assert "attempt 1/4 failed (status 429)" in caplog.text


async def test_retry_after_ms(
    fake: FakeOpenAI, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    fake.rate_limit(retry_after_ms="4500")
    await provider(fake, client).complete(HELLO)
    assert fake.requests[1].time - fake.requests[0].time >= 4.5


async def test_500_then_success(
    fake: FakeOpenAI, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    fake.fail(500, "The server had an error")
    fake.reply_text("ok now")
    assert (await provider(fake, client).complete(HELLO)).message.content == "ok now"
    assert len(fake.requests) == 2


async def test_retries_exhausted_unavailable(
    fake: FakeOpenAI, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    fake.fail(503, "busy", times=3)
    with pytest.raises(ProviderUnavailable, match=r"^provider error: HTTP 503: busy") as info:
        await provider(fake, client, retries=2).complete(HELLO)
    assert info.value.status == 503
    assert len(fake.requests) == 3


async def test_retries_exhausted_rate_limited(
    fake: FakeOpenAI, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    fake.rate_limit(retry_after="1", times=2)
    with pytest.raises(ProviderRateLimited, match=r"^provider error: rate limited: ") as info:
        await provider(fake, client, retries=1).complete(HELLO)
    assert (info.value.status, info.value.retry_after_s) == (429, 1.0)
    assert len(fake.requests) == 2


async def test_huge_retry_after_gives_up_at_once(
    fake: FakeOpenAI, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    fake.rate_limit(retry_after="3600")
    start = trio.current_time()
    with pytest.raises(ProviderRateLimited) as info:
        await provider(fake, client).complete(HELLO)
    assert info.value.retry_after_s == 3600
    assert len(fake.requests) == 1
    assert trio.current_time() - start < 1


async def test_cancelling_during_backoff_stops_at_the_deadline(
    fake: FakeOpenAI, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    fake.fail(503, "busy", headers=[("retry-after", "30")])
    start = trio.current_time()
    with trio.move_on_after(5) as scope:
        await provider(fake, client).complete(HELLO)
    assert scope.cancelled_caught
    assert trio.current_time() - start == pytest.approx(5)
    assert len(fake.requests) == 1


async def test_401_is_not_retried_and_hides_key(
    fake: FakeOpenAI, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    with pytest.raises(ProviderAuthError, match=r"^provider error: authentication failed: ") as e:
        await provider(fake, client, key="sk-wrong-key-42").complete(HELLO)
    assert len(fake.requests) == 1
    fake.fail(401, "Incorrect API key provided: sk-wrong-key-42")
    with pytest.raises(ProviderAuthError) as e:
        await provider(fake, client, key="sk-wrong-key-42").complete(HELLO)
    assert "sk-wrong-key-42" not in str(e.value)


async def test_400_context_length(
    fake: FakeOpenAI, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    fake.context_length()
    with pytest.raises(ContextLengthExceeded, match=r"^provider error: context length exceeded"):
        await provider(fake, client).complete(HELLO)
    assert len(fake.requests) == 1


async def test_other_400_is_a_plain_error(
    fake: FakeOpenAI, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    fake.fail(400, "Invalid 'max_tokens': integer below minimum value.")
    with pytest.raises(ProviderError) as info:
        await provider(fake, client).complete(HELLO)
    assert type(info.value) is ProviderError
    assert str(info.value) == (
        "provider error: HTTP 400: Invalid 'max_tokens': integer below minimum value."
    )
    assert len(fake.requests) == 1


async def test_malformed_body_is_not_retried(
    fake: FakeOpenAI, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    fake.malformed()
    with pytest.raises(ProviderError, match=r"^provider error: failed to parse response: "):
        await provider(fake, client).complete(HELLO)
    assert len(fake.requests) == 1


async def test_timeout_is_retried_then_unavailable(
    fake: FakeOpenAI, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    fake.reply_text("too late", delay_s=30, times=2)
    start = trio.current_time()
    with pytest.raises(ProviderUnavailable, match="timed out after 5s"):
        await provider(fake, client, retries=1, timeout_s=5).complete(HELLO)
    assert len(fake.requests) == 2
    assert trio.current_time() - start < 30


async def test_wrong_path_is_a_404_not_retried(
    fake: FakeOpenAI, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    llm = OpenAIProvider("local", client=client, base_url=fake.origin, model="m")
    with pytest.raises(ProviderError, match="HTTP 404"):
        await llm.complete(HELLO)
    assert [r.path for r in fake.requests] == ["/chat/completions"]


async def test_connection_refused_is_unavailable(
    client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    llm = OpenAIProvider("local", client=client, base_url=f"http://127.0.0.1:{port}/v1",
                         model="m", policy=RetryPolicy(max_retries=2))
    with pytest.raises(ProviderUnavailable, match=r"request failed: cannot connect to 127\.0"):
        await llm.complete(HELLO)


async def test_missing_model_is_an_error(
    client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    llm = OpenAIProvider("local", client=client, base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ProviderError, match="no model configured"):
        await llm.complete(HELLO)


# -- the retry layer's pure parts ----------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:30 GMT"}, 30.0),
        ({"retry-after": "Wed, 21 Oct 2015 07:27:00 GMT"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-3"}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 28, tzinfo=UTC)
    assert parse_retry_after(headers, now=now) == expected


@pytest.mark.parametrize(
    ("status", "kind"),
    [(401, ProviderAuthError), (403, ProviderAuthError), (404, ProviderError),
     (408, ProviderUnavailable), (409, ProviderUnavailable), (422, ProviderError),
     (429, ProviderRateLimited), (500, ProviderUnavailable), (529, ProviderUnavailable)],
)
def test_error_for_status(status: int, kind: type[ProviderError]) -> None:
    error = error_for_status(status, ErrorDetail("nope"))
    assert type(error) is kind
    assert error.status == status
    assert error.retryable == (kind in (ProviderRateLimited, ProviderUnavailable))


# -- the body encoder: the same JSON as encode_request, each message encoded once ----------


def test_encoded_body_matches_encode_request_and_reuses_message_bytes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import msgspec

    from orrad.runtime.providers import openai

    history = [
        Message.system("be brief"),
        Message.user("weather?"),
        Message.assistant("", [ToolCall("c1", "lookup", {"city": "Zürich", "n": [1, 2]})]),
        Message.tool_result([ToolResult("c1", "sunny"), ToolResult("c2", "oops", True)]),
        Message.user("thanks"),
        Message.assistant("you're welcome"),
    ]
    request = CompletionRequest(
        history, tools=[ToolDefinition("lookup", "find", {"type": "object"})],
        max_tokens=77, temperature=0.5)
    encoder = openai.MessageEncoder()
    body = openai.encode_body(request, "m", encoder)
    assert msgspec.json.decode(body) == msgspec.json.decode(
        msgspec.json.encode(openai.encode_request(request, "m")))

    calls = 0
    real = openai._encode_message

    def counting(message: Message) -> list[dict[str, object]]:
        nonlocal calls
        calls += 1
        return real(message)

    monkeypatch.setattr(openai, "_encode_message", counting)
    history.append(Message.user("one more"))
    again = openai.encode_body(CompletionRequest(history), "m", encoder)
    assert calls == 1  # only the new message
    assert msgspec.json.decode(again)["messages"][-1] == {"role": "user", "content": "one more"}


def test_a_growing_window_is_joined_once_and_matches_a_fresh_encoding(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import msgspec

    from orrad.runtime.providers import openai

    encoder = openai.MessageEncoder()
    history = [Message.system("s"), Message.user("q0"), Message.assistant("a0")]
    assert encoder.encode_all(history) == openai.MessageEncoder().encode_all(history)
    joins = 0
    real_encode = openai.MessageEncoder.encode

    def counting(self: openai.MessageEncoder, message: Message) -> bytes:
        nonlocal joins
        joins += 1
        return real_encode(self, message)

    monkeypatch.setattr(openai.MessageEncoder, "encode", counting)
    for turn in range(1, 4):
        history += [Message.user(f"q{turn}"), Message.assistant(f"a{turn}")]
        joins = 0
        body = encoder.encode_all(history)
        assert joins == 2  # only this turn's two messages were looked at
        assert msgspec.json.decode(b"[" + body + b"]") == [
            msgspec.json.decode(b"[" + b",".join(
                msgspec.json.encode(m) for m in openai._encode_message(message)) + b"]")[0]
            for message in history]
    # A tail rewritten (a resumed run) or a window that starts later is encoded afresh.
    rewritten = [*history[:-1], Message.assistant("other")]
    assert msgspec.json.decode(b"[" + encoder.encode_all(rewritten) + b"]")[-1] == {
        "role": "assistant", "content": "other"}
    later = history[3:]
    assert msgspec.json.decode(b"[" + encoder.encode_all(later) + b"]")[0] == {
        "role": "user", "content": "q1"}
