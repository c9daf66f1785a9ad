"""OpenAI-compatible Chat Completions (OpenAI, Ollama, vLLM, llama.cpp, LM Studio...).

``POST {base_url}/chat/completions`` where ``base_url`` already ends in ``/v1`` (config
normalises it, CONTRACT §8). The wire mapping is two pure functions, :func:`encode_request`
and :func:`decode_response`; :class:`OpenAIProvider` glues them to the retry layer.

Parsing is tolerant: only ``choices[0]`` is read, null content is ``""``, tool-call arguments
that are not a JSON object become ``{}`` (with a warning), and any non-empty ``tool_calls``
means tool use whatever ``finish_reason`` says.
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec

from orrad import safejson
from orrad.errors import ProviderError
from orrad.model import Message, ToolCall, Usage
from orrad.runtime.provider import CompletionRequest, CompletionResponse, FinishReason
from orrad.runtime.providers.http import HTTPClient
from orrad.runtime.providers.retry import ErrorDetail, RetryPolicy, post_json

__all__ = [
    "DEFAULT_BASE_URL",
    "MessageEncoder",
    "OpenAIProvider",
    "decode_response",
    "encode_body",
    "encode_request",
]

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Bounds of MessageEncoder's joined windows (they hold a copy of each history's JSON).
MAX_CACHED_WINDOWS = 512
MAX_CACHED_WINDOW_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_TOKENS = 1024

_FINISH: dict[str, FinishReason] = {"stop": "stop", "tool_calls": "tool_use",
                                    "function_call": "tool_use", "length": "max_tokens"}


class OpenAIProvider:
    """A :class:`~orrad.runtime.provider.Provider` speaking Chat Completions.

    Args:
        name: the configured provider name (used in logs).
        client: the daemon's shared client; not closed by the provider.
        base_url: API root including ``/v1``.
        api_key: sent as ``Authorization: Bearer``; the header is left out when empty.
        model: default model; a request's ``model`` overrides it.
        policy: timeouts and retries.
    """

    def __init__(
        self, name: str, *, client: HTTPClient, base_url: str = DEFAULT_BASE_URL,
        api_key: str = "", model: str | None = None, policy: RetryPolicy | None = None,
    ) -> None:
        self._name = name
        self._client = client
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._api_key = api_key
        self._model = model
        self._policy = policy or RetryPolicy()
        self._encoder = MessageEncoder()

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
        headers = {"authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        raw = await post_json(
            self._client, self._url, headers=headers,
            body=encode_body(request, model, self._encoder),
            policy=self._policy, parse_error=parse_error, secret=self._api_key,
            provider=self._name,
        )
        return decode_response(raw)


# -- request ---------------------------------------------------------------------------------


def encode_request(request: CompletionRequest, model: str) -> dict[str, Any]:
    """The Chat Completions body for ``request`` (orra-spec §3.2)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [m for message in request.messages for m in _encode_message(message)],
        "max_tokens": request.max_tokens if request.max_tokens is not None else DEFAULT_MAX_TOKENS,
    }
    if request.tools:
        body["tools"] = [
            {"type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": t.input_schema,
            }}
            for t in request.tools
        ]
    if request.temperature is not None:
        body["temperature"] = request.temperature
    return body


class MessageEncoder:
    """Each message's wire JSON, kept while the message object lives.

    A session's history is re-sent every turn; sessions stay decoded in memory between
    runs, so most messages of a request are objects already encoded on an earlier turn.
    Keyed by identity with a weak reference (like the token counter's cache), so an entry
    goes when its message does and a reused ``id()`` never hits a stale entry.
    """

    def __init__(self) -> None:
        self._known: dict[int, tuple[weakref.ref[Message], bytes]] = {}
        # The last window sent per conversation, keyed by its first message's id():
        # (first, last, length, joined bytes). The next turn's window usually starts with
        # the same message and extends it, so only the new messages need joining.
        self._windows: OrderedDict[int, tuple[weakref.ref[Message], weakref.ref[Message],
                                              int, bytes]] = OrderedDict()
        self._window_bytes = 0

    def encode_all(self, messages: list[Message]) -> bytes:
        """The comma-separated wire JSON of ``messages`` (a window of one conversation).

        Equal to joining :meth:`encode` of each: a window that extends the previous one
        of its conversation (same first message, the old last one in its old place)
        reuses the joined bytes, so a turn costs the new messages, not the history.
        """
        if not messages:
            return b""
        first = messages[0]
        key = id(first)
        known = self._windows.pop(key, None)
        joined: bytes | None = None
        if known is not None:
            self._window_bytes -= len(known[3])
            first_ref, last_ref, length, old = known
            if (first_ref() is first and length <= len(messages)
                    and last_ref() is messages[length - 1]):
                rest = messages[length:]
                joined = old + b"," + b",".join(map(self.encode, rest)) if rest else old
        if joined is None:
            joined = b",".join(map(self.encode, messages))
        self._windows[key] = (weakref.ref(first), weakref.ref(messages[-1]), len(messages),
                              joined)
        self._window_bytes += len(joined)
        while self._windows and (len(self._windows) > MAX_CACHED_WINDOWS
                                 or self._window_bytes > MAX_CACHED_WINDOW_BYTES):
            _, dropped = self._windows.popitem(last=False)
            self._window_bytes -= len(dropped[3])
        return joined

    def encode(self, message: Message) -> bytes:
        """``message`` as one or more comma-separated Chat Completions messages."""
        key = id(message)
        known = self._known.get(key)
        if known is not None and known[0]() is message:
            return known[1]
        encoded = b",".join(msgspec.json.encode(m) for m in _encode_message(message))
        self._known[key] = (weakref.ref(message, self._forgetter(key)), encoded)
        return encoded

    def _forgetter(self, key: int) -> Callable[[weakref.ref[Message]], None]:
        return lambda _ref: self._known.pop(key, None) and None


