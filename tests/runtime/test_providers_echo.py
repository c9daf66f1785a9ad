"""The offline ``echo`` provider, and ``build_provider``."""

from __future__ import annotations

import httpx
import pytest

from orrad import MemorySessionStore, Namespace, Runtime
from orrad.errors import ConfigError
from orrad.model import Message, ToolResult
from orrad.runtime.provider import CompletionRequest, Provider
from orrad.runtime.providers import (
    AnthropicProvider,
    EchoProvider,
    OpenAIProvider,
    build_provider,
)


async def test_echoes_the_last_user_text() -> None:
    request = CompletionRequest([
        Message.system("sys"), Message.user("first"), Message.assistant("echo: first"),
        Message.user("second"), Message.tool_result([ToolResult("c1", "result")]),
    ])
    response = await EchoProvider().complete(request)

    assert response.message.role == "assistant"
    assert response.message.content == "echo: second"
    assert response.message.tool_calls == []
    assert response.finish_reason == "stop"


async def test_usage_is_roughly_chars_over_four() -> None:
    request = CompletionRequest([Message.user("x" * 40)])
    response = await EchoProvider().complete(request)
    assert response.usage.input_tokens == 10
    assert response.usage.output_tokens == len("echo: " + "x" * 40) // 4 + 1


async def test_usage_takes_the_runtimes_estimate_when_given() -> None:
    request = CompletionRequest([Message.user("x" * 40)], estimated_input_tokens=123)
    assert (await EchoProvider().complete(request)).usage.input_tokens == 123


async def test_the_runtime_sends_its_budget_count_as_the_estimate() -> None:
    runtime = Runtime(EchoProvider(), MemorySessionStore())
    result = await runtime.run(Namespace.parse("t:a"), Message.user("hello there"))
    assert result.total_usage.input_tokens == runtime.counter.count(Message.user("hello there"))


async def test_no_user_text() -> None:
    response = await EchoProvider().complete(CompletionRequest([Message.system("s")]))
    assert response.message.content == "echo: "


def test_identity() -> None:
    echo = EchoProvider()
    assert isinstance(echo, Provider)
    assert (echo.name, echo.model) == ("echo", None)


async def test_build_provider_kinds() -> None:
    echo = build_provider("offline", kind="echo")
    assert isinstance(echo, EchoProvider)
    assert echo.name == "offline"
    async with httpx.AsyncClient() as client:
        openai = build_provider("local", kind="openai", base_url="http://h:1/v1",
                                api_key="k", model="llama3", timeout_s=5, max_retries=1,
                                client=client)
        anthropic = build_provider("claude", kind="anthropic", model="claude-x", client=client)
    assert isinstance(openai, OpenAIProvider)
    assert (openai.name, openai.model) == ("local", "llama3")
    assert isinstance(anthropic, AnthropicProvider)
    assert (anthropic.name, anthropic.model) == ("claude", "claude-x")


def test_build_provider_rejects_unknown_kind_and_missing_client() -> None:
    with pytest.raises(ConfigError, match="unknown kind 'gemini'"):
        build_provider("x", kind="gemini")
    with pytest.raises(ValueError, match="needs an HTTP client"):
        build_provider("x", kind="openai", model="m")
