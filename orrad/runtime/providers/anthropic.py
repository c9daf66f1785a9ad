"""Anthropic Messages API.

``POST {base_url}/v1/messages`` where ``base_url`` has no ``/v1`` (config strips it,
CONTRACT §8). :func:`encode_request` and :func:`decode_response` are the pure wire mapping;
:class:`AnthropicProvider` glues them to the retry layer.

The mapping keeps the API's rules: system text goes to the top-level ``system``, roles
alternate (neighbouring turns of one role are merged), an assistant turn is never empty,
``tool_result`` blocks come first in their user turn and carry ``is_error`` only when true.
Responses join their text blocks, turn ``tool_use`` blocks into tool calls and ignore block
types they do not know (``thinking``, ``redacted_thinking``...).
"""

from __future__ import annotations

from typing import Any

import msgspec

from orrad import safejson
from orrad.errors import ProviderError
from orrad.model import Message, ToolCall, Usage
from orrad.runtime.provider import CompletionRequest, CompletionResponse, FinishReason
from orrad.runtime.providers.http import HTTPClient
from orrad.runtime.providers.retry import ErrorDetail, RetryPolicy, post_json

__all__ = ["DEFAULT_BASE_URL", "AnthropicProvider", "decode_response", "encode_request"]

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_MAX_TOKENS = 1024
API_VERSION = "2023-06-01"
OAUTH_KEY_PREFIX = "sk-ant-oat"
OAUTH_BETA = "oauth-2025-04-20"

_STOP: dict[str, FinishReason] = {"end_turn": "stop", "stop_sequence": "stop",
                                  "tool_use": "tool_use", "max_tokens": "max_tokens"}


class AnthropicProvider:
    """A :class:`~orrad.runtime.provider.Provider` speaking the Messages API.

    Args:
        name: the configured provider name (used in logs).
        client: the daemon's shared client; not closed by the provider.
        base_url: API root without ``/v1``.
        api_key: sent as ``x-api-key``; an OAuth token (``sk-ant-oat...``) is sent as
            ``Authorization: Bearer`` with the OAuth beta header instead.
        model: default model; a request's ``model`` overrides it.
        policy: timeouts and retries.
    """

    def __init__(
        self, name: str, *, client: HTTPClient, base_url: str = DEFAULT_BASE_URL,
        api_key: str = "", model: str | None = None, policy: RetryPolicy | None = None,
    ) -> None:
        self._name = name
        self._client = client
        self._url = base_url.rstrip("/") + "/v1/messages"
        self._api_key = api_key
        self._model = model
        self._policy = policy or RetryPolicy()

    @property
    def name(self) -> str:
        return self._name

    @property
    def model(self) -> str | None:
        return self._model

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        """Run one completion; raises ``ProviderError`` subclasses only (after retries)."""
        model = request.model or self._model
        if not model:
            raise ProviderError(f"no model configured for provider {self._name!r}")
        raw = await post_json(
            self._client, self._url, headers=self._headers(),
            body=msgspec.json.encode(encode_request(request, model)),
            policy=self._policy, parse_error=parse_error, secret=self._api_key,
            provider=self._name,
        )
        return decode_response(raw)

    def _headers(self) -> dict[str, str]:
        headers = {"anthropic-version": API_VERSION}
        if self._api_key.startswith(OAUTH_KEY_PREFIX):
            headers["authorization"] = f"Bearer {self._api_key}"
            headers["anthropic-beta"] = OAUTH_BETA
        elif self._api_key:
            headers["x-api-key"] = self._api_key
        return headers


# -- request ---------------------------------------------------------------------------------


def encode_request(request: CompletionRequest, model: str) -> dict[str, Any]:
    """The Messages API body for ``request``."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_tokens if request.max_tokens is not None else DEFAULT_MAX_TOKENS,
        "messages": _encode_messages(request.messages),
    }
    system = "\n\n".join(m.content for m in request.messages if m.role == "system" and m.content)
    if system:
        body["system"] = system
    if request.tools:
        body["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.input_schema}
            for t in request.tools
        ]
    if request.temperature is not None:
        body["temperature"] = request.temperature
    return body


def _encode_messages(messages: list[Message]) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue
        blocks = _blocks(message)
        if not blocks:
            continue  # never send an empty turn
        if turns and turns[-1]["role"] == message.role:
            previous = turns[-1]
            if isinstance(previous["content"], str):
                previous["content"] = [{"type": "text", "text": previous["content"]}]
            previous["content"].extend(blocks)
        elif len(blocks) == 1 and blocks[0]["type"] == "text":
            turns.append({"role": message.role, "content": blocks[0]["text"]})
        else:
            turns.append({"role": message.role, "content": blocks})
    return turns


def _blocks(message: Message) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for result in message.tool_results:
        block: dict[str, Any] = {
            "type": "tool_result", "tool_use_id": result.call_id, "content": result.content,
        }
        if result.is_error:
            block["is_error"] = True
        blocks.append(block)
    if message.content:
        blocks.append({"type": "text", "text": message.content})
    blocks.extend(
        {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
        for c in message.tool_calls
    )
    return blocks


# -- response --------------------------------------------------------------------------------


class _Block(msgspec.Struct):
    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class _Response(msgspec.Struct):
    content: list[_Block]
    stop_reason: str | None = None
    usage: _Usage | None = None


class _ErrorInner(msgspec.Struct):
    type: str | None = None
    message: str | None = None


class _ErrorBody(msgspec.Struct):
    error: _ErrorInner | None = None


def decode_response(raw: bytes) -> CompletionResponse:
    """Parse a 2xx body; a body that is not a message raises ``ProviderError``."""
    try:
        response = safejson.decode(raw, type=_Response)
    except msgspec.DecodeError as exc:
        raise ProviderError(f"failed to parse response: {exc}") from exc
    text = "".join(b.text or "" for b in response.content if b.type == "text")
    calls = [
        ToolCall(b.id or f"toolu_{i}", b.name or "", b.input if isinstance(b.input, dict) else {})
        for i, b in enumerate(response.content)
        if b.type == "tool_use"
    ]
    if calls:
        finish: FinishReason = "tool_use"
    elif response.stop_reason is None:
        finish = "stop"
    else:
        finish = _STOP.get(response.stop_reason, "other")
    u = response.usage or _Usage()
    usage = Usage(
        (u.input_tokens or 0) + (u.cache_creation_input_tokens or 0)
        + (u.cache_read_input_tokens or 0),
        u.output_tokens or 0,
    )
    return CompletionResponse(Message.assistant(text, calls), usage, finish)


def parse_error(raw: bytes) -> ErrorDetail:
    """``"{type}: {message}"`` from ``{"type":"error","error":{...}}``, else the raw body."""
    try:
        body = safejson.decode(raw, type=_ErrorBody)
    except msgspec.DecodeError:
        body = _ErrorBody()
    if body.error is not None and body.error.message:
        prefix = f"{body.error.type}: " if body.error.type else ""
        return ErrorDetail(prefix + body.error.message, body.error.type)
    return ErrorDetail(raw.decode("utf-8", "replace").strip() or "(empty body)")
