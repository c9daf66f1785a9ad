"""The channel protocol (orra's vocabulary, with a trio lifecycle) and the seed's adapter.

A channel receives messages from some platform and sends replies back. ``serve`` owns the
connection: it calls ``task_status.started()`` once connected and returns when the channel
has finished for good (end of input); it raises when the connection fails, and the
supervisor restarts it. ``receive`` returns ``None`` once the channel is closed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import trio

from orrad.errors import (
    ChannelError,
    ContextLengthExceeded,
    OrradError,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderUnavailable,
)
from orrad.model import InboundMessage, OutboundError, OutboundMessage

if TYPE_CHECKING:
    from orrad.config import ChannelConfig, DaemonConfig
    from orrad.runtime.loop import Runtime
    from orrad.state.db import Database

__all__ = [
    "BaseChannel",
    "Channel",
    "ChannelAdapter",
    "ChannelContext",
    "ReplyTarget",
    "no_typing",
]

log = logging.getLogger(__name__)


@asynccontextmanager
async def no_typing() -> AsyncIterator[None]:
    yield


@runtime_checkable
class ReplyTarget(Protocol):
    """Where the answer to a message goes: the channel that received it."""

    async def send(self, response: OutboundMessage) -> None: ...

    async def send_error(self, error: OutboundError) -> None: ...

    def start_typing(self, metadata: Mapping[str, Any]) -> AbstractAsyncContextManager[None]: ...


@runtime_checkable
class Channel(ReplyTarget, Protocol):
    """A source of inbound messages and a sink for their answers.

    ``send``/``send_error`` raise :class:`~orrad.errors.ChannelError` when delivery fails.
    ``start_typing`` returns an async context manager that shows a typing indicator while
    the agent runs (a no-op by default). A channel may also define
    ``async def aclose(self, *, removed: bool) -> None``: a graceful stop (refuse new input,
    let in-flight work finish) that the supervisor awaits, within the grace period, before
    cancelling ``serve``; ``removed`` is true when the channel's file was removed, false on
    shutdown or restart.
    """

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        ...

    async def receive(self) -> InboundMessage | None: ...


@dataclass
class ChannelContext:
    """What the daemon hands a channel it creates.

    A channel that keeps its own connection alive (reconnecting inside ``serve``) calls
    :meth:`report_connection` so ``/v1/status`` tells the truth: a channel whose connection
    is down is shown in ``backoff`` with the reason, not ``running``.
    """

    name: str
    daemon: DaemonConfig
    db: Database | None = None
    instance: str = "orrad"
    connection_listener: Callable[[bool, str | None], None] | None = None
    file: str | None = None  # the channel file, for messages that tell the operator what to fix

    def report_connection(self, up: bool, reason: str | None = None) -> None:
        if self.connection_listener is not None:
            self.connection_listener(up, reason)


class BaseChannel:
    """Convenience base for channel classes: an inbound queue and no-op typing.

    Subclasses set ``kind`` and ``config_type`` (for the registry), push messages with
    :meth:`deliver`, and close intake with :meth:`close_intake`.
    """

    kind: ClassVar[str] = ""
    config_type: ClassVar[type[ChannelConfig]]

    def __init__(self, config: ChannelConfig, context: ChannelContext) -> None:
        self.config = config
        self.context = context
        self.name = context.name
        self._inbox_send, self._inbox_recv = trio.open_memory_channel[InboundMessage](0)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def deliver(self, inbound: InboundMessage) -> None:
        """Hand ``inbound`` to whoever calls :meth:`receive` (waits until taken)."""
        await self._inbox_send.send(inbound)

    def close_intake(self) -> None:
        """No more messages: :meth:`receive` returns ``None`` once the queue is empty."""
        self._inbox_send.close()

    async def receive(self) -> InboundMessage | None:
        try:
            return await self._inbox_recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return None

    async def send(self, response: OutboundMessage) -> None:
        raise NotImplementedError

    async def send_error(self, error: OutboundError) -> None:
        raise NotImplementedError

    def start_typing(self, metadata: Mapping[str, Any]) -> AbstractAsyncContextManager[None]:
        return no_typing()


def describe_error(exc: BaseException) -> str:
    """The text a user sees for a failed run.

    Provider failures are summarised (kind and HTTP status): a vendor's error body can echo
    keys, organisation ids or internals, and this text may be posted in a public channel;
    the full detail is in the log. Our own errors are shown verbatim, foreign ones generic.
    """
    if isinstance(exc, ProviderError):
        status = f" (HTTP {exc.status})" if exc.status else ""
        return f"provider error: {_PROVIDER_SUMMARY.get(type(exc), 'the model failed')}{status}"
    if isinstance(exc, OrradError):
        return str(exc)
    return f"internal error ({type(exc).__name__})"


_PROVIDER_SUMMARY: dict[type[ProviderError], str] = {
    ProviderAuthError: "the model provider rejected our credentials",
    ProviderRateLimited: "the model provider is rate limiting us; try again later",
    ProviderUnavailable: "the model provider is unavailable; try again later",
    ContextLengthExceeded: "the conversation is too long for the model",
}


class ChannelAdapter:
    """The seed's receive → run → respond loop over one runtime, strictly one at a time.

    Kept for embedders and parity; the daemon uses the :class:`~orrad.router.Router`, which
    serialises per namespace and runs namespaces concurrently.
    """

    @staticmethod
    async def run(channel: Channel, runtime: Runtime) -> None:
        """Return when ``channel.receive()`` returns ``None``.

        A runtime error becomes ``send_error``; a failed send is logged and the loop goes on.
        """
        while (inbound := await channel.receive()) is not None:
            async with channel.start_typing(inbound.metadata):
                try:
                    result = await runtime.run(inbound.namespace, inbound.message)
                except Exception as exc:
                    if not isinstance(exc, OrradError):
                        log.exception("agent run crashed in %s", inbound.namespace)
                    reply: OutboundMessage | OutboundError = OutboundError(
                        inbound.namespace, describe_error(exc), inbound.metadata
                    )
                else:
                    reply = OutboundMessage(
                        inbound.namespace, result.final_message, result, inbound.metadata
                    )
                try:
                    if isinstance(reply, OutboundMessage):
                        await channel.send(reply)
                    else:
                        await channel.send_error(reply)
                except ChannelError as exc:
                    log.warning("channel send failed: %s", exc)