def encode_body(request: CompletionRequest, model: str, encoder: MessageEncoder) -> bytes:
    """The JSON bytes of :func:`encode_request`, with each message's part from ``encoder``.

    Messages are immutable once in a session (the runtime only appends), so a cached
    message's bytes are what :func:`encode_request` would produce for it.
    """
    body = encode_request(msgspec.structs.replace(request, messages=[]), model)
    del body["messages"]
    head = msgspec.json.encode(body)
    messages = encoder.encode_all(request.messages)
    return head[:-1] + b',"messages":[' + messages + b"]}"


def _encode_message(message: Message) -> list[dict[str, Any]]:
    if message.role == "user" and message.tool_results:
        out: list[dict[str, Any]] = [
            {"role": "tool", "tool_call_id": r.call_id, "content": r.content}
            for r in message.tool_results
        ]
        if message.content:  # orra dropped this text; keep it as a user turn after the results
            out.append({"role": "user", "content": message.content})
        return out
    if message.role == "assistant" and message.tool_calls:
        encoded: dict[str, Any] = {"role": "assistant", "content": message.content or None}
        encoded["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {
                "name": c.name, "arguments": msgspec.json.encode(c.arguments).decode(),
            }}
            for c in message.tool_calls
        ]
        return [encoded]
    return [{"role": message.role, "content": message.content}]


# -- response --------------------------------------------------------------------------------


class _Part(msgspec.Struct):
    type: str = ""
    text: str | None = None


class _Function(msgspec.Struct):
    name: str = ""
    arguments: str | dict[str, Any] | None = None


class _ToolCall(msgspec.Struct):
    id: str | None = None
    function: _Function = msgspec.field(default_factory=_Function)


class _Message(msgspec.Struct):
    content: str | list[_Part] | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(msgspec.Struct):
    message: _Message = msgspec.field(default_factory=_Message)
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _Completion(msgspec.Struct):
    choices: list[_Choice] | None = None
    usage: _Usage | None = None


class _ErrorInner(msgspec.Struct):
    message: str | None = None
    code: str | int | None = None


class _ErrorBody(msgspec.Struct):
    error: _ErrorInner | str | None = None


def decode_response(raw: bytes) -> CompletionResponse:
    """Parse a 2xx body; a body that is not a chat completion raises ``ProviderError``."""
    try:
        completion = safejson.decode(raw, type=_Completion)
    except msgspec.DecodeError as exc:
        raise ProviderError(f"failed to parse response: {exc}") from exc
    usage = completion.usage or _Usage()
    usage_out = Usage(usage.prompt_tokens or 0, usage.completion_tokens or 0)
    if not completion.choices:
        return CompletionResponse(Message.assistant(""), usage_out, "stop")
    choice = completion.choices[0]
    calls = [_tool_call(i, c) for i, c in enumerate(choice.message.tool_calls or ())]
    if calls:
        finish: FinishReason = "tool_use"
    elif choice.finish_reason is None:
        finish = "stop"
    else:
        finish = _FINISH.get(choice.finish_reason, "other")
    message = Message.assistant(_text(choice.message.content), calls)
    return CompletionResponse(message, usage_out, finish)


def _text(content: str | list[_Part] | None) -> str:
    if isinstance(content, list):
        return "".join(p.text or "" for p in content if p.type == "text")
    return content or ""


def _tool_call(index: int, call: _ToolCall) -> ToolCall:
    arguments = call.function.arguments
    if isinstance(arguments, str):
        try:
            arguments = safejson.decode(arguments) if arguments.strip() else {}
        except msgspec.DecodeError:
            arguments = None
    if not isinstance(arguments, dict):
        logger.warning(
            "tool call %r: arguments are not a JSON object; using {}", call.function.name
        )
        arguments = {}
    return ToolCall(call.id or f"call_{index}", call.function.name, arguments)


def parse_error(raw: bytes) -> ErrorDetail:
    """``error.message`` (and ``error.code``) of an error body, else the raw body text."""
    try:
        body = safejson.decode(raw, type=_ErrorBody)
    except msgspec.DecodeError:
        body = _ErrorBody()
    if isinstance(body.error, str) and body.error:  # Ollama: {"error": "model not found"}
        return ErrorDetail(body.error)
    if isinstance(body.error, _ErrorInner) and body.error.message:
        code = body.error.code
        return ErrorDetail(body.error.message, None if code is None else str(code))
    return ErrorDetail(raw.decode("utf-8", "replace").strip() or "(empty body)")
