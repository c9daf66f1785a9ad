"""The Anthropic provider against a fake Messages API server.

Real HTTP on 127.0.0.1; ``autojump_clock`` makes backoff and timeouts virtual.
"""

from __future__ import annotations

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
from orrad.runtime.providers import AnthropicProvider, RetryPolicy
from tests.fakes.llm import FakeAnthropic

KEY = "sk-ant-api03-secret-0123456789"
HELLO = CompletionRequest([Message.system("be brief"), Message.user("hi")])


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeAnthropic:
    fake = FakeAnthropic(api_key=KEY)
    await nursery.start(fake.serve)
    return fake


def provider(
    fake: FakeAnthropic, client: httpx.AsyncClient, *, key: str = KEY, retries: int = 3,
    timeout_s: float = 10.0,
) -> AnthropicProvider:
    return AnthropicProvider(
        "claude", client=client, base_url=fake.base_url, api_key=key, model="claude-test",
        policy=RetryPolicy(max_retries=retries, timeout_s=timeout_s),
    )


# -- requests and replies ------------------------------------------------------------------


async def test_plain_reply(
    fake: FakeAnthropic, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    fake.reply_text("Hello!", usage=(25, 10))
    request = CompletionRequest([Message.system("be brief"), Message.system("be kind"),
                                 Message.user("hi")])
    response = await provider(fake, client).complete(request)

    assert response.message.content == "Hello!"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (25, 10)
    assert response.finish_reason == "stop"
    [sent] = fake.requests
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    assert sent.body == {
        "model": "claude-test", "max_tokens": 1024, "system": "be brief\n\nbe kind",
        "messages": [{"role": "user", "content": "hi"}],
    }


async def test_tools_temperature_and_model_override(
    fake: FakeAnthropic, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    schema = {"type": "object", "properties": {"path": {"type": "string"}}}
    request = CompletionRequest([Message.user("read it")], model="claude-other",
                                tools=[ToolDefinition("read", "Read a file", schema)],
                                temperature=0.0, max_tokens=64)
    await provider(fake, client).complete(request)

    body = fake.requests[0].body
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("claude-other", 64, 0.0)
    assert body["tools"] == [{"name": "read", "description": "Read a file",
                              "input_schema": schema}]
    assert "system" not in body


async def test_oauth_token_uses_bearer(
    nursery: trio.Nursery, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    fake = FakeAnthropic(api_key="sk-ant-oat01-token")
    await nursery.start(fake.serve)
    await provider(fake, client, key="sk-ant-oat01-token").complete(HELLO)
    headers = fake.requests[0].headers
    assert headers["authorization"] == "Bearer sk-ant-oat01-token"
    assert headers["anthropic-beta"] == "oauth-2025-04-20"
    assert "x-api-key" not in headers


async def test_tool_use_round_trip(
    fake: FakeAnthropic, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    fake.reply_tool_use([("toolu_1", "read", {"path": "a.txt"}), ("toolu_2", "ls", {})],
                        text="Let me look.")
    fake.reply_text("Done.")
    llm = provider(fake, client)

    first = await llm.complete(CompletionRequest([Message.user("look")]))
    assert first.finish_reason == "tool_use"
    assert first.message.content == "Let me look."
    assert first.message.tool_calls == [ToolCall("toolu_1", "read", {"path": "a.txt"}),
                                        ToolCall("toolu_2", "ls", {})]

    results = Message.tool_result([ToolResult("toolu_1", "contents"),
                                   ToolResult("toolu_2", "denied", is_error=True)])
    second = await llm.complete(CompletionRequest([Message.user("look"), first.message, results]))

    assert second.message.content == "Done."
    assert fake.requests[1].rejected is None
    assistant, user = fake.requests[1].body["messages"][1:]
    assert assistant == {"role": "assistant", "content": [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_1", "name": "read", "input": {"path": "a.txt"}},
        {"type": "tool_use", "id": "toolu_2", "name": "ls", "input": {}},
    ]}
    assert user == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "contents"},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "denied", "is_error": True},
    ]}


