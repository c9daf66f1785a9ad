"""In-process providers and channels for tests of the runtime and routing layers.

These implement orrad's own protocols (the seed's tests did the same with FixedProvider and
MockChannel); network code is tested against real servers elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import trio

from orrad.channels.base import no_typing
from orrad.errors import ProviderError
from orrad.model import InboundMessage, Message, OutboundError, OutboundMessage, Usage
from orrad.runtime.provider import CompletionRequest, CompletionResponse


class ScriptedProvider:
    """Answers with the next scripted response (or raises it, when it is an exception)."""

    name = "scripted"
    model: str | None = None

    def __init__(self, responses: list[CompletionResponse | Exception] | None = None,
                 *, delay: float = 0.0) -> None:
        self.responses = list(responses or [])
        self.requests: list[CompletionRequest] = []
        self.delay = delay

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        self.requests.append(request)
        if self.delay:
            await trio.sleep(self.delay)
        if not self.responses:
            raise ProviderError("no more responses")
        item = self.responses.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


def reply(text: str, input_tokens: int = 0, output_tokens: int = 0) -> CompletionResponse:
    return CompletionResponse(Message.assistant(text), Usage(input_tokens, output_tokens), "stop")


class QueueChannel:
    """A channel fed by a memory channel; replies are recorded in order."""

    def __init__(self) -> None:
        self.inbound_send, self._inbound_recv = trio.open_memory_channel[InboundMessage](16)
        self.replies: list[OutboundMessage | OutboundError] = []
        self.reply_arrived = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def receive(self) -> InboundMessage | None:
        try:
            return await self._inbound_recv.receive()
        except trio.EndOfChannel:
            return None

    async def send(self, response: OutboundMessage) -> None:
        self._record(response)

    async def send_error(self, error: OutboundError) -> None:
        self._record(error)

    def _record(self, item: OutboundMessage | OutboundError) -> None:
        self.replies.append(item)
        self.reply_arrived.set()
        self.reply_arrived = trio.Event()

    def start_typing(self, metadata: Mapping[str, Any]) -> AbstractAsyncContextManager[None]:
        return no_typing()
