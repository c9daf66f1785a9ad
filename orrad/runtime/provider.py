"""What a model provider takes and gives back, independent of any wire format."""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

import msgspec

from orrad.model import Message, Usage

__all__ = [
    "CompletionRequest",
    "CompletionResponse",
    "FinishReason",
    "Provider",
    "ToolDefinition",
]

FinishReason = Literal["stop", "tool_use", "max_tokens", "other"]


class ToolDefinition(msgspec.Struct, frozen=True):
    """A tool as the model sees it: name, description and a JSON Schema for its input."""

    name: str
    description: str
    input_schema: dict[str, Any] = msgspec.field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )


class CompletionRequest(msgspec.Struct):
    """One call to a model. ``model`` overrides the provider's configured model.

    ``estimated_input_tokens`` is the runtime's own estimate of ``messages`` (the context
    budget's count, see :mod:`orrad.runtime.context`), when it made one: a provider that
    must report usage without a server to ask (``echo``) uses it instead of walking the
    messages again.
    """

    messages: list[Message]
    tools: list[ToolDefinition] = msgspec.field(default_factory=list)
    max_tokens: int | None = None
    temperature: float | None = None
    model: str | None = None
    estimated_input_tokens: int | None = None


class CompletionResponse(msgspec.Struct):
    message: Message
    usage: Usage = msgspec.field(default_factory=Usage)
    finish_reason: FinishReason = "stop"


@runtime_checkable
class Provider(Protocol):
    """A language model behind some API.

    ``complete`` raises :class:`~orrad.errors.ProviderError` subclasses only; it has retried
    transient failures itself (CONTRACT §8) before it raises.
    """

    @property
    def name(self) -> str: ...

    @property
    def model(self) -> str | None: ...

    async def complete(self, request: CompletionRequest) -> CompletionResponse: ...