async def test_empty_assistant_turn_is_dropped_and_users_merged(
    fake: FakeAnthropic, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    history = [Message.user("one"), Message.assistant(""), Message.user("two")]
    await provider(fake, client).complete(CompletionRequest(history))

    assert fake.requests[0].rejected is None
    assert fake.requests[0].body["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}]


async def test_fake_rejects_orphan_tool_result(
    fake: FakeAnthropic, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    history = [Message.user("hi"), Message.assistant("sure"),
               Message.tool_result([ToolResult("toolu_9", "x")])]
    with pytest.raises(ProviderError, match="unexpected `tool_use_id`"):
        await provider(fake, client).complete(CompletionRequest(history))
    assert len(fake.requests) == 1


async def test_text_blocks_join_and_unknown_blocks_are_ignored(
    fake: FakeAnthropic, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    fake.reply_blocks([
        {"type": "thinking", "thinking": "hmm", "signature": "abc"},
        {"type": "text", "text": "First "},
        {"type": "redacted_thinking", "data": "xyz"},
        {"type": "text", "text": "Second"},
    ])
    response = await provider(fake, client).complete(HELLO)
    assert response.message.content == "First Second"
    assert response.message.tool_calls == []


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "max_tokens"),
     ("refusal", "other"), (None, "stop")],
)
async def test_stop_reason_mapping(
    fake: FakeAnthropic, client: httpx.AsyncClient, autojump_clock: MockClock,
    stop_reason: str | None, expected: str,
) -> None:
    fake.reply_text("x", stop_reason=stop_reason)
    assert (await provider(fake, client).complete(HELLO)).finish_reason == expected


# -- errors and retries --------------------------------------------------------------------


async def test_529_overloaded_then_success(
    fake: FakeAnthropic, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    fake.overloaded()
    fake.reply_text("back")
    assert (await provider(fake, client).complete(HELLO)).message.content == "back"
    assert len(fake.requests) == 2


async def test_overloaded_exhausted(
    fake: FakeAnthropic, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    fake.overloaded(times=3)
    with pytest.raises(ProviderUnavailable) as info:
        await provider(fake, client, retries=2).complete(HELLO)
    assert info.value.status == 529
    assert str(info.value) == "provider error: HTTP 529: overloaded_error: Overloaded"
    assert len(fake.requests) == 3


async def test_429_honours_retry_after(
    fake: FakeAnthropic, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    fake.rate_limit(retry_after="2")
    fake.reply_text("ok")
    await provider(fake, client).complete(HELLO)
    first, second = fake.requests
    assert second.time - first.time >= 2.0


async def test_429_exhausted(
    fake: FakeAnthropic, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    fake.rate_limit(times=2)
    with pytest.raises(ProviderRateLimited, match="rate_limit_error") as info:
        await provider(fake, client, retries=1).complete(HELLO)
    assert (info.value.status, info.value.retry_after_s) == (429, None)


async def test_401_is_not_retried(
    fake: FakeAnthropic, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    with pytest.raises(ProviderAuthError, match="authentication_error: invalid x-api-key"):
        await provider(fake, client, key="sk-ant-wrong").complete(HELLO)
    assert len(fake.requests) == 1


async def test_400_prompt_too_long(
    fake: FakeAnthropic, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    fake.context_length()
    with pytest.raises(ContextLengthExceeded, match="prompt is too long"):
        await provider(fake, client).complete(HELLO)
    assert len(fake.requests) == 1


async def test_malformed_body_is_not_retried(
    fake: FakeAnthropic, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    fake.malformed(b'{"content": [{"type": "text", "text": ')
    with pytest.raises(ProviderError, match=r"^provider error: failed to parse response: "):
        await provider(fake, client).complete(HELLO)
    assert len(fake.requests) == 1


async def test_non_json_error_body(
    fake: FakeAnthropic, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    fake.malformed(b"<html>Bad Gateway</html>", status=502)
    fake.reply_text("ok")
    assert (await provider(fake, client).complete(HELLO)).message.content == "ok"
    fake.malformed(b"<html>Not Found</html>", status=404)
    with pytest.raises(ProviderError, match=r"HTTP 404: <html>Not Found</html>"):
        await provider(fake, client).complete(HELLO)


async def test_timeout_is_retried_then_unavailable(
    fake: FakeAnthropic, client: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    fake.reply_text("too late", delay_s=60, times=3)
    with pytest.raises(ProviderUnavailable, match=r"timed out after 2\.5s"):
        await provider(fake, client, retries=2, timeout_s=2.5).complete(HELLO)
    assert len(fake.requests) == 3
