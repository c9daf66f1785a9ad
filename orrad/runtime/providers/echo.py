"""The ``echo`` provider: no network, no key; answers ``echo: <the user's text>``.

It is the default provider (CONTRACT §8), so a fresh daemon runs end to end offline. Input
usage is the runtime's own estimate of the request (its context budget count) when given,
else four characters per token.
"""

from __future__ import annotations

from operator import attrgetter

from orrad.model import Message, Usage
from orrad.runtime.provider import CompletionRequest, CompletionResponse

__all__ = ["EchoProvider"]

_content = attrgetter("content")


def _tokens(text: str) -> int:
    return (len(text) + 3) // 4


def _input_tokens(request: CompletionRequest) -> int:
    """The runtime's estimate when it sent one; else four characters a token (map() keeps
    the walk over a long history in C)."""
    if request.estimated_input_tokens is not None:
        return request.estimated_input_tokens
    return (sum(map(len, map(_content, request.messages))) + 3 * len(request.messages)) // 4


class EchoProvider:
    """Replies ``Message.assistant("echo: " + text)`` where ``text`` is the last user text.

    Tool-result messages carry no text and are skipped; with no user text the reply is
    ``"echo: "``. The finish reason is always ``"stop"``; it never calls tools.
    """

    def __init__(self, name: str = "echo") -> None:
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def model(self) -> str | None:
        return None

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        text = next(
            (m.content for m in reversed(request.messages) if m.role == "user" and m.content),
            "",
        )
        reply = Message.assistant("echo: " + text)
        usage = Usage(
            input_tokens=_input_tokens(request),
            output_tokens=_tokens(reply.content),
        )
        return CompletionResponse(reply, usage, "stop")
